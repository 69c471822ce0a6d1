//! Each user's conversation index in memory, and each conversation's readers (see
//! `crate::store::conversations`).
use async_trait::async_trait;

use super::MemoryStore;
use crate::store::StoreError;
use crate::store::conversations::{ConversationIndex, MAX_INDEXED, Noted};

fn is_direct(conversation: &str) -> bool {
    conversation.starts_with("d:")
}

#[async_trait]
impl ConversationIndex for MemoryStore {
    async fn note(&self, user: &str, notes: &[Noted]) -> Result<(), StoreError> {
        self.with_user(user, |u| {
            for n in notes {
                let (at, seen) = u.conversations.entry(n.conversation.clone()).or_default();
                if is_direct(&n.conversation) {
                    *at = (*at).max(n.at);
                }
                *seen = (*seen).max(n.seen);
            }
            let direct = u.conversations.keys().filter(|c| is_direct(c)).count();
            let over = direct.saturating_sub(MAX_INDEXED);
            if over > 0 {
                let mut by_age: Vec<(i64, String)> = u
                    .conversations
                    .iter()
                    .filter(|(c, _)| is_direct(c))
                    .map(|(c, (at, _))| (*at, c.clone()))
                    .collect();
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
        // Direct ones first, the most recent first, as Redis's sorted set gives them (ties by
        // id, descending); then the groups.
        out.sort_unstable_by(|a, b| {
            let key = |n: &Noted| (is_direct(&n.conversation), n.at, n.conversation.clone());
            key(b).cmp(&key(a))
        });
        Ok(out)
    }

    async fn mark_read(&self, user: &str, conversation: &str, seq: u64) -> Result<u64, StoreError> {
        let cursor = {
            let mut convs = self.conv_shard(conversation);
            let log = convs.entry(conversation.to_string()).or_default();
            let cursor = log.readers.entry(user.to_string()).or_default();
            *cursor = (*cursor).max(seq);
            *cursor
        };
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
        let mut convs = self.conv_shard(conversation);
        let log = convs.entry(conversation.to_string()).or_default();
        let latest = log.changes.entry(target).or_default();
        *latest = (*latest).max(change);
        Ok(())
    }

    async fn changes(&self, conversation: &str, targets: &[u64]) -> Result<Vec<u64>, StoreError> {
        let convs = self.conv_shard(conversation);
        let changes = convs.get(conversation).map(|log| &log.changes);
        let latest = |t: &u64| changes.and_then(|c| c.get(t)).copied().unwrap_or(0);
        Ok(targets.iter().map(latest).collect())
    }

    async fn read_cursors(
        &self,
        conversation: &str,
        users: &[String],
    ) -> Result<Vec<u64>, StoreError> {
        let convs = self.conv_shard(conversation);
        let readers = convs.get(conversation).map(|log| &log.readers);
        let cursor = |u: &String| readers.and_then(|r| r.get(u)).copied().unwrap_or(0);
        Ok(users.iter().map(cursor).collect())
    }

    async fn readers(
        &self,
        conversation: &str,
        seq: u64,
        offset: usize,
        limit: usize,
    ) -> Result<(u32, Vec<(String, u64)>), StoreError> {
        let convs = self.conv_shard(conversation);
        let Some(log) = convs.get(conversation) else {
            return Ok((0, Vec::new()));
        };
        let mut read: Vec<(u64, &String)> =
            log.readers.iter().filter(|(_, s)| **s >= seq).map(|(u, s)| (*s, u)).collect();
        read.sort_unstable();
        let page = read.iter().skip(offset).take(limit).map(|(s, u)| ((*u).clone(), *s));
        Ok((read.len() as u32, page.collect()))
    }
}
