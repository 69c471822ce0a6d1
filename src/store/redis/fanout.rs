//! Fan-out that survives its node: a durable marker for every group message (and event) whose
//! delivery into the members' inboxes has begun and not finished, and for every direct message
//! a Cluster stores in steps, resumed by any node.
//!
//! Before such a message is logged, its node adds `<conversation> <from> <client_msg_id>` to its
//! own in-flight set `<p>:inflight:{w:<writer>}` (scored by the time), and removes it once every
//! inbox has it. A node that dies in between leaves the marker behind. Every node runs
//! [`RedisStore::sweep_fanout_every`]: it lists the writers (`<p>:writers`, each node's id with
//! the time it last swept) and takes their markers older than a grace; for each it delivers the
//! newest message of that group's log to the current members. The members' cursors make that
//! idempotent and bring each member up to it from wherever they are (the gap is read from the
//! log), so whichever message the dead node was delivering reaches them, once. A direct message
//! is stored again from its log entry, as its sender's retry would be. A sender who retries
//! gets there first; the sweep then finds nothing left to do.
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use tracing::{debug, warn};

use super::values::{logged_message, now_ms, parse_stored};
use super::{Conn, RedisStore};
use crate::ids::Conversation;
use crate::store::groups::{Groups, broadcasts};
use crate::store::{NewMessage, StoreError};

/// How old a marker must be before another node takes it over: longer than any delivery that
/// is still running takes.
pub const FANOUT_GRACE: Duration = Duration::from_secs(10);
/// Markers one sweep takes per writer.
const SWEEP_AT_ONCE: isize = 100;
/// A writer not seen for this long, with nothing in flight, is forgotten.
const WRITER_GONE: Duration = Duration::from_secs(300);
/// An in-flight set outlives its node's last sweep this long (others take it over long before).
const INFLIGHT_KEPT: Duration = Duration::from_secs(86_400);

/// The marker of a message of `conversation` from `from` with `client_msg_id`: spaces apart,
/// which none of the three may hold.
pub(super) fn marker(conversation: &str, from: &str, client_msg_id: &str) -> String {
    format!("{conversation} {from} {client_msg_id}")
}

/// Adds (`on`, at the current time) or removes `marks` in the in-flight set `key`, in one call.
pub(super) async fn mark(
    conn: &Conn,
    key: &str,
    marks: &[String],
    on: bool,
) -> Result<(), redis::RedisError> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd(if on { "ZADD" } else { "ZREM" });
    cmd.arg(key);
    let now = now_ms();
    for m in marks {
        if on {
            cmd.arg(now);
        }
        cmd.arg(m);
    }
    cmd.query_async::<i64>(&mut conn.clone()).await.map(drop)
}

impl RedisStore {
    /// This node's in-flight set.
    fn inflight_key(&self, writer: &str) -> String {
        self.key("inflight", &format!("w:{writer}"))
    }

    /// Marks a group message's fan-out as begun (`on`, before it is logged) or done (every
    /// member has it).
    pub(super) async fn fanout_mark(
        &self,
        group: &str,
        from: &str,
        client_msg_id: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        let marks = [marker(group, from, client_msg_id)];
        Ok(mark(&self.conn, &self.inflight_key(&self.writer_id), &marks, on).await?)
    }

    /// Puts this store among the writers whose markers others sweep (at connect, and at each
    /// sweep: the time says it is alive). Returns the writers' key.
    pub(super) async fn register_writer(&self) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        let writers_key = self.key("writers", "all");
        let _: i64 = conn.zadd(&writers_key, &self.writer_id, now_ms()).await?;
        // Both go when every node is gone for long enough (as every key does).
        let _: i64 = conn.pexpire(&writers_key, (WRITER_GONE * 2).as_millis() as i64).await?;
        let inflight = self.inflight_key(&self.writer_id);
        let _: i64 = conn.pexpire(inflight, INFLIGHT_KEPT.as_millis() as i64).await?;
        Ok(writers_key)
    }

    /// Sweeps every `every`, forever (the node runs it as one of its background tasks).
    pub async fn sweep_fanout_every(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep_fanout(FANOUT_GRACE).await {
                warn!(error = %e, "group fan-out sweep failed; the next one tries again");
            }
        }
    }

    /// One sweep: completes the fan-out behind every marker older than `grace`, of any node.
    /// Returns how many it completed.
    pub async fn sweep_fanout(&self, grace: Duration) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let writers_key = self.register_writer().await?;
        let writers: Vec<(String, i64)> = conn.zrange_withscores(&writers_key, 0, -1).await?;
        let cut = now - grace.as_millis() as i64;
        let mut done = 0;
        for (writer, seen) in writers {
            let key = self.inflight_key(&writer);
            let stale: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(cut)
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_AT_ONCE)
                .query_async(&mut conn)
                .await?;
            for mark in stale {
                let mut parts = mark.split(' ');
                let (conv, from, id) = (parts.next(), parts.next(), parts.next());
                let finished = match (conv.map(Conversation::parse), from, id) {
                    (Some(Ok(Conversation::Group(_))), ..) => {
                        self.redeliver_newest(conv.unwrap_or_default()).await?;
                        true
                    }
                    (Some(Ok(Conversation::Direct(..))), Some(from), Some(id)) => {
                        self.redeliver_direct(conv.unwrap_or_default(), from, id).await
                    }
                    // Not a mark this version writes: nothing to complete.
                    _ => true,
                };
                if finished {
                    let _: i64 = conn.zrem(&key, &mark).await?;
                    done += 1;
                }
            }
            let left: i64 = conn.zcard(&key).await?;
            if writer != self.writer_id && left == 0 && seen < now - WRITER_GONE.as_millis() as i64
            {
                let _: i64 = conn.zrem(&writers_key, &writer).await?;
            }
        }
        if done > 0 {
            debug!(done, "completed group fan-outs other nodes left unfinished");
        }
        Ok(done)
    }

    /// Completes a direct message a Cluster node logged and may not have appended (its steps
    /// were cut short): the steps after the log run again from its log entry (the recipient's
    /// dedup key and the sender's copy key say what was done). Whether it is done now (or
    /// never was logged); a refusal (a full inbox) is tried again at the next sweep.
    async fn redeliver_direct(&self, conv: &str, from: &str, client_msg_id: &str) -> bool {
        let logged: Option<String> =
            match self.conn.clone().get(self.keys.log_dedup(conv, from, client_msg_id)).await {
                Ok(v) => v,
                Err(_) => return false,
            };
        let Some(stored) = logged.and_then(|v| parse_stored(&v).ok()) else { return true };
        let at = format!("0-{}", stored.seq);
        let entry: Result<StreamRangeReply, _> =
            self.conn.clone().xrange(self.key("log", conv), &at, &at).await;
        let Some(entry) = entry.ok().and_then(|r| r.ids.into_iter().next()) else { return true };
        let Ok(m) = logged_message(entry, conv) else { return true };
        let again = NewMessage {
            from: m.from,
            origin_device: String::new(),
            to: m.to,
            conversation: conv.to_string(),
            client_msg_id: m.client_msg_id,
            body: m.body,
            msg_id: m.msg_id,
            sent_at: m.sent_at,
            event: m.event,
        };
        match self.writer.complete(again, stored).await {
            Ok(_) => true,
            Err(e) => {
                debug!(error = %e, "could not complete a direct message yet");
                false
            }
        }
    }

    /// Delivers the newest message of `group`'s log to its current members (each brought up to
    /// it from their cursor). A broadcast group writes nothing per member for its messages:
    /// its members' group lists are made whole instead (the event that changed them may be the
    /// one cut short), and the last message delivered into inboxes (before it broadcast) is
    /// delivered, in case that was the one.
    async fn redeliver_newest(&self, group: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply =
            conn.xrevrange_count(self.key("log", group), "+", "-", 1).await?;
        let Some(entry) = reply.ids.into_iter().next() else { return Ok(()) };
        let mut newest = logged_message(entry, group)?;
        let members: Vec<String> = conn.hkeys(self.key("members", group)).await?;
        let bcast: Option<u64> = conn.hget(self.key("group", group), "bcast").await?;
        let bcast = bcast.unwrap_or(0);
        if broadcasts(bcast, newest.conv_seq) {
            self.index_members(group, &members, true).await?;
            let at = format!("0-{}", bcast - 1);
            let before: StreamRangeReply = conn.xrange(self.key("log", group), &at, &at).await?;
            match before.ids.into_iter().next() {
                Some(entry) => newest = logged_message(entry, group)?,
                None => return Ok(()),
            }
        }
        self.deliver_group(&newest, "", &members).await?;
        Ok(())
    }
}
