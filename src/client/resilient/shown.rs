//! The messages lately handed to the application, so that none is handed over twice when the
//! store gave it again under another seq: after a rollback (a Redis failover to a replica that
//! lagged, a restore) the server replays from an older cursor, and a send whose ack was lost
//! with the primary is stored again by its sender's retry. Both carry what identifies the
//! message: its `msg_id`, and its sender with the sender's `client_msg_id`.
use std::collections::{BTreeSet, HashSet, VecDeque};

use crate::proto;

/// The last `capacity` messages shown, by both of their identities; and the seqs of messages
/// not handed over again (shown already), each acked with the ones before it.
#[derive(Debug)]
pub(super) struct Shown {
    keys: HashSet<String>,
    order: VecDeque<[Option<String>; 2]>,
    capacity: usize,
    skipped: BTreeSet<u64>,
}

impl Shown {
    pub(super) fn new(capacity: usize) -> Self {
        Shown { keys: HashSet::new(), order: VecDeque::new(), capacity, skipped: BTreeSet::new() }
    }

    /// Message `seq` was not handed over (shown already).
    pub(super) fn skip(&mut self, seq: u64) {
        self.skipped.insert(seq);
    }

    /// The application acked up to `acked`: the ack, moved over the skipped seqs right above it.
    pub(super) fn acked_through(&mut self, mut acked: u64) -> u64 {
        while self.skipped.remove(&(acked + 1)) {
            acked += 1;
        }
        self.skipped = self.skipped.split_off(&(acked + 1));
        acked
    }

    /// The inbox's seqs started again: the skipped ones meant other messages.
    pub(super) fn new_epoch(&mut self) {
        self.skipped.clear();
    }

    fn identities(m: &proto::Message) -> [Option<String>; 2] {
        let id = (!m.msg_id.is_empty()).then(|| format!("id\0{}", m.msg_id));
        let client =
            (!m.client_msg_id.is_empty()).then(|| format!("c\0{}\0{}", m.from, m.client_msg_id));
        [id, client]
    }

    /// Whether `m` was shown already; if not, it is now.
    pub(super) fn seen_before(&mut self, m: &proto::Message) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let keys = Self::identities(m);
        if keys.iter().flatten().any(|k| self.keys.contains(k)) {
            return true;
        }
        for k in keys.iter().flatten() {
            self.keys.insert(k.clone());
        }
        self.order.push_back(keys);
        while self.order.len() > self.capacity {
            for k in self.order.pop_front().into_iter().flatten().flatten() {
                self.keys.remove(&k);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, msg_id: &str, from: &str, client_msg_id: &str) -> proto::Message {
        proto::Message {
            seq,
            msg_id: msg_id.into(),
            from: from.into(),
            client_msg_id: client_msg_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_message_given_again_under_another_seq_or_id_is_seen() {
        let mut shown = Shown::new(2);
        assert!(!shown.seen_before(&msg(4, "m4", "alice", "c1")));
        assert!(shown.seen_before(&msg(2, "m4", "alice", "c1")), "replayed from an older cursor");
        assert!(shown.seen_before(&msg(5, "m9", "alice", "c1")), "stored again by a retry");
        assert!(!shown.seen_before(&msg(5, "m9", "bob", "c1")), "another sender's key");
        assert!(!shown.seen_before(&msg(6, "m10", "", "")));
        assert!(!shown.seen_before(&msg(4, "m4", "alice", "c1")), "forgotten past capacity");
    }

    #[test]
    fn a_skipped_seq_is_acked_with_the_ones_before_it() {
        let mut shown = Shown::new(8);
        shown.skip(5);
        shown.skip(6);
        shown.skip(9);
        assert_eq!(shown.acked_through(3), 3, "4 not acked yet");
        assert_eq!(shown.acked_through(4), 6);
        assert_eq!(shown.acked_through(8), 9);
        shown.skip(11);
        shown.new_epoch();
        assert_eq!(shown.acked_through(10), 10);
    }
}
