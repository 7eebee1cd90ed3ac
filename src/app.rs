//! The application: processors bound to transports, background tasks, and a
//! graceful shutdown on SIGTERM/SIGINT.
//!
//! ```no_run
//! # async fn demo() -> Result<(), microdcs::AppError> {
//! use microdcs::{App, Processor, TopicBinding};
//! use microdcs::transport::mqtt::MqttSettings;
//! let processor = Processor::northbound("greeter").build();
//! App::builder()
//!     .mqtt("mqtt", MqttSettings::new("localhost", 1883, "station-1"))
//!     .redis_url("redis://localhost:6379", "microdcs")
//!     .processor(processor, TopicBinding::new("app/greetings"))
//!     .build()
//!     .await?
//!     .run()
//!     .await
//! # }
//! ```

use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::health::Health;
use crate::processor::Processor;
pub use crate::redis::{Redis, RedisClient, RedisConnection, RedisTls};
pub use crate::runtime::{Shutdown, ShutdownHandle};
use crate::transport::mqtt::{MqttSettings, MqttTransport};
use crate::transport::msgpack::{MsgpackSettings, MsgpackTransport};
use crate::transport::takeover::{SessionKeeper, SessionRegistry, TakeoverSettings};
use crate::transport::{BoxFuture, Publisher as _, TopicBinding};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Errors that stop an application from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// Redis settings are unusable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A processor was bound to a transport that does not exist.
    #[error("processor '{processor}' is bound to unknown transport '{transport}'")]
    UnknownTransport {
        /// Processor name.
        processor: String,
        /// Transport name.
        transport: String,
    },
    /// The HTTP server's address cannot be bound (taken, not local,
    /// unresolvable).
    #[error("cannot listen for HTTP on {addr}: {reason}")]
    Http {
        /// The address as configured (`host:port`).
        addr: String,
        /// Why.
        reason: String,
    },
    /// The meter provider cannot be built.
    #[error("metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A background task failed.
    #[error("task '{task}' failed: {reason}")]
    Task {
        /// Task name.
        task: String,
        /// Its error.
        reason: String,
    },
}

/// The name of the MessagePack-RPC transport [`AppBuilder::from_config`]
/// adds when `msgpack.processors` names any.
pub(crate) const MSGPACK: &str = "msgpack";

type Task = Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, Result<(), String>> + Send>;

/// A background task: its name, its body, and whether it is a service
/// (runs until shutdown; its end before that is a health failure).
type Named = (String, Task, bool);

/// Builds an [`App`].
#[must_use = "an app builder does nothing until `build` and `run` are called"]
pub struct AppBuilder {
    transports: Vec<(String, MqttSettings)>,
    msgpack: Vec<(String, MsgpackSettings)>,
    redis: Option<(RedisSource, String, Duration)>,
    claim_lease: Duration,
    bindings: Vec<(Option<String>, Processor, TopicBinding)>,
    tasks: Vec<Named>,
    grace: Duration,
    config: Option<Config>,
    takeover: Option<TakeoverSettings>,
    http: Option<String>,
    otlp_metrics: bool,
    redis_tls: Option<RedisTls>,
}

/// A built application, ready to [`run`](App::run).
pub struct App {
    transports: Vec<Arc<MqttTransport>>,
    msgpack: Vec<Arc<MsgpackTransport>>,
    tasks: Vec<Named>,
    grace: Duration,
    shutdown: ShutdownHandle,
    redis: Option<Redis>,
    health: Health,
    http: Option<(tokio::net::TcpListener, SocketAddr)>,
    otlp_metrics: bool,
}

/// Where the app's Redis connection comes from.
enum RedisSource {
    Url(String),
    /// The node URLs of a Redis Cluster.
    Cluster(Vec<String>),
    Shared(Box<Redis>),
}

impl App {
    /// Starts building an application.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            transports: Vec::new(),
            msgpack: Vec::new(),
            redis: None,
            bindings: Vec::new(),
            tasks: Vec::new(),
            grace: Duration::from_secs(10),
            config: None,
            claim_lease: Duration::from_secs(30),
            takeover: None,
            http: None,
            otlp_metrics: false,
            redis_tls: None,
        }
    }

    /// A handle that shuts the app down gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The transports, in the order they were added.
    pub fn transports(&self) -> &[Arc<MqttTransport>] {
        &self.transports
    }

    /// The MessagePack-RPC transports, in the order they were added.
    pub fn msgpack_transports(&self) -> &[Arc<MsgpackTransport>] {
        &self.msgpack
    }

    /// The shared Redis connection (auto-reconnecting), if configured.
    pub fn redis(&self) -> Option<RedisConnection> {
        self.redis.as_ref().map(|r| r.conn.clone())
    }

    /// The Redis client and shared connection, if configured.
    pub fn redis_handle(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// The liveness and readiness of this app (what `/healthz` and
    /// `/readyz` report).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The address the HTTP server listens on (`/healthz`, `/readyz`,
    /// `/metrics`), when [`AppBuilder::http`] asked for one: with port 0,
    /// the port the system chose.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, a)| *a)
    }

    /// Adds a background task after building (for tasks that need the
    /// transports or connections the build created). See
    /// [`AppBuilder::task`].
    #[must_use]
    pub fn task<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.tasks
            .push((name.into(), Box::new(move |s| Box::pin(f(s))), false));
        self
    }

    /// Adds a long-running background task after building. See
    /// [`AppBuilder::service`].
    #[must_use]
    pub fn service<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.tasks
            .push((name.into(), Box::new(move |s| Box::pin(f(s))), true));
        self
    }

    /// Runs until SIGTERM, SIGINT or [`ShutdownHandle::shutdown`], then shuts
    /// down gracefully: tasks see [`Shutdown`] and get half the grace period
    /// to stop while the transports still publish; then transports stop
    /// taking messages and finish in-flight work, everything within the
    /// grace period.
    ///
    /// # Errors
    /// A background task returned an error.
    pub async fn run(self) -> Result<(), AppError> {
        let health = self.health.clone();
        // The heartbeat of liveness: a runtime that cannot run this ticker
        // is wedged.
        health.beat();
        let beat = {
            let health = health.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    health.beat();
                }
            })
        };
        let mut joins = Vec::new();
        for t in &self.transports {
            let running = health.transport(t.name(), t);
            crate::metrics::watch_transport(
                t.name(),
                Arc::downgrade(t) as std::sync::Weak<dyn crate::metrics::ConnectionState>,
            );
            let t = t.clone();
            joins.push(tokio::spawn(async move {
                if let Err(e) = t.run().await {
                    error!(error = %e, "transport ended with an error");
                }
                running.store(false, Ordering::Relaxed);
            }));
        }
        for t in &self.msgpack {
            // Ready and live while it serves; its end before shutdown (a
            // listener that failed) fails both.
            let running = health.service(&format!("msgpack:{}", t.name()));
            let t = t.clone();
            joins.push(tokio::spawn(async move {
                if let Err(e) = t.clone().run().await {
                    error!(transport = t.name(), error = %e, "MessagePack-RPC transport ended with an error");
                }
                running.store(false, Ordering::Relaxed);
            }));
        }
        let startup = tokio::spawn(report_unreachable_broker(self.transports.clone()));
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = self.http.map(|(listener, addr)| {
            info!(%addr, "http server listening (/healthz, /readyz, /metrics)");
            let health = health.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = http_stopped.await;
                };
                if let Err(e) = crate::http::serve(listener, health, stop).await {
                    error!(%addr, error = %e, "http server ended with an error");
                }
            })
        });
        let mut task_joins = Vec::new();
        for (name, task, service) in self.tasks {
            let fut = task(self.shutdown.signal());
            let running = service.then(|| health.service(&name));
            task_joins.push((
                name.clone(),
                tokio::spawn({
                    let name = name.clone();
                    async move {
                        let r = fut.await;
                        if let Some(running) = running {
                            running.store(false, Ordering::Relaxed);
                        }
                        // Said when it happens, not only at shutdown: a
                        // service that fails while the app runs takes
                        // liveness down, and the log must say why.
                        if let Err(reason) = &r {
                            error!(task = %name, %reason, "task failed");
                        }
                        r
                    }
                }),
            ));
        }
        let mut requested = self.shutdown.signal();
        tokio::select! {
            _ = requested.wait() => info!("shutdown requested"),
            s = termination_signal() => info!(signal = s, "shutdown signal received"),
        }
        health.stopping();
        startup.abort();
        // Tasks stop first, while the transports still publish: what a task
        // sends as it stops (the MES publisher's last state index) reaches
        // the broker. They get half the grace period; then the transports
        // stop taking messages and finish their in-flight work.
        self.shutdown.shutdown();
        let deadline = tokio::time::Instant::now() + self.grace + Duration::from_secs(2);
        let tasks_first = tokio::time::Instant::now() + self.grace / 2;
        let mut task_joins: Vec<_> = task_joins.into_iter().map(|(n, j)| (n, Some(j))).collect();
        let mut outcomes = Vec::new();
        for (name, slot) in &mut task_joins {
            let Some(j) = slot.as_mut() else { continue };
            if let Ok(r) = tokio::time::timeout_at(tasks_first, j).await {
                slot.take();
                outcomes.push((name.clone(), Ok(r)));
            }
        }
        for t in &self.transports {
            t.shutdown();
        }
        for t in &self.msgpack {
            t.shutdown();
        }
        for j in joins {
            if tokio::time::timeout_at(deadline, j).await.is_err() {
                warn!("a transport did not stop within the grace period");
            }
        }
        for (name, slot) in task_joins {
            if let Some(j) = slot {
                outcomes.push((name, tokio::time::timeout_at(deadline, j).await));
            }
        }
        let mut first_error = None;
        for (name, outcome) in outcomes {
            match outcome {
                Ok(Ok(Ok(()))) => {}
                // Logged when it ended.
                Ok(Ok(Err(reason))) => {
                    first_error.get_or_insert(AppError::Task { task: name, reason });
                }
                Ok(Err(e)) => {
                    error!(task = %name, error = %e, "task panicked");
                    first_error.get_or_insert(AppError::Task {
                        task: name,
                        reason: e.to_string(),
                    });
                }
                Err(_) => warn!(task = %name, "task did not stop within the grace period"),
            }
        }
        // The probes answer until the end: not ready while stopping.
        let _ = stop_http.send(());
        if let Some(h) = http {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        beat.abort();
        if self.otlp_metrics {
            // The OTLP reader exports what is left; it blocks.
            let _ = tokio::task::spawn_blocking(crate::metrics::shutdown).await;
        }
        let mqtt = self.transports.iter().map(|t| (t.name(), t.metrics()));
        let msgpack = self.msgpack.iter().map(|t| (t.name(), t.metrics()));
        for (name, metrics) in mqtt.chain(msgpack) {
            log_counters(name, &metrics.snapshot());
        }
        info!(
            redis_round_trips = RedisConnection::round_trips(),
            "stopped"
        );
        first_error.map_or(Ok(()), Err)
    }
}

/// Logs a transport's counters at shutdown (MessagePack-RPC has no
/// reconnects: always 0 there).
fn log_counters(transport: &str, m: &crate::metrics::MetricsSnapshot) {
    info!(
        transport,
        received = m.received,
        processed = m.processed,
        duplicates = m.duplicates,
        dead_lettered = m.dead_lettered,
        replies = m.replies,
        retries = m.retries,
        reconnects = m.reconnects,
        errors = ?m.errors,
        "transport counters"
    );
}

/// Says plainly, a few seconds after start, which broker is not reachable
/// (the transports keep retrying; readiness stays off meanwhile).
async fn report_unreachable_broker(transports: Vec<Arc<MqttTransport>>) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in transports {
        if !t.is_connected() {
            let s = t.settings();
            warn!(transport = t.name(), broker = %format!("{}:{}", s.host, s.port), "MQTT broker not reachable; retrying, not ready until it is");
        }
    }
}

/// PINGs Redis every [`PROBE_INTERVAL`](crate::health::PROBE_INTERVAL)
/// for readiness, and says plainly when Redis goes and comes back.
async fn probe_redis(
    mut conn: RedisConnection,
    at: String,
    tls: Option<RedisTls>,
    user: Option<String>,
    health: Health,
    mut sd: Shutdown,
) {
    let mut tick = tokio::time::interval(crate::health::PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sd.wait() => return,
        }
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let outcome = match tokio::time::timeout(crate::health::PROBE_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match RedisTls::describe(tls.as_ref(), &e) {
                Some(why) => format!("PING to {at} failed: {why}"),
                None if e.kind() == redis::ErrorKind::AuthenticationFailed => {
                    let user = user.as_deref().unwrap_or("default");
                    format!(
                        "Redis at {at} refused the credentials of user '{user}': a wrong password (APP_REDIS_PASSWORD), or a user that is unknown or disabled (APP_REDIS_USERNAME) ({e})"
                    )
                }
                None => format!("PING to {at} failed: {e}"),
            }),
            Err(_) => Err(format!(
                "PING to {at} unanswered within {} ms",
                crate::health::PROBE_TIMEOUT.as_millis()
            )),
        };
        let up = outcome.is_ok();
        let detail = outcome.as_ref().err().cloned();
        let changed = health.redis_probed(outcome);
        match (up, changed || first) {
            (true, true) if !first => info!(redis = %at, "Redis reachable again; ready"),
            (false, true) => {
                warn!(redis = %at, error = detail.as_deref().unwrap_or(""), "Redis not reachable; retrying, not ready until it is")
            }
            _ => {}
        }
        first = false;
    }
}

async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

impl AppBuilder {
    /// Adds an MQTT transport. The first one is the default for
    /// [`AppBuilder::processor`].
    pub fn mqtt(mut self, name: impl Into<String>, settings: MqttSettings) -> Self {
        self.grace = settings.shutdown_grace;
        self.transports.push((name.into(), settings));
        self
    }

    /// Uses Redis at `url` for deduplication (and for tasks that need it),
    /// with keys under `key_prefix`.
    pub fn redis_url(mut self, url: impl Into<String>, key_prefix: impl Into<String>) -> Self {
        self.redis = Some((
            RedisSource::Url(url.into()),
            key_prefix.into(),
            Duration::from_secs(600),
        ));
        self
    }

    /// Uses the Redis Cluster whose nodes (some or all) are at `urls`
    /// (`redis://[user[:password]@]host:port`) for deduplication (and for
    /// tasks that need it), with keys under `key_prefix`.
    pub fn redis_cluster(mut self, urls: Vec<String>, key_prefix: impl Into<String>) -> Self {
        self.redis = Some((
            RedisSource::Cluster(urls),
            key_prefix.into(),
            Duration::from_secs(600),
        ));
        self
    }

    /// Uses an already opened [`Redis`] (shared with components built
    /// before the app, like the job store), with keys under `key_prefix`.
    pub fn redis_shared(mut self, redis: Redis, key_prefix: impl Into<String>) -> Self {
        let ttl = self
            .redis
            .as_ref()
            .map_or(Duration::from_secs(600), |r| r.2);
        self.redis = Some((RedisSource::Shared(Box::new(redis)), key_prefix.into(), ttl));
        self
    }

    /// Reaches Redis over TLS with these certificates (the URLs given to
    /// [`AppBuilder::redis_url`] and [`AppBuilder::redis_cluster`] must be
    /// `rediss://`); TLS failures are then explained with the files'
    /// names in the readiness check and the log.
    pub fn redis_tls(mut self, tls: Option<RedisTls>) -> Self {
        self.redis_tls = tls;
        self
    }

    /// Sets the dedupe window (default 600 s).
    pub fn dedupe_window(mut self, ttl: Duration) -> Self {
        if let Some(r) = &mut self.redis {
            r.2 = ttl;
        }
        self
    }

    /// Sets how long a crashed instance's claim on a message blocks its
    /// redelivery elsewhere (default 30 s; live handlers renew it).
    pub fn dedupe_claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Keeps every transport with a persistent session registered in Redis
    /// with a heartbeat, and takes over the sessions of replicas that died
    /// for good (see [`crate::transport::takeover`]); `None` turns it off
    /// (the default, unless [`AppBuilder::from_config`] turns it on). Needs
    /// Redis.
    pub fn session_takeover(mut self, settings: Option<TakeoverSettings>) -> Self {
        self.takeover = settings;
        self
    }

    /// Binds a processor to the default (first) transport.
    pub fn processor(mut self, processor: Processor, binding: TopicBinding) -> Self {
        self.bindings.push((None, processor, binding));
        self
    }

    /// Binds a processor to the named transport; call it several times to
    /// bind one processor to several transports.
    pub fn processor_on(
        mut self,
        transport: impl Into<String>,
        processor: Processor,
        binding: TopicBinding,
    ) -> Self {
        self.bindings
            .push((Some(transport.into()), processor, binding));
        self
    }

    /// Binds a processor with the topics the configuration gives for its
    /// name (`APP_PROCESSING_TOPIC_PREFIXES` etc.), falling back to
    /// `default` for what the configuration leaves out. Needs
    /// [`AppBuilder::from_config`] first.
    pub fn processor_configured(self, processor: Processor, default: TopicBinding) -> Self {
        let binding = match &self.config {
            Some(c) => c.topic_binding(processor.name(), default),
            None => default,
        };
        self.processor(processor, binding)
    }

    /// Adds a background task (an SFC engine, a publisher, a timer). It gets
    /// a [`Shutdown`] and should return soon after it fires.
    pub fn task<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.tasks
            .push((name.into(), Box::new(move |s| Box::pin(f(s))), false));
        self
    }

    /// Adds a long-running background task: like [`AppBuilder::task`],
    /// and health watches it: while it runs it is the check
    /// `service:<name>` of `/readyz`; if it ends before shutdown, the app
    /// is neither ready nor live.
    pub fn service<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.tasks
            .push((name.into(), Box::new(move |s| Box::pin(f(s))), true));
        self
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `addr` (`host:port`;
    /// port 0 lets the system choose, see [`App::http_addr`]), and turns
    /// on the Prometheus reader of the meter provider (see
    /// [`crate::metrics::install`]).
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Exports metrics over OTLP/HTTP (configured by the standard
    /// `OTEL_EXPORTER_OTLP_*` environment) when `on`.
    pub fn otlp_metrics(mut self, on: bool) -> Self {
        self.otlp_metrics = on;
        self
    }

    /// Adds a MessagePack-RPC transport (wire contract §5) named `name`;
    /// bind processors to it with [`AppBuilder::processor_on`] (a processor
    /// may be bound to MQTT as well).
    pub fn msgpack(mut self, name: impl Into<String>, settings: MsgpackSettings) -> Self {
        self.msgpack.push((name.into(), settings));
        self
    }

    /// Takes MQTT, Redis and processing settings from a [`Config`]: one
    /// transport named `mqtt`, Redis for dedupe, the shutdown grace period;
    /// and, when `msgpack.processors` names any, a MessagePack-RPC
    /// transport named `msgpack` to which [`AppBuilder::build`] binds
    /// those processors besides their MQTT binding.
    pub fn from_config(mut self, config: &Config) -> Self {
        self = self.mqtt("mqtt", config.mqtt_settings());
        if !config.msgpack.processors.is_empty() {
            self = self.msgpack(MSGPACK, config.msgpack_settings());
        }
        let prefix = config.redis.key_prefix.clone();
        self = match config.redis_cluster_urls() {
            Some(urls) => self.redis_cluster(urls, prefix),
            None => self.redis_url(config.redis_url(), prefix),
        };
        self = self.redis_tls(config.redis_tls());
        self = self.dedupe_window(Duration::from_secs(config.mqtt.dedupe_ttl_seconds));
        self = self.session_takeover(config.mqtt.session_takeover.then_some(TakeoverSettings {
            heartbeat_interval: config.mqtt.session_heartbeat_interval,
            dead_after: config.mqtt.session_dead_after,
        }));
        if config.http.port != 0 {
            let host = if config.http.host.contains(':') {
                format!("[{}]", config.http.host)
            } else {
                config.http.host.clone()
            };
            self = self.http(format!("{host}:{}", config.http.port));
        }
        self = self.otlp_metrics(config.telemetry.enabled);
        self.config = Some(config.clone());
        self
    }

    /// Creates transports and connections (lazily: a broker or Redis that is
    /// down at start is retried, not fatal: the app stays not ready and
    /// says which is missing), binds processors, installs the meter
    /// provider and binds the HTTP server's address.
    ///
    /// # Errors
    /// A processor bound to an unknown transport, no transport at all while
    /// processors exist, an unparsable Redis URL, an HTTP address that
    /// cannot be bound ([`AppError::Http`] names it), or an exporter that
    /// cannot be created.
    pub async fn build(self) -> Result<App, AppError> {
        crate::metrics::install(self.http.is_some(), self.otlp_metrics)?;
        let http = match &self.http {
            Some(addr) => {
                let failed = |e: std::io::Error| AppError::Http {
                    addr: addr.clone(),
                    reason: e.to_string(),
                };
                let listener = tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(failed)?;
                let bound = listener.local_addr().map_err(failed)?;
                Some((listener, bound))
            }
            None => None,
        };
        let health = Health::new(self.redis.is_some());
        let transports: Vec<_> = self
            .transports
            .into_iter()
            .map(|(name, s)| (name.clone(), MqttTransport::new(name, s)))
            .collect();
        let mut msgpack = Vec::new();
        for (name, s) in self.msgpack {
            let t = MsgpackTransport::new(name.clone(), s).map_err(|e| {
                AppError::Config(format!("MessagePack-RPC transport '{name}': {e}"))
            })?;
            // Bound now, so a port in use is an error of the build and
            // port 0 is known before the app runs.
            let at = format!("{}:{}", t.settings().host, t.settings().port);
            t.listen().await.map_err(|e| {
                AppError::Config(format!(
                    "MessagePack-RPC transport '{name}' cannot listen on {at}: {e}"
                ))
            })?;
            msgpack.push((name, t));
        }
        let configured: Vec<String> = self
            .config
            .as_ref()
            .map(|c| c.msgpack.processors.clone())
            .unwrap_or_default();
        let mut on_msgpack: Vec<String> = Vec::new();
        for (t, p, b) in self.bindings {
            if let Some((_, m)) = t
                .as_ref()
                .and_then(|name| msgpack.iter().find(|(n, _)| n == name))
            {
                m.bind(&p, b);
                on_msgpack.push(p.name().to_owned());
                continue;
            }
            let transport = match &t {
                Some(name) => transports.iter().find(|(n, _)| n == name),
                None => transports.first(),
            };
            let Some((_, transport)) = transport else {
                return Err(AppError::UnknownTransport {
                    processor: p.name().to_owned(),
                    transport: t.unwrap_or_else(|| "<default>".into()),
                });
            };
            transport.bind(&p, b.clone());
            // `msgpack.processors`: the same processor on MessagePack-RPC too.
            if configured.iter().any(|n| n == p.name()) && !on_msgpack.iter().any(|n| n == p.name())
            {
                if let Some((_, m)) = msgpack.iter().find(|(n, _)| n == MSGPACK) {
                    m.bind(&p, b);
                    on_msgpack.push(p.name().to_owned());
                }
            }
        }
        if let Some(unknown) = configured.iter().find(|n| !on_msgpack.contains(n)) {
            return Err(AppError::Config(format!(
                "msgpack.processors (APP_MSGPACK_PROCESSORS) names '{unknown}', which is no processor of this instance (bound here: {})",
                if on_msgpack.is_empty() { "none".to_owned() } else { on_msgpack.join(", ") }
            )));
        }
        let mut redis = None;
        let mut tasks = self.tasks;
        if let Some((source, prefix, ttl)) = self.redis {
            let r = match source {
                RedisSource::Url(url) => Redis::open_with_tls(&url, self.redis_tls.as_ref())?,
                RedisSource::Cluster(urls) => {
                    Redis::open_cluster_with_tls(&urls, self.redis_tls.as_ref())?
                }
                RedisSource::Shared(r) => *r,
            };
            for (name, t) in &transports {
                t.set_dedupe(Dedupe::new(r.conn.clone(), &prefix, ttl, self.claim_lease));
                t.set_dead_letters(crate::dlq::DeadLetters::new(
                    r.conn.clone(),
                    prefix.clone(),
                    self.config
                        .as_ref()
                        .map_or(crate::dlq::DEFAULT_MAX_LEN, |c| c.mqtt.dead_letter_max_len),
                ));
                // A clean session queues nothing while away: nothing to
                // take over.
                let Some(settings) = self.takeover else {
                    continue;
                };
                if t.settings().session_expiry.is_zero() {
                    continue;
                }
                let keeper = SessionKeeper::new(
                    t.clone(),
                    SessionRegistry::new(r.conn.clone(), prefix.clone()),
                    settings,
                );
                let task: Task = Box::new(move |sd| {
                    Box::pin(async move {
                        keeper.run(sd).await;
                        Ok(())
                    })
                });
                tasks.push((format!("mqtt-session:{name}"), task, true));
            }
            for (_, t) in &msgpack {
                t.set_dedupe(Dedupe::new(r.conn.clone(), &prefix, ttl, self.claim_lease));
                t.set_dead_letters(crate::dlq::DeadLetters::new(
                    r.conn.clone(),
                    prefix.clone(),
                    self.config
                        .as_ref()
                        .map_or(crate::dlq::DEFAULT_MAX_LEN, |c| c.mqtt.dead_letter_max_len),
                ));
            }
            // Deadlines written by one replica are judged by another: all
            // judge them by Redis's clock. Measure once now (a Redis that is
            // down is not fatal), then keep measuring.
            let mut conn = r.conn.clone();
            // On a cluster, every script on every node before the first
            // `EVALSHA` (a node that misses one later loads it then).
            if r.conn.is_cluster() {
                if let Ok(Err(e)) | Err(e) =
                    tokio::time::timeout(Duration::from_secs(5), conn.load_scripts())
                        .await
                        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))
                {
                    warn!(error = %e, "cannot load the scripts into every cluster node at start; each is loaded where it is first missing");
                }
            }
            if let Ok(Err(e)) | Err(e) = tokio::time::timeout(
                Duration::from_secs(2),
                crate::runtime::clock::sync(&mut conn),
            )
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))
            {
                warn!(error = %e, "cannot read the Redis clock at start; using the local clock until it can");
            }
            let task: Task = Box::new(move |mut sd| {
                Box::pin(async move {
                    crate::runtime::clock::keep_in_sync(conn, async move { sd.wait().await }).await;
                    Ok(())
                })
            });
            tasks.push(("redis-clock".into(), task, true));
            let (conn, at, h) = (r.conn.clone(), r.client.addresses(), health.clone());
            let tls = self.redis_tls.clone();
            let user = self.config.as_ref().and_then(|c| c.redis.username.clone());
            let task: Task = Box::new(move |sd| {
                Box::pin(async move {
                    probe_redis(conn, at, tls, user, h, sd).await;
                    Ok(())
                })
            });
            tasks.push(("redis-probe".into(), task, true));
            // The gauges that are facts in Redis, only when measured.
            if crate::metrics::installed().is_some() {
                let (conn, prefix) = (r.conn.clone(), prefix.clone());
                let task: Task = Box::new(move |sd| {
                    Box::pin(async move {
                        crate::metrics::sampler::run(conn, prefix, sd).await;
                        Ok(())
                    })
                });
                tasks.push(("metrics-sampler".into(), task, true));
            }
            redis = Some(r);
        }
        Ok(App {
            transports: transports.into_iter().map(|(_, t)| t).collect(),
            msgpack: msgpack.into_iter().map(|(_, t)| t).collect(),
            tasks,
            grace: self.grace,
            shutdown: ShutdownHandle::new(),
            redis,
            health,
            http,
            otlp_metrics: self.otlp_metrics,
        })
    }
}
