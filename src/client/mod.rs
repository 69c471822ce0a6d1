//! The client library: log in through a gateway, open the chat stream to the assigned node,
//! send with acks, receive, and ack. The CLI, the benchmark and the tests all use it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tim::client::ClientError> {
//! use tim::client::{self, Event};
//! let opts = client::Options::default();
//! let login = client::login("127.0.0.1:50051", "bob", "phone", "", &opts).await?;
//! let mut session = client::Session::connect(&login.endpoint, &login.token, 0, &opts).await?;
//! let ack = session.sender().send("alice", "hi").await?;
//! println!("stored as seq {} in alice's inbox", ack.seq);
//! while let Some(Event::Message(m)) = session.next_event().await {
//!     println!("{}: {}", m.from, m.body);
//!     session.sender().ack(m.seq).await?;
//! }
//! # Ok(()) }
//! ```
pub mod resilient;
mod session;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use session::{Event, Sender, Session};

use crate::proto::{self, gateway_client};

/// Transport settings for client connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// HTTP/2 PING interval (sent even while idle).
    pub keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection.
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// Server events buffered before the reader stops reading (back-pressure to the server).
    pub event_buffer: usize,
    /// Source address to bind outgoing connections to (None: the OS picks). Load generators use
    /// several loopback addresses to get past one address's ephemeral ports.
    pub local_address: Option<std::net::IpAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            event_buffer: 1024,
            local_address: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// The server refused one message (SendError); retry with the same id when retryable.
    #[error("send rejected ({code:?}): {reason}")]
    Rejected { code: Code, reason: String },
    #[error("the session stream is closed")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code behind this error, if any.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Opens a channel to `addr` (host:port or a URL) with the keepalive settings of `opts`.
pub async fn channel(addr: &str, opts: &Options) -> Result<Channel, ClientError> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .keep_alive_while_idle(true)
        .local_address(opts.local_address)
        .connect()
        .await?)
}

/// Logs in through the gateway at `addr`. `jwt` is only needed in `jwt` login mode.
pub async fn login(
    addr: &str,
    user: &str,
    device: &str,
    jwt: &str,
    opts: &Options,
) -> Result<proto::LoginResponse, ClientError> {
    let mut gw = gateway_client::GatewayClient::new(channel(addr, opts).await?);
    let req = proto::LoginRequest {
        user_id: user.to_string(),
        device: device.to_string(),
        jwt: jwt.to_string(),
    };
    Ok(gw.login(req).await?.into_inner())
}

/// Attaches `authorization: Bearer <token>` to a unary request.
pub use crate::wire::authorized;
