//! Sending events from a processor, inside or outside a request.

use super::outcome::Emit;
use crate::binding::port::{Outgoing, Publisher};
use crate::binding::topics::{Direction, TopicBinding};
use crate::error::{ErrorKind, HandlerError};
use crate::CloudEvent;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Bound {
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) binding: TopicBinding,
}

pub(crate) struct EmitterInner {
    pub(crate) processor: String,
    pub(crate) direction: Direction,
    pub(crate) bound: RwLock<Vec<Bound>>,
    pub(crate) source: RwLock<String>,
    pub(crate) events_qos: RwLock<u8>,
}

/// Messages ready to publish, each with the transport that sends it.
type Routed = Vec<(Arc<dyn Publisher>, Outgoing)>;

/// Sends a processor's events through every transport the processor is bound
/// to. Cheap to clone; take it as a handler argument, or get it from
/// [`Processor::emitter`](crate::Processor::emitter) for timers and
/// background tasks.
#[derive(Clone)]
pub struct Emitter {
    pub(crate) inner: Arc<EmitterInner>,
}

impl Emitter {
    pub(crate) fn new(processor: &str, direction: Direction) -> Self {
        Emitter {
            inner: Arc::new(EmitterInner {
                processor: processor.to_owned(),
                direction,
                bound: RwLock::new(Vec::new()),
                source: RwLock::new("microdcs".to_owned()),
                events_qos: RwLock::new(1),
            }),
        }
    }

    pub(crate) fn bind(&self, b: Bound) {
        write(&self.inner.bound).push(b);
    }

    pub(crate) fn configure(&self, source: &str, events_qos: u8) {
        *write(&self.inner.source) = source.to_owned();
        *write(&self.inner.events_qos) = events_qos;
    }

    /// The configured CloudEvent `source`.
    pub fn source(&self) -> String {
        read(&self.inner.source).clone()
    }

    pub(crate) fn bindings(&self) -> Vec<Bound> {
        read(&self.inner.bound).clone()
    }

    /// Publishes `e` on every bound transport, to
    /// `{prefix}[/{subject}][/{discriminator}]/{intent}`.
    ///
    /// # Errors
    /// The processor's direction does not publish that intent (a northbound
    /// processor sends no `commands`), the payload could not be encoded, the
    /// processor is not bound to any transport, or a transport is closed.
    pub async fn emit(&self, e: Emit) -> Result<(), HandlerError> {
        for (publisher, msg) in self.prepare(e)? {
            publisher.publish(msg).await?;
        }
        Ok(())
    }

    /// Sends a request (usually a southbound command) on the first bound
    /// transport, with this instance's response topic, and waits for the
    /// reply carrying the same correlation. When no reply arrives within
    /// `timeout` the result is a `TIMEOUT` error: the expiration callback of
    /// the request is simply the `Err` arm.
    ///
    /// # Errors
    /// As [`Emitter::emit`], plus `TIMEOUT` when no reply came, and
    /// `CONFIGURATION_INVALID` when the binding has no response topic.
    pub async fn request(&self, e: Emit, timeout: Duration) -> Result<CloudEvent, HandlerError> {
        let Some((publisher, mut msg)) = self.prepare(e)?.into_iter().next() else {
            return Err(self.unbound());
        };
        let binding = self
            .bindings()
            .into_iter()
            .next()
            .map(|b| b.binding)
            .ok_or_else(|| self.unbound())?;
        let response = binding.response_topic(publisher.instance_id()).ok_or_else(|| {
            HandlerError::terminal(
                ErrorKind::ConfigurationInvalid,
                format!("processor '{}' has no response topic configured, so it cannot send requests", self.inner.processor),
            )
        })?;
        msg.response_topic = Some(response);
        if msg.event.correlationid.is_none() {
            msg.event.correlationid = Some(crate::CorrelationId::new_uuid());
        }
        Ok(publisher.request(msg, timeout).await?)
    }

    /// Sends a request without waiting for it: `on_done` is called later
    /// with the reply, or with the `TIMEOUT` error when none arrived within
    /// `timeout` (the expiration callback).
    pub fn send_request<F>(&self, e: Emit, timeout: Duration, on_done: F)
    where
        F: FnOnce(Result<CloudEvent, HandlerError>) + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move { on_done(this.request(e, timeout).await) });
    }

    fn unbound(&self) -> HandlerError {
        HandlerError::retryable(
            ErrorKind::ServiceUnavailable,
            format!(
                "processor '{}' is not bound to any transport",
                self.inner.processor
            ),
        )
    }

    fn prepare(&self, e: Emit) -> Result<Routed, HandlerError> {
        if !self.inner.direction.publishes(e.intent) {
            return Err(HandlerError::terminal(
                ErrorKind::InternalLogicError,
                format!(
                    "a {:?} processor ('{}') does not publish '{}'",
                    self.inner.direction, self.inner.processor, e.intent
                ),
            ));
        }
        let mut event = e.event.map_err(|m| {
            HandlerError::terminal(
                ErrorKind::InternalLogicError,
                format!("cannot encode event: {m}"),
            )
        })?;
        if event.source.is_empty() {
            event.source = self.source();
        }
        let qos = e.qos.unwrap_or_else(|| *read(&self.inner.events_qos));
        let bound = self.bindings();
        if bound.is_empty() {
            return Err(self.unbound());
        }
        Ok(bound
            .into_iter()
            .map(|b| {
                let topic = b.binding.publish_topic(event.subject.as_deref(), e.intent);
                let mut msg = Outgoing::new(topic, event.clone());
                msg.qos = qos;
                msg.retain = e.retain;
                if e.shared_response {
                    msg.response_topic = b.binding.shared_response_topic.clone();
                }
                (b.publisher, msg)
            })
            .collect())
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
