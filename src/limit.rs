//! The node's budget of bytes queued towards clients ([`QueueBudget`]), and the per-user send
//! allowance on one node: a token bucket per sender, shared by every stream and
//! every unary Send of that user here. A cluster enforces it per node: a user whose devices sit
//! on k nodes may send k times the rate (with `--lb consistent-hash` a user's devices share a
//! node). Buckets of users who stopped sending are dropped by [`SendLimits::sweep`].
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Bytes queued towards clients on this node, live feeds and outbound queues together, against
/// one budget: past it, feeds stop queueing (sessions read their inbox instead) and outbound
/// queues take no more than one frame each, so the clients that do not read are the ones whose
/// queues stay full and are cut off.
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicUsize,
    max: usize,
}

impl QueueBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), max })
    }

    /// Takes `n` bytes if they fit.
    pub fn try_take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + n > self.max {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Takes `n` bytes whether or not they fit (one frame per queue always goes).
    pub fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives `n` bytes back.
    pub fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The allowance of every sender on this node.
#[derive(Debug)]
pub struct SendLimits {
    rate: u32,
    burst: u32,
    shards: Vec<Mutex<HashMap<String, TokenBucket>>>,
    hasher: RandomState,
}

impl SendLimits {
    /// `rate` sends per second per user, `burst` at once; rate 0 = unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { rate, burst: burst.max(1), shards, hasher: RandomState::new() }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<String, TokenBucket>> {
        let shard = &self.shards[self.hasher.hash_one(user) as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one send from `user`'s allowance; if none is left, how long until one is back.
    pub fn take(&self, user: &str, now: Instant) -> Result<(), Duration> {
        self.take_n(user, 1, now)
    }

    /// Takes `n` sends at once (a call that costs as much; at most a burst), or none.
    pub fn take_n(&self, user: &str, n: u32, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let mut shard = self.shard(user);
        let bucket = match shard.get_mut(user) {
            Some(b) => b,
            None => shard.entry(user.to_string()).or_insert(TokenBucket::full(self.burst, now)),
        };
        bucket.take(f64::from(n.clamp(1, self.burst)), self.rate, self.burst, now)
    }

    /// Drops the buckets that are full again at `now` (their users stopped sending): what is
    /// kept is bounded by the users who sent within the last `burst / rate` seconds.
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, b| !b.is_full(self.rate, self.burst, now));
        }
    }

    /// Senders with a bucket now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

/// Tokens refilled at `rate` per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst), at: now }
    }

    fn refill(&mut self, rate: u32, burst: u32, now: Instant) {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + since * f64::from(rate)).min(f64::from(burst));
        self.at = now;
    }

    fn take(&mut self, n: f64, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        Err(Duration::from_secs_f64((n - self.tokens) / f64::from(rate)))
    }

    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, burst, now);
        b.tokens >= f64::from(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_user_with_the_wait_until_the_next() {
        let t0 = Instant::now();
        let limits = SendLimits::new(10, 3);
        for _ in 0..3 {
            assert!(limits.take("alice", t0).is_ok());
        }
        let wait = limits.take("alice", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(limits.take("bob", t0).is_ok(), "bob has his own allowance");
        assert!(limits.take("alice", t0 + Duration::from_millis(100)).is_ok());
        assert!(limits.take("alice", t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_costly_call_takes_several_at_once_or_none_and_never_more_than_a_burst() {
        let t0 = Instant::now();
        let limits = SendLimits::new(10, 5);
        assert!(limits.take_n("alice", 3, t0).is_ok());
        assert_eq!(limits.take_n("alice", 3, t0).unwrap_err(), Duration::from_millis(100));
        assert!(limits.take_n("alice", 2, t0).is_ok(), "the refused call took nothing");
        let t1 = t0 + Duration::from_secs(1);
        assert!(limits.take_n("alice", 1000, t1).is_ok(), "capped at the burst: never unpayable");
        assert!(limits.take("alice", t1).is_err());
    }

    #[test]
    fn idle_senders_are_forgotten() {
        let t0 = Instant::now();
        let limits = SendLimits::new(10, 5);
        limits.take("alice", t0).unwrap();
        limits.take("bob", t0).unwrap();
        limits.sweep(t0 + Duration::from_millis(50));
        assert_eq!(limits.tracked(), 2, "not refilled yet");
        limits.take("bob", t0 + Duration::from_millis(90)).unwrap();
        limits.sweep(t0 + Duration::from_millis(150));
        assert_eq!(limits.tracked(), 1, "alice is full again; bob is not");
    }

    #[test]
    fn the_queue_budget_takes_what_fits_and_gets_it_back() {
        let budget = QueueBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(50));
        budget.take(50);
        assert_eq!(budget.used(), 110);
        budget.give(60);
        assert!(budget.try_take(40));
        assert_eq!(budget.used(), 90);
    }

    #[test]
    fn rate_zero_is_unlimited_and_keeps_nothing() {
        let t0 = Instant::now();
        let limits = SendLimits::new(0, 1);
        for _ in 0..10_000 {
            assert!(limits.take("alice", t0).is_ok());
        }
        assert_eq!(limits.tracked(), 0);
    }
}
