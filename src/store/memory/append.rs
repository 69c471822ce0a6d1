//! The append's two halves on one user's state: the recipient's copy (dedup, the inbox's
//! bounds) and the sender's copy for their other devices; and a group member's copy.
use std::time::Instant;

use super::{DEDUP_MAX, DedupEntry, MemoryStore, UserState, WINDOW};
use crate::store::groups::Delivered;
use crate::store::{NewMessage, Route, SenderCopy, StoreError, StoredMessage};

/// What [`MemoryStore::take`] did with a message.
pub(super) enum Taken {
    /// A retry: the first copy (its seq, id and time, the retry's body) and the routes.
    Duplicate(StoredMessage, Vec<(String, Route)>),
    /// Stored in the recipient's inbox.
    New(StoredMessage, Vec<(String, Route)>),
}

impl MemoryStore {
    /// Dedup, the inbox's bounds, and the recipient's copy of `msg` with `conv_seq`.
    pub(super) fn take(
        &self,
        u: &mut UserState,
        msg: &NewMessage,
        conv_seq: u64,
        now: Instant,
    ) -> Result<Taken, StoreError> {
        u.expire(&self.opts, now);
        let routes = u.live_routes(now);
        let key = (msg.from.clone(), msg.client_msg_id.clone());
        let mut message = StoredMessage {
            seq: 0,
            msg_id: msg.msg_id.clone(),
            from: msg.from.clone(),
            to: msg.to.clone(),
            body: msg.body.clone(),
            sent_at: msg.sent_at,
            conversation: msg.conversation.clone(),
            conv_seq,
            client_msg_id: msg.client_msg_id.clone(),
            event: msg.event.clone(),
        };
        if let Some(e) = u.dedup.get(&key) {
            message.seq = e.seq;
            message.conv_seq = e.conv_seq;
            message.msg_id = e.msg_id.clone();
            message.sent_at = e.sent_at;
            return Ok(Taken::Duplicate(message, routes));
        }
        if u.messages.len() as u64 >= self.opts.inbox_max {
            return Err(StoreError::InboxFull { max: self.opts.inbox_max });
        }
        let rate = self.opts.inbox_rate;
        if rate > 0 {
            let (start, taken) = u.window.filter(|(s, _)| now < *s + WINDOW).unwrap_or((now, 0));
            if taken >= rate {
                let retry_after = (start + WINDOW).saturating_duration_since(now);
                return Err(StoreError::InboxRate { rate, retry_after });
            }
            u.window = Some((start, taken + 1));
        }
        u.last_seq += 1;
        message.seq = u.last_seq;
        let expires = now + self.opts.dedup_ttl;
        let entry = DedupEntry {
            seq: message.seq,
            conv_seq,
            msg_id: message.msg_id.clone(),
            sent_at: message.sent_at,
            expires,
        };
        u.dedup.insert(key.clone(), entry);
        u.dedup_expiry.push_back((expires, key));
        // Bounded per inbox: past the bound the oldest keys are forgotten first (a retry
        // that old would be stored again; Redis keeps them all for the dedup TTL).
        while u.dedup_expiry.len() > DEDUP_MAX {
            if let Some((_, oldest)) = u.dedup_expiry.pop_front() {
                u.dedup.remove(&oldest);
            }
        }
        u.messages.push_back(message.clone());
        Ok(Taken::New(message, routes))
    }

    /// The sender's copy of `message` in their inbox, when they have a device other than
    /// `origin` and room for it.
    pub(super) fn sender_copy(
        &self,
        u: &mut UserState,
        message: &StoredMessage,
        origin: &str,
        now: Instant,
    ) -> Option<SenderCopy> {
        u.forget_unseen(self.opts.device_ttl, now);
        u.expire(&self.opts, now);
        if !u.has_other_device(origin) {
            return None;
        }
        let (message, routes) = u.append_if_room(message, self.opts.inbox_max, now)?;
        Some(SenderCopy { message, routes })
    }
}

impl MemoryStore {
    /// `m` in `user`'s inbox: always for a member who did not send it, for the sender only when
    /// they have another device; never into a full inbox.
    pub(super) fn member_copy(
        &self,
        u: &mut UserState,
        user: &str,
        m: &StoredMessage,
        origin_device: &str,
        now: Instant,
    ) -> Option<Delivered> {
        u.expire(&self.opts, now);
        if m.from == user && !u.has_other_device(origin_device) {
            return None;
        }
        let (message, routes) = u.append_if_room(m, self.opts.inbox_max, now)?;
        Some(Delivered { user: user.to_string(), message, routes })
    }
}
