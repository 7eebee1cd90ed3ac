//! A full station (`microdcs::station`) from configuration, on a runtime of
//! its own so tests can crash it, plus an MES client speaking only the wire
//! contract.

use super::mqtt_client::{ce_props, user_prop, TestClient};
use microdcs::app::ShutdownHandle;
use microdcs::config::Config;
use microdcs::jobs::JobManager;
use microdcs::AppError;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const PREFIX: &str = "app/jobs";
pub const S: &str = "org.opcfoundation.ISA95-JOBCONTROL_V2.";
pub const STATUS: &str = "org.opcfoundation.ISA95-JOBCONTROL_V2.ISA95JobOrderStatusEventType.v2";
pub const CFG: &str = "com.github.aschamberger.ISA95-JOBCONTROL_V2.config.";

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

static NEXT: AtomicU64 = AtomicU64::new(1);

/// The MES: sends commands, waits for replies, collects status events.
pub struct Mes {
    pub client: TestClient,
    pub events: TestClient,
    replies: String,
}

impl Mes {
    pub async fn connect(port: u16, name: &str) -> Self {
        let mut client = TestClient::connect(port, &format!("{name}-cmd")).await;
        let replies = format!("mes/{name}/replies");
        client.subscribe(&replies).await;
        let mut events = TestClient::connect(port, &format!("{name}-ev")).await;
        events.subscribe(&format!("{PREFIX}/+/events")).await;
        Mes {
            client,
            events,
            replies,
        }
    }

    /// Sends a command and returns its reply (`None`: no reply in time).
    pub async fn call_with(
        &mut self,
        ty: &str,
        id: &str,
        subject: Option<&str>,
        body: &Value,
    ) -> Option<Publish> {
        let corr = uuid::Uuid::new_v4();
        let props = ce_props(ty, id, subject, Some(&self.replies), Some(corr.as_bytes()));
        self.client
            .publish(
                &format!("{PREFIX}/commands"),
                serde_json::to_vec(body).expect("json"),
                props,
            )
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.client.recv(left).await?;
            let matches = p
                .properties
                .as_ref()
                .and_then(|pr| pr.correlation_data.as_ref())
                .is_some_and(|c| c.as_ref() == corr.as_bytes());
            if matches {
                return Some(p);
            }
        }
    }

    /// A method call in scope `scope`; the reply's JSON.
    pub async fn call(&mut self, method: &str, scope: &str, body: Value) -> Value {
        let ty = if method.starts_with("RequestJobResponse") {
            format!("org.opcfoundation.Machinery.Jobs.{method}.v1")
        } else {
            format!("{S}{method}.v2")
        };
        let id = format!("cmd-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let p = self
            .call_with(&ty, &id, Some(scope), &body)
            .await
            .unwrap_or_else(|| panic!("no reply to {method}"));
        assert_eq!(user_prop(&p, "type"), Some(ty.as_str()));
        assert_eq!(
            user_prop(&p, "mdcserrorkind"),
            None,
            "error reply to {method}: {:?}",
            user_prop(&p, "mdcserrormessage")
        );
        serde_json::from_slice(&p.payload).expect("reply is JSON")
    }

    /// The `ReturnStatus` of a method call.
    pub async fn status(&mut self, method: &str, scope: &str, body: Value) -> u64 {
        self.call(method, scope, body).await["ReturnStatus"]
            .as_u64()
            .expect("ReturnStatus")
    }

    /// A configuration event (no reply expected).
    pub async fn configure(&mut self, kind: &str, scope: &str, body: Value, delete: bool) {
        let id = format!("cfg-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut props = ce_props(&format!("{CFG}{kind}.v1"), &id, Some(scope), None, None);
        if delete {
            props
                .user_properties
                .push(("method".into(), "DELETE".into()));
        }
        self.client
            .publish(
                &format!("{PREFIX}/commands"),
                serde_json::to_vec(&body).expect("json"),
                props,
            )
            .await;
    }

    /// The next status event (topic, payload); other events on the same
    /// topics (SFC progress) are skipped.
    pub async fn next_event(&mut self) -> Option<(String, Value)> {
        let p = loop {
            let p = self.events.recv(Duration::from_secs(10)).await?;
            if user_prop(&p, "type") == Some(STATUS) {
                break p;
            }
        };
        Some((
            String::from_utf8_lossy(&p.topic).into_owned(),
            serde_json::from_slice(&p.payload).expect("event JSON"),
        ))
    }

    /// The state texts of the next status event, e.g. `["Running"]`.
    pub async fn next_state(&mut self) -> Vec<String> {
        let (_, ev) = self.next_event().await.expect("a status event");
        state_texts(&ev["JobState"])
    }
}

pub fn state_texts(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    e["StateText"]["Text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
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
