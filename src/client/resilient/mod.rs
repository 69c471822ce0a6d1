//! A client that stays connected: when its stream ends (node gone, keepalive timeout, Drain) it
//! logs in again through any gateway of its list, so the strategy may pick another node,
//! resumes after the last seq the application acked, and re-sends unacked messages with their
//! original client_msg_id, so each is stored exactly once. Messages reach the application once
//! each, in seq order: redeliveries after a reconnect are dropped by seq. A `Kicked` stream is
//! not reconnected.
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{ClientError, Options};
use crate::proto;

mod outgoing;
mod shown;
mod supervisor;

use supervisor::Supervisor;

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
    /// How many of the messages lately shown are remembered, so that a message the store gives
    /// again under another seq (after a rollback, or a retry whose ack was lost in a failover)
    /// is not shown twice. 0: none.
    pub dedup_window: usize,
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
            dedup_window: 1024,
        }
    }
}

/// What the application sees.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A new message (each seq once, in order; a broadcast group's, seq 0, each conversation
    /// seq once, in its conversation's order).
    Message(proto::Message),
    /// A stream is up (again), on this node. `unread`: the user's unread messages over all
    /// their conversations and how many conversations hold them, when Welcome counted them.
    /// `inbox_epoch`: the inbox's seqs count in this epoch; another one than before means the
    /// store lost or rolled back the inbox, and seqs started again (messages already shown are
    /// not shown again).
    Connected { node_id: String, endpoint: String, unread: Option<(u64, u32)>, inbox_epoch: String },
    /// The stream ended; reconnecting.
    Disconnected { reason: String },
    /// Another session of this device took over: the client has stopped.
    Kicked(String),
    /// The device was logged out (by this user, maybe from another device): the client has
    /// stopped.
    LoggedOut(String),
    /// Ephemeral: someone is typing, or read up to a seq.
    Signal(proto::Signal),
    /// Messages `first..=last` expired (past the retention) before this device got them; they
    /// will never come. Delivery goes on after `last`.
    Gap { first: u64, last: u64 },
}

/// What a [`Handle`] asks of the supervisor task.
enum Cmd {
    Send {
        msg: proto::SendMessage,
        reply: oneshot::Sender<Result<proto::SendAck, ClientError>>,
    },
    Ack(u64),
    /// A broadcast group's messages up to this conversation seq.
    AckConversation(String, u64),
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
        let msg = proto::SendMessage { to: to.into(), body: body.into(), ..Default::default() };
        self.submit(msg).await
    }

    /// [`Handle::send`] to a group (its conversation id).
    pub async fn send_to_group(
        &self,
        group: &str,
        body: &str,
    ) -> Result<proto::SendAck, ClientError> {
        let msg =
            proto::SendMessage { group: group.into(), body: body.into(), ..Default::default() };
        self.submit(msg).await
    }

    async fn submit(&self, msg: proto::SendMessage) -> Result<proto::SendAck, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Send { msg, reply }).await.map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Marks everything up to `seq` as processed by the application.
    pub async fn ack(&self, seq: u64) -> Result<(), ClientError> {
        self.cmds.send(Cmd::Ack(seq)).await.map_err(|_| ClientError::Closed)
    }

    /// Marks `m` (and what came before it) as processed: by inbox seq, or by conversation seq
    /// for a broadcast group's message (seq 0).
    pub async fn ack_message(&self, m: &proto::Message) -> Result<(), ClientError> {
        let cmd = match m.seq {
            0 => Cmd::AckConversation(m.conversation.clone(), m.conv_seq),
            seq => Cmd::Ack(seq),
        };
        self.cmds.send(cmd).await.map_err(|_| ClientError::Closed)
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
