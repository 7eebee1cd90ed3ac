//! What to do with a message after one attempt at it: a pure decision, no
//! I/O, so every path (processed, duplicate, busy, retry, give up, terminal
//! failure) is tested without a broker.
//!
//! Both transports' inbound paths (MQTT's `inbound`, MessagePack-RPC's
//! `calls`) make an attempt through the dedupe layer, hand its result to
//! [`Retries::decide`] and perform the [`Disposition`] it gets: acknowledge,
//! replay a stored reply, wait and try again, or dead-letter. One decision
//! for both, so a message is retried and given up on the same way whichever
//! way it came.

use crate::dedupe::{Guarded, StoredReply};
use crate::error::HandlerError;
use std::time::Duration;

/// The first wait before trying a message again.
const FIRST_DELAY: Duration = Duration::from_millis(50);

/// The longest wait between two attempts at one message.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// What the inbound loop does next with a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Disposition {
    /// Processed: acknowledge.
    Ack,
    /// Processed before: acknowledge without running the handler, and
    /// answer with the reply the first delivery got (if it had one).
    Duplicate(Option<StoredReply>),
    /// Another delivery is processing the same message right now: wait
    /// (with jitter) and ask again; nothing is acknowledged.
    WaitBusy {
        /// How long to wait (before jitter).
        delay: Duration,
    },
    /// A retryable failure: wait (with jitter) and try again; the message
    /// stays unacknowledged.
    Retry {
        /// The failure.
        error: HandlerError,
        /// Whether this is the first failure of the message: it is logged,
        /// counted and answered with an error reply once, not at every
        /// attempt.
        first: bool,
        /// How long to wait (before jitter).
        delay: Duration,
    },
    /// A terminal failure, or the last of `max_attempts` retryable ones:
    /// error reply, dead letter, acknowledge. Its error says why, with the
    /// history of the attempts when it gave up.
    DeadLetter(HandlerError),
}

/// The retry state of one message across its attempts.
#[derive(Debug)]
pub(crate) struct Retries {
    max_attempts: usize,
    delay: Duration,
    replied_error: bool,
    history: Vec<String>,
}

impl Retries {
    /// A message not tried yet, dead-lettered after `max_attempts`
    /// retryable failures (at least one).
    pub(crate) fn new(max_attempts: u32) -> Self {
        Retries {
            max_attempts: max_attempts.max(1) as usize,
            delay: FIRST_DELAY,
            replied_error: false,
            history: Vec::new(),
        }
    }

    /// Decides what an attempt's result means for the message.
    pub(crate) fn decide(&mut self, attempt: Result<Guarded, HandlerError>) -> Disposition {
        match attempt {
            Ok(Guarded::Done) => Disposition::Ack,
            Ok(Guarded::Duplicate(stored)) => Disposition::Duplicate(stored),
            Ok(Guarded::Busy) => Disposition::WaitBusy {
                delay: self.next_delay(),
            },
            Err(e) if e.is_retryable() => {
                self.history.push(e.to_string());
                if self.history.len() >= self.max_attempts {
                    return Disposition::DeadLetter(self.give_up(&e));
                }
                let first = !self.replied_error;
                self.replied_error = true;
                Disposition::Retry {
                    error: e,
                    first,
                    delay: self.next_delay(),
                }
            }
            Err(e) => Disposition::DeadLetter(e),
        }
    }

    /// The current delay; doubles the next one, up to [`MAX_DELAY`].
    fn next_delay(&mut self) -> Duration {
        let d = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        d
    }

    /// The dead letter's error after the last attempt failed with `last`.
    fn give_up(&self, last: &HandlerError) -> HandlerError {
        let attempts = self.history.len();
        HandlerError::terminal(
            last.kind(),
            format!(
                "gave up after {attempts} attempts; last error: {}",
                last.message()
            ),
        )
        .with_context_entries(last.context_entries().iter().cloned())
        .context("attempts", attempts.to_string())
        .context("history", summarise(&self.history))
    }
}

/// The distinct errors of a message's attempts, oldest first, for its
/// dead letter.
fn summarise(history: &[String]) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for h in history {
        if !distinct.contains(&h.as_str()) {
            distinct.push(h);
        }
    }
    distinct.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn unavailable(msg: &str) -> HandlerError {
        HandlerError::retryable(ErrorKind::ServiceUnavailable, msg)
    }

    fn delay_of(d: &Disposition) -> Duration {
        match d {
            Disposition::WaitBusy { delay } | Disposition::Retry { delay, .. } => *delay,
            other => panic!("no delay in {other:?}"),
        }
    }

    #[test]
    fn processed_message_is_acknowledged() {
        assert_eq!(Retries::new(3).decide(Ok(Guarded::Done)), Disposition::Ack);
    }

    #[test]
    fn duplicate_replays_the_stored_reply() {
        let stored = StoredReply {
            id: "r-1".into(),
            dataschema: None,
            datacontenttype: None,
            data: None,
        };
        assert_eq!(
            Retries::new(3).decide(Ok(Guarded::Duplicate(Some(stored.clone())))),
            Disposition::Duplicate(Some(stored))
        );
        assert_eq!(
            Retries::new(3).decide(Ok(Guarded::Duplicate(None))),
            Disposition::Duplicate(None)
        );
    }

    #[test]
    fn busy_waits_longer_each_time_and_never_gives_up() {
        let mut r = Retries::new(1);
        let delays: Vec<_> = (0..10)
            .map(|_| delay_of(&r.decide(Ok(Guarded::Busy))))
            .collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[2], Duration::from_millis(200));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn retryable_failure_is_answered_once_then_retried() {
        let mut r = Retries::new(5);
        let first = r.decide(Err(unavailable("redis down")));
        assert!(
            matches!(first, Disposition::Retry { first: true, .. }),
            "{first:?}"
        );
        let second = r.decide(Err(unavailable("redis down")));
        assert!(
            matches!(second, Disposition::Retry { first: false, .. }),
            "{second:?}"
        );
        assert!(delay_of(&second) > delay_of(&first));
    }

    #[test]
    fn busy_and_retries_share_one_backoff() {
        let mut r = Retries::new(5);
        assert_eq!(
            delay_of(&r.decide(Ok(Guarded::Busy))),
            Duration::from_millis(50)
        );
        assert_eq!(
            delay_of(&r.decide(Err(unavailable("x")))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn retryable_failures_are_dead_lettered_after_max_attempts_with_history() {
        let mut r = Retries::new(3);
        assert!(matches!(
            r.decide(Err(unavailable("a"))),
            Disposition::Retry { .. }
        ));
        assert!(matches!(
            r.decide(Err(unavailable("b"))),
            Disposition::Retry { .. }
        ));
        let last = unavailable("a").context("job", "j-1");
        let Disposition::DeadLetter(e) = r.decide(Err(last)) else {
            panic!("expected a dead letter");
        };
        assert_eq!(e.kind(), ErrorKind::ServiceUnavailable);
        assert!(!e.is_retryable());
        assert_eq!(e.message(), "gave up after 3 attempts; last error: a");
        let ctx = |k: &str| {
            e.context_entries()
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(ctx("job").as_deref(), Some("j-1"));
        assert_eq!(ctx("attempts").as_deref(), Some("3"));
        let history = ctx("history").unwrap();
        assert_eq!(history.matches(" | ").count(), 1, "{history}");
        assert!(history.contains(&unavailable("b").to_string()), "{history}");
    }

    #[test]
    fn one_attempt_allowed_dead_letters_the_first_failure() {
        let mut r = Retries::new(0);
        assert!(matches!(
            r.decide(Err(unavailable("x"))),
            Disposition::DeadLetter(_)
        ));
    }

    #[test]
    fn terminal_failure_is_dead_lettered_as_it_is() {
        let e =
            HandlerError::terminal(ErrorKind::StateInvalid, "job is done").context("job", "j-2");
        assert_eq!(
            Retries::new(5).decide(Err(e.clone())),
            Disposition::DeadLetter(e)
        );
    }

    #[test]
    fn summary_keeps_distinct_errors_oldest_first() {
        let h: Vec<String> = ["a", "b", "a", "c", "b"].map(String::from).to_vec();
        assert_eq!(summarise(&h), "a | b | c");
    }
}
