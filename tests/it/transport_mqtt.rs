//! The MQTT transport against a real Mosquitto and Redis.

use crate::harness::station::{self, Station};
use crate::harness::{init_tracing, Mosquitto, Redis};
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use microdcs::{
    Emit, Emitter, EventType, HandlerError, Intent, Meta, Processor, Scope, State, TopicBinding,
};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::{Deserialize, Serialize};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    #[serde(rename = "N")]
    n: u32,
}
impl EventType for Ping {
    const TYPE: &'static str = "test.ping.v1";
    const DATASCHEMA: &'static str = "urn:test:ping";
}

#[derive(Debug, Serialize, Deserialize)]
struct Pong {
    #[serde(rename = "N")]
    n: u32,
}
impl EventType for Pong {
    const TYPE: &'static str = "test.ping.v1";
    const DATASCHEMA: &'static str = "urn:test:pong";
}

#[derive(Debug, Serialize, Deserialize)]
struct Pinged {
    n: u32,
}
impl EventType for Pinged {
    const TYPE: &'static str = "test.pinged.v1";
    const DATASCHEMA: &'static str = "urn:test:pinged";
}

#[derive(Default)]
struct Seen {
    metas: Mutex<Vec<Meta>>,
    calls: AtomicUsize,
    /// Handler calls that block until released (crash test).
    hold: AtomicUsize,
}

async fn ping(
    p: Ping,
    meta: Meta,
    scope: Option<Scope>,
    seen: State<Seen>,
) -> Result<microdcs::Outcome, HandlerError> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    seen.metas.lock().unwrap().push(meta);
    if seen.hold.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut out = microdcs::Outcome::reply(&Pong { n: p.n + 1 });
    if let Some(s) = scope {
        out = out.emit(Emit::new(&Pinged { n: p.n }).subject(s.0));
    }
    Ok(out)
}

fn processor(seen: Arc<Seen>) -> (Processor, TopicBinding) {
    let p = Processor::northbound("pinger")
        .handle(ping)
        .state_arc(seen)
        .build();
    let mut b = TopicBinding::new("app/test");
    b.wildcard_levels = 1;
    (p, b)
}

async fn station(m: &Mosquitto, r: &Redis, instance: &str, seen: Arc<Seen>) -> Station {
    station::start(
        station::settings(m.port(), instance),
        Some(r.url()),
        vec![processor(seen)],
    )
    .await
}

/// The harness broker and Redis, and station `s1` with the pinger on them.
async fn started() -> (Mosquitto, Redis, Arc<Seen>, Station) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let seen = Arc::new(Seen::default());
    let st = station(&m, &r, "s1", seen.clone()).await;
    (m, r, seen, st)
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_request_reaches_handler_and_reply_echoes_correlation_data() {
    let (m, _r, seen, st) = started().await;

    // An MES using only the mosquitto command-line tools.
    let sub = Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &m.port().to_string(),
            "-t",
            "mes/replies",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .args(["-F", "%D|%C|%P|%p"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &m.port().to_string(),
            "-q",
            "1",
            "-t",
            "app/test/commands",
            "-m",
            r#"{"N":41}"#,
        ])
        .args(["-D", "publish", "user-property", "specversion", "1.0"])
        .args(["-D", "publish", "user-property", "id", "req-1"])
        .args(["-D", "publish", "user-property", "source", "mes-cli"])
        .args(["-D", "publish", "user-property", "type", "test.ping.v1"])
        .args([
            "-D",
            "publish",
            "user-property",
            "subject",
            "machine-42/spindle",
        ])
        .args(["-D", "publish", "user-property", "plant", "north"])
        .args(["-D", "publish", "content-type", "application/json"])
        .args(["-D", "publish", "response-topic", "mes/replies"])
        .args(["-D", "publish", "correlation-data", "corr-xyz"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let parts: Vec<&str> = line.trim_end().splitn(4, '|').collect();
    assert_eq!(parts.len(), 4, "reply line: {line}");
    assert_eq!(parts[0], "corr-xyz", "correlation data echoed: {line}");
    assert!(parts[1].starts_with("application/json"), "{line}");
    assert!(parts[2].contains("causationid:req-1"), "{line}");
    assert!(parts[2].contains("type:test.ping.v1"), "{line}");
    assert!(parts[2].contains("dataschema:urn:test:pong"), "{line}");
    assert!(parts[2].contains("subject:machine-42/spindle"), "{line}");
    assert!(parts[2].contains("correlationid:corr-xyz"), "{line}");
    assert!(parts[2].contains("source:station/s1"), "{line}");
    assert_eq!(parts[3], r#"{"N":42}"#);

    let metas = seen.metas.lock().unwrap().clone();
    assert_eq!(metas.len(), 1);
    let e = &metas[0].event;
    assert_eq!(e.id, "req-1");
    assert_eq!(e.source, "mes-cli");
    assert_eq!(e.subject.as_deref(), Some("machine-42/spindle"));
    assert_eq!(e.custom.get("plant").map(String::as_str), Some("north"));
    assert_eq!(e.correlationid.as_ref().unwrap().as_str(), "corr-xyz");
    assert_eq!(metas[0].topic, "app/test/commands");
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_and_event_carry_attributes_and_events_go_to_the_scope_topic() {
    let (m, _r, _seen, st) = started().await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    mes.subscribe("app/test/+/events").await;
    let corr = uuid::Uuid::new_v4();
    mes.publish(
        "app/test/commands",
        r#"{"N":1}"#,
        ce_props(
            "test.ping.v1",
            "a1",
            Some("press-7"),
            Some("mes/replies"),
            Some(corr.as_bytes()),
        ),
    )
    .await;
    let mut got = mes.drain(Duration::from_secs(2)).await;
    got.sort_by_key(|p| p.topic.clone());
    assert_eq!(got.len(), 2, "one event and one reply");
    let event = &got[0];
    assert_eq!(&event.topic[..], b"app/test/press-7/events");
    assert_eq!(user_prop(event, "type"), Some("test.pinged.v1"));
    assert_eq!(
        user_prop(event, "correlationid"),
        Some(corr.to_string().as_str())
    );
    assert_eq!(user_prop(event, "causationid"), Some("a1"));
    assert_eq!(event.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    let reply = &got[1];
    assert_eq!(&reply.topic[..], b"mes/replies");
    let props = reply.properties.as_ref().unwrap();
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&corr.as_bytes()[..])
    );
    assert_eq!(props.payload_format_indicator, Some(1));
    let time = user_prop(reply, "time").unwrap();
    assert!(time.ends_with('Z'), "{time}");
    assert_ne!(user_prop(reply, "id"), Some("a1"), "a reply has a fresh id");
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_command_is_processed_once_acknowledged_and_answered_with_the_first_reply() {
    let (m, r, seen, st) = started().await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    mes.subscribe("mes/replies-2").await;
    for i in 0..3u8 {
        // An MES that re-sends because the first reply was lost, each time
        // with its own Correlation Data (the last one to another topic).
        let topic = if i == 2 {
            "mes/replies-2"
        } else {
            "mes/replies"
        };
        mes.publish(
            "app/test/commands",
            r#"{"N":1}"#,
            ce_props("test.ping.v1", "same-id", None, Some(topic), Some(&[i])),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A different source with the same id is a different message.
    let mut other = ce_props("test.ping.v1", "same-id", None, Some("mes/replies"), None);
    other.user_properties[2].1 = "other-mes".into();
    mes.publish("app/test/commands", r#"{"N":1}"#, other).await;
    let replies = mes.drain(Duration::from_secs(2)).await;
    assert_eq!(replies.len(), 4, "every delivery is answered");
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        2,
        "duplicates are not processed again"
    );
    let first = &replies[0];
    for (i, dup) in replies[..3].iter().enumerate() {
        assert_eq!(dup.payload, first.payload, "the original reply");
        assert_eq!(
            user_prop(dup, "id"),
            user_prop(first, "id"),
            "the original reply id"
        );
        assert_eq!(user_prop(dup, "dataschema"), Some("urn:test:pong"));
        assert_eq!(
            dup.properties.as_ref().unwrap().correlation_data.as_deref(),
            Some(&[i as u8][..]),
            "each answer carries its own request's Correlation Data"
        );
    }
    assert_eq!(&replies[2].topic[..], b"mes/replies-2");
    let metrics = st.transport.metrics().snapshot();
    assert_eq!(metrics.duplicates, 2);
    // Acknowledged: after a restart of the station with the same client id
    // (persistent session) nothing is redelivered.
    st.stop().await.unwrap();
    let st = station(&m, &r, "s1", seen.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        st.transport.metrics().snapshot().received,
        0,
        "nothing was left unacknowledged"
    );
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_message_is_redelivered_after_a_crash() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let seen = Arc::new(Seen::default());
    seen.hold.store(1, Ordering::SeqCst);
    let st = station(&m, &r, "s1", seen.clone()).await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    mes.publish(
        "app/test/commands",
        r#"{"N":5}"#,
        ce_props("test.ping.v1", "c1", None, Some("mes/replies"), None),
    )
    .await;
    assert!(crate::harness::eventually(WAIT, || seen.calls.load(Ordering::SeqCst) == 1).await);
    st.crash();
    // The crashed delivery holds a claim that is not a 'done' mark: it was
    // never marked as seen, and its lease (1 s here) runs out.
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:dedupe:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let v: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(v.starts_with("p:"), "claimed, never marked as seen: {v}");

    seen.hold.store(0, Ordering::SeqCst);
    let st = station(&m, &r, "s1", seen.clone()).await;
    let reply = mes.recv(WAIT).await.expect("reply after redelivery");
    assert_eq!(&reply.payload[..], br#"{"N":6}"#);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_is_survived() {
    let (mut m, _r, _seen, st) = started().await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    mes.publish(
        "app/test/commands",
        r#"{"N":1}"#,
        ce_props("test.ping.v1", "b1", None, Some("mes/replies"), None),
    )
    .await;
    assert!(mes.recv(WAIT).await.is_some());
    m.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.restart();
    // The station reconnects by itself; the MES client too.
    tokio::time::timeout(WAIT, st.transport.ready())
        .await
        .expect("reconnected");
    assert!(
        crate::harness::eventually(WAIT, || st.transport.metrics().snapshot().reconnects >= 1)
            .await
    );
    let mut mes = TestClient::connect(m.port(), "mes2").await;
    mes.subscribe("mes/replies").await;
    mes.publish(
        "app/test/commands",
        r#"{"N":2}"#,
        ce_props("test.ping.v1", "b2", None, Some("mes/replies"), None),
    )
    .await;
    let reply = mes.recv(WAIT).await.expect("reply after broker restart");
    assert_eq!(&reply.payload[..], br#"{"N":3}"#);
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_session_is_resubscribed_after_reconnect() {
    let (mut m, _r, _seen, st) = started().await;
    // A broker that comes back without its persisted sessions.
    m.kill();
    m.wipe_persistence();
    m.restart();
    tokio::time::timeout(WAIT, st.transport.ready())
        .await
        .expect("reconnected");
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    let mut reply = None;
    for i in 0..50 {
        mes.publish(
            "app/test/commands",
            r#"{"N":1}"#,
            ce_props(
                "test.ping.v1",
                &format!("r{i}"),
                None,
                Some("mes/replies"),
                None,
            ),
        )
        .await;
        reply = mes.recv(Duration::from_millis(200)).await;
        if reply.is_some() {
            break;
        }
    }
    assert!(
        reply.is_some(),
        "subscriptions were made again on the new session"
    );
    st.stop().await.unwrap();
}

/// Mosquitto 2.0 restores a persistent session after a restart without its
/// shared subscriptions: until the station's SUBSCRIBE is in, whatever is
/// published to the group's topics has no subscriber and is dropped (the
/// publisher gets PUBACK "no matching subscribers"). So the SUBSCRIBE must
/// be the first packet on the new connection; before, it went behind what
/// the station had queued while the broker was away, which arrived first
/// and was lost. Here those queued messages are the station's own commands
/// to its group: each is handled only if the subscription came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_shared_subscription_comes_before_queued_publishes() {
    init_tracing();
    let mut m = Mosquitto::start();
    let r = Redis::start();
    let seen = Arc::new(Seen::default());
    let (pinger, mut b) = processor(seen.clone());
    b.shared_group = Some("grp".into());
    // Sends commands to `app/test/commands`, the pinger's group topic.
    let caller = Processor::southbound("caller").build();
    let commands: Emitter = caller.emitter();
    let st = station::start(
        station::settings(m.port(), "s1"),
        Some(r.url()),
        vec![(pinger, b), (caller, TopicBinding::new("app/test"))],
    )
    .await;
    assert!(st
        .transport
        .subscriptions()
        .contains(&"$share/grp/app/test/commands".to_string()));
    m.0.stop(); // SIGTERM: the broker saves its sessions (not their shared subscriptions)
    const N: u32 = 20;
    let sends: Vec<_> = (0..N)
        .map(|n| {
            let commands = commands.clone();
            tokio::spawn(async move {
                commands
                    .emit(Emit::new(&Ping { n }).intent(Intent::Commands))
                    .await
            })
        })
        .collect();
    // Queued in the client while the broker is away (not an assertion: a
    // command queued after the reconnect proves nothing either way).
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.restart();
    for s in sends {
        s.await.unwrap().expect("the broker took the command");
    }
    assert!(
        crate::harness::eventually(WAIT, || seen.calls.load(Ordering::SeqCst) == N as usize).await,
        "commands published right after the reconnect reached the group: {} of {N}",
        seen.calls.load(Ordering::SeqCst)
    );
    st.stop().await.unwrap();
}

/// A broker far behind (here: frozen) is restarted while the station has
/// more publishes waiting than rumqttc's window of unacknowledged ones
/// (the broker's Receive Maximum), and is slow again right after the
/// reconnect. rumqttc sends its window again and then, without flow
/// control, what waited in its request queue: those packet ids collide
/// with the window, each collision replaces the one before, which is never
/// sent, and its PUBACK waiter is matched to a later publish (rumqttc
/// 0.25). The station's own window keeps rumqttc's from filling, so every
/// command still reaches the group, and each is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_waiting_behind_a_full_window_survive_a_broker_restart() {
    init_tracing();
    let mut m = Mosquitto::start();
    let r = Redis::start();
    let seen = Arc::new(Seen::default());
    let (pinger, mut b) = processor(seen.clone());
    b.shared_group = Some("grp".into());
    let caller = Processor::southbound("caller").build();
    let commands: Emitter = caller.emitter();
    let st = station::start(
        station::settings(m.port(), "s1"),
        Some(r.url()),
        vec![(pinger, b), (caller, TopicBinding::new("app/test"))],
    )
    .await;
    m.freeze();
    const N: u32 = 300;
    let sends: Vec<_> = (0..N)
        .map(|n| {
            let commands = commands.clone();
            tokio::spawn(async move {
                commands
                    .emit(Emit::new(&Ping { n }).intent(Intent::Commands))
                    .await
            })
        })
        .collect();
    // Written to the frozen broker (the window) or waiting behind it; not
    // an assertion.
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.kill();
    m.restart();
    tokio::time::timeout(WAIT, st.transport.connected())
        .await
        .expect("reconnected");
    // Slow again while the station sends what it has.
    m.freeze();
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.thaw();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut acked = 0;
    for s in sends {
        if let Ok(Ok(Ok(()))) = tokio::time::timeout_at(deadline, s).await {
            acked += 1;
        }
    }
    assert!(
        crate::harness::eventually(WAIT, || seen.calls.load(Ordering::SeqCst) >= N as usize).await,
        "every command reached the group: {} of {N} handled, {acked} acknowledged",
        seen.calls.load(Ordering::SeqCst)
    );
    assert_eq!(acked, N);
    st.stop().await.unwrap();
}

fn error_reply_kind(p: &rumqttc::v5::mqttbytes::v5::Publish) -> Option<String> {
    user_prop(p, "mdcserrorkind").map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_replies_and_dead_letters_and_the_station_keeps_working() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let seen = Arc::new(Seen::default());
    let mut s = station::settings(m.port(), "s1");
    s.max_payload_size = 1024;
    let st = station::start(s, Some(r.url()), vec![processor(seen.clone())]).await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    let mut dlq = TestClient::connect(m.port(), "dlq").await;
    dlq.subscribe("microdcs/dead-letter").await;

    let cases: Vec<(&str, Vec<u8>, PublishProperties, &str)> = vec![
        (
            "undecodable payload",
            b"{not json".to_vec(),
            ce_props("test.ping.v1", "e1", None, Some("mes/replies"), None),
            "PAYLOAD_INVALID",
        ),
        (
            "wrong payload shape",
            br#"{"M":1}"#.to_vec(),
            ce_props("test.ping.v1", "e2", None, Some("mes/replies"), None),
            "PAYLOAD_INVALID",
        ),
        (
            "unknown type",
            b"{}".to_vec(),
            ce_props("test.nobody.v1", "e3", None, Some("mes/replies"), None),
            "UNKNOWN_PAYLOAD_TYPE",
        ),
        (
            "unsupported content type",
            b"hi".to_vec(),
            {
                let mut p = ce_props("test.ping.v1", "e4", None, Some("mes/replies"), None);
                p.content_type = Some("text/plain".into());
                p
            },
            "UNSUPPORTED_CONTENT_TYPE",
        ),
        (
            "missing id",
            b"{}".to_vec(),
            {
                let mut p = ce_props("test.ping.v1", "e5", None, Some("mes/replies"), None);
                p.user_properties.retain(|(k, _)| k != "id");
                p
            },
            "MISSING_USER_PROPERTY",
        ),
        (
            "oversized",
            vec![b' '; 2048],
            ce_props("test.ping.v1", "e6", None, Some("mes/replies"), None),
            "RESOURCE_EXHAUSTED",
        ),
        (
            "bad time attribute",
            b"{}".to_vec(),
            {
                let mut p = ce_props("test.ping.v1", "e7", None, Some("mes/replies"), None);
                p.user_properties.push(("time".into(), "teatime".into()));
                p
            },
            "USER_PROPERTY_INVALID",
        ),
        (
            "expired",
            br#"{"N":1}"#.to_vec(),
            {
                let mut p = ce_props("test.ping.v1", "e8", None, Some("mes/replies"), None);
                p.user_properties
                    .push(("expirytime".into(), "2000-01-01T00:00:00Z".into()));
                p
            },
            "TIMEOUT",
        ),
    ];
    for (name, payload, mut props, kind) in cases {
        props.correlation_data = Some(bytes::Bytes::from_static(&[0xde, 0xad, 0xbe]));
        mes.publish("app/test/commands", payload.clone(), props)
            .await;
        let reply = mes
            .recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("{name}: no error reply"));
        assert_eq!(error_reply_kind(&reply).as_deref(), Some(kind), "{name}");
        assert!(
            user_prop(&reply, "mdcserrormessage").is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert_eq!(
            reply
                .properties
                .as_ref()
                .unwrap()
                .correlation_data
                .as_deref(),
            Some(&[0xde, 0xad, 0xbe][..]),
            "{name}: opaque correlation data echoed verbatim"
        );
        let dead = dlq
            .recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("{name}: not dead-lettered"));
        assert_eq!(&dead.payload[..], &payload[..], "{name}: original payload");
        assert_eq!(user_prop(&dead, "x-dead-letter-kind"), Some(kind), "{name}");
        assert_eq!(
            user_prop(&dead, "x-dead-letter-topic"),
            Some("app/test/commands"),
            "{name}"
        );
    }
    // Structured mode is accepted.
    let body = r#"{"specversion":"1.0","id":"s1","source":"mes","type":"test.ping.v1","datacontenttype":"application/json","data":{"N":9}}"#;
    mes.publish(
        "app/test/commands",
        body,
        PublishProperties {
            content_type: Some("application/cloudevents+json".into()),
            response_topic: Some("mes/replies".into()),
            ..Default::default()
        },
    )
    .await;
    let reply = mes.recv(WAIT).await.expect("structured-mode reply");
    assert_eq!(&reply.payload[..], br#"{"N":10}"#);
    let metrics = st.transport.metrics().snapshot();
    assert_eq!(metrics.dead_lettered, 8);
    assert_eq!(metrics.errors.get("PAYLOAD_INVALID"), Some(&2));
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_delays_processing_until_redis_returns() {
    let (m, mut r, seen, st) = started().await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    r.kill();
    mes.publish(
        "app/test/commands",
        r#"{"N":1}"#,
        ce_props("test.ping.v1", "o1", None, Some("mes/replies"), None),
    )
    .await;
    let first = mes
        .recv(WAIT)
        .await
        .expect("error reply while redis is down");
    assert_eq!(
        error_reply_kind(&first).as_deref(),
        Some("SERVICE_UNAVAILABLE")
    );
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        0,
        "not processed without dedupe"
    );
    r.restart();
    let reply = mes
        .recv(Duration::from_secs(20))
        .await
        .expect("processed after redis returned");
    assert_eq!(&reply.payload[..], br#"{"N":2}"#);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_work() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    async fn slow(p: Ping, started: State<AtomicUsize>) -> Pong {
        started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(800)).await;
        Pong { n: p.n }
    }
    let started = Arc::new(AtomicUsize::new(0));
    let p = Processor::northbound("slow")
        .handle(slow)
        .state_arc(started.clone())
        .build();
    let st = station::start(
        station::settings(m.port(), "s1"),
        Some(r.url()),
        vec![(p, TopicBinding::new("app/test"))],
    )
    .await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    for i in 0..5 {
        mes.publish(
            "app/test/commands",
            r#"{"N":1}"#,
            ce_props(
                "test.ping.v1",
                &format!("g{i}"),
                None,
                Some("mes/replies"),
                None,
            ),
        )
        .await;
    }
    // Shutdown finishes what has started (what was received but not started
    // stays unacknowledged for redelivery, a different test): wait until all
    // five handlers run, however loaded the machine is.
    assert!(crate::harness::eventually(WAIT, || started.load(Ordering::SeqCst) == 5).await);
    st.stop().await.unwrap();
    let replies = mes.drain(Duration::from_secs(3)).await;
    assert_eq!(
        replies.len(),
        5,
        "every in-flight request was answered before disconnecting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn southbound_request_gets_reply_or_expires() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let south = Processor::southbound("equipment").build();
    let emitter: Emitter = south.emitter();
    let mut b = TopicBinding::new("eq");
    b.response_base = Some("eq/responses".into());
    let st = station::start(
        station::settings(m.port(), "s1"),
        Some(r.url()),
        vec![(south, b)],
    )
    .await;
    assert!(st
        .transport
        .subscriptions()
        .contains(&"eq/responses/s1".to_string()));

    // Equipment that answers commands for press-1 only.
    let mut eq = TestClient::connect(m.port(), "equipment").await;
    eq.subscribe("eq/press-1/commands").await;
    let eq_task = tokio::spawn(async move {
        while let Some(cmd) = eq.recv(Duration::from_secs(30)).await {
            let props = cmd.properties.clone().unwrap();
            let mut reply = ce_props("test.ping.v1", "eq-reply", None, None, None);
            reply.correlation_data = props.correlation_data.clone();
            eq.publish(
                props.response_topic.as_deref().unwrap(),
                r#"{"N":100}"#,
                reply,
            )
            .await;
        }
    });
    let reply = emitter
        .request(
            Emit::new(&Ping { n: 1 })
                .subject("press-1")
                .intent(Intent::Commands),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(reply.data_as::<Pong>().unwrap().n, 100);
    let expired = emitter
        .request(
            Emit::new(&Ping { n: 1 })
                .subject("press-2")
                .intent(Intent::Commands),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(expired.kind(), microdcs::ErrorKind::Timeout);
    // A southbound processor cannot send events.
    let wrong = emitter.emit(Emit::new(&Pinged { n: 1 })).await.unwrap_err();
    assert_eq!(wrong.kind(), microdcs::ErrorKind::InternalLogicError);
    eq_task.abort();
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_work_between_replicas() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let seen_a = Arc::new(Seen::default());
    let seen_b = Arc::new(Seen::default());
    let mk = |seen: Arc<Seen>| {
        let (p, mut b) = processor(seen);
        b.shared_group = Some("station".into());
        (p, b)
    };
    let a = station::start(
        station::settings(m.port(), "a"),
        Some(r.url()),
        vec![mk(seen_a.clone())],
    )
    .await;
    let b = station::start(
        station::settings(m.port(), "b"),
        Some(r.url()),
        vec![mk(seen_b.clone())],
    )
    .await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    for i in 0..40 {
        mes.publish(
            "app/test/commands",
            r#"{"N":1}"#,
            ce_props(
                "test.ping.v1",
                &format!("w{i}"),
                None,
                Some("mes/replies"),
                None,
            ),
        )
        .await;
    }
    let replies = mes.drain(Duration::from_secs(3)).await;
    assert_eq!(replies.len(), 40);
    let (na, nb) = (
        seen_a.calls.load(Ordering::SeqCst),
        seen_b.calls.load(Ordering::SeqCst),
    );
    assert_eq!(na + nb, 40, "each message processed exactly once");
    assert!(na > 0 && nb > 0, "both replicas got work: {na}/{nb}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_task_emits_events_outside_requests_with_message_expiry() {
    init_tracing();
    let m = Mosquitto::start();
    let p = Processor::northbound("ticker").build();
    let emitter = p.emitter();
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("app/tick/cell-9/data").await;
    let mut s = station::settings(m.port(), "s1");
    s.message_expiry = Some(Duration::from_secs(42));
    let app = microdcs::App::builder()
        .mqtt("mqtt", s)
        .processor(p, TopicBinding::new("app/tick"))
        .task("ticker", move |mut shutdown| async move {
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                n += 1;
                emitter
                    .emit(
                        Emit::new(&Pinged { n })
                            .subject("cell-9")
                            .intent(Intent::Data),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        })
        .build()
        .await
        .unwrap();
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    let first = mes.recv(WAIT).await.expect("event from a background task");
    assert_eq!(user_prop(&first, "type"), Some("test.pinged.v1"));
    assert_eq!(
        first
            .properties
            .as_ref()
            .unwrap()
            .message_expiry_interval
            .map(|e| e <= 42 && e > 30),
        Some(true)
    );
    assert_eq!(user_prop(&first, "expiryinterval"), Some("42"));
    handle.shutdown();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_processor_bound_to_two_transports_serves_both() {
    init_tracing();
    let m1 = Mosquitto::start();
    let m2 = Mosquitto::start();
    let r = Redis::start();
    let seen = Arc::new(Seen::default());
    let (p, b) = processor(seen.clone());
    let app = microdcs::App::builder()
        .mqtt("plant", station::settings(m1.port(), "s1"))
        .mqtt("cell", station::settings(m2.port(), "s1"))
        .redis_url(r.url(), "two")
        .processor_on("plant", p.clone(), b.clone())
        .processor_on("cell", p, b)
        .build()
        .await
        .unwrap();
    let transports = app.transports().to_vec();
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    for t in &transports {
        tokio::time::timeout(WAIT, t.ready()).await.unwrap();
    }
    for (i, m) in [&m1, &m2].into_iter().enumerate() {
        let mut mes = TestClient::connect(m.port(), "mes").await;
        mes.subscribe("mes/replies").await;
        mes.subscribe("app/test/+/events").await;
        mes.publish(
            "app/test/commands",
            r#"{"N":1}"#,
            ce_props(
                "test.ping.v1",
                &format!("t{i}"),
                Some("k"),
                Some("mes/replies"),
                None,
            ),
        )
        .await;
        let got = mes.drain(Duration::from_secs(1)).await;
        // the reply on this broker, and the event on every bound transport
        // (so each broker sees one event per request made anywhere so far)
        assert!(
            got.iter().any(|p| &p.topic[..] == b"mes/replies"),
            "reply on broker {i}"
        );
        assert!(
            got.iter().any(|p| &p.topic[..] == b"app/test/k/events"),
            "event on broker {i}"
        );
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
    handle.shutdown();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_payload_is_decoded() {
    let (m, _r, _seen, st) = started().await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    let mut props = ce_props("test.ping.v1", "mp1", None, Some("mes/replies"), None);
    props.content_type = Some("application/msgpack".into());
    let body = rmp_serde::to_vec_named(&Ping { n: 7 }).unwrap();
    mes.publish("app/test/commands", body, props).await;
    let reply = mes.recv(WAIT).await.expect("reply");
    assert_eq!(&reply.payload[..], br#"{"N":8}"#);
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_retryably_is_dead_lettered_after_its_attempts() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    async fn flaky(_p: Ping) -> Result<Pong, HandlerError> {
        Err(HandlerError::retryable(
            microdcs::ErrorKind::ServiceUnavailable,
            "backend \u{1} down",
        ))
    }
    let p = Processor::northbound("flaky").handle(flaky).build();
    let mut s = station::settings(m.port(), "s1");
    s.max_attempts = 3;
    let st = station::start(s, Some(r.url()), vec![(p, TopicBinding::new("app/flaky"))]).await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    let mut dlq = TestClient::connect(m.port(), "dlq").await;
    dlq.subscribe("microdcs/dead-letter").await;
    mes.publish(
        "app/flaky/commands",
        r#"{"N":1}"#,
        ce_props("test.ping.v1", "f1", None, Some("mes/replies"), Some(b"f")),
    )
    .await;
    let dead = dlq
        .recv(WAIT)
        .await
        .expect("dead-lettered, not retried forever");
    assert_eq!(
        user_prop(&dead, "x-dead-letter-kind"),
        Some("SERVICE_UNAVAILABLE")
    );
    let reason = user_prop(&dead, "x-dead-letter-reason").unwrap();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    // One error reply when it first failed, one when it was given up.
    let replies = mes.drain(Duration::from_secs(1)).await;
    assert_eq!(replies.len(), 2);
    assert!(replies
        .iter()
        .all(|p| user_prop(p, "mdcserrorkind") == Some("SERVICE_UNAVAILABLE")));
    assert!(
        user_prop(&replies[1], "mdcserrorcontext").is_some_and(|c| c.contains("attempts=3")),
        "{:?}",
        user_prop(&replies[1], "mdcserrorcontext")
    );
    // Acknowledged: nothing is redelivered to a restarted station.
    assert!(dlq.recv(Duration::from_secs(2)).await.is_none());
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_to_a_message_without_type_or_id_carries_no_empty_attribute() {
    let (m, _r, _seen, st) = started().await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    let mut props = ce_props("x", "y", None, Some("mes/replies"), Some(b"c"));
    props
        .user_properties
        .retain(|(k, _)| k != "type" && k != "id");
    mes.publish("app/test/commands", r#"{"N":1}"#, props).await;
    let reply = mes.recv(WAIT).await.expect("error reply");
    assert_eq!(
        user_prop(&reply, "mdcserrorkind"),
        Some("MISSING_USER_PROPERTY")
    );
    for (k, v) in &reply.properties.as_ref().unwrap().user_properties {
        assert!(!v.is_empty(), "attribute '{k}' is empty");
    }
    assert!(user_prop(&reply, "type").is_some());
    assert!(user_prop(&reply, "causationid").is_none());
    st.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_client_id_back_off_instead_of_fighting() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let a = station(&m, &r, "same", Arc::new(Seen::default())).await;
    let b = station(&m, &r, "same", Arc::new(Seen::default())).await;
    // Each connection takes the session from the other; without backing
    // off they would reconnect every 50-500 ms.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let reconnects =
        a.transport.metrics().snapshot().reconnects + b.transport.metrics().snapshot().reconnects;
    assert!(reconnects <= 6, "{reconnects} reconnects in 8 s");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
