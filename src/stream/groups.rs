//! A session's broadcast groups (see [`crate::store::groups::Limits::fanout`]): their messages
//! are not in the inbox, so the session keeps, per group, the last conversation seq this
//! device has (`last`) and sends each group's messages in conversation order, each once.
//!
//! At Hello every broadcast group of the user is looked up: one the device is behind in is
//! named in Welcome (`moved`) and read from the log after Welcome, a page per turn of the
//! session loop. A live push is sent when it is the next of its group; an older one is
//! dropped; a newer one waits up to [`REORDER_WAIT`] for the ones before it (pushes overtake
//! each other on the way), after which (something was missed: a lost relay, a full feed) the
//! group is read from the log. Acks (`Ack.conversation`) are merged and stored at most
//! every [`ACK_EVERY`].
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tonic::Status;

use crate::node::Node;
use crate::proto;
use crate::store::groups::EventKind;
use crate::store::{HistoryPage, StoreError, StoredMessage};

/// Log entries one catch-up read returns.
const PAGE: usize = 256;
/// Acked conversation seqs are stored at most this often (and when the session ends).
const ACK_EVERY: Duration = Duration::from_secs(1);
/// Groups looked up at once at Hello.
const LOOKUPS_AT_ONCE: usize = 16;
/// How long pushes that came ahead of an earlier one wait for it (pushes from several senders'
/// nodes and tasks overtake each other) before the group is read from the log.
const REORDER_WAIT: Duration = Duration::from_millis(50);
/// Pushes held per group at most while one is awaited.
const REORDER_MAX: usize = 64;

#[derive(Debug)]
struct Group {
    /// The last conversation seq this device has (sent on this stream, or acked before).
    last: u64,
    /// Messages after `last` are to be read from the log.
    behind: bool,
    /// The user's membership ended at `last`: nothing more comes (acks up to it are taken).
    ended: bool,
    /// Pushes past `last + 1`, held until it comes (or [`REORDER_WAIT`] passes).
    waiting: BTreeMap<u64, Arc<StoredMessage>>,
    /// Since when `waiting` waits.
    gap_since: Option<Instant>,
}

impl Group {
    fn at(last: u64, behind: bool) -> Group {
        Group { last, behind, ended: false, waiting: BTreeMap::new(), gap_since: None }
    }

    /// Read from the log after `last` instead of waiting for pushes.
    fn read_log(&mut self) {
        self.behind = !self.ended;
        self.waiting.clear();
        self.gap_since = None;
    }

    /// `msg` (the next one) and the held ones that follow it, up to the next gap or the end of
    /// `user`'s membership.
    fn take(&mut self, msg: Arc<StoredMessage>, user: &str) -> Vec<StoredMessage> {
        let mut out = Vec::new();
        let mut next = Some(msg);
        while let Some(m) = next {
            self.last = m.conv_seq;
            self.ended = ends(&m, user);
            out.push(Arc::unwrap_or_clone(m));
            if self.ended {
                self.waiting.clear();
                break;
            }
            next = self.waiting.remove(&(self.last + 1));
        }
        self.gap_since = (!self.waiting.is_empty()).then(Instant::now);
        out
    }
}

/// The broadcast groups of one session.
#[derive(Debug, Default)]
pub(super) struct Groups {
    groups: HashMap<String, Group>,
    /// Acked, not yet stored: group → conversation seq.
    acks: HashMap<String, u64>,
    ack_due: Option<Instant>,
}

/// Whether `m` is the event that ended `user`'s membership (their last message of the group).
fn ends(m: &StoredMessage, user: &str) -> bool {
    m.event.as_ref().is_some_and(|e| {
        matches!(e.kind, EventKind::Left | EventKind::Removed) && e.users.iter().any(|u| u == user)
    })
}

impl Groups {
    /// Looks up where `device` stands in each broadcast group of `user`; the groups it is
    /// behind in, for Welcome.
    pub(super) async fn start(
        node: &Node,
        user: &str,
        device: &str,
    ) -> Result<(Groups, Vec<proto::Moved>), StoreError> {
        let ids = node.groups().user_groups(user).await?;
        let lookups = futures_util::stream::iter(ids)
            .map(|g| async move { (node.groups().position(user, device, &g).await, g) })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let mut groups = Groups::default();
        let mut moved = Vec::new();
        for (position, id) in lookups {
            let Some(p) = position? else { continue };
            let behind = p.last > p.after;
            if behind {
                moved.push(proto::Moved {
                    conversation: id.clone(),
                    after_seq: p.after,
                    last_seq: p.last,
                });
            }
            groups.groups.insert(id, Group::at(p.after, behind));
        }
        moved.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        Ok((groups, moved))
    }

    /// Whether a group is to be read from the log.
    pub(super) fn behind(&self) -> bool {
        self.groups.values().any(|g| g.behind)
    }

    /// Every group is read from the log after `last` (a push may have been lost).
    pub(super) fn check_all(&mut self) {
        self.groups.values_mut().for_each(Group::read_log);
    }

    /// When the longest-held pushes stop waiting for the one before them.
    pub(super) fn gap_due(&self) -> Option<Instant> {
        self.groups.values().filter_map(|g| g.gap_since).min().map(|t| t + REORDER_WAIT)
    }

    /// Groups whose awaited push did not come in time are read from the log.
    pub(super) fn expire_gaps(&mut self) {
        let now = Instant::now();
        for g in self.groups.values_mut() {
            if g.gap_since.is_some_and(|t| t + REORDER_WAIT <= now) {
                g.read_log();
            }
        }
    }

    /// A live push of a broadcast group's message: the messages to send now, in order.
    pub(super) async fn on_push(
        &mut self,
        node: &Node,
        user: &str,
        device: &str,
        msg: Arc<StoredMessage>,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let id = &msg.conversation;
        if !self.groups.contains_key(id) {
            // A group joined (or turned broadcast) since Hello.
            match node.groups().position(user, device, id).await? {
                Some(p) => {
                    self.groups.insert(id.clone(), Group::at(p.after, false));
                }
                // Not a member: only the event that ended their membership is theirs.
                None if ends(&msg, user) => return Ok(vec![Arc::unwrap_or_clone(msg)]),
                None => return Ok(Vec::new()),
            }
        }
        let group = self.groups.get_mut(id).expect("inserted above");
        if group.ended || group.behind || msg.conv_seq <= group.last {
            return Ok(Vec::new());
        }
        if msg.conv_seq > group.last + 1 {
            if group.waiting.len() == REORDER_MAX {
                group.read_log();
            } else {
                group.waiting.insert(msg.conv_seq, msg);
                group.gap_since.get_or_insert_with(Instant::now);
            }
            return Ok(Vec::new());
        }
        Ok(group.take(msg, user))
    }

    /// One page of the log of a group this device is behind in: the messages to send.
    pub(super) async fn fill(
        &mut self,
        node: &Node,
        user: &str,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some((id, group)) = self.groups.iter_mut().find(|(_, g)| g.behind) else {
            return Ok(Vec::new());
        };
        let id = id.clone();
        let page = HistoryPage { after: group.last, before: 0, limit: PAGE };
        let mut page = node.inbox().history(&id, page).await?;
        group.behind = page.len() == PAGE;
        if let Some(m) = page.last() {
            group.last = m.conv_seq;
        }
        if let Some(at) = page.iter().position(|m| ends(m, user)) {
            page.truncate(at + 1);
            (group.last, group.behind, group.ended) = (page[at].conv_seq, false, true);
        }
        Ok(page)
    }

    /// The device has everything of `group` up to `conv_seq`: stored within [`ACK_EVERY`].
    pub(super) fn ack(&mut self, group: &str, conv_seq: u64) -> Result<(), Status> {
        let Some(g) = self.groups.get(group) else {
            return Err(Status::invalid_argument(format!(
                "Ack names {group:?}, not a broadcast group of this stream"
            )));
        };
        if conv_seq > g.last {
            return Err(Status::invalid_argument(format!(
                "Ack conv_seq {conv_seq} of {group} is beyond the last sent on this stream ({})",
                g.last
            )));
        }
        let acked = self.acks.entry(group.to_string()).or_default();
        *acked = (*acked).max(conv_seq);
        self.ack_due.get_or_insert_with(|| Instant::now() + ACK_EVERY);
        Ok(())
    }

    /// When the acks taken so far are to be stored.
    pub(super) fn ack_due(&self) -> Option<Instant> {
        self.ack_due
    }

    /// Stores the acks taken so far. A failure is logged: the device is sent those messages
    /// again after its next Hello, and drops them by conversation seq.
    pub(super) async fn store_acks(&mut self, node: &Node, user: &str, device: &str) {
        self.ack_due = None;
        if self.acks.is_empty() {
            return;
        }
        let acks: Vec<(String, u64)> = self.acks.drain().collect();
        if let Err(e) = node.groups().ack_groups(user, device, &acks).await {
            tracing::warn!(%user, error = %e, "group acks not stored");
        }
    }
}
