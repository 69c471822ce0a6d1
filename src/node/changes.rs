//! Edit, delete for everyone, recall: a Send that changes an earlier message is logged as a new
//! message of the conversation (an EDITED, DELETED or RECALLED event naming the target's
//! conversation seq), so sync stays append-only and every device gets it in order; History
//! shows each target as its latest change left it.
//!
//! Who may: the author edits and recalls (a recall only within `--recall-window`); the author,
//! or a group's owner or admin, deletes; a deleted or recalled message stays so. What it costs:
//! a Send, plus two log reads (the target, its latest change), one index read and, in a group,
//! one membership read. A hostile caller gets PERMISSION_DENIED for someone else's message,
//! INVALID_ARGUMENT for a seq with no message or a change of a change (or of an event),
//! FAILED_PRECONDITION for a recall too late or a change of a deleted message; a group they are
//! not in is NOT_FOUND, as any Send to it is.
use std::time::SystemTime;

use crate::auth::{AuthError, unix_ms};
use crate::error::Error;
use crate::ids::{self, Conversation};
use crate::proto;
use crate::store::groups::{EventKind, GroupEvent, Role};
use crate::store::{HistoryPage, Outgoing, StoreError, StoredMessage};

use super::Node;

/// What a message's latest change means for a Send that changes it.
enum Latest {
    /// Unchanged, or edited: it may be changed.
    Live,
    /// Deleted or recalled: it stays so.
    Gone,
    /// The latest change is this very Send, retried after its ack was lost.
    Retry,
}

impl Node {
    /// A Send's shape: its idempotency key, exactly one of a recipient and a group, a body
    /// within the limit (none only for a delete or recall).
    pub(super) fn check_outgoing(&self, msg: &Outgoing) -> Result<(), Error> {
        ids::client_msg_id(&msg.client_msg_id)?;
        match (msg.to.is_empty(), msg.group.is_empty()) {
            (true, false) => {}
            (false, true) => {
                ids::user(&msg.to).map_err(|e| Error::invalid(format!("recipient: {e}")))?
            }
            _ => return Err(Error::invalid("give exactly one of to and group")),
        }
        let new_text = msg.change.is_none_or(|(kind, _)| kind == EventKind::Edited);
        if msg.body.is_empty() && new_text {
            return Err(Error::invalid("body is empty"));
        }
        if msg.body.len() > self.config.max_body {
            return Err(Error::invalid(format!(
                "body is {} bytes; the limit is {} bytes",
                msg.body.len(),
                self.config.max_body
            )));
        }
        Ok(())
    }

    /// Notes `logged`, if it is a change, in its conversation's index of changes (History
    /// reads it). A retry of the Send notes it again: a failure here heals that way.
    pub(super) async fn record_change(&self, logged: &StoredMessage) -> Result<(), Error> {
        let Some(target) = logged.event.as_ref().and_then(GroupEvent::target) else {
            return Ok(());
        };
        let index = self.notes.index();
        index.note_change(&logged.conversation, target, logged.conv_seq).await?;
        Ok(())
    }

    /// The event a Send that changes an earlier message is logged as, once the change is
    /// allowed; None for a new message.
    pub(super) async fn change_event(
        &self,
        from: &str,
        msg: &Outgoing,
    ) -> Result<Option<GroupEvent>, Error> {
        let Some((kind, target)) = msg.change else { return Ok(None) };
        if target == 0 {
            return Err(Error::invalid("change.target_seq names the message to change (from 1)"));
        }
        if kind != EventKind::Edited && !msg.body.is_empty() {
            return Err(Error::invalid("a delete or recall carries no body"));
        }
        let conversation = match msg.group.is_empty() {
            true => Conversation::direct(from, &msg.to).id(),
            false => msg.group.clone(),
        };
        // A group's log is for its members only: not even whether a seq exists.
        let member = match msg.group.is_empty() {
            true => None,
            false => {
                Some(self.groups.member(&conversation, from).await?.ok_or(StoreError::NotMember)?)
            }
        };
        let original = self.message_at(&conversation, target).await?;
        let Some(original) = original else {
            let why = format!(
                "{conversation} has no message {target} (or it passed the history retention)"
            );
            return Err(Error::invalid(why));
        };
        if original.event.is_some() {
            return Err(Error::invalid("only a message can be changed, not an event or a change"));
        }
        let author = original.from == from;
        let allowed = match kind {
            EventKind::Deleted if !author => member.is_some_and(|m| m.role >= Role::Admin),
            _ => author,
        };
        if !allowed {
            let why =
                "only its author (or, to delete it, a group's owner or admin) may change a message";
            return Err(AuthError::Forbidden(why.into()).into());
        }
        match self.latest_change(&conversation, target, from, &msg.client_msg_id).await? {
            Latest::Gone => {
                return Err(Error::Precondition(format!(
                    "message {target} of {conversation} was deleted or recalled: it stays so"
                )));
            }
            // Allowed when it was first sent, window and all: the store's dedup answers it
            // with the first ack.
            Latest::Retry => return Ok(Some(GroupEvent::change(kind, target))),
            Latest::Live => {}
        }
        let age = unix_ms(SystemTime::now()) - original.sent_at;
        if kind == EventKind::Recalled && age > self.config.recall_window.as_millis() as i64 {
            let window = self.config.recall_window;
            return Err(Error::Precondition(format!(
                "a message can be recalled within {window:?} of sending"
            )));
        }
        Ok(Some(GroupEvent::change(kind, target)))
    }

    /// What the latest change of message `target` says of this Send (`from`'s
    /// `client_msg_id`).
    async fn latest_change(
        &self,
        conversation: &str,
        target: u64,
        from: &str,
        client_msg_id: &str,
    ) -> Result<Latest, Error> {
        let latest = self.notes.index().changes(conversation, &[target]).await?;
        let Some(&by) = latest.first().filter(|by| **by > 0) else { return Ok(Latest::Live) };
        let Some(change) = self.message_at(conversation, by).await? else {
            return Ok(Latest::Live);
        };
        if change.from == from && change.client_msg_id == client_msg_id {
            return Ok(Latest::Retry);
        }
        let gone = change.event.is_some_and(|e| e.kind != EventKind::Edited);
        Ok(if gone { Latest::Gone } else { Latest::Live })
    }

    /// Message `seq` of `conversation`'s log, if it still holds it.
    async fn message_at(
        &self,
        conversation: &str,
        seq: u64,
    ) -> Result<Option<StoredMessage>, Error> {
        let at = HistoryPage { after: 0, before: seq + 1, limit: 1 };
        Ok(self.inbox.history(conversation, at).await?.pop().filter(|m| m.conv_seq == seq))
    }

    /// `page` with each message as its latest change left it (an edit's text, or none after
    /// a delete or recall), `changed_by` saying which change: one index read, and one log read
    /// per changed message.
    pub(super) async fn apply_changes(
        &self,
        conversation: &str,
        page: &mut [proto::Message],
    ) -> Result<(), Error> {
        let seqs: Vec<u64> =
            page.iter().filter(|m| m.event.is_none()).map(|m| m.conv_seq).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let latest = self.notes.index().changes(conversation, &seqs).await?;
        for (target, by) in seqs.into_iter().zip(latest).filter(|(_, by)| *by > 0) {
            let Some(change) = self.message_at(conversation, by).await? else { continue };
            let Some(kind) = change.event.as_ref().map(|e| e.kind) else { continue };
            if let Some(m) = page.iter_mut().find(|m| m.conv_seq == target) {
                m.body = if kind == EventKind::Edited { change.body } else { String::new() };
                m.changed_by = by;
            }
        }
        Ok(())
    }
}
