//! The browser side of a node, on the gRPC port: the web chat page at `/` (embedded in the
//! binary), `Chat.Session` over a WebSocket at `/v1/chat` ([`socket`]), and the unary calls as
//! proto3 JSON at `/v1/<Service>/<Method>` (the server's `json` module adds those routes).
//!
//! HTTP/1.1 connections come here from the server's protocol split; HTTP/2 ones (a browser
//! over TLS) reach the same routes through the gRPC server, which serves them beside gRPC.
//!
//! What a hostile client gets: a request's headers must arrive within `--hello-timeout`, a body
//! is at most the node's largest frame (more: 413), an unknown path is 404. The page and its
//! script are static; nothing here reads a cookie, and no CORS header is sent, so another
//! site's page can neither act for a user nor read an answer.
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::node::Node;

pub mod socket;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
/// The page loads only its own script and talks only to nodes (its own, and the WebSocket of
/// the node Login chose).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
    connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The web side of one node: the routes, served on HTTP/1.1 connections.
#[derive(Clone)]
pub struct Web {
    node: Arc<Node>,
    router: Router,
}

impl Web {
    /// The page and the WebSocket, plus `api` (the JSON calls); bodies up to `max_frame`.
    pub fn new(node: Arc<Node>, max_frame: usize, api: Router) -> Web {
        let chat = socket::Chat { node: node.clone(), max_frame };
        let router = Router::new()
            .route("/", get(index))
            .route("/app.js", get(script))
            .route("/v1/chat", get(socket::upgrade))
            .with_state(chat)
            .merge(api)
            .layer(DefaultBodyLimit::max(max_frame));
        Web { node, router }
    }

    /// The routes, for the gRPC server to serve on HTTP/2 as well.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves HTTP/1.1 on one connection, WebSocket upgrades included, until it closes.
    pub async fn serve_http1<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.router);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.node.config().hello_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            debug!(error = %e, "HTTP/1.1 connection ended");
        }
    }
}

async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

async fn script() -> Response {
    page(SCRIPT, "text/javascript; charset=utf-8")
}

fn page(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
