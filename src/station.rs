//! A complete station from configuration alone: what `microdcs run` starts.
//!
//! - the `machinery-jobs` northbound processor (when
//!   `APP_IS_PROCESSOR_INSTANCE`), with its retained metadata event and the
//!   purge of EndState jobs past their retention;
//! - the SFC engine with the generic `equipment` southbound processor (with
//!   the processor), which runs the jobs whose work master carries an SFC
//!   recipe;
//! - the MES publisher (when `APP_IS_PUBLISHER_INSTANCE`), on one replica at
//!   a time through a Redis lock;
//! - the webhook sink (when `webhooks.urls` is set; feature `cloudevents`),
//!   on one replica at a time through a Redis lock of its own.

use crate::app::{App, AppBuilder, AppError};
use crate::config::Config;
use crate::jobs::acceptance::Checks;
use crate::jobs::{processor as jobs_processor, JobManager, JobSettings, JobStore};
use crate::publisher::{MesPublisher, PublisherSettings};
use crate::redis::Redis;
use crate::sfc::engine::{Engine, EngineSettings, EQUIPMENT};
use crate::singleton::SingletonLock;
use crate::transport::{Publisher, TopicBinding};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long the SFC engine's loop may stay quiet before liveness calls it
/// wedged: far beyond its poll interval and its longest reconnect delay
/// with Redis's connection and response timeouts.
const ENGINE_QUIET: Duration = Duration::from_secs(120);

/// The topics of `machinery-jobs` when the configuration names none:
/// `app/jobs/commands` and one wildcard level (`app/jobs/+/commands`).
pub fn default_jobs_binding() -> TopicBinding {
    let mut b = TopicBinding::new("app/jobs");
    b.wildcard_levels = 1;
    b
}

/// The topics of the `equipment` processor when the configuration names
/// none: `app/equipment/…/events|data|metadata` with two wildcard levels
/// (`{scope}/{equipment}`), commands to
/// `app/equipment/{scope}[/{equipment}]/commands`, results on the shared
/// response topic `app/equipment/responses`.
pub fn default_equipment_binding() -> TopicBinding {
    let mut b = TopicBinding::new("app/equipment");
    b.wildcard_levels = 2;
    b
}

/// Job management settings from the `[jobs]` section.
pub fn job_settings(config: &Config) -> JobSettings {
    let j = &config.jobs;
    JobSettings {
        checks: Checks {
            equipment: j.check_equipment,
            material_class: j.check_material_class,
            material_definition: j.check_material_definition,
            personnel: j.check_personnel,
            physical_asset: j.check_physical_asset,
            work_master: j.check_work_master,
            limit: j.check_job_limit,
        },
        default_limit: j.max_downloadable_job_orders,
        retention: Duration::from_secs(j.retention_seconds),
        validators: vec![crate::sfc::engine::recipe_validator()],
    }
}

/// The parts of a built station, for embedding and tests.
pub struct Station {
    /// The application, ready to run.
    pub app: App,
    /// The SFC engine, when this is a processor instance (to let
    /// hand-written processors take over command types).
    pub engine: Option<Engine>,
    /// The job manager (the API the SFC engine and hand-written processors
    /// use for internal transitions), when this is a processor instance.
    pub jobs: Option<JobManager>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station")
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

/// Builds the station `config` describes.
///
/// # Errors
/// An invalid Redis URL or an inconsistent app (see [`AppError`]).
pub async fn build(config: &Config) -> Result<Station, AppError> {
    build_with(config, job_settings(config)).await
}

/// Like [`build`], with job settings of your own (extra work master
/// validators, for instance).
///
/// # Errors
/// As [`build`].
pub async fn build_with(config: &Config, settings: JobSettings) -> Result<Station, AppError> {
    build_extended(config, settings, |b, _| b).await
}

/// Like [`build_with`], and `extend` may add processors and tasks of your
/// own before the app is built, with the SFC engine at hand (to
/// [`take_over`](Engine::take_over) command types with a hand-written
/// southbound processor; see `examples/torque_tool.rs`).
///
/// # Errors
/// As [`build`].
pub async fn build_extended(
    config: &Config,
    settings: JobSettings,
    extend: impl FnOnce(AppBuilder, Option<&Engine>) -> AppBuilder,
) -> Result<Station, AppError> {
    let redis = open_redis(config)?;
    let prefix = config.redis.key_prefix.clone();
    let retention = settings.retention;
    let store = JobStore::new(redis.conn.clone(), prefix.clone(), retention)
        .with_stream_len(config.jobs.change_stream_max_len);
    let binding = config.topic_binding(jobs_processor::NAME, default_jobs_binding());
    let mut builder = App::builder()
        .from_config(config)
        .redis_shared(redis.clone(), prefix.clone());
    let mut jobs = None;
    let mut processor = None;
    let mut engine = None;
    if config.instance.is_processor_instance {
        let manager = JobManager::new(store.clone(), settings);
        let p = jobs_processor::processor(&manager);
        builder = builder.processor(p.clone(), binding.clone());
        // The SFC engine and its equipment processor run beside the jobs.
        let e = Engine::new(
            manager.clone(),
            redis.client.clone(),
            config.instance_id(),
            EngineSettings {
                message_expiry: config.processing.message_expiry_interval,
                max_attempts: config.processing.max_attempts,
                audit_steps: config.jobs.audit_steps,
                ..EngineSettings::default()
            },
        );
        let mut eb = config.topic_binding(EQUIPMENT, default_equipment_binding());
        // The configured response topic of `equipment` is shared by every
        // replica: results are processed by whoever is alive.
        let shared = eb
            .response_base
            .take()
            .unwrap_or_else(|| format!("{}/responses", eb.prefix));
        eb.shared_response_topic = Some(shared);
        builder = builder.processor(e.equipment_processor(), eb);
        jobs = Some(manager);
        processor = Some(p);
        engine = Some(e);
    }
    builder = extend(builder, engine.as_ref());
    let mut app = builder.build().await?;
    if let Some(p) = processor {
        app = app.task("metadata", move |_| async move {
            // Queued even while the broker is still connecting.
            let _ = jobs_processor::publish_metadata(&p).await;
            Ok(())
        });
        let store = store.clone();
        app = app.service("purge", move |mut shutdown| async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30).min(retention));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                purge_all(&store).await;
            }
        });
    }
    if let Some(e) = engine.clone() {
        let watched = e.clone();
        app.health().watch("sfc-engine:loop", move || {
            let quiet = watched.quiet_for();
            if quiet > ENGINE_QUIET {
                Err(format!("engine loop quiet for {} s", quiet.as_secs()))
            } else {
                Ok(format!("went round {} ms ago", quiet.as_millis()))
            }
        });
        app = app.service("sfc-engine", move |shutdown| async move {
            e.run(shutdown).await;
            Ok(())
        });
    }
    app = webhook_sink(app, config, &redis, &store)?;
    app = opcua_face(app, config, &redis, jobs.as_ref())?;
    if config.instance.is_publisher_instance {
        let Some(transport) = app.transports().first().cloned() else {
            return Err(AppError::Config(
                "the publisher needs an MQTT transport".into(),
            ));
        };
        let out: Arc<dyn Publisher> = transport;
        let mut settings = PublisherSettings::new(binding.prefix.clone());
        settings.retained_ttl = Duration::from_secs(config.publisher.retained_ttl_seconds);
        settings.state_index_interval =
            Duration::from_millis(config.publisher.state_index_interval_ms);
        settings.source = config.processing.cloudevent_source.clone();
        let lock = SingletonLock::new(
            redis.conn.clone(),
            store.keys().publisher_lock(),
            config.instance_id().to_owned(),
            Duration::from_secs(15),
        );
        let client = redis.client.clone();
        app = app.service("mes-publisher", move |shutdown| async move {
            lock.run(shutdown, |sd| {
                MesPublisher::new(store.clone(), client.clone(), out.clone(), settings.clone())
                    .run(sd)
            })
            .await;
            Ok(())
        });
    }
    info!(
        instance = config.instance_id(),
        processor = config.instance.is_processor_instance,
        publisher = config.instance.is_publisher_instance,
        prefix = %binding.prefix,
        "station built"
    );
    Ok(Station { app, jobs, engine })
}

/// Adds the OPC UA server face when `opcua.port` is set (health
/// `service:opcua`); it needs the job manager of a processor instance.
#[cfg(feature = "opcua")]
fn opcua_face(
    app: App,
    config: &Config,
    redis: &Redis,
    jobs: Option<&JobManager>,
) -> Result<App, AppError> {
    if config.opcua.port == 0 {
        return Ok(app);
    }
    let Some(manager) = jobs.cloned() else {
        return Err(AppError::Config(
            "the OPC UA server (`opcua.port`) needs a processor instance".into(),
        ));
    };
    let settings = config.opcua.clone();
    let identifier = config.mqtt.identifier.clone();
    let instance = config.instance_id().to_owned();
    let client = redis.client.clone();
    // Not ready before the server listens (a first start creates the
    // certificate first).
    let listening = app.health().gate("opcua:listening");
    Ok(app.service("opcua", move |shutdown| {
        crate::opcua::serve(
            settings, identifier, manager, instance, client, listening, shutdown,
        )
    }))
}

/// Without the `opcua` feature a configuration with an OPC UA port is
/// refused rather than silently not serving.
#[cfg(not(feature = "opcua"))]
fn opcua_face(
    app: App,
    config: &Config,
    _redis: &Redis,
    _jobs: Option<&JobManager>,
) -> Result<App, AppError> {
    if config.opcua.port != 0 {
        return Err(AppError::Config(
            "`opcua.port` is set, but this build has no OPC UA server (feature `opcua`)".into(),
        ));
    }
    Ok(app)
}

/// Adds the webhook sink when `webhooks.urls` is set: every instance
/// competes for its lock, one delivers (`crate::webhook`).
#[cfg(feature = "cloudevents")]
fn webhook_sink(
    app: App,
    config: &Config,
    redis: &Redis,
    store: &JobStore,
) -> Result<App, AppError> {
    use crate::webhook::{WebhookSettings, WebhookSink};
    let Some(settings) = WebhookSettings::from_config(config).map_err(AppError::Config)? else {
        return Ok(app);
    };
    let lock = SingletonLock::new(
        redis.conn.clone(),
        store.keys().webhook_lock(),
        config.instance_id().to_owned(),
        Duration::from_secs(15),
    );
    let dlq = crate::dlq::DeadLetters::new(
        redis.conn.clone(),
        config.redis.key_prefix.clone(),
        config.mqtt.dead_letter_max_len,
    );
    let sink = WebhookSink::new(store.clone(), redis.client.clone(), dlq, settings);
    Ok(app.service("webhook-sink", move |shutdown| async move {
        lock.run(shutdown, |sd| sink.clone().run(sd)).await;
        Ok(())
    }))
}

/// Without the `cloudevents` feature a configuration with webhook URLs is
/// refused rather than silently not delivering.
#[cfg(not(feature = "cloudevents"))]
fn webhook_sink(
    app: App,
    config: &Config,
    _redis: &Redis,
    _store: &JobStore,
) -> Result<App, AppError> {
    if config.webhooks.urls.is_empty() {
        Ok(app)
    } else {
        Err(AppError::Config(
            "webhooks.urls is set but this build has no webhook sink (cargo feature `cloudevents`)"
                .into(),
        ))
    }
}

/// The Redis `config` names: a Redis Cluster when `redis.cluster_nodes`
/// is set, else the one Redis at `redis.host`/`redis.port`; over TLS when
/// `redis.ssl` is true.
///
/// # Errors
/// An unusable URL, or a certificate or key file that cannot be read or
/// used (see [`Redis::open_with_tls`], [`Redis::open_cluster_with_tls`]).
pub fn open_redis(config: &Config) -> Result<Redis, redis::RedisError> {
    let tls = config.redis_tls();
    match config.redis_cluster_urls() {
        Some(urls) => Redis::open_cluster_with_tls(&urls, tls.as_ref()),
        None => Redis::open_with_tls(&config.redis_url(), tls.as_ref()),
    }
}

async fn purge_all(store: &JobStore) {
    let scopes = match store.scopes().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "purge: cannot list scopes");
            return;
        }
    };
    for scope in scopes {
        loop {
            match store.purge_expired(&scope, 200).await {
                Ok(n) if n >= 200 => continue,
                Ok(n) => {
                    if n > 0 {
                        info!(
                            scope,
                            removed = n,
                            "purged EndState jobs past their retention"
                        );
                    }
                    break;
                }
                Err(e) => {
                    warn!(scope, error = %e, "purge failed");
                    return;
                }
            }
        }
    }
}

/// Builds and runs the station until SIGTERM/SIGINT.
///
/// # Errors
/// As [`build`], or a background task failed.
pub async fn run(config: &Config) -> Result<(), AppError> {
    build(config).await?.app.run().await
}
