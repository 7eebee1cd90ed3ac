//! Three `microdcs run` processes run 200 jobs while one after the other is
//! killed with SIGKILL and restarted: every job completes, no step is
//! skipped, and every command is one dispatch (re-sends carry the same id).

mod common;

use common::jobs::{self, order, Mes};
use common::mqtt_client::TestClient;
use common::{init_tracing, Mosquitto, Redis};
use microdcs::binding::mqtt as binding;
use microdcs::sim::{Delay, EmitSpec, Rule, SimConfig, Simulator};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const SFC: &str = "https://aschamberger.github.io/schemas/microdcs/sfc-recipe/v1.0.0/";
const JOBS: usize = 200;

fn recipe() -> Value {
    json!({
        "Steps": [{"Name": "pick", "Initial": true}, {"Name": "place"}, {"Name": "confirm"}],
        "Transitions": [
            {"Source": "pick", "Target": "place", "Condition": "always"},
            {"Source": "place", "Target": "confirm", "Condition": "results.place.ok == true"}
        ],
        "Actions": [
            {"Name": "pick", "Step": "pick", "Qualifier": "N", "Interaction": "push_command",
             "TypeId": "com.example.cell.pick.v1", "TimeoutSeconds": 5, "Retry": {"MaxAttempts": 20}},
            {"Name": "place", "Step": "place", "Qualifier": "N", "Interaction": "push_command",
             "TypeId": "com.example.cell.place.v1", "TimeoutSeconds": 5, "Retry": {"MaxAttempts": 20}},
            {"Name": "confirm", "Step": "confirm", "Qualifier": "N", "Interaction": "pull_event",
             "TypeId": "com.example.cell.confirmed.v1", "TimeoutSeconds": 120}
        ]
    })
}

fn env(m: &Mosquitto, r: &Redis, id: &str) -> Vec<(String, String)> {
    let mut e = jobs::env(m.port(), r.0.port(), id);
    jobs::set(&mut e, "APP_PROCESSING_SHARED_SUBSCRIPTION_NAME", "cell");
    jobs::set(&mut e, "APP_LOG_LEVEL", "error");
    e
}

/// A replica: the real binary, killed with SIGKILL on drop.
struct Replica(std::process::Child);

impl Replica {
    fn start(env: Vec<(String, String)>) -> Replica {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
            .arg("run")
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start microdcs run");
        Replica(child)
    }

    /// SIGKILL: no shutdown, no DISCONNECT, nothing acknowledged.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_killed_mid_recipe_lose_no_job_and_skip_no_step() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let ids = ["rep-0", "rep-1", "rep-2"];
    let mut replicas = Vec::new();
    for id in ids {
        replicas.push(Some(Replica::start(env(&m, &r, id))));
    }
    // Equipment: answers at once; `place` also reports the confirmation
    // event for the job.
    let sim = Simulator::new(
        SimConfig::new("127.0.0.1", m.port())
            .rule(
                Rule::new("com.example.cell.pick.v1")
                    .delay(Delay::range(20, 200))
                    .result(json!({"ok": true})),
            )
            .rule(
                Rule::new("com.example.cell.place.v1")
                    .delay(Delay::range(20, 200))
                    .result(json!({"ok": true}))
                    .emit(
                        EmitSpec::new("com.example.cell.confirmed.v1")
                            .delay(Delay::fixed(5))
                            .data(json!({"done": true})),
                    ),
            ),
    )
    .expect("simulator");
    let sim_handle = sim.handle();
    let sim_task = tokio::spawn(sim.run(std::future::pending()));
    sim_handle.ready().await;
    // Every command the equipment gets.
    let mut spy = TestClient::connect(m.port(), "spy").await;
    spy.subscribe("app/equipment/+/commands").await;

    let mut mes = Mes::connect(m.port(), "mes").await;
    // The replicas are up once one of them answers a query.
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = mes
            .call_with(
                "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1",
                &format!("probe-{}", uuid::Uuid::new_v4()),
                Some("cell"),
                &json!({"JobOrderID": "none"}),
            )
            .await;
        if probe.is_some() {
            break;
        }
        assert!(Instant::now() < ready, "the replicas did not come up");
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the others too
    mes.configure(
        "workmaster",
        "cell",
        json!({"ID": "wm-axle", "data": recipe(), "dataschema": SFC}),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Jobs arrive over ~10 s (bursts of 10), so replicas die mid-recipe.
    let feeder = mes.client.client.clone();
    let feed = tokio::spawn(async move {
        for i in 0..JOBS {
            let body = json!({"JobOrder": order(&format!("job-{i:03}"))});
            let props = common::mqtt_client::ce_props(
                &format!("{}StoreAndStart.v2", jobs::S),
                &format!("store-{i}"),
                Some("cell"),
                None,
                None,
            );
            feeder
                .publish_with_properties(
                    "app/jobs/commands",
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&body).unwrap(),
                    props,
                )
                .await
                .unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });

    // Chaos: kill one replica every 2 s and bring it back half a second
    // later, until every job has ended (or the deadline passes).
    let redis = r.client();
    let mut c = redis.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut next_kill = Instant::now() + Duration::from_millis(700);
    let mut victim = 0;
    let mut kills = 0;
    let ended = loop {
        let n: usize = c.scard("t:{cell}:st:5.1").await.unwrap();
        let aborted: usize = c.scard("t:{cell}:st:6").await.unwrap();
        assert_eq!(aborted, 0, "no job may fail");
        if n == JOBS || Instant::now() > deadline {
            break n;
        }
        if Instant::now() >= next_kill && kills < 12 {
            if let Some(replica) = replicas[victim].take() {
                replica.kill();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            replicas[victim] = Some(Replica::start(env(&m, &r, ids[victim])));
            kills += 1;
            victim = (victim + 1) % 3;
            next_kill = Instant::now() + Duration::from_millis(1500);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    feed.await.unwrap();
    assert!(kills >= 4, "the test killed replicas mid-run ({kills})");
    assert_eq!(ended, JOBS, "every job reaches Ended/Completed");

    // No step skipped, no step run twice: each job's response lists pick,
    // place, confirm once each, in order.
    for i in 0..JOBS {
        let resp: String = c
            .hget(format!("t:{{cell}}:job:job-{i:03}"), "resp")
            .await
            .unwrap();
        let resp: Value = serde_json::from_str(&resp).unwrap();
        let steps = resp["JobResponseData"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["ID"] == "steps")
            .map(|d| {
                d["Value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["Step"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(steps, ["pick", "place", "confirm"], "job-{i:03}");
    }
    // One logical dispatch per (job, action): every command the equipment
    // saw for it carries the same id (activation 1).
    let mut by_action: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for p in spy.drain(Duration::from_millis(500)).await {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let Ok(i) = binding::decode(&topic, p.payload.clone(), p.properties.as_ref()) else {
            continue;
        };
        let job = i.event.custom.get("jobid").cloned().unwrap_or_default();
        by_action
            .entry((job, i.event.ty.clone()))
            .or_default()
            .insert(i.event.id.clone());
    }
    assert_eq!(by_action.len(), JOBS * 2, "a pick and a place per job");
    for ((job, ty), ids) in &by_action {
        assert_eq!(ids.len(), 1, "{job} {ty}: {ids:?}");
        assert!(ids.iter().all(|id| id.ends_with("/1")), "{ids:?}");
    }
    drop(replicas);
    sim_handle.shutdown();
    let _ = sim_task.await;
}

/// The reply sources of `n` queries sent at once, collected until `within`
/// passes (a failure bound, not a performance target).
async fn ask_all(mes: &mut Mes, n: usize, within: Duration) -> Vec<String> {
    use common::mqtt_client::{ce_props, user_prop};
    let mut waiting = BTreeSet::new();
    for i in 0..n {
        let corr = uuid::Uuid::new_v4();
        let props = ce_props(
            "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1",
            &format!("query-{corr}"),
            Some("cell"),
            Some("mes/mes/replies"),
            Some(corr.as_bytes()),
        );
        let body = json!({"JobOrderID": format!("none-{i}")});
        mes.client
            .publish(
                "app/jobs/commands",
                serde_json::to_vec(&body).unwrap(),
                props,
            )
            .await;
        waiting.insert(corr.as_bytes().to_vec());
    }
    let deadline = Instant::now() + within;
    let mut sources = Vec::new();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = mes.client.recv(left).await else {
            break;
        };
        let corr = p
            .properties
            .as_ref()
            .and_then(|pr| pr.correlation_data.as_ref())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        if waiting.remove(&corr) {
            sources.push(user_prop(&p, "source").unwrap_or_default().to_string());
        }
    }
    sources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_are_answered_after_a_replica_dies_for_good() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let ids = ["solo-0", "solo-1", "solo-2"];
    // Faster than the defaults (2 s, 10 s: answers ~12 s after the crash)
    // so that the 20 s bound holds on a loaded machine.
    let env = |id: &str| {
        let mut e = env(&m, &r, id);
        jobs::set(&mut e, "APP_MQTT_SESSION_HEARTBEAT_INTERVAL", "1");
        jobs::set(&mut e, "APP_MQTT_SESSION_DEAD_AFTER", "5");
        e
    };
    let mut replicas: Vec<_> = ids.iter().map(|id| Some(Replica::start(env(id)))).collect();
    let mut mes = Mes::connect(m.port(), "mes").await;
    // Every replica is in the group once each has answered a query.
    let mut seen = BTreeSet::new();
    let ready = Instant::now() + Duration::from_secs(60);
    while seen.len() < ids.len() {
        assert!(Instant::now() < ready, "replicas answering: {seen:?}");
        seen.extend(ask_all(&mut mes, 6, Duration::from_secs(2)).await);
    }
    // Killed like a pod that Kubernetes replaces: a new pod gets a new
    // POD_ID, so this client id never connects again.
    replicas[1].take().expect("replica").kill();
    let answered = ask_all(&mut mes, 10, Duration::from_secs(20)).await;
    assert_eq!(
        answered.len(),
        10,
        "every command is answered by the surviving replicas: {answered:?}"
    );
    assert!(
        !answered.iter().any(|s| s == "station/solo-1"),
        "the dead replica answered nothing: {answered:?}"
    );
    // The dead session was ended: it is gone from the registry while the
    // survivors keep their heartbeats.
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut sessions: Vec<String> = c.zrange("t:{mqtt}:sessions", 0, -1).await.unwrap();
        sessions.sort();
        if sessions == ["microdcs-solo-0", "microdcs-solo-2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registered sessions: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
