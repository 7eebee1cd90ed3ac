//! Liveness and readiness: what `/healthz` and `/readyz` report.
//!
//! - **Liveness** (`/healthz`): the runtime still runs its work. A ticker
//!   bumps a heartbeat every half second; a heartbeat older than
//!   [`STALE_AFTER`] means the runtime is wedged (a blocked worker, a
//!   runaway task). Each MQTT connection loop notes every round; one that
//!   has not gone round for twice the keep-alive interval plus the longest
//!   reconnect delay and 30 s is wedged too. A transport loop or a
//!   long-running service (see
//!   [`AppBuilder::service`](crate::app::AppBuilder::service)) that ended
//!   before shutdown is dead too, and so is a part whose
//!   [`Health::watch`] check says so (the station watches the SFC engine's
//!   loop). A restart is the cure for each.
//! - **Readiness** (`/readyz`): this replica can do its work now. Each MQTT
//!   transport is connected and subscribed, Redis answered the last PING
//!   (sent every [`PROBE_INTERVAL`], given [`PROBE_TIMEOUT`]), and every
//!   service is running. Readiness comes back by itself when the broker or
//!   Redis returns: nothing restarts.

use crate::transport::mqtt::MqttTransport;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the Redis probe sends PING.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the Redis probe waits for PONG before it calls Redis down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A heartbeat older than this makes the process not live.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// One check of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `mqtt:<transport>`, `redis`, `service:<name>`, `transport:<name>`,
    /// `heartbeat`.
    pub name: String,
    /// Whether it passes.
    pub ok: bool,
    /// Why not (or a short state when it passes).
    pub detail: String,
}

/// The answer of `/healthz` or `/readyz`: `ok` when every check passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether every check passes.
    pub ok: bool,
    /// Each check, in a stable order.
    pub checks: Vec<Check>,
}

impl Report {
    fn of(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The names of the failing checks.
    pub fn failing(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// Redis probe state: -1 not probed yet, 0 down, 1 up.
const UNKNOWN: i8 = -1;

/// The health of one app, shared by its tasks and its HTTP server. Cheap
/// to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    /// Milliseconds since `started` at the last heartbeat.
    heartbeat: AtomicU64,
    transports: Mutex<Vec<Watched>>,
    services: Mutex<Vec<(String, Arc<AtomicBool>)>>,
    /// Readiness conditions a service opens once it serves.
    gates: Mutex<Vec<(String, Arc<AtomicBool>)>>,
    watches: Mutex<Vec<(String, Watch)>>,
    redis: Option<RedisState>,
    stopping: AtomicBool,
}

/// A liveness check of the user's: `Ok(state)` or `Err(why not)`.
type Watch = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A transport by name, and whether its loop still runs.
type Watched = (String, Weak<MqttTransport>, Arc<AtomicBool>);

#[derive(Debug)]
struct RedisState {
    up: AtomicI8,
    last_error: Mutex<String>,
}

impl Health {
    /// A fresh health with a Redis check when `redis` (not ready until the
    /// first probe answers).
    pub(crate) fn new(redis: bool) -> Health {
        Health {
            inner: Arc::new(Inner {
                started: Instant::now(),
                heartbeat: AtomicU64::new(0),
                transports: Mutex::new(Vec::new()),
                services: Mutex::new(Vec::new()),
                gates: Mutex::new(Vec::new()),
                watches: Mutex::new(Vec::new()),
                redis: redis.then(|| RedisState {
                    up: AtomicI8::new(UNKNOWN),
                    last_error: Mutex::new("not probed yet".into()),
                }),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Watches a transport; the returned flag is to be cleared when its
    /// loop ends.
    pub(crate) fn transport(&self, name: &str, t: &Arc<MqttTransport>) -> Arc<AtomicBool> {
        let running = Arc::new(AtomicBool::new(true));
        lock(&self.inner.transports).push((name.to_owned(), Arc::downgrade(t), running.clone()));
        running
    }

    /// Watches a long-running service; the returned flag is to be cleared
    /// when it ends.
    pub(crate) fn service(&self, name: &str) -> Arc<AtomicBool> {
        let running = Arc::new(AtomicBool::new(true));
        lock(&self.inner.services).push((name.to_owned(), running.clone()));
        running
    }

    /// Adds a readiness condition `name`, closed until the returned flag is
    /// set: a service that needs time before it serves (the OPC UA server
    /// creating its certificate, then listening) keeps the replica out of
    /// its Service until then.
    pub(crate) fn gate(&self, name: &str) -> Arc<AtomicBool> {
        let open = Arc::new(AtomicBool::new(false));
        lock(&self.inner.gates).push((name.to_owned(), open.clone()));
        open
    }

    /// Adds a liveness check `name`: `check` answers `Ok(state)` while the
    /// part it watches is alive, `Err(why)` when it is wedged (a restart
    /// would help). It is called on every `/healthz`, so it must be cheap
    /// and must not block. Not consulted while the app shuts down.
    pub fn watch(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) {
        lock(&self.inner.watches).push((name.into(), Arc::new(check)));
    }

    /// The app is shutting down: what ends from now on ends on purpose,
    /// and the app is no longer ready.
    pub(crate) fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// Bumps the heartbeat.
    pub(crate) fn beat(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner.heartbeat.store(ms, Ordering::Relaxed);
    }

    /// Records a Redis probe's outcome; returns whether it changed.
    pub(crate) fn redis_probed(&self, outcome: Result<(), String>) -> bool {
        let Some(r) = &self.inner.redis else {
            return false;
        };
        let up = outcome.is_ok();
        if let Err(e) = outcome {
            *lock(&r.last_error) = e;
        }
        crate::metrics::redis_probed(up);
        r.up.swap(i8::from(up), Ordering::Relaxed) != i8::from(up)
    }

    /// Liveness: the heartbeat is fresh and no transport loop or service
    /// ended before shutdown.
    pub fn liveness(&self) -> Report {
        let beat = Duration::from_millis(self.inner.heartbeat.load(Ordering::Relaxed));
        let age = self.inner.started.elapsed().saturating_sub(beat);
        let mut checks = vec![Check {
            name: "heartbeat".into(),
            ok: age < STALE_AFTER,
            detail: format!("last beat {} ms ago", age.as_millis()),
        }];
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        for (name, t, running) in lock(&self.inner.transports).iter() {
            let mut c = ended(format!("transport:{name}"), running, stopping);
            if let (true, Some(t)) = (c.ok && !stopping, t.upgrade()) {
                let (quiet, allowed) = t.quiet();
                if quiet > allowed {
                    c.ok = false;
                    c.detail = format!(
                        "connection loop quiet for {} s (allowed {} s)",
                        quiet.as_secs(),
                        allowed.as_secs()
                    );
                }
            }
            checks.push(c);
        }
        for (name, running) in lock(&self.inner.services).iter() {
            checks.push(ended(format!("service:{name}"), running, stopping));
        }
        let watches: Vec<(String, Watch)> = lock(&self.inner.watches).clone();
        for (name, check) in watches {
            let (ok, detail) = match check() {
                Ok(d) => (true, d),
                Err(d) => (stopping, d),
            };
            checks.push(Check { name, ok, detail });
        }
        Report::of(checks)
    }

    /// Readiness: every transport connected and subscribed, Redis
    /// answering, every service running, and not shutting down.
    pub fn readiness(&self) -> Report {
        let mut checks = Vec::new();
        if self.inner.stopping.load(Ordering::Relaxed) {
            checks.push(Check {
                name: "shutdown".into(),
                ok: false,
                detail: "shutting down".into(),
            });
        }
        for (name, t, _) in lock(&self.inner.transports).iter() {
            let (ok, detail) = match t.upgrade() {
                Some(t) if t.is_ready() => (true, "connected and subscribed"),
                Some(t) if t.is_connected() => (false, "connected, not yet subscribed"),
                Some(_) => (false, "not connected to the broker"),
                None => (false, "transport dropped"),
            };
            checks.push(Check {
                name: format!("mqtt:{name}"),
                ok,
                detail: detail.into(),
            });
        }
        if let Some(r) = &self.inner.redis {
            let (ok, detail) = match r.up.load(Ordering::Relaxed) {
                1 => (true, "PING answered".to_owned()),
                _ => (false, lock(&r.last_error).clone()),
            };
            checks.push(Check {
                name: "redis".into(),
                ok,
                detail,
            });
        }
        for (name, running) in lock(&self.inner.services).iter() {
            let ok = running.load(Ordering::Relaxed);
            checks.push(Check {
                name: format!("service:{name}"),
                ok,
                detail: if ok { "running" } else { "ended" }.into(),
            });
        }
        for (name, open) in lock(&self.inner.gates).iter() {
            let ok = open.load(Ordering::Relaxed);
            checks.push(Check {
                name: name.clone(),
                ok,
                detail: if ok { "serving" } else { "not serving yet" }.into(),
            });
        }
        Report::of(checks)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("liveness", &self.liveness())
            .field("readiness", &self.readiness())
            .finish()
    }
}

fn ended(name: String, running: &AtomicBool, stopping: bool) -> Check {
    let alive = running.load(Ordering::Relaxed);
    Check {
        name,
        ok: alive || stopping,
        detail: if alive { "running" } else { "ended" }.into(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_check_fails_until_the_first_answer_and_follows_each_probe() {
        let h = Health::new(true);
        assert_eq!(h.readiness().failing(), vec!["redis"]);
        assert!(h.redis_probed(Ok(())));
        assert!(h.readiness().ok);
        assert!(!h.redis_probed(Ok(())));
        assert!(h.redis_probed(Err("connection refused".into())));
        let r = h.readiness();
        assert_eq!(r.failing(), vec!["redis"]);
        assert_eq!(r.checks[0].detail, "connection refused");
    }

    #[test]
    fn a_watch_that_says_wedged_makes_the_app_not_live_until_shutdown() {
        let h = Health::new(false);
        h.beat();
        let wedged = Arc::new(AtomicBool::new(false));
        let w = wedged.clone();
        h.watch("engine:loop", move || {
            if w.load(Ordering::Relaxed) {
                Err("quiet for 200 s".into())
            } else {
                Ok("went round".into())
            }
        });
        assert!(h.liveness().ok);
        wedged.store(true, Ordering::Relaxed);
        let r = h.liveness();
        assert_eq!(r.failing(), vec!["engine:loop"]);
        assert!(h.readiness().ok, "liveness only");
        h.stopping();
        assert!(h.liveness().ok);
    }

    #[test]
    fn service_that_ends_before_shutdown_is_dead_and_not_ready() {
        let h = Health::new(false);
        h.beat();
        let s = h.service("sfc-engine");
        assert!(h.liveness().ok && h.readiness().ok);
        s.store(false, Ordering::Relaxed);
        assert_eq!(h.liveness().failing(), vec!["service:sfc-engine"]);
        assert_eq!(h.readiness().failing(), vec!["service:sfc-engine"]);
        h.stopping();
        assert!(h.liveness().ok, "ending during shutdown is on purpose");
        assert!(!h.readiness().ok, "a stopping app takes no traffic");
    }

    #[test]
    fn a_gate_keeps_the_app_unready_until_it_is_opened() {
        let h = Health::new(false);
        assert!(h.readiness().failing().is_empty());
        let open = h.gate("opcua:listening");
        assert_eq!(h.readiness().failing(), vec!["opcua:listening"]);
        open.store(true, Ordering::Relaxed);
        assert!(h.readiness().failing().is_empty());
    }
}
