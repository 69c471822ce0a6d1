//! tim: a distributed instant-messaging service.
//!
//! Clients log in through any node (`Gateway.Login`), get a session token and the node that
//! should hold their connection, and keep one bidirectional gRPC stream (`Chat.Session`) open to
//! it. A message is stored in the recipient's inbox before the sender is acked, pushed to every
//! device stream of the recipient in seq order, and kept until each device acks it.
//!
//! # Layout
//! - [`config`]: the one typed configuration, validated before any port is bound.
//! - [`error`]: typed errors and the one place they become a `tonic::Status`.
//! - [`auth`]: session tokens (HMAC), dev and JWT login.
//! - [`ids`]: what a user id, device id or client_msg_id may be.
//! - [`server`]: the gRPC services (Gateway, Chat, Relay), health, reflection, shutdown; [`run`].
//! - [`node`]: state one node shares between services; the Send flow.
//! - [`stream`]: live sessions: registry, ordered delivery, kick, drain, slow-client detection.
//! - [`store`]: the Inbox and RouteStore traits and their backends.
//! - [`discovery`]: node-set updates (`Add`, `Remove`, `Reset`) from a backend.
//! - [`lb`]: strategies that pick a node for a user at login.
//! - [`client`]: the client library used by the CLI, benchmarks and tests; `client::resilient`
//!   reconnects and resumes by itself.
//! - [`codec`]: the protobuf codec (undecodable input is INVALID_ARGUMENT).
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod deliver;
pub mod discovery;
pub mod error;
pub mod ids;
pub mod lb;
pub mod node;
pub mod server;
pub mod store;
pub mod stream;
pub mod wire;

pub use config::Config;
pub use error::Error;
pub use server::run;

/// Generated protobuf types and gRPC stubs for `im.v1` (proto/im.proto).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("im.v1");

    /// Encoded descriptor set of im.proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("im_descriptor");
}
