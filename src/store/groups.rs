//! Groups: membership, and the two steps a group message is stored in — logged once in the
//! group's conversation ([`Groups::log_group_message`]), then appended to each member's inbox
//! ([`Groups::deliver_group`]) before the sender is acked, so members get the same guarantees as
//! in a direct conversation. Membership changes are logged as events in the same conversation.
use std::sync::Arc;

use async_trait::async_trait;

use super::{NewMessage, Route, StoreError, StoredMessage};

/// Users one AddMembers or RemoveMembers names at most: its event, naming them, is copied into
/// every member's inbox.
pub const MAX_CHANGED_USERS: usize = 100;

/// A member's role: the owner (one), admins, members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// What changed in a group (the numbers are the wire's and the stores').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created = 1,
    Joined = 2,
    Left = 3,
    Removed = 4,
    Renamed = 5,
    RoleChanged = 6,
    /// A change of an earlier message (in any conversation): its [`GroupEvent::name`] is the
    /// target's conversation seq; an edit's new text is the message's body.
    Edited = 7,
    Deleted = 8,
    Recalled = 9,
}

impl EventKind {
    pub fn from_number(n: i64) -> Option<EventKind> {
        match n {
            1 => Some(EventKind::Created),
            2 => Some(EventKind::Joined),
            3 => Some(EventKind::Left),
            4 => Some(EventKind::Removed),
            5 => Some(EventKind::Renamed),
            6 => Some(EventKind::RoleChanged),
            7 => Some(EventKind::Edited),
            8 => Some(EventKind::Deleted),
            9 => Some(EventKind::Recalled),
            _ => None,
        }
    }

    /// Whether it changes an earlier message rather than the group.
    pub fn changes_a_message(self) -> bool {
        matches!(self, EventKind::Edited | EventKind::Deleted | EventKind::Recalled)
    }
}

/// A change of a group as its conversation shows it (a message from the user who made it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub kind: EventKind,
    /// Who joined, left, was removed or got another role (at most
    /// [`MAX_CHANGED_USERS`]); none for CREATED: its copy lands in every member's inbox, and
    /// the members are for GetGroup to page.
    pub users: Vec<String>,
    /// CREATED, RENAMED: the group's name; ROLE_CHANGED: the role's name; EDITED, DELETED,
    /// RECALLED: the target's conversation seq, in decimal.
    pub name: String,
}

impl GroupEvent {
    /// The change of message `target` (EDITED, DELETED or RECALLED).
    pub fn change(kind: EventKind, target: u64) -> Self {
        GroupEvent { kind, users: Vec::new(), name: target.to_string() }
    }

    /// The conversation seq an EDITED, DELETED or RECALLED event changes.
    pub fn target(&self) -> Option<u64> {
        self.kind.changes_a_message().then(|| self.name.parse().ok()).flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The conversation id, `g:<id>`.
    pub id: String,
    pub name: String,
    pub owner: String,
    pub created_at: i64,
    pub history_for_new_members: bool,
    pub member_count: u32,
    /// 0, or the conversation seq from which the group broadcasts (see [`Limits::fanout`]).
    pub broadcast_from: u64,
}

/// What a node allows a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Members a group may have.
    pub max_members: u32,
    /// Members up to which a message goes into every member's inbox. A group that outgrows it
    /// broadcasts from then on: each message is stored once, in the log, pushed to the members
    /// online and caught up by the others from their per-device cursor ([`Groups::position`]).
    pub fanout: u32,
}

/// Where a device stands in a broadcast group's conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The device has everything up to this conversation seq: its acked cursor, or what came
    /// before the group broadcast (in the inbox) or before the user joined.
    pub after: u64,
    /// The conversation's last seq.
    pub last: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    pub role: Role,
    /// The conversation seq of the event that made them a member.
    pub joined_seq: u64,
}

/// A change to make; the actor's role is checked with it, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    Create {
        name: String,
        members: Vec<String>,
        history_for_new_members: bool,
    },
    Add(Vec<String>),
    Remove(Vec<String>),
    Leave,
    /// The owner gives a member another role; a new owner makes the old one an admin.
    SetRole(String, Role),
    /// The owner or an admin renames the group.
    Rename(String),
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The event logged (seq 0), or None when nothing changed (adding members already in).
    pub event: Option<StoredMessage>,
    /// The members after the change (none once the group broadcasts: nothing is written per
    /// member then).
    pub members: Vec<String>,
    /// Who was removed (or left): they get the event too, as the last of the group.
    pub removed: Vec<String>,
    /// 0, or the conversation seq from which the group broadcasts.
    pub broadcast_from: u64,
    /// The membership version after the change.
    pub version: i64,
}

/// A group message in the group's log: the members to deliver it to.
#[derive(Debug, Clone)]
pub struct Logged {
    /// As logged (seq 0; for a retry the first copy's seq, id and time).
    pub message: StoredMessage,
    pub duplicate: bool,
    /// The group's members when it was logged.
    pub members: Arc<Vec<String>>,
    /// 0, or the conversation seq from which the group broadcasts.
    pub broadcast_from: u64,
    /// The membership version `members` are of.
    pub version: i64,
}

impl Logged {
    /// Whether the message is broadcast rather than put into each member's inbox.
    pub fn broadcast(&self) -> bool {
        broadcasts(self.broadcast_from, self.message.conv_seq)
    }
}

impl Changed {
    /// Whether the event is broadcast rather than put into each member's inbox.
    pub fn broadcast(&self) -> bool {
        self.event.as_ref().is_some_and(|e| broadcasts(self.broadcast_from, e.conv_seq))
    }
}

/// Whether conversation seq `seq` of a group that broadcasts from `from` (0: never) is broadcast.
pub fn broadcasts(from: u64, seq: u64) -> bool {
    from > 0 && seq >= from
}

/// A message that reached a member's inbox, to push to their devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub user: String,
    /// With the member's inbox seq.
    pub message: StoredMessage,
    pub routes: Vec<(String, Route)>,
}

/// Groups and their messages; memory and Redis backends answer alike.
#[async_trait]
pub trait Groups: Send + Sync + 'static {
    /// Makes `change` as `event.from` (`event.conversation` is the group) if their role allows
    /// it and the group stays within `limits.max_members`, logging its event with `event`'s
    /// msg_id, time and client_msg_id. A group that now has more than `limits.fanout` members
    /// broadcasts from this event on (for good). The members' group lists
    /// ([`Groups::user_groups`]) are updated after the group.
    async fn change_group(
        &self,
        event: NewMessage,
        change: GroupChange,
        limits: Limits,
    ) -> Result<Changed, StoreError>;

    /// The group, if it exists.
    async fn group(&self, group: &str) -> Result<Option<GroupInfo>, StoreError>;

    /// Up to `limit` members with user ids after `after`, in id order.
    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError>;

    /// `user`'s membership of `group`, if they are in it.
    async fn member(&self, group: &str, user: &str) -> Result<Option<Member>, StoreError>;

    /// Step 1 of a group message (`msg.conversation` is the group): only a member sends
    /// ([`StoreError::NotMember`]); logged at most once per (sender, client_msg_id). A group
    /// with more than `fanout` members broadcasts from this message on (for good).
    async fn log_group_message(&self, msg: NewMessage, fanout: u32) -> Result<Logged, StoreError>;

    /// Step 2: the logged `message` (or event) into each of `members`' inboxes, at most once
    /// each and in the conversation's order (a gap left by another node's message of the group
    /// is filled from the log first; what was filled is returned too). The sender's own inbox
    /// gets it only when they have a device other than `origin_device`; a full inbox skips it.
    async fn deliver_group(
        &self,
        message: &StoredMessage,
        origin_device: &str,
        members: &[String],
    ) -> Result<Vec<Delivered>, StoreError>;

    /// The group's members now, with the membership version they are of.
    async fn member_list(&self, group: &str) -> Result<(i64, Arc<Vec<String>>), StoreError>;

    /// The groups `user` was put in: a superset (a removal may not have reached the list yet),
    /// so each is checked against the group's members.
    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Where `device` of `user` stands in `group`: None unless the group broadcasts and the
    /// user is a member.
    async fn position(
        &self,
        user: &str,
        device: &str,
        group: &str,
    ) -> Result<Option<Position>, StoreError>;

    /// Moves `device`'s cursors in broadcast groups forward to the given conversation seqs
    /// (never back).
    async fn ack_groups(
        &self,
        user: &str,
        device: &str,
        cursors: &[(String, u64)],
    ) -> Result<(), StoreError>;
}
