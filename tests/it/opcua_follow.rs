//! The OPC UA face follows the jobs in Redis (issue #13; `src/opcua/follow.rs`):
//! a subscribed OPC UA client (Python asyncua, `tests/opcua/watch.py`) sees
//! `JobOrderList`, `CurrentState` and the configuration lists change and
//! receives `ISA95JobOrderStatusEventType` events, whichever face or
//! replica changed the job, and a scope first seen after the start gets its
//! instance. Redis going away does not stop the server.

use crate::harness::jobs::{self, order, JobStation, Mes};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use crate::opcua::asyncua_available;
use microdcs::jobs::Internal;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const SCOPE: &str = "line-1";
/// How long a client waits for something the face must show.
const PATIENCE: Duration = Duration::from_secs(60);

/// A station with the OPC UA face (anonymous sessions, every client
/// certificate trusted) serving [`SCOPE`].
struct Replica {
    station: JobStation,
    url: String,
    _pki: tempfile::TempDir,
}

/// Starts a replica on `env` (broker and Redis already set) and waits
/// until its server listens.
async fn start_replica(mut env: Vec<(String, String)>) -> Replica {
    let port = microdcs::testkit::devenv::free_port().expect("a free port");
    let pki = tempfile::tempdir().expect("temporary directory");
    for (k, v) in [
        ("APP_OPCUA_PORT", port.to_string()),
        ("APP_OPCUA_BIND", "127.0.0.1".into()),
        ("APP_OPCUA_HOSTNAME", "127.0.0.1".into()),
        ("APP_OPCUA_SCOPES", SCOPE.into()),
        ("APP_OPCUA_PKI_DIR", pki.path().display().to_string()),
        ("APP_OPCUA_TRUST_ALL_CLIENTS", "true".into()),
        ("APP_OPCUA_ANONYMOUS", "true".into()),
    ] {
        jobs::set(&mut env, k, &v);
    }
    let station = jobs::start(env).await;
    let listening = crate::harness::eventually(PATIENCE, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(listening, "the OPC UA server listens on {port}");
    Replica {
        station,
        url: format!("opc.tcp://127.0.0.1:{port}/"),
        _pki: pki,
    }
}

/// A running `watch.py`: its JSON lines as they come, and all seen so far
/// (shown when an expectation fails).
struct Watch {
    _child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    _work: tempfile::TempDir,
}

impl Watch {
    /// Starts watching `scope` on `url` and waits until it subscribed.
    async fn start(url: &str, scope: &str) -> Watch {
        let work = tempfile::tempdir().expect("temporary directory");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/opcua/watch.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(url)
            .arg(work.path())
            .args(["--scope", scope])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut w = Watch {
            _child: child,
            lines: rx,
            seen: Vec::new(),
            _work: work,
        };
        w.until("the client subscribed", |v| v["kind"] == "ready")
            .await;
        w
    }

    /// The first line from now on that `pred` accepts; panics with what
    /// was seen after [`PATIENCE`] or when the client reports an error.
    async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    assert_ne!(v["kind"], "error", "watch.py failed: {v}");
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) => panic!("watch.py ended before {what}; saw {:#?}", self.seen),
                Err(_) => panic!("no {what} within {PATIENCE:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// The first line seen so far or from now on that `pred` accepts.
    async fn any(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        self.until(what, pred).await
    }

    /// The value of variable `name` once `pred` accepts it: its latest
    /// data change so far, or the next ones.
    async fn value(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let is_data = |v: &Value| v["kind"] == "data" && v["name"] == name;
        if let Some(last) = self.seen.iter().rev().find(|v| is_data(v)) {
            if pred(&last["value"]) {
                return last["value"].clone();
            }
        }
        let v = self
            .until(&format!("{name} as expected"), |v| {
                is_data(v) && pred(&v["value"])
            })
            .await;
        v["value"].clone()
    }

    /// The status event of `job` in main state `main` (seen so far or to
    /// come), by its message (`job order j1 is AllowedToStart/Ready`).
    async fn event(&mut self, job: &str, main: &str) -> Value {
        self.any(&format!("the status event of {job} in {main}"), |v| {
            v["kind"] == "event"
                && v["message"].as_str().is_some_and(|m| {
                    m == format!("job order {job} is {main}")
                        || m.starts_with(&format!("job order {job} is {main}/"))
                })
        })
        .await
    }
}

/// The job ids in a `JobOrderList` value.
fn listed(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["JobOrder"]["JobOrderID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `tests/opcua/client.py` against `url` and returns its JSON line.
async fn client(url: &str, scenario: &str, args: &[&str]) -> Value {
    let work = tempfile::tempdir().expect("temporary directory");
    let mut all = vec![url, crate::opcua::path_str(work.path()), scenario];
    all.extend(["--scope", SCOPE]);
    all.extend_from_slice(args);
    crate::opcua::run_script("client.py", &all).await
}

/// A job stored and started by the MQTT MES shows up for a subscribed OPC
/// UA client: in `JobOrderList` with its state, as `CurrentState`, and as
/// one `ISA95JobOrderStatusEventType` event per transition on the
/// receiver, carrying the job order and the state of that transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_client_sees_job_changes_as_values_and_events() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let m = Mosquitto::start();
    let r = Redis::start();
    let replica = start_replica(jobs::env(m.port(), r.0.port(), "opcua-f1")).await;
    let mut watch = Watch::start(&replica.url, SCOPE).await;
    watch
        .value("JobOrderList", |v| v.as_array().is_some_and(Vec::is_empty))
        .await;

    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", SCOPE, json!({"JobOrder": order("j1")}))
            .await,
        1
    );
    let stored = watch.event("j1", "NotAllowedToStart").await;
    assert!(
        stored["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(";i=1006")),
        "ISA95JobOrderStatusEventType: {stored}"
    );
    assert!(
        stored["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("line-1/JobManagement/JobOrderControl")),
        "raised on the receiver: {stored}"
    );
    assert_eq!(stored["job_order"]["JobOrderID"], "j1", "{stored}");
    assert_eq!(stored["job_order"]["WorkMasterID"][0]["ID"], "wm-axle");
    assert_eq!(
        stored["job_state"][0]["StateText"]["Text"], "NotAllowedToStart",
        "{stored}"
    );
    assert_eq!(stored["job_response"], Value::Null, "no response yet");
    let list = watch.value("JobOrderList", |v| listed(v) == ["j1"]).await;
    assert_eq!(
        list[0]["State"][0]["StateText"]["Text"], "NotAllowedToStart",
        "{list}"
    );

    assert_eq!(
        mes.status("Start", SCOPE, json!({"JobOrderID": "j1"}))
            .await,
        1
    );
    let started = watch.event("j1", "AllowedToStart").await;
    assert_eq!(
        started["job_state"][0]["StateText"]["Text"], "AllowedToStart",
        "the state of that transition: {started}"
    );
    watch
        .value("CurrentState", |v| v["Text"] == "AllowedToStart")
        .await;
    watch
        .value("JobOrderList", |v| {
            listed(v) == ["j1"] && v[0]["State"][0]["StateText"]["Text"] == "AllowedToStart"
        })
        .await;

    // Running, then a job response: its event carries the response.
    let jm = replica.station.jobs.clone().expect("processor instance");
    replica
        .station
        .on_runtime(async move {
            jm.internal(SCOPE, "j1", Internal::Begin, None, "begin-j1")
                .await
                .expect("Begin");
            let resp = serde_json::value::to_raw_value(
                &json!({"JobResponseID": "r-j1", "JobOrderID": "j1",
                        "JobState": [{"StateText": {"Locale": "en", "Text": "Running"}, "StateNumber": 3}]}),
            )
            .expect("JSON");
            jm.set_response(SCOPE, "j1", &resp, "progress-j1")
                .await
                .expect("response");
        })
        .await;
    watch.event("j1", "Running").await;
    let progress = watch
        .any("the event of the job response", |v| {
            v["kind"] == "event" && v["job_response"]["JobResponseID"] == "r-j1"
        })
        .await;
    assert_eq!(progress["job_response"]["JobOrderID"], "j1", "{progress}");
    assert_eq!(
        progress["job_state"][0]["StateText"]["Text"], "Running",
        "{progress}"
    );
    watch
        .value("CurrentState", |v| v["Text"] == "Running")
        .await;

    // A second job, then the first one cleared away: it leaves the list.
    assert_eq!(
        mes.status("Store", SCOPE, json!({"JobOrder": order("j2")}))
            .await,
        1
    );
    watch.event("j2", "NotAllowedToStart").await;
    watch
        .value("JobOrderList", |v| listed(v) == ["j1", "j2"])
        .await;
    replica.station.stop().await;
}

/// A scope the face was not configured with gets its `JobManagement`
/// instance once the MES configures it, and the receiver shows the
/// scope's equipment, materials, personnel, physical assets, work masters
/// and job limit, updated when the configuration changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_scope_first_seen_after_start_gets_its_instance_and_configuration() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let m = Mosquitto::start();
    let r = Redis::start();
    let replica = start_replica(jobs::env(m.port(), r.0.port(), "opcua-f2")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let scope = "cell-9";
    for (kind, body) in [
        ("equipment", json!({"ID": "press-1"})),
        ("materialclass", json!({"MaterialClassID": "steel"})),
        (
            "materialdefinition",
            json!({"MaterialDefinitionID": "s235"}),
        ),
        ("personnel", json!({"ID": "anna"})),
        ("physicalasset", json!({"ID": "rack-2"})),
        (
            "workmaster",
            json!({"ID": "wm-axle", "Description": {"Locale": "en", "Text": "rear axle"},
                   "data": {"Steps": []}, "dataschema": "urn:x"}),
        ),
        ("jobacceptance", json!({"max_downloadable_job_orders": 7})),
    ] {
        mes.configure(kind, scope, body, false).await;
    }

    // watch.py waits for the scope's receiver to appear.
    let mut watch = Watch::start(&replica.url, scope).await;
    for (name, ids) in [
        ("EquipmentID", json!(["press-1"])),
        ("MaterialClassID", json!(["steel"])),
        ("MaterialDefinitionID", json!(["s235"])),
        ("PersonnelID", json!(["anna"])),
        ("PhysicalAssetID", json!(["rack-2"])),
    ] {
        watch.value(name, |v| *v == ids).await;
    }
    watch.value("MaxDownloadableJobOrders", |v| *v == 7).await;
    let masters = watch
        .value("WorkMaster", |v| v.as_array().is_some_and(|a| a.len() == 1))
        .await;
    assert_eq!(masters[0]["ID"], "wm-axle", "{masters}");
    assert_eq!(masters[0]["Description"]["Text"], "rear axle", "{masters}");

    // Changes are pushed to the subscribed client.
    mes.configure("equipment", scope, json!({"ID": "press-2"}), false)
        .await;
    watch
        .value("EquipmentID", |v| *v == json!(["press-1", "press-2"]))
        .await;
    mes.configure("jobacceptance", scope, json!({}), true).await;
    // No limit of its own, no default: the largest UInt16.
    watch
        .value("MaxDownloadableJobOrders", |v| *v == 65535)
        .await;
    replica.station.stop().await;
}

on_each_backend!(opcua_change_through_one_replica_is_seen_by_a_client_of_the_other);
/// Two replicas on one Redis: a job started over OPC UA on replica A
/// reaches a client subscribed on replica B (its event and its state in
/// `JobOrderList`).
async fn opcua_change_through_one_replica_is_seen_by_a_client_of_the_other(backend: Backend) {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let m = Mosquitto::start();
    let store = Store::start(backend);
    let mut replicas = Vec::new();
    for instance in ["opcua-a", "opcua-b"] {
        let mut env = jobs::env(m.port(), 0, instance);
        store.configure(&mut env);
        replicas.push(start_replica(env).await);
    }
    let mut watch = Watch::start(&replicas[1].url, SCOPE).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", SCOPE, json!({"JobOrder": order("j1")}))
            .await,
        1
    );
    watch.event("j1", "NotAllowedToStart").await;

    let out = client(
        &replicas[0].url,
        "call",
        &["--method", "Start", "--job", "j1"],
    )
    .await;
    assert_eq!(out["calls"][0]["status"], 1, "Start on replica A: {out}");
    let ev = watch.event("j1", "AllowedToStart").await;
    assert_eq!(ev["job_order"]["JobOrderID"], "j1", "{ev}");
    watch
        .value("JobOrderList", |v| {
            v[0]["State"][0]["StateText"]["Text"] == "AllowedToStart"
        })
        .await;
    for r in replicas {
        r.station.stop().await;
    }
}

/// Redis killed under a running face: the server keeps serving sessions
/// (a subscribed client stays connected, a new client logs in), and once
/// Redis is back the face follows the jobs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_face_keeps_serving_while_redis_is_down_and_resumes() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let m = Mosquitto::start();
    let mut r = Redis::start();
    let replica = start_replica(jobs::env(m.port(), r.0.port(), "opcua-f4")).await;
    let mut watch = Watch::start(&replica.url, SCOPE).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", SCOPE, json!({"JobOrder": order("j1")}))
            .await,
        1
    );
    watch.event("j1", "NotAllowedToStart").await;

    r.kill();
    // The subscribed session goes on, and a new one is served.
    watch
        .until("a read of the server state", |v| {
            v["kind"] == "alive" && v["server_state"] == 0
        })
        .await;
    let fresh = client(&replica.url, "connect", &[]).await;
    assert_eq!(fresh["ok"], true, "a session while Redis is down: {fresh}");
    watch
        .until("another read of the server state", |v| {
            v["kind"] == "alive" && v["server_state"] == 0
        })
        .await;

    r.restart();
    // The station answers again once it reconnected (a Store that was
    // applied but whose reply was lost answers "exists" the next time).
    let ty = format!("{}Store.v2", jobs::S);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let id = Mes::next_id("cmd");
        let reply = mes
            .call_with(&ty, &id, Some(SCOPE), &json!({"JobOrder": order("j2")}))
            .await;
        let status = reply
            .and_then(|p| serde_json::from_slice::<Value>(&p.payload).ok())
            .and_then(|v| v["ReturnStatus"].as_u64());
        if status.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer to Store after the restart"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    watch.event("j2", "NotAllowedToStart").await;
    watch
        .value("JobOrderList", |v| listed(v).contains(&"j2".to_owned()))
        .await;
    replica.station.stop().await;
}
