//! ListConversations: a user's conversations, the most recently active first, each with its
//! last message and unread count. The direct ones come from the user's index (`notes`), the
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

/// One of the caller's conversations while the page is made.
struct Row {
    id: String,
    last_active: i64,
    seen: u64,
    last: Option<StoredMessage>,
}

impl Node {
    /// A page of `caller`'s conversations (at most [`MAX_CONVERSATIONS_PAGE`]), most recently
    /// active first. Costs one send allowance per [`PER_ALLOWANCE`] conversations considered.
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
        let indexed = self.notes.index().indexed(caller).await?;
        let groups = self.groups.user_groups(caller).await?;
        let mut seen: HashMap<String, (i64, u64)> = HashMap::new();
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
        let extra = ids.len().saturating_sub(1) / PER_ALLOWANCE;
        if extra > 0 {
            self.take_allowances(caller, extra as u32, "retry later")?;
        }
        let mut rows = Vec::with_capacity(ids.len());
        for wave in ids.chunks(READS_IN_FLIGHT) {
            let newest = HistoryPage { after: 0, before: 0, limit: 1 };
            let reads = wave.iter().map(|id| self.inbox.history(id, newest));
            for (id, page) in wave.iter().zip(join_all(reads).await) {
                let last = page?.pop();
                let (at, seen) = seen.get(id).copied().unwrap_or((0, 0));
                let last_active = at.max(last.as_ref().map_or(0, |m| m.sent_at));
                rows.push(Row { id: id.clone(), last_active, seen, last });
            }
        }
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
        let conversations: Result<Vec<_>, Error> =
            summaries.into_iter().filter_map(Result::transpose).collect();
        Ok(proto::ListConversationsResponse { conversations: conversations?, next_page_token })
    }

    /// What the caller is shown of one conversation; None for a group they are no longer in.
    async fn summary(
        &self,
        caller: &str,
        row: Row,
    ) -> Result<Option<proto::ConversationSummary>, Error> {
        let (kind, title, floor) = match Conversation::parse(&row.id) {
            Ok(Conversation::Direct(lo, hi)) => {
                (Kind::Direct, if lo == caller { hi } else { lo }, 0)
            }
            Ok(Conversation::Group(_)) => {
                let member = self.groups.member(&row.id, caller).await?;
                let info = self.groups.group(&row.id).await?;
                let (Some(member), Some(info)) = (member, info) else {
                    return Ok(None);
                };
                (Kind::Group, info.name, member.joined_seq)
            }
            Err(_) => return Ok(None),
        };
        let unread = match &row.last {
            Some(m) if m.from != caller => m.conv_seq.saturating_sub(row.seen.max(floor)),
            _ => 0,
        };
        Ok(Some(proto::ConversationSummary {
            id: row.id,
            kind: kind.into(),
            title,
            last_message: row.last.map(Into::into),
            unread,
            last_active_at: row.last_active,
        }))
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
