//! One conversation's log in memory: its messages in conversation seq order, kept for the
//! history retention and at most `history_max` of them.
use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime};

use super::groups::GroupState;
use crate::auth::unix_ms;
use crate::store::{HistoryPage, StoreOptions, StoredMessage};

/// Retry keys a group's log remembers at most; past it the oldest are forgotten first.
const RETRIES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct ConvLog {
    /// The last conversation seq given out (kept while the log has messages).
    last: u64,
    messages: VecDeque<StoredMessage>,
    /// A group's state, for a group's conversation.
    pub(super) group: Option<GroupState>,
    /// Each reader's cursor: user → the conversation seq they have read up to.
    pub(super) readers: HashMap<String, u64>,
    /// Conversation seq → that of its latest edit, delete or recall.
    pub(super) changes: HashMap<u64, u64>,
    /// Group messages by (sender, client_msg_id): (conv_seq, msg_id, sent_at, until).
    retries: HashMap<(String, String), (u64, String, i64, Instant)>,
    retry_order: VecDeque<(String, String)>,
}

impl ConvLog {
    /// The seq the next message will get.
    pub(super) fn next_seq(&self) -> u64 {
        self.last + 1
    }

    /// Appends the message with the next seq, dropping the oldest past `history_max`.
    pub(super) fn push(&mut self, message: StoredMessage, opts: &StoreOptions) {
        self.last = message.conv_seq;
        self.messages.push_back(message);
        while self.messages.len() as u64 > opts.history_max {
            self.messages.pop_front();
        }
    }

    /// Drops messages past the history retention.
    pub(super) fn expire(&mut self, opts: &StoreOptions) {
        let cut = unix_ms(SystemTime::now()) - opts.history_retention.as_millis() as i64;
        while self.messages.front().is_some_and(|m| m.sent_at < cut) {
            self.messages.pop_front();
        }
    }

    /// Nothing left: a conversation that went quiet past the retention starts again (a group
    /// never goes).
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.group.is_none()
    }

    /// The first copy's (conv_seq, msg_id, sent_at) of a group message sent before.
    pub(super) fn retried(
        &self,
        from: &str,
        client_msg_id: &str,
        now: Instant,
    ) -> Option<(u64, String, i64)> {
        let key = (from.to_string(), client_msg_id.to_string());
        let (seq, id, at, until) = self.retries.get(&key)?;
        (*until > now).then(|| (*seq, id.clone(), *at))
    }

    /// Remembers a group message for its retries until `until`.
    pub(super) fn remember(&mut self, m: &StoredMessage, until: Instant) {
        let key = (m.from.clone(), m.client_msg_id.clone());
        self.retries.insert(key.clone(), (m.conv_seq, m.msg_id.clone(), m.sent_at, until));
        self.retry_order.push_back(key);
        while self.retry_order.len() > RETRIES_MAX {
            if let Some(old) = self.retry_order.pop_front() {
                self.retries.remove(&old);
            }
        }
    }

    /// The logged messages with conversation seqs in (after, before).
    pub(super) fn between(&self, after: u64, before: u64) -> Vec<StoredMessage> {
        self.messages
            .iter()
            .filter(|m| m.conv_seq > after && m.conv_seq < before)
            .cloned()
            .collect()
    }

    pub(super) fn page(&self, page: HistoryPage) -> Vec<StoredMessage> {
        let first = self.messages.front().map_or(self.last + 1, |m| m.conv_seq);
        let index = |seq: u64| seq.saturating_sub(first).min(self.messages.len() as u64) as usize;
        let (from, to) = if page.after > 0 {
            let from = index(page.after + 1);
            (from, (from + page.limit).min(self.messages.len()))
        } else {
            let to = if page.before == 0 { self.messages.len() } else { index(page.before) };
            (to.saturating_sub(page.limit), to)
        };
        self.messages.range(from..to).cloned().collect()
    }
}
