//! The scripted MES: sends job-management commands and configuration
//! events as binary-mode CloudEvents on `app/jobs/commands`, waits for the
//! replies on a response topic of its own, collects the jobs' status events.
//! It speaks only the wire contract (no type of the crate goes on the wire
//! from here), so what it checks is what a real MES would see.

use super::mqtt::{ce_props, user_prop, TestClient};
use super::TestkitError;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The topic prefix of the `machinery-jobs` processor.
pub const PREFIX: &str = "app/jobs";
/// The command topic.
pub const COMMANDS: &str = "app/jobs/commands";
/// The CloudEvent type prefix of the ISA-95 job control methods.
pub const S: &str = "org.opcfoundation.ISA95-JOBCONTROL_V2.";
/// The CloudEvent type of a job status event.
pub const STATUS: &str = "org.opcfoundation.ISA95-JOBCONTROL_V2.ISA95JobOrderStatusEventType.v2";
/// The CloudEvent type prefix of configuration events.
pub const CFG: &str = "com.github.aschamberger.ISA95-JOBCONTROL_V2.config.";
/// The `dataschema` of an SFC recipe in a work master.
pub const SFC_RECIPE: &str = "https://aschamberger.github.io/schemas/microdcs/sfc-recipe/v1.0.0/";
/// `ReturnStatus` NoError.
pub const NO_ERROR: u64 = 1;

/// Command ids unique within the process (the station deduplicates by
/// `source` and `id`).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The MES: one client sends commands and receives their replies, another
/// receives the status events of every scope.
pub struct Mes {
    /// Sends commands; subscribed to [`Mes::replies`].
    pub client: TestClient,
    /// Subscribed to `app/jobs/+/events`.
    pub events: TestClient,
    /// W3C `traceparent` sent with every command while set (an MES that
    /// traces its requests).
    pub traceparent: Option<String>,
    replies: String,
}

impl Mes {
    /// Connects as `{name}-cmd` and `{name}-ev`; replies go to
    /// `mes/{name}/replies`.
    ///
    /// # Panics
    ///
    /// When the broker does not accept the clients or their subscriptions.
    pub async fn connect(port: u16, name: &str) -> Self {
        Self::try_connect(port, name).await.expect("MES connect")
    }

    /// [`Mes::connect`] that reports failure instead of panicking.
    ///
    /// # Errors
    ///
    /// When a client cannot connect or subscribe ([`TestkitError`]).
    pub async fn try_connect(port: u16, name: &str) -> Result<Self, TestkitError> {
        let mut client = TestClient::try_connect(port, &format!("{name}-cmd")).await?;
        let replies = format!("mes/{name}/replies");
        client
            .try_subscribe(&[replies.as_str()], QoS::AtLeastOnce)
            .await?;
        let mut events = TestClient::try_connect(port, &format!("{name}-ev")).await?;
        events
            .try_subscribe(&[format!("{PREFIX}/+/events").as_str()], QoS::AtLeastOnce)
            .await?;
        Ok(Mes {
            client,
            events,
            traceparent: None,
            replies,
        })
    }

    /// The topic the replies come back on.
    pub fn replies(&self) -> &str {
        &self.replies
    }

    /// A new command id, `{kind}-{n}`.
    pub fn next_id(kind: &str) -> String {
        format!("{kind}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Publishes a command of type `ty` with `body` (JSON) to
    /// [`COMMANDS`], its reply to [`Mes::replies`] with `correlation` as
    /// Correlation Data.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Publish`] when the request cannot be queued.
    pub async fn send(
        &self,
        ty: &str,
        id: &str,
        subject: Option<&str>,
        body: &Value,
        correlation: Option<&[u8]>,
    ) -> Result<(), TestkitError> {
        let mut props = ce_props(ty, id, subject, Some(&self.replies), correlation);
        if let Some(tp) = &self.traceparent {
            props
                .user_properties
                .push(("traceparent".to_owned(), tp.clone()));
        }
        self.client
            .try_publish(COMMANDS, body.to_string().into_bytes(), props)
            .await
    }

    /// Sends a command and returns its reply (`None`: no reply in time).
    ///
    /// # Panics
    ///
    /// When the command cannot be published.
    pub async fn call_with(
        &mut self,
        ty: &str,
        id: &str,
        subject: Option<&str>,
        body: &Value,
    ) -> Option<Publish> {
        let corr = uuid::Uuid::new_v4();
        self.send(ty, id, subject, body, Some(corr.as_bytes()))
            .await
            .expect("publish");
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
    ///
    /// # Panics
    ///
    /// When there is no reply, the reply has another type, is an error reply
    /// or is not JSON.
    pub async fn call(&mut self, method: &str, scope: &str, body: Value) -> Value {
        let ty = if method.starts_with("RequestJobResponse") {
            format!("org.opcfoundation.Machinery.Jobs.{method}.v1")
        } else {
            format!("{S}{method}.v2")
        };
        let id = Self::next_id("cmd");
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
    ///
    /// # Panics
    ///
    /// As [`Mes::call`], and when the reply has no `ReturnStatus`.
    pub async fn status(&mut self, method: &str, scope: &str, body: Value) -> u64 {
        self.call(method, scope, body).await["ReturnStatus"]
            .as_u64()
            .expect("ReturnStatus")
    }

    /// A configuration event of `kind` (`workmaster`, `equipment`, …; no
    /// reply expected); `delete` removes the entry.
    ///
    /// # Panics
    ///
    /// When the event cannot be published.
    pub async fn configure(&mut self, kind: &str, scope: &str, body: Value, delete: bool) {
        self.try_configure(kind, scope, &body, delete)
            .await
            .expect("publish");
    }

    /// [`Mes::configure`] that reports failure instead of panicking.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Publish`] when the event cannot be queued.
    pub async fn try_configure(
        &self,
        kind: &str,
        scope: &str,
        body: &Value,
        delete: bool,
    ) -> Result<(), TestkitError> {
        let id = Self::next_id("cfg");
        let mut props = ce_props(&format!("{CFG}{kind}.v1"), &id, Some(scope), None, None);
        if delete {
            props
                .user_properties
                .push(("method".into(), "DELETE".into()));
        }
        self.client
            .try_publish(COMMANDS, body.to_string().into_bytes(), props)
            .await
    }

    /// The next message for the MES on either client (a reply or an event)
    /// and when it arrived, or `None` after `timeout`.
    pub async fn recv_at(&mut self, timeout: Duration) -> Option<(Instant, Publish)> {
        tokio::select! {
            p = self.client.recv_at(timeout) => p,
            p = self.events.recv_at(timeout) => p,
        }
    }

    /// The next status event (topic, payload); other events on the same
    /// topics (SFC progress) are skipped.
    ///
    /// # Panics
    ///
    /// When a status event is not JSON.
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
    ///
    /// # Panics
    ///
    /// When no status event arrives within 10 s.
    pub async fn next_state(&mut self) -> Vec<String> {
        let (_, ev) = self.next_event().await.expect("a status event");
        state_texts(&ev["JobState"])
    }
}

/// The state texts of a `JobState` list, e.g. `["Running", "Executing"]`.
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

/// The job id and main state text of a status event's payload.
pub fn job_state(payload: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let job = v["JobOrder"]["JobOrderID"].as_str()?.to_owned();
    let state = v["JobState"][0]["StateText"]["Text"].as_str()?.to_owned();
    Some((job, state))
}
