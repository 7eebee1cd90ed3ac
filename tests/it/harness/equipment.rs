//! Test equipment: answers every command on `app/equipment/+/commands`
//! through its Response Topic, echoing the Correlation Data, with a result
//! computed by a closure; it can also publish events for pull actions.

use bytes::Bytes;
use microdcs::testkit::mqtt::TestClient;
use microdcs::transport::binding;
use microdcs::CloudEvent;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::ClientError;
use serde_json::Value;
use std::sync::{Arc, Mutex};

pub const EQUIPMENT_PREFIX: &str = "app/equipment";

/// Publishes `reply` to `to` as the answer to the command `request`,
/// encoded as the binding does but with the request's Correlation Data
/// (none when it had none), as a device echoes it.
pub async fn answer_to(
    client: &TestClient,
    request: &Publish,
    to: String,
    reply: &CloudEvent,
) -> Result<(), ClientError> {
    let out = binding::encode(reply, None);
    let mut props: PublishProperties = out.properties;
    props.correlation_data = request
        .properties
        .as_ref()
        .and_then(|pr| pr.correlation_data.clone());
    client
        .client
        .publish_with_properties(to, QoS::AtLeastOnce, false, out.payload, props)
        .await
}

/// What the equipment saw: (command id, type, subject, data, job id).
pub type Seen = Arc<Mutex<Vec<(String, String, String, Value, String)>>>;

/// What to answer: `Some(Ok(data))` a result, `Some(Err(kind))` an error
/// reply, `None` no answer (a lost command).
pub type Answer = Arc<dyn Fn(&str, &Value) -> Option<Result<Value, String>> + Send + Sync>;

pub struct Equipment {
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
    events: TestClient,
}

impl Equipment {
    pub async fn start(port: u16, answer: Answer) -> Equipment {
        Self::start_with(port, answer, false).await
    }

    /// Equipment as a plain MQTT v5 device: its replies echo the command's
    /// Correlation Data but carry no `correlationid` user property.
    pub async fn start_echoing_only_correlation_data(port: u16, answer: Answer) -> Equipment {
        Self::start_with(port, answer, true).await
    }

    async fn start_with(port: u16, answer: Answer, bare: bool) -> Equipment {
        let mut c = TestClient::connect(port, "equipment").await;
        c.subscribe(&format!("{EQUIPMENT_PREFIX}/+/commands")).await;
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(p) = c.recv(std::time::Duration::from_secs(3600)).await {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let Ok(i) = binding::decode(&topic, p.payload.clone(), p.properties.as_ref())
                else {
                    continue;
                };
                let cmd = i.event;
                let data: Value = cmd.data_as().unwrap_or(Value::Null);
                let job = cmd.custom.get("jobid").cloned().unwrap_or_default();
                log.lock().unwrap().push((
                    cmd.id.clone(),
                    cmd.ty.clone(),
                    cmd.subject.clone().unwrap_or_default(),
                    data.clone(),
                    job,
                ));
                let Some(answer) = answer(&cmd.ty, &data) else {
                    continue;
                };
                let Some(reply_to) = p
                    .properties
                    .as_ref()
                    .and_then(|pr| pr.response_topic.clone())
                else {
                    continue;
                };
                let mut reply = CloudEvent::new(cmd.ty.clone(), "test-equipment");
                if !bare {
                    reply.correlationid = cmd.correlationid.clone();
                }
                reply.causationid = Some(cmd.id.clone());
                reply.subject = cmd.subject.clone();
                // A device that propagates W3C trace context answers in
                // the command's trace.
                reply.traceparent = cmd.traceparent.clone();
                reply.tracestate = cmd.tracestate.clone();
                match answer {
                    Ok(v) => {
                        reply.datacontenttype = Some("application/json".into());
                        reply.data = Some(Bytes::from(serde_json::to_vec(&v).unwrap()));
                    }
                    Err(kind) => {
                        reply.mdcserrorkind = Some(kind);
                        reply.mdcserrormessage = Some("simulated failure".into());
                    }
                }
                let _ = answer_to(&c, &p, reply_to, &reply).await;
            }
        });
        let events = TestClient::connect(port, "equipment-events").await;
        Equipment { seen, task, events }
    }

    /// Publishes an equipment event (for `pull_event` actions).
    pub async fn event(&self, subject: &str, ty: &str, data: Value, job: Option<&str>) {
        self.event_expiring(subject, ty, data, job, None).await;
    }

    /// [`Equipment::event`] with an MQTT Message Expiry Interval (seconds).
    pub async fn event_expiring(
        &self,
        subject: &str,
        ty: &str,
        data: Value,
        job: Option<&str>,
        expiry: Option<u32>,
    ) {
        let mut e = CloudEvent::new(ty, "test-equipment");
        e.expiryinterval = expiry;
        e.subject = Some(subject.into());
        e.datacontenttype = Some("application/json".into());
        e.data = Some(Bytes::from(serde_json::to_vec(&data).unwrap()));
        e.correlationid = job.map(|j| microdcs::CorrelationId::from_text(j.to_string()));
        let out = binding::encode(&e, None);
        self.events
            .client
            .publish_with_properties(
                format!("{EQUIPMENT_PREFIX}/{}/events", subject.replace('.', "/")),
                QoS::AtLeastOnce,
                false,
                out.payload,
                out.properties,
            )
            .await
            .unwrap();
    }

    pub fn commands(&self) -> Vec<(String, String, String, Value, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Equipment {
    fn drop(&mut self) {
        self.task.abort();
    }
}
