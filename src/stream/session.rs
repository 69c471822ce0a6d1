//! One device's chat session: Hello, then replay and live pushes in seq order, sends and acks,
//! until the client leaves, is kicked, is too slow, or the node drains.
//!
//! Ordering: the session keeps `next`, the next seq this device must see. A live message with a
//! lower seq is a duplicate and dropped; one with a higher seq means something was missed (a
//! concurrent append, a full feed), so the gap is filled from the inbox first. Replay at start
//! uses the same path, so resume has neither a gap nor a duplicate.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Status, Streaming};
use tracing::{debug, warn};

use super::outbound::{Gone, Outbound};
use super::registry::{Feed, Stop};
use crate::auth::{Claims, TokenKind};
use crate::error::Error;
use crate::ids;
use crate::node::{Node, Outgoing, new_id};
use crate::proto::{self, ClientFrame, client_frame, server_frame::Frame};
use crate::store::StoredMessage;

/// How many messages one inbox read returns.
const PAGE: usize = 256;
/// How soon a failed inbox read is retried.
const RETRY: Duration = Duration::from_secs(1);

/// Runs a session to its end. Spawned per stream by the Chat service.
pub async fn run(node: Arc<Node>, mut inbound: Streaming<ClientFrame>, mut out: Outbound) {
    let hello = match hello(&node, &mut inbound).await {
        Ok(h) => h,
        Err(Some(status)) => return out.finish(status).await,
        Err(None) => return,
    };
    let (claims, resume_after) = hello;
    let (user, device) = (claims.sub.clone(), claims.dev.clone());
    let session_id = new_id();
    let feed = node.registry.register(&user, &device, &session_id);
    let mut s = Session {
        node: node.clone(),
        user: user.clone(),
        device: device.clone(),
        session_id: session_id.clone(),
        next: 1,
        acked: 0,
        retry_at: None,
        bucket: TokenBucket::new(node.config.send_rate, node.config.send_burst),
    };
    let result = match s.start(&mut out, resume_after).await {
        Ok(()) => s.serve(&mut inbound, &mut out, feed).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(End::Gone(why)) => debug!(%user, %device, ?why, "client gone"),
        Err(End::Status(status)) => out.finish(status).await,
    }
    node.registry.remove(&user, &device, &session_id);
    if let Err(e) = node.routes.remove_if(&user, &device, &session_id).await {
        warn!(%user, %device, error = %e, "could not clear route");
    }
    debug!(%user, %device, %session_id, "session ended");
}

/// Waits for Hello and verifies it. `Err(None)`: the client left without one.
async fn hello(
    node: &Node,
    inbound: &mut Streaming<ClientFrame>,
) -> Result<(Claims, u64), Option<Status>> {
    let first = tokio::time::timeout(node.config.hello_timeout, inbound.message()).await;
    let frame = match first {
        Err(_) => {
            return Err(Some(Status::deadline_exceeded(
                "no Hello within the hello timeout",
            )));
        }
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return Err(None),
        Ok(Err(status)) => return Err(Some(status)),
    };
    let Some(client_frame::Frame::Hello(h)) = frame.frame else {
        return Err(Some(Status::failed_precondition(
            "the first frame must be Hello",
        )));
    };
    let claims = node
        .signer
        .verify(&h.token, TokenKind::Session)
        .map_err(|e| Some(e.into()))?;
    if !h.device.is_empty() && h.device != claims.dev {
        return Err(Some(Status::permission_denied(
            "Hello.device differs from the token's device; log in with that device",
        )));
    }
    ids::device(&claims.dev).map_err(|e| Some(e.into()))?;
    Ok((claims, h.resume_after))
}

/// Why the serve loop stopped.
enum End {
    /// The client is gone; nothing more can be sent.
    Gone(Gone),
    /// End the stream with this status.
    Status(Status),
}

impl From<Gone> for End {
    fn from(g: Gone) -> Self {
        End::Gone(g)
    }
}

struct Session {
    node: Arc<Node>,
    user: String,
    device: String,
    session_id: String,
    /// The next seq this device must receive.
    next: u64,
    /// This device's ack cursor as last stored.
    acked: u64,
    /// When a failed inbox read is to be retried.
    retry_at: Option<tokio::time::Instant>,
    bucket: TokenBucket,
}

impl Session {
    /// Writes the route, registers the device's cursor, sends Welcome and replays the inbox.
    async fn start(&mut self, out: &mut Outbound, resume_after: u64) -> Result<(), End> {
        let node = self.node.clone();
        let route = crate::store::Route {
            node_id: node.id.clone(),
            session_id: self.session_id.clone(),
        };
        let stored = async {
            node.routes.put(&self.user, &self.device, &route).await?;
            let cursor = node
                .inbox
                .ack(&self.user, &self.device, resume_after)
                .await?;
            let last = node.inbox.last_seq(&self.user).await?;
            Ok::<_, crate::store::StoreError>((cursor, last))
        };
        let (cursor, last_seq) = stored
            .await
            .map_err(|e| End::Status(Error::from(e).into()))?;
        self.acked = cursor;
        self.next = cursor + 1;
        out.send(Frame::Welcome(proto::Welcome {
            session_id: self.session_id.clone(),
            node_id: node.id.clone(),
            user_id: self.user.clone(),
            device: self.device.clone(),
            last_seq,
            resume_from: cursor,
        }))
        .await?;
        self.fill(out).await
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<ClientFrame>,
        out: &mut Outbound,
        mut feed: Feed,
    ) -> Result<(), End> {
        loop {
            let retry = self.retry_at;
            tokio::select! {
                biased;
                _ = feed.stop.changed() => {
                    let stop = feed.stop.borrow_and_update().clone();
                    return match stop {
                        Some(Stop::Kicked(reason)) => {
                            out.send(Frame::Kicked(proto::Kicked { reason })).await?;
                            Ok(())
                        }
                        Some(Stop::Drain(ms)) => {
                            out.send(Frame::Drain(proto::Drain { reconnect_after_ms: ms })).await?;
                            Ok(())
                        }
                        None => Ok(()),
                    };
                }
                _ = out.closed() => return Err(End::Gone(Gone::Closed)),
                frame = inbound.message() => match frame {
                    Ok(Some(frame)) => self.on_frame(frame, out).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(End::Status(status)),
                },
                Some(msg) = feed.messages.recv() => self.on_live(msg, out).await?,
                _ = feed.lag.wait() => self.fill(out).await?,
                _ = tokio::time::sleep_until(retry.unwrap_or_else(far_future)), if retry.is_some() => {
                    self.fill(out).await?
                }
            }
        }
    }

    async fn on_live(&mut self, msg: StoredMessage, out: &mut Outbound) -> Result<(), End> {
        if msg.seq < self.next {
            return Ok(());
        }
        if msg.seq > self.next {
            return self.fill(out).await;
        }
        self.push(msg, out).await
    }

    async fn push(&mut self, msg: StoredMessage, out: &mut Outbound) -> Result<(), End> {
        self.next = msg.seq + 1;
        out.send(Frame::Message(to_proto(msg))).await?;
        Ok(())
    }

    /// Pushes everything in the inbox from `next` on. A read error keeps the stream up and
    /// schedules a retry.
    async fn fill(&mut self, out: &mut Outbound) -> Result<(), End> {
        self.retry_at = None;
        loop {
            match self.node.inbox.read(&self.user, self.next - 1, PAGE).await {
                Ok(page) => {
                    let full = page.len() == PAGE;
                    for msg in page {
                        if msg.seq >= self.next {
                            self.push(msg, out).await?;
                        }
                    }
                    if !full {
                        return Ok(());
                    }
                }
                Err(e) => {
                    warn!(user = %self.user, error = %e, "inbox read failed; will retry");
                    self.retry_at = Some(tokio::time::Instant::now() + RETRY);
                    return Ok(());
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame, out: &mut Outbound) -> Result<(), End> {
        match frame.frame {
            Some(client_frame::Frame::Send(m)) => {
                let reply = self.send(m).await;
                out.send(reply).await?;
                Ok(())
            }
            Some(client_frame::Frame::Ack(a)) => self.ack(a.up_to).await,
            Some(client_frame::Frame::Hello(_)) => Err(End::Status(Status::failed_precondition(
                "Hello was already sent on this stream",
            ))),
            None => Err(End::Status(Status::invalid_argument("empty ClientFrame"))),
        }
    }

    async fn send(&mut self, m: proto::SendMessage) -> Frame {
        let client_msg_id = m.client_msg_id.clone();
        let result = if self.bucket.take() {
            let msg = Outgoing {
                client_msg_id: m.client_msg_id,
                to: m.to,
                body: m.body,
            };
            self.node.send(&self.user, msg).await
        } else {
            Err(Error::ResourceExhausted(format!(
                "send rate limit ({} messages/s); retry with the same client_msg_id",
                self.node.config.send_rate
            )))
        };
        match result {
            Ok(a) => Frame::SendAck(proto::SendAck {
                client_msg_id,
                msg_id: a.message.msg_id,
                seq: a.message.seq,
                duplicate: a.duplicate,
            }),
            Err(e) => {
                let status = Status::from(e);
                Frame::SendError(proto::SendError {
                    client_msg_id,
                    code: status.code() as i32,
                    reason: status.message().to_string(),
                })
            }
        }
    }

    async fn ack(&mut self, up_to: u64) -> Result<(), End> {
        let delivered = self.next - 1;
        if up_to > delivered {
            return Err(End::Status(Status::invalid_argument(format!(
                "Ack up_to {up_to} is beyond the last seq delivered on this stream ({delivered})"
            ))));
        }
        if up_to <= self.acked {
            return Ok(());
        }
        match self.node.inbox.ack(&self.user, &self.device, up_to).await {
            Ok(cursor) => self.acked = cursor,
            // The cursor only moves forward; the next ack stores it. Unstored acks only mean
            // redelivery after a reconnect, which the client deduplicates by seq.
            Err(e) => warn!(user = %self.user, error = %e, "ack not stored"),
        }
        Ok(())
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400)
}

/// Converts a stored message to its wire form.
pub fn to_proto(m: StoredMessage) -> proto::Message {
    proto::Message {
        seq: m.seq,
        from: m.from,
        to: m.to,
        body: m.body,
        sent_at: m.sent_at,
        msg_id: m.msg_id,
    }
}

/// Per-stream send allowance: `rate` per second, up to `burst` at once; rate 0 = unlimited.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
