//! One chat stream: Hello and Welcome, then sends that resolve with their SendAck, acks, and
//! the server's pushes as [`Event`]s.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::{ClientError, Options, channel};
use crate::proto::{
    self, ClientFrame, ServerFrame, chat_client::ChatClient, client_frame, server_frame::Frame,
};

/// What the server pushes on a session.
#[derive(Debug, Clone)]
pub enum Event {
    Message(proto::Message),
    /// Ephemeral: someone is typing, or read up to a seq (never sent again).
    Signal(proto::Signal),
    /// A newer session of this device took over; do not reconnect automatically.
    Kicked(String),
    /// The node is draining; reconnect (through any gateway) after this many ms.
    Drain(u32),
    /// The session's token expired; log in again and resume.
    TokenExpired,
    /// The device was logged out; do not reconnect until the user logs in again.
    LoggedOut(String),
    /// The stream ended: cleanly (None) or with a status.
    Closed(Option<Status>),
}

type AckTx = oneshot::Sender<Result<proto::SendAck, ClientError>>;

/// Sends waiting for their SendAck/SendError, by client_msg_id.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<PendingState>>);

#[derive(Default)]
struct PendingState {
    /// The stream ended: no ack will come, so no send may wait for one.
    closed: bool,
    waiting: HashMap<String, AckTx>,
}

impl Pending {
    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        id: &str,
    ) -> Result<oneshot::Receiver<Result<proto::SendAck, ClientError>>, ClientError> {
        let mut state = self.state();
        if state.closed {
            return Err(ClientError::Closed);
        }
        if state.waiting.contains_key(id) {
            return Err(ClientError::Protocol(format!(
                "client_msg_id {id:?} is already in flight"
            )));
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(id.to_string(), tx);
        Ok(rx)
    }

    fn resolve(&self, id: &str, result: Result<proto::SendAck, ClientError>) {
        if let Some(tx) = self.state().waiting.remove(id) {
            let _ = tx.send(result);
        }
    }

    fn forget(&self, id: &str) {
        self.state().waiting.remove(id);
    }

    /// Fails every waiting send and refuses new ones.
    fn close(&self) {
        let waiting = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(ClientError::Closed));
        }
    }
}

/// Sends frames on a session; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    frames: mpsc::Sender<ClientFrame>,
    pending: Pending,
}

impl Sender {
    /// Sends `body` to `to` with a fresh client_msg_id; resolves once the server stored it.
    pub async fn send(&self, to: &str, body: &str) -> Result<proto::SendAck, ClientError> {
        self.send_with_id(&crate::ids::new_id(), to, body).await
    }

    /// Sends with a given client_msg_id (reuse it to retry the same message).
    pub async fn send_with_id(
        &self,
        client_msg_id: &str,
        to: &str,
        body: &str,
    ) -> Result<proto::SendAck, ClientError> {
        self.submit(client_msg_id, to, body).await?.await
    }

    /// Sends `body` to the group `group` (its conversation id) with the given client_msg_id;
    /// resolves once the server stored it in every member's inbox.
    pub async fn send_to_group(
        &self,
        client_msg_id: &str,
        group: &str,
        body: &str,
    ) -> Result<proto::SendAck, ClientError> {
        let msg = proto::SendMessage {
            client_msg_id: client_msg_id.to_string(),
            body: body.to_string(),
            group: group.to_string(),
            ..Default::default()
        };
        self.submit_message(msg).await?.await
    }

    /// Edits, deletes or recalls message `target_seq` of a conversation (`to` a user, or a
    /// `group`): logged as a change, acked like a send.
    pub async fn change(
        &self,
        client_msg_id: &str,
        to_or_group: &str,
        kind: proto::change::Kind,
        target_seq: u64,
        body: &str,
    ) -> Result<proto::SendAck, ClientError> {
        let group = to_or_group.starts_with("g:");
        let msg = proto::SendMessage {
            client_msg_id: client_msg_id.to_string(),
            to: if group { String::new() } else { to_or_group.to_string() },
            group: if group { to_or_group.to_string() } else { String::new() },
            body: body.to_string(),
            change: Some(proto::Change { kind: kind.into(), target_seq }),
        };
        self.submit_message(msg).await?.await
    }

    /// Queues a send frame and returns at once with the future of its ack, so that several
    /// sends can be in flight; the server stores them in the order they were submitted.
    pub async fn submit(
        &self,
        client_msg_id: &str,
        to: &str,
        body: &str,
    ) -> Result<impl Future<Output = Result<proto::SendAck, ClientError>> + use<>, ClientError>
    {
        self.submit_message(proto::SendMessage {
            client_msg_id: client_msg_id.to_string(),
            to: to.to_string(),
            body: body.to_string(),
            ..Default::default()
        })
        .await
    }

    /// [`Sender::submit`] for a message to a user or a group.
    pub async fn submit_message(
        &self,
        msg: proto::SendMessage,
    ) -> Result<impl Future<Output = Result<proto::SendAck, ClientError>> + use<>, ClientError>
    {
        let id = msg.client_msg_id.clone();
        let rx = self.pending.register(&id)?;
        if self.frame(client_frame::Frame::Send(msg)).await.is_err() {
            self.pending.forget(&id);
            return Err(ClientError::Closed);
        }
        Ok(async move { rx.await.unwrap_or(Err(ClientError::Closed)) })
    }

    /// Tells the other members of `conversation` online that this user is typing (the server
    /// relays at most one a second).
    pub async fn typing(&self, conversation: &str) -> Result<(), ClientError> {
        let typing = proto::Typing { conversation: conversation.into() };
        self.frame(client_frame::Frame::Typing(typing)).await
    }

    /// Tells the server everything up to `up_to` is processed.
    pub async fn ack(&self, up_to: u64) -> Result<(), ClientError> {
        self.frame(client_frame::Frame::Ack(proto::Ack { up_to, ..Default::default() })).await
    }

    /// Tells the server everything of broadcast group `conversation` up to `conv_seq` is
    /// processed.
    pub async fn ack_conversation(
        &self,
        conversation: &str,
        conv_seq: u64,
    ) -> Result<(), ClientError> {
        let ack = proto::Ack { up_to: 0, conversation: conversation.into(), conv_seq };
        self.frame(client_frame::Frame::Ack(ack)).await
    }

    /// Acks `m` (and what came before it) the way it was delivered: by inbox seq, or by
    /// conversation seq for a broadcast group's message (seq 0).
    pub async fn ack_message(&self, m: &proto::Message) -> Result<(), ClientError> {
        match m.seq {
            0 => self.ack_conversation(&m.conversation, m.conv_seq).await,
            seq => self.ack(seq).await,
        }
    }

    /// Resolves once every queued frame was taken by the transport.
    pub async fn flushed(&self) {
        while self.frames.capacity() < self.frames.max_capacity() && !self.frames.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Sends a raw frame.
    pub async fn frame(&self, frame: client_frame::Frame) -> Result<(), ClientError> {
        let frame = ClientFrame { frame: Some(frame) };
        self.frames.send(frame).await.map_err(|_| ClientError::Closed)
    }
}

/// One open chat stream.
///
/// Keep taking events: SendAcks travel on the same stream behind pushed messages, so a caller
/// that awaits sends but never reads events stalls once the event buffer is full (and the server
/// then ends the stream as not reading).
pub struct Session {
    /// What the server said when the session started.
    pub welcome: proto::Welcome,
    sender: Sender,
    events: mpsc::Receiver<Event>,
    reader: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Opens `Chat.Session` on `endpoint`, sends Hello, and waits for Welcome.
    pub async fn connect(
        endpoint: &str,
        token: &str,
        resume_after: u64,
        opts: &Options,
    ) -> Result<Session, ClientError> {
        Self::resume(endpoint, token, resume_after, "", "", opts).await
    }

    /// Like [`Session::connect`], naming the inbox epoch (from an earlier Welcome) that
    /// `resume_after` refers to, so that a lost and restarted inbox is not skipped into, and
    /// the msg_id of message `resume_after` as received, so that a rolled-back inbox (one that
    /// gave that seq to another message) is noticed too.
    pub async fn resume(
        endpoint: &str,
        token: &str,
        resume_after: u64,
        inbox_epoch: &str,
        resume_msg_id: &str,
        opts: &Options,
    ) -> Result<Session, ClientError> {
        let mut chat =
            ChatClient::new(channel(endpoint, opts).await?).max_decoding_message_size(usize::MAX);
        let (frames, rx) = mpsc::channel(256);
        let hello = proto::Hello {
            token: token.to_string(),
            device: String::new(),
            resume_after,
            inbox_epoch: inbox_epoch.to_string(),
            resume_msg_id: resume_msg_id.to_string(),
        };
        let hello = ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) };
        frames.send(hello).await.map_err(|_| ClientError::Closed)?;
        let mut inbound = chat.session(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(ServerFrame { frame: Some(Frame::Welcome(w)) }) => w,
            Some(ServerFrame { frame: Some(Frame::SessionEnded(e)) }) => {
                return Err(ClientError::LoggedOut(e.detail));
            }
            Some(other) => {
                return Err(ClientError::Protocol(format!("expected Welcome, got {other:?}")));
            }
            None => return Err(ClientError::Closed),
        };
        let pending = Pending::default();
        let (events_tx, events) = mpsc::channel(opts.event_buffer);
        let reader = tokio::spawn(read(inbound, events_tx, pending.clone()));
        Ok(Session { welcome, sender: Sender { frames, pending }, events, reader })
    }

    /// A handle for sending and acking.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// The next server event; `None` once the stream ended and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.sender.pending.close();
    }
}

/// Reads server frames: acks resolve pending sends, everything else becomes an [`Event`].
async fn read(mut inbound: Streaming<ServerFrame>, events: mpsc::Sender<Event>, pending: Pending) {
    let resolve = |id: &str, r| pending.resolve(id, r);
    let end = loop {
        let event = match inbound.message().await {
            Ok(Some(ServerFrame { frame: Some(f) })) => match f {
                Frame::SendAck(a) => {
                    resolve(&a.client_msg_id.clone(), Ok(a));
                    continue;
                }
                Frame::SendError(e) => {
                    let retry_after = Duration::from_millis(e.retry_after_ms.into());
                    let code = Code::from(e.code);
                    let err = ClientError::Rejected { code, reason: e.reason, retry_after };
                    resolve(&e.client_msg_id, Err(err));
                    continue;
                }
                Frame::Message(m) => Event::Message(m),
                Frame::Signal(s) => Event::Signal(s),
                Frame::Kicked(k) => Event::Kicked(k.reason),
                Frame::Drain(d) => Event::Drain(d.reconnect_after_ms),
                Frame::SessionEnded(e) => match e.reason() {
                    proto::session_ended::Reason::LoggedOut => Event::LoggedOut(e.detail),
                    _ => Event::TokenExpired,
                },
                Frame::Welcome(_) => continue,
            },
            Ok(Some(ServerFrame { frame: None })) => continue,
            Ok(None) => break Event::Closed(None),
            Err(status) => break Event::Closed(Some(status)),
        };
        if events.send(event).await.is_err() {
            break Event::Closed(None);
        }
    };
    pending.close();
    let _ = events.send(end).await;
}
