//! JSON Schema validation at the edge (#12) against a real station, real
//! Mosquitto and Redis: every violation of a payload comes back in one
//! `PAYLOAD_INVALID` reply, the message is dead-lettered and nothing
//! changes; MessagePack payloads are judged the same; a processor can switch
//! validation off per type and register its own schema documents; SFC
//! recipes are checked against their schema before the semantic rules.

use crate::harness::jobs::{self, JobStation, Mes};
use crate::harness::{init_tracing, Mosquitto, Redis};
use microdcs::models::isa95_jobcontrol::StoreCall;
use microdcs::testkit::mes::{CFG, COMMANDS, SFC_RECIPE};
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use microdcs::validation::SchemaSet;
use microdcs::{EventType, HandlerError, Outcome, Processor, TopicBinding};
use rumqttc::v5::mqttbytes::v5::Publish;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const DEAD_LETTER: &str = "microdcs/dead-letter";
const STORE: &str = "org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2";
const OK: u64 = 1;
const UNKNOWN: u64 = 2;
const UNABLE: u64 = 16;
/// Generous: the outcome is awaited, never timed.
const WAIT: Duration = Duration::from_secs(20);

/// The three violations of the issue: `JobOrderID` a number, `Priority` a
/// string, `WorkMasterID` a string instead of a list.
fn three_violations() -> Value {
    json!({"JobOrder": {"JobOrderID": 4711, "Priority": "high", "WorkMasterID": "wm-axle"}})
}

const THREE_PATHS: [&str; 3] = [
    "/JobOrder/JobOrderID",
    "/JobOrder/Priority",
    "/JobOrder/WorkMasterID",
];

async fn setup() -> (Mosquitto, Redis, JobStation, Mes, TestClient) {
    setup_checking_work_masters(false).await
}

/// [`setup`], with job acceptance checking `WorkMasterID`s or not.
async fn setup_checking_work_masters(
    check: bool,
) -> (Mosquitto, Redis, JobStation, Mes, TestClient) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "val-1");
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", &check.to_string());
    let station = jobs::start(env).await;
    let mes = Mes::connect(m.port(), "mes").await;
    let mut dlq = TestClient::connect(m.port(), "val-dlq").await;
    dlq.subscribe(DEAD_LETTER).await;
    (m, r, station, mes, dlq)
}

/// Publishes `payload` as a command of type `ty` on `topic` with content
/// type `content_type`, and returns its reply.
async fn call_raw(
    mes: &mut Mes,
    topic: &str,
    ty: &str,
    id: &str,
    payload: Vec<u8>,
    content_type: &str,
) -> Publish {
    let corr = uuid::Uuid::new_v4();
    let mut props = ce_props(
        ty,
        id,
        Some("line-1"),
        Some(mes.replies()),
        Some(corr.as_bytes()),
    );
    props.content_type = Some(content_type.to_owned());
    mes.client.publish(topic, payload, props).await;
    loop {
        let p = mes.client.recv(WAIT).await.expect("a reply");
        let ours = p
            .properties
            .as_ref()
            .and_then(|pr| pr.correlation_data.as_ref())
            .is_some_and(|c| c.as_ref() == corr.as_bytes());
        if ours {
            return p;
        }
    }
}

/// `mdcserrorcontext` read back as the wire contract writes it (`k=v,k=v`,
/// `%`, `,` and `=` percent-escaped).
fn error_context(reply: &Publish) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("%2C", ",")
            .replace("%3D", "=")
            .replace("%25", "%")
    };
    user_prop(reply, "mdcserrorcontext")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn sorted_paths(reply: &Publish) -> Vec<String> {
    let mut paths: Vec<String> = error_context(reply).into_iter().map(|(k, _)| k).collect();
    paths.sort();
    paths
}

/// The dead letter of the command `id` (others are skipped).
async fn dead_letter_of(dlq: &mut TestClient, id: &str) -> Publish {
    loop {
        let p = dlq.recv(WAIT).await.expect("a dead letter");
        if user_prop(&p, "id") == Some(id) {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_three_violations_gets_every_path_in_one_reply() {
    let (_m, _r, station, mut mes, mut dlq) = setup().await;
    let body = three_violations();
    let reply = mes
        .call_with(STORE, "bad-store-1", Some("line-1"), &body)
        .await
        .expect("an error reply");
    assert_eq!(user_prop(&reply, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    assert_eq!(sorted_paths(&reply), THREE_PATHS);
    let message = user_prop(&reply, "mdcserrormessage").unwrap_or_default();
    assert!(
        message.contains(StoreCall::DATASCHEMA) && message.contains("3 violations"),
        "{message}"
    );
    for (path, what) in error_context(&reply) {
        assert!(!what.is_empty(), "{path}: no description");
    }
    // Dead-lettered unchanged, with the reason.
    let dead = dead_letter_of(&mut dlq, "bad-store-1").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&dead.payload).unwrap(),
        body
    );
    assert_eq!(
        user_prop(&dead, "x-dead-letter-kind"),
        Some("PAYLOAD_INVALID")
    );
    // Nothing stored: no job under the id as text, and the next status event
    // of the scope is that of the valid order sent after it.
    assert_eq!(
        mes.call(
            "RequestJobResponseByJobOrderID",
            "line-1",
            json!({"JobOrderID": "4711"})
        )
        .await["ReturnStatus"],
        UNKNOWN
    );
    assert_eq!(
        mes.status("Store", "line-1", json!({"JobOrder": jobs::order("fine")}))
            .await,
        OK
    );
    let (_, event) = mes.next_event().await.expect("a status event");
    assert_eq!(event["JobOrder"]["JobOrderID"], "fine");
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messagepack_payload_is_validated_like_json() {
    let (_m, _r, station, mut mes, mut dlq) = setup().await;
    let bad = rmp_serde::to_vec_named(&three_violations()).unwrap();
    let reply = call_raw(
        &mut mes,
        COMMANDS,
        STORE,
        "bad-msgpack-1",
        bad.clone(),
        "application/msgpack",
    )
    .await;
    assert_eq!(user_prop(&reply, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    assert_eq!(sorted_paths(&reply), THREE_PATHS);
    let dead = dead_letter_of(&mut dlq, "bad-msgpack-1").await;
    assert_eq!(&dead.payload[..], &bad[..]);
    // A valid order in MessagePack passes the check and is stored.
    let good = rmp_serde::to_vec_named(&json!({"JobOrder": jobs::order("packed")})).unwrap();
    let reply = call_raw(
        &mut mes,
        COMMANDS,
        STORE,
        "good-msgpack-1",
        good,
        "application/msgpack",
    )
    .await;
    assert_eq!(user_prop(&reply, "mdcserrorkind"), None);
    let (_, event) = mes.next_event().await.expect("a status event");
    assert_eq!(event["JobOrder"]["JobOrderID"], "packed");
    station.stop().await;
}

// ------------------------------------------------ a plant app's own schemas

const PLANT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://plant.example/schemas/rework/v1/",
  "$defs": {
    "Lot": {
      "type": "object",
      "properties": {
        "Lot": {"type": "string"},
        "Count": {"type": "integer", "minimum": 1}
      },
      "required": ["Lot"]
    }
  }
}"#;
const LOT: &str = "https://plant.example/schemas/rework/v1/#/$defs/Lot";

/// Read as loosely as possible, so only the schema can refuse a payload.
#[derive(Debug, Serialize, Deserialize)]
struct Rework {
    #[serde(rename = "Lot", default)]
    lot: Value,
}
impl EventType for Rework {
    const TYPE: &'static str = "com.example.rework.v1";
    const DATASCHEMA: &'static str = LOT;
}

/// The same document, a type whose validation is switched off.
#[derive(Debug, Serialize, Deserialize)]
struct Scrap {
    #[serde(rename = "Lot", default)]
    lot: Value,
}
impl EventType for Scrap {
    const TYPE: &'static str = "com.example.scrap.v1";
    const DATASCHEMA: &'static str = LOT;
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    #[serde(rename = "Lot")]
    lot: Value,
}
impl EventType for Done {
    const TYPE: &'static str = "com.example.done.v1";
    const DATASCHEMA: &'static str = "https://plant.example/schemas/rework/v1/#/$defs/Done";
}

async fn rework(r: Rework) -> Result<Outcome, HandlerError> {
    Ok(Outcome::reply(&Done { lot: r.lot }))
}

async fn scrap(s: Scrap) -> Result<Outcome, HandlerError> {
    Ok(Outcome::reply(&Done { lot: s.lot }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plant_schema_is_enforced_and_validation_can_be_switched_off_per_type() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let schemas = SchemaSet::builtin()
        .with_documents([PLANT_SCHEMA])
        .expect("the plant schema compiles");
    let station = jobs::start_extended(jobs::env(m.port(), r.0.port(), "plant-1"), move |b, _| {
        let plant = Processor::northbound("plant")
            .handle(rework)
            .handle(scrap)
            .schemas(schemas)
            .without_validation::<Scrap>()
            .build();
        b.processor(plant, TopicBinding::new("app/plant"))
    })
    .await;
    let mut mes = Mes::connect(m.port(), "plant-mes").await;
    let bad = json!({"Lot": 17, "Count": 0});

    let reply = call_raw(
        &mut mes,
        "app/plant/commands",
        Rework::TYPE,
        "rework-1",
        bad.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(user_prop(&reply, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    assert_eq!(sorted_paths(&reply), ["/Count", "/Lot"]);
    assert!(user_prop(&reply, "mdcserrormessage").is_some_and(|m| m.contains(LOT)));

    // Switched off: the same payload reaches the handler.
    let reply = call_raw(
        &mut mes,
        "app/plant/commands",
        Scrap::TYPE,
        "scrap-1",
        bad.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(user_prop(&reply, "mdcserrorkind"), None);
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.payload).unwrap(),
        json!({"Lot": 17})
    );

    // A valid payload passes.
    let reply = call_raw(
        &mut mes,
        "app/plant/commands",
        Rework::TYPE,
        "rework-2",
        json!({"Lot": "L-9", "Count": 2}).to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(user_prop(&reply, "mdcserrorkind"), None);
    station.stop().await;
}

// --------------------------------------------------------------- SFC recipes

/// A recipe with three schema violations: a step name that is a number, a
/// transition without its condition, a timeout given as text.
fn schema_invalid_recipe() -> Value {
    json!({
        "Steps": [{"Name": 5, "Initial": true}, {"Name": "press"}],
        "Transitions": [{"Source": "load", "Target": "press"}],
        "Actions": [{"Name": "press", "Step": "press", "Qualifier": "N",
                     "Interaction": "push_command", "TypeId": "com.example.press.v1",
                     "TimeoutSeconds": "ten"}]
    })
}

const RECIPE_LOCATIONS: [&str; 3] = [
    "Steps[0].Name",
    "Transitions[0]",
    "Actions[0].TimeoutSeconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_master_with_a_schema_invalid_recipe_is_refused_with_every_path() {
    let (_m, _r, station, mut mes, _dlq) = setup_checking_work_masters(true).await;
    let reply = mes
        .call_with(
            &format!("{CFG}workmaster.v1"),
            "bad-recipe-1",
            Some("axle"),
            &json!({"ID": "wm-bad", "data": schema_invalid_recipe(), "dataschema": SFC_RECIPE}),
        )
        .await
        .expect("an error reply");
    assert_eq!(user_prop(&reply, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    let message = user_prop(&reply, "mdcserrormessage").unwrap_or_default();
    for location in RECIPE_LOCATIONS {
        assert!(message.contains(location), "{location} missing: {message}");
    }
    // Nothing was stored: the work master is unknown to job acceptance.
    let order = json!({"JobOrder": {"JobOrderID": "x", "WorkMasterID": [{"ID": "wm-bad"}]}});
    assert_eq!(mes.status("StoreAndStart", "axle", order).await, UNABLE);
    station.stop().await;
}

#[test]
fn recipe_check_lists_every_schema_violation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, schema_invalid_recipe().to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .args(["recipe", "check"])
        .arg(&file)
        .output()
        .expect("run microdcs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for location in RECIPE_LOCATIONS {
        assert!(stderr.contains(location), "{location} missing: {stderr}");
    }
    assert!(stderr.contains("3 problems"), "{stderr}");
}
