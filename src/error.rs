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
    /// The caller sent more than its allowance; retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Token missing, invalid or expired; or identity not allowed for this call.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The message or route store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Auth(e) if e.is_permission() => Code::PermissionDenied,
            Error::Auth(_) => Code::Unauthenticated,
            Error::Store(StoreError::Unavailable(_)) => Code::Unavailable,
            Error::Store(StoreError::Internal(_)) => Code::Internal,
        }
    }

    /// The text a client may see: never a backend's own error message.
    pub fn public_message(&self) -> String {
        match self {
            Error::Store(StoreError::Unavailable(_)) => {
                "message store unavailable; not acknowledged: retry with the same client_msg_id"
                    .to_string()
            }
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

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        if let Error::Store(e) = &err {
            tracing::warn!(error = %e, "store error");
        }
        Status::new(err.code(), err.public_message())
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        Error::from(err).into()
    }
}
