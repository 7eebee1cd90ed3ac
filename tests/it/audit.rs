//! The audit trail of a job (`microdcs::jobs::audit`) against real
//! Mosquitto and Redis: an MES stores and starts a job whose recipe runs on
//! test equipment to Ended; the trail lists its commands, transitions and
//! steps in order, a refused command too, the `microdcs audit` binary
//! prints it, and the trail goes with the job at retention.

use crate::harness::equipment::{Answer, Equipment};
use crate::harness::jobs::{self, state_texts, Mes, S};
use crate::harness::recipes::{push_command, store_recipe};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use microdcs::jobs::audit::{AuditEntry, AuditEvent, CommandRecord, StepRecord};
use microdcs::jobs::JobStore;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const SCOPE: &str = "audit-line";

/// Two steps, one push command each: `clamp` in `load`, `press` in `press`.
fn two_steps() -> Value {
    json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "press"}],
        "Transitions": [{"Source": "load", "Target": "press", "Condition": "always"}],
        "Actions": [
            push_command("clamp", "load", "N", "com.example.audit.clamp.v1", 0),
            push_command("press", "press", "N", "com.example.audit.press.v1", 0)
        ]
    })
}

fn answer_all() -> Answer {
    Arc::new(|ty: &str, _: &Value| Some(Ok(json!({"ok": true, "of": ty}))))
}

struct Setup {
    m: Mosquitto,
    r: Store,
    station: jobs::JobStation,
    mes: Mes,
    store: JobStore,
}

impl Setup {
    /// The single Redis (tests that run the binary or `MONITOR` on it).
    fn redis(&self) -> &Redis {
        self.r.single()
    }
}

async fn setup(retention_s: u64) -> Setup {
    setup_on(Backend::Single, retention_s).await
}

/// As [`setup`], with `APP_JOBS_AUDIT_STEPS=false`.
async fn setup_without_step_entries(retention_s: u64) -> Setup {
    setup_with(
        Backend::Single,
        retention_s,
        &[("APP_JOBS_AUDIT_STEPS", "false")],
    )
    .await
}

/// A station on `backend` keeping EndState jobs `retention_s` seconds, an
/// MES, and a job store of the test's own on the same Redis.
async fn setup_on(backend: Backend, retention_s: u64) -> Setup {
    setup_with(backend, retention_s, &[]).await
}

/// As [`setup_on`], with more settings.
async fn setup_with(backend: Backend, retention_s: u64, more: &[(&str, &str)]) -> Setup {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "audit-1");
    r.configure(&mut env);
    jobs::set(
        &mut env,
        "APP_JOBS_RETENTION_SECONDS",
        &retention_s.to_string(),
    );
    for (k, v) in more {
        jobs::set(&mut env, k, v);
    }
    let station = jobs::start(env).await;
    let mes = Mes::connect(m.port(), "mes").await;
    let store = JobStore::new(r.connection(), "t", Duration::from_secs(retention_s));
    Setup {
        m,
        r,
        station,
        mes,
        store,
    }
}

/// Calls job method `method` in the test scope with CloudEvent id `id`:
/// its `ReturnStatus` and the correlation id the MES sent with it.
async fn call(mes: &mut Mes, method: &str, id: &str, body: Value) -> (u64, String) {
    let ty = format!("{S}{method}.v2");
    let reply = mes
        .call_with(&ty, id, Some(SCOPE), &body)
        .await
        .unwrap_or_else(|| panic!("no reply to {method}"));
    let corr = reply
        .properties
        .as_ref()
        .and_then(|p| p.correlation_data.as_ref())
        .and_then(|c| uuid::Uuid::from_slice(c).ok())
        .expect("the reply echoes the correlation data")
        .to_string();
    let v: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
    (v["ReturnStatus"].as_u64().expect("ReturnStatus"), corr)
}

/// Status events until job `job` reaches main state `state`.
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

fn command(e: &AuditEntry) -> Option<&CommandRecord> {
    match &e.event {
        AuditEvent::Command(c) => Some(c),
        _ => None,
    }
}

fn step(e: &AuditEntry) -> Option<&StepRecord> {
    match &e.event {
        AuditEvent::Step(s) => Some(s),
        _ => None,
    }
}

fn transition(e: &AuditEntry) -> Option<(&str, &str, &str)> {
    match &e.event {
        AuditEvent::Transition {
            trigger, from, to, ..
        } => Some((trigger.as_str(), from.as_str(), to.as_str())),
        _ => None,
    }
}

/// Runs `microdcs audit` against the test's Redis: exit success, stdout,
/// stderr.
fn audit_binary(r: &Redis, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .arg("audit")
        .args(args)
        .env("APP_REDIS_HOSTNAME", "127.0.0.1")
        .env("APP_REDIS_PORT", r.0.port().to_string())
        .env("APP_REDIS_KEY_PREFIX", "t")
        .output()
        .expect("run microdcs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_lists_commands_transitions_and_steps_in_order() {
    let mut s = setup(3600).await;
    let _eq = Equipment::start(s.m.port(), answer_all()).await;
    store_recipe(&mut s.mes, SCOPE, two_steps()).await;
    let order = jobs::order("a1");
    let (status, corr) = call(
        &mut s.mes,
        "StoreAndStart",
        "audit-store",
        json!({"JobOrder": order}),
    )
    .await;
    assert_eq!(status, 1, "StoreAndStart accepted");
    until_state(&mut s.mes, "a1", "Ended").await;
    // Start on an Ended job is refused, and recorded; a command for an
    // unknown job leaves no trail behind.
    let (status, _) = call(
        &mut s.mes,
        "Start",
        "audit-late-start",
        json!({"JobOrderID": "a1"}),
    )
    .await;
    assert_eq!(status, 8, "InvalidJobOrderStatus");
    let (status, _) = call(
        &mut s.mes,
        "Start",
        "audit-nope",
        json!({"JobOrderID": "nope"}),
    )
    .await;
    assert_eq!(status, 2, "UnknownJobOrderId");

    let trail = s.store.audit(SCOPE, "a1").await.unwrap();
    let kinds: Vec<&str> = trail
        .iter()
        .map(|e| match e.event {
            AuditEvent::Command(_) => "command",
            AuditEvent::Transition { .. } => "transition",
            AuditEvent::Step(_) => "step",
            AuditEvent::Unknown => "unknown",
        })
        .collect();
    // The command that stored and started it, with its CloudEvent identity.
    let first = command(&trail[0]).unwrap_or_else(|| panic!("{kinds:?}"));
    assert_eq!(first.method, "StoreAndStart");
    assert_eq!(first.source, "test-mes");
    assert_eq!(first.id, "audit-store");
    assert_eq!(first.correlationid.as_deref(), Some(corr.as_str()));
    assert_eq!(first.status, "NoError");
    assert_eq!(first.from.as_deref(), Some("InitialState"));
    assert_eq!(first.to.as_deref(), Some("AllowedToStart/Ready"));
    assert_eq!(trail[0].version, Some(1));
    // The transitions in order, each with the next version.
    let transitions: Vec<(&str, &str, &str)> = trail.iter().filter_map(transition).collect();
    assert_eq!(
        transitions,
        [
            ("Begin", "AllowedToStart/Ready", "Running"),
            ("Complete", "Running", "Ended/Completed")
        ],
        "{kinds:?}"
    );
    let versions: Vec<u64> = trail.iter().filter_map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3], "one version per applied change");
    // The steps: load entered with its clamp dispatched, then load left
    // with clamp done and press entered, then press left, the recipe done.
    let steps: Vec<&StepRecord> = trail.iter().filter_map(step).collect();
    assert_eq!(steps.len(), 3, "{steps:#?}");
    assert_eq!(steps[0].entered[0].step, "load");
    assert_eq!(steps[0].dispatched[0].action, "clamp");
    assert_eq!(steps[0].dispatched[0].command_id, "audit-line/a1/clamp/1");
    assert_eq!(steps[1].left[0].step, "load");
    assert_eq!(steps[1].entered[0].step, "press");
    assert_eq!(steps[1].actions[0].action, "clamp");
    assert_eq!(steps[1].actions[0].state, "done");
    assert_eq!(
        steps[1].actions[0].result.as_ref().unwrap()["of"],
        "com.example.audit.clamp.v1"
    );
    assert_eq!(steps[2].left[0].step, "press");
    assert_eq!(steps[2].finished.as_deref(), Some("Completed"));
    // Order: Begin before the first step, the end of the recipe before
    // Complete, the refused command last.
    let at = |f: &dyn Fn(&AuditEntry) -> bool| trail.iter().position(f).unwrap();
    let begin = at(&|e| transition(e).is_some_and(|t| t.0 == "Begin"));
    let complete = at(&|e| transition(e).is_some_and(|t| t.0 == "Complete"));
    let first_step = at(&|e| step(e).is_some());
    let finished = at(&|e| step(e).is_some_and(|s| s.finished.is_some()));
    assert!(begin < first_step && finished < complete, "{kinds:?}");
    let last = command(trail.last().unwrap()).expect("the refused command is last");
    assert_eq!(last.method, "Start");
    assert_eq!(last.id, "audit-late-start");
    assert_eq!(last.status, "InvalidJobOrderStatus");
    assert!(
        last.reason.as_deref().unwrap().contains("not allowed"),
        "{last:?}"
    );
    assert_eq!(trail.len(), 1 + 2 + 3 + 1, "{kinds:?}");
    assert!(trail.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert!(s.store.audit(SCOPE, "nope").await.unwrap().is_empty());

    // The binary: a table by default, the same entries as JSON.
    let (ok, table, err) = audit_binary(s.redis(), &["a1"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("RESULT"),
        "{table}"
    );
    assert_eq!(lines.len(), 1 + trail.len(), "{table}");
    assert!(
        lines[1].contains("StoreAndStart") && lines[1].contains("id=audit-store"),
        "{table}"
    );
    assert!(lines[1].contains("NoError"), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("+press#1") && l.contains("clamp=done")),
        "{table}"
    );
    assert!(
        lines.last().unwrap().contains("InvalidJobOrderStatus"),
        "{table}"
    );
    let (ok, out, err) = audit_binary(s.redis(), &["a1", "--scope", SCOPE, "--json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["scope"], SCOPE);
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), trail.len());
    assert_eq!(entries[0]["kind"], "command");
    assert_eq!(entries[0]["id"], "audit-store");
    assert_eq!(entries[0]["version"], 1);
    assert_eq!(entries[1]["kind"], "transition");
    // A job without a trail, or a wrong scope: a clear error, exit 1.
    let (ok, _, err) = audit_binary(s.redis(), &["nope"]);
    assert!(!ok && err.contains("no audit trail"), "{err}");
    let (ok, _, err) = audit_binary(s.redis(), &["a1", "--scope", "other"]);
    assert!(!ok && err.contains("scope 'other'"), "{err}");
    s.station.stop().await;
}

on_each_backend!(the_trail_is_removed_with_the_cleared_job_at_retention);
async fn the_trail_is_removed_with_the_cleared_job_at_retention(backend: Backend) {
    let mut s = setup_on(backend, 1).await;
    let (status, _) = call(
        &mut s.mes,
        "Store",
        "ret-store",
        json!({"JobOrder": jobs::order("r1")}),
    )
    .await;
    assert_eq!(status, 1);
    // Refused while the job lives: a second Store of the same id.
    let (status, _) = call(
        &mut s.mes,
        "Store",
        "ret-again",
        json!({"JobOrder": jobs::order("r1")}),
    )
    .await;
    assert_eq!(status, 16, "UnableToAcceptJobOrder");
    for (method, id) in [("Abort", "ret-abort"), ("Clear", "ret-clear")] {
        let (status, _) = call(&mut s.mes, method, id, json!({"JobOrderID": "r1"})).await;
        assert_eq!(status, 1, "{method}");
    }
    let trail = s.store.audit(SCOPE, "r1").await.unwrap();
    let methods: Vec<(&str, &str)> = trail
        .iter()
        .filter_map(command)
        .map(|c| (c.method.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("Store", "NoError"),
            ("Store", "UnableToAcceptJobOrder"),
            ("Abort", "NoError"),
            ("Clear", "NoError")
        ]
    );
    assert_eq!(command(&trail[3]).unwrap().to.as_deref(), Some("EndState"));
    // EndState, retention 1 s: the purge removes the job and its trail.
    // Both keys in the scope's slot: one connection that follows the
    // cluster's slots reads them.
    let c = s.r.connection();
    let key = format!("t:{{{SCOPE}}}:audit:r1");
    let job_key = format!("t:{{{SCOPE}}}:job:r1");
    let exists = |c: &microdcs::RedisConnection, k: String| {
        let mut c = c.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(k)
                .query_async::<u64>(&mut c)
                .await
                .unwrap()
        }
    };
    assert_eq!(exists(&c, key.clone()).await, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while exists(&c, job_key.clone()).await == 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(exists(&c, job_key).await, 0, "the job was purged");
    assert_eq!(exists(&c, key).await, 0, "its trail with it");
    assert!(s.store.audit(SCOPE, "r1").await.unwrap().is_empty());
    s.station.stop().await;
}

/// The SHA1 of a script file (its `EVALSHA` name), by the redis crate.
fn sha(lua: &str) -> String {
    redis::Script::new(lua).get_hash().to_owned()
}

/// What the trail costs Redis, counted with `MONITOR` (which shows the
/// commands scripts run, marked `lua`) while a two-step job runs to Ended:
/// the audit adds nothing but one `XADD` per script call that records a
/// change: at most one per write of the execution (a step transition) and
/// one per applied job change, and no other command touches the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_costs_one_xadd_per_step_write_and_nothing_else() {
    use futures_util::StreamExt;
    let mut s = setup(3600).await;
    let _eq = Equipment::start(s.m.port(), answer_all()).await;
    store_recipe(&mut s.mes, SCOPE, two_steps()).await;
    let monitor = s
        .redis()
        .client()
        .get_async_monitor()
        .await
        .expect("MONITOR");
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    let reader = tokio::spawn(async move {
        let mut stream = monitor.into_on_message::<String>();
        while let Some(line) = stream.next().await {
            seen.lock().unwrap().push(line);
        }
    });
    let (status, _) = call(
        &mut s.mes,
        "StoreAndStart",
        "count-store",
        json!({"JobOrder": jobs::order("c1")}),
    )
    .await;
    assert_eq!(status, 1);
    until_state(&mut s.mes, "c1", "Ended").await;
    let trail = s.store.audit(SCOPE, "c1").await.unwrap();
    let key = format!("\"t:{{{SCOPE}}}:audit:c1\"");
    // The monitor's lines lag behind the commands: wait until it has seen
    // the read just made (our XRANGE), which follows every write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(&key) && l.to_ascii_lowercase().contains("\"xrange\""))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let lines = lines.lock().unwrap().clone();
    let on_trail: Vec<&String> = lines.iter().filter(|l| l.contains(&key)).collect();
    let xadds = on_trail
        .iter()
        .filter(|l| l.contains("[0 lua] \"XADD\""))
        .count();
    // Besides the script calls (which name the trail among their keys), our
    // own read.
    let others: Vec<&&String> = on_trail
        .iter()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.contains("[0 lua] \"xadd\"")
                && !l.contains("\"evalsha\"")
                && !l.contains("\"xrange\"")
        })
        .collect();
    assert!(others.is_empty(), "only XADD writes the trail: {others:#?}");
    assert_eq!(xadds, trail.len(), "one XADD per entry");
    // Script calls by their arguments: the first call of a script on a
    // fresh Redis is sent again after NOSCRIPT, with the same arguments.
    let calls = |file: &str| {
        let sha = sha(&std::fs::read_to_string(format!("src/redis/lua/{file}")).unwrap());
        lines
            .iter()
            .filter(|l| l.contains(&sha))
            .filter_map(|l| l.split_once(']').map(|(_, call)| call))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let exec_writes = calls("exec_apply.lua");
    let job_writes = calls("job_apply.lua");
    let steps = trail
        .iter()
        .filter(|e| matches!(e.event, AuditEvent::Step(_)))
        .count();
    let job_entries = trail.iter().filter(|e| e.version.is_some()).count();
    assert!(
        steps <= exec_writes,
        "{steps} step entries for {exec_writes} execution writes"
    );
    assert!(
        job_entries <= job_writes,
        "{job_entries} job entries for {job_writes} job writes"
    );
    // Two step activations; the writes that enter, pass and end them.
    assert_eq!(steps, 3);
    let total = lines.len();
    eprintln!(
        "audit cost: {xadds} XADD of {total} Redis commands for 2 steps \
         ({steps} step entries / {exec_writes} execution writes, \
         {job_entries} job entries / {job_writes} job writes)"
    );
    s.station.stop().await;
}

/// `jobs.audit_steps = false`: the engine writes no step entries, while
/// the job manager still records the commands and every state transition
/// (the trail keeps who asked for what and what the job went through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_step_entries_the_trail_keeps_commands_and_transitions() {
    let mut s = setup_without_step_entries(3600).await;
    let _eq = Equipment::start(s.m.port(), answer_all()).await;
    store_recipe(&mut s.mes, SCOPE, two_steps()).await;
    let (status, _) = call(
        &mut s.mes,
        "StoreAndStart",
        "quiet-store",
        json!({"JobOrder": jobs::order("q1")}),
    )
    .await;
    assert_eq!(status, 1);
    until_state(&mut s.mes, "q1", "Ended").await;
    let trail = s.store.audit(SCOPE, "q1").await.unwrap();
    assert!(
        trail.iter().all(|e| step(e).is_none()),
        "no step entries: {trail:#?}"
    );
    assert_eq!(
        command(&trail[0]).map(|c| c.method.as_str()),
        Some("StoreAndStart")
    );
    let states: Vec<&str> = trail.iter().filter_map(transition).map(|t| t.2).collect();
    assert!(
        states.contains(&"Running") && states.contains(&"Ended/Completed"),
        "the transitions are kept: {states:?}"
    );
    s.station.stop().await;
}
