//! A Consul agent API double, written from Consul's HTTP API documentation, for the endpoints
//! tim uses:
//! - `PUT /v1/agent/service/register` (JSON: ID, Name, Address, Port, Tags, Meta, Check with
//!   CheckID, TTL, DeregisterCriticalServiceAfter, Status; a TTL check starts critical unless
//!   Status says otherwise)
//! - `PUT /v1/agent/service/deregister/:id`
//! - `PUT /v1/agent/check/pass/:check_id` (404 for an unknown check)
//! - `GET /v1/health/service/:name?passing&index&wait` (a blocking query: with an index it
//!   holds the request until the index moves past it or `wait` passes; the reply carries
//!   `X-Consul-Index`)
//!
//! A secured double (`ConsulDouble::secured`) serves HTTPS and wants an ACL token: a call
//! without `X-Consul-Token`, or with another token, gets 403 "ACL not found", as Consul answers
//! with ACLs on and `default_policy = deny`.
//!
//! A TTL check that is not passed within its TTL turns critical; a service critical for longer
//! than its DeregisterCriticalServiceAfter is removed. Unlike real Consul, the double applies
//! these durations exactly (no 1-minute minimum, no 30-second reaper), so tests stay short.
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u64,
    tags: Value,
    meta: Value,
    check_id: String,
    ttl: Option<Duration>,
    passing: bool,
    deadline: Instant,
    deregister_after: Option<Duration>,
    critical_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
    /// Answer every call with 500 (no cluster leader), as an agent cut off from its servers.
    down: bool,
}

struct Shared {
    state: Mutex<State>,
    index: watch::Sender<u64>,
    /// Health queries (watch calls) received so far.
    health_queries: std::sync::atomic::AtomicU64,
    /// The ACL token every call must carry, when set.
    token: Option<String>,
    /// Calls refused for their token.
    denied: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn bump(&self) {
        self.index.send_modify(|i| *i += 1);
    }
}

/// A running double.
pub struct ConsulDouble {
    pub addr: SocketAddr,
    https: bool,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ConsulDouble {
    pub async fn start() -> ConsulDouble {
        Self::serve(None, None).await
    }

    /// A double that serves HTTPS with `pem` and refuses calls without `token`.
    pub async fn secured(token: &str, pem: &super::tls::Pem) -> ConsulDouble {
        let certs = tim::tls::load_certs(&pem.cert).unwrap();
        let key = tim::tls::load_key(&pem.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::serve(Some(token.to_string()), Some(acceptor)).await
    }

    async fn serve(token: Option<String>, tls: Option<tokio_rustls::TlsAcceptor>) -> ConsulDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            index: watch::Sender::new(1),
            health_queries: Default::default(),
            token,
            denied: Default::default(),
        });
        let s = shared.clone();
        let https = tls.is_some();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else { return };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, svc).await;
                        }
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, svc).await;
                        }
                    }
                });
            }
        });
        let s = shared.clone();
        let reaper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                reap(&s);
            }
        });
        ConsulDouble { addr, https, shared, tasks: vec![server, reaper] }
    }

    /// `http://127.0.0.1:<port>`, or `https://…` for a secured double.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// How many calls were refused for a missing or wrong token.
    pub fn denied(&self) -> u64 {
        self.shared.denied.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes every call fail (true) or work again (false).
    pub fn set_down(&self, down: bool) {
        self.shared.state.lock().unwrap().down = down;
    }

    /// IDs of the registered services whose checks pass.
    pub fn passing(&self) -> Vec<String> {
        let state = self.shared.state.lock().unwrap();
        state.services.values().filter(|s| s.passing).map(|s| s.id.clone()).collect()
    }

    /// How many health queries (watch calls) arrived so far.
    pub fn health_queries(&self) -> u64 {
        self.shared.health_queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Meta of service `id`.
    pub fn meta(&self, id: &str) -> Option<Value> {
        self.shared.state.lock().unwrap().services.get(id).map(|s| s.meta.clone())
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn reap(shared: &Shared) {
    let now = Instant::now();
    let mut changed = false;
    {
        let mut state = shared.state.lock().unwrap();
        for s in state.services.values_mut() {
            if s.ttl.is_some() && s.passing && now >= s.deadline {
                s.passing = false;
                s.critical_since = Some(now);
                changed = true;
            }
        }
        let before = state.services.len();
        state.services.retain(|_, s| match (s.critical_since, s.deregister_after) {
            (Some(since), Some(after)) if !s.passing => now < since + after,
            _ => true,
        });
        changed |= state.services.len() != before;
    }
    if changed {
        shared.bump();
    }
}

/// Parses Consul durations: `15s`, `100ms`, `1m`, `1m30s`, `1h`.
fn duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
    }
    Some(total)
}

fn reply(status: StatusCode, body: impl Into<Bytes>, index: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    if let Some(i) = index {
        r = r.header("X-Consul-Index", i.to_string()).header("Content-Type", "application/json");
    }
    r.body(Full::new(body.into())).unwrap()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if shared.state.lock().unwrap().down {
        return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader", None));
    }
    if let Some(token) = &shared.token {
        let given = req.headers().get("X-Consul-Token").and_then(|v| v.to_str().ok());
        if given != Some(token.as_str()) {
            shared.denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(reply(StatusCode::FORBIDDEN, "ACL not found", None));
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path.starts_with("/v1/health/service/") {
        shared.health_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let decode = |s: &str| s.replace("%3A", ":").replace("%3a", ":");
    let resp = match (method, path.as_str()) {
        (Method::PUT, "/v1/agent/service/register") => register(&shared, &body),
        (Method::PUT, p) if p.starts_with("/v1/agent/service/deregister/") => {
            let id = decode(&p["/v1/agent/service/deregister/".len()..]);
            let removed = shared.state.lock().unwrap().services.remove(&id).is_some();
            if removed {
                shared.bump();
                reply(StatusCode::OK, "", None)
            } else {
                reply(StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}"), None)
            }
        }
        (Method::PUT, p) if p.starts_with("/v1/agent/check/pass/") => {
            let check = decode(&p["/v1/agent/check/pass/".len()..]);
            pass(&shared, &check)
        }
        (Method::GET, p) if p.starts_with("/v1/health/service/") => {
            let name = decode(&p["/v1/health/service/".len()..]);
            health(&shared, &name, &query).await
        }
        _ => reply(StatusCode::NOT_FOUND, "no such endpoint in the double", None),
    };
    Ok(resp)
}

fn register(shared: &Shared, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return reply(StatusCode::BAD_REQUEST, "Request decode failed", None);
    };
    let name = v["Name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() {
        return reply(StatusCode::BAD_REQUEST, "Missing service name", None);
    }
    let id = v["ID"].as_str().filter(|s| !s.is_empty()).unwrap_or(&name).to_string();
    let check = &v["Check"];
    let ttl = check["TTL"].as_str().and_then(duration);
    let passing = check["Status"].as_str() == Some("passing");
    let now = Instant::now();
    let service = Service {
        id: id.clone(),
        name,
        address: v["Address"].as_str().unwrap_or_default().to_string(),
        port: v["Port"].as_u64().unwrap_or(0),
        tags: v["Tags"].clone(),
        meta: v["Meta"].clone(),
        check_id: check["CheckID"].as_str().map_or_else(|| format!("service:{id}"), String::from),
        ttl,
        passing: passing || ttl.is_none(),
        deadline: now + ttl.unwrap_or(Duration::MAX / 4),
        deregister_after: check["DeregisterCriticalServiceAfter"].as_str().and_then(duration),
        critical_since: (!passing && ttl.is_some()).then_some(now),
    };
    shared.state.lock().unwrap().services.insert(id, service);
    shared.bump();
    reply(StatusCode::OK, "", None)
}

fn pass(shared: &Shared, check_id: &str) -> Response<Full<Bytes>> {
    let mut state = shared.state.lock().unwrap();
    let Some(s) = state.services.values_mut().find(|s| s.check_id == check_id) else {
        return reply(
            StatusCode::NOT_FOUND,
            format!("CheckID {check_id:?} does not have associated TTL"),
            None,
        );
    };
    let was_passing = s.passing;
    s.passing = true;
    s.critical_since = None;
    s.deadline = Instant::now() + s.ttl.unwrap_or(Duration::MAX / 4);
    drop(state);
    if !was_passing {
        shared.bump();
    }
    reply(StatusCode::OK, "", None)
}

async fn health(
    shared: &Shared,
    name: &str,
    query: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let index: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = query.get("wait").and_then(|w| duration(w)).unwrap_or(Duration::from_secs(300));
    let wait = wait.min(Duration::from_secs(600));
    if index > 0 {
        let mut rx = shared.index.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > index)).await;
    }
    let only_passing = query.contains_key("passing") && query["passing"] != "false";
    let current = *shared.index.borrow();
    let state = shared.state.lock().unwrap();
    if state.down {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader", None);
    }
    let entries: Vec<Value> = state
        .services
        .values()
        .filter(|s| s.name == name && (!only_passing || s.passing))
        .map(|s| {
            json!({
                "Node": {"Node": "double", "Address": "127.0.0.1"},
                "Service": {
                    "ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port,
                    "Tags": s.tags, "Meta": s.meta,
                },
                "Checks": [{
                    "CheckID": s.check_id,
                    "Status": if s.passing { "passing" } else { "critical" },
                }],
            })
        })
        .collect();
    reply(StatusCode::OK, serde_json::to_vec(&entries).unwrap(), Some(current))
}
