//! Ephemeral signals: typing indicators and read notifications, relayed to the members online
//! and never stored. Who may send one: a member of the conversation (typing on their stream;
//! a read follows their MarkRead). What it costs: a membership read and one relay call per live
//! node, at most once a second per user and conversation for typing (more are dropped); groups
//! beyond the fan-out limit get none (their member list is not read for something this
//! cheap to lose).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::ids::Conversation;
use crate::proto::{self, signal::Kind};

use super::Node;
use super::conversations::Opened;

/// Typing signals relayed at most this often per user and conversation.
pub const TYPING_EVERY: Duration = Duration::from_secs(1);
/// How long a receiver shows a typing signal unless another comes.
const TYPING_SHOWN: Duration = Duration::from_secs(5);
/// (user, conversation) pairs the typing limiter remembers before it forgets the stale ones.
const TRACKED: usize = 100_000;

/// When each (user, conversation) last had a typing signal relayed.
#[derive(Default)]
pub struct TypingLimit(Mutex<HashMap<(String, String), Instant>>);

impl TypingLimit {
    /// Whether a typing signal of `user` in `conversation` may go now (and if so, it is counted).
    fn admit(&self, user: &str, conversation: &str, now: Instant) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= TRACKED {
            map.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        }
        let key = (user.to_string(), conversation.to_string());
        match map.get(&key) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

impl Node {
    /// `user` is typing in `conversation`: tells the other members online, unless `user` did
    /// within [`TYPING_EVERY`]. Not a member: NOT_FOUND (a group) or PERMISSION_DENIED.
    pub async fn typing(&self, user: &str, conversation: &str) -> Result<(), Error> {
        let opened = self.open(user, conversation, "").await?;
        if !self.typing_limit.admit(user, &opened.id, Instant::now()) {
            self.metrics.rate_limited("typing");
            return Ok(());
        }
        let signal = proto::Signal {
            kind: Kind::Typing.into(),
            conversation: opened.id.clone(),
            user_id: user.to_string(),
            conv_seq: 0,
            expires_in_ms: TYPING_SHOWN.as_millis() as u32,
        };
        let mut to = self.members_to_signal(&opened).await?;
        to.retain(|u| u != user);
        self.delivery.signal(to, signal);
        Ok(())
    }

    /// `user` read `opened` up to `seq`: tells the other members online and the user's other
    /// devices.
    pub(super) async fn signal_read(
        &self,
        user: &str,
        opened: &Opened,
        seq: u64,
    ) -> Result<(), Error> {
        let signal = proto::Signal {
            kind: Kind::Read.into(),
            conversation: opened.id.clone(),
            user_id: user.to_string(),
            conv_seq: seq,
            expires_in_ms: 0,
        };
        let to = self.members_to_signal(opened).await?;
        self.delivery.signal(to, signal);
        Ok(())
    }

    /// Everyone of the conversation (none for a group past the fan-out limit).
    async fn members_to_signal(&self, opened: &Opened) -> Result<Vec<String>, Error> {
        match (&opened.group, Conversation::parse(&opened.id)?) {
            (Some(g), _) if g.member_count > self.config.group_fanout_limit => Ok(Vec::new()),
            (Some(_), _) => Ok(self.groups.member_list(&opened.id).await?.1.to_vec()),
            (None, Conversation::Direct(lo, hi)) if lo == hi => Ok(vec![lo]),
            (None, Conversation::Direct(lo, hi)) => Ok(vec![lo, hi]),
            (None, Conversation::Group(_)) => Ok(Vec::new()),
        }
    }
}
