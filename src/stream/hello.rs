//! The start of a session: the `Hello` frame (who the device is, proven by its session token)
//! and where the client says it is (its resume point), checked against the inbox it refers to.
use std::time::Duration;

use futures_util::StreamExt as _;
use tonic::Status;
use tracing::warn;

use crate::auth::{AuthError, Claims};
use crate::error::Error;
use crate::ids;
use crate::node::Node;
use crate::proto::client_frame;

/// Where the client says it is (from Hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last seq the client has.
    pub after: u64,
    /// The inbox epoch `after` refers to; empty if the client has none.
    pub epoch: String,
    /// The msg_id of message `after` as the client has it; empty if it sent none.
    pub msg_id: String,
}

impl Resume {
    /// The resume point to trust in the inbox of epoch `epoch` whose last seq is `last_seq`.
    /// A point from another incarnation of the inbox (one that was lost), or past its end,
    /// would skip messages: then 0, and the device's stored cursor decides alone.
    pub fn point(&self, user: &str, epoch: &str, last_seq: u64) -> u64 {
        let other_epoch = !self.epoch.is_empty() && self.epoch != epoch;
        if other_epoch || self.after > last_seq {
            let after = self.after;
            warn!(%user, after, last_seq, other_epoch, "resume point from another inbox; ignored");
            return 0;
        }
        self.after
    }
}

/// Why a stream ends before its session starts.
#[derive(Debug)]
pub enum Refused {
    /// The client left without a Hello.
    Gone,
    /// End the stream with this status.
    Status(Status),
    /// The token's device logged out after the token was issued.
    LoggedOut(Status),
}

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Refused::Status(status)
    }
}

/// Waits for Hello and verifies it.
///
/// Refusals: no Hello within the hello timeout → DEADLINE_EXCEEDED; another frame first →
/// FAILED_PRECONDITION; a bad, expired or revoked token → UNAUTHENTICATED (a store failure
/// while checking → UNAVAILABLE); a device other than the token's →
/// PERMISSION_DENIED.
pub async fn hello(node: &Node, inbound: &mut super::Inbound) -> Result<(Claims, Resume), Refused> {
    let first = tokio::time::timeout(node.config().hello_timeout, inbound.next()).await;
    let frame = match first {
        Err(_) => return Err(Status::deadline_exceeded("no Hello within the hello timeout").into()),
        Ok(Some(Ok(f))) => f,
        Ok(None) => return Err(Refused::Gone),
        Ok(Some(Err(status))) => return Err(status.into()),
    };
    let Some(client_frame::Frame::Hello(h)) = frame.frame else {
        return Err(Status::failed_precondition("the first frame must be Hello").into());
    };
    let claims = node.verify(&h.token).await.map_err(|e| match e {
        Error::Auth(AuthError::Revoked) => Refused::LoggedOut(e.into()),
        e => Refused::Status(e.into()),
    })?;
    if !h.device.is_empty() && h.device != claims.dev {
        return Err(Refused::Status(Status::permission_denied(
            "Hello.device differs from the token's device; log in with that device",
        )));
    }
    ids::device(&claims.dev).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((claims, Resume { after: h.resume_after, epoch: h.inbox_epoch, msg_id: h.resume_msg_id }))
}

/// When a token expiring at `exp` (Unix seconds) runs out, on the runtime's clock.
pub fn expiry(exp: i64) -> tokio::time::Instant {
    let now = crate::auth::unix_ms(std::time::SystemTime::now());
    let left = u64::try_from(exp.saturating_mul(1000) - now).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(after: u64, epoch: &str) -> Resume {
        Resume { after, epoch: epoch.into(), msg_id: String::new() }
    }

    #[test]
    fn a_resume_point_is_trusted_only_inside_the_same_inbox() {
        assert_eq!(resume(5, "e1").point("u", "e1", 9), 5);
        assert_eq!(resume(5, "").point("u", "e1", 9), 5, "a client without an epoch");
        assert_eq!(resume(5, "e0").point("u", "e1", 9), 0, "another incarnation of the inbox");
        assert_eq!(resume(10, "e1").point("u", "e1", 9), 0, "past the end");
        assert_eq!(resume(9, "e1").point("u", "e1", 9), 9);
    }
}
