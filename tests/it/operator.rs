//! The operator commands (`microdcs jobs …`, `microdcs dlq …`): the real
//! binary against a station the test runs on real Mosquitto and Redis,
//! configured through the same `APP_*` environment as the station.

use crate::harness::equipment::{Answer, Equipment};
use crate::harness::jobs::{self, order, state_texts, Mes};
use crate::harness::recipes::{pull_event, push_command, store_recipe};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use microdcs::{EventType, HandlerError, Outcome, Processor, State, TopicBinding};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const INSPECTED: &str = "com.example.axle.inspected.v1";
const DEAD_LETTER_TOPIC: &str = "microdcs/dead-letter";
const GATE: &str = "app/gate/commands";

/// Runs `microdcs ARGS` with exactly `env` as its environment.
async fn cli(env: &[(String, String)], args: &[&str]) -> Output {
    let env = env.to_vec();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .expect("run microdcs")
    })
    .await
    .expect("join")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
async fn ok(env: &[(String, String)], args: &[&str]) -> String {
    let o = cli(env, args).await;
    assert!(
        o.status.success(),
        "microdcs {args:?} failed: {}",
        stderr(&o)
    );
    stdout(&o)
}

/// Runs a command with `--json` that must succeed and parses its output.
async fn ok_json(env: &[(String, String)], args: &[&str]) -> Value {
    let mut with = args.to_vec();
    with.push("--json");
    let out = ok(env, &with).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

// ---------------------------------------------------------------- jobs

/// Clamp (a command the equipment answers), then wait for an inspection
/// event for at most ten minutes.
fn clamp_then_inspect() -> Value {
    json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "inspect"}],
        "Transitions": [{"Source": "load", "Target": "inspect", "Condition": "always"}],
        "Actions": [
            push_command("clamp", "load", "N", "com.example.axle.clamp.v1", 0),
            pull_event("inspection", "inspect", INSPECTED, 600)
        ]
    })
}

fn answer_clamp() -> Answer {
    Arc::new(|_: &str, _: &Value| Some(Ok(json!({"force_kn": 12.5}))))
}

/// Status events until `job` reaches main state `state`.
async fn until_state(mes: &mut Mes, job: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Some((_, ev)) = mes.next_event().await {
            if ev["JobOrder"]["JobOrderID"] == job && state_texts(&ev["JobState"])[0] == state {
                return;
            }
        }
    }
    panic!("job {job} did not reach {state}");
}

fn ids(rows: &Value) -> Vec<String> {
    rows.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["scope"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect()
}

on_each_backend!(jobs_list_and_show_what_the_station_keeps);
async fn jobs_list_and_show_what_the_station_keeps(backend: Backend) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "ops-1");
    r.configure(&mut env);
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    let station = jobs::start(env.clone()).await;
    let eq = Equipment::start(m.port(), answer_clamp()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_recipe(&mut mes, "axle", clamp_then_inspect()).await;
    store_recipe(&mut mes, "other", clamp_then_inspect()).await;

    // a1 runs to its end, w1 waits for its inspection event, n1 is only
    // stored, "dup" exists in two scopes.
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("a1")}))
            .await,
        1
    );
    until_state(&mut mes, "a1", "Running").await;
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("a1"))
        .await;
    until_state(&mut mes, "a1", "Ended").await;
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("w1")}))
            .await,
        1
    );
    until_state(&mut mes, "w1", "Running").await;
    for (scope, job) in [("other", "n1"), ("other", "dup"), ("axle", "dup")] {
        assert_eq!(
            mes.status("Store", scope, json!({"JobOrder": order(job)}))
                .await,
            1
        );
    }
    // w1 reaches its waiting step (the clamp was answered).
    let mut waiting = false;
    for _ in 0..100 {
        let v = ok_json(&env, &["jobs", "show", "w1"]).await;
        if v["execution"]["current_steps"][0]["step"] == "inspect" {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waiting, "w1 never waited in 'inspect'");

    // list: every job; filters by scope and by state (any case).
    let all = ok_json(&env, &["jobs", "list"]).await;
    assert_eq!(
        ids(&all),
        ["axle/a1", "axle/dup", "axle/w1", "other/dup", "other/n1"]
    );
    let a1 = &all[0];
    assert_eq!(a1["state"], json!({"main": "Ended", "sub": "Completed"}));
    assert_eq!(a1["has_response"], true);
    assert!(a1["updated"].as_str().unwrap().ends_with('Z'), "{a1}");
    let running = ok_json(&env, &["jobs", "list", "--state", "running"]).await;
    assert_eq!(ids(&running), ["axle/w1"]);
    let stored = ok_json(
        &env,
        &[
            "jobs",
            "list",
            "--state",
            "NotAllowedToStart",
            "--scope",
            "other",
        ],
    )
    .await;
    assert_eq!(ids(&stored), ["other/dup", "other/n1"]);
    assert_eq!(
        ids(&ok_json(&env, &["jobs", "list", "--scope", "nowhere"]).await).len(),
        0
    );

    // The table: a header and one aligned row per job.
    let table = ok(&env, &["jobs", "list", "--scope", "axle"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("SCOPE"), "{table}");
    let col = lines[0].find("STATE").unwrap();
    let w1 = lines.iter().find(|l| l.contains("w1")).expect("w1 row");
    assert_eq!(w1.find("Running"), Some(col), "{table}");

    // show: order, state, steps, actions and results, timers, history.
    let w1 = ok_json(&env, &["jobs", "show", "w1"]).await;
    assert_eq!(w1["scope"], "axle");
    assert_eq!(w1["order"]["JobOrderID"], "w1");
    assert_eq!(w1["state"]["main"], "Running");
    let x = &w1["execution"];
    assert_eq!(x["status"], "Running");
    assert_eq!(x["results"]["clamp"]["force_kn"], 12.5);
    let actions: Vec<(&str, &str)> = x["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["state"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("clamp", "Done")), "{actions:?}");
    assert!(actions.contains(&("inspection", "Running")), "{actions:?}");
    let timers: Vec<&str> = x["timers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert!(
        timers
            .iter()
            .any(|k| k.contains("timeout") && k.ends_with("inspection")),
        "{timers:?}"
    );
    let history: Vec<&str> = x["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["step"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["load", "inspect"]);
    assert_eq!(w1["response"], Value::Null);

    let a1 = ok(&env, &["jobs", "show", "a1", "--scope", "axle"]).await;
    for part in [
        "State:    Ended/Completed",
        "Current steps:\n(none)",
        "Step history:",
        "Action results:",
        "force_kn",
        "Response:",
        "JobResponseID",
    ] {
        assert!(a1.contains(part), "{part:?} missing in:\n{a1}");
    }

    // Ambiguous and unknown ids are errors that say so.
    let dup = cli(&env, &["jobs", "show", "dup"]).await;
    assert_eq!(dup.status.code(), Some(1));
    let e = stderr(&dup);
    assert!(
        e.contains("several scopes") && e.contains("axle, other"),
        "{e}"
    );
    assert_eq!(
        ok_json(&env, &["jobs", "show", "dup", "--scope", "other"]).await["scope"],
        "other"
    );
    let unknown = cli(&env, &["jobs", "show", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no job 'nope'"),
        "{}",
        stderr(&unknown)
    );
    let unknown = cli(&env, &["jobs", "show", "w1", "--scope", "other"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no job 'w1' in scope 'other'"));
    let bad = cli(&env, &["jobs", "list", "--state", "Jogging"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("AllowedToStart") && stderr(&bad).contains("EndState"),
        "{}",
        stderr(&bad)
    );
    station.stop().await;
}

// ---------------------------------------------------------------- dlq

#[derive(Serialize, Deserialize)]
struct Open {
    #[serde(rename = "Lot")]
    lot: String,
}
impl EventType for Open {
    const TYPE: &'static str = "com.example.gate.open.v1";
    const DATASCHEMA: &'static str = "https://example.com/schemas/gate/v1/#/$defs/Open";
}

#[derive(Serialize, Deserialize)]
struct Opened {
    #[serde(rename = "Lot")]
    lot: String,
}
impl EventType for Opened {
    const TYPE: &'static str = "com.example.gate.open.v1";
    const DATASCHEMA: &'static str = "https://example.com/schemas/gate/v1/#/$defs/Opened";
}

/// Opens the gate for a lot, once the gate is configured (`configured`);
/// before, the command is rejected for good (a dead letter).
async fn open(
    cmd: Open,
    State(configured): State<Arc<AtomicBool>>,
) -> Result<Outcome, HandlerError> {
    if !configured.load(Ordering::SeqCst) {
        return Err(HandlerError::terminal(
            microdcs::ErrorKind::ConfigurationInvalid,
            "the gate is not configured",
        ));
    }
    Ok(Outcome::reply(&Opened { lot: cmd.lot }))
}

/// A station with the `gate` processor on `app/gate`, and whether the gate
/// is configured.
async fn gate_station(env: Vec<(String, String)>) -> (jobs::JobStation, Arc<AtomicBool>) {
    let configured = Arc::new(AtomicBool::new(false));
    let flag = configured.clone();
    let station = jobs::start_extended(env, move |b, _| {
        let gate = Processor::northbound("gate")
            .handle(open)
            .state(flag)
            .build();
        b.processor(gate, TopicBinding::new("app/gate"))
    })
    .await;
    (station, configured)
}

/// Waits until `sub` receives a message on `topic` (others are skipped).
async fn next_on(sub: &mut TestClient, topic: &str) -> Publish {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = sub
            .recv(left)
            .await
            .unwrap_or_else(|| panic!("nothing on {topic}"));
        if p.topic == topic.as_bytes() {
            return p;
        }
    }
}

/// `dlq list --json` until it has `n` entries.
async fn until_listed(env: &[(String, String)], args: &[&str], n: usize) -> Value {
    for _ in 0..100 {
        let v = ok_json(env, args).await;
        if v.as_array().unwrap().len() >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{args:?} never listed {n} dead letters");
}

on_each_backend!(a_dead_letter_is_kept_shown_and_replayed_unchanged_after_the_fix);
async fn a_dead_letter_is_kept_shown_and_replayed_unchanged_after_the_fix(backend: Backend) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "ops-2");
    r.configure(&mut env);
    let (station, configured) = gate_station(env.clone()).await;
    let mut mes = TestClient::connect(m.port(), "gate-mes").await;
    mes.subscribe("mes/gate-replies").await;
    let mut tap = TestClient::connect(m.port(), "gate-tap").await;
    tap.subscribe(GATE).await;

    // A malformed command (not JSON, not even UTF-8) and a good one the
    // gate is not configured for yet: two dead letters.
    let mut bad_props = ce_props("com.example.gate.open.v1", "bad-1", None, None, None);
    bad_props.payload_format_indicator = Some(0);
    mes.publish(GATE, vec![0xff, 0x00, 0x7b], bad_props).await;
    // Messages are handled concurrently: one at a time, for a known order.
    until_listed(&env, &["dlq", "list"], 1).await;
    let mut props = ce_props(
        "com.example.gate.open.v1",
        "open-1",
        None,
        Some("mes/gate-replies"),
        Some(&[0x00, 0xc3, 0x28, 0x07]),
    );
    props.message_expiry_interval = Some(3600);
    props.payload_format_indicator = Some(1);
    props
        .user_properties
        .push(("x-plant".into(), "linz".into()));
    props
        .user_properties
        .push(("x-plant".into(), "second value, same key".into()));
    let body = br#"{"Lot": "L-42", "Extra": [1, 2, 3]}"#.to_vec();
    mes.publish(GATE, body.clone(), props).await;
    let original = next_on(&mut tap, GATE).await;
    assert_eq!(original.payload.as_ref(), [0xff, 0x00, 0x7b]);
    let original = next_on(&mut tap, GATE).await;
    assert_eq!(original.payload.as_ref(), body.as_slice());
    let refused = next_on(&mut mes, "mes/gate-replies").await;
    assert_eq!(
        user_prop(&refused, "mdcserrorkind"),
        Some("CONFIGURATION_INVALID")
    );

    // list: both, newest first.
    let listed = until_listed(&env, &["dlq", "list"], 2).await;
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(rows[0]["processor"], "gate");
    assert_eq!(rows[0]["kind"], "CONFIGURATION_INVALID");
    assert_eq!(rows[0]["topic"], GATE);
    assert_eq!(rows[0]["size"], body.len());
    assert_eq!(rows[1]["kind"], "PAYLOAD_INVALID");
    assert_eq!(rows[1]["size"], 3);
    let good_id = rows[0]["id"].as_str().unwrap().to_owned();
    let bad_id = rows[1]["id"].as_str().unwrap().to_owned();
    let table = ok(&env, &["dlq", "list", "--processor", "gate"]).await;
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&good_id) && table.contains("CONFIGURATION_INVALID"));
    assert_eq!(
        ok_json(&env, &["dlq", "list", "--processor", "elsewhere"])
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // show: everything; the payload as text, or base64 when it is not UTF-8.
    let shown = ok_json(&env, &["dlq", "show", &good_id]).await;
    assert_eq!(shown["payload_encoding"], "utf-8");
    assert_eq!(shown["payload"], String::from_utf8(body.clone()).unwrap());
    assert_eq!(shown["qos"], 1);
    let p = &shown["properties"];
    assert_eq!(p["response_topic"], "mes/gate-replies");
    assert_eq!(p["correlation_data"], "AMMoBw==");
    assert_eq!(p["content_type"], "application/json");
    assert_eq!(p["payload_format_indicator"], 1);
    let user = p["user_properties"].as_array().unwrap();
    assert_eq!(user[user.len() - 2], json!(["x-plant", "linz"]));
    assert_eq!(
        user[user.len() - 1],
        json!(["x-plant", "second value, same key"])
    );
    assert!(shown["reason"].as_str().unwrap().contains("not configured"));
    let bad = ok_json(&env, &["dlq", "show", &bad_id, "--processor", "gate"]).await;
    assert_eq!(bad["payload_encoding"], "base64");
    assert_eq!(bad["payload"], "/wB7");
    let text = ok(&env, &["dlq", "show", &good_id]).await;
    for part in [
        "Reason:",
        "not configured",
        "Response topic:",
        "mes/gate-replies",
        "User property x-plant:",
        "\"Lot\": \"L-42\"",
    ] {
        assert!(text.contains(part), "{part:?} missing in:\n{text}");
    }
    let unknown = cli(&env, &["dlq", "show", "1-0"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no dead letter '1-0'"));

    // The fix, then the replay: the station processes the original and
    // the requester gets its answer under its own correlation data.
    configured.store(true, Ordering::SeqCst);
    ok(&env, &["dlq", "replay", &good_id]).await;
    let answer = next_on(&mut mes, "mes/gate-replies").await;
    assert_eq!(user_prop(&answer, "mdcserrorkind"), None);
    let answer_props = answer.properties.clone().unwrap();
    assert_eq!(
        answer_props.correlation_data.as_deref(),
        Some(&[0x00, 0xc3, 0x28, 0x07][..])
    );
    let reply: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(reply["Lot"], "L-42");

    // What the broker delivered again is the original: payload and every
    // property a publisher sets. The expiry is what was left of it when the
    // station received it, so it may be a second or two lower.
    let again = next_on(&mut tap, GATE).await;
    assert_eq!(again.payload, original.payload);
    assert_eq!(again.qos, original.qos);
    let (a, o): (PublishProperties, PublishProperties) = (
        again.properties.clone().unwrap(),
        original.properties.clone().unwrap(),
    );
    assert_eq!(a.user_properties, o.user_properties);
    assert_eq!(a.content_type, o.content_type);
    assert_eq!(a.correlation_data, o.correlation_data);
    assert_eq!(a.response_topic, o.response_topic);
    assert_eq!(a.payload_format_indicator, o.payload_format_indicator);
    let (left, was) = (
        a.message_expiry_interval.unwrap(),
        o.message_expiry_interval.unwrap(),
    );
    assert!(left <= was && left + 5 >= was, "{left} vs {was}");

    // The replay is recorded; another one needs --force.
    let shown = ok_json(&env, &["dlq", "show", &good_id]).await;
    assert!(shown["replayed"].as_str().is_some_and(|t| t.ends_with('Z')));
    let twice = cli(&env, &["dlq", "replay", &good_id]).await;
    assert_eq!(twice.status.code(), Some(1));
    assert!(stderr(&twice).contains("--force"), "{}", stderr(&twice));
    ok(&env, &["dlq", "replay", &good_id, "--force"]).await;
    // The station answers the duplicate from its dedupe record.
    let again = next_on(&mut mes, "mes/gate-replies").await;
    assert_eq!(
        again.properties.unwrap().correlation_data.as_deref(),
        Some(&[0x00, 0xc3, 0x28, 0x07][..])
    );

    // delete and purge.
    ok(&env, &["dlq", "delete", &bad_id]).await;
    assert_eq!(
        ids_of(&ok_json(&env, &["dlq", "list"]).await),
        [good_id.as_str()]
    );
    ok(&env, &["dlq", "purge"]).await;
    assert_eq!(ok_json(&env, &["dlq", "list"]).await, json!([]));
    station.stop().await;
}

fn ids_of(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_stream_keeps_only_the_newest_max_len() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "ops-3");
    jobs::set(&mut env, "APP_MQTT_DEAD_LETTER_MAX_LEN", "3");
    jobs::set(&mut env, "APP_MQTT_MAX_PAYLOAD_SIZE", "1024");
    let (station, _) = gate_station(env.clone()).await;
    let mut dlq = TestClient::connect(m.port(), "dlq-tap").await;
    dlq.subscribe(DEAD_LETTER_TOPIC).await;
    let mes = TestClient::connect(m.port(), "gate-mes").await;
    let mut redis = r.client().get_multiplexed_async_connection().await.unwrap();
    for i in 0..8 {
        let props = ce_props(
            "com.example.gate.open.v1",
            &format!("b{i}"),
            None,
            None,
            None,
        );
        let payload = format!("not json {i}");
        mes.publish(GATE, payload.clone().into_bytes(), props).await;
        next_on(&mut dlq, DEAD_LETTER_TOPIC).await;
        // Kept in the background: in order, each before the next is sent.
        assert!(
            crate::harness::eventually(Duration::from_secs(10), || {
                newest_payload(&r) == Some(payload.clone().into_bytes())
            })
            .await,
            "dead letter {i} never reached Redis"
        );
    }
    // Too large to process: on the topic, not in Redis.
    let props = ce_props("com.example.gate.open.v1", "huge", None, None, None);
    mes.publish(GATE, vec![b'x'; 2048], props).await;
    let huge = next_on(&mut dlq, DEAD_LETTER_TOPIC).await;
    assert_eq!(
        user_prop(&huge, "x-dead-letter-kind"),
        Some("RESOURCE_EXHAUSTED")
    );
    // The topic got all eight; Redis keeps the newest three.
    let len: u64 = redis::cmd("XLEN")
        .arg("t:{dlq}:letters:gate")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(len, 3);
    let mut shown = Vec::new();
    for id in ids_of(&ok_json(&env, &["dlq", "list"]).await) {
        let letter = ok_json(&env, &["dlq", "show", &id]).await;
        shown.push(letter["payload"].as_str().unwrap().to_owned());
    }
    assert_eq!(shown, ["not json 7", "not json 6", "not json 5"]);

    // A replay record lives no longer than its letter: replaying the
    // oldest (still malformed: dead-lettered again, which trims it), then
    // the next, drops the record of the trimmed one.
    let kept = ids_of(&ok_json(&env, &["dlq", "list"]).await);
    let (id6, id5) = (kept[1].clone(), kept[2].clone());
    ok(&env, &["dlq", "replay", &id5]).await;
    next_on(&mut dlq, DEAD_LETTER_TOPIC).await;
    assert!(
        crate::harness::eventually(Duration::from_secs(10), || {
            newest_payload(&r).as_deref() == Some(b"not json 5".as_slice())
        })
        .await
    );
    ok(&env, &["dlq", "replay", &id6]).await;
    let replayed: Vec<String> = redis::cmd("HKEYS")
        .arg("t:{dlq}:replayed:gate")
        .query_async(&mut redis)
        .await
        .unwrap();
    // id6's own record may be gone too: the station dead-letters it again
    // at once, which may trim it before the record is written.
    assert!(
        replayed.is_empty() || replayed == [id6],
        "{replayed:?}, not {id5}"
    );
    station.stop().await;
}

/// The payload of the newest entry of the `gate` dead-letter stream.
fn newest_payload(r: &Redis) -> Option<Vec<u8>> {
    let mut c = r.client().get_connection().ok()?;
    let entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        redis::cmd("XREVRANGE")
            .arg("t:{dlq}:letters:gate")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut c)
            .ok()?;
    entries.into_iter().next()?.1.remove("payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_dead_letters_still_reach_the_topic() {
    init_tracing();
    let m = Mosquitto::start();
    let mut r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "ops-4");
    let http = microdcs::testkit::devenv::free_port().expect("free port");
    jobs::set(&mut env, "APP_HTTP_HOSTNAME", "127.0.0.1");
    jobs::set(&mut env, "APP_HTTP_PORT", &http.to_string());
    let (station, _) = gate_station(env.clone()).await;
    let mut dlq = TestClient::connect(m.port(), "dlq-tap").await;
    dlq.subscribe(DEAD_LETTER_TOPIC).await;
    let mes = TestClient::connect(m.port(), "gate-mes").await;
    r.kill();
    // A type the gate has no handler for: refused before anything needs
    // Redis.
    for i in 0..3 {
        let props = ce_props(
            "com.example.gate.close.v1",
            &format!("d{i}"),
            None,
            None,
            None,
        );
        mes.publish(GATE, format!("lost {i}").into_bytes(), props)
            .await;
        let dead = next_on(&mut dlq, DEAD_LETTER_TOPIC).await;
        assert_eq!(dead.payload, format!("lost {i}").into_bytes());
        assert_eq!(
            user_prop(&dead, "x-dead-letter-kind"),
            Some("UNKNOWN_PAYLOAD_TYPE")
        );
    }
    // Each lost Redis copy is counted.
    let mut counted = 0.0;
    for _ in 0..150 {
        counted = unstored(http).await;
        if counted >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 3.0);
    let down = cli(&env, &["dlq", "list"]).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(
        stderr(&down).contains(&format!("cannot reach Redis at 127.0.0.1:{}", r.0.port())),
        "{}",
        stderr(&down)
    );
    // Redis back (empty: it kept nothing): the next dead letter is kept.
    r.restart();
    let props = ce_props("com.example.gate.close.v1", "d-after", None, None, None);
    mes.publish(GATE, b"kept".to_vec(), props).await;
    next_on(&mut dlq, DEAD_LETTER_TOPIC).await;
    let rows = until_listed(&env, &["dlq", "list"], 1).await;
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ok_json(&env, &["dlq", "show", &id]).await["payload"],
        "kept"
    );
    station.stop().await;
}

/// `microdcs_dead_letters_unstored_total` summed over its series, from the
/// station's `/metrics` on `port` (0 when absent or unreachable).
async fn unstored(port: u16) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0.0;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: station\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0.0;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw)
        .lines()
        .filter(|l| l.starts_with("microdcs_dead_letters_unstored_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
