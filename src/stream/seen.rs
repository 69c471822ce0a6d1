//! Which conversations a device's acks reach: the inbox seqs pushed on this stream with their
//! conversation and conversation seq, so an `Ack{up_to}` tells the node's conversation notes
//! ([`crate::node::Notes`]) how far the user has seen each conversation (their unread count).
use std::collections::VecDeque;

use crate::store::StoredMessage;

/// Pushes remembered per stream. Older ones are forgotten: a later push of the same
/// conversation, once acked, says as much (what was seen only moves forward).
const KEPT: usize = 1024;

/// Pushed and not yet acked: (seq, conversation, conversation seq, sent at).
#[derive(Debug, Default)]
pub(super) struct Pushed(VecDeque<(u64, String, u64, i64)>);

impl Pushed {
    pub(super) fn push(&mut self, m: &StoredMessage) {
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        self.0.push_back((m.seq, m.conversation.clone(), m.conv_seq, m.sent_at));
    }

    /// The device acked up to `up_to`: (conversation, sent at, conversation seq) of each
    /// acked push, oldest first.
    pub(super) fn acked(&mut self, up_to: u64) -> impl Iterator<Item = (String, i64, u64)> + '_ {
        let n = self.0.iter().take_while(|(seq, ..)| *seq <= up_to).count();
        self.0.drain(..n).map(|(_, conv, conv_seq, at)| (conv, at, conv_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, conversation: &str, conv_seq: u64) -> StoredMessage {
        let conversation = conversation.to_string();
        StoredMessage { seq, conversation, conv_seq, sent_at: seq as i64, ..Default::default() }
    }

    #[test]
    fn an_ack_reports_each_push_it_covers_once_and_a_full_memory_forgets_the_oldest() {
        let mut pushed = Pushed::default();
        pushed.push(&message(1, "a", 7));
        pushed.push(&message(2, "b", 3));
        pushed.push(&message(3, "a", 8));
        let got: Vec<_> = pushed.acked(2).collect();
        assert_eq!(got, vec![("a".to_string(), 1, 7), ("b".to_string(), 2, 3)]);
        assert_eq!(pushed.acked(2).count(), 0, "reported once");
        assert_eq!(pushed.acked(9).collect::<Vec<_>>(), vec![("a".to_string(), 3, 8)]);
        for seq in 10..10 + KEPT as u64 + 5 {
            pushed.push(&message(seq, "c", seq));
        }
        let first = pushed.acked(u64::MAX).next().expect("kept");
        assert_eq!(first.2, 15, "the five oldest were forgotten");
    }
}
