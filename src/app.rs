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
use crate::processor::Processor;
pub use crate::redis::{Redis, RedisClient, RedisConnection};
pub use crate::runtime::{Shutdown, ShutdownHandle};
use crate::transport::mqtt::{MqttSettings, MqttTransport};
use crate::transport::takeover::{SessionKeeper, SessionRegistry, TakeoverSettings};
use crate::transport::{BoxFuture, TopicBinding};
use std::future::Future;
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
    /// A background task failed.
    #[error("task '{task}' failed: {reason}")]
    Task {
        /// Task name.
        task: String,
        /// Its error.
        reason: String,
    },
}

type Task = Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, Result<(), String>> + Send>;

/// Builds an [`App`].
#[must_use = "an app builder does nothing until `build` and `run` are called"]
pub struct AppBuilder {
    transports: Vec<(String, MqttSettings)>,
    redis: Option<(RedisSource, String, Duration)>,
    claim_lease: Duration,
    bindings: Vec<(Option<String>, Processor, TopicBinding)>,
    tasks: Vec<(String, Task)>,
    grace: Duration,
    config: Option<Config>,
    takeover: Option<TakeoverSettings>,
}

/// A built application, ready to [`run`](App::run).
pub struct App {
    transports: Vec<Arc<MqttTransport>>,
    tasks: Vec<(String, Task)>,
    grace: Duration,
    shutdown: ShutdownHandle,
    redis: Option<Redis>,
}

/// Where the app's Redis connection comes from.
enum RedisSource {
    Url(String),
    /// The node URLs of a Redis Cluster.
    Cluster(Vec<String>),
    Shared(Redis),
}

impl App {
    /// Starts building an application.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            transports: Vec::new(),
            redis: None,
            bindings: Vec::new(),
            tasks: Vec::new(),
            grace: Duration::from_secs(10),
            config: None,
            claim_lease: Duration::from_secs(30),
            takeover: None,
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

    /// The shared Redis connection (auto-reconnecting), if configured.
    pub fn redis(&self) -> Option<RedisConnection> {
        self.redis.as_ref().map(|r| r.conn.clone())
    }

    /// The Redis client and shared connection, if configured.
    pub fn redis_handle(&self) -> Option<&Redis> {
        self.redis.as_ref()
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
            .push((name.into(), Box::new(move |s| Box::pin(f(s)))));
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
        let mut joins = Vec::new();
        for t in &self.transports {
            let t = t.clone();
            joins.push(tokio::spawn(async move {
                if let Err(e) = t.run().await {
                    error!(error = %e, "transport ended with an error");
                }
            }));
        }
        let mut task_joins = Vec::new();
        for (name, task) in self.tasks {
            let fut = task(self.shutdown.signal());
            task_joins.push((name.clone(), tokio::spawn(fut)));
        }
        let mut requested = self.shutdown.signal();
        tokio::select! {
            _ = requested.wait() => info!("shutdown requested"),
            s = termination_signal() => info!(signal = s, "shutdown signal received"),
        }
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
                Ok(Ok(Err(reason))) => {
                    error!(task = %name, %reason, "task failed");
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
        info!(
            redis_round_trips = RedisConnection::round_trips(),
            "stopped"
        );
        first_error.map_or(Ok(()), Err)
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
        self.redis = Some((RedisSource::Shared(redis), key_prefix.into(), ttl));
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
            .push((name.into(), Box::new(move |s| Box::pin(f(s)))));
        self
    }

    /// Takes MQTT, Redis and processing settings from a [`Config`]: one
    /// transport named `mqtt`, Redis for dedupe, the shutdown grace period.
    pub fn from_config(mut self, config: &Config) -> Self {
        self = self.mqtt("mqtt", config.mqtt_settings());
        let prefix = config.redis.key_prefix.clone();
        self = match config.redis_cluster_urls() {
            Some(urls) => self.redis_cluster(urls, prefix),
            None => self.redis_url(config.redis_url(), prefix),
        };
        self = self.dedupe_window(Duration::from_secs(config.mqtt.dedupe_ttl_seconds));
        self = self.session_takeover(config.mqtt.session_takeover.then_some(TakeoverSettings {
            heartbeat_interval: config.mqtt.session_heartbeat_interval,
            dead_after: config.mqtt.session_dead_after,
        }));
        self.config = Some(config.clone());
        self
    }

    /// Creates transports and connections (lazily: a broker or Redis that is
    /// down at start is retried, not fatal) and binds processors.
    ///
    /// # Errors
    /// A processor bound to an unknown transport, no transport at all while
    /// processors exist, or an unparsable Redis URL.
    pub async fn build(self) -> Result<App, AppError> {
        let transports: Vec<_> = self
            .transports
            .into_iter()
            .map(|(name, s)| (name.clone(), MqttTransport::new(name, s)))
            .collect();
        for (t, p, b) in self.bindings {
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
            transport.bind(&p, b);
        }
        let mut redis = None;
        let mut tasks = self.tasks;
        if let Some((source, prefix, ttl)) = self.redis {
            let r = match source {
                RedisSource::Url(url) => Redis::open(&url)?,
                RedisSource::Cluster(urls) => Redis::open_cluster(&urls)?,
                RedisSource::Shared(r) => r,
            };
            for (name, t) in &transports {
                t.set_dedupe(Dedupe::new(r.conn.clone(), &prefix, ttl, self.claim_lease));
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
                tasks.push((format!("mqtt-session:{name}"), task));
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
            tasks.push(("redis-clock".into(), task));
            redis = Some(r);
        }
        Ok(App {
            transports: transports.into_iter().map(|(_, t)| t).collect(),
            tasks,
            grace: self.grace,
            shutdown: ShutdownHandle::new(),
            redis,
        })
    }
}
