//! The MQTT v5 transport on rumqttc.
//!
//! One task owns the rumqttc event loop and never blocks on anything but the
//! network, because acknowledgements and publishes from handlers flow
//! through that same loop: a loop waiting on a handler would deadlock.
//! Received publishes go to a dispatcher that runs handlers concurrently (at
//! most `max_inflight`, which is also announced to the broker as Receive
//! Maximum, so the broker itself stops sending when we are saturated), and
//! each message is acknowledged only after it was processed.

use super::acks::Acks;
use super::pending::Pending;
use super::takeover::{self, Signals};
use super::{BoxFuture, Outgoing, Publisher, TopicBinding, TransportError};
use crate::binding::mqtt::{self as mb, Inbound, Rejected, ReplyTo};
use crate::dedupe::{Claim, Dedupe, StoredReply};
use crate::envelope::{escape_for_mqtt, CloudEvent, ContentType};
use crate::error::{ErrorKind, HandlerError};
use crate::metrics::Metrics;
use crate::processor::{Bound, Outcome, Processor};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use rand::Rng;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, error, info, warn, Instrument};

/// Connection and behaviour settings of one MQTT transport.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; must be unique per instance.
    pub client_id: String,
    /// Instance id (response topics).
    pub instance_id: String,
    /// Optional username.
    pub username: Option<String>,
    /// Optional password.
    pub password: Option<String>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Session expiry: how long the broker keeps our session (and queued
    /// QoS 1 messages) while we are away. Zero means a clean session.
    pub session_expiry: Duration,
    /// Largest payload processed; larger ones (up to 4×) are answered with
    /// `RESOURCE_EXHAUSTED` and dead-lettered, beyond that the broker drops
    /// them (announced as MQTT v5 Maximum Packet Size).
    pub max_payload_size: usize,
    /// Messages processed concurrently and announced as Receive Maximum.
    pub max_inflight: u16,
    /// Capacity of the outgoing request queue (publishers wait when full).
    pub queue_capacity: usize,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Disable Nagle's algorithm (a QoS 1 round trip takes ~88 ms with it).
    pub tcp_nodelay: bool,
    /// Topic receiving messages that could not be processed.
    pub dead_letter_topic: String,
    /// CloudEvent `source` of replies.
    pub source: String,
    /// Default QoS of events.
    pub events_qos: u8,
    /// How long shutdown waits for in-flight work and outgoing acks.
    pub shutdown_grace: Duration,
    /// Attempts at a message whose failures are retryable before it is
    /// dead-lettered with the history of its errors.
    pub max_attempts: u32,
    /// Message Expiry Interval given to outgoing commands and events that
    /// carry no `expiryinterval` of their own (replies and retained messages
    /// excepted).
    pub message_expiry: Option<Duration>,
}

impl MqttSettings {
    /// Settings for a local broker with sensible defaults.
    pub fn new(host: impl Into<String>, port: u16, instance_id: impl Into<String>) -> Self {
        let instance_id = instance_id.into();
        MqttSettings {
            host: host.into(),
            port,
            client_id: format!("microdcs-{instance_id}"),
            instance_id,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3600),
            max_payload_size: 1024 * 1024,
            max_inflight: 100,
            queue_capacity: 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            tcp_nodelay: true,
            dead_letter_topic: "microdcs/dead-letter".into(),
            source: "microdcs".into(),
            events_qos: 1,
            shutdown_grace: Duration::from_secs(10),
            max_attempts: 30,
            message_expiry: None,
        }
    }
}

/// How long a connection must have lasted for its loss to reset the
/// reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Connections in a row that end within [`STABLE_CONNECTION`] before the
/// transport assumes another process uses its client id.
const FLAPS_BEFORE_BACKING_OFF: u32 = 3;

/// The least delay before reconnecting after the broker handed our session
/// to another connection with the same client id.
const TAKEN_OVER_BACKOFF: Duration = Duration::from_secs(5);

/// The `type` of an error reply to a request that had no `type` of its own
/// (a CloudEvent needs one, and an empty one would be refused as input).
pub const ERROR_REPLY_TYPE: &str = "io.microdcs.error.v1";

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
    metrics: Arc<Metrics>,
    /// Waiters for the broker's PUBACKs of what we publish.
    acks: Acks,
    /// Held while a publish is queued, so waiters line up with requests.
    submit: tokio::sync::Mutex<()>,
    connected: watch::Sender<bool>,
    subscribed: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    /// Set when the broker said "session taken over" (another connection
    /// with our client id); read by the reconnect loop.
    taken_over: std::sync::atomic::AtomicBool,
    /// Serves a dead peer's session (see `takeover`): never subscribes.
    takeover: bool,
    signals: Signals,
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
        t
    }

    fn with_role(name: String, settings: MqttSettings, takeover: bool) -> Arc<Self> {
        let mut o = MqttOptions::new(
            settings.client_id.clone(),
            settings.host.clone(),
            settings.port,
        );
        o.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)));
        o.set_clean_start(settings.session_expiry.is_zero());
        o.set_session_expiry_interval(Some(
            settings.session_expiry.as_secs().min(u32::MAX as u64) as u32
        ));
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(settings.max_inflight.max(1)));
        o.set_outgoing_inflight_upper_limit(settings.max_inflight.max(1));
        let network_limit =
            (settings.max_payload_size.saturating_mul(4) + 64 * 1024).min(256 * 1024 * 1024);
        o.set_max_packet_size(Some(network_limit as u32));
        if let Some(u) = &settings.username {
            o.set_credentials(u.clone(), settings.password.clone().unwrap_or_default());
        }
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(settings.tcp_nodelay);
        net.set_connection_timeout(10);
        o.set_network_options(net);
        let (client, eventloop) = AsyncClient::new(o, settings.queue_capacity.max(1));
        Arc::new(MqttTransport {
            name,
            settings,
            client,
            eventloop: Mutex::new(Some(eventloop)),
            routes: RwLock::new(Vec::new()),
            pending: Pending::default(),
            dedupe: RwLock::new(None),
            metrics: Arc::new(Metrics::default()),
            acks: Acks::default(),
            submit: tokio::sync::Mutex::new(()),
            connected: watch::channel(false).0,
            subscribed: watch::channel(false).0,
            shutdown: watch::channel(false).0,
            taken_over: std::sync::atomic::AtomicBool::new(false),
            takeover,
            signals: Signals::default(),
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

    /// Enables deduplication by (`source`, `id`).
    pub fn set_dedupe(&self, d: Dedupe) {
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

    /// Connects, subscribes and processes messages until
    /// [`MqttTransport::shutdown`] is called; reconnects with exponential
    /// backoff and jitter, re-subscribing when the broker lost our session.
    /// On shutdown it stops taking new messages, lets in-flight handlers
    /// finish, waits for outgoing QoS 1 acknowledgements (both within the
    /// grace period) and disconnects. Messages received but not started stay
    /// unacknowledged, so the broker redelivers them.
    ///
    /// # Errors
    /// Only if `run` is called twice.
    pub async fn run(self: Arc<Self>) -> Result<(), TransportError> {
        let mut eventloop = lock(&self.eventloop)
            .take()
            .ok_or_else(|| TransportError::Closed(self.name.clone()))?;
        let (tx, rx) = mpsc::unbounded_channel::<Received>();
        let permits = Arc::new(Semaphore::new(self.settings.max_inflight.max(1) as usize));
        let dispatcher = tokio::spawn(self.clone().dispatch_loop(rx, permits.clone()));
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = self.settings.reconnect_min;
        let mut failures = 0u32;
        let mut pause: Option<Duration> = None;
        // The backoff starts over only after a connection that lasted: a
        // broker that closes every connection right after accepting it
        // (another process with our client id) is not hammered.
        let mut connected_at: Option<tokio::time::Instant> = None;
        let mut brief = 0u32;
        info!(transport = %self.name, host = %self.settings.host, port = self.settings.port, client_id = %self.settings.client_id, "mqtt transport starting");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                ev = eventloop.poll() => match ev {
                    Ok(ev) => {
                        if failures > 0 && matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                            self.metrics.reconnects();
                        }
                        if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                            failures = 0;
                            connected_at = Some(tokio::time::Instant::now());
                        }
                        self.on_event(ev, &tx);
                    }
                    Err(e) => {
                        self.connected.send_replace(false);
                        failures += 1;
                        let was_connected = connected_at.is_some();
                        match connected_at.take().map(|t| t.elapsed() >= STABLE_CONNECTION) {
                            Some(true) => {
                                backoff = self.settings.reconnect_min;
                                brief = 0;
                            }
                            Some(false) => brief += 1,
                            None => {}
                        }
                        if self.takeover && was_connected {
                            // Most likely the owner is back (Mosquitto 2.0
                            // drops the old connection without saying why):
                            // it gets its session; never fight for it.
                            info!(transport = %self.name, client_id = %self.settings.client_id, error = %e, "session takeover lost its connection; it stops");
                            self.signals.taken_over();
                            dispatcher.abort();
                            self.signals.stopped();
                            return Ok(());
                        }
                        // rumqttc reports the broker's DISCONNECT (0x8E) as
                        // an error; Mosquitto 2.0 just closes the replaced
                        // connection, so connections dropped again and
                        // again right after they were accepted count too.
                        let said_taken_over = self.taken_over.swap(false, std::sync::atomic::Ordering::SeqCst)
                            || takeover::is_session_taken_over(&e);
                        let taken_over = said_taken_over || brief >= FLAPS_BEFORE_BACKING_OFF;
                        if said_taken_over {
                            self.signals.taken_over();
                            // Whoever took it may have left our group:
                            // subscribe again on the next CONNACK.
                            self.subscribed.send_replace(false);
                        }
                        if taken_over {
                            // Reconnecting at once would take the session
                            // back and start a fight many times a second.
                            backoff = backoff.max(self.settings.reconnect_max).max(TAKEN_OVER_BACKOFF);
                            error!(transport = %self.name, client_id = %self.settings.client_id, brief, retry_in_s = backoff.as_secs(), "the broker gave this session to another connection, or keeps closing it right after accepting it: is client id '{}' (POD_ID, APP_MQTT_CLIENT_ID) used by two processes? backing off", self.settings.client_id);
                        }
                        let delay = jitter(backoff);
                        if !taken_over {
                            warn!(transport = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost");
                        }
                        backoff = (backoff * 2).min(self.settings.reconnect_max);
                        pause = Some(delay);
                    }
                }
            }
            if let Some(delay) = pause.take() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        }
        self.drain(eventloop, dispatcher, permits).await;
        Ok(())
    }

    fn on_event(self: &Arc<Self>, ev: Event, tx: &mpsc::UnboundedSender<Received>) {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                info!(transport = %self.name, session_present = ack.session_present, "mqtt connected");
                self.signals.connected(ack.session_present);
                self.connected.send_replace(true);
                if !self.takeover {
                    // Subscribe on every CONNACK: a new session has no
                    // subscriptions, and a broker restarted from its
                    // persistence may keep the session without its shared
                    // ones (Mosquitto 2.0). From another task, because the
                    // request channel may be full and this loop must keep
                    // polling.
                    let this = self.clone();
                    tokio::spawn(async move { this.subscribe_all().await });
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                self.metrics.received();
                self.signals.received();
                if tx.send((p, tokio::time::Instant::now())).is_err() {
                    error!(transport = %self.name, "dispatcher stopped; message left unacknowledged for redelivery");
                }
            }
            Event::Incoming(Packet::PubAck(_)) => self.track(&ev),
            Event::Incoming(Packet::SubAck(ack)) => {
                self.subscribed.send_replace(true);
                for code in &ack.return_codes {
                    if matches!(
                        code,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    ) {
                        continue;
                    }
                    error!(transport = %self.name, reason = ?code, "subscription refused by the broker");
                }
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                if d.reason_code
                    == rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
                {
                    self.taken_over
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                } else {
                    warn!(transport = %self.name, reason = ?d.reason_code, "broker sent DISCONNECT");
                }
            }
            Event::Outgoing(rumqttc::Outgoing::Publish(_)) => self.track(&ev),
            _ => {}
        }
    }

    /// Feeds publish and PUBACK events to the acknowledgement waiters.
    fn track(&self, ev: &Event) {
        use rumqttc::v5::mqttbytes::v5::PubAckReason;
        match ev {
            Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                self.acks.on_outgoing_publish(*pkid)
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let refused = (!matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ))
                .then(|| format!("the broker refused it ({:?})", ack.reason));
                self.acks.on_puback(ack.pkid, refused);
            }
            _ => {}
        }
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
        let acked = {
            let _order = self.submit.lock().await;
            let acked = self.acks.queue();
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

    async fn subscribe_all(&self) {
        let filters = self.subscriptions();
        if filters.is_empty() {
            self.subscribed.send_replace(true);
            return;
        }
        let subs = filters
            .iter()
            .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), QoS::AtLeastOnce));
        match self.client.subscribe_many(subs).await {
            Ok(()) => info!(transport = %self.name, filters = ?filters, "subscribed"),
            Err(e) => error!(transport = %self.name, error = %e, "cannot subscribe"),
        }
    }

    async fn dispatch_loop(
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

    async fn drain(
        &self,
        mut eventloop: EventLoop,
        dispatcher: tokio::task::JoinHandle<()>,
        permits: Arc<Semaphore>,
    ) {
        info!(transport = %self.name, "shutting down: finishing in-flight messages");
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        if !self.takeover && !self.settings.session_expiry.is_zero() {
            // Leave shared groups first, so the broker stops queueing their
            // messages for a session that may never come back.
            let shared: Vec<_> = self
                .subscriptions()
                .into_iter()
                .filter(|f| f.starts_with("$share/"))
                .collect();
            for f in shared {
                let _ = self.client.try_unsubscribe(f);
            }
        }
        let _ = dispatcher.await;
        let all = self.settings.max_inflight.max(1) as u32;
        // Keep polling the event loop: handlers' publishes and acks go
        // through it.
        let idle = async {
            let _all_done = permits.acquire_many(all).await;
            loop {
                if self.acks.is_idle() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::pin!(idle);
        loop {
            tokio::select! {
                _ = &mut idle => break,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(transport = %self.name, "grace period over with work still in flight; it will be redelivered");
                    break;
                }
                ev = eventloop.poll() => {
                    if let Ok(ev) = &ev {
                        self.track(ev);
                    }
                    if ev.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        let _ = self.client.disconnect().await;
        // Flush the DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        self.connected.send_replace(false);
        self.signals.stopped();
        let m = self.metrics.snapshot();
        info!(transport = %self.name, received = m.received, processed = m.processed, duplicates = m.duplicates, dead_lettered = m.dead_lettered, "mqtt transport stopped");
    }

    async fn ack(&self, p: &Publish) {
        if let Err(e) = self.client.ack(p).await {
            warn!(transport = %self.name, error = %e, "cannot acknowledge; the broker will redeliver");
        }
    }

    /// Handles one received message from decode to acknowledgement.
    async fn process(&self, p: Publish, received_at: tokio::time::Instant) {
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
                self.reject(&p, &topic, &rejected, None).await;
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
            self.reject(&p, &topic, &rejected, None).await;
            return self.ack(&p).await;
        }
        let inbound = match mb::decode(&topic, p.payload.clone(), p.properties.as_ref()) {
            Ok(i) => i,
            Err(r) => {
                self.reject(&p, &topic, &r, None).await;
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
            self.reject(&p, &topic, &r, None).await;
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
            self.reject(&p, &topic, &r, Some(route.processor.name()))
                .await;
            return self.ack(&p).await;
        }
        if inbound.event.is_expired(crate::clock::now()) {
            let r = rejection(
                &inbound,
                ErrorKind::Timeout,
                "the event's expirytime has passed".into(),
            );
            self.reject(&p, &topic, &r, Some(route.processor.name()))
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

    /// Runs the handler with dedupe and retries. Returns whether to ack.
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
        let mut shutdown = self.shutdown.subscribe();
        let mut delay = Duration::from_millis(50);
        let mut replied_error = false;
        let mut history: Vec<String> = Vec::new();
        loop {
            let attempt = async {
                if let Some(d) = &dedupe {
                    match d
                        .claim(&ev.source, &ev.id, &token)
                        .await
                        .map_err(HandlerError::from)?
                    {
                        Claim::Claimed => {}
                        Claim::Duplicate(stored) => return Ok(Attempt::Duplicate(stored)),
                        Claim::Busy => return Ok(Attempt::Busy),
                    }
                }
                let work = route.processor.dispatch(ev.clone(), &inbound.topic);
                let result = match &dedupe {
                    Some(d) => {
                        // Keep the claim alive while the handler runs.
                        let keepalive = async {
                            let mut every = tokio::time::interval(d.lease() / 3);
                            every.tick().await;
                            loop {
                                every.tick().await;
                                if let Err(e) = d.extend(&ev.source, &ev.id, &token).await {
                                    warn!(error = %e, "cannot extend dedupe claim");
                                }
                            }
                        };
                        tokio::select! {
                            r = work => r,
                            _ = keepalive => unreachable!("keepalive never ends"),
                        }
                    }
                    None => work.await,
                };
                let result = match result {
                    Ok(outcome) => self.deliver(route, inbound, outcome).await,
                    Err(e) => Err(e),
                };
                if let Some(d) = &dedupe {
                    match &result {
                        Ok(reply) => d
                            .commit(&ev.source, &ev.id, reply.as_ref())
                            .await
                            .map_err(HandlerError::from)?,
                        Err(_) => {
                            if let Err(e) = d.release(&ev.source, &ev.id, &token).await {
                                warn!(error = %e, "cannot release dedupe claim; it expires after its lease");
                            }
                        }
                    }
                }
                result.map(|_| Attempt::Done)
            };
            match attempt.await {
                Ok(Attempt::Done) => {
                    self.metrics.processed();
                    return true;
                }
                Ok(Attempt::Duplicate(stored)) => {
                    debug!(id = %ev.id, source = %ev.source, replayed = stored.is_some(), "duplicate acknowledged without processing");
                    self.metrics.duplicates();
                    if let (Some(stored), Some(to)) = (stored, &inbound.reply_to) {
                        self.replay_reply(ev, stored, to).await;
                    }
                    return true;
                }
                Ok(Attempt::Busy) => {
                    // The same message is being processed by another
                    // delivery right now: wait for its outcome.
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(delay)) => {}
                        _ = shutdown.wait_for(|s| *s) => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) if e.retryable => {
                    history.push(e.to_string());
                    if history.len() >= self.settings.max_attempts.max(1) as usize {
                        let r = Rejected {
                            kind: e.kind,
                            message: format!(
                                "gave up after {} attempts; last error: {}",
                                history.len(),
                                e.message
                            ),
                            partial: ev.clone(),
                            reply_to: inbound.reply_to.clone(),
                        };
                        let mut context = e.context.clone();
                        context.push(("attempts".into(), history.len().to_string()));
                        context.push(("history".into(), summarise(&history)));
                        self.reject_with(
                            Some((original.payload.clone(), original.properties.clone())),
                            &inbound.topic,
                            &r,
                            Some(route.processor.name()),
                            &context,
                        )
                        .await;
                        return true;
                    }
                    if !replied_error {
                        // Tell the requester now; the message stays
                        // unacknowledged and is retried.
                        self.metrics.error(e.kind);
                        warn!(processor = route.processor.name(), id = %ev.id, ty = %ev.ty, correlation_id = ?ev.correlationid.as_ref().map(|c| c.as_str().to_owned()), error = %e, "retryable failure; will retry");
                        self.send_error_reply(ev, inbound.reply_to.as_ref(), &e)
                            .await;
                        replied_error = true;
                    }
                    self.metrics.retries();
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(delay)) => {}
                        _ = shutdown.wait_for(|s| *s) => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    let r = Rejected {
                        kind: e.kind,
                        message: e.message.clone(),
                        partial: ev.clone(),
                        reply_to: inbound.reply_to.clone(),
                    };
                    self.reject_with(
                        Some((original.payload.clone(), original.properties.clone())),
                        &inbound.topic,
                        &r,
                        Some(route.processor.name()),
                        &e.context,
                    )
                    .await;
                    return true;
                }
            }
        }
    }

    /// Sends the reply and the events of a successful outcome; returns the
    /// reply to keep for duplicates.
    async fn deliver(
        &self,
        route: &Route,
        inbound: &Inbound,
        outcome: Outcome,
    ) -> Result<Option<StoredReply>, HandlerError> {
        let req = &inbound.event;
        let mut kept = None;
        if let Some(body) = outcome.reply {
            let data = body.data.map_err(|m| {
                HandlerError::terminal(
                    ErrorKind::InternalLogicError,
                    format!("cannot encode reply: {m}"),
                )
            })?;
            let mut reply = self.reply_skeleton(req);
            reply.dataschema = body.dataschema;
            reply.data = Some(data);
            reply.datacontenttype = Some(ContentType::DEFAULT_HEADER.into());
            kept = Some(StoredReply {
                id: reply.id.clone(),
                dataschema: reply.dataschema.clone(),
                datacontenttype: reply.datacontenttype.clone(),
                data: reply.data.as_ref().map(|d| BASE64.encode(d)),
            });
            if let Some(reply_to) = &inbound.reply_to {
                self.publish_reply(reply, reply_to).await?;
            }
        }
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

    /// Answers a duplicate with the reply its first delivery got: same
    /// `id`, payload and schema, sent to the duplicate's Response Topic with
    /// its Correlation Data.
    async fn replay_reply(&self, req: &CloudEvent, stored: StoredReply, to: &ReplyTo) {
        let mut reply = self.reply_skeleton(req);
        reply.id = stored.id;
        reply.dataschema = stored.dataschema;
        reply.datacontenttype = stored.datacontenttype;
        reply.data = stored
            .data
            .and_then(|d| BASE64.decode(d).ok())
            .map(Bytes::from);
        if let Err(e) = self.publish_reply(reply, to).await {
            warn!(error = %e, "cannot replay the reply to a duplicate");
        }
    }

    /// The attributes every reply shares: the request's `type` (or
    /// [`ERROR_REPLY_TYPE`] for a request that had none), its `id` as
    /// `causationid` when it had one, its correlation, subject and trace
    /// context. No attribute is ever empty.
    fn reply_skeleton(&self, req: &CloudEvent) -> CloudEvent {
        let ty = if req.ty.is_empty() {
            ERROR_REPLY_TYPE.to_owned()
        } else {
            req.ty.clone()
        };
        let mut reply = CloudEvent::new(ty, self.settings.source.clone());
        reply.causationid = Some(req.id.clone()).filter(|id| !id.is_empty());
        reply.correlationid = req.correlationid.clone();
        reply.subject = req.subject.clone();
        reply.traceparent = req.traceparent.clone();
        reply.tracestate = req.tracestate.clone();
        reply
    }

    async fn publish_reply(&self, reply: CloudEvent, to: &ReplyTo) -> Result<(), TransportError> {
        let mut msg = Outgoing::new(to.topic.clone(), reply);
        msg.correlation_data = to.correlation_data.clone();
        self.publish_now(msg).await?;
        self.metrics.replies();
        Ok(())
    }

    async fn send_error_reply(&self, req: &CloudEvent, to: Option<&ReplyTo>, e: &HandlerError) {
        let Some(to) = to else { return };
        let mut reply = self.reply_skeleton(req);
        // Messages and context quote what the client sent (a job id, a
        // property): escaped, so the reply is always a packet MQTT allows.
        reply.mdcserrorkind = Some(e.kind.as_str().to_owned());
        reply.mdcserrormessage = Some(escape_for_mqtt(&e.message).into_owned());
        reply.mdcserrorcontext = e
            .context
            .iter()
            .map(|(k, v)| {
                (
                    escape_for_mqtt(k).into_owned(),
                    escape_for_mqtt(v).into_owned(),
                )
            })
            .collect();
        if let Err(err) = self.publish_reply(reply, to).await {
            warn!(error = %err, "cannot send error reply");
        }
    }

    async fn reject(&self, p: &Publish, topic: &str, r: &Rejected, processor: Option<&str>) {
        self.reject_with(
            Some((p.payload.clone(), p.properties.clone())),
            topic,
            r,
            processor,
            &[],
        )
        .await;
    }

    /// The §6 path: error reply when possible, a log line, the original on
    /// the dead-letter topic, a metric. Never panics, never stops.
    async fn reject_with(
        &self,
        original: Option<(Bytes, Option<PublishProperties>)>,
        topic: &str,
        r: &Rejected,
        processor: Option<&str>,
        context: &[(String, String)],
    ) {
        self.metrics.error(r.kind);
        warn!(
            transport = %self.name,
            processor = processor.unwrap_or("-"),
            topic,
            kind = r.kind.as_str(),
            id = %r.partial.id,
            ty = %r.partial.ty,
            correlation_id = ?r.partial.correlationid.as_ref().map(|c| c.as_str().to_owned()),
            reason = %r.message,
            "message rejected"
        );
        let e = HandlerError {
            kind: r.kind,
            message: r.message.clone(),
            context: context.to_vec(),
            retryable: false,
        };
        self.send_error_reply(&r.partial, r.reply_to.as_ref(), &e)
            .await;
        let (payload, props) = original.unwrap_or_default();
        let mut props = props.unwrap_or_default();
        if let Some(rt) = props.response_topic.take() {
            props
                .user_properties
                .push(("x-dead-letter-response-topic".into(), rt));
        }
        props.topic_alias = None;
        props.subscription_identifiers.clear();
        props.user_properties.push((
            "x-dead-letter-reason".into(),
            escape_for_mqtt(&r.message).into_owned(),
        ));
        props
            .user_properties
            .push(("x-dead-letter-kind".into(), r.kind.as_str().into()));
        props.user_properties.push((
            "x-dead-letter-topic".into(),
            escape_for_mqtt(topic).into_owned(),
        ));
        if let Some(pname) = processor {
            props
                .user_properties
                .push(("x-dead-letter-processor".into(), pname.to_owned()));
        }
        // The original's strings are what a broker let through; one that
        // MQTT forbids must not take the connection down with it.
        for (k, v) in &mut props.user_properties {
            *k = escape_for_mqtt(k).into_owned();
            *v = escape_for_mqtt(v).into_owned();
        }
        props.content_type = props
            .content_type
            .map(|ct| escape_for_mqtt(&ct).into_owned());
        match self
            .send(
                self.settings.dead_letter_topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload,
                props,
            )
            .await
        {
            Ok(()) => self.metrics.dead_lettered(),
            Err(e) => error!(error = %e, "cannot publish to the dead-letter topic"),
        }
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

    async fn publish_now(&self, msg: Outgoing) -> Result<(), TransportError> {
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
        Box::pin(self.publish_now(msg))
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
            if let Err(e) = self.publish_now(msg).await {
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

/// A received PUBLISH and when it arrived.
type Received = (Publish, tokio::time::Instant);

/// What one attempt at a message came to.
enum Attempt {
    /// Processed: acknowledge.
    Done,
    /// Processed before: acknowledge, answer with the stored reply.
    Duplicate(Option<StoredReply>),
    /// Another delivery is processing it right now: wait and ask again.
    Busy,
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

/// Full jitter: a random delay between half of `d` and `d`.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
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
