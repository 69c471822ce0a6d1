//! The one owner of this node's live device sessions.
//!
//! Handlers never reach into the map: they register a session (which takes over from an older
//! session of the same user and device), hand it messages, kick or drain it, and remove it when
//! its stream ends.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, watch};

use crate::limit::QueueBudget;
use crate::store::StoredMessage;

/// Why the node ends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A newer session of the same user and device took over.
    Kicked(String),
    /// The node is shutting down; reconnect after this many ms.
    Drain(u32),
    /// The device logged out: its tokens are revoked.
    LoggedOut,
}

/// Where the node is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// Shutting down: new and existing sessions are told to drain.
    Draining,
    /// The drain grace is over: every session ends now.
    Terminated,
}

/// Set when a message could not be queued for a session: the session reads its inbox instead.
#[derive(Debug, Default)]
pub struct Lag {
    lagged: AtomicBool,
    notify: Notify,
}

impl Lag {
    fn mark(&self) {
        self.lagged.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits until the session missed a message; clears the mark.
    pub async fn wait(&self) {
        loop {
            if self.lagged.swap(false, Ordering::AcqRel) {
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// Body bytes queued towards one session before live messages stop being queued (the session
/// reads them from the inbox instead): a session that falls behind costs at most this.
pub const FEED_BYTES: usize = 1024 * 1024;
/// Ephemeral signals queued towards one session; past it they are dropped.
const SIGNALS_QUEUED: usize = 32;

/// What a session task receives from the registry.
#[derive(Debug)]
pub struct Feed {
    /// Live messages for this user, in the order they were stored on this node's path.
    pub messages: Live,
    /// Ephemeral signals (typing, read); a session that does not keep up misses some.
    pub signals: mpsc::Receiver<Arc<crate::proto::Signal>>,
    pub lag: Arc<Lag>,
    pub stop: watch::Receiver<Option<Stop>>,
}

/// Live messages, shared with the user's other sessions: a body is held once, whatever the
/// number of devices, and at most [`FEED_BYTES`] of them wait for one session.
#[derive(Debug)]
pub struct Live {
    rx: mpsc::Receiver<Arc<StoredMessage>>,
    /// Body bytes in `rx`.
    queued: Arc<AtomicUsize>,
    budget: Arc<QueueBudget>,
}

impl Live {
    /// The next live message.
    pub async fn recv(&mut self) -> Option<Arc<StoredMessage>> {
        let msg = self.rx.recv().await?;
        self.queued.fetch_sub(msg.body.len(), Ordering::AcqRel);
        self.budget.give(msg.body.len());
        Some(msg)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // What was never taken goes back to the node's budget.
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            self.budget.give(msg.body.len());
        }
    }
}

#[derive(Debug)]
struct Handle {
    session_id: String,
    messages: mpsc::Sender<Arc<StoredMessage>>,
    signals: mpsc::Sender<Arc<crate::proto::Signal>>,
    queued: Arc<AtomicUsize>,
    budget: Arc<QueueBudget>,
    lag: Arc<Lag>,
    stop: watch::Sender<Option<Stop>>,
}

impl Handle {
    /// Queues `msg` unless the queue is full in messages or in bytes; then the session is
    /// told it lags and reads the inbox.
    fn push(&self, msg: &Arc<StoredMessage>) {
        let size = msg.body.len();
        if self.queued.load(Ordering::Acquire) + size > FEED_BYTES || !self.budget.try_take(size) {
            self.lag.mark();
            return;
        }
        match self.messages.try_send(msg.clone()) {
            Ok(()) => {
                self.queued.fetch_add(size, Ordering::AcqRel);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.budget.give(size);
                self.lag.mark();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.budget.give(size),
        }
    }
}

type Users = HashMap<String, HashMap<String, Handle>>;

/// Live sessions on this node: user → device → session.
#[derive(Debug)]
pub struct Registry {
    users: Mutex<Users>,
    feed_capacity: usize,
    budget: Arc<QueueBudget>,
    phase: watch::Sender<Phase>,
}

impl Registry {
    /// `feed_capacity` bounds the live messages queued per session before it falls back to
    /// reading its inbox, as do [`FEED_BYTES`] and the node's `budget`.
    pub fn new(feed_capacity: usize, budget: Arc<QueueBudget>) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            feed_capacity,
            budget,
            phase: watch::Sender::new(Phase::Serving),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session; an older local session of the same user and device is kicked. While the
    /// node drains, the new session is told to drain at once.
    pub fn register(&self, user: &str, device: &str, session_id: &str) -> Feed {
        let (tx, rx) = mpsc::channel(self.feed_capacity);
        let (stop_tx, stop_rx) = watch::channel(None);
        let (signal_tx, signals) = mpsc::channel(SIGNALS_QUEUED);
        let lag = Arc::new(Lag::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let handle = Handle {
            session_id: session_id.to_string(),
            messages: tx,
            signals: signal_tx,
            queued: queued.clone(),
            budget: self.budget.clone(),
            lag: lag.clone(),
            stop: stop_tx,
        };
        let mut users = self.users();
        if *self.phase.borrow() != Phase::Serving {
            handle.stop.send_replace(Some(Stop::Drain(0)));
        }
        let old = users.entry(user.to_string()).or_default().insert(device.to_string(), handle);
        if let Some(old) = old {
            old.stop.send_replace(Some(Stop::Kicked(super::REPLACED.into())));
        }
        let budget = self.budget.clone();
        Feed { messages: Live { rx, queued, budget }, signals, lag, stop: stop_rx }
    }

    /// Removes a session if it is still the registered one for its device.
    pub fn remove(&self, user: &str, device: &str, session_id: &str) {
        let mut users = self.users();
        if let Some(devices) = users.get_mut(user) {
            if devices.get(device).is_some_and(|h| h.session_id == session_id) {
                devices.remove(device);
            }
            if devices.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Hands messages to every local session of `user`; returns how many sessions got them.
    /// Hands an ephemeral signal to every local session of `users` that has room for it;
    /// returns how many sessions took it.
    pub fn signal(&self, users: &[String], signal: &Arc<crate::proto::Signal>) -> usize {
        let all = self.users();
        let handles = users.iter().filter_map(|u| all.get(u)).flat_map(|d| d.values());
        handles.filter(|h| h.signals.try_send(signal.clone()).is_ok()).count()
    }

    pub fn deliver(&self, user: &str, messages: &[StoredMessage]) -> usize {
        let users = self.users();
        let Some(devices) = users.get(user) else { return 0 };
        for m in messages {
            let m = Arc::new(m.clone());
            for handle in devices.values() {
                handle.push(&m);
            }
        }
        devices.len()
    }

    /// Hands a broadcast group's message to every local session of `members` and of `also`;
    /// returns how many sessions got it. Walks whichever is smaller, the members or the
    /// users here.
    pub fn deliver_to_members(
        &self,
        members: &HashSet<String>,
        also: &[String],
        message: &StoredMessage,
    ) -> usize {
        let users = self.users();
        let m = Arc::new(message.clone());
        let mut sessions = 0;
        let mut hand = |devices: &HashMap<String, Handle>| {
            for handle in devices.values() {
                handle.push(&m);
            }
            sessions += devices.len();
        };
        if members.len() < users.len() {
            members.iter().filter_map(|u| users.get(u)).for_each(&mut hand);
        } else {
            users.iter().filter(|(u, _)| members.contains(*u)).for_each(|(_, d)| hand(d));
        }
        also.iter().filter(|u| !members.contains(*u)).filter_map(|u| users.get(u)).for_each(hand);
        sessions
    }

    /// The node's budget of bytes queued towards clients (outbound queues draw on it too).
    pub fn budget(&self) -> &Arc<QueueBudget> {
        &self.budget
    }

    /// Ends the session of `user`'s `device` (only `session_id`'s, when given).
    pub fn kick(&self, user: &str, device: &str, session_id: Option<&str>, stop: Stop) -> bool {
        let users = self.users();
        let Some(h) = users.get(user).and_then(|d| d.get(device)) else { return false };
        if session_id.is_some_and(|s| s != h.session_id) {
            return false;
        }
        h.stop.send_replace(Some(stop));
        true
    }

    /// Tells every session, and every one that registers from now on, to drain: each sends
    /// `Drain` and ends.
    pub fn drain_all(&self, reconnect_after_ms: impl Fn() -> u32) {
        let users = self.users();
        self.phase.send_replace(Phase::Draining);
        for devices in users.values() {
            for h in devices.values() {
                h.stop.send_replace(Some(Stop::Drain(reconnect_after_ms())));
            }
        }
    }

    /// Ends every session now, drained or not (after the drain grace).
    pub fn terminate(&self) {
        self.phase.send_replace(Phase::Terminated);
    }

    /// Resolves once the node has reached `phase` (or a later one).
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Number of live sessions on this node.
    pub fn len(&self) -> usize {
        self.users().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
