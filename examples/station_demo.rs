//! The station demo: a complete station (`microdcs::station`: job
//! management, SFC engine, MES publisher) on local Mosquitto and Redis child
//! processes. The scripted MES (`microdcs::testkit::Mes`) stores a rear-axle work master with an SFC
//! recipe (`examples/recipes/rear-axle.json`: a pull event, a simultaneous
//! branch, a condition on a result with a rework loop) and job orders; the
//! simulated equipment (`microdcs::sim`) answers the commands. The terminal
//! shows each job's steps as they advance and its final job response.
//!
//! ```sh
//! cargo run --example station_demo            # or ./scripts/demo.sh
//! ```
//!
//! With `MQTT_PORT`/`REDIS_PORT` set it uses brokers already running on
//! 127.0.0.1 instead of starting its own. It exits with an error unless
//! every job completed its recipe (CI runs it).

use microdcs::config::Config;
use microdcs::sim::{Delay, EmitSpec, Rule, SimConfig, Simulator};
use microdcs::testkit::devenv::{LocalMosquitto, LocalRedis};
use microdcs::testkit::mes::{Mes, PREFIX, S, SFC_RECIPE as SFC, STATUS};
use microdcs::testkit::TestClient;
use microdcs::transport::binding;
use microdcs::{CloudEvent, CorrelationId};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

const SCOPE: &str = "axle-line";
const RECIPE: &str = include_str!("recipes/rear-axle.json");
const PROGRESS: &str = "com.github.aschamberger.microdcs.sfc.progress.v1";
const JOBS: [&str; 3] = ["axle-001", "axle-002", "axle-003"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    microdcs::telemetry::init_logging(microdcs::telemetry::LogFormat::Text, "warn");
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

    // The station, from configuration alone (as `microdcs run` does).
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
    let transport = station.app.transports()[0].clone();
    let stop = station.app.shutdown_handle();
    let running = tokio::spawn(station.app.run());
    transport.ready().await;

    // Simulated equipment: fixture, presses, nutrunner (torque varies, so
    // some parts go through the rework loop), camera, conveyor.
    let sim = Simulator::new(
        SimConfig::new("127.0.0.1", mqtt_port)
            .rule(
                Rule::new("com.example.axle.clamp.v1")
                    .delay(Delay::range(100, 200))
                    .result(json!({"clamped": true})),
            )
            .rule(Rule::new("com.example.axle.work-light.v1").result(json!({"on": true})))
            .rule(
                Rule::new("com.example.axle.press-bearing.v1")
                    .delay(Delay::range(200, 500))
                    .result(json!({"side": "{{param.Side}}", "force_kn": "{{random.f64 34 36}}"})),
            )
            .rule(
                Rule::new("com.example.axle.tighten.v1")
                    .delay(Delay::range(200, 400))
                    .result(json!({"torque_nm": "{{random.f64 37 47}}"}))
                    .emit(
                        EmitSpec::new("com.example.axle.inspection.v1")
                            .equipment("camera")
                            .delay(Delay::fixed(300))
                            .data(json!({"ok": true, "camera": "cam-2"})),
                    ),
            )
            .rule(
                Rule::new("com.example.axle.loosen.v1")
                    .delay(Delay::fixed(150))
                    .result(json!({})),
            )
            .rule(
                Rule::new("com.example.axle.*")
                    .delay(Delay::fixed(100))
                    .result(json!({"done": true})),
            ),
    )?;
    let sim_handle = sim.handle();
    let sim_task = tokio::spawn(sim.run(std::future::pending()));
    sim_handle.ready().await;

    let mut mes = Mes::try_connect(mqtt_port, "demo").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("MES configures scope '{SCOPE}' and stores the rear-axle work master (SFC recipe):");
    for (kind, body) in [
        ("config.equipment.v1", json!({"ID": "axle-cell"})),
        (
            "config.materialclass.v1",
            json!({"MaterialClassID": "axle"}),
        ),
        (
            "config.materialdefinition.v1",
            json!({"MaterialDefinitionID": "rear-axle-7"}),
        ),
    ] {
        send(&mes, kind, body).await?;
    }
    let recipe: Value = serde_json::from_str(RECIPE)?;
    send(
        &mes,
        "config.workmaster.v1",
        json!({"ID": "wm-rear-axle", "Description": {"Locale": "en", "Text": "rear axle assembly"},
               "data": recipe, "dataschema": SFC}),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("\nMES sends job orders, the conveyor reports each part:");
    for job in JOBS {
        send(&mes, "StoreAndStart.v2", json!({"JobOrder": order(job)})).await?;
    }
    // An order for equipment this scope does not have: refused with 16.
    send(&mes, "StoreAndStart.v2", json!({"JobOrder": {"JobOrderID": "axle-999", "WorkMasterID": [{"ID": "wm-rear-axle"}], "EquipmentRequirements": [{"ID": "press-9"}]}}))
        .await?;

    let mut ended: BTreeMap<String, Value> = BTreeMap::new();
    let mut reported = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ended.len() < JOBS.len() && tokio::time::Instant::now() < deadline {
        let Some((_, p)) = mes.recv_at(Duration::from_millis(500)).await else {
            continue;
        };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let Ok(decoded) = binding::decode(&topic, p.payload.clone(), p.properties.as_ref()) else {
            continue;
        };
        let e = decoded.event;
        let body: Value = e
            .data
            .as_deref()
            .and_then(|d| serde_json::from_slice(d).ok())
            .unwrap_or(Value::Null);
        if e.ty == PROGRESS {
            if body["Event"] == "entered" {
                println!(
                    "  {:<9} ▸ {}",
                    body["JobOrderID"].as_str().unwrap_or("?"),
                    body["Step"].as_str().unwrap_or("?")
                );
            }
        } else if e.ty == STATUS {
            let job = body["JobOrder"]["JobOrderID"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            let state = states(&body["JobState"]);
            println!("  {job:<9} ● {state}");
            if state == "Running" && reported < JOBS.len() {
                // The conveyor reports the part for the job (the recipe's first
                // step waits for it).
                part_present(&mes, &job).await?;
                reported += 1;
            }
            if state.starts_with("Ended") || state.starts_with("Aborted") {
                ended.insert(job, body);
            }
        } else if let Some(kind) = &e.mdcserrorkind {
            println!(
                "  <- error {kind}: {}",
                e.mdcserrormessage.as_deref().unwrap_or("")
            );
        } else if topic == mes.replies() {
            let method = e.ty.rsplit('.').nth(1).unwrap_or(&e.ty);
            println!("  <- {method} reply {body}");
        }
    }

    println!("\njob responses:");
    for (job, ev) in &ended {
        let r = &ev["JobResponse"];
        let data = r["JobResponseData"].as_array().cloned().unwrap_or_default();
        let value = |id: &str| {
            data.iter()
                .find(|d| d["ID"] == id)
                .map(|d| d["Value"].clone())
                .unwrap_or(Value::Null)
        };
        let steps: Vec<String> = value("steps")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["Step"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  {job}: {} — torque {:.1} Nm, camera {}, {} → {}",
            states(&ev["JobState"]),
            value("tighten")["torque_nm"].as_f64().unwrap_or(f64::NAN),
            value("inspection")["camera"].as_str().unwrap_or("-"),
            r["StartTime"].as_str().unwrap_or("?"),
            r["EndTime"].as_str().unwrap_or("?"),
        );
        println!("      steps: {}", steps.join(" → "));
    }
    if ended.len() < JOBS.len() {
        println!(
            "  (only {} of {} jobs ended within 60 s)",
            ended.len(),
            JOBS.len()
        );
    }

    println!("\nretained state index an MES sees when it (re)connects:");
    show_state_index(mqtt_port).await?;
    println!("\nsimulated equipment: {}", sim_handle.stats());

    stop.shutdown();
    running.await??;
    sim_handle.shutdown();
    let _ = sim_task.await;

    // The demo checks itself (CI runs it): every job completes its recipe,
    // inspection included.
    let completed = ended
        .iter()
        .filter(|(_, ev)| {
            states(&ev["JobState"]).starts_with("Ended")
                && ev["JobResponse"]["JobResponseData"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["ID"] == "inspection"))
        })
        .count();
    if completed < JOBS.len() {
        return Err(format!(
            "only {completed} of {} jobs completed their recipe",
            JOBS.len()
        )
        .into());
    }
    Ok(())
}

fn order(id: &str) -> Value {
    json!({
        "JobOrderID": id,
        "WorkMasterID": [{"ID": "wm-rear-axle"}],
        "EquipmentRequirements": [{"ID": "axle-cell"}],
        "MaterialRequirements": [{"MaterialClassID": "axle", "MaterialDefinitionID": "rear-axle-7", "Quantity": "1"}],
        "JobOrderParameters": [{"ID": "variant", "Value": "RA-7"}]
    })
}

fn states(list: &Value) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["StateText"]["Text"].as_str())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// Shows and sends `kind`: `config.…` is a configuration event (no reply),
/// anything else a job method (`StoreAndStart.v2`) whose reply comes back
/// to the MES.
async fn send(mes: &Mes, kind: &str, body: Value) -> Result<(), Box<dyn Error>> {
    let shown = match (kind, body["JobOrder"]["JobOrderID"].as_str()) {
        ("config.workmaster.v1", _) => {
            "{ID: wm-rear-axle, data: <SFC recipe>, dataschema: …}".to_string()
        }
        (_, Some(id)) => format!("JobOrder {id}"),
        _ => body.to_string(),
    };
    println!("  -> {kind:<28} {shown}");
    match kind
        .strip_prefix("config.")
        .and_then(|k| k.strip_suffix(".v1"))
    {
        Some(config) => mes.try_configure(config, SCOPE, &body, false).await?,
        None => {
            let correlation = uuid::Uuid::new_v4();
            mes.send(
                &format!("{S}{kind}"),
                &Mes::next_id("cmd"),
                Some(SCOPE),
                &body,
                Some(correlation.as_bytes()),
            )
            .await?;
        }
    }
    Ok(())
}

/// The conveyor's event for a job (what the recipe's first step waits for).
async fn part_present(mes: &Mes, job: &str) -> Result<(), Box<dyn Error>> {
    let mut e = CloudEvent::new("com.example.axle.part-present.v1", "demo-conveyor");
    e.subject = Some(format!("{SCOPE}/conveyor"));
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from(
        json!({"present": true, "carrier": format!("C-{job}")}).to_string(),
    ));
    e.correlationid = Some(CorrelationId::from_text(job.to_string()));
    let out = binding::encode(&e, None);
    mes.client
        .try_publish(
            &format!("app/equipment/{SCOPE}/conveyor/events"),
            out.payload,
            out.properties,
        )
        .await?;
    Ok(())
}

/// What an MES connecting late sees: the retained state index of each scope.
async fn show_state_index(port: u16) -> Result<(), Box<dyn Error>> {
    let mut late = TestClient::try_connect(port, "demo-late-mes").await?;
    late.try_subscribe(
        &[format!("{PREFIX}/+/state-index").as_str()],
        QoS::AtLeastOnce,
    )
    .await?;
    for p in late.drain(Duration::from_millis(800)).await {
        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        println!("  {} seq {}:", String::from_utf8_lossy(&p.topic), v["seq"]);
        for j in v["jobs"].as_array().cloned().unwrap_or_default() {
            println!(
                "    {} {} result={}",
                j["job_order_id"].as_str().unwrap_or("?"),
                states(&j["state"]),
                j["has_result"]
            );
        }
    }
    Ok(())
}
