//! Reading a group in Redis: its hash, a page of its members (by id, from the sorted set of
//! ids `<p>:names:{g}` that `group.lua` keeps beside the members hash) and one membership.
use std::collections::HashMap;

use redis::AsyncCommands;

use super::RedisStore;
use super::values::bad;
use crate::store::StoreError;
use crate::store::groups::{GroupInfo, Member, Role};

impl RedisStore {
    pub(super) async fn group_info(&self, group: &str) -> Result<Option<GroupInfo>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = conn.hgetall(self.key("group", group)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let count: u32 = conn.hlen(self.key("members", group)).await?;
        let get = |f: &str| fields.get(f).cloned().unwrap_or_default();
        Ok(Some(GroupInfo {
            id: group.to_string(),
            name: get("name"),
            owner: get("owner"),
            created_at: get("created_at").parse().unwrap_or(0),
            history_for_new_members: get("history") == "1",
            member_count: count,
            broadcast_from: get("bcast").parse().unwrap_or(0),
        }))
    }

    pub(super) async fn members_page(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        // One page of the sorted ids, then their roles: a page costs its size, not the group's.
        let mut conn = self.conn.clone();
        let from = if after.is_empty() { "-".to_string() } else { format!("({after}") };
        let users: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.key("names", group))
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.key("members", group))
            .arg(&users)
            .query_async(&mut conn)
            .await?;
        let found = users.into_iter().zip(values);
        found.filter_map(|(u, v)| v.map(|v| parse_member(u, &v))).collect()
    }

    pub(super) async fn member_of(
        &self,
        group: &str,
        user: &str,
    ) -> Result<Option<Member>, StoreError> {
        let value: Option<String> =
            self.conn.clone().hget(self.key("members", group), user).await?;
        value.map(|v| parse_member(user.to_string(), &v)).transpose()
    }
}

pub(super) fn parse_member(user: String, value: &str) -> Result<Member, StoreError> {
    let (role, seq) = value.split_once('|').ok_or(bad("member"))?;
    Ok(Member {
        user,
        role: Role::parse(role).ok_or(bad("role"))?,
        joined_seq: seq.parse().map_err(|_| bad("joined seq"))?,
    })
}
