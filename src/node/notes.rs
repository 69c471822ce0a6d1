//! What a node learns of its users' conversations (a send, an ack), gathered in memory and
//! written to their indexes ([`ConversationIndex`]) once a second: one script per active user
//! per second rather than one per message. A node that dies loses at most the last second of
//! it: an index entry that a later message writes again, and an unread count that the next ack
//! corrects. Nothing a message's delivery depends on is here.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::store::conversations::{ConversationIndex, Noted};

/// How often gathered notes are written.
pub const NOTE_EVERY: Duration = Duration::from_secs(1);
/// Users' notes written at once.
const WRITES_IN_FLIGHT: usize = 64;
/// Conversation notes a node holds at most between writes; past it new ones are dropped (and
/// said so): the index is a convenience, never a reason to grow without bound.
const MAX_PENDING: usize = 200_000;

/// Notes not written yet: user → conversation → (activity, seen).
type Pending = HashMap<String, HashMap<String, (i64, u64)>>;

pub struct Notes {
    index: Arc<dyn ConversationIndex>,
    pending: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    notes: Pending,
    /// Conversation notes in `notes`.
    count: usize,
    /// New notes refused since the last write for want of room.
    dropped: usize,
}

impl Notes {
    pub fn new(index: Arc<dyn ConversationIndex>) -> Self {
        Self { index, pending: Mutex::new(Gathered::default()) }
    }

    pub fn index(&self) -> &dyn ConversationIndex {
        self.index.as_ref()
    }

    /// `user` was active in `conversation` at `at` (Unix ms) and has seen it up to `seen`.
    pub fn note(&self, user: &str, conversation: &str, at: i64, seen: u64) {
        let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let g = &mut *guard;
        let convs = match g.notes.get_mut(user) {
            Some(c) => c,
            None => g.notes.entry(user.to_string()).or_default(),
        };
        match convs.get_mut(conversation) {
            Some((a, s)) => {
                *a = (*a).max(at);
                *s = (*s).max(seen);
            }
            None if g.count >= MAX_PENDING => g.dropped += 1,
            None => {
                convs.insert(conversation.to_string(), (at, seen));
                g.count += 1;
            }
        }
    }

    /// Writes what was gathered; a user whose write failed is dropped (see the module).
    pub async fn flush(&self) {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.dropped > 0 {
            warn!(
                dropped = taken.dropped,
                "conversation notes dropped: more came in a second than a node holds"
            );
        }
        let taken = taken.notes;
        let users: Vec<(String, Vec<Noted>)> = taken
            .into_iter()
            .map(|(user, convs)| {
                let notes = convs.into_iter().map(|(conversation, (at, seen))| Noted {
                    conversation,
                    at,
                    seen,
                });
                (user, notes.collect())
            })
            .collect();
        for wave in users.chunks(WRITES_IN_FLIGHT) {
            let writes = wave.iter().map(|(user, notes)| self.index.note(user, notes));
            let results = futures_util::future::join_all(writes).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                warn!(users = failed, error = %e, "could not update conversation indexes");
            }
        }
    }

    /// Flushes every [`NOTE_EVERY`], forever (one of the node's tasks).
    pub async fn flush_every(&self) {
        let mut tick = tokio::time::interval(NOTE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }
}
