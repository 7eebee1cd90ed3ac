//! The webhook sink against a real HTTP receiver (an axum server on a free
//! loopback port, started here) that records every request, checks its
//! signature and reads it back with the CloudEvents SDK's HTTP binding;
//! real Mosquitto and Redis, the station built from configuration.

use crate::harness::jobs::{self, order, state_texts, JobStation, Mes, STATUS};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use microdcs::jobs::Internal;
use microdcs::webhook::{verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use microdcs::CloudEvent;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const SECRET: &str = "webhook-test-secret";
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The event, read back through the SDK's HTTP binding.
    pub(crate) event: CloudEvent,
    job: String,
    states: Vec<String>,
    /// The signature verified (secret, timestamp within 5 minutes).
    pub(crate) signed: bool,
    /// The status the receiver answered.
    answered: u16,
    /// The names of the request's headers.
    headers: Vec<String>,
    /// Its `Authorization` header.
    authorization: Option<String>,
}

/// What the receiver answers: 503 while `down`, or for requests about the
/// `held` job; 204 otherwise.
#[derive(Default)]
struct Behaviour {
    down: bool,
    held: Option<String>,
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    behaviour: Behaviour,
}

#[derive(Clone, Default)]
pub(crate) struct Receiver {
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// Starts the receiver on a free loopback port; its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = self.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    /// The receiver's routes (`POST /hook`), for any listener.
    pub(crate) fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.clone())
    }

    fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.inner.lock().unwrap().behaviour);
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// The accepted requests of `job`, in arrival order.
    fn accepted(&self, job: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.job == job && s.answered < 300)
            .collect()
    }

    /// Waits until `job` has `n` accepted requests.
    pub(crate) async fn wait_accepted(&self, job: &str, n: usize) -> Vec<Seen> {
        let ok = crate::harness::eventually(WAIT, || self.accepted(job).len() >= n).await;
        let got = self.accepted(job);
        assert!(ok, "{job}: {} of {n} accepted: {got:#?}", got.len());
        got
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = verify(
        SECRET.as_bytes(),
        &text("ce-id"),
        &text(TIMESTAMP_HEADER),
        &text(SIGNATURE_HEADER),
        &body,
        now,
        300,
    )
    .is_ok();
    let sdk = cloudevents::binding::http::to_event(&headers, body.to_vec())
        .expect("a binary-mode CloudEvent");
    let event = CloudEvent::try_from(sdk).expect("convertible");
    let payload: Value = event.data_as().expect("JSON status event");
    let job = payload["JobOrder"]["JobOrderID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut inner = r.inner.lock().unwrap();
    let fail = inner.behaviour.down || inner.behaviour.held.as_deref() == Some(job.as_str());
    let status = if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    inner.seen.push(Seen {
        event,
        job,
        states: state_texts(&payload["JobState"]),
        signed,
        answered: status.as_u16(),
        headers: headers.keys().map(|k| k.as_str().to_owned()).collect(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    status
}

pub(crate) fn webhook_env(env: &mut Vec<(String, String)>, url: &str, attempts: u32) {
    jobs::set(env, "APP_WEBHOOK_URLS", url);
    jobs::set(env, "APP_WEBHOOK_SECRET", SECRET);
    jobs::set(env, "APP_WEBHOOK_MAX_ATTEMPTS", &attempts.to_string());
    jobs::set(env, "APP_WEBHOOK_BACKOFF_INITIAL_MS", "20");
    jobs::set(env, "APP_WEBHOOK_BACKOFF_MAX_MS", "200");
}

/// Runs `job` of `scope`: StoreAndStart, Begin (Running), Complete with a
/// job response (Ended).
async fn run_job(station: &JobStation, mes: &mut Mes, scope: &str, job: &str) {
    assert_eq!(
        mes.status("StoreAndStart", scope, json!({"JobOrder": order(job)}))
            .await,
        1
    );
    let m = station.jobs.clone().expect("processor");
    let (scope, job) = (scope.to_string(), job.to_string());
    station
        .on_runtime(async move {
            m.internal(&scope, &job, Internal::Begin, None, &format!("begin-{job}"))
                .await
                .unwrap();
            let resp = serde_json::value::to_raw_value(
                &json!({"JobResponseID": format!("r-{job}"), "JobOrderID": job}),
            )
            .unwrap();
            m.internal(
                &scope,
                &job,
                Internal::Complete,
                Some(&resp),
                &format!("done-{job}"),
            )
            .await
            .unwrap();
        })
        .await;
}

/// The change entries of `job` in `scope`'s change stream, as (entry id,
/// kind).
async fn changes(conn: &mut microdcs::RedisConnection, scope: &str, job: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("t:{{{scope}}}:changes"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .filter(|e| e.get::<String>("job").as_deref() == Some(job))
        .map(|e| e.id)
        .collect()
}

fn ids(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.event.id.clone()).collect()
}

on_each_backend!(job_events_arrive_signed_in_order_as_binary_cloudevents);
async fn job_events_arrive_signed_in_order_as_binary_cloudevents(backend: Backend) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let mut env = jobs::env(m.port(), 0, "w1");
    r.configure(&mut env);
    webhook_env(&mut env, &url, 5);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;

    run_job(&station, &mut mes, "line-1", "j1").await;
    let mut conn = r.connection();
    let entries = changes(&mut conn, "line-1", "j1").await;
    assert_eq!(entries.len(), 3, "StoreAndStart, Begin, Complete");
    let got = receiver.wait_accepted("j1", entries.len()).await;

    // One event per change, in the job's order, ids from the change entries.
    let want: Vec<String> = entries.iter().map(|e| format!("line-1:{e}")).collect();
    assert_eq!(ids(&got), want);
    assert_eq!(got.last().unwrap().states, ["Ended", "Completed"]);
    assert_eq!(got[1].states.first().map(String::as_str), Some("Running"));
    for s in &got {
        assert!(s.signed, "signature verifies: {s:?}");
        // Binary mode: the attributes as `ce-` headers, the payload as body.
        for h in [
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-specversion",
            "ce-subject",
            "ce-time",
            "ce-dataschema",
            "content-type",
            TIMESTAMP_HEADER,
            SIGNATURE_HEADER,
        ] {
            assert!(s.headers.iter().any(|x| x == h), "{h} in {:?}", s.headers);
        }
        assert!(s
            .event
            .dataschema
            .as_deref()
            .unwrap()
            .starts_with("https://"));
        assert_eq!(s.event.ty, STATUS);
        assert_eq!(s.event.source, "station/w1");
        assert_eq!(s.event.subject.as_deref(), Some("line-1"));
        assert_eq!(s.event.specversion, "1.0");
        assert_eq!(
            s.event.datacontenttype.as_deref(),
            Some("application/json; charset=utf-8")
        );
        assert!(s.event.time.is_some());
    }
    let last: Value = got.last().unwrap().event.data_as().unwrap();
    assert_eq!(last["JobResponse"]["JobResponseID"], "r-j1");
    // Nothing twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.seen().len(), entries.len());
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_at_first_gets_the_events_later_in_order_without_holding_up_other_jobs()
{
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let url = receiver.start().await;
    // Requests about `slow` fail until `fast` is through (at least twice).
    receiver.set(|b| b.held = Some("slow".into()));
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 1000);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    run_job(&station, &mut mes, "cell", "slow").await;
    run_job(&station, &mut mes, "cell", "fast").await;

    let mut conn = microdcs::Redis::open(&r.url()).unwrap().conn;
    let want = |job: &str, entries: Vec<String>| -> Vec<String> {
        assert_eq!(entries.len(), 3, "{job}");
        entries.into_iter().map(|e| format!("cell:{e}")).collect()
    };
    // `fast` is delivered while every request about `slow` fails.
    let fast = receiver.wait_accepted("fast", 3).await;
    assert_eq!(
        ids(&fast),
        want("fast", changes(&mut conn, "cell", "fast").await)
    );
    assert!(receiver.accepted("slow").is_empty());
    let failed = |r: &Receiver| r.seen().iter().filter(|s| s.job == "slow").count();
    assert!(crate::harness::eventually(WAIT, || failed(&receiver) >= 2).await);

    // The receiver recovers: `slow`'s events arrive, in order, once each.
    receiver.set(|b| b.held = None);
    let slow = receiver.wait_accepted("slow", 3).await;
    assert_eq!(
        ids(&slow),
        want("slow", changes(&mut conn, "cell", "slow").await)
    );
    let tried: Vec<(String, u16)> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.job == "slow")
        .map(|s| (s.event.id, s.answered))
        .collect();
    let failures = tried.len() - 3;
    assert!(failures >= 2, "{tried:?}");
    // Every failure was at the first event: the next waited for it.
    assert!(
        tried[..failures]
            .iter()
            .all(|(id, a)| *id == slow[0].event.id && *a == 503),
        "{tried:?}"
    );
    assert!(slow.iter().chain(&fast).all(|s| s.signed));
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_past_the_bound_gets_a_dead_letter_and_the_next_event_goes() {
    init_tracing();
    let metrics = microdcs::metrics::install(true, false)
        .expect("metrics")
        .expect("a Prometheus reader");
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let url = receiver.start().await;
    receiver.set(|b| b.down = true);
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 3);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", "cell", json!({"JobOrder": order("d1")}))
            .await,
        1
    );
    // Three attempts, then the dead letter.
    let letters =
        microdcs::dlq::DeadLetters::new(microdcs::Redis::open(&r.url()).unwrap().conn, "t", 100);
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while found.is_empty() && tokio::time::Instant::now() < deadline {
        found = letters.list(Some("webhook"), 10).await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found.len(), 1, "one dead letter: {found:?}");
    let letter = &found[0];
    assert_eq!(letter.kind, "COMMUNICATION_ERROR");
    assert!(
        letter.reason.contains("after 3 attempts") && letter.reason.contains("503"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.message.topic, url);
    assert!(letter
        .message
        .properties
        .user_properties
        .iter()
        .any(|(k, v)| k == "ce-type" && v == STATUS));
    assert_eq!(receiver.seen().len(), 3);
    let text = metrics.prometheus_text().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("microdcs_webhook_deliveries_total")
                && l.contains("dead_lettered")
                && l.ends_with(" 1")),
        "{text}"
    );

    // The receiver is back: the job's next event is delivered.
    receiver.set(|b| b.down = false);
    assert_eq!(
        mes.status("Start", "cell", json!({"JobOrderID": "d1"}))
            .await,
        1
    );
    let got = receiver.wait_accepted("d1", 1).await;
    assert_eq!(
        got[0].states.first().map(String::as_str),
        Some("AllowedToStart")
    );
    assert!(got[0].signed);
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_killed_with_pending_deliveries_delivers_them_after_restart() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let url = receiver.start().await;
    receiver.set(|b| b.down = true);
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 1000);
    let station = jobs::start(env.clone()).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    run_job(&station, &mut mes, "cell", "k1").await;
    run_job(&station, &mut mes, "cell", "k2").await;

    // Every change queued (the sink's cursor at the stream's end) and the
    // receiver tried, then the station dies.
    let mut conn = microdcs::Redis::open(&r.url()).unwrap().conn;
    let last_entry = changes(&mut conn, "cell", "k2").await.pop().unwrap();
    let mut queued = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !queued && tokio::time::Instant::now() < deadline {
        let cursor: Option<String> = redis::cmd("GET")
            .arg("t:{cell}:webhook:cursor")
            .query_async(&mut conn)
            .await
            .unwrap();
        queued = cursor.as_deref() == Some(last_entry.as_str())
            && receiver.seen().iter().any(|s| s.job == "k2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queued, "all changes queued before the crash");
    station.crash();
    let failed_before = receiver.seen().len();
    assert!(receiver.seen().iter().all(|s| s.answered == 503));

    receiver.set(|b| b.down = false);
    let station = jobs::start(env).await;
    for job in ["k1", "k2"] {
        let got = receiver.wait_accepted(job, 3).await;
        let want: Vec<String> = changes(&mut conn, "cell", job)
            .await
            .into_iter()
            .map(|e| format!("cell:{e}"))
            .collect();
        assert_eq!(ids(&got), want, "{job}");
        assert!(got.iter().all(|s| s.signed));
    }
    assert!(receiver.seen().len() > failed_before);
    station.stop().await;
}

#[test]
fn webhook_settings_are_shown_with_the_secret_hidden_and_checked() {
    use microdcs::config::Config;
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("POD_ID".to_string(), "a".to_string())])
            .collect()
    };
    let c = Config::from_sources(
        None,
        env(&[
            (
                "APP_WEBHOOK_URLS",
                "http://mes.local/hook, http://dash.local:8080/in",
            ),
            ("APP_WEBHOOK_SECRET", "top-secret"),
            ("APP_WEBHOOK_EVENT_TYPES", "status"),
        ]),
    )
    .expect("valid");
    assert_eq!(
        c.webhooks.urls,
        ["http://mes.local/hook", "http://dash.local:8080/in"]
    );
    assert_eq!(c.webhooks.event_types, ["status"]);
    let out = c.redacted_toml();
    assert!(out.contains("[webhooks]"), "{out}");
    assert!(!out.contains("top-secret"), "{out}");
    assert!(out.contains("secret = \"***\""), "{out}");
    assert!(!format!("{c:?}").contains("top-secret"));

    // URLs without a secret, a URL that is not HTTP, a client certificate
    // without its key, an unknown event type.
    for (pairs, says) in [
        (
            vec![("APP_WEBHOOK_URLS", "http://mes.local/hook")],
            "signing secret",
        ),
        (
            vec![
                ("APP_WEBHOOK_URLS", "ftp://mes.local/"),
                ("APP_WEBHOOK_SECRET", "s"),
            ],
            "http://",
        ),
        (
            vec![("APP_WEBHOOK_TLS_CLIENT_CERT_PATH", "/etc/hook.crt")],
            "webhooks.tls_client_key_path",
        ),
        (vec![("APP_WEBHOOK_EVENT_TYPES", "status,alarm")], "alarm"),
    ] {
        let e = Config::from_sources(None, env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
    // Off by default.
    assert!(Config::from_sources(None, env(&[]))
        .unwrap()
        .webhooks
        .urls
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_selected_event_types_are_sent() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 5);
    jobs::set(&mut env, "APP_WEBHOOK_EVENT_TYPES", "progress");
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("StoreAndStart", "cell", json!({"JobOrder": order("p1")}))
            .await,
        1
    );
    let jm = station.jobs.clone().expect("processor");
    station
        .on_runtime(async move {
            jm.internal("cell", "p1", Internal::Begin, None, "begin-p1")
                .await
                .unwrap();
            let resp = serde_json::value::to_raw_value(
                &json!({"JobResponseID": "r-p1", "JobOrderID": "p1", "PartsDone": 7}),
            )
            .unwrap();
            jm.set_response("cell", "p1", &resp, "progress-p1")
                .await
                .unwrap();
        })
        .await;
    // The progress update came after the two transitions in the job's
    // queue: had they been sent, they would have arrived first.
    let got = receiver.wait_accepted("p1", 1).await;
    assert_eq!(receiver.seen().len(), 1, "{got:#?}");
    let data: Value = got[0].event.data_as().unwrap();
    assert_eq!(data["JobResponse"]["PartsDone"], 7);
    assert_eq!(got[0].states.first().map(String::as_str), Some("Running"));
    station.stop().await;
}

/// Runs `job` through the job manager of `station` alone (no MQTT):
/// Store and start, Begin, Complete.
async fn run_job_directly(station: &JobStation, scope: &str, job: &str) {
    let m = station.jobs.clone().expect("processor");
    let (scope, job) = (scope.to_string(), job.to_string());
    station
        .on_runtime(async move {
            let started = m
                .store_order(&scope, &order(&job), true, format!("store-{job}").as_str())
                .await
                .unwrap();
            assert_eq!(started.status.value(), 1, "NoError: {:?}", started.reason);
            m.internal(&scope, &job, Internal::Begin, None, &format!("begin-{job}"))
                .await
                .unwrap();
            m.internal(
                &scope,
                &job,
                Internal::Complete,
                None,
                &format!("done-{job}"),
            )
            .await
            .unwrap();
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_several_replicas_delivers_and_another_takes_over_when_it_dies() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let start = |instance: &'static str| {
        let mut env = jobs::env(m.port(), r.0.port(), instance);
        webhook_env(&mut env, &url, 1000);
        jobs::start(env)
    };
    let mut stations = vec![("w1", start("w1").await), ("w2", start("w2").await)];
    let mut conn = microdcs::Redis::open(&r.url()).unwrap().conn;

    // Changes made on both replicas: each delivered once, in order.
    run_job_directly(&stations[0].1, "cell", "a").await;
    run_job_directly(&stations[1].1, "cell", "b").await;
    for job in ["a", "b"] {
        let got = receiver.wait_accepted(job, 3).await;
        let want: Vec<String> = changes(&mut conn, "cell", job)
            .await
            .into_iter()
            .map(|e| format!("cell:{e}"))
            .collect();
        assert_eq!(ids(&got), want, "{job}");
    }
    // `a` was through before `b` was waited for: a second sink would have
    // sent its copies by now.
    assert_eq!(receiver.seen().len(), 6, "{:#?}", receiver.seen());

    // The owner of the sink dies; the other replica takes over (after the
    // lock's 15 s expiry) and delivers what comes next.
    let owner: String = redis::cmd("GET")
        .arg("t:webhook:lock")
        .query_async(&mut conn)
        .await
        .unwrap();
    let i = stations
        .iter()
        .position(|(n, _)| *n == owner)
        .expect("an owner");
    let (_, dead) = stations.remove(i);
    dead.crash();
    let (survivor, station) = stations.pop().unwrap();
    run_job_directly(&station, "cell", "c").await;
    let got = receiver.wait_accepted("c", 3).await;
    assert_eq!(got.last().unwrap().states, ["Ended", "Completed"]);
    let now_owner: String = redis::cmd("GET")
        .arg("t:webhook:lock")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(now_owner, survivor);
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let url = receiver.start().await;
    // A user name with a space and a password with an `@`, percent-encoded
    // as a URL must have them.
    let with_credentials = url.replacen("http://", "http://mes%20user:s3cr%40t@", 1);
    receiver.set(|b| b.down = true);
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &with_credentials, 2);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", "cell", json!({"JobOrder": order("c1")}))
            .await,
        1
    );
    let letters =
        microdcs::dlq::DeadLetters::new(microdcs::Redis::open(&r.url()).unwrap().conn, "t", 100);
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while found.is_empty() && tokio::time::Instant::now() < deadline {
        found = letters.list(Some("webhook"), 10).await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found.len(), 1, "one dead letter: {found:?}");
    // The dead letter names the URL, without its password.
    let letter = &found[0];
    assert!(!format!("{letter:?}").contains("s3cr"), "{letter:?}");
    assert_eq!(
        letter.message.topic,
        url.replacen("http://", "http://mes%20user:***@", 1)
    );

    receiver.set(|b| b.down = false);
    assert_eq!(
        mes.status("Start", "cell", json!({"JobOrderID": "c1"}))
            .await,
        1
    );
    receiver.wait_accepted("c1", 1).await;
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("mes user:s3cr@t")
    );
    let seen = receiver.seen();
    assert!(seen.len() >= 3, "{seen:#?}");
    for s in &seen {
        assert_eq!(s.authorization.as_deref(), Some(basic.as_str()), "{s:#?}");
    }
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_costs_a_timeout_per_attempt_then_a_dead_letter() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    // Accepts connections, reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 2);
    jobs::set(&mut env, "APP_WEBHOOK_TIMEOUT_MS", "300");
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", "cell", json!({"JobOrder": order("h1")}))
            .await,
        1
    );
    let letters =
        microdcs::dlq::DeadLetters::new(microdcs::Redis::open(&r.url()).unwrap().conn, "t", 100);
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while found.is_empty() && tokio::time::Instant::now() < deadline {
        found = letters.list(Some("webhook"), 10).await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found.len(), 1, "one dead letter: {found:?}");
    let reason = found[0].reason.to_lowercase();
    assert!(
        reason.contains("after 2 attempts") && reason.contains("timed out"),
        "{reason}"
    );
    assert!(held.lock().unwrap().len() >= 2);
    // The station's MQTT side never waited for it.
    assert_eq!(
        mes.status("Store", "cell", json!({"JobOrder": order("h2")}))
            .await,
        1
    );
    station.stop().await;
}
