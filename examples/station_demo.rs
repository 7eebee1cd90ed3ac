//! The station demo: a complete station (`microdcs::station`) on local
//! Mosquitto and Redis child processes, driven by a scripted MES that speaks
//! only the wire contract, with a small hand-written executor running the
//! released jobs through the job manager's API.
//!
//! ```sh
//! cargo run --example station_demo
//! ```
//!
//! With `MQTT_PORT`/`REDIS_PORT` set it uses brokers already running on
//! 127.0.0.1 instead of starting its own.

use microdcs::binding::mqtt as binding;
use microdcs::config::Config;
use microdcs::devenv::{LocalMosquitto, LocalRedis};
use microdcs::jobs::{Internal, JobManager, JobState, MainState, SubState};
use microdcs::{CloudEvent, CorrelationId};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use std::time::Duration;

const PREFIX: &str = "app/jobs";
const SCOPE: &str = "axle-line";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    microdcs::telemetry::init_logging(microdcs::telemetry::LogFormat::Text, "warn");
    // Local servers unless the environment points at running ones.
    let (_mosquitto, mqtt_port) = match std::env::var("MQTT_PORT").ok().and_then(|p| p.parse().ok())
    {
        Some(p) => (None, p),
        None => {
            let m = LocalMosquitto::start()?;
            let p = m.port();
            (Some(m), p)
        }
    };
    let (_redis, redis_port) = match std::env::var("REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        Some(p) => (None, p),
        None => {
            let r = LocalRedis::start()?;
            let p = r.port();
            (Some(r), p)
        }
    };
    println!("mosquitto on 127.0.0.1:{mqtt_port}, redis-server on 127.0.0.1:{redis_port}\n");

    let env = [
        ("APP_MQTT_HOSTNAME", "127.0.0.1".to_string()),
        ("APP_MQTT_PORT", mqtt_port.to_string()),
        ("APP_REDIS_HOSTNAME", "127.0.0.1".to_string()),
        ("APP_REDIS_PORT", redis_port.to_string()),
        ("POD_ID", "demo-station".to_string()),
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
            "demo-station".to_string(),
        ),
        ("APP_JOBS_CHECK_PERSONNEL", "false".to_string()),
        ("APP_JOBS_CHECK_PHYSICAL_ASSET", "false".to_string()),
    ];
    let config = Config::from_sources(None, env.iter().map(|(k, v)| (k.to_string(), v.clone())))?;
    let station = microdcs::station::build(&config).await?;
    let jobs = station
        .jobs
        .clone()
        .ok_or("the demo station runs the processor")?;
    let transport = station.app.transports()[0].clone();
    let stop = station.app.shutdown_handle();
    let running = tokio::spawn(station.app.run());
    transport.ready().await;
    let executor = tokio::spawn(execute_released_jobs(jobs));

    let mes = Mes::connect(mqtt_port).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("MES configures the station (scope '{SCOPE}'):");
    mes.send("config.equipment.v1", json!({"ID": "press-1"}), false)
        .await?;
    mes.send(
        "config.materialclass.v1",
        json!({"MaterialClassID": "steel"}),
        false,
    )
    .await?;
    mes.send(
        "config.materialdefinition.v1",
        json!({"MaterialDefinitionID": "axle-blank"}),
        false,
    )
    .await?;
    mes.send(
        "config.workmaster.v1",
        json!({"ID": "wm-axle", "Description": [{"Locale": "en", "Text": "rear axle"}]}),
        false,
    )
    .await?;
    mes.send(
        "config.jobacceptance.v1",
        json!({"max_downloadable_job_orders": 5}),
        false,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("\nMES sends job orders:");
    mes.send(
        "StoreAndStart.v2",
        json!({"JobOrder": order("axle-001", "press-1")}),
        true,
    )
    .await?;
    mes.send(
        "Store.v2",
        json!({"JobOrder": order("axle-002", "press-1")}),
        true,
    )
    .await?;
    mes.send(
        "Store.v2",
        json!({"JobOrder": order("axle-003", "press-9")}),
        true,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    mes.send("Start.v2", json!({"JobOrderID": "axle-002"}), true)
        .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    println!("\nMES queries:");
    mes.send_machinery(
        "RequestJobResponseByJobOrderID",
        json!({"JobOrderID": "axle-001"}),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mes.send("Clear.v2", json!({"JobOrderID": "axle-001"}), true)
        .await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    println!("\nretained topics an MES sees when it (re)connects:");
    mes.show_retained(mqtt_port).await?;

    stop.shutdown();
    running.await??;
    executor.abort();
    Ok(())
}

/// A hand-written executor: runs every released job for a moment, then
/// completes it with a job response. (Jobs with an SFC recipe are run by
/// the SFC engine; this is what a station without one does.)
async fn execute_released_jobs(jobs: JobManager) {
    let released = JobState::new(MainState::AllowedToStart, Some(SubState::Ready));
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(ids) = jobs.store().ids_in_state(SCOPE, released).await else {
            continue;
        };
        for id in ids {
            let cause = format!("demo-executor/{id}");
            if jobs
                .internal(SCOPE, &id, Internal::Begin, None, &format!("{cause}/begin"))
                .await
                .is_err()
            {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
            let response = json!({
                "JobResponseID": format!("{id}-response"),
                "JobOrderID": id,
                "JobState": JobState::new(MainState::Ended, Some(SubState::Completed)).to_wire(),
                "JobResponseData": [{"ID": "torque_nm", "Value": {"Type": "Double", "Body": 41.7}}]
            });
            if let Ok(raw) = serde_json::value::to_raw_value(&response) {
                let _ = jobs
                    .internal(
                        SCOPE,
                        &id,
                        Internal::Complete,
                        Some(&raw),
                        &format!("{cause}/done"),
                    )
                    .await;
            }
        }
    }
}

fn order(id: &str, equipment: &str) -> Value {
    json!({
        "JobOrderID": id,
        "WorkMasterID": [{"ID": "wm-axle"}],
        "EquipmentRequirements": [{"ID": equipment}],
        "MaterialRequirements": [{"MaterialClassID": "steel", "MaterialDefinitionID": "axle-blank", "Quantity": "1"}]
    })
}

/// The MES: a plain MQTT v5 client that prints what it receives.
struct Mes {
    client: AsyncClient,
}

impl Mes {
    async fn connect(port: u16) -> Result<Self, Box<dyn std::error::Error>> {
        let mut o = MqttOptions::new("demo-mes", "127.0.0.1", port);
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 100);
        client
            .subscribe_many([
                Filter::new("mes/replies", QoS::AtLeastOnce),
                Filter::new(format!("{PREFIX}/+/events"), QoS::AtLeastOnce),
            ])
            .await?;
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if let Ok(i) = binding::decode(&topic, p.payload.clone(), p.properties.as_ref())
                    {
                        print_incoming(&topic, &i.event);
                    }
                }
            }
        });
        Ok(Mes { client })
    }

    async fn publish(&self, e: CloudEvent, reply: bool) -> Result<(), Box<dyn std::error::Error>> {
        let out = binding::encode(&e, None);
        let mut props = out.properties;
        if reply {
            props.response_topic = Some("mes/replies".into());
        }
        self.client
            .publish_with_properties(
                format!("{PREFIX}/commands"),
                QoS::AtLeastOnce,
                false,
                out.payload,
                props,
            )
            .await?;
        Ok(())
    }

    fn event(ty: String, body: &Value) -> CloudEvent {
        let mut e = CloudEvent::new(ty, "demo-mes");
        e.subject = Some(SCOPE.into());
        e.datacontenttype = Some("application/json".into());
        e.data = Some(bytes::Bytes::from(body.to_string()));
        e.correlationid = Some(CorrelationId::new_uuid());
        e
    }

    /// `kind` is `config.…` (no reply) or a job method (`Store.v2`).
    async fn send(
        &self,
        kind: &str,
        body: Value,
        reply: bool,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let ty = if kind.starts_with("config.") {
            format!("com.github.aschamberger.ISA95-JOBCONTROL_V2.{kind}")
        } else {
            format!("org.opcfoundation.ISA95-JOBCONTROL_V2.{kind}")
        };
        println!("  -> {kind:<28} {body}");
        self.publish(Self::event(ty, &body), reply).await
    }

    async fn send_machinery(
        &self,
        method: &str,
        body: Value,
    ) -> Result<(), Box<dyn std::error::Error>> {
        println!("  -> {method} {body}");
        self.publish(
            Self::event(
                format!("org.opcfoundation.Machinery.Jobs.{method}.v1"),
                &body,
            ),
            true,
        )
        .await
    }

    async fn show_retained(&self, port: u16) -> Result<(), Box<dyn std::error::Error>> {
        let mut o = MqttOptions::new("demo-late-mes", "127.0.0.1", port);
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 100);
        client
            .subscribe_many([
                Filter::new(format!("{PREFIX}/+/state-index"), QoS::AtLeastOnce),
                Filter::new(format!("{PREFIX}/+/order/+"), QoS::AtLeastOnce),
                Filter::new(format!("{PREFIX}/+/result/+"), QoS::AtLeastOnce),
            ])
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, el.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let body = String::from_utf8_lossy(&p.payload);
                println!(
                    "  {} = {}",
                    String::from_utf8_lossy(&p.topic),
                    shorten(&body, 150)
                );
            }
        }
        Ok(())
    }
}

fn print_incoming(topic: &str, e: &CloudEvent) {
    let body: Value = e
        .data
        .as_deref()
        .and_then(|d| serde_json::from_slice(d).ok())
        .unwrap_or(Value::Null);
    if let Some(kind) = &e.mdcserrorkind {
        println!(
            "  <- error {kind}: {}",
            e.mdcserrormessage.as_deref().unwrap_or("")
        );
    } else if topic.ends_with("/events") {
        let states: Vec<&str> = body["JobState"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["StateText"]["Text"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  <- status event  {:<10} {}",
            body["JobOrder"]["JobOrderID"].as_str().unwrap_or("?"),
            states.join("/")
        );
    } else {
        let method = e.ty.rsplit('.').nth(1).unwrap_or(&e.ty);
        println!(
            "  <- reply {method:<24} {}",
            shorten(&body.to_string(), 120)
        );
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
