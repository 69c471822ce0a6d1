//! Test harness: real tim nodes on 127.0.0.1:0 driven through the real client library.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tim::Config;
use tim::client::{self, Event, Options, Session};
use tim::proto::{self, gateway_client::GatewayClient};
use tim::server::ServeError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub mod browser;
pub mod consul;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod tls;
pub mod web;
pub mod webhook;

/// Where a test node keeps inboxes and routes.
#[derive(Debug, Clone)]
pub enum Backend {
    Memory,
    /// A Redis server and a key prefix of this test's own, so tests sharing a server do not
    /// see each other's users. Nodes started with the same value share their state.
    Redis {
        url: String,
        prefix: String,
        cluster: bool,
    },
}

impl Backend {
    /// The test binary's shared redis-server, under a fresh key prefix.
    pub fn redis() -> Backend {
        Backend::redis_at(redis::shared())
    }

    /// `server`, under a fresh key prefix.
    pub fn redis_at(server: &redis::RedisServer) -> Backend {
        Backend::Redis { url: server.url(), prefix: unique_prefix(), cluster: false }
    }

    /// The test binary's shared Redis Cluster, under a fresh key prefix.
    pub fn redis_cluster() -> Backend {
        let urls = redis::shared_cluster().urls();
        Backend::Redis { url: urls, prefix: unique_prefix(), cluster: true }
    }

    fn apply(&self, c: &mut Config) {
        if let Backend::Redis { url, prefix, cluster } = self {
            c.redis = Some(url.clone());
            c.redis_prefix = prefix.clone();
            c.redis_cluster = *cluster;
        }
    }
}

fn unique_prefix() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("t{}-{n}", std::process::id())
}

/// Runs each named `async fn(&Backend)` as three tests: `memory::<name>`, `redis::<name>` and
/// `redis_cluster::<name>`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&$crate::common::Backend::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&$crate::common::Backend::redis()).await
            })*
        }
        mod redis_cluster {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&$crate::common::Backend::redis_cluster()).await
            })*
        }
    };
}

/// The token secret every test node uses, so tests can mint their own tokens.
pub const SECRET: &str = "test-token-secret-0123456789";
/// The node secret every test node uses.
pub const NODE_SECRET: &str = "test-node-secret-0123456789";

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node's configuration for tests: port 0, a known token secret.
pub fn config() -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        token_secret: Some(SECRET.to_string()),
        node_secret: Some(NODE_SECRET.to_string()),
        ..Config::default()
    }
}

/// A running node.
pub struct TestNode {
    pub addr: SocketAddr,
    /// How this test's clients reach the node (TLS settings when it serves TLS).
    pub opts: Options,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestNode {
    pub async fn start(backend: &Backend) -> Self {
        Self::with(backend, |_| {}).await
    }

    /// Starts a node on `backend` with [`config`] changed by `f`.
    pub async fn with(backend: &Backend, f: impl FnOnce(&mut Config)) -> Self {
        Self::with_options(backend, Options::default(), f).await
    }

    /// Starts a node as [`TestNode::with`] does, reached by clients with `opts`.
    pub async fn with_options(
        backend: &Backend,
        opts: Options,
        f: impl FnOnce(&mut Config),
    ) -> Self {
        let mut c = config();
        backend.apply(&mut c);
        f(&mut c);
        let listener = tokio::net::TcpListener::bind(c.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tim::run(listener, c, async {
            let _ = stopped.await;
        }));
        let node = TestNode { addr, opts, stop: Some(stop), task: Some(task) };
        // Ready once health answers.
        eventually(|| async {
            let ch = client::channel(&node.endpoint(), &node.opts).await.ok()?;
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.ok()
        })
        .await;
        node
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    pub async fn login(&self, user: &str, device: &str) -> proto::LoginResponse {
        client::login(&self.endpoint(), user, device, "", &self.opts).await.unwrap()
    }

    /// Logs in and opens a session resuming after `resume_after`.
    pub async fn connect(&self, user: &str, device: &str, resume_after: u64) -> Session {
        let login = self.login(user, device).await;
        Session::connect(&login.endpoint, &login.token, resume_after, &self.opts).await.unwrap()
    }

    /// Logs in here and opens the session on this node, whatever node Login picked.
    pub async fn connect_here(&self, user: &str, device: &str, resume_after: u64) -> Session {
        let login = self.login(user, device).await;
        Session::connect(&self.endpoint(), &login.token, resume_after, &self.opts).await.unwrap()
    }

    /// Opens `user`'s session and fills it with ~6 MiB it never reads: more than HTTP/2 flow
    /// control and a small outbound queue (8) can hold, so the node cannot even queue a Drain.
    /// Returns what keeps the stream open.
    pub async fn stuffed_session(
        &self,
        user: &str,
    ) -> (
        tokio::sync::mpsc::Sender<proto::ClientFrame>,
        tonic::Response<tonic::Streaming<proto::ServerFrame>>,
    ) {
        let token = self.login(user, "d").await.token;
        let ch = client::channel(&self.endpoint(), &self.opts).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let hello = proto::Hello { token, ..Default::default() };
        let frame = proto::ClientFrame { frame: Some(proto::client_frame::Frame::Hello(hello)) };
        tx.send(frame).await.unwrap();
        let held = proto::chat_client::ChatClient::new(ch)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        let body = "z".repeat(60 * 1024);
        for i in 0..100 {
            self.send_unary("stuffer", &format!("c{i}"), user, &body).await.unwrap();
        }
        (tx, held)
    }

    pub async fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::new(client::channel(&self.endpoint(), &self.opts).await.unwrap())
    }

    /// Unary Gateway.Send as `from`.
    pub async fn send_unary(
        &self,
        from: &str,
        client_msg_id: &str,
        to: &str,
        body: &str,
    ) -> Result<proto::SendResponse, tonic::Status> {
        let token = self.login(from, "server").await.token;
        let req = proto::SendRequest {
            client_msg_id: client_msg_id.into(),
            to: to.into(),
            body: body.into(),
            group: String::new(),
            change: None,
        };
        self.gateway().await.send(client::authorized(req, &token)).await.map(|r| r.into_inner())
    }

    /// Gateway.History as `user` (from a device that never held a stream).
    pub async fn history(
        &self,
        user: &str,
        req: proto::HistoryRequest,
    ) -> Result<proto::HistoryResponse, tonic::Status> {
        let token = self.login(user, "history-reader").await.token;
        self.gateway().await.history(client::authorized(req, &token)).await.map(|r| r.into_inner())
    }

    /// Gateway.ListConversations as `user`: one page of at most `limit` after `page_token`.
    pub async fn list_conversations(
        &self,
        user: &str,
        limit: u32,
        page_token: &str,
    ) -> Result<proto::ListConversationsResponse, tonic::Status> {
        let token = self.login(user, "lister").await.token;
        let req = proto::ListConversationsRequest { limit, page_token: page_token.into() };
        let mut gw = self.gateway().await;
        gw.list_conversations(client::authorized(req, &token)).await.map(|r| r.into_inner())
    }

    /// The direct conversation of `user` and `with` as (conv_seq, from, body), oldest first:
    /// a page before `before` (0: the newest) of at most `limit`.
    pub async fn history_with(
        &self,
        user: &str,
        with: &str,
        before: u64,
        limit: u32,
    ) -> Vec<(u64, String, String)> {
        let req = proto::HistoryRequest {
            with: with.into(),
            before_seq: before,
            limit,
            ..Default::default()
        };
        let page = self.history(user, req).await.unwrap().messages;
        page.into_iter().map(|m| (m.conv_seq, m.from, m.body)).collect()
    }

    /// Devices of `user` that Presence reports online.
    pub async fn presence(&self, user: &str) -> Vec<String> {
        self.presence_nodes(user).await.into_iter().map(|(device, _)| device).collect()
    }

    /// (device, node id) of every device of `user` that Presence reports online, asked as
    /// `user` (others learn only online or not).
    pub async fn presence_nodes(&self, user: &str) -> Vec<(String, String)> {
        let token = self.login(user, "presence-checker").await.token;
        let req = proto::PresenceRequest { user_id: user.into() };
        let resp = self.gateway().await.presence(client::authorized(req, &token)).await.unwrap();
        resp.into_inner().devices.into_iter().map(|d| (d.device, d.node_id)).collect()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `f` until it returns Some, for up to [`WAIT`].
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event, failing the test if none comes in time.
pub async fn next_event(s: &mut Session) -> Event {
    tokio::time::timeout(WAIT, s.next_event())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

/// The next pushed message, past any ephemeral signal (typing, read); panics on any other
/// event.
pub async fn next_message(s: &mut Session) -> proto::Message {
    loop {
        match next_event(s).await {
            Event::Message(m) => return m,
            Event::Signal(_) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Takes `n` messages and returns (seq, body) pairs.
pub async fn take(s: &mut Session, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = next_message(s).await;
        out.push((m.seq, m.body));
    }
    out
}

/// Asserts that nothing arrives within `d`.
pub async fn assert_quiet(s: &mut Session, d: Duration) {
    if let Ok(ev) = tokio::time::timeout(d, s.next_event()).await {
        panic!("expected no event, got {ev:?}");
    }
}

/// (seq, body) pairs for seqs `from..=to` with bodies `prefix<seq>`.
pub fn expected(prefix: &str, from: u64, to: u64) -> Vec<(u64, String)> {
    (from..=to).map(|i| (i, format!("{prefix}{i}"))).collect()
}
