//! Broadcast groups on a node (see [`crate::store::groups::Limits::fanout`]): a message is
//! stored once, in the group's log, then handed to the sessions of its members on this node
//! and queued once for every other live node, which does the same with its own. A session
//! keeps each group's order and catches up from the log (`stream::groups`), so a push lost on
//! the way costs a read, never a message.
//!
//! Which users are members comes from the membership version the message was logged with: a
//! node whose list is older reads it again, so a removed member gets nothing after their
//! removal, on any node.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use crate::store::groups::EventKind;
use crate::store::{StoreError, StoredMessage};

use super::Node;

/// Groups whose member sets a node keeps; past it the cache starts again.
const CACHED_GROUPS: usize = 10_000;

/// A group's members as a set, with the membership version it is of.
type MemberSet = (i64, Arc<HashSet<String>>);

/// Member sets of the broadcast groups whose messages came through this node.
#[derive(Default)]
pub(super) struct MemberSets(Mutex<HashMap<String, MemberSet>>);

impl MemberSets {
    fn get(&self, group: &str, version: i64) -> Option<Arc<HashSet<String>>> {
        let sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sets.get(group).filter(|(v, _)| *v >= version).map(|(_, set)| set.clone())
    }

    fn put(&self, group: &str, version: i64, set: Arc<HashSet<String>>) {
        let mut sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if sets.len() >= CACHED_GROUPS {
            sets.clear();
        }
        sets.insert(group.to_string(), (version, set));
    }
}

impl Node {
    /// Pushes a broadcast group's logged message (or event) of membership `version`: queued
    /// for every live peer, and handed to the members' sessions here.
    pub(super) async fn broadcast(&self, message: &StoredMessage, version: i64) {
        let dropped = self.delivery.peers().relay_broadcast(message, version);
        if dropped > 0 {
            debug!(dropped, "broadcast relay queue full; those sessions read the log");
        }
        self.deliver_broadcast(message, version).await;
    }

    /// Hands a broadcast group's message to the sessions here of its members as of `version`
    /// (or later), and of the users a LEFT or REMOVED event names (their last message of the
    /// group). Returns how many sessions got it.
    pub async fn deliver_broadcast(&self, message: &StoredMessage, version: i64) -> usize {
        let members = match self.member_set(&message.conversation, version).await {
            Ok(members) => members,
            Err(e) => {
                warn!(group = %message.conversation, error = %e, "no member list; sessions \
                    catch up from the log");
                return 0;
            }
        };
        let also = match &message.event {
            Some(e) if matches!(e.kind, EventKind::Left | EventKind::Removed) => &e.users[..],
            _ => &[],
        };
        self.delivery.sessions().deliver_to_members(&members, also, message)
    }

    async fn member_set(
        &self,
        group: &str,
        version: i64,
    ) -> Result<Arc<HashSet<String>>, StoreError> {
        if let Some(set) = self.member_sets.get(group, version) {
            return Ok(set);
        }
        let (version, list) = self.groups.member_list(group).await?;
        let set: Arc<HashSet<String>> = Arc::new(list.iter().cloned().collect());
        self.member_sets.put(group, version, set.clone());
        Ok(set)
    }
}
