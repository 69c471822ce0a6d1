//! Groups in Redis. A group's keys share its conversation's hash tag `{g:<id>}`:
//! `<p>:group:{g}` (hash: name, owner, created_at, history, ver — the membership version, bcast),
//! `<p>:members:{g}` (hash: user → `role|joined conversation seq`) and its log. A member's
//! `<p>:convs:{uid}` (hash: conversation → the last conversation seq in their inbox) makes the
//! delivery of a group message into their inbox idempotent and ordered (`gdeliver.lua`).
//!
//! A node keeps each group's member list with its version, so logging a message
//! (`glog.lua`) sends the list back only after a change.
use std::sync::Arc;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script, ScriptInvocation};

use super::RedisStore;
use super::messages::{MessageArgs, invocation};
use super::values::{Stored, bad, live_routes, logged_message, now_ms, parse_stored};
use crate::store::groups::{
    Changed, Delivered, EventKind, GroupChange, GroupEvent, GroupInfo, Groups, Limits, Logged,
    Member, Position,
};
use crate::store::{NewMessage, StoreError, StoredMessage};

/// Most items in one `gdeliver.lua` call on a single server.
const DELIVER_AT_ONCE: usize = 128;
/// `gdeliver.lua` calls of one delivery in flight at once.
const DELIVERIES_IN_FLIGHT: usize = 8;
/// Times a member's delivery is retried after filling a gap (another node's message of the
/// group raced it); each fill brings the member up to the message.
const GAP_ROUNDS: usize = 3;

pub(super) struct GroupScripts {
    pub(super) change: Script,
    pub(super) log: Script,
    pub(super) deliver: Script,
    pub(super) cursors: Script,
}

/// `group.lua`'s reply.
type Reply = (i64, u64, Vec<String>, Vec<String>, i64, String, u64, i64);

/// The arguments (`message.lua`) of a stored message sent from `origin`.
fn stored_args(inv: &mut ScriptInvocation<'_>, m: &StoredMessage, origin: &str) {
    MessageArgs {
        from: &m.from,
        to: &m.to,
        client_msg_id: &m.client_msg_id,
        body: &m.body,
        msg_id: &m.msg_id,
        sent_at: m.sent_at,
        conversation: &m.conversation,
        origin,
        conv_seq: m.conv_seq,
        event: m.event.as_ref(),
    }
    .push(inv);
}

fn refused(code: i64, max: u32) -> StoreError {
    match code {
        5 => StoreError::NotMember,
        6 => StoreError::Forbidden,
        7 => StoreError::GroupFull { max },
        8 => StoreError::GroupExists,
        9 => StoreError::OwnerMustStay,
        _ => bad("group reply"),
    }
}

impl RedisStore {
    fn invocation<'a>(&self, script: &'a Script, now: i64) -> ScriptInvocation<'a> {
        invocation(script, &self.opts, &self.keys, now)
    }

    /// One `gdeliver.lua` call: each (member, message) item's reply. Each distinct message
    /// (by conversation seq) is sent once, the items name it by its place.
    async fn deliver_call(
        &self,
        items: &[(&str, &StoredMessage)],
        origin: &str,
    ) -> Result<Vec<(i64, String, Vec<String>)>, StoreError> {
        let mut inv = self.invocation(&self.groups.deliver, now_ms());
        let mut distinct: Vec<u64> = Vec::new();
        for (user, m) in items {
            for kind in ["convs", "seq", "inbox", "epoch", "route", "devices"] {
                inv.key(self.key(kind, user));
            }
            if !distinct.contains(&m.conv_seq) {
                distinct.push(m.conv_seq);
                stored_args(&mut inv, m, origin);
            }
        }
        for (user, m) in items {
            let at = distinct.iter().position(|s| *s == m.conv_seq).unwrap_or(0) + 1;
            inv.arg(*user).arg(at);
        }
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// The log's messages with conversation seqs in (after, before).
    async fn between(
        &self,
        conv: &str,
        after: u64,
        before: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let reply: StreamRangeReply = self
            .conn
            .clone()
            .xrange(self.key("log", conv), format!("0-{}", after + 1), format!("0-{}", before - 1))
            .await?;
        reply.ids.into_iter().map(|e| logged_message(e, conv)).collect()
    }
}

#[async_trait]
impl Groups for RedisStore {
    async fn change_group(
        &self,
        event: NewMessage,
        change: GroupChange,
        limits: Limits,
    ) -> Result<Changed, StoreError> {
        let max_members = limits.max_members;
        let conv = event.conversation.clone();
        let (op, users, name, history) = match change {
            GroupChange::Create { name, members, history_for_new_members } => {
                ("create", members, name, history_for_new_members)
            }
            GroupChange::Add(users) => ("add", users, String::new(), false),
            GroupChange::Remove(users) => ("remove", users, String::new(), false),
            GroupChange::Leave => ("leave", Vec::new(), String::new(), false),
            GroupChange::Rename(name) => ("rename", Vec::new(), name, false),
            GroupChange::SetRole(user, role) => {
                ("role", vec![user], role.name().to_string(), false)
            }
        };
        let mut message = StoredMessage {
            msg_id: event.msg_id,
            from: event.from,
            sent_at: event.sent_at,
            conversation: conv.clone(),
            client_msg_id: event.client_msg_id,
            event: Some(GroupEvent { kind: EventKind::Created, users: Vec::new(), name }),
            ..StoredMessage::default()
        };
        self.fanout_mark(&conv, &message.from, &message.client_msg_id, true).await?;
        let mut inv = self.invocation(&self.groups.change, now_ms());
        inv.key(self.key("group", &conv))
            .key(self.key("members", &conv))
            .key(self.key("log", &conv))
            .key(self.key("names", &conv));
        stored_args(&mut inv, &message, "");
        inv.arg(op).arg(max_members).arg(u8::from(history)).arg(limits.fanout);
        for u in &users {
            inv.arg(u);
        }
        let (code, cseq, members, removed, kind, evusers, broadcast_from, version): Reply =
            inv.invoke_async(&mut self.conn.clone()).await?;
        if code != 0 || cseq == 0 {
            // Nothing was logged: nothing to deliver.
            self.fanout_mark(&conv, &message.from, &message.client_msg_id, false).await?;
        }
        if code != 0 {
            return Err(refused(code, max_members));
        }
        if cseq == 0 {
            return Ok(Changed { event: None, members, removed, broadcast_from, version });
        }
        message.conv_seq = cseq;
        let mut joined = Vec::new();
        if let Some(e) = message.event.as_mut() {
            e.kind = EventKind::from_number(kind).ok_or(bad("event kind"))?;
            e.users = evusers.split(' ').filter(|u| !u.is_empty()).map(String::from).collect();
            joined = match e.kind {
                EventKind::Created => {
                    let mut all = users.clone();
                    all.push(message.from.clone());
                    all
                }
                EventKind::Joined => e.users.clone(),
                _ => Vec::new(),
            };
        }
        // The members' group lists, for their sessions to find broadcast groups (a crash in
        // between is completed by the fan-out sweep, which this event's marker is still in).
        self.index_members(&conv, &joined, true).await?;
        self.index_members(&conv, &removed, false).await?;
        Ok(Changed { event: Some(message), members, removed, broadcast_from, version })
    }

    async fn group(&self, group: &str) -> Result<Option<GroupInfo>, StoreError> {
        self.group_info(group).await
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.members_page(group, after, limit).await
    }

    async fn member(&self, group: &str, user: &str) -> Result<Option<Member>, StoreError> {
        self.member_of(group, user).await
    }

    async fn log_group_message(&self, msg: NewMessage, fanout: u32) -> Result<Logged, StoreError> {
        let conv = msg.conversation.clone();
        let cached = self.member_cache.get(&conv);
        let mut inv = self.invocation(&self.groups.log, now_ms());
        inv.key(self.key("group", &conv))
            .key(self.key("members", &conv))
            .key(self.key("log", &conv))
            .key(self.keys.log_dedup(&conv, &msg.from, &msg.client_msg_id));
        let mut message = StoredMessage {
            msg_id: msg.msg_id,
            from: msg.from,
            body: msg.body,
            sent_at: msg.sent_at,
            conversation: conv.clone(),
            client_msg_id: msg.client_msg_id,
            event: msg.event,
            ..StoredMessage::default()
        };
        stored_args(&mut inv, &message, &msg.origin_device);
        inv.arg(fanout).arg(cached.as_ref().map_or(-1, |(v, _)| *v));
        self.fanout_mark(&conv, &message.from, &message.client_msg_id, true).await?;
        let replies: Vec<(i64, String, i64, Vec<String>, u64)> =
            inv.invoke_async(&mut self.conn.clone()).await?;
        let (code, value, version, list, broadcast_from) =
            replies.into_iter().next().ok_or(bad("log reply"))?;
        if code != 0 && code != 1 {
            self.fanout_mark(&conv, &message.from, &message.client_msg_id, false).await?;
        }
        match code {
            0 | 1 => {}
            4 => return Err(StoreError::Internal(value)),
            code => return Err(refused(code, 0)),
        }
        let Stored { seq, msg_id, sent_at, .. } = parse_stored(&value)?;
        (message.conv_seq, message.msg_id, message.sent_at) = (seq, msg_id, sent_at);
        let members = match cached {
            Some((v, members)) if v == version => members,
            _ => {
                let members = Arc::new(list);
                self.member_cache.put(&conv, version, members.clone());
                members
            }
        };
        Ok(Logged { message, duplicate: code == 1, members, broadcast_from, version })
    }

    async fn deliver_group(
        &self,
        message: &StoredMessage,
        origin_device: &str,
        members: &[String],
    ) -> Result<Vec<Delivered>, StoreError> {
        let now = now_ms();
        let per_call = if self.conn.is_single() { DELIVER_AT_ONCE } else { 1 };
        let chunks: Vec<Vec<(&str, &StoredMessage)>> = members
            .chunks(per_call)
            .map(|c| c.iter().map(|u| (u.as_str(), message)).collect())
            .collect();
        // A few calls at a time: a big group's thousands of calls sent at once would queue
        // behind each other past the command timeout.
        let mut calls = Vec::with_capacity(chunks.len());
        for wave in chunks.chunks(DELIVERIES_IN_FLIGHT) {
            let wave = wave.iter().map(|items| self.deliver_call(items, origin_device));
            calls.extend(futures_util::future::join_all(wave).await);
        }
        let mut out = Vec::new();
        let mut gaps = Vec::new();
        for (items, replies) in chunks.iter().zip(calls) {
            for ((user, m), (code, value, routes)) in items.iter().zip(replies?) {
                match code {
                    0 | 1 => push(&mut out, user, m, &value, routes, now)?,
                    2 => {
                        gaps.push((user.to_string(), value.parse::<u64>().map_err(|_| bad("gap"))?))
                    }
                    _ => return Err(StoreError::Internal(value)),
                }
            }
        }
        for (user, mut cursor) in gaps {
            for round in 0.. {
                if round == GAP_ROUNDS {
                    return Err(StoreError::Unavailable(format!(
                        "could not bring {user}'s inbox up to {} of {}",
                        message.conv_seq, message.conversation
                    )));
                }
                let mut todo =
                    self.between(&message.conversation, cursor, message.conv_seq).await?;
                todo.push(message.clone());
                let items: Vec<(&str, &StoredMessage)> =
                    todo.iter().map(|m| (user.as_str(), m)).collect();
                let replies = self.deliver_call(&items, origin_device).await?;
                let mut again = None;
                for ((_, m), (code, value, routes)) in items.iter().zip(replies) {
                    match code {
                        0 | 1 => push(&mut out, &user, m, &value, routes, now)?,
                        2 => again = Some(value.parse::<u64>().map_err(|_| bad("gap"))?),
                        _ => return Err(StoreError::Internal(value)),
                    }
                    if again.is_some() {
                        break;
                    }
                }
                match again {
                    Some(c) => cursor = c,
                    None => break,
                }
            }
        }
        self.fanout_mark(&message.conversation, &message.from, &message.client_msg_id, false)
            .await?;
        // The sender is acked after this: the log entry and every copy on the replicas first.
        if self.opts.wait_replicas > 0 {
            super::writer::wait_replicas(&self.conn, self.opts.wait_replicas, self.timeout).await?;
        }
        Ok(out)
    }

    async fn member_list(&self, group: &str) -> Result<(i64, Arc<Vec<String>>), StoreError> {
        self.member_list_of(group).await
    }

    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.user_groups_of(user).await
    }

    async fn position(
        &self,
        user: &str,
        device: &str,
        group: &str,
    ) -> Result<Option<Position>, StoreError> {
        self.position_in(user, device, group).await
    }

    async fn ack_groups(
        &self,
        user: &str,
        device: &str,
        cursors: &[(String, u64)],
    ) -> Result<(), StoreError> {
        self.ack_groups_of(user, device, cursors).await
    }
}

/// An appended item (`value` its inbox seq, empty when skipped) into `out`.
fn push(
    out: &mut Vec<Delivered>,
    user: &str,
    m: &StoredMessage,
    value: &str,
    routes: Vec<String>,
    now: i64,
) -> Result<(), StoreError> {
    if value.is_empty() {
        return Ok(());
    }
    let seq = value.parse().map_err(|_| bad("inbox seq"))?;
    out.push(Delivered {
        user: user.to_string(),
        message: StoredMessage { seq, ..m.clone() },
        routes: live_routes(routes, now),
    });
    Ok(())
}
