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
            _ => None,
        }
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
    /// CREATED, RENAMED: the group's name; ROLE_CHANGED: the role's name.
    pub name: String,
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
    /// The members after the change.
    pub members: Vec<String>,
    /// Who was removed (or left): they get the event too, as the last of the group.
    pub removed: Vec<String>,
}

/// A group message in the group's log: the members to deliver it to.
#[derive(Debug, Clone)]
pub struct Logged {
    /// As logged (seq 0; for a retry the first copy's seq, id and time).
    pub message: StoredMessage,
    pub duplicate: bool,
    /// The group's members when it was logged.
    pub members: Arc<Vec<String>>,
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
    /// it and the group stays within `max_members`, logging its event with `event`'s msg_id,
    /// time and client_msg_id.
    async fn change_group(
        &self,
        event: NewMessage,
        change: GroupChange,
        max_members: u32,
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
    /// ([`StoreError::NotMember`]); logged at most once per (sender, client_msg_id).
    async fn log_group_message(&self, msg: NewMessage) -> Result<Logged, StoreError>;

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
}
