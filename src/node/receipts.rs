//! Read receipts: a member marks a conversation read up to a conversation seq (one cursor per
//! user and conversation, never one per message), and asks who has read a message: in a direct
//! conversation whether the other user has, in a group how many of the other members ("read by
//! K of M") and who, paged.
use crate::error::Error;
use crate::proto;
use crate::store::HistoryPage;

use super::Node;

/// Readers one GetReceipts page holds at most.
pub const MAX_READERS_PAGE: usize = 100;
/// A page without a limit holds this many.
const DEFAULT_READERS_PAGE: usize = 50;

impl Node {
    /// MarkRead: moves `caller`'s read cursor forward to `conv_seq` (0 or past the newest: the
    /// newest). Members only; costs one send allowance.
    pub async fn mark_read(
        &self,
        caller: &str,
        req: proto::MarkReadRequest,
    ) -> Result<proto::MarkReadResponse, Error> {
        self.take_allowance(caller, "retry later")?;
        let opened = self.open(caller, &req.conversation, &req.with).await?;
        let id = opened.id.clone();
        let newest = HistoryPage { after: 0, before: 0, limit: 1 };
        let last = self.inbox.history(&id, newest).await?.pop().map_or(0, |m| m.conv_seq);
        let up_to = if req.conv_seq == 0 { last } else { req.conv_seq.min(last) };
        let read_seq = self.notes.index().mark_read(caller, &id, up_to).await?;
        // The other members online and the caller's other devices hear of it at once.
        self.signal_read(caller, &opened, read_seq).await?;
        Ok(proto::MarkReadResponse { conversation: id, read_seq })
    }

    /// GetReceipts: who of the other members has read message `conv_seq` of a conversation the
    /// caller is in, and a page of them. Costs one send allowance.
    pub async fn receipts(
        &self,
        caller: &str,
        req: proto::GetReceiptsRequest,
    ) -> Result<proto::GetReceiptsResponse, Error> {
        self.take_allowance(caller, "retry later")?;
        let offset: usize = match req.page_token.as_str() {
            "" => 0,
            t => t.parse().map_err(|_| Error::invalid("page_token is not one GetReceipts gave"))?,
        };
        let limit = match req.limit {
            0 => DEFAULT_READERS_PAGE,
            n => (n as usize).min(MAX_READERS_PAGE),
        };
        if req.conv_seq == 0 {
            return Err(Error::invalid("conv_seq names the message asked about (from 1)"));
        }
        let opened = self.open(caller, &req.conversation, &req.with).await?;
        let id = opened.id;
        // Its sender does not count among its readers.
        let at = HistoryPage { after: 0, before: req.conv_seq + 1, limit: 1 };
        let message =
            self.inbox.history(&id, at).await?.pop().filter(|m| m.conv_seq == req.conv_seq);
        let sender = message.map(|m| m.from).unwrap_or_default();
        let index = self.notes.index();
        let (count, page) = index.readers(&id, req.conv_seq, offset, limit).await?;
        let sender_read = !sender.is_empty()
            && index.read_cursors(&id, std::slice::from_ref(&sender)).await?[0] >= req.conv_seq;
        // Pages are of every reader; the sender's place in one is left out.
        let readers = page
            .into_iter()
            .filter(|(user, _)| *user != sender)
            .map(|(user_id, read_seq)| proto::Reader { user_id, read_seq })
            .collect();
        let next = offset + limit;
        let next_page_token = if next < count as usize { next.to_string() } else { String::new() };
        let recipients = match &opened.group {
            Some(g) => g.member_count.saturating_sub(1),
            None => 1,
        };
        Ok(proto::GetReceiptsResponse {
            conversation: id,
            conv_seq: req.conv_seq,
            read_by: count - u32::from(sender_read),
            recipients,
            readers,
            next_page_token,
        })
    }
}
