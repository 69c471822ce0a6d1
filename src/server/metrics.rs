//! `GET /metrics` on `--metrics-addr`: the node's metrics in the Prometheus text format, with
//! the state gauges read at the scrape.
//!
//! Who may call: anyone who reaches the address (operators bind it to a private one); it
//! answers counters only, no user ids or bodies. What it costs: one encoding of a fixed set of
//! series per scrape; any other path is 404.
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::warn;

use crate::metrics::Snapshot;
use crate::node::Node;

/// The OpenMetrics text content type Prometheus negotiates for this format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the metrics on `listener` until the node's tasks are dropped.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let app = Router::new().route("/metrics", get(scrape)).with_state(node);
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics listener ended");
    }
}

async fn scrape(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let delivery = node.delivery();
    let now = Snapshot {
        outbound_queue_bytes: delivery.sessions().budget().used() as u64,
        relay_queue: delivery.peers().queued(),
        push_queue: node.push().map_or(0, |p| p.queued()),
        push_dropped: node.push().map_or(0, |p| p.dropped()),
        discovery_nodes: delivery.live_nodes() as u64,
        limited_users: node.limits().tracked() as u64,
    };
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], node.metrics().encode(now))
}
