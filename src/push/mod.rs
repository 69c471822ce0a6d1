//! Offline push: when a message lands for a user with no live stream, the node POSTs a signed
//! JSON notification to the application (`--push-webhook`), which wakes the user's phone.
//!
//! Never in the way of delivery: [`Pusher::notify`] only puts the notification on a bounded
//! queue (full: dropped, counted and logged); a task posts them, a few at a time, retrying a
//! failure (connection error, 5xx, 429) with doubling backoff up to `--push-attempts` tries.
//! A 2xx ends it; another 4xx is the application refusing it, not retried. A notification is
//! posted until one try succeeds, so the application sees it once unless an answer is lost on
//! the way back; `msg_id` (and the `x-tim-delivery` header) lets it drop such a repeat.
//!
//! The body is signed: `x-tim-signature: sha256=<hex HMAC-SHA256 of the body with
//! --push-secret>`; the body carries `sent_at`, so a receiver can refuse old replays.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::PushConfig;
use crate::store::StoredMessage;

/// Notifications posted at once.
const IN_FLIGHT: usize = 8;
/// How long one try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the application is told: who has a new message, and the message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Notification {
    /// The user with no live stream.
    pub user: String,
    pub from: String,
    pub conversation: String,
    pub conv_seq: u64,
    pub msg_id: String,
    pub sent_at: i64,
    pub body: String,
}

impl Notification {
    pub fn of(user: &str, m: &StoredMessage) -> Self {
        Self {
            user: user.to_string(),
            from: m.from.clone(),
            conversation: m.conversation.clone(),
            conv_seq: m.conv_seq,
            msg_id: m.msg_id.clone(),
            sent_at: m.sent_at,
            body: m.body.clone(),
        }
    }
}

/// The node's side of the webhook: a bounded queue and what was dropped.
pub struct Pusher {
    queue: mpsc::Sender<Notification>,
    dropped: Arc<AtomicU64>,
}

/// The task that posts what is queued; the node runs it as one of its tasks.
pub type PushWorker = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl Pusher {
    /// A pusher for `config`'s webhook (None when it has none) and its posting task.
    pub fn start(config: &PushConfig) -> Option<(Pusher, PushWorker)> {
        let url = config.push_webhook.clone()?;
        let secret = config.push_secret.clone().unwrap_or_default();
        let (queue, rx) = mpsc::channel(config.push_queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let poster = Arc::new(Poster {
            url,
            secret: secret.into_bytes(),
            http: http_client(),
            attempts: config.push_attempts,
            backoff: config.push_backoff,
            gave_up: dropped.clone(),
        });
        let worker = tokio_stream::wrappers::ReceiverStream::new(rx).for_each_concurrent(
            IN_FLIGHT,
            move |n| {
                let poster = poster.clone();
                async move { poster.post(n).await }
            },
        );
        Some((Pusher { queue, dropped }, Box::pin(worker)))
    }

    /// Queues `n` for posting; a full queue drops it (counted, logged every thousandth time).
    pub fn notify(&self, n: Notification) {
        if self.queue.try_send(n).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(1000) {
                warn!(dropped, "push webhook queue full: notifications dropped");
            }
        }
    }

    /// Notifications waiting to be posted.
    pub fn queued(&self) -> u64 {
        (self.queue.max_capacity() - self.queue.capacity()) as u64
    }

    /// Notifications dropped so far: the queue was full, or every try failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Poster {
    url: String,
    secret: Vec<u8>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    attempts: u32,
    backoff: Duration,
    gave_up: Arc<AtomicU64>,
}

/// What one try came to.
enum Outcome {
    Done,
    Retry(String),
    Refused(StatusCode),
}

impl Poster {
    async fn post(&self, n: Notification) {
        let body = Bytes::from(serde_json::to_vec(&n).expect("a notification serializes"));
        let signature = format!("sha256={}", hex(&sign(&self.secret, &body)));
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            match self.try_once(&body, &signature, &n.msg_id).await {
                Outcome::Done => return,
                Outcome::Refused(status) => {
                    warn!(%status, msg_id = %n.msg_id, "push webhook refused a notification");
                    self.gave_up.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Outcome::Retry(why) if attempt < self.attempts => {
                    debug!(attempt, %why, "push webhook try failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Outcome::Retry(why) => {
                    warn!(attempts = self.attempts, %why, msg_id = %n.msg_id, "push notification dropped");
                    self.gave_up.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn try_once(&self, body: &Bytes, signature: &str, msg_id: &str) -> Outcome {
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header("content-type", "application/json")
            .header("x-tim-signature", signature)
            .header("x-tim-delivery", msg_id)
            .body(Full::new(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        match tokio::time::timeout(TRY_TIMEOUT, self.http.request(req)).await {
            Err(_) => Outcome::Retry("timed out".into()),
            Ok(Err(e)) => Outcome::Retry(e.to_string()),
            Ok(Ok(resp)) => match resp.status() {
                s if s.is_success() => Outcome::Done,
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    Outcome::Retry(s.to_string())
                }
                s => Outcome::Refused(s),
            },
        }
    }
}

/// HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn http_client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .unwrap_or_else(|_| HttpsConnectorBuilder::new().with_tls_config(empty_roots()))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new()).build(tls)
}

/// A TLS config trusting nothing (no system roots here): http:// webhooks still work.
fn empty_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_never_blocks() {
        let mut config = crate::Config::default().push;
        config.push_webhook = Some("http://127.0.0.1:9/hook".into());
        config.push_queue = 2;
        // The worker is not run: nothing leaves the queue.
        let (pusher, _worker) = Pusher::start(&config).unwrap();
        let n = Notification::of("bob", &StoredMessage::default());
        for _ in 0..5 {
            pusher.notify(n.clone());
        }
        assert_eq!(pusher.dropped(), 3);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        let mac = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
