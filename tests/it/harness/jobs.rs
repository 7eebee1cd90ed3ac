//! A full station (`microdcs::station`) from configuration, on a runtime of
//! its own so tests can crash it; the MES speaking only the wire contract is
//! `microdcs::testkit::Mes`.

use microdcs::config::Config;
use microdcs::jobs::JobManager;
pub use microdcs::testkit::mes::{state_texts, Mes, PREFIX, S, STATUS};
use microdcs::AppError;
use microdcs::ShutdownHandle;
use serde_json::Value;
use std::time::Duration;

/// Environment for a station on the harness broker and Redis. Acceptance
/// checks are off unless a test turns them on.
pub fn env(mqtt_port: u16, redis_port: u16, instance: &str) -> Vec<(String, String)> {
    [
        ("APP_MQTT_HOSTNAME", "127.0.0.1".to_string()),
        ("APP_MQTT_PORT", mqtt_port.to_string()),
        ("APP_REDIS_HOSTNAME", "127.0.0.1".to_string()),
        ("APP_REDIS_PORT", redis_port.to_string()),
        ("APP_REDIS_KEY_PREFIX", "t".to_string()),
        ("POD_ID", instance.to_string()),
        (
            "APP_PROCESSING_TOPIC_PREFIXES",
            format!("machinery-jobs:{PREFIX}"),
        ),
        (
            "APP_PROCESSING_TOPIC_WILDCARD_LEVELS",
            "machinery-jobs:1".to_string(),
        ),
        (
            "APP_PROCESSING_CLOUDEVENT_SOURCE",
            format!("station/{instance}"),
        ),
        ("APP_PROCESSING_SHUTDOWN_GRACE_PERIOD", "3".to_string()),
        ("APP_JOBS_CHECK_EQUIPMENT", "false".to_string()),
        ("APP_JOBS_CHECK_MATERIAL_CLASS", "false".to_string()),
        ("APP_JOBS_CHECK_MATERIAL_DEFINITION", "false".to_string()),
        ("APP_JOBS_CHECK_PERSONNEL", "false".to_string()),
        ("APP_JOBS_CHECK_PHYSICAL_ASSET", "false".to_string()),
        ("APP_JOBS_CHECK_WORK_MASTER", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

pub struct JobStation {
    rt: Option<tokio::runtime::Runtime>,
    pub handle: ShutdownHandle,
    pub done: tokio::sync::oneshot::Receiver<Result<(), AppError>>,
    pub jobs: Option<JobManager>,
}

pub async fn start(env: Vec<(String, String)>) -> JobStation {
    start_extended(env, |b, _| b).await
}

/// A station with processors of the test's own (see
/// `microdcs::station::build_extended`).
pub async fn start_extended(
    env: Vec<(String, String)>,
    extend: impl FnOnce(microdcs::AppBuilder, Option<&microdcs::sfc::engine::Engine>) -> microdcs::AppBuilder
        + Send
        + 'static,
) -> JobStation {
    let config = Config::from_sources(None, env).expect("valid test configuration");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let settings = microdcs::station::job_settings(&config);
        let station = microdcs::station::build_extended(&config, settings, extend)
            .await
            .expect("build station");
        let transport = station.app.transports()[0].clone();
        let _ = tx.send((
            transport,
            station.app.shutdown_handle(),
            station.jobs.clone(),
        ));
        let _ = done_tx.send(station.app.run().await);
    });
    let (transport, handle, jobs) = rx.await.expect("station built");
    tokio::time::timeout(Duration::from_secs(10), transport.ready())
        .await
        .expect("station ready");
    JobStation {
        rt: Some(rt),
        handle,
        done,
        jobs,
    }
}

impl JobStation {
    pub async fn stop(mut self) {
        self.handle.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.done).await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Like SIGKILL: every task and socket dropped at once.
    pub fn crash(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Runs `f` on the station's own runtime (its Redis connection lives
    /// there).
    pub async fn on_runtime<F, T>(&self, f: F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self.rt.as_ref().expect("running");
        rt.spawn(f).await.expect("task")
    }
}

impl Drop for JobStation {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub fn order(id: &str) -> Value {
    serde_json::json!({
        "JobOrderID": id,
        "Description": [{"Locale": "en", "Text": "rear axle"}],
        "WorkMasterID": [{"ID": "wm-axle"}],
        "Priority": 3,
        "EquipmentRequirements": [{"ID": "press-1"}],
        "MaterialRequirements": [{"MaterialClassID": "steel", "MaterialDefinitionID": "s235"}]
    })
}
