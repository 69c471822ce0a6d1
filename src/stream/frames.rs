//! What a client sends on its stream after Hello: messages (through the session's send gate)
//! and acks, of its inbox (`up_to`) or of a broadcast group (`conversation`, `conv_seq`).
use tonic::Status;
use tracing::warn;

use super::end::End;
use super::outbound::Outbound;
use super::session::Session;
use crate::proto::{self, ClientFrame, client_frame, server_frame::Frame};
use crate::store::{AckCheck, StoreError};
use crate::wire;

impl Session {
    pub(super) async fn on_frame(
        &mut self,
        frame: ClientFrame,
        out: &mut Outbound,
    ) -> Result<(), End> {
        match frame.frame {
            Some(client_frame::Frame::Send(m)) => {
                // Acks sent before this message are stored before it.
                if let Some(up_to) = self.acks.take() {
                    self.store_ack(up_to).await?;
                }
                let reply = self.send(m).await;
                out.send(reply).await?;
                Ok(())
            }
            Some(client_frame::Frame::Ack(a)) if !a.conversation.is_empty() => {
                self.groups.ack(&a.conversation, a.conv_seq).map_err(End::Status)
            }
            Some(client_frame::Frame::Ack(a)) => self.ack(a.up_to).await,
            Some(client_frame::Frame::Typing(t)) => self
                .node
                .typing(&self.user, &t.conversation)
                .await
                .map_err(|e| End::Status(e.into())),
            Some(client_frame::Frame::Hello(_)) => Err(End::Status(Status::failed_precondition(
                "Hello was already sent on this stream",
            ))),
            None => Err(End::Status(Status::invalid_argument("empty ClientFrame"))),
        }
    }

    /// Stores one message if the gate lets it through; the frame to answer with.
    async fn send(&mut self, m: proto::SendMessage) -> Frame {
        let id = m.client_msg_id.clone();
        let result = match self.gate.admit(&id) {
            Ok(()) => {
                self.node.send(&self.user, &self.device, m.into()).await.map_err(Status::from)
            }
            Err(refused) => Err(refused),
        };
        self.gate.settle(&id, result.as_ref().err());
        self.node.count_send(&result, |a| a.duplicate);
        wire::send_reply(id, result)
    }

    async fn ack(&mut self, up_to: u64) -> Result<(), End> {
        let delivered = self.next - 1;
        if up_to > delivered {
            return Err(End::Status(Status::invalid_argument(format!(
                "Ack up_to {up_to} is beyond the last seq delivered on this stream ({delivered})"
            ))));
        }
        if let Some(up_to) = self.acks.receive(up_to) {
            self.store_ack(up_to).await?;
            self.acks.open_window(tokio::time::Instant::now());
        }
        Ok(())
    }

    /// Stores the device's cursor, checked against what this session sent above the cursor it
    /// last stored. A failed store is retried by the next ack; an inbox rolled back under the
    /// device ends the stream, so that the client resumes where the store can tell (see
    /// `Session::start`).
    pub(super) async fn store_ack(&mut self, up_to: u64) -> Result<(), End> {
        let stored = self.acks.stored();
        let sent = self.sent.iter().filter(|(seq, _)| *seq > stored && *seq <= up_to).cloned();
        let check = AckCheck { stored, sent: sent.collect() };
        match self.node.inbox().ack(&self.user, &self.device, up_to, &check).await {
            Ok(cursor) => {
                let advanced = cursor.saturating_sub(stored);
                self.node.metrics().acked.inc_by(advanced);
                self.acks.set_stored(cursor);
            }
            Err(StoreError::RolledBack { seq }) => return Err(self.rolled_back_at(seq).await),
            Err(e) => warn!(user = %self.user, error = %e, "ack not stored"),
        }
        Ok(())
    }

    /// The inbox was rolled back under this device at `seq` (seen by an ack the store refused,
    /// a seq given out again, a last seq below what was sent): the device may have been given
    /// messages that are gone and then acked others under their seqs, so neither its resume
    /// point nor anything it says about seqs can be trusted. The inbox gets a new epoch, and
    /// the stream ends: the device resumes from its stored cursor, which only ever moved over
    /// messages the device was given under their seqs.
    pub(super) async fn rolled_back_at(&self, seq: u64) -> End {
        warn!(user = %self.user, device = %self.device, seq, "inbox rolled back under the device");
        if let Err(e) = self.node.inbox().renew_epoch(&self.user).await {
            warn!(user = %self.user, error = %e, "could not renew the inbox epoch");
        }
        super::end::rolled_back(seq)
    }
}
