//! The publishing port: what a processor's [`Emitter`](crate::Emitter) needs
//! from a transport, and the failures a transport reports.
//!
//! It lives in the binding layer, below both the transport (which
//! implements [`Publisher`]) and the processors (which call it), so neither
//! depends on the other through it.

use crate::envelope::CloudEvent;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, as returned by the object-safe transport traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Destination topic.
    pub topic: String,
    /// The event (binary mode).
    pub event: CloudEvent,
    /// QoS 0 or 1.
    pub qos: u8,
    /// Whether the broker keeps it as the topic's retained message.
    pub retain: bool,
    /// Correlation Data to send instead of the one derived from
    /// `correlationid` (replies echo the request's bytes).
    pub correlation_data: Option<Bytes>,
    /// Response Topic to ask the receiver to reply to.
    pub response_topic: Option<String>,
}

impl Outgoing {
    /// A QoS 1, non-retained message.
    pub fn new(topic: impl Into<String>, event: CloudEvent) -> Self {
        Outgoing {
            topic: topic.into(),
            event,
            qos: 1,
            retain: false,
            correlation_data: None,
            response_topic: None,
        }
    }
}

/// Transport failures seen by publishers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The transport is shutting down or its connection task ended.
    #[error("transport '{0}' is closed")]
    Closed(String),
    /// A request got no reply in time.
    #[error("no reply to request {correlation} within {after:?}")]
    Timeout {
        /// The request's correlation id.
        correlation: String,
        /// How long we waited.
        after: Duration,
    },
    /// The message can never be sent as it is (a topic or string MQTT does
    /// not allow): terminal for that message, never retried.
    #[error("cannot publish to '{topic}': {reason}")]
    Invalid {
        /// Destination topic (with forbidden characters escaped).
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The transport could not queue the message (its connection task
    /// ended): may work later.
    #[error("cannot publish to '{topic}': {reason}")]
    Publish {
        /// Destination topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

impl TransportError {
    /// Whether trying again may help: only unavailability is retryable (a
    /// closed transport, a message that could not be queued); an invalid
    /// message or a request that got no reply is not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransportError::Closed(_) | TransportError::Publish { .. }
        )
    }
}

/// What an [`Emitter`](crate::Emitter) needs from a transport.
pub trait Publisher: Send + Sync + 'static {
    /// The transport's name (for logs and errors).
    fn name(&self) -> &str;

    /// Publishes one message. Resolves when the broker has it: after its
    /// PUBACK for QoS 1 (across reconnects: an unacknowledged publish is
    /// re-sent with its packet id), once written for QoS 0. So whoever
    /// acknowledges an input after publishing its effects acknowledges only
    /// what is durable. Waits (back-pressure) while the outgoing queue is
    /// full.
    ///
    /// # Errors
    /// [`TransportError::Invalid`] when the message can never be sent (a
    /// string or topic MQTT forbids, a PUBACK refusing it): terminal;
    /// [`TransportError::Closed`] / [`TransportError::Publish`] when the
    /// transport is gone: retryable.
    fn publish(&self, msg: Outgoing) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Publishes a request with `response_topic` set and waits for the reply
    /// carrying the same Correlation Data, at most `timeout`.
    fn request(
        &self,
        msg: Outgoing,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<CloudEvent, TransportError>>;

    /// This instance's identifier (used for response topics).
    fn instance_id(&self) -> &str;
}
