//! How the writer stores a batch of messages (see `message.lua`):
//! - a single server: one `send.lua` call per chunk, every message in one atomic step;
//! - a Redis Cluster, where the conversation log, the recipient's inbox and the sender's inbox
//!   sit in different slots: idempotent steps, one call per hash tag each (`cluster`). What a
//!   failure between them leaves behind (a logged message no inbox has yet) is completed by the
//!   sender's retry, or by any node's sweep (`fanout`).
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Script;
use redis::ScriptInvocation;

use super::Committer;
use super::Keys;
use super::values::{Stored, bad, live_routes, now_ms, parse_stored};
use crate::store::groups::GroupEvent;
use crate::store::{NewMessage, Route, StoreError, StoreOptions};

/// Most messages (or acks) in one script call; a larger batch makes several calls.
pub(super) const MAX_CALL: usize = 128;

/// The scripts messages are stored with.
pub(super) struct Scripts {
    pub(super) send: Script,
    pub(super) admit: Script,
    pub(super) log: Script,
    pub(super) append: Script,
    pub(super) copy: Script,
}

/// One message's outcome.
#[derive(Clone)]
pub(super) struct AppendReply {
    pub(super) duplicate: bool,
    pub(super) stored: Stored,
    pub(super) routes: Vec<(String, Route)>,
    /// The sender's copy: its seq in their inbox and their routes.
    pub(super) copy: CopyReply,
}

pub(super) type Outcome = Result<AppendReply, StoreError>;
/// A sender's copy: its seq in their inbox and their routes; None when none was made.
pub(super) type CopyReply = Option<(u64, Vec<(String, Route)>)>;

impl Committer {
    /// Every message of the batch stored (or refused); one outcome each, in order.
    pub(super) async fn store_messages(&self, msgs: &[NewMessage]) -> Vec<Outcome> {
        if self.conn.is_single() {
            let chunks = self.calls((0..msgs.len()).collect(), |&i| msgs[i].to.as_str());
            return self
                .step(msgs, chunks, |ids| async move { self.send_call(msgs, &ids).await })
                .await;
        }
        self.cluster_steps(msgs).await
    }

    /// Runs `call` for each group of message indices at once, and spreads each call's replies
    /// (or its error) over its messages.
    pub(super) async fn step<
        R: Clone,
        F: Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>>,
    >(
        &self,
        msgs: &[NewMessage],
        groups: Vec<Vec<usize>>,
        call: impl Fn(Vec<usize>) -> F,
    ) -> Vec<Result<R, StoreError>> {
        let results = join_all(groups.iter().cloned().map(call)).await;
        let mut out: Vec<Option<Result<R, StoreError>>> = vec![None; msgs.len()];
        for (i, reply) in each(groups, results) {
            out[i] = Some(reply);
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(bad("missing reply")))).collect()
    }

    /// Message `m`'s arguments; `logged` is what the log gave it (Cluster steps after it).
    pub(super) fn message_args(
        inv: &mut ScriptInvocation<'_>,
        m: &NewMessage,
        logged: Option<&Stored>,
    ) {
        let (msg_id, sent_at, conv_seq) = match logged {
            Some(s) => (s.msg_id.as_str(), s.sent_at, s.seq),
            None => (m.msg_id.as_str(), m.sent_at, 0),
        };
        let (from, to, body) = (&m.from, &m.to, &m.body);
        let (client_msg_id, conversation, origin) =
            (&m.client_msg_id, &m.conversation, &m.origin_device);
        MessageArgs {
            from,
            to,
            client_msg_id,
            body,
            msg_id,
            sent_at,
            conversation,
            origin,
            conv_seq,
            event: m.event.as_ref(),
        }
        .push(inv);
    }

    async fn send_call(
        &self,
        msgs: &[NewMessage],
        ids: &[usize],
    ) -> Result<Vec<Outcome>, StoreError> {
        let now = now_ms();
        let mut inv = invocation(&self.messages.send, &self.opts, &self.keys, now);
        for &i in ids {
            let m = &msgs[i];
            let (to, from, k) = (m.to.as_str(), m.from.as_str(), &self.keys);
            for kind in ["seq", "inbox"] {
                inv.key(k.key(kind, to));
            }
            inv.key(k.dedup(to, from, &m.client_msg_id));
            for kind in ["route", "inrate", "epoch"] {
                inv.key(k.key(kind, to));
            }
            inv.key(k.key("log", &m.conversation));
            for kind in ["seq", "inbox", "route", "epoch", "devices"] {
                inv.key(k.key(kind, from));
            }
            Self::message_args(&mut inv, m, None);
        }
        let replies: Vec<(i64, String, Vec<String>, Vec<String>)> =
            inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(replies.into_iter().map(|r| self.message_reply(r, now)).collect())
    }

    /// One message's `{ code, value, routes, copy }` reply.
    pub(super) fn message_reply(
        &self,
        (code, value, routes, copy): (i64, String, Vec<String>, Vec<String>),
        now: i64,
    ) -> Outcome {
        match code {
            0 | 1 => Ok(AppendReply {
                duplicate: code == 1,
                stored: parse_stored(&value)?,
                routes: live_routes(routes, now),
                copy: copy_of(copy, now)?,
            }),
            2 => {
                let ms = value.parse().map_err(|_| bad("inbox rate wait"))?;
                let retry_after = Duration::from_millis(ms);
                Err(StoreError::InboxRate { rate: self.opts.inbox_rate, retry_after })
            }
            3 => Err(StoreError::InboxFull { max: self.opts.inbox_max }),
            _ => Err(StoreError::Internal(value)),
        }
    }
}

/// An invocation of a message script (`message.lua`) with the arguments each takes first.
pub(super) fn invocation<'a>(
    script: &'a Script,
    opts: &StoreOptions,
    keys: &Keys,
    now: i64,
) -> ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    inv.arg(opts.dedup_ttl.as_millis() as u64)
        .arg(now)
        .arg(now - opts.retention.as_millis() as i64)
        .arg(opts.inbox_rate)
        .arg(opts.inbox_max)
        .arg(keys.keep_ms(opts))
        .arg(opts.retention.as_millis() as u64)
        .arg(super::slack_ms(opts.retention))
        .arg(opts.history_retention.as_millis() as u64)
        .arg(opts.history_max)
        .arg(now - opts.history_retention.as_millis() as i64)
        .arg(super::slack_ms(opts.history_retention));
    inv
}

/// One message's 12 arguments to a message script, in the order `message.lua` reads them.
pub(super) struct MessageArgs<'a> {
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) client_msg_id: &'a str,
    pub(super) body: &'a str,
    pub(super) msg_id: &'a str,
    pub(super) sent_at: i64,
    pub(super) conversation: &'a str,
    pub(super) origin: &'a str,
    /// 0 until the log gave it one.
    pub(super) conv_seq: u64,
    pub(super) event: Option<&'a GroupEvent>,
}

impl MessageArgs<'_> {
    pub(super) fn push(self, inv: &mut ScriptInvocation<'_>) {
        let (ev, users, name) = match self.event {
            Some(e) => (e.kind as i64, e.users.join(" "), e.name.as_str()),
            None => (0, String::new(), ""),
        };
        inv.arg(self.from)
            .arg(self.to)
            .arg(self.client_msg_id)
            .arg(self.body)
            .arg(self.msg_id)
            .arg(self.sent_at)
            .arg(self.conversation)
            .arg(self.origin)
            .arg(self.conv_seq)
            .arg(ev)
            .arg(users)
            .arg(name);
    }
}

/// `{ seq, device, route, ... }` of a sender's copy, or nothing for `{}`.
pub(super) fn copy_of(flat: Vec<String>, now: i64) -> Result<CopyReply, StoreError> {
    let mut it = flat.into_iter();
    let Some(seq) = it.next() else { return Ok(None) };
    let seq = seq.parse().map_err(|_| bad("copy seq"))?;
    Ok(Some((seq, live_routes(it.collect(), now))))
}

/// Each item of `calls` with its own outcome from `results` (one per call, in order): a failed
/// call answers each of its items with the call's error.
pub(super) fn each<T, R: Clone>(
    calls: Vec<Vec<T>>,
    results: Vec<Result<Vec<Result<R, StoreError>>, StoreError>>,
) -> impl Iterator<Item = (T, Result<R, StoreError>)> {
    calls.into_iter().zip(results).flat_map(|(items, result)| {
        let replies = match result {
            Ok(replies) if replies.len() == items.len() => replies,
            Ok(_) => vec![Err(bad("reply count")); items.len()],
            Err(e) => vec![Err(e); items.len()],
        };
        items.into_iter().zip(replies)
    })
}

/// `items` grouped by `key` (a hash tag: one Cluster call each), in first-seen order.
pub(super) fn group_by<T, K: Eq + Hash>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut of: HashMap<K, usize> = HashMap::new();
    for item in items {
        let at = *of.entry(key(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(item);
    }
    groups
}
