//! tim's typed errors, and the one place where they become a `tonic::Status`.
//!
//! Modules keep their own error enums ([`AuthError`], [`StoreError`]); request handling collects
//! them in [`Error`]. The `From<Error> for Status` impl below picks the gRPC code and the text a
//! client sees; internals (backend messages, addresses) are logged, never sent.
use tonic::{Code, Status};

pub use crate::auth::AuthError;
pub use crate::store::StoreError;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty recipient, body over the limit, bad id, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller sent more than its allowance; retry after `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: std::time::Duration },
    /// Token missing, invalid or expired; or identity not allowed for this call.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The message or route store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not now, and retrying will not help (a recall past its window).
    #[error("{0}")]
    Precondition(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// The gRPC code this error maps to (also used in `SendError.code`).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Precondition(_) => Code::FailedPrecondition,
            Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Auth(e) if e.is_permission() => Code::PermissionDenied,
            Error::Auth(_) => Code::Unauthenticated,
            // Both retryable: reconnect (a rolled-back inbox is handled at Hello) and retry.
            Error::Store(StoreError::Unavailable(_) | StoreError::RolledBack { .. }) => {
                Code::Unavailable
            }
            Error::Store(StoreError::Internal(_)) => Code::Internal,
            Error::Store(
                StoreError::InboxRate { .. }
                | StoreError::InboxFull { .. }
                | StoreError::TooManyDevices { .. }
                | StoreError::GroupFull { .. },
            ) => Code::ResourceExhausted,
            Error::Store(StoreError::NotMember) => Code::NotFound,
            Error::Store(StoreError::Forbidden) => Code::PermissionDenied,
            Error::Store(StoreError::GroupExists) => Code::AlreadyExists,
            Error::Store(StoreError::OwnerMustStay) => Code::FailedPrecondition,
        }
    }

    /// How long the caller should wait before retrying, when the refusal says.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited { retry_after, .. }
            | Error::Store(StoreError::InboxRate { retry_after, .. }) => Some(*retry_after),
            _ => None,
        }
    }

    /// The text a client may see: never a backend's own error message.
    pub fn public_message(&self) -> String {
        match self {
            Error::Store(StoreError::Unavailable(_)) => "message store unavailable; not \
                acknowledged (it may have been stored): retry with the same client_msg_id"
                .to_string(),
            Error::Store(StoreError::Internal(_)) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<crate::ids::IdError> for Error {
    fn from(err: crate::ids::IdError) -> Self {
        Error::InvalidArgument(err.to_string())
    }
}

/// The metadata key of a refusal's retry hint, in milliseconds (unary calls; stream refusals
/// carry it in `SendError.retry_after_ms`).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        if let Error::Store(e @ (StoreError::Unavailable(_) | StoreError::Internal(_))) = &err {
            tracing::warn!(error = %e, "store error");
        }
        let mut status = Status::new(err.code(), err.public_message());
        if let Some(wait) = err.retry_after() {
            let ms = wait.as_millis().max(1).to_string();
            if let Ok(v) = ms.parse() {
                status.metadata_mut().insert(RETRY_AFTER_MS, v);
            }
        }
        status
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        Error::from(err).into()
    }
}
