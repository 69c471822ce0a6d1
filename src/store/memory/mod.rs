//! The embedded store: inboxes, cursors, dedup keys and routes in this process's memory.
//!
//! Same semantics as the Redis backend, in one process: each user's state sits behind one of a
//! fixed set of shard locks, so an append is atomic without a global lock. Nothing survives a
//! restart; use `--redis` for that.
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    Appended, Inbox, NewMessage, Route, RouteStore, StoreError, StoreOptions, StoredMessage,
};
use crate::auth::unix_ms;

const SHARDS: usize = 64;

/// In-memory [`Inbox`] and [`RouteStore`].
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, UserState>>>,
    hasher: RandomState,
    opts: StoreOptions,
}

#[derive(Debug, Default)]
struct UserState {
    last_seq: u64,
    /// Stored messages in seq order (a suffix of 1..=last_seq once trimmed).
    messages: VecDeque<StoredMessage>,
    cursors: HashMap<String, u64>,
    routes: HashMap<String, Route>,
    /// (from, client_msg_id) → seq of the stored copy.
    dedup: HashMap<(String, String), DedupEntry>,
    /// Dedup keys in expiry order, for cheap expiry.
    dedup_expiry: VecDeque<(Instant, (String, String))>,
}

#[derive(Debug, Clone)]
struct DedupEntry {
    message: StoredMessage,
    expires: Instant,
}

impl UserState {
    fn expire(&mut self, opts: &StoreOptions, now: Instant) {
        while let Some((at, _)) = self.dedup_expiry.front() {
            if *at > now {
                break;
            }
            let (_, key) = self.dedup_expiry.pop_front().expect("front exists");
            if self.dedup.get(&key).is_some_and(|e| e.expires <= now) {
                self.dedup.remove(&key);
            }
        }
        let oldest_kept = unix_ms(SystemTime::now()) - opts.retention.as_millis() as i64;
        let acked_by_all = self.cursors.values().copied().min().unwrap_or(0);
        while let Some(m) = self.messages.front() {
            if m.seq <= acked_by_all || m.sent_at < oldest_kept {
                self.messages.pop_front();
            } else {
                break;
            }
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(StoreOptions::default())
    }
}

impl MemoryStore {
    pub fn new(opts: StoreOptions) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            opts,
        }
    }

    fn with_user<R>(&self, user: &str, f: impl FnOnce(&mut UserState) -> R) -> R {
        let shard = &self.shards[self.hasher.hash_one(user) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(user.to_string()).or_default())
    }
}

#[async_trait]
impl Inbox for MemoryStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let now = Instant::now();
        let dedup_ttl: Duration = self.opts.dedup_ttl;
        Ok(self.with_user(&msg.to.clone(), |u| {
            u.expire(&self.opts, now);
            let routes = u
                .routes
                .iter()
                .map(|(d, r)| (d.clone(), r.clone()))
                .collect();
            let key = (msg.from.clone(), msg.client_msg_id.clone());
            if let Some(entry) = u.dedup.get(&key) {
                return Appended {
                    message: entry.message.clone(),
                    duplicate: true,
                    routes,
                };
            }
            u.last_seq += 1;
            let stored = StoredMessage {
                seq: u.last_seq,
                msg_id: msg.msg_id,
                from: msg.from,
                to: msg.to,
                body: msg.body,
                sent_at: msg.sent_at,
            };
            let expires = now + dedup_ttl;
            u.dedup.insert(
                key.clone(),
                DedupEntry {
                    message: stored.clone(),
                    expires,
                },
            );
            u.dedup_expiry.push_back((expires, key));
            u.messages.push_back(stored.clone());
            Appended {
                message: stored,
                duplicate: false,
                routes,
            }
        }))
    }

    async fn read(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.with_user(user, |u| {
            let Some(first) = u.messages.front().map(|m| m.seq) else {
                return Vec::new();
            };
            let skip = (after + 1).saturating_sub(first) as usize;
            u.messages.iter().skip(skip).take(limit).cloned().collect()
        }))
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.with_user(user, |u| u.last_seq))
    }

    async fn ack(&self, user: &str, device: &str, up_to: u64) -> Result<u64, StoreError> {
        Ok(self.with_user(user, |u| {
            let target = up_to.min(u.last_seq);
            let cursor = u.cursors.entry(device.to_string()).or_insert(0);
            *cursor = (*cursor).max(target);
            let cursor = *cursor;
            u.expire(&self.opts, Instant::now());
            cursor
        }))
    }
}

#[async_trait]
impl RouteStore for MemoryStore {
    async fn put(&self, user: &str, device: &str, route: &Route) -> Result<(), StoreError> {
        self.with_user(user, |u| u.routes.insert(device.to_string(), route.clone()));
        Ok(())
    }

    async fn remove_if(
        &self,
        user: &str,
        device: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.with_user(user, |u| {
            if u.routes
                .get(device)
                .is_some_and(|r| r.session_id == session_id)
            {
                u.routes.remove(device);
                true
            } else {
                false
            }
        }))
    }

    async fn get(&self, user: &str) -> Result<Vec<(String, Route)>, StoreError> {
        Ok(self.with_user(user, |u| {
            u.routes
                .iter()
                .map(|(d, r)| (d.clone(), r.clone()))
                .collect()
        }))
    }
}
