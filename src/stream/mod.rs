//! Live sessions: one task per device stream, from Hello to its end, delivering the inbox in seq
//! order and taking sends and acks.
//!
//! - `session`: the select loop and delivery order (replay, live pushes, gap filling).
//! - `hello`: the first frame and the resume point.
//! - `end`: why a session ended, and what its client is told.
//! - `frames`: what the client sends after Hello: messages and acks.
//! - `acks`: merging bursts of acks into few cursor stores.
//! - `gate`: the per-stream send rate and the order hold after a retryable refusal.
//! - `groups`: broadcast groups' order, catch-up from the log and acks by conversation.
//! - `outbound`: the bounded queue tonic streams out; it detects a client that stopped reading.
//!
//! Dead streams: HTTP/2 keepalive (server PING interval/timeout) closes a dead connection; its
//! response streams are dropped, which [`outbound::Outbound::closed`] observes, and the session
//! ends, removing itself from the registry and compare-deleting its route.
use std::pin::Pin;

use futures_util::Stream;

pub use crate::metrics::Transport;
use crate::proto::ClientFrame;

/// What a session reads from its client, whatever the transport: the gRPC request stream, or a
/// WebSocket's messages decoded (`web::socket`). An undecodable frame is an error item.
pub type Inbound = Pin<Box<dyn Stream<Item = Result<ClientFrame, tonic::Status>> + Send>>;

mod acks;
mod end;
mod frames;
mod gate;
mod groups;
mod hello;
pub mod outbound;
pub mod session;

/// Starts a session on `inbound` (Hello first) and returns what it sends, for the transport to
/// carry to the client: the same bounded queue, whichever the transport.
/// The session counts in the node's open streams of `transport` while it runs.
pub fn open(
    node: &std::sync::Arc<crate::node::Node>,
    inbound: Inbound,
    transport: Transport,
) -> outbound::OutboundStream {
    let cfg = node.config();
    let budget = node.delivery().sessions().budget().clone();
    let (mut out, stream) =
        outbound::channel(cfg.outbound_queue, cfg.outbound_bytes, cfg.slow_client_timeout, budget);
    out.count_delivered(node.metrics().delivered.clone());
    let open = node.metrics().stream_opened(transport);
    let node = node.clone();
    // Filled in once Hello names the user (never the token, never a body).
    let span = tracing::info_span!(
        "session",
        transport = transport.as_str(),
        user = tracing::field::Empty,
        device = tracing::field::Empty,
        session_id = tracing::field::Empty,
    );
    let session = async move {
        session::run(node, inbound, out).await;
        drop(open);
    };
    tokio::spawn(tracing::Instrument::instrument(session, span));
    stream
}
