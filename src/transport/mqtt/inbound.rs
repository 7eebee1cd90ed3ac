//! From a received PUBLISH to its acknowledgement: checks (expiry, size),
//! decoding, pending requests, routing to a processor, and the attempts at
//! it through the dedupe layer, as [`Retries`] decides.

use super::session::jitter;
use super::{read, MqttTransport, Route};
use crate::binding::mqtt::{self as mb, Inbound, Rejected, ReplyTo};
use crate::dedupe::{guarded, Delivery, StoredReply};
use crate::error::{ErrorKind, HandlerError};
use crate::processor::Processor;
use crate::transport::disposition::{Disposition, Retries};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn, Instrument};

/// A received PUBLISH and when it arrived.
pub(super) type Received = (Publish, tokio::time::Instant);

impl MqttTransport {
    /// Takes received messages one by one and runs each in its own task,
    /// at most `max_inflight` at a time (the broker's Receive Maximum
    /// keeps it from sending more).
    pub(super) async fn dispatch_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Received>,
        permits: Arc<Semaphore>,
    ) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let p = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let permit = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.process(p.0, p.1).await;
                drop(permit);
                this.signals.finished();
            });
        }
    }

    async fn ack(&self, p: &Publish) {
        if let Err(e) = self.client.ack(p).await {
            warn!(transport = %self.name, error = %e, "cannot acknowledge; the broker will redeliver");
        }
    }

    /// Handles one received message from decode to acknowledgement.
    pub(super) async fn process(&self, p: Publish, received_at: tokio::time::Instant) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let inbound = match admit(
            &topic,
            &p,
            received_at.elapsed(),
            self.settings.max_payload_size,
        ) {
            Ok(i) => i,
            Err(r) => {
                self.dead_letter(&p, &topic, &r, None, &[]).await;
                return self.ack(&p).await;
            }
        };
        // A reply to a request this instance is waiting for?
        let Some(inbound) = self.complete_pending(inbound) else {
            return self.ack(&p).await;
        };
        let route = self.route_for(&topic, &inbound.event.ty);
        let refused = refuse(
            &inbound,
            route.as_ref().map(|r| &r.processor),
            crate::runtime::clock::now(),
        );
        let route = match (refused, route) {
            (None, Some(route)) => route,
            (refused, route) => {
                if let Some(r) = refused {
                    let name = route.as_ref().map(|r| r.processor.name());
                    self.dead_letter(&p, &topic, &r, name, &[]).await;
                }
                return self.ack(&p).await;
            }
        };
        // Every log line of the handler (job manager, engine) carries the
        // message's identity: one span per processed message.
        let span = tracing::info_span!(
            "message",
            processor = route.processor.name(),
            id = %inbound.event.id,
            ty = %inbound.event.ty,
            subject = inbound.event.subject.as_deref().unwrap_or(""),
            correlation_id = inbound
                .event
                .correlationid
                .as_ref()
                .map_or("", |c| c.as_str()),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // With traces on: the sender's trace context is the parent.
        crate::telemetry::message_span_started(&span, &topic, &inbound.event);
        if self
            .process_routed(&route, &inbound, &p, received_at)
            .instrument(span)
            .await
        {
            self.ack(&p).await;
        }
    }

    /// Runs the handler through the dedupe layer and performs what
    /// [`Retries`] decides about each attempt. Returns whether to ack.
    ///
    /// A retryable failure is answered once with its error, then retried
    /// with backoff while the message stays unacknowledged; after
    /// `max_attempts` failed attempts it is dead-lettered with the history
    /// of its errors and acknowledged: nothing is retried forever.
    async fn process_routed(
        &self,
        route: &Route,
        inbound: &Inbound,
        original: &Publish,
        received_at: tokio::time::Instant,
    ) -> bool {
        let ev = &inbound.event;
        let dedupe = if route.processor.dedupes() {
            read(&self.dedupe).clone()
        } else {
            None
        };
        let token = uuid::Uuid::new_v4().to_string();
        let delivery = Delivery {
            source: &ev.source,
            id: &ev.id,
            token: &token,
        };
        let mut shutdown = self.shutdown.subscribe();
        let mut retries = Retries::new(self.settings.max_attempts);
        loop {
            let attempt = guarded(dedupe.as_ref(), delivery, || self.handle(route, inbound)).await;
            let delay = match retries.decide(attempt) {
                Disposition::Ack => {
                    let took = received_at.elapsed().as_secs_f64();
                    self.metrics
                        .record_processed(route.processor.name(), &ev.ty, took);
                    return true;
                }
                Disposition::Duplicate(stored) => {
                    debug!(id = %ev.id, source = %ev.source, replayed = stored.is_some(), "duplicate acknowledged without processing");
                    let took = received_at.elapsed().as_secs_f64();
                    self.metrics
                        .record_duplicate(route.processor.name(), &ev.ty, took);
                    if let (Some(stored), Some(to)) = (stored, &inbound.reply_to) {
                        self.replay_reply(ev, stored, to).await;
                    }
                    return true;
                }
                // The same message is being processed by another delivery
                // right now: wait for its outcome.
                Disposition::WaitBusy { delay } => delay,
                Disposition::Retry {
                    error,
                    first,
                    delay,
                } => {
                    if first {
                        // Tell the requester now; the message stays
                        // unacknowledged and is retried.
                        self.metrics
                            .record_error(route.processor.name(), &ev.ty, error.kind());
                        crate::telemetry::span_failed(error.kind().as_str(), error.message());
                        warn!(processor = route.processor.name(), id = %ev.id, ty = %ev.ty, correlation_id = ?ev.correlationid.as_ref().map(|c| c.as_str().to_owned()), error = %error, "retryable failure; will retry");
                        self.send_error_reply(ev, inbound.reply_to.as_ref(), &error)
                            .await;
                    }
                    self.metrics.retries();
                    delay
                }
                Disposition::DeadLetter(e) => {
                    crate::telemetry::span_failed(e.kind().as_str(), e.message());
                    let r = Rejected {
                        kind: e.kind(),
                        message: e.message().to_owned(),
                        partial: ev.clone(),
                        reply_to: inbound.reply_to.clone(),
                    };
                    self.dead_letter(
                        original,
                        &inbound.topic,
                        &r,
                        Some(route.processor.name()),
                        e.context_entries(),
                    )
                    .await;
                    return true;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(jitter(delay)) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
        }
    }

    /// One attempt: runs the handler, then sends its reply and events.
    /// Returns the reply to keep for duplicates.
    async fn handle(
        &self,
        route: &Route,
        inbound: &Inbound,
    ) -> Result<Option<StoredReply>, HandlerError> {
        let req = &inbound.event;
        let outcome = route
            .processor
            .dispatch(req.clone(), &inbound.topic)
            .await?;
        let kept = match outcome.reply {
            Some(body) => Some(self.reply(req, body, inbound.reply_to.as_ref()).await?),
            None => None,
        };
        for e in outcome.events {
            let e = e.map_event(|ev| {
                if ev.correlationid.is_none() {
                    ev.correlationid = req.correlationid.clone();
                }
                if ev.causationid.is_none() {
                    ev.causationid = Some(req.id.clone());
                }
            });
            route.processor.emitter().emit(e).await?;
        }
        Ok(kept)
    }

    fn complete_pending(&self, inbound: Inbound) -> Option<Inbound> {
        let Some(key) = inbound
            .event
            .correlationid
            .as_ref()
            .map(|c| c.as_bytes().clone())
        else {
            return Some(inbound);
        };
        let is_response_topic = read(&self.routes).iter().any(|r| {
            r.binding
                .response_topic(&self.settings.instance_id)
                .as_deref()
                == Some(inbound.topic.as_str())
        });
        if !is_response_topic {
            return Some(inbound);
        }
        let Inbound {
            topic,
            event,
            reply_to,
        } = inbound;
        self.pending.complete(&key, event).map(|event| Inbound {
            topic,
            event,
            reply_to,
        })
    }

    /// `ty` as a metric label: itself when a processor of this transport
    /// handles it, else [`OTHER_TYPE`](crate::metrics::OTHER_TYPE), so what
    /// clients send cannot grow the label set.
    pub(super) fn type_label<'a>(&self, ty: &'a str) -> &'a str {
        if read(&self.routes).iter().any(|r| r.processor.handles(ty)) {
            ty
        } else {
            crate::metrics::OTHER_TYPE
        }
    }

    fn route_for(&self, topic: &str, ty: &str) -> Option<Arc<Route>> {
        let routes = read(&self.routes);
        let matching = routes.iter().filter(|r| {
            r.binding.matches(r.processor.direction(), topic)
                || r.binding
                    .response_topic(&self.settings.instance_id)
                    .as_deref()
                    == Some(topic)
        });
        // Several processors may share a prefix: prefer one that handles the type.
        let all: Vec<_> = matching.collect();
        all.iter()
            .find(|r| r.processor.handles(ty))
            .or(all.first())
            .map(|r| (*r).clone())
    }
}

/// Decodes a received PUBLISH that may be processed at all: one that did
/// not expire while it `waited` in our queue (the broker counts the Message
/// Expiry Interval down while it holds the message; we count the time in
/// ours) and is not larger than `max_payload`.
///
/// # Errors
/// Why it is rejected: `TIMEOUT`, `RESOURCE_EXHAUSTED` (both with the
/// attributes the properties carry), or what decoding found wrong.
fn admit(
    topic: &str,
    p: &Publish,
    waited: Duration,
    max_payload: usize,
) -> Result<Inbound, Box<Rejected>> {
    let props = p.properties.as_ref();
    let refused = |kind, message| Rejected {
        kind,
        message,
        partial: mb::decode(topic, Bytes::new(), props)
            .map(|i| i.event)
            .unwrap_or_else(|r| r.partial),
        reply_to: reply_to_of(props),
    };
    if let Some(secs) = props.and_then(|pr| pr.message_expiry_interval) {
        if waited >= Duration::from_secs(u64::from(secs)) {
            return Err(Box::new(refused(
                ErrorKind::Timeout,
                format!(
                    "the message expired ({secs} s Message Expiry Interval) while it waited to be processed"
                ),
            )));
        }
    }
    if p.payload.len() > max_payload {
        return Err(Box::new(refused(
            ErrorKind::ResourceExhausted,
            format!(
                "message of {} bytes exceeds the maximum payload size of {max_payload} bytes",
                p.payload.len(),
            ),
        )));
    }
    mb::decode(topic, p.payload.clone(), props)
}

/// Why a decoded message cannot go to the `processor` its topic and type
/// route it to (`None`: no processor matched), or `None` when it can: no
/// processor, no handler for its type, or an `expirytime` before `now`.
fn refuse(
    inbound: &Inbound,
    processor: Option<&Processor>,
    now: DateTime<Utc>,
) -> Option<Rejected> {
    let ty = &inbound.event.ty;
    let Some(processor) = processor else {
        return Some(rejection(
            inbound,
            ErrorKind::NoMatchingSubscribers,
            format!(
                "no processor handles type '{ty}' on topic '{}'",
                inbound.topic
            ),
        ));
    };
    if !processor.handles(ty) {
        return Some(rejection(
            inbound,
            ErrorKind::UnknownPayloadType,
            format!(
                "processor '{}' has no handler for type '{ty}'",
                processor.name()
            ),
        ));
    }
    if inbound.event.is_expired(now) {
        return Some(rejection(
            inbound,
            ErrorKind::Timeout,
            "the event's expirytime has passed".into(),
        ));
    }
    None
}

fn rejection(i: &Inbound, kind: ErrorKind, message: String) -> Rejected {
    Rejected {
        kind,
        message,
        partial: i.event.clone(),
        reply_to: i.reply_to.clone(),
    }
}

fn reply_to_of(p: Option<&PublishProperties>) -> Option<ReplyTo> {
    p.and_then(|p| {
        p.response_topic.clone().map(|topic| ReplyTo {
            topic,
            correlation_data: p.correlation_data.clone(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::CloudEvent;
    use rumqttc::v5::mqttbytes::QoS;

    const MAX: usize = 1024;

    fn publish(event: &CloudEvent, expiry: Option<u32>, payload: Option<Bytes>) -> Publish {
        let out = mb::encode(event, None);
        let mut props = out.properties;
        props.message_expiry_interval = expiry;
        props.response_topic = Some("mes/replies".into());
        Publish::new(
            "app/x/commands",
            QoS::AtLeastOnce,
            payload.unwrap_or(out.payload),
            Some(props),
        )
    }

    fn command() -> CloudEvent {
        let mut e = CloudEvent::new("t.cmd.v1", "mes");
        e.data = Some(Bytes::from_static(b"{}"));
        e.datacontenttype = Some("application/json".into());
        e
    }

    #[test]
    fn fresh_message_of_allowed_size_is_decoded() {
        let e = command();
        let p = publish(&e, Some(60), None);
        let i = admit("app/x/commands", &p, Duration::from_secs(1), MAX).unwrap();
        assert_eq!(i.event.id, e.id);
        assert_eq!(i.topic, "app/x/commands");
        assert_eq!(i.reply_to.unwrap().topic, "mes/replies");
    }

    #[test]
    fn message_that_expired_in_our_queue_is_a_timeout_with_its_reply_to() {
        let e = command();
        let p = publish(&e, Some(2), None);
        let r = admit("app/x/commands", &p, Duration::from_secs(2), MAX).unwrap_err();
        assert_eq!(r.kind, ErrorKind::Timeout);
        assert!(
            r.message.contains("2 s Message Expiry Interval"),
            "{}",
            r.message
        );
        assert_eq!(r.partial.id, e.id);
        assert_eq!(r.reply_to.unwrap().topic, "mes/replies");
    }

    #[test]
    fn oversized_message_is_resource_exhausted() {
        let e = command();
        let p = publish(&e, None, Some(Bytes::from(vec![b' '; MAX + 1])));
        let r = admit("app/x/commands", &p, Duration::ZERO, MAX).unwrap_err();
        assert_eq!(r.kind, ErrorKind::ResourceExhausted);
        assert!(r.message.contains(&format!("{}", MAX + 1)), "{}", r.message);
        assert_eq!(r.partial.ty, "t.cmd.v1");
    }

    #[test]
    fn undecodable_message_is_rejected_by_the_binding() {
        let p = Publish::new("app/x/commands", QoS::AtLeastOnce, "x", None);
        assert!(admit("app/x/commands", &p, Duration::ZERO, MAX).is_err());
    }

    fn inbound(event: CloudEvent) -> Inbound {
        Inbound {
            topic: "app/x/commands".into(),
            event,
            reply_to: None,
        }
    }

    async fn ignore(_: CloudEvent) {}

    #[test]
    fn message_without_processor_has_no_matching_subscribers() {
        let r = refuse(&inbound(command()), None, crate::runtime::clock::now()).unwrap();
        assert_eq!(r.kind, ErrorKind::NoMatchingSubscribers);
        assert!(r.message.contains("app/x/commands"), "{}", r.message);
    }

    #[test]
    fn type_without_handler_is_an_unknown_payload_type() {
        let p = Processor::northbound("p").build();
        let r = refuse(&inbound(command()), Some(&p), crate::runtime::clock::now()).unwrap();
        assert_eq!(r.kind, ErrorKind::UnknownPayloadType);
        assert!(r.message.contains("'p'"), "{}", r.message);
    }

    #[test]
    fn expired_event_is_a_timeout_and_a_live_one_passes() {
        let p = Processor::northbound("p").handle(ignore).build();
        let now = crate::runtime::clock::now();
        let mut e = command();
        assert!(refuse(&inbound(e.clone()), Some(&p), now).is_none());
        e.expirytime = Some(now - chrono::Duration::seconds(1));
        let r = refuse(&inbound(e), Some(&p), now).unwrap();
        assert_eq!(r.kind, ErrorKind::Timeout);
    }
}
