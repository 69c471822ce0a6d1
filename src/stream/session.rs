//! One device's chat session: Hello, then replay and live pushes in seq order, sends and acks,
//! until the client leaves, is kicked, is too slow, or the node drains.
//!
//! Ordering: the session keeps `next`, the next seq this device must see. A live message with a
//! lower seq is a duplicate and dropped; one with a higher seq means something was missed (a
//! concurrent append, a full feed), so the gap is filled from the inbox first. Replay at start
//! uses the same path, so resume has neither a gap nor a duplicate. The inbox is read one page
//! per turn of the loop, so a long replay never holds up kicks, drains, sends or acks.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Status, Streaming};
use tracing::{debug, warn};

use super::outbound::{Gone, Outbound};
use super::registry::{Feed, Phase, Stop};
use crate::auth::{Claims, TokenKind};
use crate::error::Error;
use crate::ids;
use crate::ids::new_id;
use crate::node::{Node, Outgoing};
use crate::proto::{self, ClientFrame, client_frame, server_frame::Frame};
use crate::store::{PutRoute, Route, StoreError, StoredMessage};

/// How many messages one inbox read returns.
const PAGE: usize = 256;
/// Acks that follow a stored one within this are merged into one store call.
const ACK_DELAY: Duration = Duration::from_millis(50);
/// How soon a failed inbox read is retried.
const RETRY: Duration = Duration::from_secs(1);

/// Runs a session to its end. Spawned per stream by the Chat service.
pub async fn run(node: Arc<Node>, mut inbound: Streaming<ClientFrame>, mut out: Outbound) {
    let (claims, resume) = tokio::select! {
        hello = hello(&node, &mut inbound) => match hello {
            Ok(h) => h,
            Err(Some(status)) => return out.finish(status).await,
            Err(None) => return,
        },
        () = node.registry.reached(Phase::Draining) => {
            return out.finish(Status::unavailable("node is shutting down; log in again")).await;
        }
    };
    let (user, device) = (claims.sub, claims.dev);
    let session_id = new_id();
    let started_at = crate::auth::unix_ms(std::time::SystemTime::now());
    let feed = node.registry.register(&user, &device, &session_id);
    let mut s = Session {
        node: node.clone(),
        user: user.clone(),
        device: device.clone(),
        session_id: session_id.clone(),
        started_at,
        next: 1,
        acked: 0,
        more: false,
        held: None,
        unstored_ack: None,
        ack_due: None,
        retry_at: None,
        bucket: TokenBucket::new(node.config.send_rate, node.config.send_burst),
    };
    let body = async {
        // A session told to stop before it started (drain) skips straight to saying so.
        if feed.stop.borrow().is_none() && !s.start(&mut out, resume).await? {
            return Ok(());
        }
        s.serve(&mut inbound, &mut out, feed).await
    };
    let result = tokio::select! {
        r = body => r,
        () = node.registry.reached(Phase::Terminated) => {
            Err(End::Abort(Status::unavailable("node shut down; log in again")))
        }
    };
    s.store_ack().await;
    match result {
        Ok(()) => {}
        Err(End::Gone(why)) => debug!(%user, %device, ?why, "client gone"),
        Err(End::Status(status)) => out.finish(status).await,
        Err(End::Abort(status)) => out.abort(status),
    }
    node.registry.remove(&user, &device, &session_id);
    if let Err(e) = node.routes.remove_if(&user, &device, &session_id).await {
        warn!(%user, %device, error = %e, "could not clear route");
    }
    debug!(%user, %device, %session_id, "session ended");
}

/// Where the client says it is (from Hello).
struct Resume {
    after: u64,
    /// The inbox epoch `after` refers to; empty if the client has none.
    epoch: String,
}

/// Waits for Hello and verifies it. `Err(None)`: the client left without one.
async fn hello(
    node: &Node,
    inbound: &mut Streaming<ClientFrame>,
) -> Result<(Claims, Resume), Option<Status>> {
    let first = tokio::time::timeout(node.config.hello_timeout, inbound.message()).await;
    let frame = match first {
        Err(_) => return Err(Some(Status::deadline_exceeded("no Hello within the hello timeout"))),
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return Err(None),
        Ok(Err(status)) => return Err(Some(status)),
    };
    let Some(client_frame::Frame::Hello(h)) = frame.frame else {
        return Err(Some(Status::failed_precondition("the first frame must be Hello")));
    };
    let claims = node.signer.verify(&h.token, TokenKind::Session).map_err(|e| Some(e.into()))?;
    if !h.device.is_empty() && h.device != claims.dev {
        return Err(Some(Status::permission_denied(
            "Hello.device differs from the token's device; log in with that device",
        )));
    }
    ids::device(&claims.dev).map_err(|e| Some(e.into()))?;
    Ok((claims, Resume { after: h.resume_after, epoch: h.inbox_epoch }))
}

/// Why the serve loop stopped.
enum End {
    /// The client is gone; nothing more can be sent.
    Gone(Gone),
    /// End the stream with this status, after what is queued.
    Status(Status),
    /// End the stream with this status now.
    Abort(Status),
}

impl From<Gone> for End {
    fn from(g: Gone) -> Self {
        End::Gone(g)
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Status(Error::from(e).into())
    }
}

struct Session {
    node: Arc<Node>,
    user: String,
    device: String,
    session_id: String,
    /// When Hello arrived (Unix ms): orders this session against others of the device.
    started_at: i64,
    /// The next seq this device must receive.
    next: u64,
    /// This device's ack cursor as last stored.
    acked: u64,
    /// The last inbox read was a full page: read on.
    more: bool,
    /// The newest ack received but not stored yet.
    unstored_ack: Option<u64>,
    /// Until when acks are merged rather than stored one by one.
    ack_due: Option<tokio::time::Instant>,
    /// The first message that failed with a retryable error, which later ones wait for.
    held: Option<(String, Code)>,
    /// When a failed inbox read is to be retried.
    retry_at: Option<tokio::time::Instant>,
    bucket: TokenBucket,
}

impl Session {
    fn route(&self) -> Route {
        Route {
            node_id: self.node.id.clone(),
            session_id: self.session_id.clone(),
            started_at: self.started_at,
        }
    }

    /// Writes the route, registers the device's cursor, sends Welcome and starts the replay.
    /// Returns false (after sending Kicked) when a later session of the device holds it.
    async fn start(&mut self, out: &mut Outbound, resume: Resume) -> Result<bool, End> {
        let node = self.node.clone();
        let ttl = node.config.route_ttl;
        let previous = match node.routes.put(&self.user, &self.device, &self.route(), ttl).await? {
            PutRoute::Took(previous) => previous,
            PutRoute::Superseded(_) => {
                let reason = "signed in again on the same device".to_string();
                self.stop(Some(Stop::Kicked(reason)), out).await?;
                return Ok(false);
            }
        };
        // This device's older session on another node: end it there (a local one was kicked
        // when this session registered).
        if let Some(old) = previous
            && old.node_id != node.id
            && node.membership.contains(&old.node_id)
        {
            let (peers, user, device) =
                (node.peers.clone(), self.user.clone(), self.device.clone());
            tokio::spawn(async move {
                if let Err(e) = peers.kick(&old.node_id, &user, &device, &old.session_id).await {
                    warn!(%user, %device, peer = %old.node_id, error = %e, "could not kick the older session");
                }
            });
        }
        let epoch = node.inbox.epoch(&self.user).await?;
        let last_seq = node.inbox.last_seq(&self.user).await?;
        // A resume point from another incarnation of the inbox (one that was lost), or past its
        // end, would skip messages: then the stored cursor decides alone.
        let other_epoch = !resume.epoch.is_empty() && resume.epoch != epoch;
        let resume_after = if other_epoch || resume.after > last_seq {
            let after = resume.after;
            warn!(user = %self.user, after, last_seq, other_epoch, "resume point from another inbox; ignored");
            0
        } else {
            resume.after
        };
        let cursor = node.inbox.ack(&self.user, &self.device, resume_after).await?;
        self.acked = cursor;
        self.next = cursor + 1;
        out.send(Frame::Welcome(proto::Welcome {
            session_id: self.session_id.clone(),
            node_id: node.id.clone(),
            user_id: self.user.clone(),
            device: self.device.clone(),
            last_seq,
            resume_from: cursor,
            inbox_epoch: epoch,
        }))
        .await?;
        self.fill(out).await?;
        Ok(true)
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<ClientFrame>,
        out: &mut Outbound,
        mut feed: Feed,
    ) -> Result<(), End> {
        let period = self.node.config.route_ttl / 3;
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = self.retry_at;
            tokio::select! {
                biased;
                _ = feed.stop.changed() => {
                    let stop = feed.stop.borrow_and_update().clone();
                    return self.stop(stop, out).await;
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
                _ = tokio::time::sleep_until(self.ack_due.unwrap_or_else(far_future)), if self.ack_due.is_some() => {
                    self.ack_due = None;
                    self.store_ack().await;
                }
                _ = refresh.tick() => {
                    if !self.refresh_route().await {
                        let reason = "signed in again on the same device".to_string();
                        return self.stop(Some(Stop::Kicked(reason)), out).await;
                    }
                    self.catch_up(out).await?;
                }
                () = std::future::ready(()), if self.more => self.fill(out).await?,
            }
        }
    }

    async fn stop(&mut self, stop: Option<Stop>, out: &mut Outbound) -> Result<(), End> {
        match stop {
            Some(Stop::Kicked(reason)) => out.send(Frame::Kicked(proto::Kicked { reason })).await?,
            Some(Stop::Drain(ms)) => {
                out.send(Frame::Drain(proto::Drain { reconnect_after_ms: ms })).await?
            }
            None => {}
        }
        Ok(())
    }

    /// Keeps this session's route from lapsing. Returns false when another session owns the
    /// device. A store failure is retried at the next tick (the route lives three periods).
    async fn refresh_route(&self) -> bool {
        let ttl = self.node.config.route_ttl;
        match self.node.routes.refresh(&self.user, &self.device, &self.route(), ttl).await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(user = %self.user, error = %e, "route refresh failed");
                true
            }
        }
    }

    /// Anti-entropy: a push that never arrived (a relay lost with its node) is noticed here at
    /// the latest, without waiting for the next message.
    async fn catch_up(&mut self, out: &mut Outbound) -> Result<(), End> {
        match self.node.inbox.last_seq(&self.user).await {
            Ok(last) if last >= self.next && !self.more => self.fill(out).await,
            _ => Ok(()),
        }
    }

    async fn on_live(&mut self, msg: StoredMessage, out: &mut Outbound) -> Result<(), End> {
        if msg.seq < self.next {
            return Ok(());
        }
        if msg.seq > self.next || self.more {
            return self.fill(out).await;
        }
        self.push(msg, out).await
    }

    async fn push(&mut self, msg: StoredMessage, out: &mut Outbound) -> Result<(), End> {
        self.next = msg.seq + 1;
        out.send(Frame::Message(to_proto(msg))).await?;
        Ok(())
    }

    /// Pushes one page of the inbox from `next` on; `more` says whether to read on. A read
    /// error keeps the stream up and schedules a retry.
    async fn fill(&mut self, out: &mut Outbound) -> Result<(), End> {
        self.retry_at = None;
        match self.node.inbox.read(&self.user, self.next - 1, PAGE).await {
            Ok(page) => {
                self.more = page.len() == PAGE;
                for msg in page {
                    if msg.seq >= self.next {
                        self.push(msg, out).await?;
                    }
                }
            }
            Err(e) => {
                warn!(user = %self.user, error = %e, "inbox read failed; will retry");
                self.more = false;
                self.retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: ClientFrame, out: &mut Outbound) -> Result<(), End> {
        match frame.frame {
            Some(client_frame::Frame::Send(m)) => {
                // Acks sent before this message are stored before it.
                self.store_ack().await;
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
        // After a retryable failure, later messages wait for the failed one, so that a
        // pipelining sender's messages keep their order in the recipient's inbox.
        if let Some((first, code)) = &self.held
            && *first != client_msg_id
        {
            return Frame::SendError(proto::SendError {
                client_msg_id,
                code: *code as i32,
                reason: format!(
                    "message {first:?} was not stored; send it again first (messages keep their order)"
                ),
            });
        }
        let result = if self.bucket.take() {
            let msg = Outgoing { client_msg_id: m.client_msg_id, to: m.to, body: m.body };
            self.node.send(&self.user, msg).await
        } else {
            Err(Error::ResourceExhausted(format!(
                "send rate limit ({} messages/s); retry with the same client_msg_id",
                self.node.config.send_rate
            )))
        };
        match result {
            Ok(a) => {
                self.held = None;
                Frame::SendAck(proto::SendAck {
                    client_msg_id,
                    msg_id: a.message.msg_id,
                    seq: a.message.seq,
                    duplicate: a.duplicate,
                })
            }
            Err(e) => {
                let status = Status::from(e);
                if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
                    && self.held.is_none()
                {
                    self.held = Some((client_msg_id.clone(), status.code()));
                }
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
        if up_to <= self.acked.max(self.unstored_ack.unwrap_or(0)) {
            return Ok(());
        }
        self.unstored_ack = Some(up_to);
        if self.ack_due.is_none() {
            // The first ack in a while is stored at once; those right behind it are merged and
            // stored ACK_DELAY later (or before the next Send, or when the stream ends).
            self.store_ack().await;
            self.ack_due = Some(tokio::time::Instant::now() + ACK_DELAY);
        }
        Ok(())
    }

    /// Stores the newest ack not yet stored. The cursor only moves forward; a failed store is
    /// retried by the next ack, and an unstored ack only means redelivery after a reconnect,
    /// which clients drop by seq.
    async fn store_ack(&mut self) {
        let Some(up_to) = self.unstored_ack.take() else { return };
        match self.node.inbox.ack(&self.user, &self.device, up_to).await {
            Ok(cursor) => self.acked = cursor,
            Err(e) => warn!(user = %self.user, error = %e, "ack not stored"),
        }
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
        Self { rate: f64::from(rate), burst, tokens: burst, at: Instant::now() }
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
