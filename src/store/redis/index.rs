//! Each user's conversation index in Redis, in the user's slot: `<p>:uconv:{uid}` (sorted set:
//! direct conversation → last activity, Unix ms; at most [`MAX_INDEXED`]) and `<p>:useen:{uid}`
//! (hash: conversation → highest conversation seq sent or read), written by `note.lua`, expiring
//! with the user's other keys. Each conversation's readers, in its slot: `<p>:readers:{conv}`
//! (sorted set: user → conversation seq read up to; `read.lua`) and `<p>:changes:{conv}` (hash:
//! conversation seq → that of its latest edit, delete or recall), kept as long as its history.
use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::RedisStore;
use crate::store::StoreError;
use crate::store::conversations::{ConversationIndex, MAX_INDEXED, Noted};

static NOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("note.lua")));
static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("read.lua")));

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
        let mut out: Vec<Noted> = index
            .into_iter()
            .map(|(conversation, at)| {
                let seen = seen.get(&conversation).copied().unwrap_or(0);
                Noted { conversation, at: at as i64, seen }
            })
            .collect();
        let groups = seen.into_iter().filter(|(c, _)| !c.starts_with("d:"));
        out.extend(groups.map(|(conversation, seen)| Noted { conversation, at: 0, seen }));
        Ok(out)
    }

    async fn mark_read(&self, user: &str, conversation: &str, seq: u64) -> Result<u64, StoreError> {
        // Two slots: the readers first, then what the user has seen; each only moves forward,
        // so a retry after a failure between them completes both.
        let cursor: u64 = READ
            .key(self.key("readers", conversation))
            .arg(user)
            .arg(seq)
            .arg(self.index_keep_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        let seen = Noted { conversation: conversation.to_string(), at: 0, seen: cursor };
        self.note(user, &[seen]).await?;
        Ok(cursor)
    }

    async fn note_change(
        &self,
        conversation: &str,
        target: u64,
        change: u64,
    ) -> Result<(), StoreError> {
        // gcur.lua: a hash of fields moved forward only, with a lifetime (the history's).
        let _: i64 = self
            .groups
            .cursors
            .key(self.key("changes", conversation))
            .arg(self.index_keep_ms())
            .arg(target)
            .arg(change)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn changes(&self, conversation: &str, targets: &[u64]) -> Result<Vec<u64>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.key("changes", conversation))
            .arg(targets)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn read_cursors(
        &self,
        conversation: &str,
        users: &[String],
    ) -> Result<Vec<u64>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(self.key("readers", conversation))
            .arg(users)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(scores.into_iter().map(|s| s.unwrap_or(0.0) as u64).collect())
    }

    async fn readers(
        &self,
        conversation: &str,
        seq: u64,
        offset: usize,
        limit: usize,
    ) -> Result<(u32, Vec<(String, u64)>), StoreError> {
        let key = self.key("readers", conversation);
        let (count, page): (u32, Vec<(String, f64)>) = redis::pipe()
            .atomic()
            .zcount(&key, seq, "+inf")
            .cmd("ZRANGE")
            .arg(&key)
            .arg(seq)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((count, page.into_iter().map(|(u, s)| (u, s as u64)).collect()))
    }
}

impl RedisStore {
    /// How long (ms) a conversation's read cursors and change index live unrenewed: the
    /// history's retention and a day, so they outlast every message they speak of.
    fn index_keep_ms(&self) -> u64 {
        (self.opts.history_retention + std::time::Duration::from_secs(86_400)).as_millis() as u64
    }
}
