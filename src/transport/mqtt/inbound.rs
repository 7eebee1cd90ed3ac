//! From a received PUBLISH to its acknowledgement: checks (expiry, size),
//! decoding, pending requests, routing to a processor, and the attempts at
//! it through the dedupe layer, as [`Retries`] decides.

use super::disposition::{Disposition, Retries};
use super::session::jitter;
use super::{read, MqttTransport, Route};
use crate::binding::mqtt::{self as mb, Inbound, Rejected, ReplyTo};
use crate::dedupe::{guarded, Delivery, StoredReply};
use crate::error::{ErrorKind, HandlerError};
use bytes::Bytes;
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
        // The broker counts the Message Expiry Interval down while it holds
        // the message; we count the time it waited in our queue.
        let expiry = p
            .properties
            .as_ref()
            .and_then(|pr| pr.message_expiry_interval);
        if let Some(secs) = expiry {
            if received_at.elapsed() >= Duration::from_secs(u64::from(secs)) {
                let partial = mb::decode(&topic, Bytes::new(), p.properties.as_ref())
                    .map(|i| i.event)
                    .unwrap_or_else(|r| r.partial);
                let rejected = Rejected {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "the message expired ({secs} s Message Expiry Interval) while it waited to be processed"
                    ),
                    partial,
                    reply_to: reply_to_of(p.properties.as_ref()),
                };
                self.dead_letter(&p, &topic, &rejected, None, &[]).await;
                return self.ack(&p).await;
            }
        }
        if p.payload.len() > self.settings.max_payload_size {
            let partial = mb::decode(&topic, Bytes::new(), p.properties.as_ref())
                .map(|i| i.event)
                .unwrap_or_else(|r| r.partial);
            let rejected = Rejected {
                kind: ErrorKind::ResourceExhausted,
                message: format!(
                    "message of {} bytes exceeds the maximum payload size of {} bytes",
                    p.payload.len(),
                    self.settings.max_payload_size
                ),
                partial,
                reply_to: reply_to_of(p.properties.as_ref()),
            };
            self.dead_letter(&p, &topic, &rejected, None, &[]).await;
            return self.ack(&p).await;
        }
        let inbound = match mb::decode(&topic, p.payload.clone(), p.properties.as_ref()) {
            Ok(i) => i,
            Err(r) => {
                self.dead_letter(&p, &topic, &r, None, &[]).await;
                return self.ack(&p).await;
            }
        };
        // A reply to a request this instance is waiting for?
        let inbound = match self.complete_pending(inbound) {
            Some(i) => i,
            None => return self.ack(&p).await,
        };
        let Some(route) = self.route_for(&topic, &inbound.event.ty) else {
            let r = rejection(
                &inbound,
                ErrorKind::NoMatchingSubscribers,
                format!(
                    "no processor handles type '{}' on topic '{topic}'",
                    inbound.event.ty
                ),
            );
            self.dead_letter(&p, &topic, &r, None, &[]).await;
            return self.ack(&p).await;
        };
        if !route.processor.handles(&inbound.event.ty) {
            let r = rejection(
                &inbound,
                ErrorKind::UnknownPayloadType,
                format!(
                    "processor '{}' has no handler for type '{}'",
                    route.processor.name(),
                    inbound.event.ty
                ),
            );
            self.dead_letter(&p, &topic, &r, Some(route.processor.name()), &[])
                .await;
            return self.ack(&p).await;
        }
        if inbound.event.is_expired(crate::clock::now()) {
            let r = rejection(
                &inbound,
                ErrorKind::Timeout,
                "the event's expirytime has passed".into(),
            );
            self.dead_letter(&p, &topic, &r, Some(route.processor.name()), &[])
                .await;
            return self.ack(&p).await;
        }
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
        );
        if self
            .process_routed(&route, &inbound, &p)
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
    async fn process_routed(&self, route: &Route, inbound: &Inbound, original: &Publish) -> bool {
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
                    self.metrics.processed();
                    return true;
                }
                Disposition::Duplicate(stored) => {
                    debug!(id = %ev.id, source = %ev.source, replayed = stored.is_some(), "duplicate acknowledged without processing");
                    self.metrics.duplicates();
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
                        self.metrics.error(error.kind);
                        warn!(processor = route.processor.name(), id = %ev.id, ty = %ev.ty, correlation_id = ?ev.correlationid.as_ref().map(|c| c.as_str().to_owned()), error = %error, "retryable failure; will retry");
                        self.send_error_reply(ev, inbound.reply_to.as_ref(), &error)
                            .await;
                    }
                    self.metrics.retries();
                    delay
                }
                Disposition::DeadLetter(e) => {
                    let r = Rejected {
                        kind: e.kind,
                        message: e.message,
                        partial: ev.clone(),
                        reply_to: inbound.reply_to.clone(),
                    };
                    self.dead_letter(
                        original,
                        &inbound.topic,
                        &r,
                        Some(route.processor.name()),
                        &e.context,
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
