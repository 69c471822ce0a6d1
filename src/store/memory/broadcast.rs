//! A broadcast group's per-user state in memory: the groups each user was put in and each
//! device's acked conversation seq per broadcast group (see `crate::store::groups::Limits`).
use std::sync::Arc;

use super::MemoryStore;
use crate::store::groups::Position;

impl MemoryStore {
    /// Adds `group` to (or, `add` false, removes it from) each of `users`' group lists; what a
    /// user removed had seen of it goes (the caller, holding the group's log, drops their read
    /// cursors there).
    pub(super) fn index_members(&self, group: &str, users: &[String], add: bool) {
        for user in users {
            self.with_user(user, |u| {
                if add {
                    u.groups.insert(group.to_string());
                } else {
                    u.groups.remove(group);
                    u.group_cursors.retain(|(_, g), _| g != group);
                    u.conversations.remove(group);
                }
            });
        }
    }

    pub(super) fn member_list_of(&self, group: &str) -> (i64, Arc<Vec<String>>) {
        let convs = self.conv_shard(group);
        match convs.get(group).and_then(|log| log.group.as_ref()) {
            Some(g) => (g.version, Arc::new(g.members.keys().cloned().collect())),
            None => (0, Arc::new(Vec::new())),
        }
    }

    pub(super) fn position_in(&self, user: &str, device: &str, group: &str) -> Option<Position> {
        let (bcast, joined, last) = {
            let convs = self.conv_shard(group);
            let log = convs.get(group)?;
            let g = log.group.as_ref()?;
            let (_, joined) = g.members.get(user)?;
            (g.broadcast_from, *joined, log.next_seq() - 1)
        };
        if bcast == 0 {
            return None;
        }
        let key = (device.to_string(), group.to_string());
        let cursor = self.with_user(user, |u| u.group_cursors.get(&key).copied().unwrap_or(0));
        Some(Position { after: cursor.max(bcast - 1).max(joined.saturating_sub(1)), last })
    }

    pub(super) fn ack_groups_of(&self, user: &str, device: &str, cursors: &[(String, u64)]) {
        self.with_user(user, |u| {
            for (group, seq) in cursors {
                let at = u.group_cursors.entry((device.to_string(), group.clone())).or_default();
                *at = (*at).max(*seq);
            }
        });
    }
}
