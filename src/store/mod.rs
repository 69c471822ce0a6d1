//! Where messages and routes live: the [`Inbox`] and [`RouteStore`] traits and their backends.
//!
//! - `memory`: the embedded default; one process, nothing survives a restart.
//! - `redis`: durable and shared by all nodes; a single server or a Redis Cluster.
//!
//! Every message belongs to a conversation, whose log holds it once with a conversation seq
//! contiguous from 1 (history, kept for `history_retention` and at most `history_max`
//! messages). Every user has an inbox whose messages carry a seq contiguous from 1: a copy of
//! each message they receive, and of each they send while they have another device. Appending
//! deduplicates on (recipient, sender, client_msg_id), stores the message in the log, the
//! recipient's inbox and the sender's copy, and reads the routes of both, so the sender can be
//! acked and the message pushed after one append.
use async_trait::async_trait;

pub mod conversations;
pub mod groups;
pub mod memory;
pub mod metered;
pub mod redis;

pub use memory::MemoryStore;
pub use redis::{Access as RedisAccess, RedisStore};

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or timed out; nothing was written. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The inbox no longer holds what the device acked at `seq` (see [`Inbox::ack`]).
    #[error("the inbox was rolled back: seq {seq} is not the message the device acked")]
    RolledBack { seq: u64 },
    /// The backend answered something we do not understand.
    #[error("store error: {0}")]
    Internal(String),
    /// The user has `max` devices already; a new one is refused until one logs out or stays
    /// away for the device keep time.
    #[error(
        "this user already has {max} devices; log one out (Gateway.Logout) or wait until one has been away for the device keep time"
    )]
    TooManyDevices { max: u32 },
    /// The recipient's inbox holds `max` messages not yet acked by all devices; nothing was
    /// written. It takes more once its devices ack (or messages pass the retention).
    #[error(
        "the recipient's inbox is full ({max} unread messages); retry later with the same client_msg_id"
    )]
    InboxFull { max: u64 },
    /// The recipient's inbox takes no more this second (`StoreOptions::inbox_rate`); nothing
    /// was written. Retry after `retry_after`.
    #[error(
        "the recipient's inbox takes at most {rate} messages/s; retry with the same client_msg_id"
    )]
    InboxRate { rate: u32, retry_after: std::time::Duration },
    /// No such group, or the caller is not in it (the two are not told apart).
    #[error("no such group, or you are not a member of it")]
    NotMember,
    /// The caller's role in the group does not allow this change.
    #[error("your role in this group does not allow that")]
    Forbidden,
    /// The group would have more than `max` members.
    #[error("a group has at most {max} members")]
    GroupFull { max: u32 },
    /// A group with this id exists already.
    #[error("the group exists already")]
    GroupExists,
    /// The owner may not leave; they hand the group on first.
    #[error("the owner cannot leave the group")]
    OwnerMustStay,
}

/// A message as its sender submitted it (stream `Send` or unary `Gateway.Send`), before the
/// node validates it and makes it a [`NewMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The recipient, or empty for a group message.
    pub to: String,
    pub body: String,
    /// A group's conversation id, instead of `to`.
    pub group: String,
    /// An edit, delete or recall of this conversation seq of the conversation, instead of a
    /// new message.
    pub change: Option<(groups::EventKind, u64)>,
}

/// A message to append to its conversation and `to`'s inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub from: String,
    /// The device it was sent from: the sender's copy goes to their inbox only when they have
    /// another device.
    pub origin_device: String,
    pub to: String,
    /// The conversation id ([`crate::ids::Conversation::id`]).
    pub conversation: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    pub body: String,
    /// Globally unique id given by the accepting node; kept by the first successful append.
    pub msg_id: String,
    /// Unix epoch ms at which the accepting node took the message.
    pub sent_at: i64,
    /// Set for a change of an earlier message (EDITED, DELETED, RECALLED).
    pub event: Option<groups::GroupEvent>,
}

/// A message in an inbox (or, with `seq` 0, in a conversation's history).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredMessage {
    /// Position in the inbox it was read from.
    pub seq: u64,
    pub msg_id: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub sent_at: i64,
    pub conversation: String,
    /// Position in the conversation's log.
    pub conv_seq: u64,
    pub client_msg_id: String,
    /// Set when the message is a change of its group.
    pub event: Option<groups::GroupEvent>,
}

/// What an ack is checked against: the cursor the session last stored for the device, and the
/// (seq, msg_id) of messages it sent the device above that. The ack is refused as rolled back
/// when the stored cursor is below `stored` (a cursor write was lost), when `up_to` is past
/// the inbox's last seq, or when the inbox holds another message under one of `sent`'s seqs
/// above the stored cursor. Empty: only the last seq is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckCheck {
    pub stored: u64,
    pub sent: Vec<(u64, String)>,
}

/// Where one device's stream is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub node_id: String,
    pub session_id: String,
    /// When the session's Hello arrived (Unix ms): of two sessions of one device, the later
    /// Hello owns the route, whichever route write lands last.
    pub started_at: i64,
}

/// The result of [`RouteStore::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRoute {
    /// The route is ours; it replaced this one (unexpired), if any.
    Took(Option<Route>),
    /// A session of the device that started later owns the route: nothing was written.
    Superseded(Route),
}

/// The result of [`Inbox::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The message as stored (for a duplicate: the first copy's seq, msg_id and sent_at).
    pub message: StoredMessage,
    /// True when (to, from, client_msg_id) was already stored: nothing new was written.
    pub duplicate: bool,
    /// The recipient's unexpired routes (device, route) at the time of the append (none for a
    /// group message: each member's come with [`groups::Delivered`]).
    pub routes: Vec<(String, Route)>,
    /// The copy stored in the sender's inbox for their other devices, if one was (never for a
    /// duplicate, nor to oneself).
    pub copy: Option<SenderCopy>,
}

/// The sender's copy of a message: its place in the sender's inbox and the sender's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderCopy {
    pub message: StoredMessage,
    pub routes: Vec<(String, Route)>,
}

/// Which part of a conversation's log [`Inbox::history`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPage {
    /// Above 0: the oldest messages with a conversation seq above it.
    pub after: u64,
    /// Otherwise the newest below it (0: the newest of all).
    pub before: u64,
    pub limit: usize,
}

/// Message `seq` of `user`'s inbox, if the inbox still holds it (not acked by every device, not
/// past the retention).
pub async fn message_at(
    inbox: &dyn Inbox,
    user: &str,
    seq: u64,
) -> Result<Option<StoredMessage>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    let page = inbox.read(user, seq - 1, 1).await?;
    Ok(page.into_iter().next().filter(|m| m.seq == seq))
}

/// Per-user durable message queues with per-device ack cursors.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Dedup + inbox rate + the conversation log + next seq + append + route read, and the
    /// sender's copy when they have a device other than `origin_device`. A retry of a stored
    /// message is answered as a duplicate even when the inbox is over its rate.
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError>;

    /// A page of `conversation`'s log, in conversation seq order (`seq` 0), never past the
    /// history retention.
    async fn history(
        &self,
        conversation: &str,
        page: HistoryPage,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Up to `limit` messages of `user` with seq > `after`, in seq order. Messages acked by
    /// every device may be gone; messages older than the retention are never returned, whether
    /// or not they were trimmed yet.
    async fn read(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The id of this incarnation of `user`'s inbox, created on first use. A lost inbox (a
    /// restarted memory store, a Redis that lost its data) comes back with another one.
    async fn epoch(&self, user: &str) -> Result<String, StoreError>;

    /// Gives `user`'s inbox a new epoch and returns it: its seqs were given out again (a rolled
    /// back store), so no client's seq from before may be trusted.
    async fn renew_epoch(&self, user: &str) -> Result<String, StoreError>;

    /// The highest seq ever assigned in `user`'s inbox (0 if none).
    async fn last_seq(&self, user: &str) -> Result<u64, StoreError>;

    /// Moves the enrolled `device`'s cursor to `max(cursor, min(up_to, last_seq))` and returns
    /// it. Also registers the cursor of an enrolled device that has none, so trimming waits for
    /// it; a device not enrolled (logged out, forgotten) stores nothing and gets
    /// `min(up_to, last_seq)` back. Messages at or below every device's cursor may be trimmed,
    /// and the lowest is found without scanning every device.
    ///
    /// `check`: what the device was given; an inbox that no longer agrees was rolled back under
    /// it (a failover to a replica that lagged, a restore) and gave its seqs out again, so
    /// `up_to` no longer means what the device got: [`StoreError::RolledBack`], nothing stored.
    async fn ack(
        &self,
        user: &str,
        device: &str,
        up_to: u64,
        check: &AckCheck,
    ) -> Result<u64, StoreError>;

    /// Admits `device` of `user` (at Hello): forgets the user's devices unseen for
    /// `device_ttl` with their cursors, refuses a device not yet known when the user has
    /// `max_devices` ([`StoreError::TooManyDevices`]), and marks this one seen.
    async fn enroll(&self, user: &str, device: &str) -> Result<(), StoreError>;

    /// Forgets `device` of `user` and its cursor (it logged out), freeing its place.
    async fn forget(&self, user: &str, device: &str) -> Result<(), StoreError>;
}

/// Which node holds each device stream of a user.
#[async_trait]
pub trait RouteStore: Send + Sync + 'static {
    /// Records that `device` of `user` is connected through `route` for `ttl`, unless an
    /// unexpired route of a session that started later holds the device. A live session
    /// refreshes its route well before `ttl`, so routes of a node that died without cleaning up
    /// lapse on their own.
    async fn put(
        &self,
        user: &str,
        device: &str,
        route: &Route,
        ttl: std::time::Duration,
    ) -> Result<PutRoute, StoreError>;

    /// Extends `route` for another `ttl` if `device` is still its session's, or has no
    /// unexpired route (a lapsed route is gone, here as in every call). Returns false, changing
    /// nothing, when another session holds an unexpired route of the device.
    async fn refresh(
        &self,
        user: &str,
        device: &str,
        route: &Route,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Removes the route of `device` only if it still belongs to `session_id`. Returns whether
    /// an unexpired route was removed.
    async fn remove_if(
        &self,
        user: &str,
        device: &str,
        session_id: &str,
    ) -> Result<bool, StoreError>;

    /// All unexpired routes of `user` as (device, route).
    async fn get(&self, user: &str) -> Result<Vec<(String, Route)>, StoreError>;

    /// Revokes the tokens of `user`'s `device` issued up to `at_ms` (Unix ms), remembered for
    /// `ttl` (as long as such a token could live). A later revocation replaces an earlier one.
    async fn revoke(
        &self,
        user: &str,
        device: &str,
        at_ms: i64,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// Up to when (Unix ms) the tokens of `user`'s `device` are revoked, if they are.
    async fn revoked(&self, user: &str, device: &str) -> Result<Option<i64>, StoreError>;

    /// Records that a stream of `user` ended at `at_ms` (Unix ms), remembered for `ttl`.
    async fn seen(
        &self,
        user: &str,
        at_ms: i64,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// When a stream of `user` last ended, if remembered.
    async fn last_seen(&self, user: &str) -> Result<Option<i64>, StoreError>;
}

/// Limits every backend applies.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Messages older than this are trimmed even if some device never acked them.
    pub retention: std::time::Duration,
    /// How long a (sender, client_msg_id) is remembered for deduplication.
    pub dedup_ttl: std::time::Duration,
    /// New messages one inbox takes per second, from all senders on all nodes together
    /// (0 = unlimited). Retries of stored messages do not count.
    pub inbox_rate: u32,
    /// Messages one inbox holds at most (not yet acked by every device, within retention);
    /// beyond it new messages are refused, never old ones dropped.
    pub inbox_max: u64,
    /// Redis replicas that must have a message before it counts as stored (`WAIT`); 0 = the
    /// primary alone.
    pub wait_replicas: u32,
    /// Devices one user may have (a cursor each).
    pub max_devices: u32,
    /// A device unseen (no Hello, no ack) this long is forgotten with its cursor.
    pub device_ttl: std::time::Duration,
    /// How long a conversation's log keeps a message (history).
    pub history_retention: std::time::Duration,
    /// Messages one conversation's log keeps at most; the oldest go first.
    pub history_max: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retention: std::time::Duration::from_secs(7 * 24 * 3600),
            dedup_ttl: std::time::Duration::from_secs(24 * 3600),
            inbox_rate: 0,
            inbox_max: 100_000,
            wait_replicas: 0,
            max_devices: 20,
            device_ttl: std::time::Duration::from_secs(30 * 24 * 3600),
            history_retention: std::time::Duration::from_secs(30 * 24 * 3600),
            history_max: 100_000,
        }
    }
}
