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
/// Construct it with [`HandlerError::terminal`] or [`HandlerError::retryable`]
/// (or in one call from any `Result` with [`ResultExt`]); add context with
/// [`HandlerError::context`]. Its parts are read with [`HandlerError::kind`],
/// [`HandlerError::message`], [`HandlerError::context_entries`] and
/// [`HandlerError::is_retryable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// The wire error kind.
    kind: ErrorKind,
    /// A human-readable message, sent as `mdcserrormessage`.
    message: String,
    /// Key/value context, sent as `mdcserrorcontext` (`k=v,k=v`).
    context: Vec<(String, String)>,
    /// Whether the message should be redelivered and tried again.
    retry: Retry,
}

/// What trying the same message again may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Nothing: answered, dead-lettered, acknowledged.
    Terminal,
    /// It may succeed: left unacknowledged, redelivered.
    Retryable,
}

impl HandlerError {
    fn new(kind: ErrorKind, message: String, retry: Retry) -> Self {
        HandlerError {
            kind,
            message,
            context: Vec::new(),
            retry,
        }
    }

    /// An error that trying again will not fix: answered, dead-lettered,
    /// acknowledged.
    pub fn terminal(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError::new(kind, message.into(), Retry::Terminal)
    }

    /// An error that may go away (a backing service is down): the message is
    /// answered with the error but left unacknowledged, so the broker
    /// redelivers it and it is not marked as seen.
    pub fn retryable(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError::new(kind, message.into(), Retry::Retryable)
    }

    /// Adds a context entry (after the ones already there).
    #[must_use]
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.context.push((key.into(), value.into()));
        self
    }

    /// Adds context entries in order (after the ones already there).
    #[must_use]
    pub(crate) fn with_context_entries(
        mut self,
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.context.extend(entries);
        self
    }

    /// The wire error kind, sent as `mdcserrorkind`.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message, sent as `mdcserrormessage`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The key/value context in the order it was added, sent as
    /// `mdcserrorcontext` (`k=v,k=v`).
    pub fn context_entries(&self) -> &[(String, String)] {
        &self.context
    }

    /// Whether the message should be redelivered and tried again.
    pub fn is_retryable(&self) -> bool {
        self.retry == Retry::Retryable
    }
}

/// Turns any `Result` whose error displays into a [`HandlerError`] of a given
/// kind in one call; the error's `Display` becomes the message.
///
/// ```
/// use microdcs::{ErrorKind, HandlerError, ResultExt};
///
/// fn parse(text: &str) -> Result<u32, HandlerError> {
///     let n = text.parse::<u32>().terminal(ErrorKind::PayloadInvalid)?;
///     Ok(n)
/// }
/// let e = parse("x").unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::PayloadInvalid);
/// assert!(!e.is_retryable());
/// ```
pub trait ResultExt<T> {
    /// A terminal [`HandlerError`] of `kind` (see [`HandlerError::terminal`]).
    ///
    /// # Errors
    ///
    /// The error of `self`, as a terminal [`HandlerError`].
    fn terminal(self, kind: ErrorKind) -> Result<T, HandlerError>;

    /// A retryable [`HandlerError`] of `kind` (see
    /// [`HandlerError::retryable`]).
    ///
    /// # Errors
    ///
    /// The error of `self`, as a retryable [`HandlerError`].
    fn retryable(self, kind: ErrorKind) -> Result<T, HandlerError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn terminal(self, kind: ErrorKind) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::terminal(kind, e.to_string()))
    }

    fn retryable(self, kind: ErrorKind) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::retryable(kind, e.to_string()))
    }
}

/// Whether a Redis failure is unavailability (connection refused or dropped,
/// timeout, loading, failover, cluster redirects): worth trying again. A
/// refused command (a script error, a wrong type, a permission) is not: the
/// same message would fail the same way forever.
pub(crate) fn redis_is_retryable(e: &redis::RedisError) -> bool {
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

    #[test]
    fn constructors_and_accessors_agree() {
        let e = HandlerError::retryable(ErrorKind::ServiceUnavailable, "down")
            .context("a", "1")
            .context("b", "2");
        assert_eq!(e.kind(), ErrorKind::ServiceUnavailable);
        assert_eq!(e.message(), "down");
        assert!(e.is_retryable());
        assert_eq!(
            e.context_entries(),
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(e.to_string(), "SERVICE_UNAVAILABLE: down");
        let t: Result<(), HandlerError> = Err::<(), _>("nope").terminal(ErrorKind::StateInvalid);
        let t = t.unwrap_err();
        assert!(!t.is_retryable());
        assert_eq!(t.message(), "nope");
        let r = Err::<(), _>("later")
            .retryable(ErrorKind::Timeout)
            .unwrap_err();
        assert!(r.is_retryable());
        assert_eq!(r.kind(), ErrorKind::Timeout);
    }
}
