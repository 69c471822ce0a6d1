//! tim: a distributed instant-messaging service.
//!
//! Clients log in through any node (`Gateway.Login`), get a session token and the node that
//! should hold their connection, and keep one bidirectional gRPC stream (`Chat.Session`) open to
//! it. A message is stored in the recipient's inbox before the sender is acked, pushed to every
//! device stream of the recipient in seq order, and kept until each device acks it.
//!
//! # Layout
//! From the edge inwards. No module imports itself back through others (`scripts/import-cycles`,
//! run by CI, finds none).
//! - [`server`]: [`run`]: the gRPC services (Gateway, Chat, Relay), health, reflection, the
//!   node's background tasks and the ordered shutdown. Handlers translate and call the node.
//! - [`web`]: the browser side on the same port: the web chat page, `Chat.Session` over a
//!   WebSocket (protobuf or proto3 JSON), reached through the server's protocol split.
//! - [`stream`]: one task per device stream (gRPC or WebSocket): Hello and resume, delivery in seq order, sends
//!   through the send gate, ack coalescing, the bounded outbound queue.
//! - [`node`]: one node's shared state behind methods, and its flows: Login, Send, Presence.
//! - [`deliver`]: cluster delivery: local sessions, relay to the nodes holding a recipient's
//!   devices, remote kick, route liveness.
//! - [`lb`]: node-selection strategies and the tower layer Login places users with.
//! - [`limit`]: the per-user send allowance of a node.
//! - [`metrics`]: a node's Prometheus metrics (one registry per node).
//! - [`discovery`]: node-set updates (`Add`, `Remove`, `Reset`) from static or Consul backends,
//!   folded into the live `Membership`.
//! - [`store`]: the Inbox and RouteStore traits; memory and Redis backends that answer alike.
//! - [`client`]: the client library used by the CLI, the tools and the tests;
//!   `client::resilient` reconnects and resumes by itself.
//! - [`wire`]: proto ⇄ domain conversions, both directions.
//! - [`config`]: the one typed configuration, validated before any port is bound.
//! - [`error`]: typed errors and the one place they become a `tonic::Status`.
//! - [`auth`]: session and node tokens (HMAC), dev and JWT login.
//! - [`task`]: a spawned task that is aborted with its owner.
//! - [`tls`]: rustls from PEM files: the reloadable server side, node certificates, clients.
//! - [`ids`]: what a user id, device id or client_msg_id may be; random ids.
//! - [`codec`]: the protobuf codec (undecodable input is INVALID_ARGUMENT).
//!
//! Load generation (`tim bench`) and fault injection (`tim chaos`) live beside the library, in
//! the `tools/` workspace member.
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
pub mod limit;
pub mod metrics;
pub mod node;
pub mod push;
pub mod server;
pub mod store;
pub mod stream;
pub mod task;
pub mod tls;
pub mod web;
pub mod wire;

pub use config::Config;
pub use error::Error;
pub use server::run;

/// Generated protobuf types and gRPC stubs for `im.v1` (proto/im.proto).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("im.v1");
    // proto3 JSON mapping (lowerCamelCase names, 64-bit integers as strings, enums by name).
    include!(concat!(env!("OUT_DIR"), "/im.v1.serde.rs"));

    /// Encoded descriptor set of im.proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("im_descriptor");
}
