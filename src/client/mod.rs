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

pub use crate::tls::ClientTls;
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
    /// TLS settings (a private CA, a client certificate). With them a bare `host:port` means
    /// `https://`; without them an `https://` address trusts the system's roots.
    pub tls: Option<ClientTls>,
    /// Addresses to dial instead of others (`host:port` → `host:port`, as curl's
    /// `--connect-to`): for a client that reaches the nodes at other addresses than the ones
    /// the cluster advertises (a NAT, a proxy, a port forward). TLS still checks the
    /// certificate against the address dialed.
    pub connect_to: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            event_buffer: 1024,
            local_address: None,
            tls: None,
            connect_to: Vec::new(),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    /// The TLS handshake failed: a plaintext server, or a certificate not trusted.
    #[error(
        "TLS handshake with {addr} failed: {detail} (is the server serving TLS? a plaintext \
         server needs an http:// address; a private CA needs --tls-ca)"
    )]
    Tls { addr: String, detail: String },
    /// The address or the TLS settings cannot work together.
    #[error("{0}")]
    Address(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// The server refused one message (SendError); retry with the same id when retryable, no
    /// sooner than `retry_after` (zero: no hint).
    #[error("send rejected ({code:?}): {reason}")]
    Rejected { code: Code, reason: String, retry_after: Duration },
    #[error("the session stream is closed")]
    Closed,
    /// The token's device was logged out (SessionEnded instead of Welcome).
    #[error("logged out: {0}")]
    LoggedOut(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// How long the server asked to wait before a retry (a rate refusal), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Rejected { retry_after, .. } if !retry_after.is_zero() => {
                Some(*retry_after)
            }
            ClientError::Status(s) => {
                let ms = crate::wire::retry_after_ms(s.metadata());
                (ms > 0).then(|| Duration::from_millis(ms.into()))
            }
            _ => None,
        }
    }

    /// The gRPC code behind this error, if any.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::Rejected { code, .. } => Some(*code),
            ClientError::LoggedOut(_) => Some(Code::Unauthenticated),
            _ => None,
        }
    }
}

/// The URL to dial for `addr`: as given when it has a scheme, else `https://` when `opts` has
/// TLS settings and `http://` when not. An `http://` address with TLS settings is refused: the
/// caller asked for TLS, and nothing is downgraded silently.
pub fn url(addr: &str, opts: &Options) -> Result<String, ClientError> {
    match addr.split_once("://") {
        Some(("https", _)) => Ok(addr.to_string()),
        Some(("http", _)) if opts.tls.is_some() => Err(ClientError::Address(format!(
            "{addr}: an http:// address with TLS settings (--tls-ca); use https://"
        ))),
        Some(("http", _)) => Ok(addr.to_string()),
        Some((scheme, _)) => {
            Err(ClientError::Address(format!("{addr}: unknown scheme {scheme:?} (http or https)")))
        }
        None if opts.tls.is_some() => Ok(format!("https://{addr}")),
        None => Ok(format!("http://{addr}")),
    }
}

/// The address to dial for `addr`: its `connect_to` replacement, if any (matched with or
/// without the URL's scheme, which is kept).
fn dialed<'a>(addr: &'a str, opts: &'a Options) -> std::borrow::Cow<'a, str> {
    let (scheme, bare) = match addr.split_once("://") {
        Some((scheme, bare)) => (Some(scheme), bare),
        None => (None, addr),
    };
    match opts.connect_to.iter().find(|(from, _)| from == addr || from == bare) {
        Some((_, to)) => match scheme {
            Some(scheme) => format!("{scheme}://{to}").into(),
            None => to.as_str().into(),
        },
        None => addr.into(),
    }
}

/// Opens a channel to `addr` (host:port or a URL) with the keepalive and TLS settings of `opts`.
pub async fn channel(addr: &str, opts: &Options) -> Result<Channel, ClientError> {
    let url = url(&dialed(addr, opts), opts)?;
    let https = url.starts_with("https://");
    let mut endpoint = Endpoint::from_shared(url.clone())?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .keep_alive_while_idle(true)
        .local_address(opts.local_address);
    if https {
        endpoint = endpoint.tls_config(opts.tls.clone().unwrap_or_default().tonic())?;
    }
    endpoint.connect().await.map_err(|e| match tls_failure(&e) {
        Some(detail) if https => ClientError::Tls { addr: url, detail },
        _ => ClientError::Connect(e),
    })
}

/// The rustls error somewhere in `e`'s sources, in words.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        source = e.source();
    }
    None
}

/// An error and its sources, joined: tonic's transport errors say little at the top.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
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
    match gw.login(req).await {
        Ok(reply) => Ok(reply.into_inner()),
        Err(status) => Err(plaintext_hint(status, &url(addr, opts)?).into()),
    }
}

/// A plaintext call that broke at the transport, the way a TLS server answers: says so.
fn plaintext_hint(status: Status, url: &str) -> Status {
    // How the HTTP/2 client reports a peer that answered a plaintext preface with TLS bytes
    // (which of them depends on when it notices).
    let transport = [
        "transport error",
        "h2 protocol error",
        "http2 error",
        "operation was canceled",
        "connection",
        "broken pipe",
    ];
    let codes = [Code::Unknown, Code::Unavailable, Code::Internal, Code::Cancelled];
    let broken = codes.contains(&status.code())
        && transport.iter().any(|t| status.message().to_lowercase().contains(t));
    if !url.starts_with("http://") || !broken {
        return status;
    }
    let hint = format!(
        "{} (plaintext to {url}: if the server serves TLS, use https:// or --tls-ca)",
        status.message()
    );
    Status::new(status.code(), hint)
}

/// Attaches `authorization: Bearer <token>` to a unary request.
pub use crate::wire::authorized;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_replaces_the_dialed_address_and_keeps_the_scheme() {
        let opts = Options {
            connect_to: vec![("10.0.0.5:50051".into(), "127.0.0.1:7000".into())],
            ..Options::default()
        };
        assert_eq!(dialed("10.0.0.5:50051", &opts), "127.0.0.1:7000");
        assert_eq!(dialed("https://10.0.0.5:50051", &opts), "https://127.0.0.1:7000");
        assert_eq!(dialed("10.0.0.6:50051", &opts), "10.0.0.6:50051");
    }
}
