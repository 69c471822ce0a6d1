//! Each user's conversation index in Redis, in the user's slot: `<p>:uconv:{uid}` (sorted set:
//! conversation → last activity, Unix ms) and `<p>:useen:{uid}` (hash: conversation → highest
//! conversation seq sent or acked). Both are written by `note.lua`, at most
//! [`MAX_INDEXED`] conversations, and expire with the user's other keys.
use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::RedisStore;
use crate::store::StoreError;
use crate::store::conversations::{ConversationIndex, MAX_INDEXED, Noted};

static NOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("note.lua")));

#[async_trait]
impl ConversationIndex for RedisStore {
    async fn note(&self, user: &str, notes: &[Noted]) -> Result<(), StoreError> {
        if notes.is_empty() {
            return Ok(());
        }
        let mut call = NOTE.key(self.key("uconv", user));
        call.key(self.key("useen", user)).arg(MAX_INDEXED).arg(self.keep_ms());
        for n in notes {
            call.arg(&n.conversation).arg(n.at).arg(n.seen);
        }
        let _: i64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn indexed(&self, user: &str) -> Result<Vec<Noted>, StoreError> {
        // One slot, one atomic pipeline: the index and what was seen agree.
        let (index, seen): (Vec<(String, f64)>, HashMap<String, u64>) = redis::pipe()
            .atomic()
            .zrevrange_withscores(self.key("uconv", user), 0, -1)
            .hgetall(self.key("useen", user))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(index
            .into_iter()
            .map(|(conversation, at)| {
                let seen = seen.get(&conversation).copied().unwrap_or(0);
                Noted { conversation, at: at as i64, seen }
            })
            .collect())
    }
}
