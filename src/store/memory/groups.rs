//! Groups in memory: a group's state sits in its conversation's entry, under that entry's
//! shard lock, which is held while members' inboxes are written (conversation, then user: the
//! same order as every append), so one group's messages reach each member in order.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::groups::{
    Changed, Delivered, EventKind, GroupChange, GroupEvent, GroupInfo, Groups, Limits, Logged,
    Member, Position, Role,
};
use crate::store::{NewMessage, StoreError, StoredMessage};

/// One group: who is in it, with which role, since which conversation seq.
#[derive(Debug)]
pub(super) struct GroupState {
    name: String,
    owner: String,
    created_at: i64,
    history_for_new_members: bool,
    pub(super) members: BTreeMap<String, (Role, u64)>,
    /// 0, or the conversation seq from which the group broadcasts.
    pub(super) broadcast_from: u64,
    /// The membership version: one more with every change.
    pub(super) version: i64,
}

impl GroupState {
    fn info(&self, id: &str) -> GroupInfo {
        GroupInfo {
            id: id.to_string(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            created_at: self.created_at,
            history_for_new_members: self.history_for_new_members,
            member_count: self.members.len() as u32,
            broadcast_from: self.broadcast_from,
        }
    }

    /// After a change or a message at `cseq`: a group past `fanout` members broadcasts from it.
    fn outgrow(&mut self, cseq: u64, fanout: u32) {
        if self.broadcast_from == 0 && self.members.len() > fanout as usize {
            self.broadcast_from = cseq;
        }
    }

    /// The members, unless the group broadcasts (nothing is written per member then).
    fn members_to_write(&self) -> Vec<String> {
        match self.broadcast_from {
            0 => self.members.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn unchanged(&self) -> Changed {
        Changed {
            event: None,
            members: self.members_to_write(),
            removed: Vec::new(),
            broadcast_from: self.broadcast_from,
            version: self.version,
        }
    }
}

/// The users of `users` other than `actor`, each once, in order.
fn others(users: Vec<String>, actor: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    users.into_iter().filter(|u| u != actor && seen.insert(u.clone())).collect()
}

#[async_trait]
impl Groups for MemoryStore {
    async fn change_group(
        &self,
        event: NewMessage,
        change: GroupChange,
        limits: Limits,
    ) -> Result<Changed, StoreError> {
        let max_members = limits.max_members;
        let mut convs = self.conv_shard(&event.conversation);
        let log = convs.entry(event.conversation.clone()).or_default();
        log.expire(&self.opts);
        let cseq = log.next_seq();
        let actor = event.from.clone();
        let max = max_members as usize;
        let (kind, users, name) = match change {
            GroupChange::Create { name, members, history_for_new_members } => {
                if log.group.is_some() {
                    return Err(StoreError::GroupExists);
                }
                let mut users = vec![actor.clone()];
                users.extend(others(members, &actor));
                if users.len() > max {
                    return Err(StoreError::GroupFull { max: max_members });
                }
                let members = users
                    .iter()
                    .map(|u| {
                        let role = if *u == actor { Role::Owner } else { Role::Member };
                        (u.clone(), (role, cseq))
                    })
                    .collect();
                log.group = Some(GroupState {
                    name: name.clone(),
                    owner: actor.clone(),
                    created_at: event.sent_at,
                    history_for_new_members,
                    members,
                    broadcast_from: 0,
                    version: 0,
                });
                // The event names no one (see `group.lua`).
                (EventKind::Created, Vec::new(), name)
            }
            change => {
                let group = log.group.as_mut().ok_or(StoreError::NotMember)?;
                let mine = group.members.get(&actor).ok_or(StoreError::NotMember)?.0;
                match change {
                    GroupChange::Leave => {
                        if mine == Role::Owner {
                            return Err(StoreError::OwnerMustStay);
                        }
                        group.members.remove(&actor);
                        (EventKind::Left, vec![actor.clone()], String::new())
                    }
                    _ if mine == Role::Member => return Err(StoreError::Forbidden),
                    GroupChange::Add(users) => {
                        let new: Vec<String> = others(users, &actor)
                            .into_iter()
                            .filter(|u| !group.members.contains_key(u))
                            .collect();
                        if new.is_empty() {
                            return Ok(group.unchanged());
                        }
                        if group.members.len() + new.len() > max {
                            return Err(StoreError::GroupFull { max: max_members });
                        }
                        for u in &new {
                            group.members.insert(u.clone(), (Role::Member, cseq));
                        }
                        (EventKind::Joined, new, String::new())
                    }
                    GroupChange::Remove(users) => {
                        let gone: Vec<String> = others(users, &actor)
                            .into_iter()
                            .filter(|u| group.members.contains_key(u))
                            .collect();
                        // The owner stays; an admin removes plain members only.
                        for u in &gone {
                            let theirs = group.members[u].0;
                            if theirs == Role::Owner
                                || (mine == Role::Admin && theirs != Role::Member)
                            {
                                return Err(StoreError::Forbidden);
                            }
                        }
                        if gone.is_empty() {
                            return Ok(group.unchanged());
                        }
                        for u in &gone {
                            group.members.remove(u);
                        }
                        (EventKind::Removed, gone, String::new())
                    }
                    GroupChange::Rename(name) => {
                        group.name = name.clone();
                        (EventKind::Renamed, Vec::new(), name)
                    }
                    GroupChange::SetRole(user, role) => {
                        if mine != Role::Owner {
                            return Err(StoreError::Forbidden);
                        }
                        if user == actor || !group.members.contains_key(&user) {
                            return Err(StoreError::NotMember);
                        }
                        if role == Role::Owner {
                            group
                                .members
                                .insert(actor.clone(), (Role::Admin, group.members[&actor].1));
                            group.owner = user.clone();
                        }
                        let joined = group.members[&user].1;
                        group.members.insert(user.clone(), (role, joined));
                        (EventKind::RoleChanged, vec![user], role.name().to_string())
                    }
                    GroupChange::Create { .. } => unreachable!("handled above"),
                }
            }
        };
        let removed = match kind {
            EventKind::Left | EventKind::Removed => users.clone(),
            _ => Vec::new(),
        };
        let message = StoredMessage {
            msg_id: event.msg_id,
            from: actor,
            sent_at: event.sent_at,
            conversation: event.conversation,
            conv_seq: cseq,
            client_msg_id: event.client_msg_id,
            event: Some(GroupEvent { kind, users, name }),
            ..StoredMessage::default()
        };
        log.push(message.clone(), &self.opts);
        let group = log.group.as_mut().ok_or(StoreError::NotMember)?;
        group.version += 1;
        group.outgrow(cseq, limits.fanout);
        let joined: Vec<String> = match kind {
            EventKind::Created => group.members.keys().cloned().collect(),
            EventKind::Joined => {
                message.event.as_ref().map(|e| e.users.clone()).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        // Conversation, then user: the lock order of every delivery.
        self.index_members(&message.conversation, &joined, true);
        self.index_members(&message.conversation, &removed, false);
        for user in &removed {
            log.readers.remove(user);
        }
        Ok(Changed {
            members: group.members_to_write(),
            broadcast_from: group.broadcast_from,
            version: group.version,
            event: Some(message),
            removed,
        })
    }

    async fn group(&self, group: &str) -> Result<Option<GroupInfo>, StoreError> {
        let convs = self.conv_shard(group);
        Ok(convs.get(group).and_then(|log| log.group.as_ref()).map(|g| g.info(group)))
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let convs = self.conv_shard(group);
        let Some(g) = convs.get(group).and_then(|log| log.group.as_ref()) else {
            return Ok(Vec::new());
        };
        let range = (std::ops::Bound::Excluded(after.to_string()), std::ops::Bound::Unbounded);
        let page = if after.is_empty() {
            g.members.range::<String, _>(..)
        } else {
            g.members.range(range)
        };
        Ok(page
            .take(limit)
            .map(|(user, (role, joined_seq))| Member {
                user: user.clone(),
                role: *role,
                joined_seq: *joined_seq,
            })
            .collect())
    }

    async fn member(&self, group: &str, user: &str) -> Result<Option<Member>, StoreError> {
        let convs = self.conv_shard(group);
        let g = convs.get(group).and_then(|log| log.group.as_ref());
        Ok(g.and_then(|g| g.members.get(user)).map(|(role, joined_seq)| Member {
            user: user.to_string(),
            role: *role,
            joined_seq: *joined_seq,
        }))
    }

    async fn log_group_message(&self, msg: NewMessage, fanout: u32) -> Result<Logged, StoreError> {
        let now = Instant::now();
        let mut convs = self.conv_shard(&msg.conversation);
        let log = convs.get_mut(&msg.conversation).ok_or(StoreError::NotMember)?;
        log.expire(&self.opts);
        let (members, version) = match &log.group {
            Some(g) if g.members.contains_key(&msg.from) => {
                (Arc::new(g.members.keys().cloned().collect::<Vec<_>>()), g.version)
            }
            _ => return Err(StoreError::NotMember),
        };
        let mut message = StoredMessage {
            msg_id: msg.msg_id,
            from: msg.from,
            body: msg.body,
            sent_at: msg.sent_at,
            conversation: msg.conversation,
            client_msg_id: msg.client_msg_id,
            event: msg.event,
            ..StoredMessage::default()
        };
        if let Some((conv_seq, msg_id, sent_at)) =
            log.retried(&message.from, &message.client_msg_id, now)
        {
            message.conv_seq = conv_seq;
            message.msg_id = msg_id;
            message.sent_at = sent_at;
            let broadcast_from = log.group.as_ref().map_or(0, |g| g.broadcast_from);
            return Ok(Logged { message, duplicate: true, members, broadcast_from, version });
        }
        message.conv_seq = log.next_seq();
        log.remember(&message, now + self.opts.dedup_ttl);
        log.push(message.clone(), &self.opts);
        let group = log.group.as_mut().ok_or(StoreError::NotMember)?;
        group.outgrow(message.conv_seq, fanout);
        let broadcast_from = group.broadcast_from;
        Ok(Logged { message, duplicate: false, members, broadcast_from, version })
    }

    async fn deliver_group(
        &self,
        message: &StoredMessage,
        origin_device: &str,
        members: &[String],
    ) -> Result<Vec<Delivered>, StoreError> {
        let now = Instant::now();
        // Held throughout: one group's deliveries do not interleave, and a gap (another
        // caller's later message came first) is read from the log as it is.
        let convs = self.conv_shard(&message.conversation);
        let log = convs.get(&message.conversation);
        let mut out = Vec::new();
        for user in members {
            self.with_user(user, |u| {
                let ev = message.event.as_ref();
                let names = |kinds: &[EventKind]| {
                    ev.is_some_and(|e| kinds.contains(&e.kind) && e.users.contains(user))
                };
                let joins = names(&[EventKind::Joined]);
                let ends = names(&[EventKind::Left, EventKind::Removed]);
                let mut todo = Vec::new();
                match u.conv_cursors.get(&message.conversation) {
                    Some(&cursor) if !joins && message.conv_seq <= cursor => return,
                    Some(&cursor) if !joins && message.conv_seq > cursor + 1 => {
                        let gap = log.map(|l| l.between(cursor, message.conv_seq));
                        todo.extend(gap.unwrap_or_default());
                    }
                    _ => {}
                }
                todo.push(message.clone());
                for m in todo {
                    if let Some(copy) = self.member_copy(u, user, &m, origin_device, now) {
                        out.push(copy);
                    }
                }
                if ends {
                    u.conv_cursors.remove(&message.conversation);
                } else {
                    u.conv_cursors.insert(message.conversation.clone(), message.conv_seq);
                }
            });
        }
        Ok(out)
    }

    async fn member_list(&self, group: &str) -> Result<(i64, Arc<Vec<String>>), StoreError> {
        Ok(self.member_list_of(group))
    }

    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.with_user(user, |u| u.groups.iter().cloned().collect()))
    }

    async fn position(
        &self,
        user: &str,
        device: &str,
        group: &str,
    ) -> Result<Option<Position>, StoreError> {
        Ok(self.position_in(user, device, group))
    }

    async fn ack_groups(
        &self,
        user: &str,
        device: &str,
        cursors: &[(String, u64)],
    ) -> Result<(), StoreError> {
        self.ack_groups_of(user, device, cursors);
        Ok(())
    }
}
