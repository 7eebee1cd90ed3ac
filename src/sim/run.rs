//! The simulator's I/O: one rumqttc v5 client, a loop that decides in
//! arrival order, and one task per command that waits its delay and
//! publishes.

use super::config::{EmitIntent, SimConfig};
use super::equipment::{Answer, Decision, Equipment, PlannedEvent, ReceivedCommand, Reply};
use super::SimError;
use crate::binding::mqtt::{self as mb, ReplyTo};
use crate::envelope::{CloudEvent, ContentType, CorrelationId, DecodeError};
use crate::error::ErrorKind;
use crate::transport::mqtt::session::{jitter, Backoff, Polled, Session};
use crate::transport::mqtt::MqttSettings;
use crate::transport::{Intent, TopicBinding};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// The metadata key carrying the station's job id on commands.
const JOBID: &str = "jobid";
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Counters of a running simulator (a snapshot: see [`SimHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// Messages received on the commands topics (undecodable ones included).
    pub received: u64,
    /// Messages that were not a usable command (not a CloudEvent, or data
    /// that does not decode); answered with an error kind when they had a
    /// Response Topic.
    pub invalid: u64,
    /// Successful replies published (re-delivery answers included,
    /// duplicate copies not).
    pub replied: u64,
    /// Failure replies (`mdcserrorkind`) published (re-delivery answers
    /// included, duplicate copies not).
    pub failed: u64,
    /// Commands deliberately lost (no reply, no events).
    pub dropped: u64,
    /// Extra copies of replies published.
    pub duplicates: u64,
    /// Commands recognised as re-deliveries and answered from memory.
    pub redeliveries: u64,
    /// Events published.
    pub events: u64,
    /// Commands without a Response Topic (executed, nobody to answer).
    pub unanswered: u64,
    /// Publishes the MQTT client refused (it was shutting down).
    pub publish_errors: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} replied={} failed={} dropped={} duplicates={} redeliveries={} \
             events={} invalid={} unanswered={} publish_errors={} reconnects={}",
            self.received,
            self.replied,
            self.failed,
            self.dropped,
            self.duplicates,
            self.redeliveries,
            self.events,
            self.invalid,
            self.unanswered,
            self.publish_errors,
            self.reconnects
        )
    }
}

crate::metrics::counters! {
    /// The counters behind [`SimStats`].
    struct Counters => SimStats {
        received,
        invalid,
        replied,
        failed,
        dropped,
        duplicates,
        redeliveries,
        events,
        unanswered,
        publish_errors,
        reconnects,
    }
}

#[derive(Debug)]
struct Shared {
    counters: Counters,
    connected: watch::Sender<bool>,
    subscribed: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

/// A handle on a simulator: its counters, readiness and shutdown. Cheap to
/// clone; stays usable after the simulator stopped.
#[derive(Debug, Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl SimHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.shared.counters.load()
    }

    /// Resolves once connected and subscribed (again, after a reconnect):
    /// commands published from now on are answered.
    pub async fn ready(&self) {
        let mut s = self.shared.subscribed.subscribe();
        let _ = s.wait_for(|v| *v).await;
        let mut c = self.shared.connected.subscribe();
        let _ = c.wait_for(|v| *v).await;
    }

    /// Whether the simulator is connected and subscribed right now.
    pub fn is_ready(&self) -> bool {
        *self.shared.subscribed.borrow() && *self.shared.connected.borrow()
    }

    /// Stops [`Simulator::run`]: replies and events still waiting for their
    /// delay are abandoned, the client disconnects.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }
}

/// The equipment simulator; see the [module documentation](crate::sim).
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    equipment: Equipment,
    shared: Arc<Shared>,
}

/// What a command task needs to publish.
#[derive(Debug)]
struct Io {
    client: AsyncClient,
    shared: Arc<Shared>,
    source: String,
    events: TopicBinding,
}

impl Simulator {
    /// Checks the configuration (rules, probabilities, templates).
    ///
    /// # Errors
    /// A rule is defined twice, has a probability outside 0..1, an unknown
    /// error kind, a misplaced `*`, or a template with an unknown or
    /// malformed placeholder.
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        let equipment = Equipment::new(&config)?;
        Ok(Simulator {
            config,
            equipment,
            shared: Arc::new(Shared {
                counters: Counters::default(),
                connected: watch::channel(false).0,
                subscribed: watch::channel(false).0,
                stop: watch::channel(false).0,
            }),
        })
    }

    /// A handle for counters, readiness and shutdown.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: self.shared.clone(),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Connects and answers commands until `shutdown` resolves or
    /// [`SimHandle::shutdown`] is called; returns the final counters.
    ///
    /// Connection losses are never fatal: it reconnects with exponential
    /// backoff and jitter and subscribes again when the broker kept no
    /// session (rumqttc does neither by itself).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> SimStats {
        let c = &self.config;
        let mut o = mqtt_settings(c).connect_options();
        o.set_max_packet_size(Some(c.max_packet_size.max(64 * 1024)));
        let (client, eventloop) = AsyncClient::new(o, 1024);
        let io = Arc::new(Io {
            client: client.clone(),
            shared: self.shared.clone(),
            source: c.source.clone(),
            events: TopicBinding::new(c.prefix.clone()),
        });
        let filters = c.subscriptions();
        info!(host = %c.host, port = c.port, client_id = %c.client_id, seed = c.seed, filters = ?filters, "equipment simulator starting");
        // The same session loop as the transport's: it subscribes at every
        // CONNACK (a new session has none, a restarted broker may have lost
        // them) and backs off after losses.
        let subscriptions = filters.clone();
        let mut session = Session::new(
            "simulator",
            client,
            eventloop,
            Backoff::new(RECONNECT_MIN, RECONNECT_MAX),
            Some(Box::new(move || subscriptions.clone())),
        );

        let mut tasks = JoinSet::new();
        let mut stop = self.shared.stop.subscribe();
        tokio::pin!(shutdown);
        loop {
            let mut pause = None;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = stop.wait_for(|s| *s) => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            warn!(error = %e, "a command task panicked");
                        }
                    }
                }
                polled = session.poll() => match polled {
                    Polled::Connected { ack, reconnect } => {
                        info!(session_present = ack.session_present, "simulator connected");
                        if reconnect {
                            self.shared.counters.reconnects();
                        }
                        self.shared.connected.send_replace(true);
                    }
                    Polled::Event(Event::Incoming(Packet::SubAck(ack))) => {
                        for code in &ack.return_codes {
                            if !matches!(code, SubscribeReasonCode::Success(_)) {
                                warn!(reason = ?code, "subscription refused by the broker");
                            }
                        }
                        self.shared.subscribed.send_replace(true);
                        info!(filters = ?filters, "simulator subscribed");
                    }
                    Polled::Event(Event::Incoming(Packet::Publish(p))) => self.on_publish(&p, &io, &mut tasks),
                    Polled::Event(Event::Incoming(Packet::Disconnect(d))) => {
                        warn!(reason = ?d.reason_code, "broker sent DISCONNECT");
                    }
                    Polled::Event(_) => {}
                    Polled::Lost { error, loss } => {
                        self.shared.connected.send_replace(false);
                        self.shared.subscribed.send_replace(false);
                        let delay = jitter(loss.delay);
                        if loss.quick && !loss.was_connected {
                            debug!(error = %error, retry_in_ms = delay.as_millis() as u64, "broker not back yet");
                        } else {
                            warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "simulator connection lost");
                        }
                        pause = Some(delay);
                    }
                }
            }
            if let Some(delay) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => break,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }

        // Replies still waiting for their delay are abandoned; a station
        // re-delivers, as it would to a restarted machine.
        tasks.abort_all();
        session.disconnect().await;
        self.shared.connected.send_replace(false);
        self.shared.subscribed.send_replace(false);
        let stats = self.handle().stats();
        info!(%stats, "equipment simulator stopped");
        stats
    }

    /// Decides about one message (here, in arrival order, so decisions
    /// follow the seed) and spawns its publishing.
    fn on_publish(&mut self, p: &Publish, io: &Arc<Io>, tasks: &mut JoinSet<()>) {
        let counters = &self.shared.counters;
        counters.received();
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let inbound = match mb::decode(&topic, p.payload.clone(), p.properties.as_ref()) {
            Ok(i) => i,
            Err(r) => {
                counters.invalid();
                warn!(%topic, kind = %r.kind, message = %r.message, "not a command, ignored");
                if let Some(to) = r.reply_to.clone() {
                    let reply = error_reply(&io.source, &r.partial, r.kind, &r.message);
                    let io = io.clone();
                    tasks.spawn(async move {
                        io.publish_reply(&to, &reply).await;
                    });
                }
                return;
            }
        };
        let event = inbound.event;
        let params = match event.data_as::<Value>() {
            Ok(v) => v,
            Err(DecodeError::Empty) => Value::Null,
            Err(e) => {
                counters.invalid();
                warn!(%topic, id = %event.id, error = %e, "command data does not decode");
                if let Some(to) = inbound.reply_to {
                    let reply = error_reply(
                        &io.source,
                        &event,
                        ErrorKind::PayloadInvalid,
                        &e.to_string(),
                    );
                    let io = io.clone();
                    tasks.spawn(async move {
                        io.publish_reply(&to, &reply).await;
                    });
                }
                return;
            }
        };
        let subject = event
            .subject
            .clone()
            .or_else(|| subject_from_topic(&self.config.prefix, &topic));
        let command = ReceivedCommand {
            source: event.source.clone(),
            id: event.id.clone(),
            ty: event.ty.clone(),
            subject: subject.clone(),
            jobid: event
                .custom
                .get(JOBID)
                .map(|j| crate::envelope::decode_level(j).unwrap_or_else(|| j.clone())),
            params,
        };
        let decision = self.equipment.decide(&command);
        debug!(id = %command.id, ty = %command.ty, subject = ?subject, jobid = ?command.jobid, decision = ?decision, "command");
        let reply_to = inbound.reply_to;
        if reply_to.is_none() && !matches!(decision, Decision::Drop) {
            counters.unanswered();
        }
        match decision {
            Decision::Drop => counters.dropped(),
            Decision::Redelivery { reply } => {
                counters.redeliveries();
                if let Some(to) = reply_to {
                    let io = io.clone();
                    tasks.spawn(async move { io.answer(&to, &event, &reply).await });
                }
            }
            Decision::Answer {
                delay,
                reply,
                duplicate,
                events,
            } => {
                let io = io.clone();
                tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(to) = &reply_to {
                        io.answer(to, &event, &reply).await;
                        if duplicate {
                            let copy = Reply {
                                id: uuid::Uuid::new_v4().to_string(),
                                answer: reply.answer.clone(),
                            };
                            if io
                                .publish_reply(to, &reply_event(&io.source, &event, &copy))
                                .await
                            {
                                io.shared.counters.duplicates();
                            }
                        }
                    }
                    for planned in &events {
                        tokio::time::sleep(planned.delay).await;
                        io.emit(&event, subject.as_deref(), planned).await;
                    }
                });
            }
        }
    }
}

impl Io {
    /// Publishes `reply` to the command's Response Topic and counts it.
    async fn answer(&self, to: &ReplyTo, command: &CloudEvent, reply: &Reply) {
        let event = reply_event(&self.source, command, reply);
        if self.publish_reply(to, &event).await {
            match reply.answer {
                Answer::Result(_) => self.shared.counters.replied(),
                Answer::Error { .. } => self.shared.counters.failed(),
            }
        }
    }

    /// Publishes a reply with the request's Correlation Data, byte for byte.
    async fn publish_reply(&self, to: &ReplyTo, reply: &CloudEvent) -> bool {
        let out = mb::encode(reply, to.correlation_data.clone());
        self.publish(&to.topic, out).await
    }

    async fn emit(&self, command: &CloudEvent, subject: Option<&str>, planned: &PlannedEvent) {
        let mut e = CloudEvent::new(planned.ty.clone(), self.source.clone());
        let as_other = planned
            .equipment
            .as_ref()
            .and_then(|eq| Some(format!("{}/{eq}", command.scope()?)));
        let subject = as_other.as_deref().or(subject);
        e.subject = subject.map(str::to_owned);
        e.causationid = Some(command.id.clone());
        // In the command's trace, as equipment that propagates W3C trace
        // context would be.
        e.traceparent.clone_from(&command.traceparent);
        e.tracestate.clone_from(&command.tracestate);
        if let Some(job) = command.custom.get(JOBID) {
            // What a waiting pull_event action of this job matches on.
            e.correlationid = Some(CorrelationId::from_text(job.clone()));
            e.custom.insert(JOBID.to_owned(), job.clone());
        }
        if let Err(m) = e.set_data(ContentType::Json, &planned.data) {
            warn!(ty = %planned.ty, error = %m, "cannot encode event data");
            return;
        }
        let intent = match planned.intent {
            EmitIntent::Events => Intent::Events,
            EmitIntent::Data => Intent::Data,
        };
        let topic = self.events.publish_topic(subject, intent);
        if self.publish(&topic, mb::encode(&e, None)).await {
            self.shared.counters.events();
        }
    }

    async fn publish(&self, topic: &str, out: mb::Outbound) -> bool {
        match self
            .client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, out.payload, out.properties)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                self.shared.counters.publish_errors();
                warn!(%topic, error = %e, "cannot publish");
                false
            }
        }
    }
}

/// The reply to `command`: same `type` and `subject`, `causationid` = its
/// `id`, its `correlationid`, the `jobid` metadata kept.
fn reply_event(source: &str, command: &CloudEvent, reply: &Reply) -> CloudEvent {
    let mut e = CloudEvent::new(command.ty.clone(), source.to_owned());
    e.id = reply.id.clone();
    e.subject = command.subject.clone();
    e.causationid = Some(command.id.clone());
    e.correlationid = command.correlationid.clone();
    // The answer continues the command's trace (W3C trace context).
    e.traceparent.clone_from(&command.traceparent);
    e.tracestate.clone_from(&command.tracestate);
    if let Some(job) = command.custom.get(JOBID) {
        e.custom.insert(JOBID.to_owned(), job.clone());
    }
    match &reply.answer {
        Answer::Result(v) => {
            if let Err(m) = e.set_data(ContentType::Json, v) {
                e.mdcserrorkind = Some(ErrorKind::InternalLogicError.as_str().to_owned());
                e.mdcserrormessage = Some(format!("cannot encode the result: {m}"));
            }
        }
        Answer::Error { kind, message } => {
            e.mdcserrorkind = Some(kind.clone());
            e.mdcserrormessage = Some(message.clone());
        }
    }
    e
}

/// An error reply to a message that is not a usable command.
fn error_reply(source: &str, partial: &CloudEvent, kind: ErrorKind, message: &str) -> CloudEvent {
    let mut command = partial.clone();
    if command.ty.is_empty() {
        command.ty = "com.github.aschamberger.microdcs.sim.rejected.v1".into();
    }
    reply_event(
        source,
        &command,
        &Reply {
            id: uuid::Uuid::new_v4().to_string(),
            answer: Answer::Error {
                kind: kind.as_str().to_owned(),
                message: message.to_owned(),
            },
        },
    )
}

/// `{prefix}/a/b/commands` → `a.b` (for commands without `subject`).
fn subject_from_topic(prefix: &str, topic: &str) -> Option<String> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .strip_suffix("/commands")
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('/', "."))
}

/// The simulator's connection in terms of the one MQTT settings struct.
fn mqtt_settings(c: &SimConfig) -> MqttSettings {
    let mut s = MqttSettings::new(c.host.clone(), c.port, c.client_id.clone());
    s.client_id = c.client_id.clone();
    s.username = c.username.clone();
    s.password = c.password.clone().map(crate::config::Secret::new);
    s.keep_alive = Duration::from_secs(c.keep_alive_secs);
    s.session_expiry = Duration::from_secs(u64::from(c.session_expiry_secs));
    s.reconnect_min = RECONNECT_MIN;
    s.reconnect_max = RECONNECT_MAX;
    // Without it a QoS 1 round trip takes ~40–90 ms (Nagle + delayed ACK).
    s.tcp_nodelay = true;
    s.source = c.source.clone();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_comes_from_the_topic_when_missing() {
        assert_eq!(
            subject_from_topic("app/equipment", "app/equipment/line1/press/commands").as_deref(),
            Some("line1.press")
        );
        assert_eq!(
            subject_from_topic("app/equipment", "app/equipment/commands"),
            None
        );
        assert_eq!(
            subject_from_topic("app/equipment", "other/x/commands"),
            None
        );
    }

    #[test]
    fn replies_keep_type_correlation_and_name_their_cause() {
        let mut cmd = CloudEvent::new("t.v1", "station");
        cmd.subject = Some("press".into());
        cmd.correlationid = Some(CorrelationId::from_text("c-1"));
        cmd.custom.insert(JOBID.into(), "job-9".into());
        let r = reply_event(
            "sim",
            &cmd,
            &Reply {
                id: "r-1".into(),
                answer: Answer::Result(serde_json::json!({"A": 1})),
            },
        );
        assert_eq!((r.ty.as_str(), r.id.as_str()), ("t.v1", "r-1"));
        assert_eq!(r.source, "sim");
        assert_eq!(r.causationid.as_deref(), Some(cmd.id.as_str()));
        assert_eq!(r.correlationid, cmd.correlationid);
        assert_eq!(r.custom.get(JOBID).map(String::as_str), Some("job-9"));
        assert_eq!(r.data_as::<Value>().ok(), Some(serde_json::json!({"A": 1})));
        let e = error_reply(
            "sim",
            &CloudEvent::new("", ""),
            ErrorKind::PayloadInvalid,
            "bad",
        );
        assert_eq!(e.mdcserrorkind.as_deref(), Some("PAYLOAD_INVALID"));
        assert!(!e.ty.is_empty());
    }
}
