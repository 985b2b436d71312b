//! The SDK's error type and its one mapping from gRPC statuses.
//!
//! | server answer | [`Error`] variant | [`Error::is_retryable`] |
//! | --- | --- | --- |
//! | `INVALID_ARGUMENT` ("field.path: reason") | [`Error::InvalidArgument`] | no |
//! | `UNAVAILABLE` (no tier could serve, or no connection) | [`Error::Unavailable`] | yes (retried by the client) |
//! | `DEADLINE_EXCEEDED`, or the call's deadline ran out | [`Error::Timeout`] | yes (not retried: the budget is spent) |
//! | `RESOURCE_EXHAUSTED`, or a message over a size limit | [`Error::ResourceExhausted`] | no |
//! | anything else (`INTERNAL`, `UNAUTHENTICATED`, ...) | [`Error::Other`] | no |
//!
//! A miss is not an error: reads answer `Ok(None)`.

use tonic::{Code, Status};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server rejected a request field (`INVALID_ARGUMENT`). Never retried.
    #[error("invalid argument {field}: {message}")]
    InvalidArgument {
        /// The offending field's path, e.g. `key.id` (empty when the server did not name one).
        field: String,
        /// Why it was rejected, e.g. `must not be empty`.
        message: String,
    },
    /// No tier could serve the call, or the server could not be reached (`UNAVAILABLE`). Transient: the client
    /// retries it within the call's deadline and the retry budget.
    #[error("cache unavailable: {}", .0.message())]
    Unavailable(#[source] Status),
    /// The call's deadline ran out (`DEADLINE_EXCEEDED`, or cancelled by the deadline), retries included.
    #[error("cache call timed out: {}", .0.message())]
    Timeout(#[source] Status),
    /// The server or a message limit refused the call (`RESOURCE_EXHAUSTED`), e.g. a value larger than a tier
    /// can hold or a response larger than the client's maximum message size.
    #[error("cache resource exhausted: {}", .0.message())]
    ResourceExhausted(#[source] Status),
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect) could not connect to an endpoint.
    #[error("failed to connect to {endpoint}")]
    Connect {
        /// The endpoint, as given to the builder.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// An endpoint is not a valid URI, or its TLS settings cannot be applied.
    #[error("invalid endpoint {endpoint}")]
    InvalidEndpoint {
        /// The endpoint, as given to the builder.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A builder setting is out of range.
    #[error("invalid client setting {setting}: {reason}")]
    InvalidConfig {
        /// The builder method, e.g. `retry.max_attempts`.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Export options could not be turned into a `google.protobuf.Struct` (they must serialize to a JSON
    /// object).
    #[error("invalid export options: {reason}")]
    InvalidOptions {
        /// What is wrong with them.
        reason: String,
        /// The serializer's error, if serialization itself failed.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A value could not be serialized before a Set.
    #[error("failed to encode a {family} value")]
    Encode {
        /// The family (cache type) of the entry, e.g. `metadata`.
        family: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value could not be deserialized into the requested type.
    #[error("failed to decode a {family} value")]
    Decode {
        /// The family (cache type) of the entry, e.g. `metadata`.
        family: &'static str,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// Any other gRPC status (`INTERNAL`, `UNAUTHENTICATED`, `UNIMPLEMENTED`, ...).
    #[error(transparent)]
    Other(Status),
}

impl Error {
    /// Whether the same call may succeed if made again later: `Unavailable`, `Timeout` and `Connect`.
    ///
    /// The client itself retries only `Unavailable` (gRPC A6: the server did not process the call), within
    /// the call's deadline and the retry budget.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::Connect { .. }
        )
    }

    /// The gRPC status code behind this error, if it came from a call.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::InvalidArgument { .. } => Some(Code::InvalidArgument),
            Self::Unavailable(s)
            | Self::Timeout(s)
            | Self::ResourceExhausted(s)
            | Self::Other(s) => Some(s.code()),
            _ => None,
        }
    }

    /// A deadline error for a call that ran out of time on the client side.
    pub(crate) fn deadline(rpc: &str, budget: std::time::Duration) -> Self {
        Self::Timeout(Status::deadline_exceeded(format!(
            "{rpc} did not complete within {budget:?}"
        )))
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument => {
                let (field, message) = match status.message().split_once(": ") {
                    Some((field, message)) if !field.contains(' ') => {
                        (field.to_owned(), message.to_owned())
                    }
                    _ => (String::new(), status.message().to_owned()),
                };
                Self::InvalidArgument { field, message }
            }
            Code::Unavailable => Self::Unavailable(status),
            Code::DeadlineExceeded => Self::Timeout(status),
            // tonic reports its own deadline (client `grpc-timeout` or server `timeout`) as CANCELLED.
            Code::Cancelled if status.message() == "Timeout expired" => Self::Timeout(status),
            Code::ResourceExhausted => Self::ResourceExhausted(status),
            // tonic reports a message over a size limit (ours on a response, the server's on a request) as
            // OUT_OF_RANGE; gRPC's other stacks say RESOURCE_EXHAUSTED.
            Code::OutOfRange if status.message().contains("message length too large") => {
                Self::ResourceExhausted(status)
            }
            _ => Self::Other(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let err = Error::from(Status::invalid_argument("key.id: must not be empty"));
        match &err {
            Error::InvalidArgument { field, message } => {
                assert_eq!(field, "key.id");
                assert_eq!(message, "must not be empty");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Some(Code::InvalidArgument));
        assert_eq!(
            err.to_string(),
            "invalid argument key.id: must not be empty"
        );
    }

    #[test]
    fn invalid_argument_without_a_field_keeps_the_message() {
        let err = Error::from(Status::invalid_argument("bad request: oops"));
        assert!(
            matches!(&err, Error::InvalidArgument { field, message } if field.is_empty() && message == "bad request: oops")
        );
    }

    #[test]
    fn maps_each_code_to_its_variant() {
        assert!(matches!(
            Error::from(Status::unavailable("down")),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::from(Status::deadline_exceeded("late")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from(Status::cancelled("Timeout expired")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from(Status::cancelled("client went away")),
            Error::Other(_)
        ));
        assert!(matches!(
            Error::from(Status::resource_exhausted("full")),
            Error::ResourceExhausted(_)
        ));
        assert!(matches!(
            Error::from(Status::out_of_range(
                "Error, decoded message length too large: found 6291466 bytes, the limit is: 1048576 bytes"
            )),
            Error::ResourceExhausted(_)
        ));
        assert!(matches!(
            Error::from(Status::internal("bug")),
            Error::Other(_)
        ));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(Error::from(Status::unavailable("down")).is_retryable());
        assert!(Error::deadline("Get", std::time::Duration::from_millis(5)).is_retryable());
        assert!(!Error::from(Status::resource_exhausted("full")).is_retryable());
        assert!(!Error::from(Status::internal("bug")).is_retryable());
    }
}
