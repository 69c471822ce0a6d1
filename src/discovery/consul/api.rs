//! A thin client for the few Consul agent HTTP endpoints tim uses, and their JSON shapes.
//! Everything Consul-specific on the wire stays in this file.
use std::collections::HashMap;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

/// A Consul API failure.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul unreachable: {0}")]
    Unreachable(String),
    #[error("consul answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("consul sent unexpected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad consul address: {0}")]
    Address(String),
}

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: HashMap<String, String>,
    pub check: TtlCheck,
}

/// A TTL health check: the node passes it periodically; Consul marks it critical otherwise.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TtlCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub deregister_critical_service_after: String,
    pub status: String,
}

/// One entry of `GET /v1/health/service/<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: EntryNode,
    pub service: EntryService,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryNode {
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryService {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub meta: Option<HashMap<String, String>>,
}

/// A Consul agent's HTTP API.
#[derive(Clone)]
pub struct ConsulClient {
    base: String,
    token: Option<String>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Counts the calls that failed (the node's `tim_consul_errors`).
    errors: Counter,
}

impl ConsulClient {
    /// `base` is the agent's URL: `http://127.0.0.1:8500`, or `https://…` verified against the
    /// system's roots. `token` is sent as `X-Consul-Token` on every call.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ConsulError> {
        Self::with_ca(base, token, None)
    }

    /// As [`ConsulClient::new`], with an `https://` agent verified against the CA
    /// certificate(s) in the PEM file `ca` instead of the system's roots.
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ConsulError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(ConsulError::Address(format!(
                "{base:?}: give the agent's http:// or https:// URL"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = match ca {
            Some(ca) => HttpsConnectorBuilder::new().with_tls_config(
                crate::tls::client_config(ca).map_err(|e| ConsulError::Address(e.to_string()))?,
            ),
            None => HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| ConsulError::Address(format!("system roots: {e}")))?,
        };
        let connector = tls.https_or_http().enable_http1().wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { base, token, http, errors: Counter::default() })
    }

    /// Counts the calls that fail from now on into `errors`.
    pub fn count_errors(&mut self, errors: Counter) {
        self.errors = errors;
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(Bytes, Option<u64>), ConsulError> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ConsulError::Address(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ConsulError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ConsulError::Unreachable(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let body = String::from_utf8_lossy(&body).into_owned();
                return Err(ConsulError::Status { status, body });
            }
            Ok((body, index))
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ConsulError::Unreachable(format!("no answer within {timeout:?}")))
            .and_then(|answer| answer);
        if answer.is_err() {
            self.errors.inc();
        }
        answer
    }

    /// Registers (or re-registers, updating Meta) a service with its TTL check.
    pub async fn register(&self, reg: &Registration) -> Result<(), ConsulError> {
        let body = serde_json::to_vec(reg)?;
        self.call(Method::PUT, "/v1/agent/service/register", Some(body), SHORT).await?;
        Ok(())
    }

    /// Removes a service from the local agent.
    pub async fn deregister(&self, service_id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/agent/service/deregister/{}", escape(service_id));
        self.call(Method::PUT, &path, None, SHORT).await?;
        Ok(())
    }

    /// Marks a TTL check as passing for another TTL.
    pub async fn pass(&self, check_id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/agent/check/pass/{}", escape(check_id));
        self.call(Method::PUT, &path, None, SHORT).await?;
        Ok(())
    }

    /// The passing instances of `service`: a blocking query that returns when the result's
    /// index moves past `index` or after about `wait`. Returns the entries and the new index.
    pub async fn healthy(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<ServiceEntry>, u64), ConsulError> {
        let path = format!(
            "/v1/health/service/{}?passing=true&index={index}&wait={}ms",
            escape(service),
            wait.as_millis()
        );
        // Consul adds up to wait/16 of jitter; leave room for it and the network.
        let timeout = wait + wait / 16 + SHORT;
        let (body, new_index) = self.call(Method::GET, &path, None, timeout).await?;
        Ok((serde_json::from_slice(&body)?, new_index.unwrap_or(0)))
    }
}

const SHORT: Duration = Duration::from_secs(5);

/// Percent-encodes a path segment.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_path_segments() {
        assert_eq!(super::escape("tim-1.a_b~"), "tim-1.a_b~");
        assert_eq!(super::escape("127.0.0.1:50051"), "127.0.0.1%3A50051");
    }

    #[test]
    fn registration_json_uses_consul_field_names() {
        let reg = super::Registration {
            id: "n1".into(),
            name: "tim".into(),
            address: "10.0.0.1".into(),
            port: 50051,
            tags: vec![],
            meta: Default::default(),
            check: super::TtlCheck {
                check_id: "service:n1".into(),
                ttl: "15s".into(),
                deregister_critical_service_after: "1m".into(),
                status: "passing".into(),
            },
        };
        let v = serde_json::to_value(&reg).unwrap();
        assert_eq!(v["ID"], "n1");
        assert_eq!(v["Check"]["CheckID"], "service:n1");
        assert_eq!(v["Check"]["TTL"], "15s");
        assert_eq!(v["Check"]["DeregisterCriticalServiceAfter"], "1m");
    }
}
