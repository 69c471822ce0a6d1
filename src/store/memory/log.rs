//! One conversation's log in memory: its messages in conversation seq order, kept for the
//! history retention and at most `history_max` of them.
use std::collections::VecDeque;
use std::time::SystemTime;

use crate::auth::unix_ms;
use crate::store::{HistoryPage, StoreOptions, StoredMessage};

#[derive(Debug, Default)]
pub(super) struct ConvLog {
    /// The last conversation seq given out (kept while the log has messages).
    last: u64,
    messages: VecDeque<StoredMessage>,
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

    /// Nothing left: a conversation that went quiet past the retention starts again.
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
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
