//! The task behind a resilient [`super::Client`]: connects through the gateways in turn with
//! backoff, resumes after what the application acked, re-sends unacked messages in order with
//! their client_msg_id, and hands messages to the application once each, in seq order.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tracing::debug;

use super::outgoing::{Outgoing, tag, with_id};
use super::shown::Shown;
use super::{ClientEvent, Cmd, Config};
use crate::client::{ClientError, Event, Session, login};
use crate::proto;

/// How a connection ended.
enum Ended {
    /// Reconnect after this long.
    Reconnect(Duration, String),
    /// Stop for good.
    Stop,
}

pub(super) struct Supervisor {
    config: Config,
    events: mpsc::Sender<ClientEvent>,
    retry: mpsc::WeakSender<Cmd>,
    /// Highest seq handed to the application.
    delivered: u64,
    /// Highest seq the application acked.
    acked: u64,
    /// The inbox epoch `delivered` and `acked` refer to (empty before the first Welcome).
    epoch: String,
    /// msg_id of each message handed to the application above `acked`, and of `acked` itself:
    /// Hello names it so that a rolled-back inbox is noticed.
    ids: std::collections::BTreeMap<u64, String>,
    /// Messages lately handed to the application, so none is handed over twice.
    shown: Shown,
    /// Broadcast groups: the highest conversation seq handed to the application, and acked by
    /// it, per conversation.
    conv_delivered: HashMap<String, u64>,
    conv_acked: HashMap<String, u64>,
    /// Unacked sends in submission order (key: order number), with their client_msg_id.
    pending: BTreeMap<u64, (String, Outgoing)>,
    next_order: u64,
    /// Messages received but not yet taken by the application (its buffer was full), in order.
    overflow: std::collections::VecDeque<proto::Message>,
    backoff: Duration,
    gateway: usize,
}

impl Supervisor {
    pub(super) fn new(
        config: Config,
        events: mpsc::Sender<ClientEvent>,
        retry: mpsc::WeakSender<Cmd>,
    ) -> Self {
        let backoff = config.backoff_min;
        Supervisor {
            delivered: config.resume_after,
            acked: config.resume_after,
            epoch: String::new(),
            ids: std::collections::BTreeMap::new(),
            shown: Shown::new(config.dedup_window),
            config,
            events,
            retry,
            pending: BTreeMap::new(),
            conv_delivered: HashMap::new(),
            conv_acked: HashMap::new(),
            next_order: 0,
            overflow: std::collections::VecDeque::new(),
            backoff,
            gateway: 0,
        }
    }

    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut delay = Duration::ZERO;
        loop {
            // Wait out the delay, still taking commands.
            let until = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    cmd = cmds.recv() => match cmd {
                        Some(cmd) => self.offline(cmd),
                        None => return,
                    },
                }
            }
            match self.connect().await {
                Ok(session) => match self.serve(session, &mut cmds).await {
                    Ended::Reconnect(after, reason) => {
                        let _ = self.events.send(ClientEvent::Disconnected { reason }).await;
                        delay = after;
                    }
                    Ended::Stop => return self.fail_pending(),
                },
                Err(e) => {
                    debug!(error = %e, "connect failed");
                    let _ =
                        self.events.send(ClientEvent::Disconnected { reason: e.to_string() }).await;
                    delay = self.next_backoff();
                }
            }
        }
    }

    /// The application processed everything up to `seq`.
    fn ack(&mut self, seq: u64) {
        self.acked = self.shown.acked_through(self.acked.max(seq.min(self.delivered)));
        // Keep the acked message's id (the resume point), forget those below it.
        let kept = self.ids.split_off(&self.acked);
        self.ids = kept;
    }

    /// The application processed a broadcast group's messages up to `seq`.
    fn ack_conversation(&mut self, conv: String, seq: u64) -> u64 {
        let acked = self.conv_acked.entry(conv).or_default();
        *acked = (*acked).max(seq);
        *acked
    }

    /// Full jitter over an exponential backoff.
    fn next_backoff(&mut self) -> Duration {
        let current = self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        current.mul_f64(rand::random_range(0.5..=1.0))
    }

    fn offline(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send { msg, reply } => self.queue(msg, reply),
            Cmd::Ack(seq) => self.ack(seq),
            Cmd::AckConversation(conv, seq) => {
                self.ack_conversation(conv, seq);
            }
            Cmd::Retry(_) => {} // re-sent on reconnect anyway
            Cmd::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    fn queue(
        &mut self,
        msg: proto::SendMessage,
        reply: oneshot::Sender<Result<proto::SendAck, ClientError>>,
    ) {
        let order = self.next_order;
        self.next_order += 1;
        self.pending.insert(order, (crate::ids::new_id(), Outgoing { msg, reply: Some(reply) }));
    }

    /// Logs in through the next gateway and opens a session resuming after the last ack.
    async fn connect(&mut self) -> Result<Session, ClientError> {
        let gateways = &self.config.gateways;
        if gateways.is_empty() {
            return Err(ClientError::Protocol("no gateway to log in through".into()));
        }
        let gateway = gateways[self.gateway % gateways.len()].clone();
        self.gateway += 1;
        let c = &self.config;
        let login = login(&gateway, &c.user, &c.device, &c.jwt, &c.options).await?;
        let acked_id = self.ids.get(&self.acked).map_or("", String::as_str);
        let (endpoint, token) = (&login.endpoint, &login.token);
        let session =
            Session::resume(endpoint, token, self.acked, &self.epoch, acked_id, &c.options).await?;
        let w = &session.welcome;
        let new_epoch = !self.epoch.is_empty() && w.inbox_epoch != self.epoch;
        if new_epoch || w.last_seq < self.delivered {
            // The inbox we knew is gone (an in-memory store restarted, Redis lost its data): its
            // seqs started again, so ours mean nothing there. Start over with it.
            self.delivered = w.resume_from;
            self.acked = w.resume_from;
            self.ids.clear();
            self.shown.new_epoch();
        }
        self.epoch = w.inbox_epoch.clone();
        let gap = (w.first_seq > self.delivered + 1)
            .then(|| ClientEvent::Gap { first: self.delivered + 1, last: w.first_seq - 1 });
        self.delivered = self.delivered.max(w.first_seq.saturating_sub(1));
        self.backoff = self.config.backoff_min;
        let _ = self
            .events
            .send(ClientEvent::Connected {
                node_id: w.node_id.clone(),
                endpoint: login.endpoint,
                inbox_epoch: w.inbox_epoch.clone(),
                unread: w.unread_total.map(|total| (total, w.unread_conversations)),
            })
            .await;
        if let Some(gap) = gap {
            let _ = self.events.send(gap).await;
        }
        Ok(session)
    }

    async fn serve(&mut self, mut session: Session, cmds: &mut mpsc::Receiver<Cmd>) -> Ended {
        let sender = session.sender();
        let mut acks = FuturesUnordered::new();
        // Unacked sends go again, in their order, with their ids.
        for (id, out) in self.pending.values() {
            match sender.submit_message(with_id(id, &out.msg)).await {
                Ok(ack) => acks.push(tag(id.clone(), ack)),
                Err(e) => return Ended::Reconnect(self.next_backoff(), e.to_string()),
            }
        }
        // Acks go out only up to what this stream has delivered (the server refuses more).
        let mut stream_max = session.welcome.resume_from;
        let mut ack_sent = session.welcome.resume_from;
        // Broadcast groups: the last conversation seq this stream sent of each.
        let mut stream_convs: HashMap<String, u64> = HashMap::new();
        loop {
            let target = self.acked.min(stream_max);
            if target > ack_sent {
                ack_sent = target;
                let _ = sender.ack(target).await;
            }
            // Messages the application has no room for wait in `overflow`: the stream is read on,
            // so that SendAcks behind them (and commands) keep flowing for a slow application.
            let events = self.events.clone();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return Ended::Stop,
                    Some(Cmd::Send { msg, reply }) => {
                        self.queue(msg, reply);
                        let (id, out) = self.pending.values().next_back().expect("just queued");
                        match sender.submit_message(with_id(id, &out.msg)).await {
                            Ok(ack) => acks.push(tag(id.clone(), ack)),
                            Err(e) => return Ended::Reconnect(self.next_backoff(), e.to_string()),
                        }
                    }
                    Some(Cmd::Ack(seq)) => self.ack(seq),
                    Some(Cmd::AckConversation(conv, seq)) => {
                        // Only up to what this stream sent (the server refuses more).
                        let sent = stream_convs.get(&conv).copied().unwrap_or(0);
                        let up_to = self.ack_conversation(conv.clone(), seq).min(sent);
                        if up_to > 0 {
                            let _ = sender.ack_conversation(&conv, up_to).await;
                        }
                    }
                    Some(Cmd::Flush(done)) => {
                        sender.flushed().await;
                        let _ = done.send(());
                    }
                    Some(Cmd::Retry(id)) => {
                        if let Some((id, out)) = self.pending.values().find(|(i, _)| *i == id) {
                            match sender.submit_message(with_id(id, &out.msg)).await {
                                Ok(ack) => acks.push(tag(id.clone(), ack)),
                                // Already re-sent by a reconnect meanwhile.
                                Err(ClientError::Protocol(_)) => {}
                                Err(e) => return Ended::Reconnect(self.next_backoff(), e.to_string()),
                            }
                        }
                    }
                },
                Some((id, result)) = acks.next() => self.on_ack(id, result),
                permit = events.reserve(), if !self.overflow.is_empty() => match permit {
                    Ok(permit) => {
                        let m = self.overflow.pop_front().expect("not empty");
                        permit.send(ClientEvent::Message(m));
                    }
                    Err(_) => return Ended::Stop,
                },
                event = session.next_event() => match event {
                    Some(Event::Message(m)) if m.seq == 0 => {
                        let conv = m.conversation.clone();
                        stream_convs.insert(conv.clone(), m.conv_seq);
                        let got = self.conv_delivered.entry(conv.clone()).or_default();
                        if m.conv_seq > *got {
                            *got = m.conv_seq;
                            self.forward(m);
                        } else if self.conv_acked.get(&conv).is_some_and(|a| *a >= m.conv_seq) {
                            // Sent again because the server's cursor lags ours: move it.
                            let _ = sender.ack_conversation(&conv, m.conv_seq).await;
                        }
                    }
                    Some(Event::Message(m)) => {
                        stream_max = stream_max.max(m.seq);
                        if m.seq > self.delivered {
                            self.delivered = m.seq;
                            self.ids.insert(m.seq, m.msg_id.clone());
                            self.forward_once(m);
                        }
                    }
                    // Ephemeral: dropped rather than waited for when the application lags.
                    Some(Event::Signal(s)) => _ = self.events.try_send(ClientEvent::Signal(s)),
                    Some(Event::Kicked(reason)) => {
                        let _ = self.events.send(ClientEvent::Kicked(reason)).await;
                        return Ended::Stop;
                    }
                    Some(Event::LoggedOut(reason)) => {
                        let _ = self.events.send(ClientEvent::LoggedOut(reason)).await;
                        return Ended::Stop;
                    }
                    // Log in again at once: the stream closes with UNAUTHENTICATED next.
                    Some(Event::TokenExpired) => {
                        return Ended::Reconnect(Duration::ZERO, "session token expired".into());
                    }
                    Some(Event::Drain(ms)) => {
                        return Ended::Reconnect(Duration::from_millis(u64::from(ms)), "node draining".into());
                    }
                    Some(Event::Closed(status)) => {
                        // An expired token: log in again at once (a refused login backs off).
                        let expired = status.as_ref().is_some_and(|s| s.code() == Code::Unauthenticated);
                        let reason = status.map_or("stream closed".to_string(), |s| s.to_string());
                        let delay = if expired { Duration::ZERO } else { self.next_backoff() };
                        return Ended::Reconnect(delay, reason);
                    }
                    None => return Ended::Reconnect(self.next_backoff(), "stream closed".into()),
                },
            }
        }
    }

    /// [`Self::forward`]s a message not shown yet; one shown already (under another seq) is
    /// skipped and acked with the ones before it.
    fn forward_once(&mut self, m: proto::Message) {
        if !self.shown.seen_before(&m) {
            return self.forward(m);
        }
        debug!(seq = m.seq, msg_id = %m.msg_id, "shown already; skipped");
        self.shown.skip(m.seq);
        self.ack(self.acked);
    }

    /// Hands a message to the application, or queues it behind the ones waiting for room.
    fn forward(&mut self, m: proto::Message) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(m);
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(ClientEvent::Message(m))) =
            self.events.try_send(ClientEvent::Message(m))
        {
            self.overflow.push_back(m);
        }
    }

    fn on_ack(&mut self, id: String, result: Result<proto::SendAck, ClientError>) {
        let Some(order) = self.pending.iter().find(|(_, (i, _))| *i == id).map(|(o, _)| *o) else {
            return;
        };
        match result {
            Ok(ack) => {
                if let Some((_, mut out)) = self.pending.remove(&order)
                    && let Some(reply) = out.reply.take()
                {
                    let _ = reply.send(Ok(ack));
                }
            }
            Err(
                e @ ClientError::Rejected {
                    code: Code::Unavailable | Code::ResourceExhausted, ..
                },
            ) => {
                // No sooner than the server asked (a rate refusal says when).
                let delay = self.config.retry_delay.max(e.retry_after().unwrap_or_default());
                let retry = self.retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(cmds) = retry.upgrade() {
                        let _ = cmds.send(Cmd::Retry(id)).await;
                    }
                });
            }
            // The stream ended: it goes again on the next connection.
            Err(ClientError::Closed) => {}
            Err(e) => {
                if let Some((_, mut out)) = self.pending.remove(&order)
                    && let Some(reply) = out.reply.take()
                {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    fn fail_pending(&mut self) {
        for (_, (_, mut out)) in std::mem::take(&mut self.pending) {
            if let Some(reply) = out.reply.take() {
                let _ = reply.send(Err(ClientError::Closed));
            }
        }
    }
}
