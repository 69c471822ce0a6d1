//! A send the resilient client has not had acked yet, and how its ack is waited for.
use tokio::sync::oneshot;

use crate::client::ClientError;
use crate::proto;

/// A send not acked yet.
pub(super) struct Outgoing {
    /// The message, without its client_msg_id (kept beside it).
    pub(super) msg: proto::SendMessage,
    pub(super) reply: Option<oneshot::Sender<Result<proto::SendAck, ClientError>>>,
}

/// `msg` with its client_msg_id.
pub(super) fn with_id(id: &str, msg: &proto::SendMessage) -> proto::SendMessage {
    proto::SendMessage { client_msg_id: id.to_string(), ..msg.clone() }
}

/// `ack`, labelled with the client_msg_id it answers.
pub(super) async fn tag(
    id: String,
    ack: impl Future<Output = Result<proto::SendAck, ClientError>>,
) -> (String, Result<proto::SendAck, ClientError>) {
    (id, ack.await)
}
