//! Live sessions: the registry of device streams on this node, each session's ordered delivery,
//! kick and drain, and the bounded outbound queue that detects a client that stopped reading.
//!
//! Dead streams: HTTP/2 keepalive (server PING interval/timeout) closes a dead connection; its
//! response streams are dropped, which [`outbound::Outbound::closed`] observes, and the session
//! ends, removing itself from the registry and compare-deleting its route.
pub mod outbound;
pub mod registry;
pub mod session;

pub use registry::{Registry, Stop};
