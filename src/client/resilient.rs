//! A client that stays connected: when its stream ends (node gone, keepalive timeout, Drain) it
//! logs in again through any gateway of its list, so the strategy may pick another node,
//! resumes after the last seq the application acked, and re-sends unacked messages with their
//! original client_msg_id, so each is stored exactly once. Messages reach the application once
//! each, in seq order: redeliveries after a reconnect are dropped by seq. A `Kicked` stream is
//! not reconnected.
use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tracing::debug;

use super::{ClientError, Event, Options, Session, login};
use crate::proto;

/// Who to be and where to log in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Gateway addresses (any nodes); tried in turn.
    pub gateways: Vec<String>,
    pub user: String,
    pub device: String,
    /// For nodes in `jwt` login mode.
    pub jwt: String,
    pub options: Options,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Delay before re-sending a message the server refused as retryable (store down, rate).
    pub retry_delay: Duration,
    /// The highest seq this device already processed (from the application's own storage).
    pub resume_after: u64,
}

impl Config {
    pub fn new(gateways: Vec<String>, user: &str, device: &str) -> Self {
        Config {
            gateways,
            user: user.to_string(),
            device: device.to_string(),
            jwt: String::new(),
            options: Options::default(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            retry_delay: Duration::from_millis(250),
            resume_after: 0,
        }
    }
}

/// What the application sees.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A new message (each seq once, in order).
    Message(proto::Message),
    /// A stream is up (again), on this node.
    Connected { node_id: String, endpoint: String },
    /// The stream ended; reconnecting.
    Disconnected { reason: String },
    /// Another session of this device took over: the client has stopped.
    Kicked(String),
}

enum Cmd {
    Send { to: String, body: String, reply: oneshot::Sender<Result<proto::SendAck, ClientError>> },
    Ack(u64),
    Retry(String),
    Flush(oneshot::Sender<()>),
}

/// A self-healing connection for one user and device.
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<ClientEvent>,
    task: tokio::task::JoinHandle<()>,
}

/// Sends and acks on a [`Client`]; cheap to clone.
#[derive(Clone)]
pub struct Handle {
    cmds: mpsc::Sender<Cmd>,
}

impl Handle {
    /// Sends a message; resolves once it is stored, across reconnects if need be. Fails only
    /// for a non-retryable refusal (e.g. INVALID_ARGUMENT) or when the client stopped.
    pub async fn send(&self, to: &str, body: &str) -> Result<proto::SendAck, ClientError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Send { to: to.to_string(), body: body.to_string(), reply };
        self.cmds.send(cmd).await.map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Marks everything up to `seq` as processed by the application.
    pub async fn ack(&self, seq: u64) -> Result<(), ClientError> {
        self.cmds.send(Cmd::Ack(seq)).await.map_err(|_| ClientError::Closed)
    }

    /// Waits until every earlier command's frames were handed to the transport (e.g. before
    /// exiting, so that the last ack is not lost). Returns at once while disconnected.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Client {
    /// Starts connecting in the background.
    pub fn start(config: Config) -> Client {
        let (cmds, cmd_rx) = mpsc::channel(1024);
        let (events_tx, events) = mpsc::channel(config.options.event_buffer);
        let retry = cmds.downgrade();
        let task = tokio::spawn(Supervisor::new(config, events_tx, retry).run(cmd_rx));
        Client { cmds, events, task }
    }

    pub fn handle(&self) -> Handle {
        Handle { cmds: self.cmds.clone() }
    }

    /// The next event; `None` once the client stopped (kicked) and all events were taken.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Outgoing {
    to: String,
    body: String,
    reply: Option<oneshot::Sender<Result<proto::SendAck, ClientError>>>,
}

/// How a connection ended.
enum Ended {
    /// Reconnect after this long.
    Reconnect(Duration, String),
    /// Stop for good.
    Stop,
}

struct Supervisor {
    config: Config,
    events: mpsc::Sender<ClientEvent>,
    retry: mpsc::WeakSender<Cmd>,
    /// Highest seq handed to the application.
    delivered: u64,
    /// Highest seq the application acked.
    acked: u64,
    /// The inbox epoch `delivered` and `acked` refer to (empty before the first Welcome).
    epoch: String,
    /// Unacked sends in submission order (key: order number), with their client_msg_id.
    pending: BTreeMap<u64, (String, Outgoing)>,
    next_order: u64,
    /// Messages received but not yet taken by the application (its buffer was full), in order.
    overflow: std::collections::VecDeque<proto::Message>,
    backoff: Duration,
    gateway: usize,
}

impl Supervisor {
    fn new(
        config: Config,
        events: mpsc::Sender<ClientEvent>,
        retry: mpsc::WeakSender<Cmd>,
    ) -> Self {
        let backoff = config.backoff_min;
        Supervisor {
            delivered: config.resume_after,
            acked: config.resume_after,
            epoch: String::new(),
            config,
            events,
            retry,
            pending: BTreeMap::new(),
            next_order: 0,
            overflow: std::collections::VecDeque::new(),
            backoff,
            gateway: 0,
        }
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
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

    /// Full jitter over an exponential backoff.
    fn next_backoff(&mut self) -> Duration {
        let current = self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        current.mul_f64(rand::random_range(0.5..=1.0))
    }

    fn offline(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send { to, body, reply } => self.queue(to, body, reply),
            Cmd::Ack(seq) => self.acked = self.acked.max(seq.min(self.delivered)),
            Cmd::Retry(_) => {} // re-sent on reconnect anyway
            Cmd::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    fn queue(
        &mut self,
        to: String,
        body: String,
        reply: oneshot::Sender<Result<proto::SendAck, ClientError>>,
    ) {
        let order = self.next_order;
        self.next_order += 1;
        self.pending
            .insert(order, (crate::ids::new_id(), Outgoing { to, body, reply: Some(reply) }));
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
        let session =
            Session::resume(&login.endpoint, &login.token, self.acked, &self.epoch, &c.options)
                .await?;
        let w = &session.welcome;
        let new_epoch = !self.epoch.is_empty() && w.inbox_epoch != self.epoch;
        if new_epoch || w.last_seq < self.delivered {
            // The inbox we knew is gone (an in-memory store restarted, Redis lost its data): its
            // seqs started again, so ours mean nothing there. Start over with it.
            self.delivered = w.resume_from;
            self.acked = w.resume_from;
        }
        self.epoch = w.inbox_epoch.clone();
        self.backoff = self.config.backoff_min;
        let _ = self
            .events
            .send(ClientEvent::Connected { node_id: w.node_id.clone(), endpoint: login.endpoint })
            .await;
        Ok(session)
    }

    async fn serve(&mut self, mut session: Session, cmds: &mut mpsc::Receiver<Cmd>) -> Ended {
        let sender = session.sender();
        let mut acks = FuturesUnordered::new();
        // Unacked sends go again, in their order, with their ids.
        for (id, out) in self.pending.values() {
            match sender.submit(id, &out.to, &out.body).await {
                Ok(ack) => acks.push(tag(id.clone(), ack)),
                Err(e) => return Ended::Reconnect(self.next_backoff(), e.to_string()),
            }
        }
        // Acks go out only up to what this stream has delivered (the server refuses more).
        let mut stream_max = session.welcome.resume_from;
        let mut ack_sent = session.welcome.resume_from;
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
                    Some(Cmd::Send { to, body, reply }) => {
                        self.queue(to, body, reply);
                        let (id, out) = self.pending.values().next_back().expect("just queued");
                        match sender.submit(id, &out.to, &out.body).await {
                            Ok(ack) => acks.push(tag(id.clone(), ack)),
                            Err(e) => return Ended::Reconnect(self.next_backoff(), e.to_string()),
                        }
                    }
                    Some(Cmd::Ack(seq)) => self.acked = self.acked.max(seq.min(self.delivered)),
                    Some(Cmd::Flush(done)) => {
                        sender.flushed().await;
                        let _ = done.send(());
                    }
                    Some(Cmd::Retry(id)) => {
                        if let Some((id, out)) = self.pending.values().find(|(i, _)| *i == id) {
                            match sender.submit(id, &out.to, &out.body).await {
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
                    Some(Event::Message(m)) => {
                        stream_max = stream_max.max(m.seq);
                        if m.seq > self.delivered {
                            self.delivered = m.seq;
                            self.forward(m);
                        }
                    }
                    Some(Event::Kicked(reason)) => {
                        let _ = self.events.send(ClientEvent::Kicked(reason)).await;
                        return Ended::Stop;
                    }
                    Some(Event::Drain(ms)) => {
                        return Ended::Reconnect(Duration::from_millis(u64::from(ms)), "node draining".into());
                    }
                    Some(Event::Closed(status)) => {
                        let reason = status.map_or("stream closed".to_string(), |s| s.to_string());
                        return Ended::Reconnect(self.next_backoff(), reason);
                    }
                    None => return Ended::Reconnect(self.next_backoff(), "stream closed".into()),
                },
            }
        }
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
            Err(ClientError::Rejected {
                code: Code::Unavailable | Code::ResourceExhausted,
                ..
            }) => {
                let (retry, delay) = (self.retry.clone(), self.config.retry_delay);
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

async fn tag(
    id: String,
    ack: impl Future<Output = Result<proto::SendAck, ClientError>>,
) -> (String, Result<proto::SendAck, ClientError>) {
    (id, ack.await)
}
