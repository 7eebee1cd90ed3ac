//! The MessagePack-RPC transport (wire contract §5) against a real station,
//! Mosquitto and Redis, driven by an independent client: Python's
//! `msgpack` over a raw socket (`msgpack_client.py`), one process per test,
//! several connections each.

use crate::harness::jobs::{self, order, state_texts, Mes, PREFIX};
use crate::harness::station::{self, Hosted};
use crate::harness::{eventually, init_tracing, Mosquitto, Redis};
use microdcs::transport::msgpack::{MsgpackSettings, MsgpackTls, MsgpackTransport};
use microdcs::{App, Emit, EventType, HandlerError, Processor, Scope, State, TopicBinding};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CLIENT: &str = include_str!("msgpack_client.py");
const WAIT: Duration = Duration::from_secs(30);

/// The Python client process.
struct Py {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    addr: SocketAddr,
    next: u64,
}

impl Py {
    fn start(addr: SocketAddr) -> Py {
        let mut child = tokio::process::Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(CLIENT)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 (run scripts/setup.sh: it installs the msgpack package)");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Py {
            _child: child,
            stdin,
            out,
            addr,
            next: 100,
        }
    }

    async fn cmd(&mut self, c: Value) -> Value {
        let mut line = c.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(90), self.out.next_line())
            .await
            .expect("the client answers")
            .unwrap()
            .expect("the client is alive");
        serde_json::from_str(&answer).unwrap()
    }

    async fn connect(&mut self, conn: &str) {
        let (host, port) = (self.addr.ip().to_string(), self.addr.port());
        let r = self
            .cmd(json!({"op": "connect", "conn": conn, "host": host, "port": port}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }

    /// A request and its response frame `[1, msgid, error, result]`.
    async fn call(&mut self, conn: &str, method: &str, params: Value) -> Value {
        self.next += 1;
        let r = self
            .cmd(json!({"op": "call", "conn": conn, "msgid": self.next, "method": method, "params": params}))
            .await;
        let f = r["frame"].clone();
        assert_eq!(f[0], 1, "a response: {r}");
        assert_eq!(f[1], self.next, "{r}");
        f
    }

    /// `publish(event)`: the list of reply maps (no RPC error).
    async fn publish(&mut self, conn: &str, event: &Value) -> Vec<Value> {
        let f = self.call(conn, "publish", json!([event, null])).await;
        assert_eq!(f[2], Value::Null, "no RPC error: {f}");
        f[3].as_array().expect("a list of replies").clone()
    }

    async fn send(&mut self, conn: &str, frame: Value) {
        let r = self
            .cmd(json!({"op": "send", "conn": conn, "frame": frame}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }

    async fn recv(&mut self, conn: &str) -> Value {
        self.cmd(json!({"op": "recv", "conn": conn, "timeout": 30}))
            .await["frame"]
            .clone()
    }
}

/// A CloudEvent map as MicroDCS's `CloudEvent.to_dict` makes it, with a
/// JSON payload.
fn event(ty: &str, id: &str, subject: Option<&str>, data: Value) -> Value {
    let mut e = json!({
        "id": id,
        "source": "mes-py",
        "specversion": "1.0",
        "type": ty,
        "datacontenttype": "application/json",
        "correlationid": format!("corr-{id}"),
    });
    let mut payload = serde_json::Map::new();
    payload.insert("$json".into(), data);
    e["data"] = Value::Object(payload);
    if let Some(s) = subject {
        e["subject"] = json!(s);
    }
    e
}

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
    #[serde(rename = "N")]
    n: u32,
}
impl EventType for Pinged {
    const TYPE: &'static str = "test.pinged.v1";
    const DATASCHEMA: &'static str = "urn:test:pinged";
}

#[derive(Debug, Serialize, Deserialize)]
struct Count {}
impl EventType for Count {
    const TYPE: &'static str = "test.count.v1";
    const DATASCHEMA: &'static str = "urn:test:count";
}

/// What the test processors saw; `gate` holds every ping until the test
/// adds permits (when `gated`).
struct Seen {
    pings: AtomicUsize,
    counts: AtomicUsize,
    gated: bool,
    gate: tokio::sync::Semaphore,
}

impl Seen {
    fn new(gated: bool) -> Arc<Seen> {
        Arc::new(Seen {
            pings: AtomicUsize::new(0),
            counts: AtomicUsize::new(0),
            gated,
            gate: tokio::sync::Semaphore::new(0),
        })
    }
}

async fn ping(
    p: Ping,
    scope: Option<Scope>,
    seen: State<Seen>,
) -> Result<microdcs::Outcome, HandlerError> {
    if seen.gated {
        seen.gate.acquire().await.expect("gate").forget();
    }
    seen.pings.fetch_add(1, Ordering::SeqCst);
    let mut out = microdcs::Outcome::reply(&Pong { n: p.n + 1 });
    if let Some(s) = scope {
        out = out.emit(Emit::new(&Pinged { n: p.n }).subject(s.0));
    }
    Ok(out)
}

#[derive(Debug, Serialize, Deserialize)]
struct Big {
    #[serde(rename = "Size")]
    size: usize,
}
impl EventType for Big {
    const TYPE: &'static str = "test.big.v1";
    const DATASCHEMA: &'static str = "urn:test:big";
}

/// Emits one event of `size` bytes (to fill slow clients' buffers).
async fn big(b: Big) -> microdcs::Outcome {
    let mut e = microdcs::CloudEvent::new("test.bigevent.v1", "");
    e.datacontenttype = Some("application/octet-stream".into());
    e.data = Some(bytes::Bytes::from(vec![b'x'; b.size]));
    microdcs::Outcome::none().emit(Emit::raw(e).subject("big"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Flaky {}
impl EventType for Flaky {
    const TYPE: &'static str = "test.flaky.v1";
    const DATASCHEMA: &'static str = "urn:test:flaky";
}

#[derive(Debug, Serialize, Deserialize)]
struct Broken {}
impl EventType for Broken {
    const TYPE: &'static str = "test.broken.v1";
    const DATASCHEMA: &'static str = "urn:test:broken";
}

/// Fails retryably twice, then answers.
async fn flaky(_: Flaky, seen: State<Seen>) -> Result<microdcs::Outcome, HandlerError> {
    if seen.counts.fetch_add(1, Ordering::SeqCst) < 2 {
        return Err(HandlerError::retryable(
            microdcs::ErrorKind::ServiceUnavailable,
            "not yet",
        ));
    }
    Ok(microdcs::Outcome::reply(&Pong { n: 0 }))
}

/// Always fails for good.
async fn broken(_: Broken) -> Result<(), HandlerError> {
    Err(
        HandlerError::terminal(microdcs::ErrorKind::StateInvalid, "the press is open")
            .context("press", "p-1"),
    )
}

async fn count(_: Count, seen: State<Seen>) {
    seen.counts.fetch_add(1, Ordering::SeqCst);
}

fn processors(seen: &Arc<Seen>) -> Vec<(Processor, TopicBinding)> {
    let pinger = Processor::northbound("pinger")
        .handle(ping)
        .handle(big)
        .state_arc(seen.clone())
        .build();
    let counter = Processor::northbound("counter")
        .handle(count)
        .handle(flaky)
        .handle(broken)
        .state_arc(seen.clone())
        .build();
    vec![
        (pinger, TopicBinding::new("app/ping")),
        (counter, TopicBinding::new("app/count")),
    ]
}

/// An app with MQTT and a MessagePack-RPC transport `rpc` on a free port,
/// `processors` bound to both.
async fn launch(
    m: &Mosquitto,
    r: &Redis,
    settings: MsgpackSettings,
    processors: Vec<(Processor, TopicBinding)>,
) -> (Hosted, Arc<MsgpackTransport>, SocketAddr) {
    let (mqtt, url) = (station::settings(m.port(), "st-rpc"), r.url());
    let (hosted, _, (t, addr)) = Hosted::launch(move || async move {
        let mut b = App::builder()
            .mqtt("mqtt", mqtt)
            .msgpack("rpc", settings)
            .redis_url(url, "test")
            .dedupe_claim_lease(Duration::from_secs(1));
        for (p, binding) in processors {
            b = b
                .processor(p.clone(), binding.clone())
                .processor_on("rpc", p, binding);
        }
        let app = b.build().await.expect("build app");
        let t = app.msgpack_transports()[0].clone();
        let addr = t.local_addr().await;
        (app, (t, addr))
    })
    .await;
    (hosted, t, addr)
}

fn rpc_settings() -> MsgpackSettings {
    let mut s = MsgpackSettings::new("127.0.0.1", 0);
    s.source = "station/st-rpc".into();
    s
}

fn data(reply: &Value) -> &Value {
    &reply["data"]["$json"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_the_replies_heartbeat_gets_none_and_unknown_methods_are_named() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;

    let replies = py
        .publish("a", &event("test.ping.v1", "p-1", None, json!({"N": 1})))
        .await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = &replies[0];
    assert_eq!(data(reply), &json!({"N": 2}));
    assert_eq!(reply["type"], "test.ping.v1");
    assert_eq!(reply["dataschema"], "urn:test:pong");
    assert_eq!(reply["causationid"], "p-1");
    assert_eq!(reply["correlationid"], "corr-p-1");
    assert_eq!(reply["source"], "station/st-rpc");
    assert_eq!(reply["specversion"], "1.0");
    assert!(reply.get("mdcserrorkind").is_none(), "{reply}");

    // A heartbeat notification is not answered: the next frame on the
    // connection is the response to the call sent after it.
    py.send("a", json!([2, "heartbeat", [1_764_000_000]])).await;
    let f = py.call("a", "nope", json!([])).await;
    assert_eq!(f[2], "Method 'nope' not found");
    assert_eq!(f[3], Value::Null);
    assert_eq!(seen.pings.load(Ordering::SeqCst), 1);
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_answered_or_skipped_and_other_connections_keep_working() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    py.connect("b").await;

    // Not an array: skipped, no answer.
    py.send("a", json!({"not": "a frame"})).await;
    // A request whose method is not a string, one of wrong arity, one with
    // params that are not an array: each answered with its msgid.
    py.send("a", json!([0, 7, 42, []])).await;
    let f = py.recv("a").await;
    assert_eq!((f[0].clone(), f[1].clone()), (json!(1), json!(7)), "{f}");
    assert!(f[2].as_str().unwrap().contains("method"), "{f}");
    py.send("a", json!([0, 8, "publish"])).await;
    let f = py.recv("a").await;
    assert_eq!(f[1], 8, "{f}");
    assert!(f[2].as_str().unwrap().contains("4 elements"), "{f}");
    py.send("a", json!([0, 9, "publish", "x"])).await;
    let f = py.recv("a").await;
    assert_eq!(f[1], 9, "{f}");
    assert!(f[2].as_str().unwrap().contains("array"), "{f}");
    // publish with a CloudEvent that is not a map: an RPC error.
    let f = py.call("a", "publish", json!(["x", null])).await;
    assert!(f[2].as_str().unwrap().contains("map"), "{f}");
    // The connection still works.
    let ok = py
        .publish("a", &event("test.ping.v1", "m-1", None, json!({"N": 1})))
        .await;
    assert_eq!(data(&ok[0]), &json!({"N": 2}));

    // Bytes that are not MessagePack: that connection ends, the other one
    // is untouched.
    let r = py
        .cmd(json!({"op": "send_raw", "conn": "a", "hex": "c1c1c1"}))
        .await;
    assert_eq!(r["ok"], true);
    assert_eq!(py.recv("a").await, "eof");
    let ok = py
        .publish("b", &event("test.ping.v1", "m-2", None, json!({"N": 5})))
        .await;
    assert_eq!(data(&ok[0]), &json!({"N": 6}));
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_and_only_its_connection_is_closed() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let mut s = rpc_settings();
    s.max_buffer_size = 4096;
    let (app, _t, addr) = launch(&m, &r, s, processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    py.connect("b").await;
    let big = event(
        "test.ping.v1",
        "big-1",
        None,
        json!({"N": 1, "pad": "x".repeat(10_000)}),
    );
    py.send("a", json!([0, 55, "publish", [big, null]])).await;
    let f = py.recv("a").await;
    assert_eq!(f[1], 55, "{f}");
    let e = f[2].as_str().unwrap();
    assert!(e.contains("4096") && e.contains("max_buffer_size"), "{e}");
    assert_eq!(py.recv("a").await, "eof");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0);
    let ok = py
        .publish(
            "b",
            &event("test.ping.v1", "small-1", None, json!({"N": 1})),
        )
        .await;
    assert_eq!(data(&ok[0]), &json!({"N": 2}));
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_gets_the_same_reply_and_has_one_effect() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    py.connect("b").await;
    let e = event("test.ping.v1", "dup-1", None, json!({"N": 10}));
    let first = py.publish("a", &e).await;
    // Re-sent on another connection, as a client that lost the answer.
    let again = py.publish("b", &e).await;
    assert_eq!(first.len(), 1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["id"], first[0]["id"], "the stored reply");
    assert_eq!(data(&again[0]), &json!({"N": 11}));
    assert_eq!(again[0]["dataschema"], "urn:test:pong");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 1, "one effect");
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_routed_by_type_and_an_unknown_type_is_an_error_reply_and_a_dead_letter() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;

    // Each type reaches its own processor only (MicroDCS fans out).
    let none = py
        .publish("a", &event("test.count.v1", "c-1", None, json!({})))
        .await;
    assert!(
        none.is_empty(),
        "no reply from a handler without one: {none:?}"
    );
    assert_eq!(seen.counts.load(Ordering::SeqCst), 1);
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0);

    let err = py
        .publish("a", &event("test.unknown.v1", "u-1", None, json!({})))
        .await;
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["mdcserrorkind"], "NO_MATCHING_SUBSCRIBERS");
    assert!(
        err[0]["mdcserrormessage"]
            .as_str()
            .unwrap()
            .contains("test.unknown.v1"),
        "{}",
        err[0]
    );
    assert_eq!(err[0]["causationid"], "u-1");
    // Missing attribute: the MQTT binding's rule and error kind.
    let mut no_source = event("test.ping.v1", "u-2", None, json!({"N": 1}));
    no_source.as_object_mut().unwrap().remove("source");
    let err = py.publish("a", &no_source).await;
    assert_eq!(err[0]["mdcserrorkind"], "MISSING_USER_PROPERTY");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0);

    let redis = microdcs::Redis::open(&r.url()).unwrap();
    let letters = microdcs::dlq::DeadLetters::new(redis.conn.clone(), "test", 100);
    let deadline = tokio::time::Instant::now() + WAIT;
    let kept = loop {
        let kept = letters.list(Some("-"), 10).await.unwrap_or_default();
        if kept.len() >= 2 || tokio::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kept.len(), 2, "both kept in the dead-letter stream");
    let unknown = kept
        .iter()
        .find(|l| l.kind == "NO_MATCHING_SUBSCRIBERS")
        .expect("the unknown type");
    assert_eq!(unknown.message.payload.as_ref(), b"{}");
    assert!(unknown
        .message
        .properties
        .user_properties
        .contains(&("type".to_string(), "test.unknown.v1".to_string())));
    assert_eq!(t.metrics().snapshot().dead_lettered, 2);
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_past_the_limit_are_all_answered_with_at_most_the_limit_in_flight() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(true);
    let mut s = rpc_settings();
    s.max_concurrent_requests = 3;
    let (app, t, addr) = launch(&m, &r, s, processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    let frames: Vec<Value> = (0..20)
        .map(|i| {
            json!([
                0,
                i,
                "publish",
                [
                    event("test.ping.v1", &format!("bp-{i}"), None, json!({"N": i})),
                    null
                ]
            ])
        })
        .collect();
    let r = py
        .cmd(json!({"op": "send_many", "conn": "a", "frames": frames}))
        .await;
    assert_eq!(r["ok"], true);
    // The handlers are held: the server takes the limit and stops there.
    assert!(
        eventually(WAIT, || t.in_flight() == 3).await,
        "three calls in flight"
    );
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0);
    seen.gate.add_permits(100);
    let mut answered = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let f = py.recv("a").await;
        assert_eq!(f[0], 1, "{f}");
        assert_eq!(f[2], Value::Null, "{f}");
        let i = f[1].as_u64().unwrap();
        answered.insert(i, data(&f[3][0]).clone());
    }
    assert_eq!(answered.len(), 20, "every call answered once");
    for (i, d) in &answered {
        assert_eq!(d, &json!({"N": i + 1}));
    }
    assert_eq!(t.peak_in_flight(), 3, "never more than the limit at once");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 20);
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_bound_processors_are_broadcast_to_every_client() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    py.connect("b").await;
    assert!(eventually(WAIT, || t.clients() == 2).await);
    let replies = py
        .publish(
            "a",
            &event("test.ping.v1", "ev-1", Some("cell-7"), json!({"N": 4})),
        )
        .await;
    assert_eq!(data(&replies[0]), &json!({"N": 5}));
    for conn in ["a", "b"] {
        let f = py.recv(conn).await;
        assert_eq!(f[0], 2, "{conn}: {f}");
        assert_eq!(f[1], "cloudevent", "{f}");
        let (ev, intent) = (&f[2][0], &f[2][1]);
        assert_eq!(intent, "events");
        assert_eq!(ev["type"], "test.pinged.v1");
        assert_eq!(ev["subject"], "cell-7");
        assert_eq!(ev["causationid"], "ev-1");
        assert_eq!(ev["correlationid"], "corr-ev-1");
        assert_eq!(data(ev), &json!({"N": 4}));
    }
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_call_in_flight() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(true);
    let (mut app, t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    let e = event("test.ping.v1", "sd-1", None, json!({"N": 1}));
    py.send("a", json!([0, 77, "publish", [e, null]])).await;
    assert!(eventually(WAIT, || t.in_flight() == 1).await);
    app.handle.shutdown();
    // Stopped accepting: a new connection is refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener is closed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen.gate.add_permits(1);
    let f = py.recv("a").await;
    assert_eq!(f[1], 77, "{f}");
    assert_eq!(data(&f[3][0]), &json!({"N": 2}));
    assert_eq!(py.recv("a").await, "eof");
    let done = tokio::time::timeout(WAIT, &mut app.done)
        .await
        .expect("the app stops")
        .expect("app result");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 1);
}

/// A free loopback port for a station configured by environment.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const S: &str = "org.opcfoundation.ISA95-JOBCONTROL_V2.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_its_whole_lifecycle_over_msgpack_while_an_mqtt_mes_watches() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let port = free_port();
    let mut env = jobs::env(m.port(), r.0.port(), "st-1");
    // `equipment` takes any type (its fallback handler) and is bound too:
    // the job commands go to `machinery-jobs`, which has handlers for them.
    jobs::set(
        &mut env,
        "APP_MSGPACK_PROCESSORS",
        "equipment,machinery-jobs",
    );
    jobs::set(&mut env, "APP_MSGPACK_HOSTNAME", "127.0.0.1");
    jobs::set(&mut env, "APP_MSGPACK_PORT", &port.to_string());
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut py = Py::start(SocketAddr::from(([127, 0, 0, 1], port)));
    py.connect("a").await;
    let scope = "line-9";
    let mut n = 0;
    let mut command = |method: &str, body: Value| {
        n += 1;
        event(
            &format!("{S}{method}.v2"),
            &format!("{method}-{n}"),
            Some(scope),
            body,
        )
    };
    let status = |replies: Vec<Value>| {
        assert_eq!(replies.len(), 1, "{replies:?}");
        data(&replies[0])["ReturnStatus"].clone()
    };

    let store = command("Store", json!({"JobOrder": order("j1")}));
    assert_eq!(status(py.publish("a", &store).await), 1);
    let (topic, ev) = mes.next_event().await.expect("status event over MQTT");
    assert_eq!(topic, format!("{PREFIX}/{scope}/events"));
    assert_eq!(ev["JobOrder"]["JobOrderID"], "j1");
    assert_eq!(state_texts(&ev["JobState"]), ["NotAllowedToStart", "Ready"]);
    // The same status event reaches the MessagePack-RPC client (after the
    // processor's metadata event, when it connected before that went out).
    let status_type = format!("{S}ISA95JobOrderStatusEventType.v2");
    let f = loop {
        let f = py.recv("a").await;
        assert_eq!(f[1], "cloudevent", "{f}");
        if f[2][0]["type"] == status_type.as_str() {
            break f;
        }
        assert_eq!(f[2][1], "metadata", "only the metadata event before: {f}");
    };
    assert_eq!(f[2][1], "events");
    assert_eq!(f[2][0]["subject"], scope);
    assert_eq!(
        state_texts(&data(&f[2][0])["JobState"]),
        ["NotAllowedToStart", "Ready"]
    );

    let id = json!({"JobOrderID": "j1"});
    assert_eq!(
        status(py.publish("a", &command("Start", id.clone())).await),
        1
    );
    assert_eq!(mes.next_state().await, ["AllowedToStart", "Ready"]);
    let m = station.jobs.clone().expect("processor instance");
    station
        .on_runtime(async move {
            m.internal(
                "line-9",
                "j1",
                microdcs::jobs::Internal::Begin,
                None,
                "engine",
            )
            .await
        })
        .await
        .expect("redis");
    assert_eq!(mes.next_state().await, ["Running"]);
    assert_eq!(
        status(py.publish("a", &command("Pause", id.clone())).await),
        1
    );
    assert_eq!(mes.next_state().await, ["Interrupted", "Suspended"]);
    assert_eq!(
        status(py.publish("a", &command("Resume", id.clone())).await),
        1
    );
    assert_eq!(mes.next_state().await, ["Running"]);
    assert_eq!(
        status(py.publish("a", &command("Stop", id.clone())).await),
        1
    );
    assert_eq!(mes.next_state().await, ["Ended", "Completed"]);
    assert_eq!(
        status(py.publish("a", &command("Clear", id.clone())).await),
        1
    );
    assert_eq!(mes.next_state().await, ["EndState"]);
    // Refused where the table forbids it, over MessagePack-RPC too.
    assert_eq!(
        status(py.publish("a", &command("Start", id.clone())).await),
        8
    );
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_name_the_station_does_not_have_is_a_configuration_error() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let mut env = jobs::env(m.port(), r.0.port(), "st-1");
    jobs::set(&mut env, "APP_MSGPACK_PROCESSORS", "machinery-jobs,nope");
    jobs::set(&mut env, "APP_MSGPACK_HOSTNAME", "127.0.0.1");
    jobs::set(&mut env, "APP_MSGPACK_PORT", &free_port().to_string());
    let config = microdcs::config::Config::from_sources(None, env).expect("valid syntax");
    assert_eq!(config.msgpack.processors, ["machinery-jobs", "nope"]);
    let e = microdcs::station::build(&config)
        .await
        .expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("'nope'") && text.contains("APP_MSGPACK_PROCESSORS"),
        "{text}"
    );
    assert!(
        text.contains("machinery-jobs"),
        "names what is bound: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_client_needs_a_certificate_of_the_configured_ca_when_required() {
    use crate::security::Ca;
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, other) = (Ca::new("msgpack test CA"), Ca::new("someone else's CA"));
    let ca_file = ca.write(d, "ca");
    let (server_cert, server_key, _) = ca.issue(d, "server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key, _) = ca.issue(d, "adapter", &["adapter"]);
    let (stranger_cert, stranger_key, _) = other.issue(d, "stranger", &["adapter"]);
    let mut s = rpc_settings();
    s.tls = Some(MsgpackTls {
        cert_path: server_cert,
        key_path: Some(server_key),
        client_auth: true,
        ca_path: Some(ca_file.clone()),
    });
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, s, processors(&seen)).await;
    let mut py = Py::start(addr);
    let connect = |conn: &str, cert: Option<(&std::path::Path, &std::path::Path)>| {
        let mut tls = json!({"ca": ca_file, "name": "localhost"});
        if let Some((c, k)) = cert {
            tls["cert"] = json!(c);
            tls["key"] = json!(k);
        }
        json!({"op": "connect", "conn": conn, "host": "127.0.0.1", "port": addr.port(), "tls": tls})
    };
    let ok = py
        .cmd(connect("a", Some((&client_cert, &client_key))))
        .await;
    assert_eq!(ok["ok"], true, "{ok}");
    let replies = py
        .publish("a", &event("test.ping.v1", "tls-1", None, json!({"N": 1})))
        .await;
    assert_eq!(data(&replies[0]), &json!({"N": 2}));

    let without = py.cmd(connect("b", None)).await;
    assert!(
        without.get("error").is_some(),
        "refused without a certificate: {without}"
    );
    let stranger = py
        .cmd(connect("c", Some((&stranger_cert, &stranger_key))))
        .await;
    assert!(
        stranger.get("error").is_some(),
        "refused with a foreign certificate: {stranger}"
    );
    // Plain MessagePack on the TLS port gets a TLS alert, not an answer.
    py.connect("plain").await;
    py.send("plain", json!([0, 1, "heartbeat", [0]])).await;
    let f = py.recv("plain").await;
    assert!(!f.is_array(), "no MessagePack-RPC response: {f}");
    // The authenticated client was never disturbed.
    let replies = py
        .publish("a", &event("test.ping.v1", "tls-2", None, json!({"N": 7})))
        .await;
    assert_eq!(data(&replies[0]), &json!({"N": 8}));
    assert_eq!(seen.pings.load(Ordering::SeqCst), 2);
    let _ = app.stop(WAIT).await;
}

/// Status events until job `job` reaches one of `states`.
async fn until_state(mes: &mut Mes, job: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equipment_adapter_over_msgpack_executes_a_recipe_step() {
    use crate::harness::recipes::{pull_event, push_command, store_recipe};
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let port = free_port();
    let mut env = jobs::env(m.port(), r.0.port(), "sfc-rpc");
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    jobs::set(&mut env, "APP_MSGPACK_PROCESSORS", "equipment");
    jobs::set(&mut env, "APP_MSGPACK_HOSTNAME", "127.0.0.1");
    jobs::set(&mut env, "APP_MSGPACK_PORT", &port.to_string());
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    // The adapter: a sidecar next to the station, no broker in between.
    let mut py = Py::start(SocketAddr::from(([127, 0, 0, 1], port)));
    py.connect("plc").await;
    let inspected = "com.example.axle.inspected.v1";
    let mut clamp = push_command("clamp", "load", "N", "com.example.axle.clamp.v1", 0);
    clamp["Parameters"] = json!({"station": "axle-1"});
    let recipe = json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "inspect"}],
        "Transitions": [{"Source": "load", "Target": "inspect", "Condition": "results.clamp.ok"}],
        "Actions": [clamp, pull_event("inspection", "inspect", inspected, 30)]
    });
    store_recipe(&mut mes, "axle", recipe).await;
    assert_eq!(
        mes.status("StoreAndStart", "axle", json!({"JobOrder": order("a1")}))
            .await,
        1
    );

    // The command arrives as a `cloudevent` notification with intent
    // `commands`; the adapter answers with `publish`, echoing the
    // correlation: routed by type to `equipment`, matched by correlation.
    let f = py.recv("plc").await;
    assert_eq!(
        (f[0].clone(), f[1].clone()),
        (json!(2), json!("cloudevent")),
        "{f}"
    );
    let (cmd, intent) = (&f[2][0], &f[2][1]);
    assert_eq!(intent, "commands");
    assert_eq!(cmd["type"], "com.example.axle.clamp.v1");
    assert_eq!(cmd["subject"], "axle");
    assert_eq!(cmd["jobid"], "a1");
    assert_eq!(data(cmd)["station"], "axle-1");
    let mut result = event(
        "com.example.axle.clamp.v1",
        "clamp-result-1",
        Some("axle"),
        json!({"ok": true}),
    );
    result["correlationid"] = cmd["correlationid"].clone();
    result["causationid"] = cmd["id"].clone();
    let replies = py.publish("plc", &result).await;
    assert!(
        replies.iter().all(|r| r.get("mdcserrorkind").is_none()),
        "{replies:?}"
    );
    // The equipment's own event for the pull action, naming its job.
    let mut ev = event(inspected, "insp-1", Some("axle"), json!({"passed": true}));
    ev["jobid"] = json!("a1");
    let replies = py.publish("plc", &ev).await;
    assert!(
        replies.iter().all(|r| r.get("mdcserrorkind").is_none()),
        "{replies:?}"
    );

    let ended = until_state(&mut mes, "a1", &["Ended", "Aborted"]).await;
    assert_eq!(
        state_texts(&ended["JobState"]),
        ["Ended", "Completed"],
        "{ended}"
    );
    let results = ended["JobResponse"]["JobResponseData"].as_array().unwrap();
    let value = |id: &str| {
        results
            .iter()
            .find(|d| d["ID"] == id)
            .map(|d| d["Value"].clone())
    };
    assert_eq!(value("clamp").unwrap()["ok"], true);
    assert_eq!(value("inspection").unwrap()["passed"], true);
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_events_is_disconnected_without_holding_up_the_others() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let mut s = rpc_settings();
    s.client_queue = 4;
    let (app, t, addr) = launch(&m, &r, s, processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("slow").await;
    py.connect("fast").await;
    assert!(eventually(WAIT, || t.clients() == 2).await);
    // 64 events of 512 KiB: far more than the kernel's socket buffers and
    // the 4-frame queue of a client that reads nothing.
    for i in 0..64 {
        let e = event(
            "test.big.v1",
            &format!("big-{i}"),
            None,
            json!({"Size": 512 * 1024}),
        );
        let replies = py.publish("fast", &e).await;
        assert!(replies.is_empty(), "{replies:?}");
    }
    assert!(
        eventually(WAIT, || t.clients() == 1).await,
        "the slow client was disconnected"
    );
    // The fast client got every event.
    for _ in 0..64 {
        let f = py.recv("fast").await;
        assert_eq!(
            f[1],
            "cloudevent",
            "{}",
            &f.to_string()[..80.min(f.to_string().len())]
        );
        assert_eq!(f[2][0]["type"], "test.bigevent.v1");
    }
    // The slow one reads what reached it, then its connection's end.
    let mut ended = false;
    for _ in 0..80 {
        let f = py.recv("slow").await;
        if f == "eof" {
            ended = true;
            break;
        }
        assert_eq!(f[1], "cloudevent");
    }
    assert!(ended, "the slow client's connection was closed");
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failures_are_retried_or_answered_with_their_kind_and_dead_lettered() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    // Retryable twice: the call waits for the third attempt's answer.
    let ok = py
        .publish("a", &event("test.flaky.v1", "f-1", None, json!({})))
        .await;
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert!(ok[0].get("mdcserrorkind").is_none(), "{}", ok[0]);
    assert_eq!(data(&ok[0]), &json!({"N": 0}));
    assert_eq!(seen.counts.load(Ordering::SeqCst), 3);
    assert_eq!(t.metrics().snapshot().retries, 2);
    // Terminal: the error reply with kind, message and context.
    let err = py
        .publish(
            "a",
            &event("test.broken.v1", "b-1", Some("press-line"), json!({})),
        )
        .await;
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["mdcserrorkind"], "STATE_INVALID");
    assert_eq!(err[0]["mdcserrormessage"], "the press is open");
    assert_eq!(err[0]["mdcserrorcontext"], "press=p-1");
    assert_eq!(err[0]["subject"], "press-line");
    assert_eq!(err[0]["correlationid"], "corr-b-1");
    // Kept in the processor's dead-letter stream, under its MQTT commands
    // topic (so `dlq replay` re-injects it over MQTT).
    let redis = microdcs::Redis::open(&r.url()).unwrap();
    let letters = microdcs::dlq::DeadLetters::new(redis.conn.clone(), "test", 100);
    let deadline = tokio::time::Instant::now() + WAIT;
    let kept = loop {
        let kept = letters.list(Some("counter"), 10).await.unwrap_or_default();
        if !kept.is_empty() || tokio::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].kind, "STATE_INVALID");
    assert_eq!(kept[0].message.topic, "app/count/commands");
    // Not processed: a re-send is tried again, not answered as a duplicate.
    let again = py
        .publish(
            "a",
            &event("test.broken.v1", "b-1", Some("press-line"), json!({})),
        )
        .await;
    assert_eq!(again[0]["mdcserrorkind"], "STATE_INVALID");
    assert_eq!(t.metrics().snapshot().duplicates, 0);
    let _ = app.stop(WAIT).await;
}

/// Hex of a request frame `[0, msgid, "publish", <params hex>]`.
fn raw_publish(msgid: u8, params: &str) -> String {
    format!("9400{msgid:02x}a7{}{params}", hex(b"publish"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `depth` arrays of one element each, around a nil.
fn nested(depth: usize) -> String {
    format!("{}c0", "91".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_bombs_and_extension_types_are_answered_with_an_error_and_the_station_keeps_serving()
{
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    py.connect("b").await;

    // Nesting far past any CloudEvent's, below and above rmp-serde's own
    // limit of 1024: each refused with an answer, nothing recursed into.
    for (msgid, depth) in [(21u8, 1000usize), (22, 5000)] {
        let frame = raw_publish(msgid, &format!("92{}c0", nested(depth)));
        let r = py
            .cmd(json!({"op": "send_raw", "conn": "a", "hex": frame}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        let f = py.recv("a").await;
        assert_eq!(f[1], msgid, "the request is answered: {f}");
        let e = f[2].as_str().unwrap_or_default();
        assert!(e.contains("nest"), "{f}");
    }
    // An extension type (fixext1) where an attribute value belongs.
    let ext = format!("9281a4{}d40100c0", hex(b"type"));
    let r = py
        .cmd(json!({"op": "send_raw", "conn": "a", "hex": raw_publish(23, &ext)}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let f = py.recv("a").await;
    assert_eq!(f[1], 23, "the request is answered: {f}");
    assert!(
        f[2].as_str().unwrap_or_default().contains("extension"),
        "{f}"
    );

    // A MessagePack payload whose unknown field is a depth bomb: the
    // handler's decoding must not recurse into it either.
    let mut deep = vec![0x82, 0xa1, b'N', 0x01, 0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91, 1000));
    deep.push(0xc0);
    let mut e = event("test.ping.v1", "deep-1", None, json!(null));
    e["datacontenttype"] = json!("application/msgpack");
    e["data"] = json!({"$bin": base64(&deep)});
    let f = py.call("a", "publish", json!([e, null])).await;
    assert_eq!(f[2], Value::Null, "{f}");
    let replies = f[3].as_array().expect("a list of replies");
    assert_eq!(replies.len(), 1, "{f}");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0, "{f}");
    assert_eq!(replies[0]["mdcserrorkind"], "PAYLOAD_INVALID", "{f}");

    // Both connections still serve.
    for conn in ["a", "b"] {
        let ok = py
            .publish(
                conn,
                &event(
                    "test.ping.v1",
                    &format!("after-{conn}"),
                    None,
                    json!({"N": 1}),
                ),
            )
            .await;
        assert_eq!(data(&ok[0]), &json!({"N": 2}));
    }
    let _ = app.stop(WAIT).await;
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_msgid_out_of_range_or_not_an_integer_is_answered_under_it() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    let ping = event("test.ping.v1", "id-1", None, json!({"N": 1}));
    for msgid in [
        json!(u64::MAX),
        json!(-1),
        json!(u64::from(u32::MAX) + 1),
        json!("req-7"),
    ] {
        py.send("a", json!([0, msgid, "publish", [ping, null]]))
            .await;
        let f = py.recv("a").await;
        assert_eq!(f[0], 1, "a response: {f}");
        assert_eq!(f[1], msgid, "under the msgid sent: {f}");
        let e = f[2].as_str().unwrap_or_default();
        assert!(e.contains("unsigned 32-bit"), "{f}");
    }
    // None of them was processed; the largest valid msgid is.
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0);
    py.send("a", json!([0, u32::MAX, "publish", [ping, null]]))
        .await;
    let f = py.recv("a").await;
    assert_eq!(f[1], u32::MAX, "{f}");
    assert_eq!(f[2], Value::Null, "{f}");
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_half_closing_gets_its_answers_and_an_error_for_a_truncated_request() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    // A whole request, then the first bytes of another, then FIN.
    let ping = event("test.ping.v1", "hc-1", None, json!({"N": 1}));
    py.send("a", json!([0, 31, "publish", [ping, null]])).await;
    let truncated = raw_publish(32, "9281a4");
    let r = py
        .cmd(json!({"op": "send_raw", "conn": "a", "hex": truncated}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = py.cmd(json!({"op": "half_close", "conn": "a"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let mut answers = vec![py.recv("a").await, py.recv("a").await];
    answers.sort_by_key(|f| f[1].as_u64());
    assert_eq!(answers[0][1], 31, "{answers:?}");
    assert_eq!(answers[0][2], Value::Null, "{answers:?}");
    assert_eq!(data(&answers[0][3][0]), &json!({"N": 2}));
    assert_eq!(answers[1][1], 32, "{answers:?}");
    let e = answers[1][2].as_str().unwrap_or_default();
    assert!(e.contains("incomplete"), "{answers:?}");
    assert_eq!(py.recv("a").await, "eof");
    assert!(eventually(WAIT, || t.clients() == 0).await);
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_call_the_call_is_answered_and_calls_work_again_after_restart() {
    init_tracing();
    let (m, mut r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(true);
    let (app, t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    let ping = event("test.ping.v1", "rk-1", None, json!({"N": 1}));
    py.send("a", json!([0, 41, "publish", [ping, null]])).await;
    assert!(eventually(WAIT, || t.in_flight() == 1).await);
    // The handler is running (held by the gate); Redis dies under it.
    r.0.kill();
    seen.gate.add_permits(100);
    let f = py.recv("a").await;
    assert_eq!(f[1], 41, "the call is answered: {f}");
    assert_eq!(f[2], Value::Null, "{f}");
    let replies = f[3].as_array().expect("a list of replies");
    assert_eq!(replies.len(), 1, "{f}");
    // Redis is back: calls are served again.
    r.0.restart().expect("restart redis");
    let mut answered = false;
    for i in 0..30 {
        let replies = py
            .publish(
                "a",
                &event(
                    "test.ping.v1",
                    &format!("rk-after-{i}"),
                    None,
                    json!({"N": 5}),
                ),
            )
            .await;
        if replies.len() == 1 && replies[0].get("mdcserrorkind").is_none() {
            assert_eq!(data(&replies[0]), &json!({"N": 6}));
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(answered, "calls work again once Redis is back");
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_correlation_id_is_answered_and_the_station_keeps_its_mqtt_connection() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let (app, _t, addr) = launch(&m, &r, rpc_settings(), processors(&seen)).await;
    let mut py = Py::start(addr);
    py.connect("a").await;
    // 6 MiB of correlation id, within max_buffer_size (8 MiB); the ping
    // has a scope, so its handler emits an event over MQTT that carries it.
    let mut huge = event("test.ping.v1", "cid-1", Some("cell"), json!({"N": 1}));
    huge["correlationid"] = json!("c".repeat(6 * 1024 * 1024));
    // More than an MQTT string can hold (65 535 bytes): refused where it
    // enters, an error reply, never sent to the broker (which closed the
    // station's connection, and again after each reconnect, since the
    // session kept the packet).
    let f = py.call("a", "publish", json!([huge, null])).await;
    assert_eq!(f[2], Value::Null, "no RPC error");
    let replies = f[3].as_array().expect("a list of replies");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["mdcserrorkind"], "USER_PROPERTY_INVALID");
    let message = replies[0]["mdcserrormessage"].as_str().unwrap_or_default();
    assert!(message.contains("65535"), "{message}");
    assert_eq!(seen.pings.load(Ordering::SeqCst), 0);
    let odd = ["", "x", "\u{e9}", "a/b+c#d"];
    for (i, c) in odd.iter().enumerate() {
        let mut e = event(
            "test.ping.v1",
            &format!("cid-odd-{i}"),
            Some("cell"),
            json!({"N": 1}),
        );
        e["correlationid"] = json!(c);
        let f = py.call("a", "publish", json!([e, null])).await;
        assert_eq!(f[2], Value::Null, "{f}");
    }
    // The station still serves and emits.
    let ok = py
        .publish(
            "a",
            &event("test.ping.v1", "cid-after", Some("cell"), json!({"N": 1})),
        )
        .await;
    assert_eq!(data(&ok[0]), &json!({"N": 2}), "{ok:?}");
    let _ = app.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_connections_than_the_backlog_are_all_served() {
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let seen = Seen::new(false);
    let mut s = rpc_settings();
    s.max_queued_connections = 4;
    let (app, t, addr) = launch(&m, &r, s, processors(&seen)).await;
    let mut py = Py::start(addr);
    let n = 200;
    for i in 0..n {
        py.connect(&format!("c{i}")).await;
    }
    // Every connection pipelines a call before any answer is read.
    for i in 0..n {
        let e = event("test.ping.v1", &format!("many-{i}"), None, json!({"N": i}));
        py.send(&format!("c{i}"), json!([0, 7, "publish", [e, null]]))
            .await;
    }
    for i in 0..n {
        let f = py.recv(&format!("c{i}")).await;
        assert_eq!(f[1], 7, "c{i}: {f}");
        assert_eq!(data(&f[3][0]), &json!({"N": i + 1}), "c{i}: {f}");
    }
    assert_eq!(t.clients(), n);
    assert_eq!(seen.pings.load(Ordering::SeqCst), n);
    let _ = app.stop(WAIT).await;
}
