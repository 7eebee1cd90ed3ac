//! The HTTP endpoints of a station against a real Mosquitto and Redis:
//! `/metrics` (Prometheus text, counters that move with real CloudEvents),
//! `/readyz` through Redis and broker outages, `/healthz`, and a taken port.

use crate::harness::station::{settings, Hosted};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use microdcs::testkit::mqtt::{ce_props, TestClient};
use microdcs::{App, AppError, EventType, Processor, TopicBinding};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    #[serde(rename = "N")]
    n: u32,
}
impl EventType for Ping {
    const TYPE: &'static str = "test.ping.v1";
    const DATASCHEMA: &'static str = "urn:test:ping";
}

async fn ping(p: Ping) -> Ping {
    Ping { n: p.n + 1 }
}

/// A station with one processor (`pinger`, type `test.ping.v1` on
/// `app/test/commands`) and its HTTP server on a port the system chose.
async fn station(m: &Mosquitto, r: &Redis) -> (Hosted, SocketAddr) {
    init_tracing();
    let s = settings(m.port(), "obs-1");
    let url = r.url();
    let (hosted, _t, addr) = Hosted::launch(move || async move {
        let p = Processor::northbound("pinger").handle(ping).build();
        let app = App::builder()
            .mqtt("mqtt", s)
            .redis_url(url, "test")
            .processor(p, TopicBinding::new("app/test"))
            .http("127.0.0.1:0")
            .build()
            .await
            .expect("build app");
        let addr = app.http_addr().expect("http server asked for");
        (app, addr)
    })
    .await;
    (hosted, addr)
}

/// `GET path` over a plain TCP connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "fixed bodies are sent with a length: {head}"
    );
    Ok((status, body.to_owned()))
}

/// A sample: metric name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// Parses Prometheus text exposition 0.0.4 strictly: every line is a
/// `# HELP`, a `# TYPE` (before the family's samples, once) or a sample of
/// a declared family with well-formed labels and a float value.
fn parse_prometheus(text: &str) -> Result<BTreeMap<Series, f64>, String> {
    fn is_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next(), parts.next());
            let name = name.filter(|x| is_name(x)).ok_or_else(|| at("bad name"))?;
            match kw {
                Some("HELP") => {}
                Some("TYPE") => {
                    let ty = parts.next().ok_or_else(|| at("no type"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(at("unknown type"));
                    }
                    if types.insert(name.to_owned(), ty.to_owned()).is_some() {
                        return Err(at("second TYPE"));
                    }
                }
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(at("no value")),
        };
        if !is_name(name) {
            return Err(at("bad metric name"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(at("sample before its TYPE"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(r) = l.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = l.find('=').ok_or_else(|| at("label without ="))?;
                let key = &l[..eq];
                if !is_name(key) {
                    return Err(at("bad label name"));
                }
                let mut chars = l[eq + 1..].char_indices();
                if chars.next().map(|c| c.1) != Some('"') {
                    return Err(at("label value not quoted"));
                }
                let mut value = String::new();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|c| c.1) {
                            Some('n') => value.push('\n'),
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            _ => return Err(at("bad escape")),
                        },
                        '"' => {
                            end = Some(eq + 1 + i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                let end = end.ok_or_else(|| at("unterminated label value"))?;
                if labels.insert(key.to_owned(), value).is_some() {
                    return Err(at("repeated label"));
                }
                l = &l[end..];
                l = l.strip_prefix(',').unwrap_or(l);
            }
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before value"))?
            .split(' ');
        let value = match fields.next().ok_or_else(|| at("no value"))? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| at("bad value"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields"));
        }
        if out.insert((name.to_owned(), labels), value).is_some() {
            return Err(at("repeated series"));
        }
    }
    Ok(out)
}

/// The sum of every series of `name` whose labels include `with`.
fn sum(m: &BTreeMap<Series, f64>, name: &str, with: &[(&str, &str)]) -> f64 {
    m.iter()
        .filter(|((n, l), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn metrics(addr: SocketAddr) -> BTreeMap<Series, f64> {
    let (status, body) = get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// Polls `/metrics` until `want` holds (or 30 s pass); the last reading.
async fn metrics_until(
    addr: SocketAddr,
    want: impl Fn(&BTreeMap<Series, f64>) -> bool,
) -> BTreeMap<Series, f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(addr).await;
        if want(&m) || tokio::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Readiness as (status, names of the failing checks).
async fn readiness(addr: SocketAddr) -> (u16, Vec<String>) {
    let (status, body) = get(addr, "/readyz").await.expect("GET /readyz");
    let v: serde_json::Value = serde_json::from_str(&body).expect("readyz is JSON");
    let failing = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    (status, failing)
}

/// Polls readiness until `want(status, failing)` holds (or 30 s pass).
async fn ready_until(
    addr: SocketAddr,
    want: impl Fn(u16, &[String]) -> bool,
) -> (u16, Vec<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, f) = readiness(addr).await;
        if want(s, &f) || tokio::time::Instant::now() > deadline {
            return (s, f);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_processed_messages() {
    let (m, r) = (Mosquitto::start(), Redis::start());
    let (st, addr) = station(&m, &r).await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    for i in 0..3 {
        let id = format!("p{i}");
        let props = ce_props("test.ping.v1", &id, None, Some("mes/replies"), None);
        mes.publish("app/test/commands", r#"{"N":1}"#, props).await;
        mes.recv(WAIT).await.expect("reply");
    }
    // The same id again: a duplicate, answered with the stored reply.
    let props = ce_props("test.ping.v1", "p0", None, Some("mes/replies"), None);
    mes.publish("app/test/commands", r#"{"N":1}"#, props).await;
    mes.recv(WAIT).await.expect("replayed reply");
    // A type nobody handles: dead-lettered, its type bounded to "other".
    let props = ce_props("test.unknown.v1", "u1", None, Some("mes/replies"), None);
    mes.publish("app/test/commands", r#"{"N":1}"#, props).await;
    mes.recv(WAIT).await.expect("error reply");

    let ping = [
        ("microdcs_processor", "pinger"),
        ("cloudevents_event_type", "test.ping.v1"),
    ];
    // The dead letter is counted once its PUBACK is in: after the reply.
    let seen = metrics_until(addr, |m| {
        sum(m, "microdcs_messages_dead_lettered_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(sum(&seen, "microdcs_messages_processed_total", &ping), 3.0);
    assert_eq!(sum(&seen, "microdcs_messages_duplicates_total", &ping), 1.0);
    assert_eq!(
        sum(&seen, "messaging_process_duration_seconds_count", &ping),
        4.0
    );
    assert_eq!(
        sum(
            &seen,
            "microdcs_messages_dead_lettered_total",
            &[
                ("cloudevents_event_type", "other"),
                ("error_type", "UNKNOWN_PAYLOAD_TYPE")
            ]
        ),
        1.0,
        "{seen:?}"
    );
    assert_eq!(
        sum(
            &seen,
            "messaging_client_consumed_messages_total",
            &[("microdcs_transport", "mqtt")]
        ),
        5.0
    );
    assert_eq!(sum(&seen, "microdcs_replies_total", &[]), 5.0);
    assert_eq!(
        sum(
            &seen,
            "microdcs_mqtt_connected",
            &[("microdcs_transport", "mqtt")]
        ),
        1.0
    );
    assert_eq!(sum(&seen, "microdcs_redis_connected", &[]), 1.0);
    assert!(
        !seen
            .keys()
            .any(|(_, l)| l.values().any(|v| v == "p0" || v == "u1")),
        "no message ids as labels"
    );
    st.stop(Duration::from_secs(20))
        .await
        .expect("stops")
        .expect("ran")
        .expect("ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_redis_while_it_is_down_and_is_ready_again_after_its_restart() {
    let (m, mut r) = (Mosquitto::start(), Redis::start());
    let (st, addr) = station(&m, &r).await;
    let (status, failing) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!((status, failing), (200, vec![]));
    r.kill();
    let (status, failing) = ready_until(addr, |s, _| s == 503).await;
    assert_eq!((status, failing), (503, vec!["redis".to_owned()]));
    let (status, _) = get(addr, "/healthz").await.expect("GET /healthz");
    assert_eq!(status, 200, "losing Redis is not a reason to restart");
    r.restart();
    let (status, failing) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!((status, failing), (200, vec![]));
    st.stop(Duration::from_secs(20))
        .await
        .expect("stops")
        .expect("ran")
        .expect("ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_broker_while_it_is_down_and_is_ready_again_after_its_restart() {
    let (mut m, r) = (Mosquitto::start(), Redis::start());
    let (st, addr) = station(&m, &r).await;
    let (status, _) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!(status, 200);
    m.kill();
    let (status, failing) = ready_until(addr, |s, _| s == 503).await;
    assert_eq!((status, failing), (503, vec!["mqtt:mqtt".to_owned()]));
    m.restart();
    let (status, failing) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!((status, failing), (200, vec![]));
    let seen = metrics(addr).await;
    assert!(sum(&seen, "microdcs_mqtt_reconnects_total", &[]) >= 1.0);
    st.stop(Duration::from_secs(20))
        .await
        .expect("stops")
        .expect("ran")
        .expect("ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ok_while_running_and_a_taken_port_fails_the_start_naming_it() {
    let (m, r) = (Mosquitto::start(), Redis::start());
    let (st, addr) = station(&m, &r).await;
    let (status, body) = get(addr, "/healthz").await.expect("GET /healthz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["ok"], true);
    assert!(body.contains("service:redis-probe"), "{body}");

    // A second app on the same port does not start, and says where.
    let taken = addr.to_string();
    let err = App::builder()
        .mqtt("mqtt", settings(m.port(), "obs-2"))
        .http(taken.clone())
        .build()
        .await
        .err()
        .expect("a taken port is a start-up error");
    assert!(
        matches!(err, AppError::Http { ref addr, .. } if *addr == taken),
        "{err}"
    );
    assert!(err.to_string().contains(&taken), "{err}");
    st.stop(Duration::from_secs(20))
        .await
        .expect("stops")
        .expect("ran")
        .expect("ok");
}

/// A two-step recipe: `clamp` then `tighten`, one command each.
fn two_steps() -> serde_json::Value {
    use crate::harness::recipes::push_command;
    serde_json::json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "tighten"}],
        "Transitions": [{"Source": "load", "Target": "tighten", "Condition": "always"}],
        "Actions": [
            push_command("clamp", "load", "N", "com.example.obs.clamp.v1", 0),
            push_command("tighten", "tighten", "N", "com.example.obs.tighten.v1", 0)
        ]
    })
}

on_each_backend!(station_metrics_show_jobs_by_state_steps_entered_and_retained_publishes);
/// The Redis-held gauges read by key (one slot per scope on a cluster),
/// the engine's and publisher's counters, and readiness of a whole
/// station, on one Redis and on a Redis Cluster.
async fn station_metrics_show_jobs_by_state_steps_entered_and_retained_publishes(backend: Backend) {
    use crate::harness::equipment::Equipment;
    use crate::harness::jobs::{self, order, state_texts, Mes};
    use crate::harness::recipes::store_recipe;
    use std::sync::Arc;
    init_tracing();
    let (m, r) = (Mosquitto::start(), Store::start(backend));
    let port = microdcs::testkit::devenv::free_port().expect("free port");
    let mut env = jobs::env(m.port(), 0, "obs-st");
    r.configure(&mut env);
    jobs::set(&mut env, "APP_JOBS_CHECK_WORK_MASTER", "true");
    jobs::set(&mut env, "APP_IS_PUBLISHER_INSTANCE", "true");
    jobs::set(&mut env, "APP_HTTP_HOSTNAME", "127.0.0.1");
    jobs::set(&mut env, "APP_HTTP_PORT", &port.to_string());
    let station = jobs::start(env).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let answer: crate::harness::equipment::Answer =
        Arc::new(|_: &str, _: &serde_json::Value| Some(Ok(serde_json::json!({"ok": true}))));
    let _equipment = Equipment::start(m.port(), answer).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_recipe(&mut mes, "line-1", two_steps()).await;
    let status = mes
        .status(
            "StoreAndStart",
            "line-1",
            serde_json::json!({"JobOrder": order("j-1")}),
        )
        .await;
    assert_eq!(status, 1, "accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ended = false;
    while !ended && tokio::time::Instant::now() < deadline {
        if let Some((_, ev)) = mes.next_event().await {
            ended =
                ev["JobOrder"]["JobOrderID"] == "j-1" && state_texts(&ev["JobState"])[0] == "Ended";
        }
    }
    assert!(ended, "the job ran to Ended");

    let ended_in_line_1 = [
        ("microdcs_scope", "line-1"),
        ("microdcs_job_state", "Ended"),
    ];
    let seen = metrics_until(addr, |m| {
        sum(m, "microdcs_jobs", &ended_in_line_1) == 1.0
            && sum(m, "microdcs_publisher_retained_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(
        sum(&seen, "microdcs_jobs", &ended_in_line_1),
        1.0,
        "{seen:?}"
    );
    assert_eq!(
        sum(&seen, "microdcs_jobs", &[("microdcs_scope", "line-1")]),
        1.0,
        "one job in all: {seen:?}"
    );
    for step in ["load", "tighten"] {
        assert!(
            sum(
                &seen,
                "microdcs_sfc_steps_entered_total",
                &[("microdcs_sfc_step", step)]
            ) >= 1.0,
            "{step} entered: {seen:?}"
        );
    }
    // Each step entered once and left once (the job ended): counted once
    // per committed write, not per delivery.
    assert_eq!(
        sum(
            &seen,
            "microdcs_sfc_steps_entered_total",
            &[("microdcs_sfc_step", "load")]
        ),
        1.0
    );
    for step in ["load", "tighten"] {
        assert_eq!(
            sum(
                &seen,
                "microdcs_sfc_step_duration_seconds_count",
                &[("microdcs_sfc_step", step)]
            ),
            1.0,
            "{step} left once: {seen:?}"
        );
    }
    assert!(sum(&seen, "microdcs_publisher_retained_total", &[]) >= 1.0);
    assert!(
        seen.keys().any(|(n, l)| n == "microdcs_sfc_work_pending"
            && l.get("microdcs_scope").map(String::as_str) == Some("line-1")),
        "engine work gauge per scope: {seen:?}"
    );
    assert!(
        !seen.keys().any(|(_, l)| l.values().any(|v| v == "j-1")),
        "no job ids as labels"
    );
    let (status, failing) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!((status, failing), (200, vec![]));
    let (_, body) = get(addr, "/readyz").await.expect("readyz");
    for service in ["service:sfc-engine", "service:mes-publisher"] {
        assert!(body.contains(service), "{body}");
    }
    let (status, body) = get(addr, "/healthz").await.expect("healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sfc-engine:loop"), "{body}");
    station.stop().await;
}

/// A minimal OTLP/HTTP receiver: answers every POST with 200 and hands
/// over (path, body) of each request.
async fn otlp_receiver() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let _ = tx.send((path, body));
                    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_reach_a_receiver_over_http() {
    let (receiver, mut bodies) = otlp_receiver().await;
    // This test runs in a process of its own (nextest): the environment is
    // its own too.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"));
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "200");
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let s = settings(m.port(), "otlp-1");
    let url = r.url();
    let (st, _t, ()) = Hosted::launch(move || async move {
        let p = Processor::northbound("pinger").handle(ping).build();
        let app = App::builder()
            .mqtt("mqtt", s)
            .redis_url(url, "test")
            .processor(p, TopicBinding::new("app/test"))
            .otlp_metrics(true)
            .build()
            .await
            .expect("build app");
        (app, ())
    })
    .await;
    let mut mes = TestClient::connect(m.port(), "mes").await;
    mes.subscribe("mes/replies").await;
    let props = ce_props("test.ping.v1", "o1", None, Some("mes/replies"), None);
    mes.publish("app/test/commands", r#"{"N":1}"#, props).await;
    mes.recv(WAIT).await.expect("reply");
    let want: &[u8] = b"microdcs.messages.processed";
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((path, body)) = bodies.recv().await {
            if path == "/v1/metrics" && body.windows(want.len()).any(|w| w == want) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "an export to /v1/metrics carried the processed counter"
    );
    st.stop(Duration::from_secs(20))
        .await
        .expect("stops")
        .expect("ran")
        .expect("ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_started_without_redis_is_not_ready_until_redis_comes() {
    let (m, mut r) = (Mosquitto::start(), Redis::start());
    r.kill();
    // Starts anyway: Redis is retried, not fatal.
    let (st, addr) = station(&m, &r).await;
    let (status, failing) = ready_until(addr, |s, f| s == 503 && f == ["redis"]).await;
    assert_eq!((status, failing), (503, vec!["redis".to_owned()]));
    // Once the first PING failed (not only "not probed yet"), the detail
    // says where Redis was looked for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut body = String::new();
    while tokio::time::Instant::now() < deadline && !body.contains("PING to 127.0.0.1:") {
        body = get(addr, "/readyz").await.expect("readyz").1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.contains("PING to 127.0.0.1:"),
        "the detail says where: {body}"
    );
    r.restart();
    let (status, failing) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!((status, failing), (200, vec![]));
    st.stop(Duration::from_secs(20))
        .await
        .expect("stops")
        .expect("ran")
        .expect("ok");
}

/// `/readyz` waits for the OPC UA port (`opcua:listening`): a server that
/// cannot start (its PKI directory cannot be created) keeps the replica
/// unready and takes liveness down, with the reason in the log; one that
/// listens is ready.
#[cfg(feature = "opcua")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_opcua_server_to_listen() {
    use crate::harness::jobs;
    init_tracing();
    let (m, r) = (Mosquitto::start(), Redis::start());
    let start = |pki: String| {
        let http = microdcs::testkit::devenv::free_port().expect("free port");
        let opcua = microdcs::testkit::devenv::free_port().expect("free port");
        let mut env = jobs::env(m.port(), r.0.port(), "obs-opcua");
        for (k, v) in [
            ("APP_HTTP_HOSTNAME", "127.0.0.1".to_owned()),
            ("APP_HTTP_PORT", http.to_string()),
            ("APP_OPCUA_PORT", opcua.to_string()),
            ("APP_OPCUA_BIND", "127.0.0.1".into()),
            ("APP_OPCUA_HOSTNAME", "127.0.0.1".into()),
            ("APP_OPCUA_ANONYMOUS", "true".into()),
            ("APP_OPCUA_PKI_DIR", pki),
        ] {
            jobs::set(&mut env, k, &v);
        }
        let addr: SocketAddr = format!("127.0.0.1:{http}").parse().expect("addr");
        (env, addr)
    };

    let (env, addr) = start("/dev/null/pki".into());
    let station = jobs::start(env).await;
    let (status, failing) = ready_until(addr, |_, f| f.iter().any(|c| c == "service:opcua")).await;
    assert_eq!(status, 503, "{failing:?}");
    assert!(
        failing.contains(&"opcua:listening".to_owned()),
        "never listened: {failing:?}"
    );
    let (status, _) = get(addr, "/healthz").await.expect("GET /healthz");
    assert_eq!(status, 503, "a failed server is a reason to restart");
    station.stop().await;

    let pki = tempfile::tempdir().expect("temporary directory");
    let (env, addr) = start(pki.path().display().to_string());
    let station = jobs::start(env).await;
    let (status, failing) = ready_until(addr, |s, _| s == 200).await;
    assert_eq!((status, failing), (200, vec![]));
    station.stop().await;
}
