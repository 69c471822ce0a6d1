//! The embedded store: inboxes, cursors, dedup keys and routes in this process's memory.
//!
//! Same semantics as the Redis backend, in one process: each user's state sits behind one of a
//! fixed set of shard locks, so an append is atomic without a global lock. Nothing survives a
//! restart; use `--redis` for that. `routes` is the RouteStore half.
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    AckCheck, Appended, HistoryPage, Inbox, NewMessage, Route, StoreError, StoreOptions,
    StoredMessage,
};
use crate::auth::unix_ms;

mod append;
mod broadcast;
mod groups;
mod index;
mod log;
mod routes;

use append::Taken;
use log::ConvLog;

const SHARDS: usize = 64;
/// Retry keys remembered per inbox in memory.
const DEDUP_MAX: usize = 100_000;
/// The window of the inbox rate (`StoreOptions::inbox_rate`).
const WINDOW: Duration = Duration::from_secs(1);

/// In-memory [`Inbox`] and [`RouteStore`].
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, UserState>>>,
    /// Conversation logs, by conversation id. An append holds its conversation's lock while it
    /// takes the users' (one at a time, never the other way round), so one conversation's
    /// messages reach every inbox in conversation seq order.
    convs: Vec<Mutex<HashMap<String, ConvLog>>>,
    hasher: RandomState,
    opts: StoreOptions,
}

#[derive(Debug, Default)]
struct UserState {
    /// Empty until first asked for.
    epoch: String,
    last_seq: u64,
    /// Stored messages in seq order (a suffix of 1..=last_seq once trimmed).
    messages: VecDeque<StoredMessage>,
    cursors: HashMap<String, u64>,
    /// device → (route, when it lapses).
    routes: HashMap<String, (Route, Instant)>,
    /// device → (tokens issued up to this Unix ms are revoked, until when that is kept).
    revoked: HashMap<String, (i64, Instant)>,
    /// When a stream of the user last ended (Unix ms), and until when that is kept.
    last_seen: Option<(i64, Instant)>,
    /// The inbox rate window: when it started, and new messages taken in it.
    window: Option<(Instant, u32)>,
    /// device → when it was last seen (Hello or ack); at most `max_devices` of them.
    devices: HashMap<String, Instant>,
    /// Conversation → the last conversation seq of a group that reached this inbox (see
    /// `groups`); losing it (a swept user) only drops a gap check.
    conv_cursors: HashMap<String, u64>,
    /// The groups the user was put in (see `broadcast`).
    groups: std::collections::HashSet<String>,
    /// Conversation → (last activity, Unix ms; highest conversation seq seen): the index of
    /// ListConversations (see `index`).
    conversations: HashMap<String, (i64, u64)>,
    /// (device, broadcast group) → the conversation seq the device acked.
    group_cursors: HashMap<(String, String), u64>,
    /// (from, client_msg_id) → seq of the stored copy.
    dedup: HashMap<(String, String), DedupEntry>,
    /// Dedup keys in expiry order, for cheap expiry.
    dedup_expiry: VecDeque<(Instant, (String, String))>,
}

/// What a retry needs to be answered: the first copy's identity, not its body.
#[derive(Debug, Clone)]
struct DedupEntry {
    seq: u64,
    conv_seq: u64,
    msg_id: String,
    sent_at: i64,
    expires: Instant,
}

impl UserState {
    /// Forgets the devices unseen for `ttl`, with their cursors (no longer holding back
    /// trimming).
    fn forget_unseen(&mut self, ttl: Duration, now: Instant) {
        let cursors = &mut self.cursors;
        self.devices.retain(|device, seen| {
            let keep = now.saturating_duration_since(*seen) < ttl;
            if !keep {
                cursors.remove(device);
            }
            keep
        });
    }

    /// Whether the user has a device other than `origin` (for copies of what they sent).
    fn has_other_device(&self, origin: &str) -> bool {
        self.devices.keys().any(|d| d != origin)
    }

    /// `m` appended with the next seq unless the inbox holds `max` already (a device that far
    /// behind pages history instead), with the user's routes.
    fn append_if_room(
        &mut self,
        m: &StoredMessage,
        max: u64,
        now: Instant,
    ) -> Option<(StoredMessage, Vec<(String, Route)>)> {
        if self.messages.len() as u64 >= max {
            return None;
        }
        self.last_seq += 1;
        let copy = StoredMessage { seq: self.last_seq, ..m.clone() };
        self.messages.push_back(copy.clone());
        Some((copy, self.live_routes(now)))
    }

    fn live_routes(&mut self, now: Instant) -> Vec<(String, Route)> {
        self.routes.retain(|_, (_, lapses)| *lapses > now);
        self.routes.iter().map(|(d, (r, _))| (d.clone(), r.clone())).collect()
    }

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
            convs: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            opts,
        }
    }

    /// Runs [`MemoryStore::sweep`] every `every`, forever (the node runs it as one of its
    /// background tasks).
    pub async fn sweep_every(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<String, UserState>> {
        let shard = &self.shards[self.hasher.hash_one(user) as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conv_shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<String, ConvLog>> {
        let shard = &self.convs[self.hasher.hash_one(id) as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on `user`'s state, creating it if needed (writes).
    fn with_user<R>(&self, user: &str, f: impl FnOnce(&mut UserState) -> R) -> R {
        f(self.shard(user).entry(user.to_string()).or_default())
    }

    /// Runs `f` on `user`'s state if it exists (reads of unknown users allocate nothing).
    fn peek<R: Default>(&self, user: &str, f: impl FnOnce(&mut UserState) -> R) -> R {
        self.shard(user).get_mut(user).map(f).unwrap_or_default()
    }

    /// Expires dedup keys, routes and messages past retention everywhere, and forgets users
    /// with nothing left. Appends and acks do this per user; this catches dormant ones.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, u| {
                u.expire(&self.opts, now);
                u.live_routes(now);
                u.revoked.retain(|_, (_, until)| *until > now);
                u.forget_unseen(self.opts.device_ttl, now);
                u.last_seen = u.last_seen.filter(|(_, until)| *until > now);
                // last_seq (and the epoch) must survive while a device's cursor refers to
                // them; once every device is forgotten, a user with nothing left goes, and a
                // returning device finds a new inbox (a new epoch).
                !(u.messages.is_empty()
                    && u.dedup.is_empty()
                    && u.routes.is_empty()
                    && u.revoked.is_empty()
                    && u.last_seen.is_none()
                    && u.devices.is_empty()
                    && u.cursors.is_empty()
                    && u.groups.is_empty()
                    && u.conversations.is_empty())
            });
        }
        for shard in &self.convs {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, log| {
                log.expire(&self.opts);
                !log.is_empty()
            });
        }
    }
}

#[async_trait]
impl Inbox for MemoryStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let now = Instant::now();
        let mut convs = self.conv_shard(&msg.conversation);
        let log = convs.entry(msg.conversation.clone()).or_default();
        log.expire(&self.opts);
        let conv_seq = log.next_seq();
        let stored = self.with_user(&msg.to.clone(), |u| self.take(u, &msg, conv_seq, now))?;
        let (message, routes) = match stored {
            Taken::Duplicate(message, routes) => {
                return Ok(Appended { message, duplicate: true, routes, copy: None });
            }
            Taken::New(message, routes) => (message, routes),
        };
        log.push(StoredMessage { seq: 0, ..message.clone() }, &self.opts);
        drop(convs);
        let copy = if msg.from == msg.to {
            None
        } else {
            self.with_user(&msg.from, |u| self.sender_copy(u, &message, &msg.origin_device, now))
        };
        Ok(Appended { message, duplicate: false, routes, copy })
    }

    async fn history(
        &self,
        conversation: &str,
        page: HistoryPage,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut convs = self.conv_shard(conversation);
        let Some(log) = convs.get_mut(conversation) else { return Ok(Vec::new()) };
        log.expire(&self.opts);
        Ok(log.page(page))
    }

    async fn read(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // Past retention is never returned; what sits at the head is dropped now, as on Redis.
        let cut = unix_ms(SystemTime::now()) - self.opts.retention.as_millis() as i64;
        Ok(self.peek(user, |u| {
            u.expire(&self.opts, Instant::now());
            let Some(first) = u.messages.front().map(|m| m.seq) else {
                return Vec::new();
            };
            let skip = (after + 1).saturating_sub(first) as usize;
            let fresh = |m: &&StoredMessage| m.sent_at >= cut;
            u.messages.iter().skip(skip).filter(fresh).take(limit).cloned().collect()
        }))
    }

    async fn epoch(&self, user: &str) -> Result<String, StoreError> {
        Ok(self.with_user(user, |u| {
            if u.epoch.is_empty() {
                u.epoch = crate::ids::new_id();
            }
            u.epoch.clone()
        }))
    }

    async fn renew_epoch(&self, user: &str) -> Result<String, StoreError> {
        let epoch = crate::ids::new_id();
        self.with_user(user, |u| u.epoch = epoch.clone());
        Ok(epoch)
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.peek(user, |u| u.last_seq))
    }

    async fn enroll(&self, user: &str, device: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        let max = self.opts.max_devices;
        self.with_user(user, |u| {
            u.forget_unseen(self.opts.device_ttl, now);
            if !u.devices.contains_key(device) && u.devices.len() >= max as usize {
                return Err(StoreError::TooManyDevices { max });
            }
            u.devices.insert(device.to_string(), now);
            Ok(())
        })
    }

    async fn forget(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.peek(user, |u| {
            u.devices.remove(device);
            u.cursors.remove(device);
        });
        Ok(())
    }

    async fn ack(
        &self,
        user: &str,
        device: &str,
        up_to: u64,
        check: &AckCheck,
    ) -> Result<u64, StoreError> {
        self.with_user(user, |u| {
            // As ack.lua checks it (an in-memory inbox is lost, never rolled back; the checks
            // keep the two stores alike).
            let current = u.cursors.get(device).copied().unwrap_or(0);
            let enrolled = u.devices.contains_key(device);
            if enrolled && (up_to > u.last_seq || current < check.stored) {
                let seq = if up_to > u.last_seq { up_to } else { check.stored };
                return Err(StoreError::RolledBack { seq });
            }
            let above = |s: &&(u64, String)| enrolled && s.0 > current && s.0 <= up_to;
            for (seq, id) in check.sent.iter().filter(above) {
                let held = u.messages.binary_search_by_key(seq, |m| m.seq).ok();
                if held.and_then(|i| u.messages.get(i)).is_some_and(|m| m.msg_id != *id) {
                    return Err(StoreError::RolledBack { seq: *seq });
                }
            }
            let target = up_to.min(u.last_seq);
            // Not (or no longer) one of the user's devices: nothing is stored.
            let Some(seen) = u.devices.get_mut(device) else { return Ok(target) };
            *seen = Instant::now();
            let cursor = u.cursors.entry(device.to_string()).or_insert(0);
            *cursor = (*cursor).max(target);
            let cursor = *cursor;
            u.expire(&self.opts, Instant::now());
            Ok(cursor)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> NewMessage {
        NewMessage {
            from: "alice".into(),
            origin_device: "default".into(),
            to: "bob".into(),
            conversation: crate::ids::Conversation::direct("alice", "bob").id(),
            client_msg_id: format!("c{n}"),
            body: "x".into(),
            msg_id: format!("m{n}"),
            sent_at: unix_ms(SystemTime::now()),
            event: None,
        }
    }

    #[tokio::test]
    async fn retry_keys_per_inbox_are_bounded_oldest_forgotten_first() {
        let opts = StoreOptions { inbox_max: u64::MAX, ..StoreOptions::default() };
        let store = MemoryStore::new(opts);
        for n in 0..=DEDUP_MAX {
            store.append(message(n)).await.unwrap();
        }
        let kept = store.peek("bob", |u| u.dedup.len());
        assert_eq!(kept, DEDUP_MAX);
        assert!(store.append(message(DEDUP_MAX)).await.unwrap().duplicate, "the newest is kept");
        assert!(!store.append(message(0)).await.unwrap().duplicate, "the oldest was forgotten");
    }
}
