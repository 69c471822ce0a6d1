//! Conversations: which one a call names and whether the caller is in it, and its history.
use crate::auth::AuthError;
use crate::error::Error;
use crate::ids::{self, Conversation};
use crate::proto;
use crate::store::groups::GroupInfo;
use crate::store::{HistoryPage, StoreError, StoredMessage};

use super::Node;

/// Most messages one History page holds.
pub const MAX_HISTORY_PAGE: usize = 100;
/// A History page without a limit holds this many.
const DEFAULT_HISTORY_PAGE: usize = 50;
/// Bodies one History page holds at most, about (always at least one message).
pub const MAX_HISTORY_BYTES: usize = 1 << 20;

/// A conversation as one of its members sees it.
pub(super) struct Opened {
    pub(super) id: String,
    /// The group, for a group.
    pub(super) group: Option<GroupInfo>,
    /// The first conversation seq the member may see.
    pub(super) first_seen: u64,
}

impl Node {
    /// The conversation `conversation` names (or the direct one with `with`: exactly one of
    /// the two), if `caller` is one of its members: else INVALID_ARGUMENT, PERMISSION_DENIED
    /// (a direct conversation of others) or NOT_FOUND (a group they are not in).
    pub(super) async fn open(
        &self,
        caller: &str,
        conversation: &str,
        with: &str,
    ) -> Result<Opened, Error> {
        let conversation = match (conversation.is_empty(), with.is_empty()) {
            (false, true) => Conversation::parse(conversation)?,
            (true, false) => {
                ids::user(with).map_err(|e| Error::invalid(format!("with: {e}")))?;
                Conversation::direct(caller, with)
            }
            _ => return Err(Error::invalid("give exactly one of conversation and with")),
        };
        let id = conversation.id();
        // What of the log the caller may see: all of a direct conversation they are in; of a
        // group, from when they joined unless the group shows earlier history to newcomers.
        match &conversation {
            Conversation::Direct(lo, hi) if lo == caller || hi == caller => {
                Ok(Opened { id, group: None, first_seen: 0 })
            }
            Conversation::Direct(..) => {
                let why = "not a member of this conversation".to_string();
                Err(AuthError::Forbidden(why).into())
            }
            Conversation::Group(_) => {
                let member = self.groups.member(&id, caller).await?;
                let member = member.ok_or(StoreError::NotMember)?;
                let info = self.groups.group(&id).await?.ok_or(StoreError::NotMember)?;
                let first_seen = if info.history_for_new_members { 0 } else { member.joined_seq };
                Ok(Opened { id, group: Some(info), first_seen })
            }
        }
    }

    /// A page of a conversation's history for `caller`, who must be one of its members:
    /// `conversation` by id, or the direct one with `with`. At most [`MAX_HISTORY_PAGE`]
    /// messages and about [`MAX_HISTORY_BYTES`] of bodies.
    pub async fn history(
        &self,
        caller: &str,
        req: proto::HistoryRequest,
    ) -> Result<proto::HistoryResponse, Error> {
        self.take_allowance(caller, "retry later")?;
        let Opened { id, first_seen, .. } = self.open(caller, &req.conversation, &req.with).await?;
        let limit = match req.limit {
            0 => DEFAULT_HISTORY_PAGE,
            n => (n as usize).min(MAX_HISTORY_PAGE),
        };
        let page = HistoryPage { after: req.after_seq, before: req.before_seq, limit };
        let mut messages = self.inbox.history(&id, page).await?;
        messages.retain(|m| m.conv_seq >= first_seen);
        // About MAX_HISTORY_BYTES at most, always at least one: from the end the page grows
        // away from (the oldest for a page after a seq, the newest for one before).
        let mut bytes = 0;
        let mut keep = |m: &StoredMessage| {
            bytes += m.body.len();
            bytes <= MAX_HISTORY_BYTES
        };
        let fits = if page.after > 0 {
            messages.iter().take_while(|m| keep(m)).count()
        } else {
            messages.iter().rev().take_while(|m| keep(m)).count()
        };
        let fits = fits.max(1).min(messages.len());
        if page.after > 0 {
            messages.truncate(fits);
        } else {
            messages.drain(..messages.len() - fits);
        }
        let mut messages: Vec<proto::Message> = messages.into_iter().map(Into::into).collect();
        // Each message as its latest edit, delete or recall left it (those stay in the log).
        self.apply_changes(&id, &mut messages).await?;
        Ok(proto::HistoryResponse { conversation: id, messages })
    }
}
