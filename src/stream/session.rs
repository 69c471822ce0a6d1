//! One device's chat session: Hello, then replay and live pushes in seq order, sends and acks,
//! until the client leaves, is kicked, is too slow, or the node drains.
//!
//! Ordering: the session keeps `next`, the next seq this device must see. A live message with a
//! lower seq is a duplicate and dropped; one with a higher seq means something was missed (a
//! concurrent append, a full feed), so the gap is filled from the inbox first. Replay at start
//! uses the same path, so resume has neither a gap nor a duplicate. The inbox is read one page
//! per turn of the loop, so a long replay never holds up kicks, drains, sends or acks.
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tonic::Status;
use tracing::{debug, warn};

use super::Inbound;
use super::acks::AckMerge;
use super::end::{End, end_with, ended};
use super::gate::SendGate;
use super::groups::Groups;
use super::hello::{self, Refused, Resume, hello};
use super::outbound::{Gone, Outbound};
use crate::deliver::{Feed, Phase, REPLACED, Stop};
use crate::ids::new_id;
use crate::node::Node;
use crate::proto::{self, server_frame::Frame, session_ended::Reason};
use crate::store::{AckCheck, PutRoute, Route, StoredMessage, message_at};

/// How many messages one inbox read returns.
const PAGE: usize = 256;
/// Acks that follow a stored one within this are merged into one store call.
const ACK_DELAY: Duration = Duration::from_millis(50);
/// Pushed messages remembered per stream to notice a rolled-back store.
const SENT_KEPT: usize = 64;
/// How long a user's last-seen time is kept for Presence.
const LAST_SEEN_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How soon a failed inbox read is retried.
const RETRY: Duration = Duration::from_secs(1);

/// Runs a session to its end. Spawned per stream by the Chat service.
pub async fn run(node: Arc<Node>, mut inbound: Inbound, mut out: Outbound) {
    let sessions = node.delivery().sessions();
    let (claims, resume) = tokio::select! {
        hello = hello(&node, &mut inbound) => match hello {
            Ok(h) => h,
            Err(Refused::Status(status)) => return out.finish(status).await,
            Err(Refused::LoggedOut(status)) => return end_with(&mut out, Reason::LoggedOut, status).await,
            Err(Refused::Gone) => return,
        },
        () = sessions.reached(Phase::Draining) => {
            return out.finish(Status::unavailable("node is shutting down; log in again")).await;
        }
    };
    let expires = hello::expiry(claims.exp);
    let (user, device) = (claims.sub, claims.dev);
    let session_id = new_id();
    // The span `stream::open` entered: everything logged from here on names the session.
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("device", device.as_str());
    span.record("session_id", session_id.as_str());
    let feed = sessions.register(&user, &device, &session_id);
    let mut s = Session {
        route: Route {
            node_id: node.id().to_string(),
            session_id: session_id.clone(),
            started_at: crate::auth::unix_ms(std::time::SystemTime::now()),
        },
        node: node.clone(),
        user: user.clone(),
        device: device.clone(),
        next: 1,
        more: false,
        retry_at: None,
        acks: AckMerge::new(ACK_DELAY),
        gate: SendGate::new(),
        // Grows as pushes come: an idle device holds none.
        sent: std::collections::VecDeque::new(),
        groups: Groups::default(),
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
        () = sessions.reached(Phase::Terminated) => {
            Err(End::Abort(Status::unavailable("node shut down; log in again")))
        }
        // A stream lives no longer than the token it was opened with.
        () = tokio::time::sleep_until(expires) => Err(End::Expired),
    };
    if let Some(up_to) = s.acks.take() {
        // The stream is ending anyway; a rolled-back inbox is noticed at the next Hello.
        let _ = s.store_ack(up_to).await;
    }
    s.groups.store_acks(&node, &user, &device).await;
    if let Err(end) = result {
        end.tell(&mut out, &user, &device).await;
    }
    sessions.remove(&user, &device, &session_id);
    if let Err(e) = node.routes().remove_if(&user, &device, &session_id).await {
        warn!(%user, %device, error = %e, "could not clear route");
    }
    let now = crate::auth::unix_ms(std::time::SystemTime::now());
    if let Err(e) = node.routes().seen(&user, now, LAST_SEEN_KEEP).await {
        debug!(%user, error = %e, "could not record last seen");
    }
    debug!(%user, %device, %session_id, "session ended");
}

pub(super) struct Session {
    pub(super) node: Arc<Node>,
    pub(super) user: String,
    pub(super) device: String,
    /// This session's route (its Hello time orders it against other sessions of the device).
    pub(super) route: Route,
    /// The next seq this device must receive.
    pub(super) next: u64,
    /// The last inbox read was a full page: read on.
    pub(super) more: bool,
    /// When a failed inbox read is to be retried.
    pub(super) retry_at: Option<tokio::time::Instant>,
    pub(super) acks: AckMerge,
    pub(super) gate: SendGate,
    /// (seq, msg_id) of the last messages pushed, to tell a retry's push from a seq that a
    /// rolled-back store gave out again.
    pub(super) sent: std::collections::VecDeque<(u64, String)>,
    /// Broadcast groups: their order and catch-up.
    pub(super) groups: Groups,
}

impl Session {
    /// Admits the device (`--max-devices`), takes its route (ending its older session,
    /// wherever it is), registers its cursor, sends Welcome and starts the replay. Returns false (after sending
    /// Kicked) when a later session of the device holds the route.
    async fn start(&mut self, out: &mut Outbound, resume: Resume) -> Result<bool, End> {
        let node = self.node.clone();
        // One device more than the user may have is refused before it takes anything.
        node.inbox().enroll(&self.user, &self.device).await?;
        let ttl = node.config().route_ttl;
        match node.routes().put(&self.user, &self.device, &self.route, ttl).await? {
            PutRoute::Took(Some(previous)) => {
                node.delivery().kick_replaced(&self.user, &self.device, &previous)
            }
            PutRoute::Took(None) => {}
            PutRoute::Superseded(_) => {
                self.stop(Some(Stop::Kicked(REPLACED.into())), out).await?;
                return Ok(false);
            }
        }
        let mut epoch = node.inbox().epoch(&self.user).await?;
        let last_seq = node.inbox().last_seq(&self.user).await?;
        let mut after = resume.point(&self.user, &epoch, last_seq);
        // Past the end of the inbox it came from: its last seqs were lost and will be given again.
        let past_end = resume.epoch == epoch && resume.after > last_seq;
        if past_end || self.rolled_back(after, &resume.msg_id).await? {
            // Its seqs were given out again: as good as a lost inbox. The device's stored
            // cursor (as old as the store's state) decides where delivery starts.
            warn!(user = %self.user, device = %self.device, after, "inbox rolled back under the \
                client's resume point: new epoch, resuming from the stored cursor");
            epoch = node.inbox().renew_epoch(&self.user).await?;
            after = 0;
        }
        let cursor =
            node.inbox().ack(&self.user, &self.device, after, &AckCheck::default()).await?;
        self.acks.set_stored(cursor);
        self.next = cursor + 1;
        // The first page is read before Welcome, so Welcome can say where delivery starts.
        let page = node.inbox().read(&self.user, cursor, PAGE).await?;
        let first_seq = page.first().map_or(last_seq.max(cursor) + 1, |m| m.seq);
        if first_seq > cursor + 1 {
            debug!(user = %self.user, device = %self.device, cursor, first_seq, "gone before delivered");
        }
        let groups = Groups::start(&node, &self.user, &self.device);
        let (groups, unread) = tokio::join!(groups, node.unread(&self.user));
        let (groups, moved) = groups?;
        let unread = unread.map_err(|e| End::Status(e.into()))?;
        self.groups = groups;
        out.send(Frame::Welcome(proto::Welcome {
            session_id: self.route.session_id.clone(),
            node_id: node.id().to_string(),
            user_id: self.user.clone(),
            device: self.device.clone(),
            last_seq,
            resume_from: cursor,
            inbox_epoch: epoch,
            first_seq,
            moved,
            unread_total: unread.map(|u| u.total),
            unread_conversations: unread.map_or(0, |u| u.conversations),
        }))
        .await?;
        self.more = page.len() == PAGE;
        for msg in page {
            self.push(msg, out).await?;
        }
        Ok(true)
    }

    /// Whether the inbox's message `after` is another one than the client's `msg_id` (the store
    /// was rolled back and gave that seq out again). A message no longer held cannot tell.
    async fn rolled_back(&self, after: u64, msg_id: &str) -> Result<bool, End> {
        if after == 0 || msg_id.is_empty() {
            return Ok(false);
        }
        let held = message_at(self.node.inbox(), &self.user, after).await?;
        Ok(held.is_some_and(|m| m.msg_id != msg_id))
    }

    async fn serve(
        &mut self,
        inbound: &mut Inbound,
        out: &mut Outbound,
        mut feed: Feed,
    ) -> Result<(), End> {
        let period = self.node.config().route_ttl / 3;
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (retry, ack_due) = (self.retry_at, self.acks.due());
            let (group_acks_due, gap_due) = (self.groups.ack_due(), self.groups.gap_due());
            tokio::select! {
                biased;
                _ = feed.stop.changed() => {
                    let stop = feed.stop.borrow_and_update().clone();
                    return self.stop(stop, out).await;
                }
                _ = out.closed() => return Err(End::Gone(Gone::Closed)),
                frame = inbound.next() => match frame {
                    Some(Ok(frame)) => self.on_frame(frame, out).await?,
                    None => return Ok(()),
                    Some(Err(status)) => return Err(End::Status(status)),
                },
                Some(msg) = feed.messages.recv() => self.on_live(msg, out).await?,
                Some(signal) = feed.signals.recv() => {
                    out.send(Frame::Signal(Arc::unwrap_or_clone(signal))).await?;
                }
                _ = feed.lag.wait() => {
                    self.groups.check_all();
                    self.fill(out).await?
                }
                _ = sleep_until(retry), if retry.is_some() => {
                    self.groups.check_all();
                    self.fill(out).await?
                }
                _ = sleep_until(ack_due), if ack_due.is_some() => {
                    if let Some(up_to) = self.acks.expire() {
                        self.store_ack(up_to).await?;
                    }
                }
                _ = sleep_until(gap_due), if gap_due.is_some() => self.groups.expire_gaps(),
                _ = sleep_until(group_acks_due), if group_acks_due.is_some() => {
                    self.groups.store_acks(&self.node, &self.user, &self.device).await;
                }
                _ = refresh.tick() => {
                    if !self.refresh_route().await {
                        return self.stop(Some(Stop::Kicked(REPLACED.into())), out).await;
                    }
                    self.groups.check_all();
                    self.catch_up(out).await?;
                }
                () = std::future::ready(()), if self.more => self.fill(out).await?,
                () = std::future::ready(()), if self.groups.behind() => self.fill_groups(out).await?,
            }
        }
    }

    async fn stop(&mut self, stop: Option<Stop>, out: &mut Outbound) -> Result<(), End> {
        match stop {
            Some(Stop::Kicked(reason)) => out.send(Frame::Kicked(proto::Kicked { reason })).await?,
            Some(Stop::Drain(ms)) => {
                out.send(Frame::Drain(proto::Drain { reconnect_after_ms: ms })).await?
            }
            Some(Stop::LoggedOut) => {
                let detail = "this device logged out; log in again";
                out.send(ended(Reason::LoggedOut, detail)).await?;
                return Err(End::Status(Status::unauthenticated(detail)));
            }
            None => {}
        }
        Ok(())
    }

    /// Keeps this session's route from lapsing. Returns false when another session owns the
    /// device. A store failure is retried at the next tick (the route lives three periods).
    async fn refresh_route(&self) -> bool {
        let ttl = self.node.config().route_ttl;
        match self.node.routes().refresh(&self.user, &self.device, &self.route, ttl).await {
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
        match self.node.inbox().last_seq(&self.user).await {
            Ok(last) if last + 1 < self.next => Err(self.rolled_back_at(last).await),
            Ok(last) if last >= self.next && !self.more => self.fill(out).await,
            _ => Ok(()),
        }
    }

    async fn on_live(&mut self, msg: Arc<StoredMessage>, out: &mut Outbound) -> Result<(), End> {
        if msg.seq == 0 {
            let (node, user, device) = (&self.node, &self.user, &self.device);
            return match self.groups.on_push(node, user, device, msg).await {
                Ok(ready) => {
                    for m in ready {
                        out.send(Frame::Message(m.into())).await?;
                    }
                    Ok(())
                }
                Err(e) => {
                    self.group_read_failed(e);
                    Ok(())
                }
            };
        }
        if msg.seq < self.next {
            // Sent already, or a seq given out again by a rolled-back store.
            if self.sent.iter().any(|(seq, id)| *seq == msg.seq && *id != msg.msg_id) {
                return Err(self.rolled_back_at(msg.seq).await);
            }
            return Ok(());
        }
        if msg.seq > self.next || self.more {
            return self.fill(out).await;
        }
        self.push(Arc::unwrap_or_clone(msg), out).await
    }

    async fn push(&mut self, msg: StoredMessage, out: &mut Outbound) -> Result<(), End> {
        self.next = msg.seq + 1;
        if self.sent.len() == SENT_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back((msg.seq, msg.msg_id.clone()));
        out.send(Frame::Message(msg.into())).await?;
        Ok(())
    }

    /// Pushes one page of the inbox from `next` on; `more` says whether to read on. A read
    /// error keeps the stream up and schedules a retry.
    async fn fill(&mut self, out: &mut Outbound) -> Result<(), End> {
        self.retry_at = None;
        match self.node.inbox().read(&self.user, self.next - 1, PAGE).await {
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

    /// Sends one page of a broadcast group's log this device is behind in.
    async fn fill_groups(&mut self, out: &mut Outbound) -> Result<(), End> {
        match self.groups.fill(&self.node, &self.user).await {
            Ok(page) => {
                for m in page {
                    out.send(Frame::Message(m.into())).await?;
                }
            }
            Err(e) => self.group_read_failed(e),
        }
        Ok(())
    }

    /// A failed read for a broadcast group: the groups are read again at the next retry.
    fn group_read_failed(&mut self, e: crate::store::StoreError) {
        warn!(user = %self.user, error = %e, "group read failed; will retry");
        self.retry_at = Some(tokio::time::Instant::now() + RETRY);
    }
}

/// Sleeps until `at`; forever when there is none (the select branch is disabled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
