//! The transport's side of its [`Session`]: what it does with each event
//! (hand PUBLISHes to the dispatcher, PUBACKs to the acknowledgement
//! waiters), how it logs and signals connection losses, and the graceful
//! shutdown.

use super::inbound::Received;
use super::session::{jitter, subscribe, Backoff, Polled, Session};
use super::{lock, MqttTransport};
use crate::binding::port::TransportError;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, SubscribeReasonCode};
use rumqttc::v5::Event;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, error, info, warn};

impl MqttTransport {
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
        let eventloop = lock(&self.eventloop)
            .take()
            .ok_or_else(|| TransportError::Closed(self.name.clone()))?;
        // A takeover connection serves a dead peer's session and never
        // subscribes.
        let filters = (!self.takeover).then(|| {
            let this = self.clone();
            Box::new(move || this.subscriptions()) as super::session::Filters
        });
        let mut session = Session::new(
            self.name.clone(),
            self.client.clone(),
            eventloop,
            Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max),
            filters,
        )
        .with_prepare({
            let settings = self.settings.clone();
            Box::new(move |o| super::prepare(&settings, o))
        });
        let (tx, rx) = mpsc::unbounded_channel::<Received>();
        let permits = Arc::new(Semaphore::new(self.settings.max_inflight.max(1) as usize));
        let dispatcher = tokio::spawn(self.clone().dispatch_loop(rx, permits.clone()));
        let mut shutdown = self.shutdown.subscribe();
        info!(transport = %self.name, host = %self.settings.host, port = self.settings.port, client_id = %self.settings.client_id, tls = self.settings.tls.is_some(), k8s_sat = self.settings.sat_token_path.as_deref().is_some_and(std::path::Path::is_file), "mqtt transport starting");
        loop {
            self.polled();
            let polled = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                polled = session.poll() => polled,
            };
            let delay = match polled {
                Polled::Connected { ack, reconnect } => {
                    if reconnect {
                        self.metrics.reconnects();
                        if let Some(i) = crate::metrics::instruments() {
                            i.mqtt_reconnect(&self.name);
                        }
                    }
                    info!(transport = %self.name, session_present = ack.session_present, "mqtt connected");
                    if !ack.session_present {
                        self.acks.session_lost();
                    }
                    // rumqttc's window is the smaller of the broker's
                    // Receive Maximum and ours; stay below it.
                    let receive_max = ack
                        .properties
                        .as_ref()
                        .and_then(|p| p.receive_max)
                        .unwrap_or(u16::MAX);
                    self.window.resize(super::Window::size_for(
                        receive_max.min(self.settings.max_inflight.max(1)),
                        self.subscriptions().len(),
                    ));
                    self.signals.connected(ack.session_present);
                    self.connected.send_replace(true);
                    if !self.takeover && self.subscriptions().is_empty() {
                        self.subscribed.send_replace(true);
                    }
                    continue;
                }
                Polled::Event(ev) => {
                    self.on_event(ev, &tx);
                    continue;
                }
                Polled::Lost { error, loss } => {
                    self.connected.send_replace(false);
                    let e = super::security::describe(&error, &self.settings);
                    if self.takeover && loss.was_connected {
                        // Most likely the owner is back (Mosquitto 2.0
                        // drops the old connection without saying why): it
                        // gets its session; never fight for it.
                        info!(transport = %self.name, client_id = %self.settings.client_id, error = %e, "session takeover lost its connection; it stops");
                        self.signals.taken_over();
                        dispatcher.abort();
                        self.signals.stopped();
                        return Ok(());
                    }
                    if loss.said_taken_over {
                        self.signals.taken_over();
                        // Whoever took it may have left our group:
                        // subscribe again on the next CONNACK.
                        self.subscribed.send_replace(false);
                    }
                    let delay = jitter(loss.delay);
                    if loss.taken_over {
                        error!(transport = %self.name, client_id = %self.settings.client_id, brief = loss.brief, retry_in_s = loss.delay.as_secs(), "the broker gave this session to another connection, or keeps closing it right after accepting it: is client id '{}' (POD_ID, APP_MQTT_CLIENT_ID) used by two processes? backing off", self.settings.client_id);
                    } else if loss.quick && !loss.was_connected {
                        // One of the quick attempts right after a loss
                        // (logged as a warning): the broker is not back yet.
                        debug!(transport = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt broker not back yet");
                    } else {
                        warn!(transport = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost");
                    }
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.drain(session, dispatcher, permits).await;
        Ok(())
    }

    fn on_event(&self, ev: Event, tx: &mpsc::UnboundedSender<Received>) {
        match ev {
            Event::Incoming(Packet::Publish(p)) => {
                self.metrics.received();
                if let Some(i) = crate::metrics::instruments() {
                    i.consumed(&self.name);
                }
                self.signals.received();
                if tx.send((p, tokio::time::Instant::now())).is_err() {
                    error!(transport = %self.name, "dispatcher stopped; message left unacknowledged for redelivery");
                }
            }
            Event::Incoming(Packet::PubAck(_)) => self.track(&ev),
            Event::Incoming(Packet::SubAck(ack)) => {
                self.subscribed.send_replace(true);
                for code in &ack.return_codes {
                    if matches!(code, SubscribeReasonCode::Success(_)) {
                        continue;
                    }
                    error!(transport = %self.name, reason = ?code, "subscription refused by the broker");
                }
            }
            // "Session taken over" is the session's business (it backs
            // off); anything else is worth a line.
            Event::Incoming(Packet::Disconnect(d))
                if d.reason_code != DisconnectReasonCode::SessionTakenOver =>
            {
                warn!(transport = %self.name, reason = ?d.reason_code, "broker sent DISCONNECT");
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

    /// Subscribes every filter now (outside a CONNACK: after a takeover
    /// left our groups).
    pub(super) async fn subscribe_all(&self) {
        let filters = self.subscriptions();
        if !subscribe(&self.name, &self.client, &filters).await && filters.is_empty() {
            self.subscribed.send_replace(true);
        }
    }

    async fn drain(
        &self,
        mut session: Session,
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
                ev = session.eventloop().poll() => {
                    if let Ok(ev) = &ev {
                        self.track(ev);
                    }
                    if ev.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        session.disconnect().await;
        self.connected.send_replace(false);
        self.signals.stopped();
        let m = self.metrics.snapshot();
        info!(transport = %self.name, received = m.received, processed = m.processed, duplicates = m.duplicates, dead_lettered = m.dead_lettered, "mqtt transport stopped");
    }
}
