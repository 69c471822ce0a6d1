//! Each user's conversation index in memory (see `crate::store::conversations`).
use async_trait::async_trait;

use super::MemoryStore;
use crate::store::StoreError;
use crate::store::conversations::{ConversationIndex, MAX_INDEXED, Noted};

#[async_trait]
impl ConversationIndex for MemoryStore {
    async fn note(&self, user: &str, notes: &[Noted]) -> Result<(), StoreError> {
        self.with_user(user, |u| {
            for n in notes {
                let (at, seen) = u.conversations.entry(n.conversation.clone()).or_default();
                *at = (*at).max(n.at);
                *seen = (*seen).max(n.seen);
            }
            let over = u.conversations.len().saturating_sub(MAX_INDEXED);
            if over > 0 {
                let mut by_age: Vec<(i64, String)> =
                    u.conversations.iter().map(|(c, (at, _))| (*at, c.clone())).collect();
                by_age.sort_unstable();
                for (_, c) in by_age.into_iter().take(over) {
                    u.conversations.remove(&c);
                }
            }
        });
        Ok(())
    }

    async fn indexed(&self, user: &str) -> Result<Vec<Noted>, StoreError> {
        let mut out: Vec<Noted> = self.peek(user, |u| {
            let all = u.conversations.iter();
            all.map(|(c, (at, seen))| Noted { conversation: c.clone(), at: *at, seen: *seen })
                .collect()
        });
        // The most recent first, as Redis's sorted set gives them (ties by id, descending).
        out.sort_unstable_by(|a, b| (b.at, &b.conversation).cmp(&(a.at, &a.conversation)));
        Ok(out)
    }
}
