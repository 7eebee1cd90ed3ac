//! What can go wrong while the engine handles an entry, and whether trying
//! again can help.

use crate::error::{redis_is_retryable, ErrorKind, HandlerError};
use crate::jobs::store::StoreError;
use std::time::Duration;

/// Engine failures (logged; the entry stays pending and is retried, up to
/// [`EngineSettings::max_attempts`](super::EngineSettings::max_attempts)).
///
/// Redis refusing a request, a corrupt execution state and a command that
/// can never be sent as it is are terminal ([`HandlerError::retryable`]
/// false); everything else is worth another attempt.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored execution state cannot be read.
    #[error("execution state of job '{job}' in scope '{scope}': {reason}")]
    Corrupt {
        /// Scope.
        scope: String,
        /// Job.
        job: String,
        /// What is wrong.
        reason: String,
    },
    /// A value the engine writes (an execution state, a work item, a job
    /// response) could not be encoded as JSON.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    /// A progress event's payload could not be encoded.
    #[error("{0}")]
    Progress(String),
    /// A job's execution state changed under every one of the engine's
    /// compare-and-swap attempts.
    #[error("job '{job}' changed concurrently too often")]
    Contended {
        /// The job.
        job: String,
    },
    /// No `equipment` processor is bound
    /// ([`Engine::equipment_processor`](super::Engine::equipment_processor)).
    #[error("no equipment processor is bound")]
    NoEmitter,
    /// The command's processor or transport failed to take it; its
    /// [`HandlerError::retryable`] says whether another attempt can help.
    #[error("{0}")]
    Emit(HandlerError),
    /// The transport did not take the command in time (back pressure).
    #[error("command '{command_id}' not handed to the transport within {after:?}")]
    SendTimeout {
        /// The command.
        command_id: String,
        /// How long it waited.
        after: Duration,
    },
    /// A hand-written processor's shaper refused the command (it is a
    /// function of the command: it refuses it every time).
    #[error("its processor cannot shape it: {0}")]
    Unshapeable(String),
    /// The command's parameters cannot be encoded as its payload.
    #[error("{0}")]
    Payload(String),
    /// An engine task ended abnormally (panicked or was cancelled).
    #[error("engine task failed: {0}")]
    Task(String),
}

impl EngineError {
    /// Why trying again cannot help, if it cannot: a command the transport
    /// or its processor refuses, or a command Redis refuses (a script
    /// error, a wrong type: the same request fails the same way forever).
    /// `None` for unavailability, which is worth another attempt.
    pub(super) fn terminal_reason(&self) -> Option<String> {
        match self {
            EngineError::Emit(e) if !e.is_retryable() => Some(self.to_string()),
            EngineError::Unshapeable(_) | EngineError::Payload(_) => Some(self.to_string()),
            EngineError::Redis(e) | EngineError::Store(StoreError::Unavailable(e))
                if !redis_is_retryable(e) =>
            {
                Some(format!("redis refused: {e}"))
            }
            EngineError::Corrupt { .. } => Some(self.to_string()),
            _ => None,
        }
    }
}

impl From<EngineError> for HandlerError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Redis(e) => e.into(),
            EngineError::Store(e) => e.into(),
            e @ EngineError::Corrupt { .. } => {
                HandlerError::terminal(ErrorKind::InternalLogicError, e.to_string())
            }
            e @ (EngineError::Unshapeable(_) | EngineError::Payload(_)) => {
                HandlerError::terminal(ErrorKind::PropertyInvalid, e.to_string())
            }
            EngineError::Emit(ref h) if !h.is_retryable() => {
                HandlerError::terminal(ErrorKind::PropertyInvalid, e.to_string())
            }
            e @ (EngineError::Encode(_)
            | EngineError::Progress(_)
            | EngineError::Contended { .. }
            | EngineError::NoEmitter
            | EngineError::Emit(_)
            | EngineError::SendTimeout { .. }
            | EngineError::Task(_)) => {
                HandlerError::retryable(ErrorKind::ServiceUnavailable, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_send_that_can_never_succeed_is_terminal() {
        let refused =
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "wrong type"));
        assert!(!redis_is_retryable(&refused));
        assert!(EngineError::Redis(refused)
            .terminal_reason()
            .is_some_and(|r| r.contains("refused")));
        let gone = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "down",
        ));
        assert!(redis_is_retryable(&gone));
        assert_eq!(EngineError::Redis(gone).terminal_reason(), None);
        assert_eq!(
            EngineError::Unshapeable("no torque".into())
                .terminal_reason()
                .as_deref(),
            Some("its processor cannot shape it: no torque")
        );
        assert!(EngineError::Payload("not JSON".into())
            .terminal_reason()
            .is_some());
        assert_eq!(EngineError::NoEmitter.terminal_reason(), None);
        let timeout = EngineError::SendTimeout {
            command_id: "s/j/a/1".into(),
            after: Duration::from_secs(5),
        };
        assert_eq!(timeout.terminal_reason(), None);
        assert_eq!(
            timeout.to_string(),
            "command 's/j/a/1' not handed to the transport within 5s"
        );
        // The transport's own classification decides for a publish.
        use crate::transport::TransportError;
        let invalid: HandlerError = TransportError::Invalid {
            topic: "a/+/b".into(),
            reason: "wildcard".into(),
        }
        .into();
        assert!(!invalid.is_retryable());
        let text = invalid.to_string();
        let refused = EngineError::Emit(invalid);
        assert_eq!(refused.terminal_reason(), Some(text));
        assert!(!HandlerError::from(refused).is_retryable());
        let closed: HandlerError = TransportError::Closed("mqtt".into()).into();
        assert!(closed.is_retryable());
        let closed = EngineError::Emit(closed);
        assert_eq!(closed.terminal_reason(), None);
        assert!(HandlerError::from(closed).is_retryable());
        // As a handler error (deliver): terminal stays terminal, and
        // what is worth another attempt says so.
        assert!(!HandlerError::from(EngineError::Unshapeable("x".into())).is_retryable());
        assert!(HandlerError::from(EngineError::Contended { job: "j".into() }).is_retryable());
    }
}
