//! Ack coalescing: a client acks every message, but the device's cursor need not be stored for
//! each. The first ack in a while is stored at once (so a quiet stream's cursor is current); the
//! acks right behind it are merged and stored once, `delay` later, before the next Send (acks
//! sent before a message are stored before it), or when the stream ends.
//!
//! An ack that is never stored only means redelivery after a reconnect, which clients drop by
//! seq; the cursor never moves back.
use std::time::Duration;

use tokio::time::Instant;

/// The ack state of one session. Pure bookkeeping: the session does the store calls.
#[derive(Debug)]
pub struct AckMerge {
    delay: Duration,
    /// The device's cursor as last stored.
    stored: u64,
    /// The newest ack received but not stored yet.
    pending: Option<u64>,
    /// Until when acks are merged rather than stored one by one.
    due: Option<Instant>,
}

impl AckMerge {
    pub fn new(delay: Duration) -> Self {
        Self { delay, stored: 0, pending: None, due: None }
    }

    /// The cursor as last stored.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// The store answered: the cursor is now `cursor`.
    pub fn set_stored(&mut self, cursor: u64) {
        self.stored = self.stored.max(cursor);
    }

    /// An `Ack{up_to}` arrived (already checked against what was delivered). Returns the cursor
    /// to store now if this is the first ack in a while (then call [`Self::open_window`] once
    /// it is stored); later ones wait for [`Self::due`].
    pub fn receive(&mut self, up_to: u64) -> Option<u64> {
        if up_to <= self.stored.max(self.pending.unwrap_or(0)) {
            return None;
        }
        self.pending = Some(up_to);
        if self.due.is_some() {
            return None;
        }
        self.pending.take()
    }

    /// The ack `receive` returned was stored (or failed) at `now`: acks in the next `delay`
    /// are merged. Timed from the store's answer, so a slow store still gets merged acks.
    pub fn open_window(&mut self, now: Instant) {
        self.due = Some(now + self.delay);
    }

    /// When the merged acks are to be stored, if any wait.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The merge window ended: the ack to store now, if any; the next ack is stored at once.
    pub fn expire(&mut self) -> Option<u64> {
        self.due = None;
        self.pending.take()
    }

    /// The ack to store before a Send or at the end of the stream, if any.
    pub fn take(&mut self) -> Option<u64> {
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(50);

    #[test]
    fn the_first_ack_is_stored_at_once_and_a_burst_behind_it_once_when_due() {
        let t0 = Instant::now();
        let mut acks = AckMerge::new(DELAY);
        assert_eq!(acks.receive(1), Some(1));
        acks.set_stored(1);
        // The store answered 30 ms later: the window runs from then.
        acks.open_window(t0 + Duration::from_millis(30));
        for seq in 2..=50 {
            assert_eq!(acks.receive(seq), None, "seq {seq} waits for the window");
        }
        assert_eq!(acks.due(), Some(t0 + Duration::from_millis(30) + DELAY));
        assert_eq!(acks.expire(), Some(50));
        acks.set_stored(50);
        assert_eq!(acks.due(), None);
        // After the window, the next ack is stored at once again.
        assert_eq!(acks.receive(51), Some(51));
    }

    #[test]
    fn old_and_repeated_acks_store_nothing() {
        let mut acks = AckMerge::new(DELAY);
        assert_eq!(acks.receive(5), Some(5));
        acks.set_stored(5);
        acks.open_window(Instant::now());
        assert_eq!(acks.receive(5), None);
        assert_eq!(acks.receive(3), None);
        assert_eq!(acks.receive(7), None);
        assert_eq!(acks.receive(6), None, "behind a pending ack");
        assert_eq!(acks.take(), Some(7), "a Send flushes what is pending");
        assert_eq!(acks.take(), None);
        assert_eq!(acks.expire(), None, "nothing left when the window ends");
    }

    #[test]
    fn the_stored_cursor_never_moves_back() {
        let mut acks = AckMerge::new(DELAY);
        acks.set_stored(9);
        acks.set_stored(4);
        assert_eq!(acks.stored(), 9);
    }
}
