//! Each user's index of their conversations, for ListConversations: when they last took part in
//! each direct one (sent, received) and, in every conversation, the highest conversation seq
//! they have seen (sent, or marked read). Groups are found from
//! [`super::groups::Groups::user_groups`]; the last message and the unread count are read from
//! the conversations' logs. And each conversation's readers: every member's read cursor (one
//! per member, never one per message), for receipts.
use async_trait::async_trait;

use super::StoreError;

/// Direct conversations one user's index keeps at most; past it the least recently active go
/// (with what was seen of them). What was seen of a group goes when the user leaves it.
pub const MAX_INDEXED: usize = 500;

/// One conversation of a user's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    pub conversation: String,
    /// Unix ms of the user's last activity there (the index only moves it forward); 0 for a
    /// group (the group's log says when it was active).
    pub at: i64,
    /// The highest conversation seq the user sent or acked there (only moves forward; 0: none).
    pub seen: u64,
}

#[async_trait]
pub trait ConversationIndex: Send + Sync + 'static {
    /// Records `notes` in `user`'s index, each moving `at` (direct conversations only) and
    /// `seen` forward only, then drops the least recently active direct conversations beyond
    /// [`MAX_INDEXED`].
    async fn note(&self, user: &str, notes: &[Noted]) -> Result<(), StoreError>;

    /// `user`'s indexed direct conversations, the most recently active first, then the groups
    /// they have seen something of (`at` 0).
    async fn indexed(&self, user: &str) -> Result<Vec<Noted>, StoreError>;

    /// Moves `user`'s read cursor in `conversation` forward to `seq` (never back), among the
    /// conversation's readers and in what the user has seen; returns the cursor.
    async fn mark_read(&self, user: &str, conversation: &str, seq: u64) -> Result<u64, StoreError>;

    /// The read cursors of `users` in `conversation`, in their order (0: none).
    async fn read_cursors(
        &self,
        conversation: &str,
        users: &[String],
    ) -> Result<Vec<u64>, StoreError>;

    /// Records that conversation seq `change` of `conversation` edits, deletes or recalls its
    /// message `target` (the latest change of each target is kept: the highest seq).
    async fn note_change(
        &self,
        conversation: &str,
        target: u64,
        change: u64,
    ) -> Result<(), StoreError>;

    /// The latest change of each of `targets` (0: none), in their order.
    async fn changes(&self, conversation: &str, targets: &[u64]) -> Result<Vec<u64>, StoreError>;

    /// How many of `conversation`'s readers have read up to `seq` or beyond, and `limit` of
    /// them from `offset` on, by cursor then user id.
    async fn readers(
        &self,
        conversation: &str,
        seq: u64,
        offset: usize,
        limit: usize,
    ) -> Result<(u32, Vec<(String, u64)>), StoreError>;
}
