//! The equipment simulator against a real Mosquitto: what a station's
//! southbound processor sees when it sends commands.

use crate::harness::{eventually, init_tracing, Mosquitto};
use microdcs::sim::{Delay, EmitIntent, EmitSpec, Rule, SimConfig, SimHandle, SimStats, Simulator};
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;

const REPLIES: &str = "station/responses/inst-1";
const SECOND: Duration = Duration::from_secs(1);

struct Sim {
    handle: SimHandle,
    task: JoinHandle<SimStats>,
}

impl Sim {
    async fn start(config: SimConfig) -> Sim {
        let sim = Simulator::new(config).expect("valid simulator config");
        let handle = sim.handle();
        let task = tokio::spawn(sim.run(std::future::pending()));
        tokio::time::timeout(Duration::from_secs(10), handle.ready())
            .await
            .expect("simulator subscribed");
        Sim { handle, task }
    }

    async fn stop(self) -> SimStats {
        self.handle.shutdown();
        self.task.await.expect("simulator task")
    }
}

fn config(port: u16, client_id: &str) -> SimConfig {
    SimConfig {
        client_id: client_id.into(),
        ..SimConfig::new("127.0.0.1", port)
    }
}

/// A station-like client listening on its response topic and the events.
async fn station(port: u16) -> TestClient {
    let mut c = TestClient::connect(port, "station-under-test").await;
    c.subscribe(REPLIES).await;
    c.subscribe("app/equipment/+/events").await;
    c.subscribe("app/equipment/+/+/events").await;
    c.subscribe("app/equipment/+/+/data").await;
    c
}

/// A command as the generic southbound processor sends it.
fn command(ty: &str, id: &str, subject: &str, job: &str, correlation: &[u8]) -> PublishProperties {
    let mut p = ce_props(ty, id, Some(subject), Some(REPLIES), Some(correlation));
    p.user_properties.push(("jobid".into(), job.into()));
    p
}

fn topic_of(subject: &str) -> String {
    format!("app/equipment/{}/commands", subject.replace('.', "/"))
}

fn data(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or(Value::Null)
}

fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

fn correlation(p: &Publish) -> Option<Vec<u8>> {
    p.properties
        .as_ref()?
        .correlation_data
        .as_ref()
        .map(|b| b.to_vec())
}

#[tokio::test]
async fn command_gets_a_reply_with_echoed_correlation_and_templated_result() {
    init_tracing();
    let broker = Mosquitto::start();
    let sim = Sim::start(
        config(broker.port(), "sim-reply").rule(
            Rule::new("com.example.press.Press.v1")
                .delay(Delay::fixed(20))
                .result(json!({
                    "Force": "{{param.Force}}",
                    "Seq": "{{seq}}",
                    "Temp": "{{random.f64 20 30}}",
                    "Note": "job {{jobid}} on {{subject}}",
                })),
        ),
    )
    .await;
    let mut st = station(broker.port()).await;
    // Opaque, non-UUID, non-UTF-8 correlation data: echoed byte for byte.
    let corr = [0xff, 0x00, 0x13, 0x37, 0x01];
    st.publish(
        &topic_of("press-1"),
        r#"{"Force":12.5}"#,
        command(
            "com.example.press.Press.v1",
            "cmd-1",
            "press-1",
            "job-42",
            &corr,
        ),
    )
    .await;
    let reply = st.recv(5 * SECOND).await.expect("a reply");
    assert_eq!(topic(&reply), REPLIES);
    assert_eq!(correlation(&reply).as_deref(), Some(&corr[..]));
    assert_eq!(
        user_prop(&reply, "type"),
        Some("com.example.press.Press.v1")
    );
    assert_eq!(user_prop(&reply, "causationid"), Some("cmd-1"));
    assert_eq!(user_prop(&reply, "source"), Some("microdcs-sim"));
    assert_eq!(user_prop(&reply, "subject"), Some("press-1"));
    assert_eq!(user_prop(&reply, "mdcserrorkind"), None);
    assert_ne!(user_prop(&reply, "id"), Some("cmd-1"));
    let d = data(&reply);
    assert_eq!(d["Force"], json!(12.5));
    assert_eq!(d["Seq"], json!(1));
    assert_eq!(d["Note"], json!("job job-42 on press-1"));
    let temp = d["Temp"].as_f64().expect("Temp is a number");
    assert!((20.0..30.0).contains(&temp), "{temp}");
    let stats = sim.stop().await;
    assert_eq!((stats.received, stats.replied), (1, 1), "{stats}");
}

#[tokio::test]
async fn fail_and_drop_probabilities_of_one_always_apply() {
    init_tracing();
    let broker = Mosquitto::start();
    let sim = Sim::start(
        config(broker.port(), "sim-fail-drop")
            .rule(Rule::new("test.fail.v1").fail_probability(1.0))
            .rule(Rule::new("test.drop.v1").drop_probability(1.0)),
    )
    .await;
    let mut st = station(broker.port()).await;
    for n in 0..3 {
        let id = format!("f-{n}");
        st.publish(
            &topic_of("m"),
            "{}",
            command("test.fail.v1", &id, "m", "j", id.as_bytes()),
        )
        .await;
        let id = format!("d-{n}");
        st.publish(
            &topic_of("m"),
            "{}",
            command("test.drop.v1", &id, "m", "j", id.as_bytes()),
        )
        .await;
    }
    let got = st.drain(SECOND).await;
    assert_eq!(got.len(), 3, "only the failing commands are answered");
    for r in &got {
        assert_eq!(user_prop(r, "type"), Some("test.fail.v1"));
        assert_eq!(user_prop(r, "mdcserrorkind"), Some("COMMUNICATION_ERROR"));
        assert!(user_prop(r, "mdcserrormessage").is_some());
    }
    let stats = sim.stop().await;
    assert_eq!((stats.failed, stats.dropped, stats.replied), (3, 3, 0));
}

/// What the station observed for each command of a sequence.
async fn outcomes(broker: &Mosquitto, client_id: &str, seed: u64) -> Vec<String> {
    let mut cfg = config(broker.port(), client_id).rule(
        Rule::new("test.*")
            .delay(Delay::range(0, 5))
            .fail_probability(0.3)
            .drop_probability(0.2)
            .duplicate_probability(0.3)
            .result(json!({"X": "{{random.int 0 1000000}}", "Seq": "{{seq}}"})),
    );
    cfg.seed = seed;
    cfg.session_expiry_secs = 0;
    let sim = Sim::start(cfg).await;
    let mut st = TestClient::connect(broker.port(), &format!("{client_id}-station")).await;
    st.subscribe(REPLIES).await;
    let n = 30;
    for i in 0..n {
        // Fresh ids each run (a station's ids differ per job); the decisions
        // follow the order of arrival, not the ids.
        let id = format!("{client_id}-{i}");
        st.publish(
            &topic_of("m"),
            format!(r#"{{"I":{i}}}"#),
            command("test.step.v1", &id, "m", "j", format!("c{i}").as_bytes()),
        )
        .await;
    }
    let mut per: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for r in st.drain(Duration::from_millis(1500)).await {
        let what = match user_prop(&r, "mdcserrorkind") {
            Some(k) => k.to_owned(),
            None => data(&r).to_string(),
        };
        per.entry(correlation(&r).unwrap_or_default())
            .or_default()
            .push(what);
    }
    sim.stop().await;
    (0..n)
        .map(|i| match per.get(format!("c{i}").as_bytes()) {
            None => "none".to_owned(),
            Some(v) => v.join(" + "),
        })
        .collect()
}

#[tokio::test]
async fn same_seed_gives_the_same_decisions_on_a_sequence() {
    init_tracing();
    let broker = Mosquitto::start();
    let a = outcomes(&broker, "sim-seed-a", 7).await;
    let b = outcomes(&broker, "sim-seed-b", 7).await;
    assert_eq!(a, b);
    for kind in ["none", "COMMUNICATION_ERROR", " + "] {
        assert!(a.iter().any(|o| o.contains(kind)), "{kind} in {a:?}");
    }
    let c = outcomes(&broker, "sim-seed-c", 8).await;
    assert_ne!(a, c);
}

#[tokio::test]
async fn emitted_events_carry_the_job_id_as_correlationid() {
    init_tracing();
    let broker = Mosquitto::start();
    let sim = Sim::start(
        config(broker.port(), "sim-emit").rule(
            Rule::new("test.press.v1")
                .result(json!({"Ok": true}))
                .emit(
                    EmitSpec::new("test.press.done.v1")
                        .delay(Delay::fixed(10))
                        .data(json!({"Force": "{{param.Force}}"})),
                )
                .emit(EmitSpec::new("test.press.measured.v1").intent(EmitIntent::Data)),
        ),
    )
    .await;
    let mut st = station(broker.port()).await;
    let job = "0b9f6f4e-2a8c-4a51-9f0e-6d1f4c3b2a10";
    st.publish(
        &topic_of("line1.press"),
        r#"{"Force":3}"#,
        command("test.press.v1", "cmd-e", "line1.press", job, b"corr-e"),
    )
    .await;
    let got = st.drain(SECOND).await;
    let by_type = |ty: &str| {
        got.iter()
            .find(|p| user_prop(p, "type") == Some(ty))
            .unwrap_or_else(|| panic!("no {ty} in {} messages", got.len()))
    };
    let reply = by_type("test.press.v1");
    assert_eq!(topic(reply), REPLIES);
    let done = by_type("test.press.done.v1");
    assert_eq!(topic(done), "app/equipment/line1/press/events");
    assert_eq!(user_prop(done, "correlationid"), Some(job));
    assert_eq!(user_prop(done, "causationid"), Some("cmd-e"));
    assert_eq!(user_prop(done, "subject"), Some("line1.press"));
    assert_eq!(user_prop(done, "jobid"), Some(job));
    // A UUID job id travels as its 16 bytes of Correlation Data.
    assert_eq!(correlation(done).map(|c| c.len()), Some(16));
    assert_eq!(data(done), json!({"Force": 3}));
    let measured = by_type("test.press.measured.v1");
    assert_eq!(topic(measured), "app/equipment/line1/press/data");
    assert_eq!(user_prop(measured, "correlationid"), Some(job));
    let stats = sim.stop().await;
    assert_eq!((stats.replied, stats.events), (1, 2));
}

#[tokio::test]
async fn redelivered_command_id_gets_the_same_answer() {
    init_tracing();
    let broker = Mosquitto::start();
    let sim = Sim::start(
        config(broker.port(), "sim-redeliver").rule(
            Rule::new("test.measure.v1")
                .result(json!({"Value": "{{random.f64 0 1}}", "Seq": "{{seq}}"}))
                .emit(EmitSpec::new("test.measured.v1")),
        ),
    )
    .await;
    let mut st = station(broker.port()).await;
    let props = command("test.measure.v1", "cmd-r", "m", "job-r", b"corr-r");
    st.publish(&topic_of("m"), "{}", props.clone()).await;
    let first = st.drain(Duration::from_millis(500)).await;
    st.publish(&topic_of("m"), "{}", props).await;
    let second = st.drain(Duration::from_millis(500)).await;
    let replies = |v: &[Publish]| -> Vec<Publish> {
        v.iter().filter(|p| topic(p) == REPLIES).cloned().collect()
    };
    let (a, b) = (replies(&first), replies(&second));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(data(&a[0]), data(&b[0]));
    assert_eq!(user_prop(&a[0], "id"), user_prop(&b[0], "id"));
    assert_eq!(correlation(&b[0]).as_deref(), Some(&b"corr-r"[..]));
    assert_eq!(first.len(), 2, "reply and event");
    assert_eq!(second.len(), 1, "the event is not emitted again");
    let stats = sim.stop().await;
    assert_eq!((stats.replied, stats.redeliveries, stats.events), (2, 1, 1));
}

#[tokio::test]
async fn undecodable_message_does_not_stop_the_simulator() {
    init_tracing();
    let broker = Mosquitto::start();
    let sim = Sim::start(config(broker.port(), "sim-garbage")).await;
    let mut st = station(broker.port()).await;
    // Not a CloudEvent at all: no attributes.
    let garbage = PublishProperties {
        response_topic: Some(REPLIES.into()),
        correlation_data: Some(bytes::Bytes::from_static(b"g-1")),
        ..Default::default()
    };
    st.publish(&topic_of("m"), "\u{0}\u{1}garbage", garbage)
        .await;
    let r = st.recv(5 * SECOND).await.expect("an error reply");
    assert_eq!(
        user_prop(&r, "mdcserrorkind"),
        Some("MISSING_USER_PROPERTY")
    );
    assert_eq!(correlation(&r).as_deref(), Some(&b"g-1"[..]));
    // A CloudEvent whose JSON data does not parse.
    st.publish(
        &topic_of("m"),
        "{not json",
        command("test.any.v1", "bad-json", "m", "j", b"g-2"),
    )
    .await;
    let r = st.recv(5 * SECOND).await.expect("an error reply");
    assert_eq!(user_prop(&r, "mdcserrorkind"), Some("PAYLOAD_INVALID"));
    // Without a response topic: logged and counted, nothing sent.
    st.publish(&topic_of("m"), "x", PublishProperties::default())
        .await;
    // Still answering.
    st.publish(
        &topic_of("m"),
        "{}",
        command("test.any.v1", "good", "m", "j", b"g-3"),
    )
    .await;
    let r = st.recv(5 * SECOND).await.expect("a reply");
    assert_eq!(correlation(&r).as_deref(), Some(&b"g-3"[..]));
    assert_eq!(user_prop(&r, "mdcserrorkind"), None);
    assert_eq!(data(&r), json!({}));
    let stats = sim.stop().await;
    assert_eq!((stats.received, stats.invalid, stats.replied), (4, 3, 1));
}

#[tokio::test]
async fn simulator_resubscribes_after_the_broker_lost_its_session() {
    init_tracing();
    let mut broker = Mosquitto::start();
    let sim = Sim::start(config(broker.port(), "sim-restart")).await;
    broker.0.stop();
    broker.wipe_persistence();
    broker.restart();
    assert!(
        eventually(Duration::from_secs(20), || {
            sim.handle.stats().reconnects >= 1 && sim.handle.is_ready()
        })
        .await,
        "reconnected and subscribed again: {}",
        sim.handle.stats()
    );
    let mut st = station(broker.port()).await;
    st.publish(
        &topic_of("m"),
        "{}",
        command("test.any.v1", "after-restart", "m", "j", b"r-1"),
    )
    .await;
    let r = st
        .recv(5 * SECOND)
        .await
        .expect("a reply after the restart");
    assert_eq!(correlation(&r).as_deref(), Some(&b"r-1"[..]));
    sim.stop().await;
}
