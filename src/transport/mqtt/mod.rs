//! The MQTT v5 transport on rumqttc.
//!
//! One task owns the rumqttc event loop and never blocks on anything but the
//! network, because acknowledgements and publishes from handlers flow
//! through that same loop: a loop waiting on a handler would deadlock.
//! Received publishes go to a dispatcher that runs handlers concurrently (at
//! most `max_inflight`, which is also announced to the broker as Receive
//! Maximum, so the broker itself stops sending when we are saturated), and
//! each message is acknowledged only after it was processed.
//!
//! # Layout
//!
//! - `settings`: [`MqttSettings`], the one MQTT settings struct (transport
//!   and simulator).
//! - `session`: the connection loop, I/O only — connect, subscribe on every
//!   CONNACK, poll, reconnect with backoff; shared with the simulator.
//! - `run`: what the transport does with the session's events, and its
//!   graceful shutdown.
//! - `inbound`: from a received PUBLISH to its acknowledgement — checks,
//!   decoding, routing, attempts through the dedupe layer.
//! - `transport::disposition` (shared with MessagePack-RPC): the pure
//!   decision after each attempt (ack, replay, wait, retry, dead-letter).
//! - `reply`, `dead_letter`: what goes back to the requester and to the
//!   dead-letter topic.

mod dead_letter;
mod inbound;
mod reply;
mod run;
pub(crate) mod security;
pub(crate) mod session;
mod settings;

pub use crate::transport::replies::ERROR_REPLY_TYPE;
pub(crate) use security::{describe, prepare};
pub use security::{MqttTls, K8S_SAT_METHOD};
pub use settings::MqttSettings;

use super::acks::{Acks, Window};
use super::pending::Pending;
use super::takeover::Signals;
use crate::binding::mqtt as mb;
use crate::binding::port::{BoxFuture, Outgoing, Publisher, TransportError};
use crate::binding::topics::TopicBinding;
use crate::dedupe::Dedupe;
use crate::envelope::CloudEvent;
use crate::error::ErrorKind;
use crate::metrics::Metrics;
use crate::processor::{Bound, Processor};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, EventLoop};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// A processor bound to this transport, with its topics.
struct Route {
    processor: Processor,
    binding: TopicBinding,
}

/// An MQTT v5 transport: subscriptions, dispatch, replies, dead letters,
/// reconnects and graceful shutdown.
pub struct MqttTransport {
    name: String,
    settings: MqttSettings,
    client: AsyncClient,
    eventloop: Mutex<Option<EventLoop>>,
    routes: RwLock<Vec<Arc<Route>>>,
    pending: Pending,
    dedupe: RwLock<Option<Dedupe>>,
    /// Where dead letters are kept besides the dead-letter topic.
    dead_letters: RwLock<Option<crate::dlq::DeadLetters>>,
    metrics: Arc<Metrics>,
    /// Waiters for the broker's PUBACKs of what we publish.
    acks: Acks,
    /// QoS 1 publishes waiting for their PUBACK at most (see [`Window`]).
    window: Window,
    /// Held while a publish is queued, so waiters line up with requests.
    submit: tokio::sync::Mutex<()>,
    connected: watch::Sender<bool>,
    subscribed: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    /// Serves a dead peer's session (see `takeover`): never subscribes.
    takeover: bool,
    signals: Signals,
    /// When the connection loop last went round, in ms since `created`
    /// (liveness: a loop that stops going round is wedged).
    polled_ms: std::sync::atomic::AtomicU64,
    created: std::time::Instant,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish()
    }
}

impl MqttTransport {
    /// Creates the transport (not yet connected: see [`MqttTransport::run`]).
    pub fn new(name: impl Into<String>, settings: MqttSettings) -> Arc<Self> {
        Self::with_role(name.into(), settings, false)
    }

    /// A connection with a dead peer's client id that serves this
    /// transport's processors (same routes and dedupe, emitters untouched)
    /// and never subscribes: see [`takeover`](super::takeover).
    pub(crate) fn takeover_of(
        &self,
        client_id: &str,
        instance_id: &str,
        session_expiry: Duration,
    ) -> Arc<Self> {
        let mut s = self.settings.clone();
        s.client_id = client_id.to_owned();
        s.instance_id = instance_id.to_owned();
        s.session_expiry = session_expiry;
        let t = Self::with_role(format!("{}/takeover:{client_id}", self.name), s, true);
        *write(&t.routes) = read(&self.routes).clone();
        *write(&t.dedupe) = read(&self.dedupe).clone();
        *write(&t.dead_letters) = read(&self.dead_letters).clone();
        t
    }

    fn with_role(name: String, settings: MqttSettings, takeover: bool) -> Arc<Self> {
        let o = settings.options();
        let window = Window::new(Window::size_for(settings.max_inflight.max(1), 0));
        let (client, eventloop) = AsyncClient::new(o, settings.queue_capacity.max(1));
        Arc::new(MqttTransport {
            name,
            settings,
            client,
            eventloop: Mutex::new(Some(eventloop)),
            routes: RwLock::new(Vec::new()),
            pending: Pending::default(),
            dedupe: RwLock::new(None),
            dead_letters: RwLock::new(None),
            metrics: Arc::new(Metrics::default()),
            acks: Acks::default(),
            window,
            submit: tokio::sync::Mutex::new(()),
            connected: watch::channel(false).0,
            subscribed: watch::channel(false).0,
            shutdown: watch::channel(false).0,
            takeover,
            signals: Signals::default(),
            polled_ms: std::sync::atomic::AtomicU64::new(0),
            created: std::time::Instant::now(),
        })
    }

    pub(crate) fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Subscribes again now (if connected) or at the next CONNACK: a peer
    /// that took our session over may have left our groups.
    pub(crate) fn resubscribe(self: &Arc<Self>) {
        self.subscribed.send_replace(false);
        if *self.connected.borrow() {
            let this = self.clone();
            tokio::spawn(async move { this.subscribe_all().await });
        }
    }

    /// Unsubscribes `filters`, e.g. to leave a shared group.
    pub(crate) async fn leave(&self, filters: &[String]) {
        for f in filters {
            if let Err(e) = self.client.unsubscribe(f.clone()).await {
                warn!(transport = %self.name, filter = %f, error = %e, "cannot unsubscribe");
            }
        }
        info!(transport = %self.name, filters = ?filters, "unsubscribed");
    }

    /// Binds a processor to this transport with its topics.
    pub fn bind(self: &Arc<Self>, processor: &Processor, binding: TopicBinding) {
        processor
            .shared
            .emitter
            .configure(&self.settings.source, self.settings.events_qos);
        processor.shared.emitter.bind(Bound {
            publisher: self.clone() as Arc<dyn Publisher>,
            binding: binding.clone(),
        });
        write(&self.routes).push(Arc::new(Route {
            processor: processor.clone(),
            binding,
        }));
    }

    /// Keeps every dead letter in Redis too (see [`crate::dlq`]).
    pub(crate) fn set_dead_letters(&self, d: crate::dlq::DeadLetters) {
        *write(&self.dead_letters) = Some(d);
    }

    /// Enables deduplication by (`source`, `id`).
    pub(crate) fn set_dedupe(&self, d: Dedupe) {
        *write(&self.dedupe) = Some(d);
    }

    /// The transport's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The settings it was created with.
    pub fn settings(&self) -> &MqttSettings {
        &self.settings
    }

    /// Resolves once the broker accepted the connection (again).
    pub async fn connected(&self) {
        let mut rx = self.connected.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Resolves once connected and subscribed: messages published from now
    /// on reach this transport's processors.
    pub async fn ready(&self) {
        let mut s = self.subscribed.subscribe();
        let _ = s.wait_for(|c| *c).await;
        self.connected().await;
    }

    /// Whether the broker accepted the connection and the subscriptions
    /// were granted (what readiness reports for this transport).
    pub fn is_ready(&self) -> bool {
        *self.connected.borrow() && *self.subscribed.borrow()
    }

    /// Whether the broker accepted the connection and it was not lost
    /// since.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Notes that the connection loop went round.
    pub(crate) fn polled(&self) {
        let ms = self.created.elapsed().as_millis() as u64;
        self.polled_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the connection loop has not gone round, and how long it
    /// may stay so before it counts as wedged: it wakes at least every
    /// keep-alive interval while connected (PINGREQ/PINGRESP) and every
    /// reconnect delay plus a connection attempt while not.
    pub(crate) fn quiet(&self) -> (Duration, Duration) {
        let last = Duration::from_millis(self.polled_ms.load(std::sync::atomic::Ordering::Relaxed));
        let quiet = self.created.elapsed().saturating_sub(last);
        let allowed =
            self.settings.keep_alive * 2 + self.settings.reconnect_max + Duration::from_secs(30);
        (quiet, allowed)
    }

    /// Asks [`MqttTransport::run`] to shut down gracefully.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Every topic filter this transport subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in read(&self.routes).iter() {
            out.extend(r.binding.subscriptions(r.processor.direction()));
            if let Some(t) = r.binding.response_topic(&self.settings.instance_id) {
                out.push(t);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Queues one PUBLISH and waits until the broker has it: its PUBACK for
    /// QoS 1, written for QoS 0. What a received message caused is safe
    /// before that message is acknowledged.
    async fn send(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        props: PublishProperties,
    ) -> Result<(), TransportError> {
        // A place in the window first (rumqttc must never have its own
        // window full, see `Window`); given back with the PUBACK.
        let place = match qos {
            QoS::AtMostOnce => None,
            _ => Some(self.window.enter().await),
        };
        let acked = {
            let _order = self.submit.lock().await;
            let acked = self.acks.queue(place);
            if let Err(e) = self
                .client
                .publish_with_properties(topic.clone(), qos, retain, payload, props)
                .await
            {
                self.acks.unqueue_last();
                return Err(TransportError::Publish {
                    topic,
                    reason: e.to_string(),
                });
            }
            acked
        };
        match acked.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(TransportError::Invalid { topic, reason }),
            Err(_) => Err(TransportError::Closed(self.name.clone())),
        }
    }

    async fn encode_and_send(&self, mut msg: Outgoing) -> Result<(), TransportError> {
        // Every outgoing event carries the trace context of the span it is
        // sent in (the handling of a message, a dispatch), with traces on.
        crate::telemetry::inject_current(&mut msg.event);
        let out = mb::encode(&msg.event, msg.correlation_data.clone());
        let mut props = out.properties;
        props.response_topic = msg.response_topic.clone();
        if let Err(e) = mb::check_outbound(&msg.topic, &props) {
            self.metrics.error(ErrorKind::PropertyInvalid);
            return Err(TransportError::Invalid {
                topic: crate::envelope::escape_for_mqtt(&msg.topic).into_owned(),
                reason: e.to_string(),
            });
        }
        let qos = if msg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.send(msg.topic, qos, msg.retain, out.payload, props)
            .await
    }
}

impl Publisher for MqttTransport {
    fn name(&self) -> &str {
        &self.name
    }

    fn publish(&self, mut msg: Outgoing) -> BoxFuture<'_, Result<(), TransportError>> {
        if !msg.retain && msg.event.expiryinterval.is_none() {
            msg.event.expiryinterval = self
                .settings
                .message_expiry
                .map(|d| d.as_secs().min(u32::MAX as u64) as u32);
        }
        Box::pin(self.encode_and_send(msg))
    }

    fn request(
        &self,
        msg: Outgoing,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<CloudEvent, TransportError>> {
        Box::pin(async move {
            let key = msg
                .correlation_data
                .clone()
                .or_else(|| {
                    msg.event
                        .correlationid
                        .as_ref()
                        .map(|c| c.as_bytes().clone())
                })
                .unwrap_or_default();
            let correlation = msg
                .event
                .correlationid
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default();
            let rx = self.pending.register(key.clone());
            if let Err(e) = self.encode_and_send(msg).await {
                self.pending.forget(&key);
                return Err(e);
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(TransportError::Closed(self.name.clone())),
                Err(_) => {
                    self.pending.forget(&key);
                    Err(TransportError::Timeout {
                        correlation,
                        after: timeout,
                    })
                }
            }
        })
    }

    fn instance_id(&self) -> &str {
        &self.settings.instance_id
    }
}

impl crate::metrics::ConnectionState for MqttTransport {
    fn is_connected(&self) -> bool {
        MqttTransport::is_connected(self)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
