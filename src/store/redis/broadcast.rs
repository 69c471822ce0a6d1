//! What a broadcast group (one past the fan-out limit) keeps instead of a copy per member:
//! `<p>:ugroups:{uid}` (set: the groups a user was put in, for their sessions to find the
//! groups to catch up on) and `<p>:gcur:{uid}` (hash: `<device> <group>` → the highest
//! conversation seq the device acked, the point it catches up from). Both are per user, in the
//! user's slot; the group's own keys stay in the group's.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;

use super::RedisStore;
use super::values::bad;
use crate::store::StoreError;
use crate::store::groups::Position;

/// Users whose group lists one call changes on a Cluster (one command each, in flight at once).
const INDEX_IN_FLIGHT: usize = 64;
/// Users whose group lists one pipelined call changes on a single server.
const INDEX_AT_ONCE: usize = 1000;

/// Groups whose member lists a node keeps; past it the cache starts again.
const CACHED_GROUPS: usize = 10_000;

/// A group's members as last seen, with the membership version they are of.
type Versioned = (i64, Arc<Vec<String>>);

/// Member lists by group, with their membership version.
#[derive(Default)]
pub(super) struct MemberCache(Mutex<HashMap<String, Versioned>>);

impl MemberCache {
    pub(super) fn get(&self, group: &str) -> Option<Versioned> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(group).cloned()
    }

    pub(super) fn put(&self, group: &str, version: i64, members: Arc<Vec<String>>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHED_GROUPS {
            map.clear();
        }
        map.insert(group.to_string(), (version, members));
    }
}

/// The field of `device`'s cursor in `group`.
fn cursor_field(device: &str, group: &str) -> String {
    format!("{device} {group}")
}

impl RedisStore {
    /// Adds `group` to (or, `add` false, removes it from) each of `users`' group lists; a user
    /// removed also leaves the group's readers, and what they had seen of it goes.
    pub(super) async fn index_members(
        &self,
        group: &str,
        users: &[String],
        add: bool,
    ) -> Result<(), StoreError> {
        let command = if add { "SADD" } else { "SREM" };
        // One user's changes, in their slot.
        let per_user = |pipe: &mut redis::Pipeline, u: &str| {
            pipe.cmd(command).arg(self.key("ugroups", u)).arg(group).ignore();
            if !add {
                pipe.cmd("HDEL").arg(self.key("useen", u)).arg(group).ignore();
            }
        };
        if self.conn.is_single() {
            for chunk in users.chunks(INDEX_AT_ONCE) {
                let mut pipe = redis::pipe();
                chunk.iter().for_each(|u| per_user(&mut pipe, u));
                pipe.query_async::<()>(&mut self.conn.clone()).await?;
            }
        } else {
            for wave in users.chunks(INDEX_IN_FLIGHT) {
                let calls = wave.iter().map(|u| {
                    let mut pipe = redis::pipe();
                    per_user(&mut pipe, u);
                    let mut conn = self.conn.clone();
                    async move { pipe.query_async::<()>(&mut conn).await }
                });
                for r in futures_util::future::join_all(calls).await {
                    r?;
                }
            }
        }
        if !add {
            for chunk in users.chunks(INDEX_AT_ONCE) {
                let () = self.conn.clone().zrem(self.key("readers", group), chunk).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn member_list_of(
        &self,
        group: &str,
    ) -> Result<(i64, Arc<Vec<String>>), StoreError> {
        let mut conn = self.conn.clone();
        let version: Option<i64> = conn.hget(self.key("group", group), "ver").await?;
        let version = version.unwrap_or(0);
        if let Some((v, members)) = self.member_cache.get(group)
            && v == version
        {
            return Ok((v, members));
        }
        // The version is read again with the list, in one transaction of the group's slot.
        let (list, version): (Vec<String>, Option<i64>) = redis::pipe()
            .atomic()
            .hkeys(self.key("members", group))
            .hget(self.key("group", group), "ver")
            .query_async(&mut conn)
            .await?;
        let (version, members) = (version.unwrap_or(0), Arc::new(list));
        self.member_cache.put(group, version, members.clone());
        Ok((version, members))
    }

    pub(super) async fn user_groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.conn.clone().smembers(self.key("ugroups", user)).await?)
    }

    pub(super) async fn position_in(
        &self,
        user: &str,
        device: &str,
        group: &str,
    ) -> Result<Option<Position>, StoreError> {
        let mut conn = self.conn.clone();
        let (bcast, joined): (Option<u64>, Option<String>) = redis::pipe()
            .atomic()
            .hget(self.key("group", group), "bcast")
            .hget(self.key("members", group), user)
            .query_async(&mut conn)
            .await?;
        let (Some(bcast), Some(joined)) = (bcast.filter(|b| *b > 0), joined) else {
            return Ok(None);
        };
        let joined: u64 =
            joined.split_once('|').and_then(|(_, s)| s.parse().ok()).ok_or(bad("joined seq"))?;
        let cursor: Option<u64> =
            conn.hget(self.key("gcur", user), cursor_field(device, group)).await?;
        let newest: StreamRangeReply =
            conn.xrevrange_count(self.key("log", group), "+", "-", 1).await?;
        let last = match newest.ids.first() {
            Some(e) => {
                e.id.split_once('-').and_then(|(_, s)| s.parse().ok()).ok_or(bad("log id"))?
            }
            None => 0,
        };
        let after = cursor.unwrap_or(0).max(bcast - 1).max(joined.saturating_sub(1));
        Ok(Some(Position { after, last }))
    }

    pub(super) async fn ack_groups_of(
        &self,
        user: &str,
        device: &str,
        cursors: &[(String, u64)],
    ) -> Result<(), StoreError> {
        if cursors.is_empty() {
            return Ok(());
        }
        let key = self.key("gcur", user);
        let mut inv = self.groups.cursors.key(&key);
        inv.arg(self.opts.device_ttl.as_millis() as u64);
        for (group, seq) in cursors {
            inv.arg(cursor_field(device, group)).arg(*seq);
        }
        inv.invoke_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }
}
