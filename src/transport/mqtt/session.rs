//! The MQTT session loop, I/O only: poll the rumqttc event loop, subscribe
//! on every CONNACK, hand every event on, and after a connection loss say
//! how long to wait before the next attempt. Shared by the transport and
//! the equipment simulator; neither routes, dedupes nor replies here.
//!
//! The reconnect policy is [`Backoff`], pure state without I/O: exponential
//! backoff with jitter, started over only after a connection that lasted
//! (and then, for a few seconds, quick attempts: a broker restart is short,
//! and a shared group has no member until we are back), and a long pause when the broker handed the session to another
//! connection with the same client id or keeps closing it right after
//! accepting it (two processes fighting over one client id).

pub(crate) use crate::runtime::backoff::jitter;
use crate::runtime::backoff::Exponential;
use crate::transport::takeover::is_session_taken_over;
use rumqttc::v5::mqttbytes::v5::{ConnAck, DisconnectReasonCode, Filter, Packet, Subscribe};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info};

/// How long a connection must have lasted for its loss to reset the
/// reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Connections in a row that end within [`STABLE_CONNECTION`] before the
/// session assumes another process uses its client id.
const FLAPS_BEFORE_BACKING_OFF: u32 = 3;

/// The least delay before reconnecting after the broker handed our session
/// to another connection with the same client id.
const TAKEN_OVER_BACKOFF: Duration = Duration::from_secs(5);

/// After a connection that lasted is lost, the attempts of the next
/// [`QUICK_RETRY_FOR`] come this often (before jitter, at most the
/// configured minimum) instead of backing off. Mosquitto 2.0 restores no
/// shared subscription after a restart, so until one replica of a group
/// is back, what others publish to the group is dropped: the replicas must
/// not come back later than the MES and the equipment.
const QUICK_RETRY: Duration = Duration::from_millis(25);

/// How long after losing a connection that lasted attempts are quick.
const QUICK_RETRY_FOR: Duration = Duration::from_secs(3);

/// What a connection loss means for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loss {
    /// Whether the lost connection had been accepted (a CONNACK), as
    /// opposed to an attempt that failed.
    pub(crate) was_connected: bool,
    /// Whether the broker said another connection took the session over.
    pub(crate) said_taken_over: bool,
    /// Whether to back off as for a taken-over session: the broker said so,
    /// or connections keep ending right after they were accepted.
    pub(crate) taken_over: bool,
    /// Connections in a row that ended before they were stable.
    pub(crate) brief: u32,
    /// The wait before the next attempt, before jitter.
    pub(crate) delay: Duration,
    /// Whether the next attempt is a quick one (see [`QUICK_RETRY`]).
    pub(crate) quick: bool,
}

/// The reconnect policy: state without I/O, fed with CONNACKs and losses.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    delays: Exponential,
    failures: u32,
    connected_at: Option<Instant>,
    brief: u32,
    /// The delay of quick attempts.
    quick: Duration,
    /// Attempts are quick until then (a connection that lasted was lost).
    quick_until: Option<Instant>,
}

impl Backoff {
    /// A policy waiting `min` after the first loss, doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            delays: Exponential::new(min, max),
            failures: 0,
            connected_at: None,
            brief: 0,
            quick: QUICK_RETRY.min(min),
            quick_until: None,
        }
    }

    /// The broker accepted a connection at `now`. Returns whether it is a
    /// reconnect (a loss came before it).
    pub(crate) fn connected(&mut self, now: Instant) -> bool {
        let reconnect = self.failures > 0;
        self.failures = 0;
        self.connected_at = Some(now);
        reconnect
    }

    /// The connection (or an attempt) was lost at `now`; `said_taken_over`
    /// when the broker said another connection took the session.
    pub(crate) fn lost(&mut self, now: Instant, said_taken_over: bool) -> Loss {
        self.failures += 1;
        let was_connected = self.connected_at.is_some();
        // The backoff starts over only after a connection that lasted: a
        // broker that closes every connection right after accepting it
        // (another process with our client id) is not hammered.
        match self
            .connected_at
            .take()
            .map(|t| now.saturating_duration_since(t) >= STABLE_CONNECTION)
        {
            Some(true) => {
                self.delays.reset();
                self.brief = 0;
                self.quick_until = Some(now + QUICK_RETRY_FOR);
            }
            Some(false) => {
                self.brief += 1;
                self.quick_until = None;
            }
            None => {}
        }
        let taken_over = said_taken_over || self.brief >= FLAPS_BEFORE_BACKING_OFF;
        if taken_over {
            // Reconnecting at once would take the session back and start
            // a fight many times a second.
            self.quick_until = None;
            self.delays
                .raise_to(self.delays.max().max(TAKEN_OVER_BACKOFF));
        }
        // Quick attempts leave the exponential delays where they were: once
        // they are over, the backoff goes on from its minimum.
        let quick = self.quick_until.is_some_and(|t| now < t);
        let delay = if quick {
            self.quick
        } else {
            self.delays.next_delay()
        };
        Loss {
            was_connected,
            said_taken_over,
            taken_over,
            brief: self.brief,
            delay,
            quick,
        }
    }
}

/// What one poll of the session came to.
#[derive(Debug)]
pub(crate) enum Polled {
    /// The broker accepted the connection; subscribing has been started
    /// (when the session subscribes). `reconnect` when a loss came before.
    Connected {
        /// The broker's CONNACK.
        ack: ConnAck,
        /// Whether this is a reconnect.
        reconnect: bool,
    },
    /// Any other event, to hand on.
    Event(Event),
    /// The connection was lost: wait [`Loss::delay`] (with [`jitter`])
    /// before polling again, which reconnects.
    Lost {
        /// What rumqttc reported.
        error: ConnectionError,
        /// What it means for the next attempt.
        loss: Loss,
    },
}

/// Gives the topic filters to subscribe at each CONNACK (they may change
/// while the session runs).
pub(crate) type Filters = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Brings the options up to date before each connection attempt (TLS
/// files and the service-account token are read again); an error is
/// reported as a failed attempt.
pub(crate) type Prepare = Box<dyn Fn(&mut MqttOptions) -> Result<(), String> + Send + Sync>;

/// One MQTT session: the rumqttc event loop, the reconnect policy and the
/// subscriptions made at every CONNACK.
pub(crate) struct Session {
    /// For log lines.
    name: String,
    client: AsyncClient,
    eventloop: EventLoop,
    backoff: Backoff,
    filters: Option<Filters>,
    /// Set when the broker sent DISCONNECT "session taken over"; read at
    /// the loss that follows.
    said_taken_over: bool,
    prepare: Option<Prepare>,
    /// Whether a connection is up (else the next poll connects).
    up: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .field("subscribes", &self.filters.is_some())
            .finish()
    }
}

impl Session {
    /// A session over `client`/`eventloop` reconnecting after `backoff`;
    /// with `filters` it subscribes them at every CONNACK, without it never.
    pub(crate) fn new(
        name: impl Into<String>,
        client: AsyncClient,
        eventloop: EventLoop,
        backoff: Backoff,
        filters: Option<Filters>,
    ) -> Self {
        Session {
            name: name.into(),
            client,
            eventloop,
            backoff,
            filters,
            said_taken_over: false,
            prepare: None,
            up: false,
        }
    }

    /// Runs `prepare` on the options before every connection attempt.
    pub(crate) fn with_prepare(mut self, prepare: Prepare) -> Self {
        self.prepare = Some(prepare);
        self
    }

    /// Polls the connection once (connecting when it is down).
    pub(crate) async fn poll(&mut self) -> Polled {
        if !self.up {
            // rumqttc connects with `eventloop.options` on the next poll:
            // this is the moment to put the current token and
            // certificates in.
            if let Some(prepare) = &self.prepare {
                if let Err(reason) = prepare(&mut self.eventloop.options) {
                    let error = ConnectionError::Io(std::io::Error::other(reason));
                    let loss = self.backoff.lost(Instant::now(), false);
                    return Polled::Lost { error, loss };
                }
            }
            self.up = true;
        }
        match self.eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let reconnect = self.backoff.connected(Instant::now());
                if let Some(filters) = &self.filters {
                    // Subscribe on every CONNACK: a new session has no
                    // subscriptions, and a broker restarted from its
                    // persistence keeps the session without its shared
                    // ones (Mosquitto 2.0 does not persist them), so until
                    // the broker has this SUBSCRIBE, what is published to
                    // the group's topics has no subscriber and is dropped.
                    // Hence it goes first on the new connection: at the
                    // front of the event loop's pending queue (what rumqttc
                    // re-sends from the previous connection, before its
                    // request channel), not at the back of the request
                    // channel, behind all that was queued while the broker
                    // was away.
                    let filters = filters();
                    subscribe_first(&self.name, &mut self.eventloop, &filters);
                }
                Polled::Connected { ack, reconnect }
            }
            Ok(ev) => {
                if let Event::Incoming(Packet::Disconnect(d)) = &ev {
                    if d.reason_code == DisconnectReasonCode::SessionTakenOver {
                        self.said_taken_over = true;
                    }
                }
                Polled::Event(ev)
            }
            Err(error) => {
                self.up = false;
                // rumqttc reports the broker's DISCONNECT (0x8E) as an
                // error; Mosquitto 2.0 just closes the replaced connection,
                // which `Backoff` notices as flapping.
                let said =
                    std::mem::take(&mut self.said_taken_over) || is_session_taken_over(&error);
                let loss = self.backoff.lost(Instant::now(), said);
                Polled::Lost { error, loss }
            }
        }
    }

    /// The event loop, to keep polling it while shutting down.
    pub(crate) fn eventloop(&mut self) -> &mut EventLoop {
        &mut self.eventloop
    }

    /// Sends DISCONNECT and flushes it (at most a second).
    pub(crate) async fn disconnect(&mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Makes a SUBSCRIBE of `filters` (QoS 1) the next packet `eventloop`
/// sends, ahead of anything it still has to send again from the previous
/// connection (and of its request channel); an empty list subscribes
/// nothing. Call it when the CONNACK is polled: nothing has been sent on
/// the new connection yet, so the broker has the subscriptions before any
/// of this client's publishes, replies or acknowledgements.
fn subscribe_first(name: &str, eventloop: &mut EventLoop, filters: &[String]) {
    if filters.is_empty() {
        return;
    }
    let subscribe = Subscribe::new_many(
        filters
            .iter()
            .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce)),
        None,
    );
    eventloop.pending.push_front(Request::Subscribe(subscribe));
    info!(transport = %name, filters = ?filters, ahead_of = eventloop.pending.len() - 1, "subscribing before anything else");
}

/// Subscribes `filters` (QoS 1) and logs it; an empty list subscribes
/// nothing. Returns whether a SUBSCRIBE was sent (a SUBACK will follow).
pub(crate) async fn subscribe(name: &str, client: &AsyncClient, filters: &[String]) -> bool {
    if filters.is_empty() {
        return false;
    }
    let subs = filters
        .iter()
        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
    match client.subscribe_many(subs).await {
        Ok(()) => {
            info!(transport = %name, filters = ?filters, "subscribed");
            true
        }
        Err(e) => {
            error!(transport = %name, error = %e, "cannot subscribe");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn failed_attempts_back_off_exponentially_up_to_the_max() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        let delays: Vec<_> = (0..12).map(|_| b.lost(t, false).delay).collect();
        assert_eq!(delays[0], MIN);
        assert_eq!(delays[1], MIN * 2);
        assert_eq!(delays[2], MIN * 4);
        assert_eq!(*delays.last().unwrap(), MAX);
        assert!(delays.iter().all(|d| *d <= MAX));
    }

    #[test]
    fn first_connack_is_not_a_reconnect_but_one_after_a_loss_is() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        assert!(!b.connected(t));
        b.lost(t, false);
        assert!(b.connected(t));
        assert!(!b.connected(t));
    }

    #[test]
    fn stable_connection_starts_the_backoff_over() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        for _ in 0..5 {
            b.lost(t, false);
        }
        b.connected(t);
        let loss = b.lost(t + STABLE_CONNECTION, false);
        assert!(loss.was_connected);
        assert_eq!(loss.delay, QUICK_RETRY);
        assert_eq!(loss.brief, 0);
        assert!(!loss.taken_over);
    }

    #[test]
    fn after_a_stable_connection_is_lost_attempts_are_quick_for_a_while() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        b.connected(t);
        let lost_at = t + STABLE_CONNECTION;
        assert_eq!(b.lost(lost_at, false).delay, QUICK_RETRY);
        // Failed attempts (the broker restarting) stay quick...
        for k in 1..10 {
            let loss = b.lost(lost_at + QUICK_RETRY * k, false);
            assert!(!loss.was_connected);
            assert_eq!(loss.delay, QUICK_RETRY);
        }
        // ... for a while, then back off from the minimum as usual.
        let later = lost_at + QUICK_RETRY_FOR;
        assert_eq!(b.lost(later, false).delay, MIN);
        assert_eq!(b.lost(later, false).delay, MIN * 2);
        // A minimum below the quick delay is kept.
        let tiny = Duration::from_millis(5);
        let mut b = Backoff::new(tiny, MAX);
        b.connected(t);
        assert_eq!(b.lost(lost_at, false).delay, tiny);
    }

    #[test]
    fn a_brief_or_taken_over_connection_gets_no_quick_attempts() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        b.connected(t);
        let lost_at = t + STABLE_CONNECTION;
        b.lost(lost_at, false);
        // Back at once, but closed right after being accepted: flapping.
        b.connected(lost_at);
        let loss = b.lost(lost_at + Duration::from_millis(10), false);
        assert_eq!(loss.brief, 1);
        assert_eq!(loss.delay, MIN);
        // Taken over after a stable connection: the long pause, not quick.
        let mut b = Backoff::new(MIN, MAX);
        b.connected(t);
        let loss = b.lost(lost_at, true);
        assert!(loss.taken_over);
        assert_eq!(loss.delay, MAX.max(TAKEN_OVER_BACKOFF));
    }

    #[test]
    fn connections_closed_right_after_connack_count_as_taken_over() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        let mut losses = Vec::new();
        for _ in 0..FLAPS_BEFORE_BACKING_OFF {
            b.connected(t);
            losses.push(b.lost(t + Duration::from_millis(10), false));
        }
        assert!(losses[..losses.len() - 1].iter().all(|l| !l.taken_over));
        let last = losses.last().unwrap();
        assert!(last.taken_over && !last.said_taken_over);
        assert_eq!(last.brief, FLAPS_BEFORE_BACKING_OFF);
        assert_eq!(last.delay, MAX.max(TAKEN_OVER_BACKOFF));
    }

    #[test]
    fn taken_over_session_waits_at_least_the_takeover_backoff() {
        let mut b = Backoff::new(MIN, Duration::from_secs(1));
        let t = Instant::now();
        b.connected(t);
        let loss = b.lost(t + Duration::from_secs(60), true);
        assert!(loss.was_connected && loss.said_taken_over && loss.taken_over);
        assert_eq!(loss.delay, TAKEN_OVER_BACKOFF);
        // The wait after it is capped at the max again.
        assert_eq!(b.lost(t, false).delay, Duration::from_secs(1));
    }

    #[test]
    fn an_attempt_that_never_connected_is_not_brief() {
        let mut b = Backoff::new(MIN, MAX);
        let t = Instant::now();
        for _ in 0..10 {
            let loss = b.lost(t, false);
            assert!(!loss.was_connected && !loss.taken_over);
            assert_eq!(loss.brief, 0);
        }
    }
}
