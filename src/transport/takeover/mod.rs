//! Taking over the persistent MQTT session of a replica that died for good.
//!
//! Replicas in a shared subscription group each hold a persistent session
//! (clean start off, session expiry > 0), so a restarted replica finds what
//! was queued for it. A replica that never comes back (a pod replaced by
//! one with a new `POD_ID`) leaves its session behind, and the broker keeps
//! handing it its share of the group's messages until the session expires,
//! an hour later: those commands are never answered.
//!
//! So every replica keeps a heartbeat of its session in Redis
//! ([`SessionRegistry`]) and looks for sessions whose heartbeat is older
//! than the dead-after timeout. For each it claims a takeover lock and
//! connects a second MQTT connection *with the dead client id* and clean
//! start off: the broker hands that connection the session, with its
//! queued and unacknowledged messages, which go through this replica's own
//! processors (same routes, dedupe, replies and acknowledgements; only no
//! subscribing, and the emitters stay bound to the replica's own
//! transport). Once the queue is quiet it unsubscribes the session's
//! filters (the session leaves the group, so nothing new is queued for it),
//! waits until everything received was processed and acknowledged, and
//! disconnects; then it removes the session from the registry.
//!
//! The takeover connection announces a short session expiry
//! ([`TAKEOVER_SESSION_EXPIRY`]) instead of ending the session at once:
//! should the taking-over replica die mid-way, the session (and what it
//! had not acknowledged yet) is still there for the next peer once the
//! takeover lock expires; after a completed takeover it is an empty
//! session without subscriptions that the broker drops by itself.
//!
//! If the owner comes back with the same client id (a StatefulSet pod
//! restarted, or an owner that only lost Redis for a while), the broker
//! disconnects the takeover connection with *Session taken over*; the
//! takeover just stops, leaving what it had not acknowledged to the owner.
//!
//! On graceful shutdown a replica leaves its shared group before it
//! disconnects, and then marks its own session as gone, so a peer takes
//! over at its next heartbeat whatever was still queued, instead of after
//! the dead-after timeout.

use crate::redis::scripts::{SESSION_DEAD, SESSION_FORGET, SESSION_HEARTBEAT};
use crate::redis::Keys;
use crate::runtime::Shutdown;
use crate::singleton::SingletonLock;
use crate::transport::mqtt::MqttTransport;
use crate::transport::Publisher;
use crate::redis::RedisConnection;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Default time between two heartbeats (and scans for dead peers).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Default age of the last heartbeat after which a session is taken over.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(10);

/// Session expiry the takeover connection announces: longer than the
/// takeover lock, so that the session of a takeover that died half-way is
/// still there for the next peer.
pub const TAKEOVER_SESSION_EXPIRY: Duration = Duration::from_secs(120);

/// How long the takeover lock of one session outlives its last renewal.
/// The taker renews it every third of this; a taker that dies half-way
/// leaves the session to the next peer after at most this long.
const LOCK_TTL: Duration = Duration::from_secs(9);

/// A takeover gives up (and leaves the session for the next try) after
/// this long.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(45);

/// No message received for this long, and none in progress: the queue
/// has been handed over.
const QUIET: Duration = Duration::from_secs(1);

/// Longest wait for the queue to go quiet before leaving the group (under
/// steady traffic the session keeps getting its share until it leaves).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Heartbeat and dead-peer detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeoverSettings {
    /// Time between two heartbeats of this replica's session, which is also
    /// how often it looks for dead peers.
    pub heartbeat_interval: Duration,
    /// Age of a session's last heartbeat after which a peer takes it over;
    /// at least twice `heartbeat_interval`.
    pub dead_after: Duration,
}

impl Default for TakeoverSettings {
    fn default() -> Self {
        TakeoverSettings {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }
}

/// What a peer needs to know to take a session over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The owner's instance id (its response topics are named after it).
    pub instance_id: String,
    /// Every topic filter the session subscribed to.
    pub filters: Vec<String>,
}

/// The registry of persistent MQTT sessions in Redis: a zset
/// `P:{mqtt}:sessions` (client id by last heartbeat, in ms of the Redis
/// clock), a hash `P:{mqtt}:session-info` (client id → [`SessionInfo`] as
/// JSON) and one lock per takeover, `P:{mqtt}:takeover:{client id}`. The
/// `{mqtt}` hash tag keeps the keys a script touches in one cluster slot.
#[derive(Clone)]
pub struct SessionRegistry {
    conn: RedisConnection,
    keys: Keys,
}

impl std::fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRegistry")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl SessionRegistry {
    /// The registry under the key prefix `prefix`.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        SessionRegistry {
            conn,
            keys: Keys::new(prefix),
        }
    }

    /// Records that the session of `client_id` is alive now. Returns
    /// whether the entry was new (a peer completed a takeover of it, or
    /// this is the first heartbeat) and whether a peer is taking it over
    /// right now; either way the session may have left its groups.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn heartbeat(
        &self,
        client_id: &str,
        info: &SessionInfo,
    ) -> redis::RedisResult<(bool, bool)> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let mut c = self.conn.clone();
        let (added, locked): (i64, i64) = SESSION_HEARTBEAT
            .key(self.keys.sessions())
            .key(self.keys.session_info())
            .key(self.keys.takeover(client_id))
            .arg(client_id)
            .arg(json)
            .invoke_async(&mut c)
            .await?;
        Ok((added == 1, locked == 1))
    }

    /// Sessions without a heartbeat for `dead_after`, with what is known
    /// about them (`None` if nothing is).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn dead(
        &self,
        dead_after: Duration,
    ) -> redis::RedisResult<Vec<(String, Option<SessionInfo>)>> {
        let mut c = self.conn.clone();
        let flat: Vec<String> = SESSION_DEAD
            .key(self.keys.sessions())
            .key(self.keys.session_info())
            .arg(dead_after.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [id, info] => Some((id.clone(), serde_json::from_str(info).ok())),
                _ => None,
            })
            .collect())
    }

    /// Removes `client_id` from the registry if it is still dead (an owner
    /// that came back keeps its entry). Returns whether it was removed.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn forget_if_dead(
        &self,
        client_id: &str,
        dead_after: Duration,
    ) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = SESSION_FORGET
            .key(self.keys.sessions())
            .key(self.keys.session_info())
            .arg(client_id)
            .arg(dead_after.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Marks the session of `client_id` as gone (heartbeat at time zero),
    /// so a peer takes it over at its next scan: what a replica does when
    /// it stops gracefully.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn mark_gone(&self, client_id: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("ZADD")
            .arg(self.keys.sessions())
            .arg("XX")
            .arg(0)
            .arg(client_id)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }
}

/// What a transport reports about its connection for takeovers: whether
/// the broker had a session, whether it gave the session to another
/// connection, and how busy the transport is. Written by the transport,
/// read by [`SessionKeeper`].
#[derive(Debug)]
pub(crate) struct Signals {
    busy: AtomicUsize,
    last_received: Mutex<Instant>,
    session_present: watch::Sender<Option<bool>>,
    taken_over: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            busy: AtomicUsize::new(0),
            last_received: Mutex::new(Instant::now()),
            session_present: watch::channel(None).0,
            taken_over: watch::channel(false).0,
            stopped: watch::channel(false).0,
        }
    }
}

impl Signals {
    /// The broker accepted the connection.
    pub(crate) fn connected(&self, session_present: bool) {
        self.session_present.send_replace(Some(session_present));
    }

    /// A message arrived; it counts as busy until [`Signals::finished`].
    pub(crate) fn received(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        *self.last_received.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// A received message was handled (acknowledged or left for
    /// redelivery).
    pub(crate) fn finished(&self) {
        let _ = self
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// The broker gave our session to another connection with our client
    /// id (DISCONNECT reason 0x8E).
    pub(crate) fn taken_over(&self) {
        self.taken_over.send_replace(true);
    }

    /// The transport has stopped (after its graceful drain).
    pub(crate) fn stopped(&self) {
        self.stopped.send_replace(true);
    }

    /// Nothing received for `d` and nothing in progress.
    pub(crate) fn quiet_for(&self, d: Duration) -> bool {
        let last = *self.last_received.lock().unwrap_or_else(|p| p.into_inner());
        self.busy.load(Ordering::SeqCst) == 0 && last.elapsed() >= d
    }

    fn session_present(&self) -> Option<bool> {
        *self.session_present.borrow()
    }

    fn is_taken_over(&self) -> bool {
        *self.taken_over.borrow()
    }

    async fn wait_taken_over(&self) {
        let mut rx = self.taken_over.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }

    async fn wait_stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }
}

/// Whether a connection error is the broker's DISCONNECT with reason
/// *Session taken over* (0x8E): another connection uses our client id.
pub(crate) fn is_session_taken_over(e: &rumqttc::v5::ConnectionError) -> bool {
    matches!(
        e,
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code: rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}

/// Keeps one transport's session registered and takes over the sessions
/// of dead peers: run it as an app task beside the transport (the app does
/// this for every transport with a persistent session when session
/// takeover is on).
pub struct SessionKeeper {
    transport: Arc<MqttTransport>,
    registry: SessionRegistry,
    settings: TakeoverSettings,
}

impl std::fmt::Debug for SessionKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeeper")
            .field("transport", &self.transport.name())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SessionKeeper {
    /// A keeper for `transport`'s session in `registry`.
    pub fn new(
        transport: Arc<MqttTransport>,
        registry: SessionRegistry,
        settings: TakeoverSettings,
    ) -> Self {
        SessionKeeper {
            transport,
            registry,
            settings,
        }
    }

    /// Heartbeats and takes over dead peers' sessions until `shutdown`;
    /// then waits for the transport to stop and marks its session as gone,
    /// so a peer picks up whatever is still queued for it at once. Redis
    /// failures are logged and retried at the next heartbeat.
    pub async fn run(self, mut shutdown: Shutdown) {
        let own = self.transport.settings().client_id.clone();
        let info = SessionInfo {
            instance_id: self.transport.settings().instance_id.clone(),
            filters: self.transport.subscriptions(),
        };
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut takeovers = JoinSet::new();
        // `None` until the first heartbeat: a new entry then is just us
        // starting.
        let mut taken: Option<bool> = None;
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            while takeovers.try_join_next().is_some() {}
            match self.registry.heartbeat(&own, &info).await {
                Ok((added, locked)) => {
                    let now = locked || (added && taken.is_some());
                    // A peer took (or is taking) our session while we could
                    // not heartbeat: it may have left our groups, so
                    // subscribe again (when it starts and when it is over).
                    if taken.is_some_and(|before| before != now) {
                        warn!(client_id = %own, "a peer took over this session while its heartbeat was missing; subscribing again");
                        self.transport.resubscribe();
                    }
                    taken = Some(now);
                }
                Err(e) => {
                    warn!(client_id = %own, error = %e, "cannot renew the MQTT session heartbeat; peers may take the session over");
                    continue;
                }
            }
            let dead = match self.registry.dead(self.settings.dead_after).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot look for dead MQTT sessions");
                    continue;
                }
            };
            for (client_id, info) in dead {
                if client_id == own || !lock(&running).insert(client_id.clone()) {
                    continue;
                }
                let takeover = Takeover {
                    transport: self.transport.clone(),
                    registry: self.registry.clone(),
                    dead_after: self.settings.dead_after,
                    client_id: client_id.clone(),
                    info,
                };
                let running = running.clone();
                let sd = shutdown.clone();
                takeovers.spawn(async move {
                    takeover.run(sd).await;
                    lock(&running).remove(&client_id);
                });
            }
        }
        // Graceful stop: the transport leaves its group and drains; once it
        // is gone, hand what is still queued for its session to a peer.
        let grace = self.transport.settings().shutdown_grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, self.transport.signals().wait_stopped()).await;
        match self.registry.mark_gone(&own).await {
            Ok(()) => info!(client_id = %own, "MQTT session handed to the peers"),
            Err(e) => {
                warn!(client_id = %own, error = %e, "cannot mark the MQTT session as gone; peers take it over after the dead-after timeout")
            }
        }
        let _ = tokio::time::timeout(grace, async {
            while takeovers.join_next().await.is_some() {}
        })
        .await;
    }
}

/// One takeover of one dead session.
struct Takeover {
    transport: Arc<MqttTransport>,
    registry: SessionRegistry,
    dead_after: Duration,
    client_id: String,
    info: Option<SessionInfo>,
}

impl Takeover {
    async fn run(self, shutdown: Shutdown) {
        let me = self.transport.settings().instance_id.clone();
        let lock = SingletonLock::new(
            self.registry.conn.clone(),
            self.registry.keys.takeover(&self.client_id),
            me,
            LOCK_TTL,
        );
        match lock.try_acquire().await {
            Ok(true) => {}
            Ok(false) => return, // a peer is on it
            Err(e) => {
                warn!(client_id = %self.client_id, error = %e, "cannot claim the takeover of a dead MQTT session");
                return;
            }
        }
        // Renew the lock while the takeover runs: a taker killed half-way
        // must not keep its peers away for long, since the orphaned session
        // still collects its share of the group's messages.
        let renew = async {
            let mut tick = tokio::time::interval(LOCK_TTL / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match lock.try_acquire().await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(client_id = %self.client_id, "takeover lock taken by a peer while this takeover runs")
                    }
                    Err(e) => {
                        warn!(client_id = %self.client_id, error = %e, "cannot renew the takeover lock")
                    }
                }
            }
        };
        let work = async {
            let instance_id = self
                .info
                .as_ref()
                .map_or_else(|| self.client_id.clone(), |i| i.instance_id.clone());
            let filters = self
                .info
                .as_ref()
                .map_or_else(|| self.transport.subscriptions(), |i| i.filters.clone());
            warn!(client_id = %self.client_id, instance = %instance_id, dead_after_s = self.dead_after.as_secs(), "MQTT session without heartbeat: taking it over to process what the broker queued for it");
            let t =
                self.transport
                    .takeover_of(&self.client_id, &instance_id, TAKEOVER_SESSION_EXPIRY);
            let run = tokio::spawn(t.clone().run());
            let done = tokio::time::timeout(TAKEOVER_LIMIT, drive(&t, &filters, shutdown)).await;
            t.shutdown();
            let _ = tokio::time::timeout(t.settings().shutdown_grace + Duration::from_secs(2), run)
                .await;
            match done {
                Ok(Outcome::Done) if !t.signals().is_taken_over() => {
                    let m = t.metrics().snapshot();
                    match self
                        .registry
                        .forget_if_dead(&self.client_id, self.dead_after)
                        .await
                    {
                        Ok(_) => {
                            info!(client_id = %self.client_id, received = m.received, processed = m.processed, duplicates = m.duplicates, "took over the MQTT session of a dead replica; it left its group and ends")
                        }
                        Err(e) => {
                            warn!(client_id = %self.client_id, error = %e, "took over the MQTT session, but cannot remove it from the registry")
                        }
                    }
                }
                Ok(Outcome::Done | Outcome::Stopped) => {
                    info!(client_id = %self.client_id, "session takeover stopped: the owner is back or this replica stops");
                }
                Ok(Outcome::Unfinished) | Err(_) => {
                    error!(client_id = %self.client_id, limit_s = TAKEOVER_LIMIT.as_secs(), "session takeover did not finish in time; a peer tries again when the lock expires");
                }
            }
        };
        tokio::select! {
            _ = work => {}
            _ = renew => {}
        }
        if let Err(e) = lock.release().await {
            warn!(client_id = %self.client_id, error = %e, "cannot release the takeover lock; it expires");
        }
    }
}

enum Outcome {
    /// The queue was processed and the session left its group.
    Done,
    /// Messages were still in progress when time ran out.
    Unfinished,
    /// The owner came back or this replica is stopping.
    Stopped,
}

/// Connects, lets the queued messages be processed, leaves the group and
/// waits until everything received is acknowledged.
async fn drive(t: &MqttTransport, filters: &[String], mut shutdown: Shutdown) -> Outcome {
    let signals = t.signals();
    let stop = async {
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = signals.wait_taken_over() => {}
        }
    };
    tokio::pin!(stop);
    tokio::select! {
        _ = t.connected() => {}
        _ = &mut stop => return Outcome::Stopped,
    }
    if signals.session_present() == Some(true) {
        // The broker sends the queue right after CONNACK (at most Receive
        // Maximum at a time, the rest as we acknowledge). Leaving the group
        // only after that keeps us independent of whether a broker keeps
        // or drops queued messages of a filter that is unsubscribed.
        tokio::select! {
            _ = wait_quiet(signals, SETTLE_LIMIT) => {}
            _ = &mut stop => return Outcome::Stopped,
        }
    }
    // Out of the group: the broker queues nothing new for this session.
    t.leave(filters).await;
    tokio::select! {
        _ = tokio::time::sleep(QUIET) => {}
        _ = &mut stop => return Outcome::Stopped,
    }
    tokio::select! {
        quiet = wait_quiet(signals, TAKEOVER_LIMIT) => if quiet { Outcome::Done } else { Outcome::Unfinished },
        _ = &mut stop => Outcome::Stopped,
    }
}

/// Waits until nothing was received for [`QUIET`] and nothing is in
/// progress; `false` if that did not happen within `limit`.
async fn wait_quiet(signals: &Signals, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if signals.quiet_for(QUIET) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
