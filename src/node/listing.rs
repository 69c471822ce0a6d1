//! ListConversations: a user's conversations, the most recently active first, each with its
//! last message, unread count and read cursors. The direct ones come from the user's index (`notes`), the
//! groups from the groups they were put in; each one's last message is read from its log.
use std::collections::HashMap;

use futures_util::future::join_all;

use crate::error::Error;
use crate::ids::Conversation;
use crate::proto::{self, conversation_summary::Kind};
use crate::store::{HistoryPage, StoredMessage};

use super::Node;

/// Most conversations one page holds.
pub const MAX_CONVERSATIONS_PAGE: usize = 100;
/// A page without a limit holds this many.
const DEFAULT_CONVERSATIONS_PAGE: usize = 50;
/// Conversations one call considers at most: the indexed ones first, then groups.
const MAX_CONSIDERED: usize = 1000;
/// Conversations one send allowance pays for.
const PER_ALLOWANCE: usize = 100;
/// Logs read at once.
const READS_IN_FLIGHT: usize = 64;

/// By conversation id: (last active, read up to) from the user's index.
type Seen = HashMap<String, (i64, u64)>;

/// A user's unread messages, added over their conversations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread {
    pub total: u64,
    /// Conversations with at least one unread message.
    pub conversations: u32,
}

/// One of the caller's conversations while the page is made.
struct Row {
    id: String,
    last_active: i64,
    unread: u64,
    last: Option<StoredMessage>,
}

impl Node {
    /// A page of `caller`'s conversations (at most [`MAX_CONVERSATIONS_PAGE`]), most recently
    /// active first, and their unread counts added up over all of them. Costs one send
    /// allowance per [`PER_ALLOWANCE`] conversations considered.
    pub async fn list_conversations(
        &self,
        caller: &str,
        req: proto::ListConversationsRequest,
    ) -> Result<proto::ListConversationsResponse, Error> {
        let after = parse_token(&req.page_token)?;
        let limit = match req.limit {
            0 => DEFAULT_CONVERSATIONS_PAGE,
            n => (n as usize).min(MAX_CONVERSATIONS_PAGE),
        };
        self.take_allowance(caller, "retry later")?;
        let (ids, seen) = self.considered(caller).await?;
        let extra = ids.len().saturating_sub(1) / PER_ALLOWANCE;
        if extra > 0 {
            self.take_allowances(caller, extra as u32, "retry later")?;
        }
        let mut rows = self.rows(caller, &ids, &seen).await?;
        let total_unread = rows.iter().map(|r| r.unread).sum();
        rows.sort_unstable_by(|a, b| (b.last_active, &a.id).cmp(&(a.last_active, &b.id)));
        if let Some((at, id)) = &after {
            rows.retain(|r| r.last_active < *at || (r.last_active == *at && r.id > *id));
        }
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_page_token = match rows.last() {
            Some(r) if more => format!("{}:{}", r.last_active, r.id),
            _ => String::new(),
        };
        let summaries = join_all(rows.into_iter().map(|r| self.summary(caller, r))).await;
        let conversations: Result<Vec<_>, Error> = summaries.into_iter().collect();
        Ok(proto::ListConversationsResponse {
            conversations: conversations?,
            next_page_token,
            total_unread,
        })
    }

    /// `user`'s unread messages over all their conversations, and how many conversations hold
    /// them: what Welcome tells a device that starts. Reads what ListConversations reads (one
    /// log read per conversation, at most [`MAX_CONSIDERED`]) without a page's summaries. The
    /// first [`PER_ALLOWANCE`] conversations are free; each [`PER_ALLOWANCE`] more cost a send
    /// allowance, and None (not counted) is the answer when the user has none left.
    pub async fn unread(&self, user: &str) -> Result<Option<Unread>, Error> {
        let (ids, seen) = self.considered(user).await?;
        let extra = ids.len().saturating_sub(1) / PER_ALLOWANCE;
        if extra > 0 && self.take_allowances(user, extra as u32, "").is_err() {
            return Ok(None);
        }
        let rows = self.rows(user, &ids, &seen).await?;
        let unread = rows.iter().filter(|r| r.unread > 0);
        Ok(Some(Unread {
            total: rows.iter().map(|r| r.unread).sum(),
            conversations: unread.count() as u32,
        }))
    }

    /// The ids of `caller`'s conversations (at most [`MAX_CONSIDERED`]: the indexed direct
    /// ones, then their groups) and, by id, when each was last active and read up to.
    async fn considered(&self, caller: &str) -> Result<(Vec<String>, Seen), Error> {
        let indexed = self.notes.index().indexed(caller).await?;
        let groups = self.groups.user_groups(caller).await?;
        let mut seen = Seen::new();
        let mut ids = Vec::new();
        for n in indexed {
            // A group counts only while the user is in it (their group list says so).
            if n.conversation.starts_with("d:") {
                ids.push(n.conversation.clone());
            }
            seen.insert(n.conversation, (n.at, n.seen));
        }
        ids.extend(groups);
        ids.truncate(MAX_CONSIDERED);
        Ok((ids, seen))
    }

    /// Each of `ids` with its last message and the caller's unread count, [`READS_IN_FLIGHT`]
    /// logs read at once.
    async fn rows(&self, caller: &str, ids: &[String], seen: &Seen) -> Result<Vec<Row>, Error> {
        let mut rows = Vec::with_capacity(ids.len());
        for wave in ids.chunks(READS_IN_FLIGHT) {
            let reads = wave.iter().map(|id| self.newest_and_floor(caller, id));
            for (id, read) in wave.iter().zip(join_all(reads).await) {
                // A group the caller is no longer in (their list lags a removal) is skipped.
                let Some((last, floor)) = read? else { continue };
                let (at, seen) = seen.get(id).copied().unwrap_or((0, 0));
                let last_active = at.max(last.as_ref().map_or(0, |m| m.sent_at));
                let unread = match &last {
                    Some(m) if m.from != caller => m.conv_seq.saturating_sub(seen.max(floor)),
                    _ => 0,
                };
                rows.push(Row { id: id.clone(), last_active, unread, last });
            }
        }
        Ok(rows)
    }

    /// The newest message of `id`'s log and the conversation seq the caller's unread count
    /// starts after (a group's: the event that made them a member); None for a group they are
    /// not in, or an id that is none.
    async fn newest_and_floor(
        &self,
        caller: &str,
        id: &str,
    ) -> Result<Option<(Option<StoredMessage>, u64)>, Error> {
        let floor = match Conversation::parse(id) {
            Ok(Conversation::Direct(..)) => 0,
            Ok(Conversation::Group(_)) => match self.groups.member(id, caller).await? {
                Some(member) => member.joined_seq,
                None => return Ok(None),
            },
            Err(_) => return Ok(None),
        };
        let newest = HistoryPage { after: 0, before: 0, limit: 1 };
        Ok(Some((self.inbox.history(id, newest).await?.pop(), floor)))
    }

    /// What the caller is shown of one of their conversations.
    async fn summary(&self, caller: &str, row: Row) -> Result<proto::ConversationSummary, Error> {
        let (kind, title, other) = match Conversation::parse(&row.id) {
            Ok(Conversation::Direct(lo, hi)) => {
                let other = if lo == caller { hi } else { lo };
                (Kind::Direct, other.clone(), Some(other))
            }
            _ => {
                let info = self.groups.group(&row.id).await?;
                (Kind::Group, info.map(|g| g.name).unwrap_or_default(), None)
            }
        };
        let mut users = vec![caller.to_string()];
        users.extend(other);
        let cursors = self.notes.index().read_cursors(&row.id, &users).await?;
        Ok(proto::ConversationSummary {
            id: row.id,
            kind: kind.into(),
            title,
            last_message: row.last.map(Into::into),
            unread: row.unread,
            last_active_at: row.last_active,
            read_seq: cursors.first().copied().unwrap_or(0),
            // Notes to oneself: the other reader is oneself.
            peer_read_seq: cursors.get(1).copied().unwrap_or(0),
        })
    }
}

/// A page token's position: (last active, conversation id) of the previous page's last row.
fn parse_token(token: &str) -> Result<Option<(i64, String)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token is not one ListConversations gave");
    let (at, id) = token.split_once(':').ok_or_else(bad)?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    Conversation::parse(id).map_err(|_| bad())?;
    Ok(Some((at, id.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_is_a_time_and_a_conversation_id_or_refused() {
        assert_eq!(parse_token("").unwrap(), None);
        let id = Conversation::direct("alice", "bob").id();
        let got = parse_token(&format!("1700:{id}")).unwrap();
        assert_eq!(got, Some((1700, id)));
        for bad in ["x", "12", "abc:g:x", "12:nonsense", "12:d:9:a:b"] {
            assert!(parse_token(bad).is_err(), "{bad:?}");
        }
    }
}
