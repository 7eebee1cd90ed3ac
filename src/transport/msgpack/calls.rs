//! A call from its frame to its result: `publish` through routing by
//! `type`, the dedupe layer and [`Retries`] to the list of reply
//! CloudEvent maps, with the error replies and dead letters of wire
//! contract §6.

use super::event::{self, AsMqtt};
use super::value::Value;
use super::{read, MsgpackTransport};
use crate::binding::mqtt::Rejected;
use crate::binding::topics::{Direction, Intent};
use crate::dedupe::{guarded, Delivery, StoredReply};
use crate::envelope::CloudEvent;
use crate::error::{ErrorKind, HandlerError};
use crate::processor::Processor;
use crate::transport::disposition::{Disposition, Retries};
use crate::transport::replies::{failure, replayed, success};
use std::sync::Mutex;
use tracing::{debug, error, warn, Instrument};

impl MsgpackTransport {
    /// Runs the method a client called.
    ///
    /// # Errors
    /// The RPC error string: `Method '<name>' not found`, or parameters
    /// `publish` cannot take.
    pub(super) async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, String> {
        match method {
            "publish" => self.publish_call(params).await,
            // Called as a request rather than sent as a notification.
            "heartbeat" => Ok(Value::Nil),
            other => Err(format!("Method '{other}' not found")),
        }
    }

    async fn publish_call(&self, params: Vec<Value>) -> Result<Value, String> {
        let n = params.len();
        let mut it = params.into_iter();
        let (Some(map), metadata) = (it.next(), it.next()) else {
            return Err(
                "publish takes (cloudevent_map, transport_metadata|nil), got no parameters".into(),
            );
        };
        if n > 2 {
            return Err(format!(
                "publish takes (cloudevent_map, transport_metadata|nil), got {n} parameters"
            ));
        }
        if !matches!(map, Value::Map(_)) {
            return Err(format!(
                "publish: the CloudEvent must be a map, found {}",
                map.kind()
            ));
        }
        match metadata {
            None | Some(Value::Nil) | Some(Value::Map(_)) => {}
            Some(other) => {
                return Err(format!(
                    "publish: transport_metadata must be a map or nil, found {}",
                    other.kind()
                ))
            }
        }
        let replies = self.publish(map).await;
        Ok(Value::Array(replies.iter().map(event::to_map).collect()))
    }

    /// One published CloudEvent map: its replies (none when the handler
    /// gives none), or the error reply.
    async fn publish(&self, map: Value) -> Vec<CloudEvent> {
        let received_at = tokio::time::Instant::now();
        self.metrics.received();
        let (m, problem) = event::to_mqtt(map);
        if let Some((kind, message)) = problem {
            let partial = event::partial(&m);
            return self.reject(&m, kind, message, &partial, None, &[]);
        }
        let ev = match event::decode(&m) {
            Ok(e) => e,
            Err(r) => {
                let Rejected {
                    kind,
                    message,
                    partial,
                    ..
                } = *r;
                return self.reject(&m, kind, message, &partial, None, &[]);
            }
        };
        let Some(processor) = self.route(&ev.ty) else {
            let message = format!(
                "no processor bound to MessagePack-RPC transport '{}' handles type '{}'",
                self.name, ev.ty
            );
            return self.reject(
                &m,
                ErrorKind::NoMatchingSubscribers,
                message,
                &ev,
                None,
                &[],
            );
        };
        if ev.is_expired(crate::runtime::clock::now()) {
            let message = "the event's expirytime has passed".to_owned();
            return self.reject(&m, ErrorKind::Timeout, message, &ev, Some(&processor), &[]);
        }
        let span = tracing::info_span!(
            "message",
            transport = %self.name,
            processor = processor.name(),
            id = %ev.id,
            ty = %ev.ty,
            subject = ev.subject.as_deref().unwrap_or(""),
            correlation_id = ev.correlationid.as_ref().map_or("", |c| c.as_str()),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        crate::telemetry::message_span_started(&span, &self.name, &ev);
        self.process(&processor, &m, ev, received_at)
            .instrument(span)
            .await
    }

    /// The one processor bound here that handles `ty`: one with a handler
    /// for that type before one whose fallback takes any type (the
    /// `equipment` processor), since no topic tells them apart here.
    fn route(&self, ty: &str) -> Option<Processor> {
        let routes = read(&self.routes);
        routes
            .iter()
            .find(|p| p.handled_types().contains(&ty))
            .or_else(|| routes.iter().find(|p| p.handles(ty)))
            .cloned()
    }

    /// Attempts through the dedupe layer until [`Retries`] decides; the
    /// call waits for the outcome (an RPC has one answer, so a retryable
    /// failure is not answered early as over MQTT).
    async fn process(
        &self,
        processor: &Processor,
        m: &AsMqtt,
        ev: CloudEvent,
        received_at: tokio::time::Instant,
    ) -> Vec<CloudEvent> {
        let dedupe = if processor.dedupes() {
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
        let mut retries = Retries::new(self.settings.max_attempts);
        let mut shutdown = self.shutdown.subscribe();
        let answer = Mutex::new(None);
        loop {
            let attempt = guarded(dedupe.as_ref(), delivery, || {
                self.handle(processor, &ev, &answer)
            })
            .await;
            let took = || received_at.elapsed().as_secs_f64();
            let delay = match retries.decide(attempt) {
                Disposition::Ack => {
                    self.metrics
                        .record_processed(processor.name(), &ev.ty, took());
                    let reply = answer.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return self.replied(reply.into_iter().collect());
                }
                Disposition::Duplicate(stored) => {
                    debug!(id = %ev.id, source = %ev.source, replayed = stored.is_some(), "duplicate answered without processing");
                    self.metrics
                        .record_duplicate(processor.name(), &ev.ty, took());
                    let reply = stored.map(|s| replayed(&self.settings.source, &ev, s));
                    return self.replied(reply.into_iter().collect());
                }
                Disposition::WaitBusy { delay } => delay,
                Disposition::Retry {
                    error,
                    first,
                    delay,
                } => {
                    if first {
                        self.metrics
                            .record_error(processor.name(), &ev.ty, error.kind());
                        warn!(processor = processor.name(), id = %ev.id, ty = %ev.ty, error = %error, "retryable failure; will retry");
                    }
                    self.metrics.retries();
                    delay
                }
                Disposition::DeadLetter(e) => {
                    crate::telemetry::span_failed(e.kind().as_str(), e.message());
                    let context = e.context_entries().to_vec();
                    return self.reject(
                        m,
                        e.kind(),
                        e.message().to_owned(),
                        &ev,
                        Some(processor),
                        &context,
                    );
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(crate::runtime::backoff::jitter(delay)) => {}
                _ = super::stopped(&mut shutdown) => {
                    let e = HandlerError::retryable(
                        ErrorKind::ServiceUnavailable,
                        "the station is shutting down; send the event again",
                    );
                    return self.replied(vec![failure(&self.settings.source, &ev, &e)]);
                }
            }
        }
    }

    /// One attempt: the handler, then its events; the reply goes to
    /// `answer` and what is kept of it to the dedupe layer.
    async fn handle(
        &self,
        processor: &Processor,
        req: &CloudEvent,
        answer: &Mutex<Option<CloudEvent>>,
    ) -> Result<Option<StoredReply>, HandlerError> {
        let topic = format!("msgpack:{}", self.name);
        let outcome = processor.dispatch(req.clone(), &topic).await?;
        let kept = match outcome.reply {
            Some(body) => {
                let (reply, kept) = success(&self.settings.source, req, body)?;
                *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(reply);
                Some(kept)
            }
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
            processor.emitter().emit(e).await?;
        }
        Ok(kept)
    }

    fn replied(&self, replies: Vec<CloudEvent>) -> Vec<CloudEvent> {
        for _ in &replies {
            self.metrics.replies();
            if let Some(i) = crate::metrics::instruments() {
                i.reply(&self.name);
            }
        }
        replies
    }

    /// The §6 path: log line, metric, the original kept in the processor's
    /// Redis dead-letter stream, and the error reply (the call's result).
    fn reject(
        &self,
        m: &AsMqtt,
        kind: ErrorKind,
        message: String,
        partial: &CloudEvent,
        processor: Option<&Processor>,
        context: &[(String, String)],
    ) -> Vec<CloudEvent> {
        let pname = processor.map(Processor::name);
        let label = if self.route(&partial.ty).is_some() {
            partial.ty.as_str()
        } else {
            crate::metrics::OTHER_TYPE
        };
        self.metrics.error(kind);
        if let Some(i) = crate::metrics::instruments() {
            i.error(pname, label, kind);
        }
        warn!(
            transport = %self.name,
            processor = pname.unwrap_or("-"),
            kind = kind.as_str(),
            id = %partial.id,
            ty = %partial.ty,
            correlation_id = ?partial.correlationid.as_ref().map(|c| c.as_str().to_owned()),
            reason = %message,
            "message rejected"
        );
        self.keep_dead_letter(m, kind, &message, processor, label);
        let e = HandlerError::terminal(kind, message).with_context_entries(context.iter().cloned());
        self.replied(vec![failure(&self.settings.source, partial, &e)])
    }

    /// Appends the original, as MQTT would carry it, to the processor's
    /// dead-letter stream (`crate::dlq`), in a task of its own with a time
    /// limit. Its topic is the processor's commands (northbound) or events
    /// (southbound) topic, so `microdcs dlq replay` sends it to the same
    /// processor over MQTT; `msgpack/<transport>` when no processor took it.
    fn keep_dead_letter(
        &self,
        m: &AsMqtt,
        kind: ErrorKind,
        reason: &str,
        processor: Option<&Processor>,
        label: &str,
    ) {
        let Some(store) = read(&self.dead_letters).clone() else {
            return;
        };
        let topic = processor
            .and_then(|p| {
                let intent = match p.direction() {
                    Direction::Northbound => Intent::Commands,
                    Direction::Southbound => Intent::Events,
                };
                p.emitter()
                    .bindings()
                    .into_iter()
                    .next()
                    .map(|b| b.binding.publish_topic(None, intent))
            })
            .unwrap_or_else(|| format!("msgpack/{}", self.name));
        let letter = crate::dlq::DeadLetter {
            id: String::new(),
            processor: processor
                .map_or(crate::dlq::NO_PROCESSOR, Processor::name)
                .to_owned(),
            at_ms: crate::runtime::clock::now_ms(),
            kind: kind.as_str().to_owned(),
            reason: reason.to_owned(),
            message: crate::dlq::Message {
                topic,
                payload: m.payload.clone(),
                qos: 1,
                retain: false,
                properties: crate::dlq::Properties::from_mqtt(Some(&m.properties)),
            },
            replayed_ms: None,
        };
        self.metrics.dead_lettered();
        if let Some(i) = crate::metrics::instruments() {
            i.dead_lettered(processor.map(Processor::name), label, kind);
        }
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let failed = match tokio::time::timeout(STORE_TIMEOUT, store.append(&letter)).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {STORE_TIMEOUT:?}"),
            };
            metrics.dead_letters_unstored();
            if let Some(i) = crate::metrics::instruments() {
                i.dead_letter_unstored(Some(&letter.processor));
            }
            error!(processor = %letter.processor, error = %failed, "cannot keep the dead letter in Redis");
        });
    }
}

/// How long keeping a dead letter in Redis may take before it is given up.
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::topics::TopicBinding;
    use crate::transport::msgpack::MsgpackSettings;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Ping {}
    impl crate::EventType for Ping {
        const TYPE: &'static str = "t.ping.v1";
        const DATASCHEMA: &'static str = "urn:t:ping";
    }

    async fn ping(_: Ping) {}
    async fn any(_: CloudEvent) {}

    #[test]
    fn a_handler_for_the_type_wins_over_a_fallback_bound_before_it() {
        let t = MsgpackTransport::new("rpc", MsgpackSettings::new("127.0.0.1", 0)).unwrap();
        let fallback = Processor::southbound("equipment").handle(any).build();
        let specific = Processor::northbound("pinger").handle(ping).build();
        t.bind(&fallback, TopicBinding::new("app/equipment"));
        t.bind(&specific, TopicBinding::new("app/ping"));
        assert_eq!(t.route("t.ping.v1").unwrap().name(), "pinger");
        assert_eq!(t.route("t.other.v1").unwrap().name(), "equipment");
        let only = MsgpackTransport::new("rpc2", MsgpackSettings::new("127.0.0.1", 0)).unwrap();
        only.bind(&specific, TopicBinding::new("app/ping"));
        assert!(only.route("t.other.v1").is_none());
    }
}
