//! How a session ends: why its serve loop stopped, and what the client is told.
use tonic::Status;
use tracing::debug;

use super::outbound::{Gone, Outbound};
use crate::error::Error;
use crate::proto::{self, server_frame::Frame, session_ended::Reason};
use crate::store::StoreError;

/// Why the serve loop stopped.
pub(super) enum End {
    /// The client is gone; nothing more can be sent.
    Gone(Gone),
    /// End the stream with this status, after what is queued.
    Status(Status),
    /// End the stream with this status now.
    Abort(Status),
    /// The token ran out: SessionEnded(TOKEN_EXPIRED), then UNAUTHENTICATED.
    Expired,
}

/// The SessionEnded frame.
pub(super) fn ended(reason: Reason, detail: &str) -> Frame {
    Frame::SessionEnded(proto::SessionEnded { reason: reason as i32, detail: detail.into() })
}

/// Says why the session's credentials ended (SessionEnded), then ends the stream with `status`.
pub(super) async fn end_with(out: &mut Outbound, reason: Reason, status: Status) {
    if out.send(ended(reason, status.message())).await.is_ok() {
        out.finish(status).await;
    }
}

impl From<Gone> for End {
    fn from(g: Gone) -> Self {
        End::Gone(g)
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Status(Error::from(e).into())
    }
}

impl End {
    /// Tells the client of `user`'s `device` why its stream ends, as this end requires.
    pub(super) async fn tell(self, out: &mut Outbound, user: &str, device: &str) {
        match self {
            End::Gone(why) => debug!(%user, %device, ?why, "client gone"),
            End::Status(status) => out.finish(status).await,
            End::Abort(status) => out.abort(status),
            End::Expired => {
                let expired = Status::unauthenticated("session token expired; log in again");
                end_with(out, Reason::TokenExpired, expired).await;
            }
        }
    }
}

/// The stream ends so that the client resumes with Hello, where the rollback is handled.
pub(super) fn rolled_back(seq: u64) -> End {
    End::Status(Status::unavailable(format!(
        "the inbox was rolled back (seq {seq} was given out again); reconnect and resume"
    )))
}
