//! The service's error type and its one mapping to gRPC status codes.
//!
//! | error | code | retry? |
//! | --- | --- | --- |
//! | invalid field, value too large, bad TTL | `INVALID_ARGUMENT` | no |
//! | backend unavailable or over its command budget (no tier could serve) | `UNAVAILABLE` | yes |
//! | an invalidation that did not reach the shared store (Redis down) | `UNAVAILABLE` | yes |
//! | backend out of memory / value larger than a tier can hold | `RESOURCE_EXHAUSTED` | later |
//! | in-flight memory budget full (`CACHE_MAX_INFLIGHT_MB`) | `RESOURCE_EXHAUSTED` | later |
//! | a reply larger than the largest message the server sends | `RESOURCE_EXHAUSTED` | no: ask for less |
//! | no credentials, or a token (or client certificate) the tokens file does not name | `UNAUTHENTICATED` | no: fix the credentials |
//! | a call outside the token's scopes | `PERMISSION_DENIED` | no |
//! | bug or unexpected reply | `INTERNAL` | no |
//!
//! A miss is not an error, and a stored value that fails to decode is counted and served as a miss.

use tonic::{Code, Status};

use crate::backend::BackendError;
use crate::keys::InvalidField;

/// A setting that names something unusable (a TLS file, the tokens file), found at start: the process exits
/// with 64, as for any configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A request field is invalid.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    /// The storage tier failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The in-flight memory budget has no room for the call.
    #[error(transparent)]
    Exhausted(#[from] crate::inflight::Exhausted),
    /// The reply would be larger than the largest message the server sends.
    #[error(
        "the reply would be {bytes} bytes, more than the largest message this server sends ({limit} bytes): ask for fewer keys per GetMany, or metadata_only"
    )]
    ReplyTooLarge {
        /// The reply's size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The call carries no credentials the tokens file names.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller's token lacks the scope the call needs.
    #[error("the token {name:?} lacks the scope \"{scope}\" that {call} needs")]
    PermissionDenied {
        /// The token's name (never the token).
        name: std::sync::Arc<str>,
        /// The scope needed.
        scope: crate::auth::Scope,
        /// The call, as the message names it.
        call: &'static str,
    },
    /// An internal failure (e.g. a panicked compression task).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CacheError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Backend(
                BackendError::Unavailable { .. }
                | BackendError::Timeout { .. }
                | BackendError::NotShared { .. },
            ) => Code::Unavailable,
            Self::Backend(BackendError::TooLarge { .. } | BackendError::Refused { .. })
            | Self::Exhausted(_)
            | Self::ReplyTooLarge { .. } => Code::ResourceExhausted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Backend(BackendError::Internal { .. }) | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<CacheError> for Status {
    fn from(err: CacheError) -> Status {
        let code = err.code();
        match code {
            Code::InvalidArgument => tracing::debug!(error = %err, "rejected invalid request"),
            Code::Unauthenticated | Code::PermissionDenied => {
                tracing::info!(error = %err, "refused a call");
            }
            Code::Internal => tracing::error!(error = %err, "internal error"),
            _ => tracing::warn!(error = %err, "backend failure"),
        }
        Status::new(code, err.to_string())
    }
}

/// The canonical upper-case name of a gRPC code (e.g. `INVALID_ARGUMENT`), as metrics and the Metrics RPC
/// label errors.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn maps_each_kind_to_its_code() {
        let cases = [
            (
                CacheError::from(InvalidField::new("key.id", "must not be empty")),
                Code::InvalidArgument,
            ),
            (
                BackendError::Unavailable {
                    tier: "redis",
                    reason: "refused".into(),
                }
                .into(),
                Code::Unavailable,
            ),
            (
                BackendError::Timeout {
                    tier: "redis",
                    budget: Duration::from_millis(250),
                }
                .into(),
                Code::Unavailable,
            ),
            (
                BackendError::Refused {
                    tier: "redis",
                    reason: "OOM".into(),
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (
                BackendError::Internal {
                    tier: "redis",
                    reason: "bad reply".into(),
                }
                .into(),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
        }
        let status = Status::from(CacheError::from(InvalidField::new(
            "key.id",
            "must not be empty",
        )));
        assert_eq!(status.message(), "key.id: must not be empty");
    }
}
