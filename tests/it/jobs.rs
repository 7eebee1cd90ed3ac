//! Job management against real Mosquitto and Redis: an MES that speaks only
//! the wire contract drives jobs through `microdcs::station`.

use crate::harness::jobs::{self, order, state_texts, JobStation, Mes, PREFIX};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use microdcs::jobs::{Internal, JobManager, JobState, MainState, Method, ReturnStatus};
use microdcs::testkit::mqtt::{user_prop, TestClient};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const OK: u64 = 1;
const UNKNOWN: u64 = 2;
const BAD_STATE: u64 = 8;
const UNABLE: u64 = 16;
const INVALID: u64 = 4294967296;

async fn setup() -> (Mosquitto, Redis, JobStation, Mes) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "st-1")).await;
    let mes = Mes::connect(m.port(), "mes").await;
    (m, r, station, mes)
}

/// [`setup`] on the Redis `backend` names.
async fn setup_on(backend: Backend) -> (Mosquitto, Store, JobStation, Mes) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "st-1");
    r.configure(&mut env);
    let station = jobs::start(env).await;
    let mes = Mes::connect(m.port(), "mes").await;
    (m, r, station, mes)
}

fn id(v: &str) -> Value {
    json!({ "JobOrderID": v })
}

fn manager(s: &JobStation) -> JobManager {
    s.jobs.clone().expect("processor instance")
}

on_each_backend!(an_mes_drives_a_job_through_its_whole_lifecycle);
async fn an_mes_drives_a_job_through_its_whole_lifecycle(backend: Backend) {
    let (_m, _r, station, mut mes) = setup_on(backend).await;
    let scope = "line-1";
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("j1")}))
            .await,
        OK
    );
    let (topic, ev) = mes.next_event().await.expect("status event");
    assert_eq!(topic, format!("{PREFIX}/{scope}/events"));
    assert_eq!(ev["JobOrder"]["JobOrderID"], "j1");
    assert_eq!(
        ev["JobState"],
        json!([{"StateText":{"Locale":"en","Text":"NotAllowedToStart"},"StateNumber":1},{"StateText":{"Locale":"en","Text":"Ready"},"StateNumber":2}])
    );
    assert_eq!(mes.status("Start", scope, id("j1")).await, OK);
    assert_eq!(mes.next_state().await, ["AllowedToStart", "Ready"]);

    // The execution side (the SFC engine) starts it.
    let m = manager(&station);
    let e = station
        .on_runtime(async move {
            m.internal("line-1", "j1", Internal::Begin, None, "engine")
                .await
        })
        .await
        .expect("redis");
    assert_eq!(e.status, ReturnStatus::NoError);
    assert_eq!(mes.next_state().await, ["Running"]);

    assert_eq!(mes.status("Pause", scope, id("j1")).await, OK);
    assert_eq!(mes.next_state().await, ["Interrupted", "Suspended"]);
    assert_eq!(mes.status("Resume", scope, id("j1")).await, OK);
    assert_eq!(mes.next_state().await, ["Running"]);

    let response = serde_json::value::to_raw_value(&json!({
        "JobResponseID": "r-j1", "JobOrderID": "j1",
        "JobState": [{"StateText":{"Locale":"en","Text":"Ended"},"StateNumber":5}],
        "JobResponseData": [{"ID": "torque", "Value": 42}]
    }))
    .unwrap();
    let m = manager(&station);
    station
        .on_runtime(async move {
            m.internal(
                "line-1",
                "j1",
                Internal::Complete,
                Some(&response),
                "engine-done",
            )
            .await
        })
        .await
        .expect("redis");
    let (_, ev) = mes.next_event().await.expect("ended event");
    assert_eq!(state_texts(&ev["JobState"]), ["Ended", "Completed"]);
    assert_eq!(ev["JobResponse"]["JobResponseID"], "r-j1");

    let r = mes
        .call("RequestJobResponseByJobOrderID", scope, id("j1"))
        .await;
    assert_eq!(r["ReturnStatus"], OK);
    assert_eq!(r["JobResponse"]["JobResponseData"][0]["Value"], 42);

    assert_eq!(mes.status("Clear", scope, id("j1")).await, OK);
    assert_eq!(mes.next_state().await, ["EndState"]);
    assert_eq!(mes.status("Clear", scope, id("j1")).await, BAD_STATE);
    assert_eq!(mes.status("Start", scope, id("j1")).await, BAD_STATE);
    // It all lives in the Redis under test (one server or the cluster).
    let mut c = _r.connection();
    let state: Option<String> = c.hget("t:{line-1}:job:j1", "state").await.unwrap();
    assert!(state.is_some(), "the job is stored in the Redis under test");
    station.stop().await;
}

/// Every job document and index (not the dedupe records, which a refused
/// command rightly leaves, nor the publisher's own cursors), for
/// byte-identical comparisons.
async fn snapshot(r: &Redis) -> HashMap<String, String> {
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = c.keys("t:{*").await.unwrap();
    // The engine's own keys (work stream, timers), the consumer-group
    // bookkeeping of readers and the MQTT session heartbeats change on
    // their own; what a command stores is the job documents, indexes and
    // the entries of the change stream. A job's audit trail records every
    // command, a refused one too (checked in `audit`).
    let keys = keys.into_iter().filter(|k| {
        !k.contains(":pub:")
            && !k.contains(":audit:")
            && !k.starts_with("t:{mqtt}:")
            && !k.ends_with(":work")
            && !k.ends_with(":timers")
    });
    let mut out = HashMap::new();
    for k in keys {
        let ty: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        // Content in a canonical form (DUMP of a hash table is not: its
        // iteration order changes with incremental rehashing).
        let cmd = match ty.as_str() {
            "hash" => vec!["HGETALL"],
            "set" => vec!["SMEMBERS"],
            "zset" => vec!["ZRANGE", "0", "-1", "WITHSCORES"],
            "stream" => vec!["XRANGE", "-", "+"],
            "list" => vec!["LRANGE", "0", "-1"],
            _ => vec!["GET"],
        };
        let mut q = redis::cmd(cmd[0]);
        q.arg(&k);
        for a in &cmd[1..] {
            q.arg(*a);
        }
        let value: redis::Value = q.query_async(&mut c).await.unwrap();
        let mut dump = match (ty.as_str(), value) {
            ("hash", redis::Value::Map(m)) => {
                m.iter().map(|kv| format!("{kv:?}")).collect::<Vec<_>>()
            }
            ("hash", redis::Value::Array(a)) => a.chunks(2).map(|kv| format!("{kv:?}")).collect(),
            ("set", redis::Value::Array(a)) | (_, redis::Value::Set(a)) => {
                a.iter().map(|v| format!("{v:?}")).collect()
            }
            (_, v) => vec![format!("{v:?}")],
        };
        if matches!(ty.as_str(), "hash" | "set") {
            dump.sort();
        }
        out.insert(format!("{k} ({ty})"), format!("{:?}", dump));
    }
    out
}

/// Drives a fresh job into `target` through the contract's transitions.
async fn reach(mes: &mut Mes, station: &JobStation, scope: &str, job: &str, target: MainState) {
    use MainState::*;
    let store = if target == NotAllowedToStart {
        "Store"
    } else {
        "StoreAndStart"
    };
    assert_eq!(
        mes.status(store, scope, json!({"JobOrder": order(job)}))
            .await,
        OK
    );
    let internal = |what: Internal| {
        let m = manager(station);
        let (scope, job) = (scope.to_string(), job.to_string());
        station.on_runtime(async move {
            m.internal(&scope, &job, what, None, &format!("engine-{what:?}"))
                .await
        })
    };
    match target {
        NotAllowedToStart | AllowedToStart => {}
        Running => {
            internal(Internal::Begin).await.unwrap();
        }
        Interrupted => {
            internal(Internal::Begin).await.unwrap();
            assert_eq!(mes.status("Pause", scope, id(job)).await, OK);
        }
        Ended => {
            internal(Internal::Begin).await.unwrap();
            assert_eq!(mes.status("Stop", scope, id(job)).await, OK);
        }
        Aborted => assert_eq!(mes.status("Abort", scope, id(job)).await, OK),
        EndState => assert_eq!(mes.status("Cancel", scope, id(job)).await, OK),
        InitialState => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_refused_where_the_table_forbids_it_and_changes_nothing() {
    let (_m, r, station, mut mes) = setup().await;
    let allowed: &[(MainState, &str)] = &[
        (MainState::NotAllowedToStart, "Start"),
        (MainState::NotAllowedToStart, "Abort"),
        (MainState::NotAllowedToStart, "Cancel"),
        (MainState::AllowedToStart, "RevokeStart"),
        (MainState::AllowedToStart, "Abort"),
        (MainState::AllowedToStart, "Cancel"),
        (MainState::Running, "Pause"),
        (MainState::Running, "Stop"),
        (MainState::Running, "Abort"),
        (MainState::Interrupted, "Resume"),
        (MainState::Interrupted, "Stop"),
        (MainState::Interrupted, "Abort"),
        (MainState::Ended, "Clear"),
        (MainState::Aborted, "Clear"),
    ];
    // Every state a stored job can be in, and every method on a stored job
    // but Update (checked below).
    let states = MainState::ALL
        .into_iter()
        .filter(|s| *s != MainState::InitialState);
    let methods = jobs::METHODS
        .into_iter()
        .filter(|m| !["Store", "StoreAndStart", "Update"].contains(m));
    for (i, target) in states.clone().enumerate() {
        let scope = format!("matrix-{i}");
        for method in methods.clone() {
            let job = format!("{method}-{i}");
            reach(&mut mes, &station, &scope, &job, target).await;
            let _ = mes.events.drain(Duration::from_millis(100)).await;
            let before = snapshot(&r).await;
            let status = mes.status(method, &scope, id(&job)).await;
            if allowed.contains(&(target, method)) {
                assert_eq!(status, OK, "{method} in {target:?}");
                assert!(
                    mes.next_event().await.is_some(),
                    "{method} in {target:?} sends a status event"
                );
            } else {
                assert_eq!(status, BAD_STATE, "{method} in {target:?}");
                assert_eq!(
                    snapshot(&r).await,
                    before,
                    "{method} in {target:?} changed Redis"
                );
                assert!(
                    mes.events
                        .drain(Duration::from_millis(150))
                        .await
                        .is_empty(),
                    "no event for a refusal"
                );
            }
        }
    }
    // Update is allowed in the two released/unreleased states only, keeps
    // the main state and resets the substate.
    for (i, target) in states.enumerate() {
        let scope = format!("update-{i}");
        reach(&mut mes, &station, &scope, "u", target).await;
        let _ = mes.events.drain(Duration::from_millis(100)).await;
        let mut o = order("u");
        o["Priority"] = json!(9);
        let status = mes.status("Update", &scope, json!({"JobOrder": o})).await;
        if matches!(
            target,
            MainState::NotAllowedToStart | MainState::AllowedToStart
        ) {
            assert_eq!(status, OK);
            let (_, ev) = mes.next_event().await.unwrap();
            assert_eq!(ev["JobOrder"]["Priority"], 9);
            assert_eq!(state_texts(&ev["JobState"]), [target.name(), "Ready"]);
        } else {
            assert_eq!(status, BAD_STATE, "Update in {target:?}");
        }
    }
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_answer_invalid_request_or_unknown_job() {
    let (_m, _r, station, mut mes) = setup().await;
    // No subject: InvalidRequest, for order and id methods alike.
    let p = mes
        .call_with(
            &format!("{}Store.v2", jobs::S),
            "no-subject",
            None,
            &json!({"JobOrder": order("x")}),
        )
        .await
        .expect("reply");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap()["ReturnStatus"],
        INVALID
    );
    let p = mes
        .call_with(
            &format!("{}Start.v2", jobs::S),
            "no-subject-2",
            None,
            &id("x"),
        )
        .await
        .expect("reply");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap()["ReturnStatus"],
        INVALID
    );
    assert_eq!(
        mes.status("Store", "s", json!({"Comment": {"Text": "no order"}}))
            .await,
        INVALID
    );
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": {"Description": []}}))
            .await,
        INVALID
    );
    assert_eq!(mes.status("Start", "s", json!({})).await, INVALID);
    assert_eq!(mes.status("Start", "s", id("nope")).await, UNKNOWN);
    assert_eq!(
        mes.status("Update", "s", json!({"JobOrder": order("nope")}))
            .await,
        UNKNOWN
    );
    let r = mes
        .call("RequestJobResponseByJobOrderID", "s", json!({}))
        .await;
    assert_eq!(r["ReturnStatus"], INVALID);
    let r = mes
        .call("RequestJobResponseByJobOrderID", "s", id("nope"))
        .await;
    assert_eq!(r["ReturnStatus"], UNKNOWN);
    let r = mes
        .call(
            "RequestJobResponseByJobOrderState",
            "s",
            json!({"JobOrderState": []}),
        )
        .await;
    assert_eq!(r["ReturnStatus"], INVALID);

    // A job order of the wrong shape is a payload error (schema violation),
    // answered with an error kind; the station keeps working.
    let p = mes
        .call_with(
            &format!("{}Store.v2", jobs::S),
            "bad-shape",
            Some("s"),
            &json!({"JobOrder": {"JobOrderID": 7}}),
        )
        .await
        .expect("reply");
    assert_eq!(user_prop(&p, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("fine")}))
            .await,
        OK
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_of_an_existing_id_is_refused_and_leaves_the_job_untouched() {
    let (_m, r, station, mut mes) = setup().await;
    assert_eq!(
        mes.status("StoreAndStart", "s", json!({"JobOrder": order("j")}))
            .await,
        OK
    );
    let m = manager(&station);
    station
        .on_runtime(async move { m.internal("s", "j", Internal::Begin, None, "e").await })
        .await
        .unwrap();
    let before = snapshot(&r).await;
    let mut other = order("j");
    other["Priority"] = json!(1);
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": other.clone()}))
            .await,
        UNABLE
    );
    assert_eq!(
        mes.status("StoreAndStart", "s", json!({"JobOrder": other}))
            .await,
        UNABLE
    );
    assert_eq!(snapshot(&r).await, before);
    // The same id in another scope is another job.
    assert_eq!(
        mes.status("Store", "other", json!({"JobOrder": order("j")}))
            .await,
        OK
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_follows_the_scopes_configuration_and_limit() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "acc");
    for k in [
        "EQUIPMENT",
        "MATERIAL_CLASS",
        "MATERIAL_DEFINITION",
        "WORK_MASTER",
    ] {
        jobs::set(&mut env, &format!("APP_JOBS_CHECK_{k}"), "true");
    }
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let scope = "cell-7";
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("a")}))
            .await,
        UNABLE
    );

    mes.configure("equipment", scope, json!({"ID": "press-1"}), false)
        .await;
    mes.configure(
        "materialclass",
        scope,
        json!({"MaterialClassID": "steel"}),
        false,
    )
    .await;
    mes.configure(
        "materialdefinition",
        scope,
        json!({"MaterialDefinitionID": "s235"}),
        false,
    )
    .await;
    mes.configure(
        "workmaster",
        scope,
        json!({"ID": "wm-axle", "data": {"Steps": []}, "dataschema": "urn:x"}),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("a")}))
            .await,
        OK
    );
    // Another scope knows none of it.
    assert_eq!(
        mes.status("Store", "cell-8", json!({"JobOrder": order("a")}))
            .await,
        UNABLE
    );

    // DELETE removes a resource again.
    mes.configure("equipment", scope, json!({"ID": "press-1"}), true)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("b")}))
            .await,
        UNABLE
    );
    mes.configure("equipment", scope, json!({"ID": "press-1"}), false)
        .await;

    // The live-job limit: 2 live jobs max; Update is not blocked by it;
    // EndState jobs do not count.
    mes.configure(
        "jobacceptance",
        scope,
        json!({"max_downloadable_job_orders": 2}),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("b")}))
            .await,
        OK
    );
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("c")}))
            .await,
        UNABLE
    );
    let mut upd = order("b");
    upd["Priority"] = json!(7);
    assert_eq!(
        mes.status("Update", scope, json!({"JobOrder": upd})).await,
        OK
    );
    assert_eq!(mes.status("Cancel", scope, id("a")).await, OK);
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("c")}))
            .await,
        OK
    );
    // DELETE clears the limit.
    mes.configure("jobacceptance", scope, json!({}), true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mes.status("Store", scope, json!({"JobOrder": order("d")}))
            .await,
        OK
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_by_id_and_by_state_return_stored_responses() {
    let (_m, _r, station, mut mes) = setup().await;
    for j in ["q1", "q2", "q3"] {
        assert_eq!(
            mes.status("StoreAndStart", "s", json!({"JobOrder": order(j)}))
                .await,
            OK
        );
    }
    let m = manager(&station);
    station
        .on_runtime(async move {
            for j in ["q1", "q2"] {
                m.internal("s", j, Internal::Begin, None, &format!("b-{j}"))
                    .await
                    .unwrap();
                let resp = serde_json::value::to_raw_value(
                    &json!({"JobResponseID": format!("r-{j}"), "JobOrderID": j, "JobState": []}),
                )
                .unwrap();
                m.internal("s", j, Internal::Complete, Some(&resp), &format!("c-{j}"))
                    .await
                    .unwrap();
            }
        })
        .await;
    let ended =
        JobState::new(MainState::Ended, Some(microdcs::jobs::SubState::Completed)).to_wire();
    let r = mes
        .call(
            "RequestJobResponseByJobOrderState",
            "s",
            json!({"JobOrderState": ended}),
        )
        .await;
    assert_eq!(r["ReturnStatus"], OK);
    let mut ids: Vec<String> = r["JobResponses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["JobResponseID"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r-q1", "r-q2"]);
    // Exact match only: Ended without the substate matches nothing; the
    // list is then omitted.
    let r = mes
        .call(
            "RequestJobResponseByJobOrderState",
            "s",
            json!({"JobOrderState": [{"StateText": {"Text": "Ended"}, "StateNumber": 5}]}),
        )
        .await;
    assert_eq!(r, json!({"ReturnStatus": 1}));
    let r = mes
        .call("RequestJobResponseByJobOrderID", "s", id("q2"))
        .await;
    assert_eq!(r["JobResponse"]["JobResponseID"], "r-q2");
    // q3 has no response yet.
    assert_eq!(
        mes.call("RequestJobResponseByJobOrderID", "s", id("q3"))
            .await["ReturnStatus"],
        UNKNOWN
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_command_is_applied_once_and_acknowledged() {
    let (_m, _r, station, mut mes) = setup().await;
    let ty = format!("{}StoreAndStart.v2", jobs::S);
    let body = json!({"JobOrder": order("dup")});
    let first = mes
        .call_with(&ty, "same-id", Some("s"), &body)
        .await
        .expect("reply");
    assert_eq!(
        serde_json::from_slice::<Value>(&first.payload).unwrap()["ReturnStatus"],
        OK
    );
    // The same (source, id) again: answered with the first reply (an MES
    // re-sends when it lost it), but not applied again: no second event.
    let again = mes
        .call_with(&ty, "same-id", Some("s"), &body)
        .await
        .expect("the first reply, replayed");
    assert_eq!(again.payload, first.payload);
    assert_eq!(user_prop(&again, "id"), user_prop(&first, "id"));
    let events = mes.events.drain(Duration::from_millis(500)).await;
    assert_eq!(events.len(), 1, "one status event for one command");
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_rebuilt_from_redis_by_a_fresh_process() {
    let (m, r, station, mut mes) = setup().await;
    assert_eq!(
        mes.status("StoreAndStart", "s", json!({"JobOrder": order("p")}))
            .await,
        OK
    );
    assert_eq!(mes.status("RevokeStart", "s", id("p")).await, OK);
    station.crash();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "st-2")).await;
    let _ = mes.events.drain(Duration::from_millis(200)).await;
    assert_eq!(mes.status("Start", "s", id("p")).await, OK);
    assert_eq!(mes.next_state().await, ["AllowedToStart", "Ready"]);
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("p")}))
            .await,
        UNABLE
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_service_unavailable_and_the_command_is_applied_after_recovery() {
    init_tracing();
    let m = Mosquitto::start();
    let mut r = Redis::start_durable();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "st-1")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("r1")}))
            .await,
        OK
    );
    let _ = mes.events.drain(Duration::from_millis(100)).await;
    r.kill();
    let ty = format!("{}Start.v2", jobs::S);
    let p = mes
        .call_with(&ty, "during-outage", Some("s"), &id("r1"))
        .await
        .expect("an error reply");
    assert_eq!(user_prop(&p, "mdcserrorkind"), Some("SERVICE_UNAVAILABLE"));
    r.restart();
    // The unacknowledged command is retried and applied once Redis is back.
    let (_, ev) = tokio::time::timeout(Duration::from_secs(30), mes.next_event())
        .await
        .expect("applied after recovery")
        .expect("event");
    assert_eq!(state_texts(&ev["JobState"]), ["AllowedToStart", "Ready"]);
    assert_eq!(mes.status("Start", "s", id("r1")).await, BAD_STATE);
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_a_shared_subscription_lose_no_update_under_a_burst() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut a_env = jobs::env(m.port(), r.0.port(), "rep-a");
    jobs::set(
        &mut a_env,
        "APP_PROCESSING_SHARED_SUBSCRIPTION_NAME",
        "jobs",
    );
    let mut b_env = jobs::env(m.port(), r.0.port(), "rep-b");
    jobs::set(
        &mut b_env,
        "APP_PROCESSING_SHARED_SUBSCRIPTION_NAME",
        "jobs",
    );
    let a = jobs::start(a_env).await;
    let b = jobs::start(b_env).await;
    let mut mes = TestClient::connect(m.port(), "burst").await;
    mes.subscribe("mes/burst").await;
    // 40 jobs, each sent StoreAndStart, then RevokeStart/Start pairs and an
    // Update, all without waiting: replicas race on the same jobs.
    let n = 40;
    let mut sent = 0;
    let send = |ty: &str, id: String, body: Value| {
        let props = microdcs::testkit::mqtt::ce_props(
            &format!("{}{ty}.v2", jobs::S),
            &id,
            Some("burst"),
            Some("mes/burst"),
            Some(uuid::Uuid::new_v4().as_bytes()),
        );
        (
            format!("{PREFIX}/commands"),
            serde_json::to_vec(&body).unwrap(),
            props,
        )
    };
    for j in 0..n {
        let (t, b, p) = send(
            "StoreAndStart",
            format!("s-{j}"),
            json!({"JobOrder": order(&format!("b{j}"))}),
        );
        mes.publish(&t, b, p).await;
        sent += 1;
    }
    // Wait for the stores, then race state changes.
    let replies = mes.drain(Duration::from_secs(3)).await;
    assert_eq!(replies.len(), sent);
    let mut cmds = Vec::new();
    for j in 0..n {
        for k in 0..3 {
            cmds.push(send(
                "RevokeStart",
                format!("rv-{j}-{k}"),
                id(&format!("b{j}")),
            ));
            cmds.push(send("Start", format!("st-{j}-{k}"), id(&format!("b{j}"))));
        }
    }
    let total = cmds.len();
    for (t, b, p) in cmds {
        mes.publish(&t, b, p).await;
    }
    let mut oks = 0;
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got < total && tokio::time::Instant::now() < deadline {
        if let Some(p) = mes.recv(Duration::from_secs(5)).await {
            got += 1;
            if serde_json::from_slice::<Value>(&p.payload)
                .ok()
                .and_then(|v| v["ReturnStatus"].as_u64())
                == Some(OK)
            {
                oks += 1;
            }
        }
    }
    assert_eq!(got, total, "every command answered");
    // Each successful command flips the state once, so the final state of
    // each job is determined by the count of its successful flips; check
    // consistency through the change stream: versions are gap-free.
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let mut applied = 0;
    for j in 0..n {
        let h: HashMap<String, String> = c.hgetall(format!("t:{{burst}}:job:b{j}")).await.unwrap();
        let v: u64 = h["v"].parse().unwrap();
        applied += v - 1; // minus the store
        let state = &h["state"];
        assert!(state == "1.2" || state == "2.2", "b{j} in {state}");
        let in_index: bool = c
            .sismember(format!("t:{{burst}}:st:{state}"), format!("b{j}"))
            .await
            .unwrap();
        assert!(in_index, "b{j} indexed under its state");
        let other = if state == "1.2" { "2.2" } else { "1.2" };
        let stale: bool = c
            .sismember(format!("t:{{burst}}:st:{other}"), format!("b{j}"))
            .await
            .unwrap();
        assert!(!stale, "b{j} not indexed under a stale state");
    }
    assert_eq!(applied, oks, "every OK reply is exactly one applied change");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_transitions_follow_the_table() {
    let (_m, _r, station, mut mes) = setup().await;
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("i")}))
            .await,
        OK
    );
    let m = manager(&station);
    let e = station
        .on_runtime(async move { m.internal("s", "i", Internal::Begin, None, "x").await })
        .await
        .unwrap();
    // NotAllowedToStart cannot begin execution.
    assert_eq!(e.status, ReturnStatus::InvalidJobOrderStatus);
    let m = manager(&station);
    let e = station
        .on_runtime(async move { m.call("s", "i", Method::Start, "y").await })
        .await
        .unwrap();
    assert_eq!(e.status, ReturnStatus::NoError);
    let m = manager(&station);
    let e = station
        .on_runtime(async move { m.internal("s", "i", Internal::Fail, None, "z").await })
        .await
        .unwrap();
    assert_eq!(
        e.status,
        ReturnStatus::InvalidJobOrderStatus,
        "AllowedToStart cannot fail execution"
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_describes_itself_on_a_retained_metadata_topic() {
    let (m, _r, station, _mes) = setup().await;
    let mut c = TestClient::connect(m.port(), "meta").await;
    c.subscribe(&format!("{PREFIX}/metadata")).await;
    let p = c
        .recv(Duration::from_secs(5))
        .await
        .expect("retained metadata");
    assert!(p.retain, "retained");
    assert_eq!(
        user_prop(&p, "type"),
        Some("com.github.aschamberger.microdcs.processor.metadata.v1")
    );
    let v: Value = serde_json::from_slice(&p.payload).unwrap();
    let commands: Vec<&str> = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for method in jobs::METHODS {
        assert!(
            commands.contains(&format!("{}{method}.v2", jobs::S).as_str()),
            "{method}"
        );
    }
    assert!(
        commands.contains(&"org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderState.v1")
    );
    assert_eq!(v["events"][0], jobs::STATUS);
    let models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["uri"].as_str())
        .collect();
    assert!(
        models.contains(&"http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"),
        "{models:?}"
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_state_jobs_are_purged_after_their_retention_and_never_count() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "ret");
    jobs::set(&mut env, "APP_JOBS_RETENTION_SECONDS", "1");
    jobs::set(&mut env, "APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "1");
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("old")}))
            .await,
        OK
    );
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("new")}))
            .await,
        UNABLE,
        "limit 1"
    );
    assert_eq!(mes.status("Cancel", "s", id("old")).await, OK);
    // EndState does not count against the limit.
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("new")}))
            .await,
        OK
    );
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let gone = async {
        loop {
            let exists: bool = c.exists("t:{s}:job:old").await.unwrap();
            let in_end: bool = c.sismember("t:{s}:st:7", "old").await.unwrap();
            let scheduled: Option<f64> = c.zscore("t:{s}:ended", "old").await.unwrap();
            if !exists && !in_end && scheduled.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("purged with its indexes");
    // The id is free again after the purge; the live job is untouched.
    assert_eq!(mes.status("Start", "s", id("new")).await, OK);
    assert_eq!(mes.status("Start", "s", id("old")).await, UNKNOWN);
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microdcs_run_serves_the_wire_contract_and_stops_on_sigterm() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .arg("run")
        .envs(jobs::env(m.port(), r.0.port(), "bin-1"))
        .env("APP_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start microdcs run");
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut status = None;
    for _ in 0..50 {
        let p = mes
            .call_with(
                &format!("{}StoreAndStart.v2", jobs::S),
                &uuid::Uuid::new_v4().to_string(),
                Some("bin"),
                &json!({"JobOrder": order("b1")}),
            )
            .await;
        if let Some(p) = p {
            status = serde_json::from_slice::<Value>(&p.payload).ok();
            break;
        }
    }
    assert_eq!(
        status.expect("a reply from microdcs run")["ReturnStatus"],
        OK
    );
    assert_eq!(mes.next_state().await, ["AllowedToStart", "Ready"]);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let code = tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = child.stdout.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    })
    .await
    .unwrap();
    assert!(code.0.success(), "exit {:?}", code.0);
    // Structured logs (on stdout): JSON lines carrying the scope and job,
    // and the CloudEvent id and correlation id of the message.
    assert!(
        code.1.lines().any(|l| l.starts_with('{')
            && l.contains("\"job\":\"b1\"")
            && l.contains("\"scope\":\"bin\"")
            && l.contains("\"correlation_id\":")),
        "{}",
        code.1
    );
}

/// Sends `Store` with the given Correlation Data and subject; returns every
/// reply that arrives within `window` for that Correlation Data.
async fn store_with(
    mes: &mut Mes,
    subject: &str,
    job: &str,
    correlation: &[u8],
    window: Duration,
) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
    let ty = format!("{}Store.v2", jobs::S);
    let props = microdcs::testkit::mqtt::ce_props(
        &ty,
        &format!("store-{job}-{}", correlation.len()),
        Some(subject),
        Some("mes/mes/replies"),
        Some(correlation),
    );
    mes.client
        .publish(
            &format!("{PREFIX}/commands"),
            serde_json::to_vec(&json!({"JobOrder": order(job)})).unwrap(),
            props,
        )
        .await;
    mes.client
        .drain(window)
        .await
        .into_iter()
        .filter(|p| {
            p.properties
                .as_ref()
                .and_then(|pr| pr.correlation_data.as_deref())
                == Some(correlation)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_data_that_is_not_text_is_echoed_and_the_station_keeps_answering() {
    let (_m, _r, station, mut mes) = setup().await;
    // An 8-byte counter and three control bytes: neither is valid text
    // for an MQTT string.
    for (i, corr) in [&[0u8, 0, 0, 0, 0, 0, 0, 0x2a][..], &[1, 2, 3]]
        .iter()
        .enumerate()
    {
        let replies = store_with(
            &mut mes,
            "line",
            &format!("c{i}"),
            corr,
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(replies.len(), 1, "one reply for correlation {corr:?}");
        let p = &replies[0];
        let rendered = user_prop(p, "correlationid").expect("correlationid attribute");
        assert!(rendered.starts_with("base64:"), "{rendered}");
        assert!(microdcs::envelope::is_mqtt_string(rendered));
        assert_eq!(
            serde_json::from_slice::<Value>(&p.payload).unwrap()["ReturnStatus"],
            OK
        );
    }
    assert_eq!(
        user_prop(
            &store_with(
                &mut mes,
                "line",
                "c9",
                &[0, 0, 0, 0, 0, 0, 0, 0x2a],
                Duration::from_secs(2)
            )
            .await[0],
            "correlationid"
        ),
        Some("base64:AAAAAAAAACo=")
    );
    // Still connected and answering ordinary requests.
    assert_eq!(
        mes.status("Store", "line", json!({"JobOrder": order("after")}))
            .await,
        OK
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_that_cannot_be_a_topic_level_is_answered_once_and_nothing_is_stored() {
    let (m, r, station, mut mes) = setup().await;
    let mut dlq = TestClient::connect(m.port(), "dlq").await;
    dlq.subscribe("microdcs/dead-letter").await;
    for (i, subject) in ["cell+1", "cell#", "/leading-slash"].iter().enumerate() {
        let corr = [0xc0, i as u8];
        let replies = store_with(
            &mut mes,
            subject,
            &format!("bad{i}"),
            &corr,
            Duration::from_secs(4),
        )
        .await;
        assert_eq!(
            replies.len(),
            1,
            "exactly one answer for subject {subject:?}"
        );
        assert_eq!(
            user_prop(&replies[0], "mdcserrorkind"),
            Some("PROPERTY_INVALID"),
            "{subject}"
        );
        assert!(user_prop(&replies[0], "mdcserrormessage").is_some_and(|m| m.contains("subject")));
        let dead = dlq.recv(Duration::from_secs(5)).await.expect("dead letter");
        assert_eq!(
            user_prop(&dead, "x-dead-letter-kind"),
            Some("PROPERTY_INVALID")
        );
    }
    let keys: Vec<String> = r
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
        .keys("*")
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.contains("cell") && !k.contains("bad")),
        "nothing stored: {keys:?}"
    );
    assert_eq!(
        mes.status("Store", "line", json!({"JobOrder": order("fine")}))
            .await,
        OK
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_order_ids_are_data_any_character_is_kept_and_length_is_bounded() {
    let (_m, _r, station, mut mes) = setup().await;
    for weird in ["PO#4711+a", "a/b", "tab\tand\u{1}bell", "%41"] {
        assert_eq!(
            mes.status("Store", "line", json!({"JobOrder": order(weird)}))
                .await,
            OK,
            "{weird:?}"
        );
        assert_eq!(
            mes.status("Start", "line", id(weird)).await,
            OK,
            "{weird:?}"
        );
        assert_eq!(
            mes.status("Abort", "line", id(weird)).await,
            OK,
            "{weird:?}"
        );
        // Stored under exactly that id: a second Store of it is refused.
        assert_eq!(
            mes.status("Store", "line", json!({"JobOrder": order(weird)}))
                .await,
            UNABLE
        );
    }
    let long = "x".repeat(257);
    assert_eq!(
        mes.status("Store", "line", json!({"JobOrder": order(&long)}))
            .await,
        INVALID
    );
    assert_eq!(mes.status("Abort", "line", id(&long)).await, INVALID);
    assert_eq!(
        mes.status(
            "Store",
            "line",
            json!({"JobOrder": order(&"y".repeat(256))})
        )
        .await,
        OK
    );
    station.stop().await;
}
