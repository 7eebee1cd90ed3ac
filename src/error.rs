//! Error kinds on the wire and the error a handler returns.
//!
//! Every failure that reaches a client is one of the [`ErrorKind`]s of the wire
//! contract (§6), carried in the `mdcserrorkind` attribute of the reply. A
//! [`HandlerError`] additionally says whether trying again may help: a
//! retryable error leaves the MQTT message unacknowledged so the broker
//! redelivers it, a terminal one is answered, dead-lettered and acknowledged.

use std::fmt;

/// The error kinds of the wire contract, sent as `mdcserrorkind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid.
    ConfigurationInvalid,
    /// No processor handles the event's `type`.
    NoMatchingSubscribers,
    /// A deadline passed (request expired, no reply in time).
    Timeout,
    /// `datacontenttype` is not one we decode.
    UnsupportedContentType,
    /// The `type` is not known.
    UnknownPayloadType,
    /// A required MQTT property is missing.
    MissingProperty,
    /// A required CloudEvent attribute (user property) is missing.
    MissingUserProperty,
    /// An MQTT property has an invalid value.
    PropertyInvalid,
    /// A CloudEvent attribute (user property) has an invalid value.
    UserPropertyInvalid,
    /// The payload could not be decoded or violates its schema.
    PayloadInvalid,
    /// The request is not allowed in the current state.
    StateInvalid,
    /// The operation was cancelled (shutdown).
    Cancellation,
    /// A bug: an invariant did not hold.
    InternalLogicError,
    /// The operation is not implemented.
    NotImplemented,
    /// A backing service (Redis, broker) is unavailable; try again later.
    ServiceUnavailable,
    /// A network exchange failed.
    CommunicationError,
    /// A limit was reached (message too large, queue full).
    ResourceExhausted,
    /// The caller may not do this.
    PermissionDenied,
    /// The `specversion` or schema version is not supported.
    UnsupportedVersion,
    /// Anything else.
    UnknownError,
}

impl ErrorKind {
    /// Every kind, in wire-contract order.
    pub const ALL: [ErrorKind; 20] = [
        ErrorKind::ConfigurationInvalid,
        ErrorKind::NoMatchingSubscribers,
        ErrorKind::Timeout,
        ErrorKind::UnsupportedContentType,
        ErrorKind::UnknownPayloadType,
        ErrorKind::MissingProperty,
        ErrorKind::MissingUserProperty,
        ErrorKind::PropertyInvalid,
        ErrorKind::UserPropertyInvalid,
        ErrorKind::PayloadInvalid,
        ErrorKind::StateInvalid,
        ErrorKind::Cancellation,
        ErrorKind::InternalLogicError,
        ErrorKind::NotImplemented,
        ErrorKind::ServiceUnavailable,
        ErrorKind::CommunicationError,
        ErrorKind::ResourceExhausted,
        ErrorKind::PermissionDenied,
        ErrorKind::UnsupportedVersion,
        ErrorKind::UnknownError,
    ];

    /// The wire name, e.g. `PAYLOAD_INVALID`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConfigurationInvalid => "CONFIGURATION_INVALID",
            ErrorKind::NoMatchingSubscribers => "NO_MATCHING_SUBSCRIBERS",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::UnsupportedContentType => "UNSUPPORTED_CONTENT_TYPE",
            ErrorKind::UnknownPayloadType => "UNKNOWN_PAYLOAD_TYPE",
            ErrorKind::MissingProperty => "MISSING_PROPERTY",
            ErrorKind::MissingUserProperty => "MISSING_USER_PROPERTY",
            ErrorKind::PropertyInvalid => "PROPERTY_INVALID",
            ErrorKind::UserPropertyInvalid => "USER_PROPERTY_INVALID",
            ErrorKind::PayloadInvalid => "PAYLOAD_INVALID",
            ErrorKind::StateInvalid => "STATE_INVALID",
            ErrorKind::Cancellation => "CANCELLATION",
            ErrorKind::InternalLogicError => "INTERNAL_LOGIC_ERROR",
            ErrorKind::NotImplemented => "NOT_IMPLEMENTED",
            ErrorKind::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorKind::CommunicationError => "COMMUNICATION_ERROR",
            ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorKind::UnknownError => "UNKNOWN_ERROR",
        }
    }

    /// Parses a wire name; unknown names become [`ErrorKind::UnknownError`].
    pub fn from_wire(s: &str) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(ErrorKind::UnknownError)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a handler (or the runtime on its behalf) returns for one message.
///
/// Construct it with [`HandlerError::terminal`] or [`HandlerError::retryable`];
/// add context with [`HandlerError::context`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// The wire error kind.
    pub kind: ErrorKind,
    /// A human-readable message, sent as `mdcserrormessage`.
    pub message: String,
    /// Key/value context, sent as `mdcserrorcontext` (`k=v,k=v`).
    pub context: Vec<(String, String)>,
    /// Whether the message should be redelivered and tried again.
    pub retryable: bool,
}

impl HandlerError {
    /// An error that trying again will not fix: answered, dead-lettered,
    /// acknowledged.
    pub fn terminal(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            message: message.into(),
            context: Vec::new(),
            retryable: false,
        }
    }

    /// An error that may go away (a backing service is down): the message is
    /// answered with the error but left unacknowledged, so the broker
    /// redelivers it and it is not marked as seen.
    pub fn retryable(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            message: message.into(),
            context: Vec::new(),
            retryable: true,
        }
    }

    /// Adds a context entry.
    #[must_use]
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.context.push((key.into(), value.into()));
        self
    }
}

/// Whether a Redis failure is unavailability (connection refused or dropped,
/// timeout, loading, failover, cluster redirects): worth trying again. A
/// refused command (a script error, a wrong type, a permission) is not: the
/// same message would fail the same way forever.
pub fn redis_is_retryable(e: &redis::RedisError) -> bool {
    !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

impl From<redis::RedisError> for HandlerError {
    fn from(e: redis::RedisError) -> Self {
        if redis_is_retryable(&e) {
            HandlerError::retryable(ErrorKind::ServiceUnavailable, format!("redis: {e}"))
        } else {
            HandlerError::terminal(ErrorKind::InternalLogicError, format!("redis refused: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_wire_name() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_wire(k.as_str()), k);
        }
        assert_eq!(ErrorKind::from_wire("NOPE"), ErrorKind::UnknownError);
    }
}
