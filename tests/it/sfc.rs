//! The SFC engine against real Mosquitto and Redis: an MES stores a work
//! master with a recipe and a job order; the station runs it on test
//! equipment that speaks CloudEvents.

use crate::harness::equipment::{Answer, Equipment};
use crate::harness::jobs::{self, order, state_texts, Mes, PREFIX};
use crate::harness::recipes::{pull_event, push_command, store_recipe, SFC};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const INSPECTED: &str = "com.example.axle.inspected.v1";

fn push(name: &str, step: &str) -> Value {
    let mut a = push_command(name, step, "N", &format!("com.example.axle.{name}.v1"), 0);
    a["Parameters"] = json!({"station": "axle-1"});
    a
}

/// Load, press both bearings at once, tighten (condition on its result),
/// wait for the inspection event.
fn rear_axle() -> Value {
    json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "press_left"}, {"Name": "press_right"},
                  {"Name": "tighten"}, {"Name": "inspect"}],
        "Transitions": [
            {"Source": "load", "Target": "presses", "Condition": "always"},
            {"Source": "presses", "Target": "tighten", "Condition": "always"},
            {"Source": "tighten", "Target": "inspect", "Condition": "results.tighten.torque_nm >= 40.0"}
        ],
        "Branches": [{"Name": "presses", "Type": "simultaneous", "Branches": [["press_left"], ["press_right"]]}],
        "Actions": [
            push("clamp", "load"), push("press_l", "press_left"), push("press_r", "press_right"),
            push("tighten", "tighten"),
            pull_event("inspection", "inspect", INSPECTED, 30)
        ]
    })
}

fn answer_all() -> Answer {
    Arc::new(|ty: &str, _: &Value| {
        Some(Ok(match ty {
            t if t.contains("tighten") => json!({"torque_nm": 42.5, "torque_ok": true}),
            t if t.contains("press") => json!({"force_kn": 12.0}),
            _ => json!({"ok": true}),
        }))
    })
}

/// Equipment that loses the first clamp command (the job waits in `load`
/// until the command's timeout re-sends it) and answers everything else.
fn first_clamp_lost() -> Answer {
    let calls = Arc::new(AtomicUsize::new(0));
    Arc::new(move |ty: &str, _: &Value| {
        if ty.contains("clamp") && calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return None;
        }
        Some(Ok(json!({"torque_nm": 45.0})))
    })
}

struct Setup {
    _m: Mosquitto,
    _r: Store,
    station: jobs::JobStation,
    mes: Mes,
}

async fn setup(answer: Answer) -> (Setup, Equipment) {
    setup_on(Backend::Single, answer).await
}

/// [`setup`] on the Redis `backend` names.
async fn setup_on(backend: Backend, answer: Answer) -> (Setup, Equipment) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "sfc-1");
    r.configure(&mut env);
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    let station = jobs::start(env).await;
    let equipment = Equipment::start(m.port(), answer).await;
    let mes = Mes::connect(m.port(), "mes").await;
    (
        Setup {
            _m: m,
            _r: r,
            station,
            mes,
        },
        equipment,
    )
}

/// Stores and releases job order `job` in `scope`: its `ReturnStatus`.
async fn store_and_start(mes: &mut Mes, scope: &str, job: &str) -> u64 {
    mes.status("StoreAndStart", scope, json!({"JobOrder": order(job)}))
        .await
}

/// Stores and releases job order `job` in `scope` (accepted) and waits
/// until it ended or aborted: that status event.
async fn run_to_end(mes: &mut Mes, scope: &str, job: &str) -> Value {
    assert_eq!(store_and_start(mes, scope, job).await, 1);
    until_state(mes, job, &["Ended", "Aborted"]).await
}

/// Status events until the job reaches one of `states` (its main state).
async fn until_state(mes: &mut Mes, job: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Some((_, ev)) = mes.next_event().await {
            let s = state_texts(&ev["JobState"]);
            if ev["JobOrder"]["JobOrderID"] == job && states.contains(&s[0].as_str()) {
                return ev;
            }
        }
    }
    panic!("job {job} did not reach {states:?}");
}

on_each_backend!(a_recipe_runs_on_equipment_to_ended_completed_with_its_results);
async fn a_recipe_runs_on_equipment_to_ended_completed_with_its_results(backend: Backend) {
    let (mut s, eq) = setup_on(backend, answer_all()).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    // The inspection event arrives before its step is active: it is kept.
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("a1"))
        .await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "a1").await, 1);
    let running = until_state(&mut s.mes, "a1", &["Running"]).await;
    assert_eq!(state_texts(&running["JobState"]), ["Running"]);
    let ended = until_state(&mut s.mes, "a1", &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    let data = ended["JobResponse"]["JobResponseData"].as_array().unwrap();
    let value = |id: &str| {
        data.iter()
            .find(|d| d["ID"] == id)
            .map(|d| d["Value"].clone())
    };
    assert_eq!(value("tighten").unwrap()["torque_nm"], 42.5);
    assert_eq!(value("inspection").unwrap()["passed"], true);
    assert!(ended["JobResponse"]["StartTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Commands: stable ids, the job id as metadata, the scope as subject,
    // the action's parameters as data; both presses in parallel.
    let cmds = eq.commands();
    let types: Vec<&str> = cmds.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(types.len(), 4, "{types:?}");
    assert_eq!(types[0], "com.example.axle.clamp.v1");
    assert!(
        types[1..3].contains(&"com.example.axle.press_l.v1")
            && types[1..3].contains(&"com.example.axle.press_r.v1")
    );
    assert_eq!(cmds[0].0, "axle/a1/clamp/1");
    assert_eq!(cmds[0].2, "axle");
    assert_eq!(cmds[0].3["station"], "axle-1");
    assert_eq!(cmds[0].4, "a1");
    // The query sees the same response.
    let r = s
        .mes
        .call(
            "RequestJobResponseByJobOrderID",
            "axle",
            json!({"JobOrderID": "a1"}),
        )
        .await;
    assert_eq!(r["ReturnStatus"], 1);
    s.station.stop().await;
}

/// A Redis Cluster master fails over while a recipe waits in a step: the
/// station follows the scope's slot to the promoted replica (shared
/// connection and the engine's blocking reads alike), the recipe completes,
/// and a new job in the same scope runs from start to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipe_completes_across_a_cluster_master_failover() {
    let (mut s, eq) = setup_on(Backend::ClusterWithReplicas, answer_all()).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "f1").await, 1);
    until_state(&mut s.mes, "f1", &["Running"]).await;
    // The recipe now waits in `inspect` for the event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while eq.commands().len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(eq.commands().len(), 4, "every push action ran");
    // Every key of the scope lives in the slot of its hash tag.
    let cluster = s._r.cluster();
    // Replication is asynchronous: let the replica catch up first, so the
    // failover loses no acknowledged write (what is tested is the
    // station's recovery, not Redis's durability).
    cluster.sync_replica_of("{axle}").expect("replica in sync");
    let old = cluster.kill_master_of("{axle}").expect("kill the master");
    let new = cluster
        .wait_served("{axle}", Duration::from_secs(60))
        .expect("the replica takes over");
    assert_ne!(old, new, "a replica serves the slot now");
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("f1"))
        .await;
    let ended = until_state(&mut s.mes, "f1", &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("f2"))
        .await;
    let ev = run_to_end(&mut s.mes, "axle", "f2").await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    // The publisher follows the scope on its new master too: the retained
    // state index comes to show both jobs ended.
    let mut view = TestClient::connect(s._m.port(), "index-view").await;
    view.subscribe(&format!("{PREFIX}/axle/state-index")).await;
    let ended_in_index = |index: &Value| {
        let jobs = index["jobs"].as_array().cloned().unwrap_or_default();
        ["f1", "f2"].iter().all(|id| {
            jobs.iter()
                .any(|j| j["job_order_id"] == *id && state_texts(&j["state"])[0] == "Ended")
        })
    };
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ended_in_index(&last) && tokio::time::Instant::now() < deadline {
        if let Some(p) = view.recv(Duration::from_millis(500)).await {
            if !p.payload.is_empty() {
                last = serde_json::from_slice(&p.payload).expect("index JSON");
            }
        }
    }
    assert!(
        ended_in_index(&last),
        "state index after the failover: {last}"
    );
    s.station.stop().await;
}

on_each_backend!(recipes_in_several_scopes_run_side_by_side);
/// Scopes are the unit of distribution over a cluster (one slot each): the
/// engine reads every scope's streams, whichever master holds them, and
/// picks up scopes that appear while it runs.
async fn recipes_in_several_scopes_run_side_by_side(backend: Backend) {
    let (mut s, eq) = setup_on(backend, answer_all()).await;
    let scopes = ["axle", "line-2", "line-3", "line-4", "line-5"];
    for (i, scope) in scopes.iter().enumerate() {
        store_recipe(&mut s.mes, scope, rear_axle()).await;
        let job = format!("s{i}");
        eq.event(scope, INSPECTED, json!({"passed": true}), Some(&job))
            .await;
        let ev = run_to_end(&mut s.mes, scope, &job).await;
        assert_eq!(
            state_texts(&ev["JobState"]),
            ["Ended", "Completed"],
            "{scope}: {ev}"
        );
    }
    // Once every scope is known, all at once.
    for (i, scope) in scopes.iter().enumerate() {
        let job = format!("t{i}");
        eq.event(scope, INSPECTED, json!({"passed": true}), Some(&job))
            .await;
        assert_eq!(store_and_start(&mut s.mes, scope, &job).await, 1);
    }
    let mut ended = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ended.len() < scopes.len() && tokio::time::Instant::now() < deadline {
        if let Some((_, ev)) = s.mes.next_event().await {
            let state = state_texts(&ev["JobState"]);
            let job = ev["JobOrder"]["JobOrderID"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if job.starts_with('t') && ["Ended", "Aborted"].contains(&state[0].as_str()) {
                ended.insert(job, state);
            }
        }
    }
    assert_eq!(ended.len(), scopes.len(), "every job ended: {ended:?}");
    for (job, state) in ended {
        assert_eq!(state, ["Ended", "Completed"], "{job}");
    }
    s.station.stop().await;
}

/// A scope's slot moves to another master while a recipe waits in a step
/// (a resharding): the station is redirected (`ASK` while the keys move,
/// `MOVED` after, for the shared connection and the engine's blocking
/// reads alike) and the recipe completes; a new job runs on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipe_completes_while_its_scope_moves_to_another_master() {
    let (mut s, eq) = setup_on(Backend::Cluster, answer_all()).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "m1").await, 1);
    until_state(&mut s.mes, "m1", &["Running"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while eq.commands().len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(eq.commands().len(), 4, "every push action ran");
    let cluster = s._r.cluster();
    let old = cluster.master_of("{axle}").expect("owner");
    let new = cluster.move_slot_of("{axle}").expect("slot moved");
    assert_ne!(old, new);
    assert_eq!(cluster.master_of("{axle}").expect("owner"), new);
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("m1"))
        .await;
    let ended = until_state(&mut s.mes, "m1", &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("m2"))
        .await;
    let ev = run_to_end(&mut s.mes, "axle", "m2").await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_follow_the_steps() {
    let (mut s, eq) = setup(answer_all()).await;
    let mut hmi = TestClient::connect(s._m.port(), "hmi").await;
    hmi.subscribe(&format!("{PREFIX}/+/events")).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "p1").await, 1);
    until_state(&mut s.mes, "p1", &["Running"]).await;
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("p1"))
        .await;
    until_state(&mut s.mes, "p1", &["Ended", "Aborted"]).await;
    let mut steps = Vec::new();
    for p in hmi.drain(Duration::from_millis(500)).await {
        if user_prop(&p, "type") == Some("com.github.aschamberger.microdcs.sfc.progress.v1") {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            if v["Event"] == "entered" {
                steps.push(v["Step"].as_str().unwrap().to_string());
            }
            assert_eq!(
                String::from_utf8_lossy(&p.topic),
                format!("{PREFIX}/p1/events")
            );
        }
    }
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(steps[0], "load");
    assert_eq!(steps[3..], ["tighten", "inspect"]);
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_recipe_is_refused_before_it_is_stored() {
    let (mut s, _eq) = setup(answer_all()).await;
    let mut bad = rear_axle();
    bad["Transitions"][2]["Condition"] = json!("results.tighten.torque_nm >=");
    bad["Steps"][0]["Initial"] = json!(false);
    let p = s
        .mes
        .call_with(
            "com.github.aschamberger.ISA95-JOBCONTROL_V2.config.workmaster.v1",
            "bad-wm",
            Some("axle"),
            &json!({"ID": "wm-axle", "data": bad, "dataschema": SFC}),
        )
        .await
        .expect("an error reply");
    assert_eq!(user_prop(&p, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    let msg = user_prop(&p, "mdcserrormessage").unwrap();
    assert!(
        msg.contains("Condition") && msg.contains("initial"),
        "{msg}"
    );
    // Nothing was stored: the work master is unknown to acceptance.
    assert_eq!(store_and_start(&mut s.mes, "axle", "x").await, 16);
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_recipe_is_left_for_someone_else() {
    let (mut s, eq) = setup(answer_all()).await;
    s.mes
        .configure(
            "workmaster",
            "axle",
            json!({"ID": "wm-axle", "Description": {"Text": "manual"}}),
            false,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "m1").await, 1);
    assert_eq!(s.mes.next_state().await, ["AllowedToStart", "Ready"]);
    assert!(
        s.mes
            .events
            .drain(Duration::from_millis(800))
            .await
            .is_empty(),
        "not started"
    );
    assert!(eq.commands().is_empty());
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equipment_error_aborts_the_job_with_a_response() {
    let answer: Answer = Arc::new(|ty: &str, _: &Value| {
        Some(if ty.contains("press_r") {
            Err("COMMUNICATION_ERROR".into())
        } else {
            Ok(json!({"ok": true}))
        })
    });
    let (mut s, _eq) = setup(answer).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    let ev = run_to_end(&mut s.mes, "axle", "e1").await;
    assert_eq!(state_texts(&ev["JobState"]), ["Aborted"]);
    let why = ev["JobResponse"]["Description"]["Text"].as_str().unwrap();
    assert!(
        why.contains("press_r") && why.contains("COMMUNICATION_ERROR"),
        "{why}"
    );
    s.station.stop().await;
}

on_each_backend!(a_lost_command_is_resent_with_the_same_id_after_its_timeout);
async fn a_lost_command_is_resent_with_the_same_id_after_its_timeout(backend: Backend) {
    let (mut s, eq) = setup_on(backend, first_clamp_lost()).await;
    let mut r = rear_axle();
    r["Actions"][0]["TimeoutSeconds"] = json!(1);
    r["Actions"][0]["Retry"] = json!({"MaxAttempts": 3, "BackoffSeconds": 0.2});
    store_recipe(&mut s.mes, "axle", r).await;
    eq.event("axle", INSPECTED, json!({}), Some("t1")).await;
    let ev = run_to_end(&mut s.mes, "axle", "t1").await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"]);
    let clamps: Vec<String> = eq
        .commands()
        .into_iter()
        .filter(|c| c.1.contains("clamp"))
        .map(|c| c.0)
        .collect();
    assert_eq!(
        clamps,
        ["axle/t1/clamp/1", "axle/t1/clamp/1"],
        "re-sent with the same id"
    );
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_event_that_never_comes_fails_the_job_at_its_timeout() {
    let (mut s, _eq) = setup(answer_all()).await;
    let mut r = rear_axle();
    r["Actions"][4]["TimeoutSeconds"] = json!(1);
    store_recipe(&mut s.mes, "axle", r).await;
    let ev = run_to_end(&mut s.mes, "axle", "w1").await;
    assert_eq!(state_texts(&ev["JobState"]), ["Aborted"]);
    assert!(ev["JobResponse"]["Description"]["Text"]
        .as_str()
        .unwrap()
        .contains("inspection"));
    s.station.stop().await;
}

on_each_backend!(pause_resume_and_stop_control_a_running_recipe);
async fn pause_resume_and_stop_control_a_running_recipe(backend: Backend) {
    let (mut s, eq) = setup_on(backend, answer_all()).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "c1").await, 1);
    until_state(&mut s.mes, "c1", &["Running"]).await;
    // The recipe now waits in `inspect` for the event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while eq.commands().len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.mes
            .status("Pause", "axle", json!({"JobOrderID": "c1"}))
            .await,
        1
    );
    until_state(&mut s.mes, "c1", &["Interrupted"]).await;
    // While paused the event is recorded but the recipe does not end.
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("c1"))
        .await;
    assert!(
        s.mes
            .events
            .drain(Duration::from_millis(700))
            .await
            .iter()
            .all(|p| {
                let v: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                state_texts(&v["JobState"]).first().map(String::as_str) != Some("Ended")
            }),
        "no completion while paused"
    );
    assert_eq!(
        s.mes
            .status("Resume", "axle", json!({"JobOrderID": "c1"}))
            .await,
        1
    );
    let ev = until_state(&mut s.mes, "c1", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"]);

    // Stop mid-recipe: Ended, outstanding actions cancelled, the response
    // holds what was done so far.
    assert_eq!(store_and_start(&mut s.mes, "axle", "c2").await, 1);
    until_state(&mut s.mes, "c2", &["Running"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.mes
            .status("Stop", "axle", json!({"JobOrderID": "c2"}))
            .await,
        1
    );
    until_state(&mut s.mes, "c2", &["Ended"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s
            .mes
            .call(
                "RequestJobResponseByJobOrderID",
                "axle",
                json!({"JobOrderID": "c2"}),
            )
            .await;
        if r["ReturnStatus"] == 1 {
            assert_eq!(r["JobResponse"]["JobOrderID"], "c2");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a response after Stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.station.stop().await;
}

/// One step that pushes a command nobody answers: the job stays Running
/// with its command out until the MES controls it.
fn one_command() -> Value {
    json!({
        "Steps": [{"Name": "load", "Initial": true}],
        "Transitions": [],
        "Actions": [push("clamp", "load")]
    })
}

/// Equipment that never answers.
fn silent() -> Answer {
    Arc::new(|_: &str, _: &Value| None)
}

/// What one client subscribed to both sides saw, in arrival order:
/// `(job, Some(state))` for a status event, `(job, None)` for a command.
type Seen = Vec<(String, Option<String>)>;

/// Sends 100 pipelined pairs `StoreAndStart` + `control` (no waiting in
/// between; a control that overtook its store, or met the job before it
/// ran, is sent again at once), waits for the replies, and records every
/// command sent to equipment and every status event until nothing more
/// arrives. Returns the record and the recorder (to go on recording).
async fn pipelined_pairs(s: &mut Setup, control: &str) -> (Seen, TestClient) {
    let mut recorder = TestClient::connect(s._m.port(), "recorder").await;
    recorder.subscribe("app/equipment/#").await;
    recorder.subscribe(&format!("{PREFIX}/+/events")).await;
    store_recipe(&mut s.mes, "axle", one_command()).await;
    let replies = "mes/pipelined/replies";
    s.mes.client.subscribe(replies).await;
    let send = |method: &str, job: &str, n: u32| {
        let body = if method == "StoreAndStart" {
            json!({"JobOrder": order(job)})
        } else {
            json!({"JobOrderID": job})
        };
        let id = format!("{job}|{method}|{n}");
        let props = ce_props(
            &format!("{}{method}.v2", jobs::S),
            &id,
            Some("axle"),
            Some(replies),
            Some(id.as_bytes()),
        );
        (body, props)
    };
    for i in 0..100 {
        let job = format!("{control}-{i}");
        for method in ["StoreAndStart", control] {
            let (body, props) = send(method, &job, 0);
            s.mes
                .client
                .publish(
                    &format!("{PREFIX}/commands"),
                    serde_json::to_vec(&body).unwrap(),
                    props,
                )
                .await;
        }
    }
    let mut seen = Seen::new();
    let mut running = BTreeSet::new();
    // Controls refused because they overtook their job (2: not stored yet,
    // 8: not Running yet), with how often: sent again as soon as the job
    // runs, which is exactly when its first command is decided.
    let mut waiting: BTreeMap<String, u32> = BTreeMap::new();
    let mut open = 200;
    while open > 0 {
        let mut again = None;
        tokio::select! {
            p = s.mes.client.recv(Duration::from_secs(30)) => {
                let p = p.expect("every command is answered");
                if p.topic != replies.as_bytes() {
                    continue;
                }
                let corr = p
                    .properties
                    .as_ref()
                    .and_then(|pr| pr.correlation_data.clone())
                    .unwrap_or_default();
                let corr = String::from_utf8_lossy(&corr).into_owned();
                let mut parts = corr.splitn(3, '|');
                let (job, method, n) = (
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().parse::<u32>().unwrap(),
                );
                let status = serde_json::from_slice::<Value>(&p.payload).unwrap()["ReturnStatus"].clone();
                if method != "StoreAndStart" && (status == 2 || status == 8) && n < 1000 {
                    if running.contains(&job) {
                        again = Some((job, n + 1));
                    } else {
                        waiting.insert(job, n + 1);
                    }
                } else {
                    open -= 1;
                }
            }
            p = recorder.recv(Duration::from_secs(30)) => {
                let p = p.expect("the station publishes");
                if let Some((job, state)) = record(&p) {
                    if state.as_deref() == Some("Running") {
                        running.insert(job.clone());
                        if let Some(n) = waiting.remove(&job) {
                            again = Some((job.clone(), n));
                        }
                    }
                    seen.push((job, state));
                }
            }
        }
        if let Some((job, n)) = again {
            let (body, props) = send(control, &job, n);
            s.mes
                .client
                .publish(
                    &format!("{PREFIX}/commands"),
                    serde_json::to_vec(&body).unwrap(),
                    props,
                )
                .await;
        }
    }
    // Until the station has been quiet for a while (late dispatches are
    // exactly what this looks for).
    while let Some(p) = recorder.recv(Duration::from_secs(2)).await {
        seen.extend(record(&p));
    }
    (seen, recorder)
}

fn record(p: &rumqttc::v5::mqttbytes::v5::Publish) -> Option<(String, Option<String>)> {
    let topic = String::from_utf8_lossy(&p.topic);
    if topic.ends_with("/commands") && topic.starts_with("app/equipment/") {
        return Some((user_prop(p, "jobid")?.to_owned(), None));
    }
    if user_prop(p, "type") != Some(jobs::STATUS) {
        return None;
    }
    let v: Value = serde_json::from_slice(&p.payload).ok()?;
    let state = state_texts(&v["JobState"]).into_iter().next()?;
    Some((
        v["JobOrder"]["JobOrderID"].as_str()?.to_owned(),
        Some(state),
    ))
}

/// The jobs that got a command after a status event in `stopped`, with
/// how many jobs reached such a state at all.
fn commands_after(seen: &Seen, stopped: &[&str]) -> (Vec<String>, usize) {
    let mut stopped_jobs = BTreeSet::new();
    let mut late = Vec::new();
    for (job, state) in seen {
        match state {
            Some(st) if stopped.contains(&st.as_str()) => {
                stopped_jobs.insert(job.clone());
            }
            Some(_) => {}
            None if stopped_jobs.contains(job) => late.push(job.clone()),
            None => {}
        }
    }
    (late, stopped_jobs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_follows_aborted_when_abort_is_pipelined_right_after_start() {
    let (mut s, _eq) = setup(silent()).await;
    let (seen, _recorder) = pipelined_pairs(&mut s, "Abort").await;
    let (late, aborted) = commands_after(&seen, &["Aborted", "Ended"]);
    assert!(aborted > 0, "some jobs were aborted: {seen:?}");
    assert!(
        late.is_empty(),
        "{} of {aborted} aborted jobs got a command after their Aborted event: {late:?}",
        late.len()
    );
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_follows_interrupted_and_resume_sends_what_pause_held_back() {
    let (mut s, _eq) = setup(silent()).await;
    let (mut seen, mut recorder) = pipelined_pairs(&mut s, "Pause").await;
    let (late, paused) = commands_after(&seen, &["Interrupted"]);
    assert!(paused > 0, "some jobs were paused: {seen:?}");
    assert!(
        late.is_empty(),
        "{} of {paused} paused jobs got a command while Interrupted: {late:?}",
        late.len()
    );
    // A dispatch held back by Pause is not lost: after Resume every job
    // has had its command.
    let interrupted: BTreeSet<String> = seen
        .iter()
        .filter(|(_, st)| st.as_deref() == Some("Interrupted"))
        .map(|(j, _)| j.clone())
        .collect();
    for job in &interrupted {
        assert_eq!(
            s.mes
                .status("Resume", "axle", json!({"JobOrderID": job}))
                .await,
            1
        );
    }
    while let Some(p) = recorder.recv(Duration::from_secs(2)).await {
        seen.extend(record(&p));
    }
    let commanded: BTreeSet<&String> = seen
        .iter()
        .filter(|(_, st)| st.is_none())
        .map(|(j, _)| j)
        .collect();
    let missing: Vec<&String> = interrupted
        .iter()
        .filter(|j| !commanded.contains(j))
        .collect();
    assert!(
        missing.is_empty(),
        "no command after Resume for {missing:?}"
    );
    s.station.stop().await;
}

/// Pretends another replica is sending a command of `job` right now: a
/// dispatch lease expiring `ms` from now (Redis server time).
async fn foreign_lease(r: &Redis, job: &str, ms: u64) -> String {
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let member = format!("axle/{job}/clamp/1\u{1f}other-replica");
    let _: () = redis::cmd("ZADD")
        .arg(format!("t:{{axle}}:lease:{job}"))
        .arg(secs * 1000 + micros / 1000 + ms)
        .arg(&member)
        .query_async(&mut c)
        .await
        .unwrap();
    member
}

/// Aborts `job` from a client of its own; resolves with the ReturnStatus.
fn abort_in_background(port: u16, job: &str) -> tokio::task::JoinHandle<u64> {
    let job = job.to_owned();
    tokio::spawn(async move {
        let mut mes = Mes::connect(port, &format!("mes-{job}")).await;
        mes.status("Abort", "axle", json!({"JobOrderID": job}))
            .await
    })
}

/// No Aborted status event of `job` arrives within `window`.
async fn not_aborted_within(mes: &mut Mes, job: &str, window: Duration) {
    for p in mes.events.drain(window).await {
        let v: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
        assert!(
            !(v["JobOrder"]["JobOrderID"] == job
                && state_texts(&v["JobState"]).first().map(String::as_str) == Some("Aborted")),
            "Aborted published while a command of {job} was being sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_running_waits_for_a_command_being_sent_on_another_replica() {
    let (mut s, _eq) = setup(silent()).await;
    let port = s._m.port();
    store_recipe(&mut s.mes, "axle", one_command()).await;
    for job in ["l1", "l2"] {
        assert_eq!(store_and_start(&mut s.mes, "axle", job).await, 1);
        until_state(&mut s.mes, job, &["Running"]).await;
    }
    let mut c =
        s._r.single()
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();

    // The other replica finishes its send: Aborted follows at once.
    let member = foreign_lease(s._r.single(), "l1", 20_000).await;
    let abort = abort_in_background(port, "l1");
    not_aborted_within(&mut s.mes, "l1", Duration::from_millis(800)).await;
    let _: i64 = redis::cmd("ZREM")
        .arg("t:{axle}:lease:l1")
        .arg(&member)
        .query_async(&mut c)
        .await
        .unwrap();
    let released = tokio::time::Instant::now();
    until_state(&mut s.mes, "l1", &["Aborted"]).await;
    assert!(released.elapsed() < Duration::from_secs(1));
    assert_eq!(abort.await.unwrap(), 1);

    // The other replica died mid-send: Aborted follows when its lease
    // expires, not before.
    foreign_lease(s._r.single(), "l2", 1_500).await;
    let started = tokio::time::Instant::now();
    let abort = abort_in_background(port, "l2");
    until_state(&mut s.mes, "l2", &["Aborted"]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(abort.await.unwrap(), 1);
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_processor_takes_over_a_command_type() {
    use microdcs::sfc::engine::Engine;
    use microdcs::{CloudEvent, Emit, HandlerError, Processor, State, TopicBinding};

    async fn on_tool(mut ev: CloudEvent, State(engine): State<Engine>) -> Result<(), HandlerError> {
        let native: Value = ev.data_as().unwrap_or_default();
        if let Some(t) = native["FinalTorque"].as_f64() {
            ev.set_data(microdcs::ContentType::Json, &json!({"torque_nm": t}))
                .unwrap();
        }
        engine.deliver(&ev).await.map_err(HandlerError::from)
    }

    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start_extended(jobs::env(m.port(), r.0.port(), "tool-1"), |b, engine| {
        let engine = engine.expect("processor instance").clone();
        let tool = Processor::southbound("torque-tool")
            .handle(on_tool)
            .state(engine.clone())
            .build();
        engine.take_over("com.example.axle.tighten.v1", &tool, |cmd| {
            let mut ev = CloudEvent::new("com.example.nutrunner.Tighten.v1", "");
            ev.set_data(
                microdcs::ContentType::Json,
                &json!({"Program": 7, "TargetNm": cmd.parameters["station"]}),
            )?;
            Ok(Emit::raw(ev))
        });
        let mut binding = TopicBinding::new("app/tools");
        binding.wildcard_levels = 1;
        binding.shared_response_topic = Some("app/tools/responses".into());
        b.processor(tool, binding)
    })
    .await;
    // The generic equipment gets everything else; the tool answers natively.
    let eq = Equipment::start(m.port(), answer_all()).await;
    let mut tool = TestClient::connect(m.port(), "nutrunner").await;
    tool.subscribe("app/tools/+/commands").await;
    let tool_task = tokio::spawn(async move {
        while let Some(p) = tool.recv(Duration::from_secs(60)).await {
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let cmd = microdcs::transport::binding::decode(
                &topic,
                p.payload.clone(),
                p.properties.as_ref(),
            )
            .unwrap()
            .event;
            assert_eq!(cmd.ty, "com.example.nutrunner.Tighten.v1");
            assert_eq!(cmd.data_as::<Value>().unwrap()["Program"], 7);
            assert_eq!(cmd.id, "axle/h1/tighten/1");
            let mut reply = CloudEvent::new(cmd.ty.clone(), "nutrunner");
            reply.correlationid = cmd.correlationid.clone();
            reply.datacontenttype = Some("application/json".into());
            reply.data = Some(
                serde_json::to_vec(&json!({"FinalTorque": 44.0}))
                    .unwrap()
                    .into(),
            );
            let to = p
                .properties
                .as_ref()
                .and_then(|x| x.response_topic.clone())
                .unwrap();
            assert_eq!(to, "app/tools/responses");
            crate::harness::equipment::answer_to(&tool, &p, to, &reply)
                .await
                .unwrap();
        }
    });
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_recipe(&mut mes, "axle", rear_axle()).await;
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("h1"))
        .await;
    assert_eq!(store_and_start(&mut mes, "axle", "h1").await, 1);
    let ev = until_state(&mut mes, "h1", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    let data = ev["JobResponse"]["JobResponseData"].as_array().unwrap();
    let tighten = data.iter().find(|d| d["ID"] == "tighten").unwrap();
    assert_eq!(tighten["Value"]["torque_nm"], 44.0);
    assert!(
        eq.commands().iter().all(|c| !c.1.contains("tighten")),
        "the generic processor sent no tighten"
    );
    tool_task.abort();
    station.stop().await;
}

fn act(name: &str, step: &str, q: &str) -> Value {
    push_command(name, step, q, &format!("com.example.q.{name}.v1"), 0)
}

/// Every qualifier, a selection nested in a simultaneous branch and a loop,
/// through Redis and MQTT.
fn everything() -> Value {
    let mut d = act("delayed", "left", "D");
    d["DelaySeconds"] = json!(0.3);
    let mut l = act("blow", "prep", "L");
    l["DurationSeconds"] = json!(0.3);
    let mut reset = act("stop_light", "done", "R");
    reset["TypeId"] = json!("light");
    json!({
        "Steps": [{"Name": "prep", "Initial": true}, {"Name": "left"}, {"Name": "right_a"}, {"Name": "right_b"},
                  {"Name": "check"}, {"Name": "done"}],
        "Transitions": [
            {"Source": "prep", "Target": "both", "Condition": "always"},
            {"Source": "choose", "Target": "right_a", "Condition": "results.prep_n.variant == 'a'"},
            {"Source": "choose", "Target": "right_b", "Condition": "results.prep_n.variant != 'a'"},
            {"Source": "both", "Target": "check", "Condition": "always"},
            {"Source": "check", "Target": "prep", "Condition": "results.measure.round < 2", "Priority": 1},
            {"Source": "check", "Target": "done", "Condition": "results.measure.round >= 2", "Priority": 2}
        ],
        "Branches": [
            {"Name": "both", "Type": "simultaneous", "Branches": [["left"], ["choose"]]},
            {"Name": "choose", "Type": "selection", "Branches": [["right_a"], ["right_b"]]}
        ],
        "Actions": [
            act("prep_n", "prep", "N"), act("pulse", "prep", "P1"), act("bye", "prep", "P0"), l,
            act("light", "prep", "S"),
            act("left", "left", "N"), act("right_a", "right_a", "N"), act("right_b", "right_b", "N"),
            act("measure", "check", "N"), d,
            reset, act("unload", "done", "N")
        ]
    })
}

on_each_backend!(qualifiers_nested_branches_and_a_loop_run_end_to_end);
async fn qualifiers_nested_branches_and_a_loop_run_end_to_end(backend: Backend) {
    let rounds = Arc::new(AtomicUsize::new(0));
    let r2 = rounds.clone();
    let answer: Answer = Arc::new(move |ty: &str, _: &Value| {
        if ty.contains(".blow.") || ty.contains(".light.") {
            return None; // L runs into its limit; S keeps running until reset
        }
        Some(Ok(match ty {
            t if t.contains(".prep_n.") => json!({"variant": "b"}),
            t if t.contains(".measure.") => json!({"round": r2.fetch_add(1, Ordering::SeqCst) + 1}),
            _ => json!({"ok": true}),
        }))
    });
    let (mut s, eq) = setup_on(backend, answer).await;
    store_recipe(&mut s.mes, "q", everything()).await;
    assert_eq!(store_and_start(&mut s.mes, "q", "q1").await, 1);
    let ev = until_state(&mut s.mes, "q1", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    let sent: Vec<String> = eq.commands().into_iter().map(|c| c.0).collect();
    let count = |a: &str| {
        sent.iter()
            .filter(|id| id.contains(&format!("/{a}/")))
            .count()
    };
    // Two rounds of the loop: prep's actions twice (new ids), the selection
    // took right_b both times, D fired in `left` (it holds the step), P0 on
    // each exit of prep, the S light was started twice and reset at the end.
    assert_eq!(count("prep_n"), 2);
    assert!(sent.contains(&"q/q1/prep_n/2".to_string()), "{sent:?}");
    assert_eq!(count("pulse"), 2);
    assert_eq!(count("bye"), 2);
    assert_eq!(count("blow"), 2);
    assert_eq!(count("right_b"), 2);
    assert_eq!(count("right_a"), 0);
    assert_eq!(count("left"), 2);
    assert_eq!(count("delayed"), 2, "{sent:?}");
    assert_eq!(count("measure"), 2);
    assert_eq!(count("unload"), 1);
    assert_eq!(count("stop_light"), 0, "R sends nothing");
    let steps: Vec<String> = ev["JobResponse"]["JobResponseData"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["ID"] == "steps")
        .unwrap()["Value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        steps.iter().filter(|s| *s == "prep").count(),
        2,
        "{steps:?}"
    );
    assert_eq!(steps.last().map(String::as_str), Some("done"));
    assert_eq!(rounds.load(Ordering::SeqCst), 2);
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_keeps_its_recipe_when_the_work_master_changes_and_abort_ends_it() {
    let (mut s, eq) = setup(answer_all()).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "old").await, 1);
    until_state(&mut s.mes, "old", &["Running"]).await;
    // The job now waits for its inspection event. A new recipe version
    // (a single step with another command) replaces the work master.
    let new = json!({
        "Steps": [{"Name": "only", "Initial": true}],
        "Transitions": [],
        "Actions": [push("engrave", "only")]
    });
    store_recipe(&mut s.mes, "axle", new).await;
    let ev = run_to_end(&mut s.mes, "axle", "new").await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"]);
    // The old job still runs the old recipe: its inspection completes it.
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("old"))
        .await;
    let ev = until_state(&mut s.mes, "old", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"]);
    let types: Vec<String> = eq
        .commands()
        .into_iter()
        .filter(|c| c.4 == "old")
        .map(|c| c.1)
        .collect();
    assert!(!types.iter().any(|t| t.contains("engrave")), "{types:?}");

    // Abort mid-recipe: Aborted, nothing more is sent for it.
    assert_eq!(store_and_start(&mut s.mes, "axle", "ab").await, 1);
    until_state(&mut s.mes, "ab", &["Running"]).await;
    assert_eq!(
        s.mes
            .status("Abort", "axle", json!({"JobOrderID": "ab"}))
            .await,
        1
    );
    until_state(&mut s.mes, "ab", &["Aborted"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = eq.commands().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(eq.commands().len(), before, "no dispatch after Abort");
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unaddressed_event_is_kept_until_a_job_waits_for_its_type() {
    let (mut s, eq) = setup(first_clamp_lost()).await;
    let mut r = rear_axle();
    r["Actions"][0]["TimeoutSeconds"] = json!(1);
    r["Actions"][0]["Retry"] = json!({"MaxAttempts": 2});
    store_recipe(&mut s.mes, "axle", r).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "u1").await, 1);
    until_state(&mut s.mes, "u1", &["Running"]).await;
    // No correlation id, and nobody waits for inspections yet: kept.
    eq.event(
        "axle",
        INSPECTED,
        json!({"passed": true, "by": "camera"}),
        None,
    )
    .await;
    let ev = until_state(&mut s.mes, "u1", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    let data = ev["JobResponse"]["JobResponseData"].as_array().unwrap();
    let inspection = data.iter().find(|d| d["ID"] == "inspection").unwrap();
    assert_eq!(inspection["Value"]["by"], "camera");
    s.station.stop().await;
}

const PART: &str = "com.example.axle.part_present.v1";

/// Clamp, then two parallel paths each waiting for a part-present event
/// from its own equipment (`press`, `camera`) of the scope.
fn two_sensors() -> Value {
    let on = |mut action: Value, equipment: &str| {
        action["Equipment"] = json!(equipment);
        action
    };
    json!({
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "at_press"}, {"Name": "at_camera"}],
        "Transitions": [
            {"Source": "load", "Target": "sensors", "Condition": "always"}
        ],
        "Branches": [{"Name": "sensors", "Type": "simultaneous", "Branches": [["at_press"], ["at_camera"]]}],
        "Actions": [
            push("clamp", "load"),
            on(pull_event("press_part", "at_press", PART, 30), "press"),
            on(pull_event("camera_part", "at_camera", PART, 30), "camera")
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pull_actions_each_get_their_own_equipments_event() {
    let (mut s, eq) = setup(answer_all()).await;
    store_recipe(&mut s.mes, "axle", two_sensors()).await;
    // Addressed to the job (correlation id), then unaddressed (routed by
    // scope, type and equipment).
    for (job, addressed) in [("e1", true), ("e2", false)] {
        assert_eq!(store_and_start(&mut s.mes, "axle", job).await, 1);
        until_state(&mut s.mes, job, &["Running"]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !eq.commands().iter().any(|c| c.4 == job) {
            assert!(tokio::time::Instant::now() < deadline, "no clamp for {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let to = addressed.then_some(job);
        // The second path's equipment reports first.
        eq.event(
            "axle/camera",
            PART,
            json!({"from": "camera", "job": job}),
            to,
        )
        .await;
        eq.event("axle/press", PART, json!({"from": "press", "job": job}), to)
            .await;
        let ev = until_state(&mut s.mes, job, &["Ended", "Aborted"]).await;
        assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
        let data = ev["JobResponse"]["JobResponseData"].as_array().unwrap();
        let value = |id: &str| data.iter().find(|d| d["ID"] == id).unwrap()["Value"].clone();
        assert_eq!(value("press_part")["from"], "press", "{ev}");
        assert_eq!(value("camera_part")["from"], "camera", "{ev}");
        assert_eq!(value("press_part")["job"], job);
        assert_eq!(value("camera_part")["job"], job);
    }
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_event_that_expired_completes_nothing() {
    let (mut s, eq) = setup(answer_all()).await;
    let recipe = json!({
        "Steps": [{"Name": "inspect", "Initial": true}],
        "Transitions": [],
        "Actions": [pull_event("inspection", "inspect", INSPECTED, 30)]
    });
    store_recipe(&mut s.mes, "axle", recipe).await;
    // Kept before any job runs, valid for 1 s (MQTT Message Expiry).
    eq.event_expiring("axle", INSPECTED, json!({"n": 1}), None, Some(1))
        .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "x1").await, 1);
    until_state(&mut s.mes, "x1", &["Running"]).await;
    eq.event("axle", INSPECTED, json!({"n": 2}), None).await;
    let ev = until_state(&mut s.mes, "x1", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    let data = ev["JobResponse"]["JobResponseData"].as_array().unwrap();
    let inspection = data.iter().find(|d| d["ID"] == "inspection").unwrap();
    assert_eq!(
        inspection["Value"]["n"], 2,
        "the expired event completed it"
    );
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_can_never_be_published_aborts_the_job_with_the_reason() {
    use microdcs::sfc::engine::Engine;
    use microdcs::{CloudEvent, Emit, HandlerError, Processor, State, TopicBinding};

    async fn on_tool(ev: CloudEvent, State(engine): State<Engine>) -> Result<(), HandlerError> {
        engine.deliver(&ev).await.map_err(HandlerError::from)
    }

    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start_extended(jobs::env(m.port(), r.0.port(), "tool-1"), |b, engine| {
        let engine = engine.expect("processor instance").clone();
        let tool = Processor::southbound("torque-tool")
            .handle(on_tool)
            .state(engine.clone())
            .build();
        // A hand-written processor that addresses the tool named by a
        // recipe parameter, as it is: a name MQTT forbids in a topic
        // makes a command no broker will take.
        engine.take_over("com.example.axle.tighten.v1", &tool, |cmd| {
            let mut ev = CloudEvent::new("com.example.nutrunner.Tighten.v1", "");
            ev.subject = Some(format!(
                "{}/{}",
                cmd.scope,
                cmd.parameters["tool"].as_str().unwrap_or_default()
            ));
            Ok(Emit::raw(ev))
        });
        let mut binding = TopicBinding::new("app/tools");
        binding.wildcard_levels = 2;
        binding.shared_response_topic = Some("app/tools/responses".into());
        b.processor(tool, binding)
    })
    .await;
    let eq = Equipment::start(m.port(), answer_all()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut tighten = push("tighten", "tighten");
    tighten["Parameters"] = json!({"tool": "nut+runner"});
    let recipe = json!({
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "tighten"}, {"Name": "unload"}],
        "Transitions": [
            {"Source": "load", "Target": "tighten", "Condition": "always"},
            {"Source": "tighten", "Target": "unload", "Condition": "always"}
        ],
        "Actions": [push("clamp", "load"), tighten, push("unload", "unload")]
    });
    store_recipe(&mut mes, "axle", recipe).await;
    assert_eq!(store_and_start(&mut mes, "axle", "t1").await, 1);
    let ev = until_state(&mut mes, "t1", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Aborted"], "{ev}");
    let why = ev["JobResponse"]["Description"]["Text"].as_str().unwrap();
    assert!(
        why.contains("'tighten'") && why.contains("cannot be sent") && why.contains("nut+runner"),
        "{why}"
    );
    let types: Vec<String> = eq.commands().into_iter().map(|c| c.1).collect();
    assert_eq!(
        types,
        ["com.example.axle.clamp.v1"],
        "nothing after the failure"
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipe_survives_redis_going_away_mid_run() {
    init_tracing();
    let m = Mosquitto::start();
    let mut r = Redis::start_durable();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "sfc-r")).await;
    // The equipment answers everything but the tighten command, which it
    // only answers after Redis came back (its retry re-sends it).
    let redis_back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let back = redis_back.clone();
    let answer: Answer = Arc::new(move |ty: &str, _: &Value| {
        if ty.contains("tighten") && !back.load(Ordering::SeqCst) {
            return None;
        }
        Some(Ok(json!({"torque_nm": 44.0})))
    });
    let eq = Equipment::start(m.port(), answer).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut recipe = rear_axle();
    recipe["Actions"][3]["TimeoutSeconds"] = json!(2);
    recipe["Actions"][3]["Retry"] = json!({"MaxAttempts": 10});
    store_recipe(&mut mes, "axle", recipe).await;
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("rr"))
        .await;
    assert_eq!(store_and_start(&mut mes, "axle", "rr").await, 1);
    until_state(&mut mes, "rr", &["Running"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !eq.commands().iter().any(|c| c.1.contains("tighten")) {
        assert!(tokio::time::Instant::now() < deadline, "tighten was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.restart();
    redis_back.store(true, Ordering::SeqCst);
    let ev = until_state(&mut mes, "rr", &["Ended", "Aborted"]).await;
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"], "{ev}");
    let tightens: Vec<String> = eq
        .commands()
        .into_iter()
        .filter(|c| c.1.contains("tighten"))
        .map(|c| c.0)
        .collect();
    assert!(
        tightens.iter().all(|id| id == "axle/rr/tighten/1"),
        "re-sent with the same id: {tightens:?}"
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_echoes_only_the_correlation_data_completes_its_action() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "sfc-1");
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    let station = jobs::start(env).await;
    let eq = Equipment::start_echoing_only_correlation_data(m.port(), answer_all()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    // Scope `q7`, job `J-ab12`, action `pick`: the command id
    // `q7/J-ab12/pick/1` is 16 bytes long, the length of a UUID.
    let recipe = json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "pick", "Initial": true}, {"Name": "place"}],
        "Transitions": [{"Source": "pick", "Target": "place", "Condition": "always"}],
        "Actions": [
            push_command("pick", "pick", "N", "com.example.pick.v1", 0),
            push_command("put", "place", "N", "com.example.put.v1", 0)
        ]
    });
    store_recipe(&mut mes, "q7", recipe).await;
    assert_eq!(store_and_start(&mut mes, "q7", "J-ab12").await, 1);
    let ended = until_state(&mut mes, "J-ab12", &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    let ids: Vec<String> = eq.commands().into_iter().map(|c| c.0).collect();
    assert_eq!(ids, ["q7/J-ab12/pick/1", "q7/J-ab12/put/1"]);
    station.stop().await;
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_is_a_minute_ahead_fires_no_timeout_early() {
    // A real `microdcs run` whose wall clock is 60 s ahead (libfaketime;
    // monotonic time left alone), beside an in-process replica with the
    // right time. Both move due timers.
    let (mut s, eq) = setup(answer_all()).await;
    let mut env = jobs::env(s._m.port(), s._r.single().0.port(), "skewed");
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    // libfaketime preloaded into the binary itself: the `faketime` wrapper
    // forks, and killing it would leave the replica running.
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime (scripts/setup.sh installs faketime)");
    let skewed = std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .arg("run")
        .envs(env)
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", "+60s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start microdcs run");
    // Killed however the test ends.
    let skewed = KillOnDrop(skewed);
    // Up once its session heartbeat is in Redis.
    let mut c =
        s._r.single()
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
    let mut up = false;
    for _ in 0..600 {
        let score: Option<f64> =
            redis::AsyncCommands::zscore(&mut c, "t:{mqtt}:sessions", "microdcs-skewed")
                .await
                .unwrap_or(None);
        if score.is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the skewed replica did not start");
    // The inspection waits up to 30 s; the event comes after 3 s. Judged by
    // its own clock, the skewed replica would see the deadline as passed.
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    assert_eq!(store_and_start(&mut s.mes, "axle", "k1").await, 1);
    until_state(&mut s.mes, "k1", &["Running"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("k1"))
        .await;
    let ended = until_state(&mut s.mes, "k1", &["Ended", "Aborted"]).await;
    drop(skewed);
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    s.station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_id_has_wildcards_slashes_and_control_characters_runs_its_recipe() {
    let (mut s, eq) = setup(answer_all()).await;
    store_recipe(&mut s.mes, "axle", rear_axle()).await;
    let job = "PO#7/+\u{1}x";
    eq.event("axle", INSPECTED, json!({"passed": true}), Some(job))
        .await;
    assert_eq!(store_and_start(&mut s.mes, "axle", job).await, 1);
    let ended = until_state(&mut s.mes, job, &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    let cmds = eq.commands();
    assert_eq!(cmds.len(), 4);
    // The command id and the jobid metadata carry the id percent-encoded.
    assert_eq!(cmds[0].0, "axle/PO%237%2F%2B%01x/clamp/1");
    assert_eq!(cmds[0].4, "PO%237%2F%2B%01x");
    s.station.stop().await;
}

on_each_backend!(jobs_released_while_the_change_stream_overflowed_still_run);
/// The engine's consumer group falls more than the change stream's cap
/// behind (no engine ran while jobs were released and many other changes
/// passed): the entries that released the jobs are trimmed before the
/// group read them. The engine notices and reconciles the scope from the
/// stored job states, so every released job still runs to completion.
async fn jobs_released_while_the_change_stream_overflowed_still_run(backend: Backend) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "sfc-cap");
    r.configure(&mut env);
    jobs::set(&mut env, "APP_JOBS_CHANGE_STREAM_MAX_LEN", "20");
    // A first engine creates its consumer group and reads what there is.
    let station = jobs::start(env.clone()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    // Two steps of commands the equipment answers.
    let recipe = json!({
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "tighten"}],
        "Transitions": [{"Source": "load", "Target": "tighten", "Condition": "always"}],
        "Actions": [push("clamp", "load"), push("tighten", "tighten")]
    });
    store_recipe(&mut mes, "cap", recipe).await;
    assert_eq!(
        mes.status("Store", "cap", json!({"JobOrder": order("warm-up")}))
            .await,
        1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    station.stop().await;

    // No engine runs: jobs are released, then far more other changes than
    // the stream keeps pass (a manager of the test's own, same Redis).
    let config = microdcs::config::Config::from_sources(None, env.clone()).unwrap();
    let conn = r.connection();
    let store =
        microdcs::jobs::JobStore::new(conn, "t", Duration::from_secs(3600)).with_stream_len(20);
    let manager =
        microdcs::jobs::JobManager::new(store.clone(), microdcs::station::job_settings(&config));
    let released: Vec<String> = (0..12).map(|i| format!("rel-{i}")).collect();
    for id in &released {
        let e = manager
            .store_order("cap", &order(id), true, &format!("t/{id}"))
            .await
            .unwrap();
        assert_eq!(e.status.value(), 1, "{id}");
    }
    for i in 0..80 {
        let id = format!("noise-{i}");
        manager
            .store_order("cap", &order(&id), false, &format!("t/{id}"))
            .await
            .unwrap();
        manager
            .call(
                "cap",
                &id,
                microdcs::jobs::Method::Cancel,
                &format!("t/c/{id}"),
            )
            .await
            .unwrap();
    }
    // The premise, checked: the group stands behind the first entry left.
    let mut c = r.connection();
    let info = microdcs::jobs::store::stream_info(&mut c, "t:{cap}:changes")
        .await
        .unwrap()
        .expect("change stream");
    let groups: redis::streams::StreamInfoGroupsReply =
        redis::AsyncCommands::xinfo_groups(&mut c, "t:{cap}:changes")
            .await
            .unwrap();
    let group = groups
        .groups
        .iter()
        .find(|g| g.name == "sfc-engine")
        .expect("the engine's group");
    assert!(
        info.lost_after(&group.last_delivered_id),
        "group at {} behind {info:?}",
        group.last_delivered_id
    );

    // An engine starts again: every released job runs to the end.
    let station = jobs::start(env).await;
    let _equipment = Equipment::start(m.port(), answer_all()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut states = BTreeMap::new();
    while tokio::time::Instant::now() < deadline {
        states.clear();
        for id in &released {
            let j = store.get("cap", id).await.unwrap().expect("job");
            states.insert(id.clone(), format!("{:?}", j.state.main));
        }
        if states.values().all(|s| s == "Ended") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        states.values().all(|s| s == "Ended"),
        "every released job ran to completion: {states:?}"
    );
    for id in &released {
        let j = store.get("cap", id).await.unwrap().expect("job");
        assert_eq!(
            j.state.sub.map(|s| format!("{s:?}")).as_deref(),
            Some("Completed"),
            "{id}"
        );
        assert!(j.response.is_some(), "{id} has its response");
    }
    station.stop().await;
}

/// Until `job` of scope `axle` waits for the inspection event.
async fn until_waiting(c: &mut redis::aio::MultiplexedConnection, job: &str) {
    let waiting = format!("t:{{axle}}:waiting:{INSPECTED}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&waiting)
            .arg(job)
            .query_async(c)
            .await
            .unwrap();
        if score.is_some() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job} never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A timer work item whose handler keeps failing (its job's execution
/// state is no hash any more: Redis answers WRONGTYPE every time) is
/// tried `processing.max_attempts` times, then dead-lettered with its
/// errors and removed from the work stream; the engine keeps running the
/// scope's other jobs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_item_that_keeps_failing_is_dead_lettered_and_other_jobs_still_run() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "sfc-1");
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    jobs::set(&mut env, "APP_PROCESSING_MAX_ATTEMPTS", "3");
    let station = jobs::start(env).await;
    let eq = Equipment::start(m.port(), answer_all()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut recipe = rear_axle();
    // The inspection waits 2 s, then its timeout timer fires.
    recipe["Actions"][4]["TimeoutSeconds"] = json!(2);
    store_recipe(&mut mes, "axle", recipe).await;
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();

    // d1 runs until it waits for the inspection event ...
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("d1")}))
            .await,
        1
    );
    until_waiting(&mut c, "d1").await;
    // ... then its execution state becomes a value of the wrong type: the
    // timer that fires next fails on every attempt.
    let exec = "t:{axle}:exec:d1";
    let _: () = redis::cmd("DEL")
        .arg(exec)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(exec)
        .arg("not a hash")
        .query_async(&mut c)
        .await
        .unwrap();

    // Meanwhile another job of the scope runs to its end (its event sent
    // once it waits, so that it is applied to it directly).
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("d2")}))
            .await,
        1
    );
    until_waiting(&mut c, "d2").await;
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("d2"))
        .await;
    let ended = until_state(&mut mes, "d2", &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );

    // The timer of d1 ends up in the dead letters, with its three errors.
    let letters = "t:{axle}:deadletters";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let record: Value = loop {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(letters)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        if let Some(first) = raw.first() {
            assert_eq!(raw.len(), 1, "{raw:?}");
            break serde_json::from_str(first).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failing timer was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record["stream"], "t:{axle}:work", "{record}");
    assert_eq!(record["item"]["kind"], "timer", "{record}");
    assert_eq!(record["item"]["job"], "d1", "{record}");
    let errors = record["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{record}");
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().unwrap().to_lowercase().contains("wrong")),
        "{record}"
    );
    assert!(record["at_ms"].as_u64().is_some(), "{record}");
    // Given up for good: not pending, not in the stream, no counter left.
    let entry = record["entry"].as_str().unwrap();
    let left: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("t:{axle}:work")
        .arg(entry)
        .arg(entry)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("t:{axle}:work")
        .arg("sfc-engine")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
    let counter: bool = redis::cmd("EXISTS")
        .arg(format!("t:{{axle}}:sendfail:{entry}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!counter);
    station.stop().await;
}
