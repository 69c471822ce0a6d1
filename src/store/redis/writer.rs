//! Group commit: every append, ack cursor and route refresh of a node goes through one writer
//! task, which takes
//! what is waiting (up to [`MAX_BATCH`]) while at most [`MAX_IN_FLIGHT`] batches are out, and
//! stores it in as few Redis calls as the deployment allows:
//! - a single server: one `send.lua` call for all the batch's messages, one `ack.lua` call
//!   for all its acks and one `route_refresh.lua` call for all its route refreshes, sent
//!   together;
//! - a Redis Cluster: one call per user (its keys share a slot), all sent at once (messages
//!   take a few steps, one call per hash tag each: `messages`); the cluster connection
//!   pipelines those bound for one master.
//!
//! No timer holds a message back: under light load a batch is the one message that came, and
//! batches grow by themselves while Redis is busy with earlier ones. Each caller is answered when
//! Redis has answered for its own message, so "acked = stored" holds as before, and a message
//! that fails (full inbox, over its rate, an error of its own) fails alone. Order needs nothing
//! more: a session waits for each send and each ack before the next, and the scripts take a
//! batch's messages in order.
use std::hash::Hash;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use redis::{FromRedisValue as _, Value};
use tokio::sync::{mpsc, oneshot};

use super::messages::{AppendReply, MAX_CALL, each, group_by};
use super::values::{Stored, bad, now_ms};
use super::{Committer, Conn};
use crate::store::{AckCheck, Appended, NewMessage, SenderCopy, StoreError, StoredMessage};

/// Most requests one batch takes.
const MAX_BATCH: usize = 256;
/// Batches in flight at once; while they are, new requests gather into the next. More than one,
/// so a slow call (a Cluster redirect, a reconnect) does not stall every write of the node.
const MAX_IN_FLIGHT: usize = 4;
/// Requests waiting for the writer at most; senders wait for room beyond it.
const QUEUE: usize = 8192;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Append(NewMessage, Reply<Appended>),
    /// A message already in its conversation's log: the steps after it (`complete_logged`).
    Complete(NewMessage, Stored, Reply<Appended>),
    Ack {
        user: String,
        device: String,
        up_to: u64,
        check: AckCheck,
        reply: Reply<u64>,
    },
    Refresh(Refresh, Reply<bool>),
}

/// A device route to extend (see `route_refresh.lua`).
pub(super) struct Refresh {
    pub(super) user: String,
    pub(super) device: String,
    pub(super) session_id: String,
    /// The route's new value, with its new lapse time.
    pub(super) value: String,
    pub(super) ttl_ms: u64,
}

/// The handle appends and acks go through; cheap to share.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task; it ends when the handle is dropped, after what it holds.
    pub(super) fn start(committer: Committer) -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(committer.run(rx));
        Self { jobs }
    }

    pub(super) async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Append(msg, reply), answer).await
    }

    pub(super) async fn ack(
        &self,
        user: &str,
        device: &str,
        up_to: u64,
        check: &AckCheck,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let (user, device, check) = (user.into(), device.into(), check.clone());
        let job = Job::Ack { user, device, up_to, check, reply };
        self.submit(job, answer).await
    }

    /// Completes a message its conversation's log already holds as `logged`.
    pub(super) async fn complete(
        &self,
        msg: NewMessage,
        logged: Stored,
    ) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Complete(msg, logged, reply), answer).await
    }

    /// Extends `refresh`'s route if its session still owns it (true), else leaves it (false).
    pub(super) async fn refresh(&self, refresh: Refresh) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Refresh(refresh, reply), answer).await
    }

    async fn submit<T>(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Internal("the store writer stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Committer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                n = rx.recv_many(&mut batch, MAX_BATCH), if open && in_flight.len() < MAX_IN_FLIGHT => {
                    if n == 0 {
                        open = false;
                    } else {
                        in_flight.push(self.commit(batch));
                    }
                }
            }
        }
    }

    async fn commit(&self, batch: Vec<Job>) {
        let (mut appends, mut acks, mut refreshes) = (Vec::new(), Vec::new(), Vec::new());
        let mut completes = Vec::new();
        for job in batch {
            match job {
                Job::Append(msg, reply) => appends.push((msg, reply)),
                Job::Complete(msg, logged, reply) => completes.push((msg, logged, reply)),
                Job::Ack { user, device, up_to, check, reply } => {
                    acks.push((user, device, up_to, check, reply))
                }
                Job::Refresh(refresh, reply) => refreshes.push((refresh, reply)),
            }
        }
        tokio::join!(self.append_all(appends), self.ack_all(acks), self.refresh_all(refreshes));
        // Rare (a sweep's): one at a time.
        for (msg, logged, reply) in completes {
            let outcome = self.complete_logged(msg.clone(), logged).await;
            let _ = reply.send(outcome.map(|r| appended(msg, r)));
        }
    }

    /// The calls a batch is stored in: on a Cluster one per user (one slot), else chunks.
    pub(super) fn calls<T, K: Eq + Hash>(
        &self,
        items: Vec<T>,
        user: impl Fn(&T) -> K,
    ) -> Vec<Vec<T>> {
        if self.conn.is_single() {
            let mut calls = Vec::new();
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                calls.push(items.by_ref().take(MAX_CALL).collect());
            }
            return calls;
        }
        group_by(items, user)
    }

    async fn append_all(&self, appends: Vec<(NewMessage, Reply<Appended>)>) {
        if appends.is_empty() {
            return;
        }
        let (msgs, replies): (Vec<_>, Vec<_>) = appends.into_iter().unzip();
        let outcomes = self.store_messages(&msgs).await;
        // One WAIT covers every write made on the connection so far: the whole batch.
        let replicated = match self.opts.wait_replicas {
            0 => Ok(()),
            _ => self.wait_for_replicas().await,
        };
        for ((msg, reply), outcome) in msgs.into_iter().zip(replies).zip(outcomes) {
            let outcome = outcome.and_then(|r| replicated.clone().map(|()| appended(msg, r)));
            let _ = reply.send(outcome);
        }
    }

    async fn ack_all(&self, acks: Vec<AckJob>) {
        let calls = self.calls(acks, |(user, ..)| user.clone());
        let results = futures_util::future::join_all(calls.iter().map(|c| self.ack_call(c))).await;
        for ((.., reply), outcome) in each(calls, results) {
            let _ = reply.send(outcome);
        }
    }

    /// One `ack.lua` call for `call`'s acks: each one's cursor, or the call's error.
    async fn ack_call(&self, call: &[AckJob]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut inv = self.ack.prepare_invoke();
        inv.arg(now_ms())
            .arg(self.opts.device_ttl.as_millis() as u64)
            .arg(self.keys.keep_ms(&self.opts))
            .arg(super::slack_ms(self.opts.retention));
        for (user, device, up_to, check, _) in call {
            for kind in ["ack", "seq", "inbox", "low", "devices", "epoch"] {
                inv.key(self.keys.key(kind, user));
            }
            let sent: Vec<String> = check.sent.iter().map(|(s, id)| format!("{s}:{id}")).collect();
            inv.arg(device).arg(up_to).arg(check.stored).arg(sent.join(","));
        }
        let replies: Vec<(i64, Value)> = inv.invoke_async(&mut self.conn.clone()).await?;
        let cursor = |v: Value| u64::from_redis_value(v).ok();
        let each = replies.into_iter().zip(call).map(|((code, value), (_, _, up_to, ..))| {
            match code {
                // Rolled back under the device: the seq that shows it.
                ROLLED_BACK => Err(StoreError::RolledBack { seq: cursor(value).unwrap_or(*up_to) }),
                _ => item_reply((code, value), "ack cursor", cursor),
            }
        });
        Ok(each.collect())
    }

    async fn refresh_all(&self, refreshes: Vec<(Refresh, Reply<bool>)>) {
        let calls = self.calls(refreshes, |(r, _)| r.user.clone());
        let results =
            futures_util::future::join_all(calls.iter().map(|c| self.refresh_call(c))).await;
        for ((_, reply), outcome) in each(calls, results) {
            let _ = reply.send(outcome);
        }
    }

    /// One `route_refresh.lua` call for `call`'s refreshes: whether each route is its session's.
    async fn refresh_call(
        &self,
        call: &[(Refresh, Reply<bool>)],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let mut inv = self.refresh.prepare_invoke();
        inv.arg(now_ms());
        for (r, _) in call {
            inv.key(self.keys.key("route", &r.user));
            inv.arg(&r.device).arg(&r.session_id).arg(&r.value).arg(r.ttl_ms);
        }
        let replies = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(item_replies(replies, "route", |v| {
            i64::from_redis_value(v).ok().map(|owned| owned == 1)
        }))
    }

    async fn wait_for_replicas(&self) -> Result<(), StoreError> {
        wait_replicas(&self.conn, self.opts.wait_replicas, self.timeout).await
    }
}

/// Waits until `want` replicas have every write made on `conn` so far, within the Redis
/// `timeout`. Fewer: UNAVAILABLE, the outcome unknown to the sender (the primary has it; a
/// retry with the same client_msg_id finds it).
pub(super) async fn wait_replicas(
    conn: &Conn,
    want: u32,
    timeout: Duration,
) -> Result<(), StoreError> {
    let timeout = timeout.saturating_sub(Duration::from_millis(100)).max(Duration::from_millis(1));
    let got: u32 = redis::cmd("WAIT")
        .arg(want)
        .arg(timeout.as_millis() as u64)
        .query_async(&mut conn.clone())
        .await?;
    if got < want {
        return Err(StoreError::Unavailable(format!(
            "{got} of {want} Redis replicas have the message"
        )));
    }
    Ok(())
}

/// One ack of a batch: user, device, up_to, what to check it against, the reply.
type AckJob = (String, String, u64, AckCheck, Reply<u64>);

/// `ack.lua`'s code for an ack refused because the inbox was rolled back under the device.
const ROLLED_BACK: i64 = 5;

/// The per-item replies of a batch script that answers `{ 0, value }` or `{ 4, error }` for
/// each item: `value` read by `ok` (a value it cannot read is a bad `what`), or the item's error.
fn item_replies<R>(
    replies: Vec<(i64, Value)>,
    what: &str,
    ok: impl Fn(Value) -> Option<R>,
) -> Vec<Result<R, StoreError>> {
    replies.into_iter().map(|reply| item_reply(reply, what, &ok)).collect()
}

/// One item's reply of a batch script (see [`item_replies`]).
fn item_reply<R>(
    (code, value): (i64, Value),
    what: &str,
    ok: impl Fn(Value) -> Option<R>,
) -> Result<R, StoreError> {
    match code {
        0 => ok(value).ok_or_else(|| bad(what)),
        _ => Err(StoreError::Internal(
            String::from_redis_value(value)
                .unwrap_or_else(|_| format!("{what}: the script failed")),
        )),
    }
}

/// The stored message `msg` became, and the sender's copy. For a duplicate: the first copy's
/// seqs, id and time (the body is the caller's; same key, same message).
fn appended(msg: NewMessage, r: AppendReply) -> Appended {
    let message = StoredMessage {
        seq: r.stored.seq,
        msg_id: r.stored.msg_id,
        from: msg.from,
        to: msg.to,
        body: msg.body,
        sent_at: r.stored.sent_at,
        conversation: msg.conversation,
        conv_seq: r.stored.conv_seq,
        client_msg_id: msg.client_msg_id,
        event: msg.event,
    };
    let copy = r.copy.map(|(seq, routes)| SenderCopy {
        message: StoredMessage { seq, ..message.clone() },
        routes,
    });
    Appended { message, duplicate: r.duplicate, routes: r.routes, copy }
}
