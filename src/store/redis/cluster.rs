//! A Redis Cluster's steps for a direct message (see `messages`): the conversation log, the
//! recipient's inbox and the sender's inbox sit in three slots, so one script cannot take them
//! all. `admit.lua` per recipient, then `log.lua` per conversation, then `append.lua` per
//! recipient beside `copy.lua` per sender, each step's calls sent at once and each idempotent;
//! the batch is marked in flight meanwhile (`fanout`), so a node that dies between the steps
//! leaves marks that any node's sweep completes.
use redis::{FromRedisValue as _, Value};
use tracing::warn;

use super::Committer;
use super::fanout::{mark, marker};
use super::messages::{AppendReply, CopyReply, Outcome, copy_of, group_by, invocation};
use super::values::{Stored, bad, now_ms, parse_stored};
use crate::store::{NewMessage, StoreError};

impl Committer {
    pub(super) async fn cluster_steps(&self, msgs: &[NewMessage]) -> Vec<Outcome> {
        // Marked in flight until stored: a node that dies between the steps leaves the marks,
        // and any node's sweep (`fanout`) completes what was logged.
        let marks: Vec<String> =
            msgs.iter().map(|m| marker(&m.conversation, &m.from, &m.client_msg_id)).collect();
        if let Err(e) = mark(&self.conn, &self.inflight, &marks, true).await {
            let e = StoreError::from(e);
            return msgs.iter().map(|_| Err(e.clone())).collect();
        }
        let outcomes = self.steps(msgs).await;
        let done: Vec<String> =
            marks.into_iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(m, _)| m).collect();
        if let Err(e) = mark(&self.conn, &self.inflight, &done, false).await {
            warn!(error = %e, "could not clear in-flight marks; a sweep will find them done");
        }
        outcomes
    }

    /// The steps after the log for a message already logged as `logged` (a Cluster's steps cut
    /// short, completed by a sweep): into the recipient's inbox unless there, and the sender's
    /// copy unless made. On any deployment: both steps are idempotent.
    pub(super) async fn complete_logged(&self, msg: NewMessage, logged: Stored) -> Outcome {
        let (msgs, log) = ([msg], [Some(logged)]);
        let appended = self.append_call(&msgs, &log, &[0]).await?.pop().ok_or(bad("append"))??;
        let mut copy = None;
        if msgs[0].from != msgs[0].to {
            copy = self.copy_call(&msgs, &log, &[0]).await?.pop().ok_or(bad("copy"))??;
        }
        Ok(AppendReply { copy, ..appended })
    }

    async fn steps(&self, msgs: &[NewMessage]) -> Vec<Outcome> {
        let by_recipient = group_by(0..msgs.len(), |&i| msgs[i].to.as_str());
        let admitted = self
            .step(msgs, by_recipient, |ids| async move { self.admit_call(msgs, &ids).await })
            .await;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; msgs.len()];
        let mut go = Vec::new();
        for (i, a) in admitted.into_iter().enumerate() {
            match a {
                Ok(None) => go.push(i),
                Ok(Some(done)) => outcomes[i] = Some(Ok(done)),
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        let by_conv = group_by(go.iter().copied(), |&i| msgs[i].conversation.as_str());
        let logged =
            self.step(msgs, by_conv, |ids| async move { self.log_call(msgs, &ids).await }).await;
        let mut log: Vec<Option<Stored>> = vec![None; msgs.len()];
        let mut next = Vec::new();
        for (i, l) in logged.into_iter().enumerate().filter(|(i, _)| go.contains(i)) {
            match l {
                Ok(stored) => {
                    log[i] = Some(stored);
                    next.push(i);
                }
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        let senders: Vec<usize> =
            next.iter().copied().filter(|&i| msgs[i].from != msgs[i].to).collect();
        let (appended, copies) = tokio::join!(
            self.step(msgs, group_by(next.iter().copied(), |&i| msgs[i].to.as_str()), |ids| {
                let log = &log;
                async move { self.append_call(msgs, log, &ids).await }
            }),
            self.step(msgs, group_by(senders.iter().copied(), |&i| msgs[i].from.as_str()), |ids| {
                let log = &log;
                async move { self.copy_call(msgs, log, &ids).await }
            }),
        );
        for &i in &next {
            let copy = match &copies[i] {
                Ok(copy) => copy.clone(),
                Err(e) => {
                    if senders.contains(&i) {
                        warn!(error = %e, "could not copy a message to its sender's inbox");
                    }
                    None
                }
            };
            outcomes[i] = Some(appended[i].clone().map(|r| AppendReply { copy, ..r }));
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(bad("missing outcome")))).collect()
    }

    /// Cluster step 1: `Ok(None)` for an admitted message, `Ok(Some(..))` for a duplicate.
    async fn admit_call(
        &self,
        msgs: &[NewMessage],
        ids: &[usize],
    ) -> Result<Vec<Result<Option<AppendReply>, StoreError>>, StoreError> {
        let now = now_ms();
        let mut inv = invocation(&self.messages.admit, &self.opts, &self.keys, now);
        for &i in ids {
            let m = &msgs[i];
            inv.key(self.keys.dedup(&m.to, &m.from, &m.client_msg_id))
                .key(self.keys.key("inbox", &m.to))
                .key(self.keys.key("inrate", &m.to))
                .key(self.keys.key("route", &m.to));
            Self::message_args(&mut inv, m, None);
        }
        let replies: Vec<(i64, String, Vec<String>, Vec<String>)> =
            inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(replies
            .into_iter()
            .map(|r| match r.0 {
                0 => Ok(None),
                _ => self.message_reply(r, now).map(Some),
            })
            .collect())
    }

    /// Cluster step 2: the seq, msg_id and sent_at each message has in its conversation's log.
    async fn log_call(
        &self,
        msgs: &[NewMessage],
        ids: &[usize],
    ) -> Result<Vec<Result<Stored, StoreError>>, StoreError> {
        let mut inv = invocation(&self.messages.log, &self.opts, &self.keys, now_ms());
        for &i in ids {
            let m = &msgs[i];
            inv.key(self.keys.key("log", &m.conversation)).key(self.keys.log_dedup(
                &m.conversation,
                &m.from,
                &m.client_msg_id,
            ));
            Self::message_args(&mut inv, m, None);
        }
        let replies: Vec<(i64, Value)> = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(replies
            .into_iter()
            .map(|(code, value)| {
                let text = String::from_redis_value(value).map_err(|_| bad("log reply"))?;
                match code {
                    0 | 1 => parse_stored(&text),
                    _ => Err(StoreError::Internal(text)),
                }
            })
            .collect())
    }

    /// Cluster step 3: each logged message in its recipient's inbox.
    async fn append_call(
        &self,
        msgs: &[NewMessage],
        log: &[Option<Stored>],
        ids: &[usize],
    ) -> Result<Vec<Outcome>, StoreError> {
        let now = now_ms();
        let mut inv = invocation(&self.messages.append, &self.opts, &self.keys, now);
        for &i in ids {
            let m = &msgs[i];
            for kind in ["seq", "inbox"] {
                inv.key(self.keys.key(kind, &m.to));
            }
            inv.key(self.keys.dedup(&m.to, &m.from, &m.client_msg_id));
            for kind in ["route", "epoch"] {
                inv.key(self.keys.key(kind, &m.to));
            }
            Self::message_args(&mut inv, m, log[i].as_ref());
        }
        let replies: Vec<(i64, String, Vec<String>, Vec<String>)> =
            inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(replies.into_iter().map(|r| self.message_reply(r, now)).collect())
    }

    /// Cluster step 3, sender's side: each logged message's copy for the sender's other devices.
    async fn copy_call(
        &self,
        msgs: &[NewMessage],
        log: &[Option<Stored>],
        ids: &[usize],
    ) -> Result<Vec<Result<CopyReply, StoreError>>, StoreError> {
        let now = now_ms();
        let mut inv = invocation(&self.messages.copy, &self.opts, &self.keys, now);
        for &i in ids {
            let m = &msgs[i];
            inv.key(format!("{}:{}", self.keys.key("sent", &m.from), m.client_msg_id));
            for kind in ["seq", "inbox", "route", "epoch", "devices"] {
                inv.key(self.keys.key(kind, &m.from));
            }
            Self::message_args(&mut inv, m, log[i].as_ref());
        }
        let replies: Vec<(i64, Value)> = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(replies
            .into_iter()
            .map(|(code, value)| match code {
                0 => {
                    let flat = Vec::<String>::from_redis_value(value).map_err(|_| bad("copy"))?;
                    copy_of(flat, now)
                }
                _ => Err(StoreError::Internal(
                    String::from_redis_value(value).unwrap_or_else(|_| "copy failed".into()),
                )),
            })
            .collect())
    }
}
