//! OpenTelemetry traces (#10) with the SDK's in-memory exporter, against
//! real Mosquitto and Redis: the trace context of an incoming message is
//! the parent of its handling, and a job is one trace across replicas.
//!
//! Each test installs the process-wide subscriber with traces on, so the
//! tests must run each in a process of its own (`cargo nextest`).

use crate::harness::equipment::{Answer, Equipment};
use crate::harness::jobs::{self, order, state_texts, Mes};
use crate::harness::recipes::{pull_event, push_command, store_recipe};
use crate::harness::{eventually, Backend, Mosquitto, Store};
use microdcs::testkit::mqtt::user_prop;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The MES's own span: trace `4bf9…4736`, span `00f0…02b7`, sampled.
const MES_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const MES_SPAN: &str = "00f067aa0ba902b7";
const INSPECTED: &str = "com.example.axle.inspected.v1";

fn mes_traceparent() -> String {
    format!("00-{MES_TRACE}-{MES_SPAN}-01")
}

fn traces_on() -> InMemorySpanExporter {
    let (tracing, exporter) = microdcs::telemetry::init_for_tests(
        &std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    assert!(
        tracing.is_on() && microdcs::telemetry::active(),
        "traces must be on: run this test in a process of its own (cargo nextest)"
    );
    // The global provider keeps its own handle: the spans keep coming.
    drop(tracing);
    exporter
}

fn spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter.get_finished_spans().unwrap_or_default()
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_is(s: &SpanData, key: &str, value: &str) -> bool {
    attr(s, key).is_some_and(|v| v.as_str() == value)
}

/// The one finished span that `f` picks out, with the list on failure.
fn one<'a>(all: &'a [SpanData], what: &str, f: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = all.iter().filter(|s| f(s)).collect();
    let names: Vec<&str> = all.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: {} found among {names:?}",
        found.len()
    );
    found[0]
}

/// The handling span of the message of CloudEvent type `ty` (the first,
/// if there are several).
fn process_span<'a>(all: &'a [SpanData], ty: &str) -> &'a SpanData {
    all.iter()
        .find(|s| s.name.starts_with("process ") && attr_is(s, "cloudevents.event_type", ty))
        .unwrap_or_else(|| panic!("no handling span of {ty}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_the_parent_of_the_handling_span() {
    let exporter = traces_on();
    let m = Mosquitto::start();
    let r = Store::start(Backend::Single);
    let mut env = jobs::env(m.port(), 0, "trace-1");
    r.configure(&mut env);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut view = microdcs::testkit::TestClient::connect(m.port(), "mes-view").await;
    view.subscribe(&format!("{}/axle/order/p1", jobs::PREFIX))
        .await;
    mes.traceparent = Some(mes_traceparent());
    let ty = format!("{}StoreAndStart.v2", jobs::S);
    let reply = mes
        .call_with(
            &ty,
            "cmd-traced-1",
            Some("axle"),
            &json!({"JobOrder": order("p1")}),
        )
        .await
        .expect("a reply");
    // The span ends after the reply went out and the message was
    // acknowledged.
    let ended = |ty: &str| {
        spans(&exporter)
            .iter()
            .any(|s| attr_is(s, "cloudevents.event_type", ty))
    };
    assert!(eventually(Duration::from_secs(10), || ended(&ty)).await);
    let all = spans(&exporter);
    let handling = process_span(&all, &ty);
    assert_eq!(
        handling.span_context.trace_id(),
        TraceId::from_hex(MES_TRACE).unwrap()
    );
    assert_eq!(handling.parent_span_id, SpanId::from_hex(MES_SPAN).unwrap());
    assert!(handling.parent_span_is_remote);
    assert_eq!(handling.span_kind, opentelemetry::trace::SpanKind::Consumer);
    assert!(attr_is(handling, "messaging.system", "mqtt"));
    assert!(attr_is(handling, "messaging.operation.type", "process"));
    assert!(attr_is(
        handling,
        "messaging.destination.name",
        "app/jobs/commands"
    ));
    assert!(attr_is(handling, "messaging.message.id", "cmd-traced-1"));
    assert!(attr_is(handling, "cloudevents.event_id", "cmd-traced-1"));
    assert!(attr_is(handling, "cloudevents.event_subject", "axle"));
    // The reply continues the trace from the handling span.
    let expected = format!("00-{MES_TRACE}-{}-01", handling.span_context.span_id());
    assert_eq!(user_prop(&reply, "traceparent"), Some(expected.as_str()));
    assert_eq!(user_prop(&reply, "tracestate"), None, "no empty tracestate");
    // So does the job's retained order topic (the publisher keeps the
    // trace of the command that made the job's latest change).
    let retained = view
        .recv(Duration::from_secs(10))
        .await
        .expect("the retained order topic");
    assert_eq!(user_prop(&retained, "traceparent"), Some(expected.as_str()));
    station.stop().await;
}

/// A push command, a pull event, a push command: three steps in a row.
fn three_steps() -> Value {
    json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "inspect"}, {"Name": "tighten"}],
        "Transitions": [
            {"Source": "load", "Target": "inspect", "Condition": "always"},
            {"Source": "inspect", "Target": "tighten", "Condition": "always"}
        ],
        "Actions": [
            push_command("clamp", "load", "N", "com.example.axle.clamp.v1", 0),
            pull_event("inspection", "inspect", INSPECTED, 60),
            push_command("tighten", "tighten", "N", "com.example.axle.tighten.v1", 0)
        ]
    })
}

fn answer_all() -> Answer {
    Arc::new(|ty: &str, _: &Value| {
        Some(Ok(if ty.contains("tighten") {
            json!({"torque_nm": 42.5})
        } else {
            json!({"ok": true})
        }))
    })
}

/// Status events until job `job` reaches one of `states`: that event's
/// `traceparent`.
async fn until_state(mes: &mut Mes, job: &str, states: &[&str]) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let Some(p) = mes.events.recv(Duration::from_secs(10)).await else {
            continue;
        };
        if user_prop(&p, "type") != Some(jobs::STATUS) {
            continue;
        }
        let ev: Value = serde_json::from_slice(&p.payload).expect("event JSON");
        let s = state_texts(&ev["JobState"]);
        if ev["JobOrder"]["JobOrderID"] == job && states.contains(&s[0].as_str()) {
            return user_prop(&p, "traceparent").map(str::to_owned);
        }
    }
    panic!("job {job} did not reach {states:?}");
}

/// Replica 1 starts the job and runs its first step; it stops; replica 2
/// (which never saw the job) takes a pause and a resume from the MES and
/// runs the other two steps. The whole run is one trace under the MES's
/// request: the job span a child of the StoreAndStart handling, each step
/// and dispatch a child of the job span, the equipment's answers children
/// of their commands, the pause linked to the MES's Pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_two_replicas() {
    let exporter = traces_on();
    let m = Mosquitto::start();
    let r = Store::start(Backend::Single);
    let env = |instance: &str| {
        let mut env = jobs::env(m.port(), 0, instance);
        r.configure(&mut env);
        jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
        env
    };
    let first = jobs::start(env("trace-1")).await;
    let eq = Equipment::start(m.port(), answer_all()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_recipe(&mut mes, "axle", three_steps()).await;
    mes.traceparent = Some(mes_traceparent());
    let store = format!("{}StoreAndStart.v2", jobs::S);
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("t1")}))
            .await,
        1
    );
    // Replica 1 leaves `load` (the clamp's answer) and waits in `inspect`.
    assert!(
        eventually(Duration::from_secs(20), || spans(&exporter)
            .iter()
            .any(|s| s.name == "sfc step load"))
        .await,
        "replica 1 ran the first step"
    );
    first.stop().await;
    let second = jobs::start(env("trace-2")).await;
    assert_eq!(
        mes.status("Pause", "axle", json!({"JobOrderID": "t1"}))
            .await,
        1
    );
    until_state(&mut mes, "t1", &["Interrupted"]).await;
    assert_eq!(
        mes.status("Resume", "axle", json!({"JobOrderID": "t1"}))
            .await,
        1
    );
    eq.event("axle", INSPECTED, json!({"passed": true}), Some("t1"))
        .await;
    let ended_event = until_state(&mut mes, "t1", &["Ended", "Aborted"]).await;
    assert!(
        eventually(Duration::from_secs(10), || spans(&exporter)
            .iter()
            .any(|s| s.name == "sfc job ended"))
        .await,
        "the end of the job is recorded"
    );
    let all = spans(&exporter);
    let trace = TraceId::from_hex(MES_TRACE).unwrap();

    let handling = process_span(&all, &store);
    let job = one(&all, "job span", |s| {
        s.name == "sfc job" && attr_is(s, "microdcs.job.id", "t1")
    });
    assert_eq!(job.span_context.trace_id(), trace);
    assert_eq!(job.parent_span_id, handling.span_context.span_id());
    let job_id = job.span_context.span_id();

    // A span per step activation, children of the job span, in order.
    let steps: Vec<&SpanData> = ["load", "inspect", "tighten"]
        .iter()
        .map(|step| {
            let s = one(&all, step, |s| s.name == format!("sfc step {step}"));
            assert_eq!(s.span_context.trace_id(), trace, "{step}");
            assert_eq!(s.parent_span_id, job_id, "{step}");
            assert!(attr_is(s, "microdcs.sfc.step", step));
            s
        })
        .collect();
    assert!(steps[0].end_time <= steps[1].start_time);
    assert!(steps[1].end_time <= steps[2].start_time);
    // The action results are events of their step.
    let result = steps[2]
        .events
        .iter()
        .find(|e| e.name == "sfc action result")
        .expect("the tighten result");
    assert!(result
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "microdcs.sfc.action.result"
            && kv.value.as_str().contains("42.5")));

    // A span per dispatch, a child of the job span; the equipment's answer
    // is handled in a child of it.
    for ty in ["com.example.axle.clamp.v1", "com.example.axle.tighten.v1"] {
        let send = one(&all, ty, |s| s.name == format!("send {ty}"));
        assert_eq!(send.span_context.trace_id(), trace);
        assert_eq!(send.parent_span_id, job_id, "{ty}");
        assert_eq!(send.span_kind, opentelemetry::trace::SpanKind::Producer);
        let answer = process_span(&all, ty);
        assert_eq!(answer.span_context.trace_id(), trace, "{ty}");
        assert_eq!(answer.parent_span_id, send.span_context.span_id(), "{ty}");
    }

    // The MES's Pause and Resume: linked from the job's trace.
    let pause = process_span(&all, &format!("{}Pause.v2", jobs::S));
    let paused = one(&all, "paused", |s| s.name == "sfc job paused");
    assert_eq!(paused.parent_span_id, job_id);
    assert!(
        paused
            .links
            .iter()
            .any(|l| l.span_context.span_id() == pause.span_context.span_id()),
        "the pause links to the MES's Pause"
    );
    let ended = one(&all, "ended", |s| s.name == "sfc job ended");
    assert_eq!(ended.parent_span_id, job_id);
    assert!(attr_is(ended, "microdcs.job.outcome", "completed"));
    // The job's Ended status event, sent by the engine, is in its trace.
    assert_eq!(
        ended_event,
        Some(format!("00-{MES_TRACE}-{job_id}-01")),
        "the Ended event carries the job's trace"
    );
    second.stop().await;
}

/// oteltest's OTLP/HTTP receiver on `port`, printing every request it
/// gets (as protobuf-JSON dicts) to `out`. Killed on drop.
struct Receiver(std::process::Child);

impl Receiver {
    /// `None` when python3 or oteltest is missing.
    fn start(port: u16, out: std::fs::File) -> Option<Receiver> {
        let script = "import logging, sys\n\
                      from oteltest.sink import HttpSink\n\
                      from oteltest.sink.handler import PrintHandler\n\
                      HttpSink(PrintHandler(), logging.getLogger('sink'), port=int(sys.argv[1]), daemon=False).start()\n";
        let probe = std::process::Command::new("python3")
            .args(["-c", "import oteltest.sink"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            return None;
        }
        let child = std::process::Command::new("python3")
            .args(["-u", "-c", script, &port.to_string()])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Receiver(child))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `microdcs run` with traces on exports a job's spans over OTLP/HTTP to a
/// real receiver (oteltest's sink, `pip install oteltest`), on the trace
/// of the MES's request, and its JSON log lines carry the trace ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microdcs_run_exports_a_jobs_trace_over_otlp() {
    use base64::Engine as _;
    crate::harness::init_tracing();
    let port = microdcs::testkit::devenv::free_port().expect("a free port");
    let sink_out = tempfile::NamedTempFile::new().expect("temporary file");
    let Some(_receiver) = Receiver::start(port, sink_out.reopen().expect("reopen")) else {
        // CI runs scripts/setup.sh first: there the receiver must exist.
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with oteltest is missing under CI (scripts/setup.sh installs it)"
        );
        eprintln!(
            "SKIPPED: python3 with oteltest is missing (pip install oteltest; scripts/setup.sh does)"
        );
        return;
    };
    assert!(
        eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok())
        .await,
        "the OTLP receiver listens"
    );
    let m = Mosquitto::start();
    let r = crate::harness::Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "otlp-1");
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .arg("run")
        .envs(env)
        .env("APP_LOG_FORMAT", "json")
        .env("APP_LOG_LEVEL", "info")
        .env("APP_PROCESSING_OTEL_INSTRUMENTATION_ENABLED", "true")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_SERVICE_NAME", "station-under-test")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start microdcs run");
    let eq = Equipment::start(m.port(), answer_all()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    // The station is up once it answers.
    let query = "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1";
    let mut up = false;
    for _ in 0..50 {
        let id = Mes::next_id("probe");
        if mes
            .call_with(query, &id, Some("axle"), &json!({"JobOrderID": "none"}))
            .await
            .is_some()
        {
            up = true;
            break;
        }
    }
    assert!(up, "microdcs run answers");
    store_recipe(
        &mut mes,
        "axle",
        json!({
            "Version": "1.0.0",
            "Steps": [{"Name": "load", "Initial": true}],
            "Transitions": [],
            "Actions": [push_command("clamp", "load", "N", "com.example.axle.clamp.v1", 0)]
        }),
    )
    .await;
    mes.traceparent = Some(mes_traceparent());
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("o1")}))
            .await,
        1
    );
    until_state(&mut mes, "o1", &["Ended", "Aborted"]).await;
    assert_eq!(eq.commands().len(), 1);
    // SIGTERM: the station shuts down and flushes its spans.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let (status, logs) = tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait");
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut out);
        }
        (status, out)
    })
    .await
    .unwrap();
    assert!(status.success(), "exit {status:?}");
    // The receiver prints each export request it got.
    let trace_b64 = base64::engine::general_purpose::STANDARD
        .encode(TraceId::from_hex(MES_TRACE).unwrap().to_bytes());
    let read = || std::fs::read_to_string(sink_out.path()).unwrap_or_default();
    let complete = |got: &str| {
        [
            "'sfc job'",
            "'sfc step load'",
            "'send com.example.axle.clamp.v1'",
            "'sfc job ended'",
        ]
        .iter()
        .all(|n| got.contains(n))
    };
    assert!(
        eventually(Duration::from_secs(10), || complete(&read())).await,
        "the job's spans reached the receiver: {}",
        read()
    );
    let got = read();
    assert!(got.contains("station-under-test"), "service name: {got}");
    assert!(got.contains(&trace_b64), "the MES's trace: {got}");
    // JSON log lines of the message carry the trace ids.
    assert!(
        logs.lines().any(|l| l.starts_with('{')
            && l.contains(&format!("\"trace_id\":\"{MES_TRACE}\""))
            && l.contains("\"span_id\":")
            && l.contains("\"correlation_id\":")),
        "{logs}"
    );
}
