//! Each user's index of their conversations, for ListConversations: when they last took part in
//! each (sent, received, acked) and the highest conversation seq they have seen there (sent or
//! acked by one of their devices). Groups are also found from [`super::groups::Groups::user_groups`];
//! the last message and the unread count are read from the conversations' logs.
use async_trait::async_trait;

use super::StoreError;

/// Conversations one user's index keeps at most; past it the least recently active go (with
/// what was seen of them).
pub const MAX_INDEXED: usize = 500;

/// One conversation of a user's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    pub conversation: String,
    /// Unix ms of the user's last activity there (the index only moves it forward).
    pub at: i64,
    /// The highest conversation seq the user sent or acked there (only moves forward; 0: none).
    pub seen: u64,
}

#[async_trait]
pub trait ConversationIndex: Send + Sync + 'static {
    /// Records `notes` in `user`'s index, each moving `at` and `seen` forward only, then drops
    /// the least recently active beyond [`MAX_INDEXED`].
    async fn note(&self, user: &str, notes: &[Noted]) -> Result<(), StoreError>;

    /// `user`'s indexed conversations, the most recently active first.
    async fn indexed(&self, user: &str) -> Result<Vec<Noted>, StoreError>;
}
