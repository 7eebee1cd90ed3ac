//! A full station (`microdcs::station`) from configuration, on a runtime of
//! its own so tests can crash it; the MES speaking only the wire contract is
//! `microdcs::testkit::Mes`.

use super::station::Hosted;
use microdcs::config::Config;
use microdcs::jobs::JobManager;
pub use microdcs::testkit::mes::{state_texts, Mes, PREFIX, S, STATUS};
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

/// The OPC UA job methods by browse name, in the specification's order.
pub const METHODS: [&str; 11] = [
    "Store",
    "StoreAndStart",
    "Update",
    "Start",
    "RevokeStart",
    "Pause",
    "Resume",
    "Stop",
    "Abort",
    "Cancel",
    "Clear",
];

pub struct JobStation {
    pub app: Hosted,
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
    let (app, _, jobs) = Hosted::launch(move || async move {
        let settings = microdcs::station::job_settings(&config);
        let station = microdcs::station::build_extended(&config, settings, extend)
            .await
            .expect("build station");
        (station.app, station.jobs)
    })
    .await;
    JobStation { app, jobs }
}

impl JobStation {
    pub async fn stop(self) {
        let _ = self.app.stop(Duration::from_secs(15)).await;
    }

    /// Like SIGKILL: every task and socket dropped at once.
    pub fn crash(self) {
        self.app.crash();
    }

    /// Runs `f` on the station's own runtime (its Redis connection lives
    /// there).
    pub async fn on_runtime<F, T>(&self, f: F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.app.on_runtime(f).await
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
