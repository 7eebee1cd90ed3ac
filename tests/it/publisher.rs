//! The MES publisher's retained topics as an MES subscriber sees them
//! (wire contract §4), against real Mosquitto and Redis.

use crate::harness::jobs::{self, order, state_texts, JobStation, Mes, PREFIX};
use crate::harness::{init_tracing, on_each_backend, Backend, Mosquitto, Redis, Store};
use microdcs::jobs::Internal;
use microdcs::testkit::mqtt::{user_prop, TestClient};
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The latest retained view per topic, as an MES keeps it.
#[derive(Default)]
struct View {
    topics: BTreeMap<String, Vec<u8>>,
    seqs: Vec<(String, u64)>,
}

impl View {
    fn absorb(&mut self, ps: Vec<Publish>) {
        for p in ps {
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            if topic.ends_with("/state-index") && !p.payload.is_empty() {
                let v: Value = serde_json::from_slice(&p.payload).expect("index JSON");
                self.seqs
                    .push((topic.clone(), v["seq"].as_u64().expect("seq")));
            }
            self.topics.insert(topic, p.payload.to_vec());
        }
    }

    fn json(&self, topic: &str) -> Option<Value> {
        self.topics
            .get(&format!("{PREFIX}/{topic}"))
            .filter(|b| !b.is_empty())
            .map(|b| serde_json::from_slice(b).expect("JSON"))
    }

    fn cleared(&self, topic: &str) -> bool {
        self.topics
            .get(&format!("{PREFIX}/{topic}"))
            .is_some_and(|b| b.is_empty())
    }

    /// `seq` of one scope's index, in arrival order.
    fn seq_of(&self, scope: &str) -> Vec<u64> {
        let t = format!("{PREFIX}/{scope}/state-index");
        self.seqs
            .iter()
            .filter(|(x, _)| *x == t)
            .map(|(_, s)| *s)
            .collect()
    }
}

/// Absorbs messages until `done` holds for the view or `timeout` passes.
async fn until(
    sub: &mut TestClient,
    view: &mut View,
    timeout: Duration,
    done: impl Fn(&View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(view) && tokio::time::Instant::now() < deadline {
        view.absorb(sub.drain(Duration::from_millis(200)).await);
    }
}

async fn subscriber(port: u16, name: &str) -> TestClient {
    let mut c = TestClient::connect(port, name).await;
    for f in ["+/state-index", "+/order/+", "+/result/+"] {
        c.subscribe(&format!("{PREFIX}/{f}")).await;
    }
    c
}

async fn complete(station: &JobStation, scope: &str, job: &str) {
    let m = station.jobs.clone().expect("processor");
    let (scope, job) = (scope.to_string(), job.to_string());
    station
        .on_runtime(async move {
            m.internal(&scope, &job, Internal::Begin, None, &format!("begin-{job}")).await.unwrap();
            let resp = serde_json::value::to_raw_value(&json!({"JobResponseID": format!("r-{job}"), "JobOrderID": job, "JobState": [{"StateText": {"Text": "Ended"}, "StateNumber": 5}]})).unwrap();
            m.internal(&scope, &job, Internal::Complete, Some(&resp), &format!("done-{job}")).await.unwrap();
        })
        .await;
}

fn ids(index: &Value) -> Vec<String> {
    index["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_order_id"].as_str().unwrap().to_string())
        .collect()
}

on_each_backend!(mes_sees_state_index_order_and_result_topics);
async fn mes_sees_state_index_order_and_result_topics(backend: Backend) {
    init_tracing();
    let m = Mosquitto::start();
    let r = Store::start(backend);
    let mut env = jobs::env(m.port(), 0, "p1");
    r.configure(&mut env);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut sub = subscriber(m.port(), "mes-view").await;
    let mut view = View::default();

    assert_eq!(
        mes.status("Store", "line-1", json!({"JobOrder": order("a")}))
            .await,
        1
    );
    assert_eq!(
        mes.status("StoreAndStart", "line-1", json!({"JobOrder": order("b")}))
            .await,
        1
    );
    complete(&station, "line-1", "b").await;
    view.absorb(sub.drain(Duration::from_millis(1500)).await);

    let index = view.json("line-1/state-index").expect("state index");
    assert_eq!(index["scope"], "line-1");
    assert!(index["published_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ids(&index), ["a", "b"]);
    let b = &index["jobs"][1];
    assert_eq!(state_texts(&b["state"]), ["Ended", "Completed"]);
    assert_eq!(b["has_result"], true);
    assert_eq!(index["jobs"][0]["has_result"], false);
    let seqs = view.seq_of("line-1");
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "seq strictly increasing: {seqs:?}"
    );

    // The order topic follows every state change (not only Store/Update).
    let order_b = view.json("line-1/order/b").expect("order topic");
    assert_eq!(order_b["JobOrder"]["JobOrderID"], "b");
    assert_eq!(state_texts(&order_b["State"]), ["Ended", "Completed"]);
    assert_eq!(
        view.json("line-1/result/b").expect("result")["JobResponseID"],
        "r-b"
    );
    assert!(view.json("line-1/result/a").is_none());

    // Cancel and Clear: zero-byte retained messages, dropped from the index.
    assert_eq!(
        mes.status("Cancel", "line-1", json!({"JobOrderID": "a"}))
            .await,
        1
    );
    assert_eq!(
        mes.status("Clear", "line-1", json!({"JobOrderID": "b"}))
            .await,
        1
    );
    view.absorb(sub.drain(Duration::from_millis(1500)).await);
    assert!(view.cleared("line-1/order/a") && view.cleared("line-1/order/b"));
    assert!(view.cleared("line-1/result/b"));
    assert!(ids(&view.json("line-1/state-index").unwrap()).is_empty());

    // An MES that connects now sees only the retained truth.
    let mut late = subscriber(m.port(), "late-mes").await;
    let mut late_view = View::default();
    late_view.absorb(late.drain(Duration::from_millis(800)).await);
    assert!(
        late_view.json("line-1/order/a").is_none() && late_view.json("line-1/order/b").is_none()
    );
    assert_eq!(
        late_view.json("line-1/state-index").unwrap()["seq"],
        *view.seq_of("line-1").last().unwrap()
    );

    // Retained messages carry the retained TTL as Message Expiry Interval.
    let p = late_view_expiry(&mut subscriber(m.port(), "ttl").await).await;
    let ttl = p.expect("Message Expiry Interval");
    assert!((172_700..=172_800).contains(&ttl), "{ttl}");
    station.stop().await;
}

async fn late_view_expiry(c: &mut TestClient) -> Option<u32> {
    let p = c.recv(Duration::from_secs(5)).await?;
    assert!(user_prop(&p, "type").is_some());
    p.properties.as_ref()?.message_expiry_interval
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_restart_republishes_and_seq_never_goes_back() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "p1")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut sub = subscriber(m.port(), "view").await;
    let mut view = View::default();
    for j in ["x", "y"] {
        assert_eq!(
            mes.status("Store", "cell", json!({"JobOrder": order(j)}))
                .await,
            1
        );
    }
    view.absorb(sub.drain(Duration::from_millis(1000)).await);
    let before = *view.seq_of("cell").last().expect("an index");
    station.crash();

    // While no publisher runs, a processor-only instance keeps changing jobs.
    let mut env = jobs::env(m.port(), r.0.port(), "proc-only");
    jobs::set(&mut env, "APP_IS_PUBLISHER_INSTANCE", "false");
    let processor = jobs::start(env).await;
    assert_eq!(
        mes.status("Start", "cell", json!({"JobOrderID": "x"}))
            .await,
        1
    );
    assert_eq!(
        mes.status("Store", "new-scope", json!({"JobOrder": order("z")}))
            .await,
        1
    );
    let quiet = sub.drain(Duration::from_millis(800)).await;
    let topics: Vec<_> = quiet
        .iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    assert!(
        quiet.is_empty(),
        "a processor-only instance publishes no retained topics: {topics:?}"
    );

    // A publisher-only instance catches up: republishes the index, then the
    // missed changes, and finds the new scope.
    let mut env = jobs::env(m.port(), r.0.port(), "pub-only");
    jobs::set(&mut env, "APP_IS_PROCESSOR_INSTANCE", "false");
    let publisher = jobs::start(env).await;
    assert!(publisher.jobs.is_none());
    // The crashed publisher's lock expires first (15 s at most).
    until(&mut sub, &mut view, Duration::from_secs(25), |v| {
        v.json("new-scope/state-index").is_some() && v.seq_of("cell").last() > Some(&before)
    })
    .await;
    view.absorb(sub.drain(Duration::from_millis(500)).await);
    let seqs = view.seq_of("cell");
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "seq strictly increasing across restarts: {seqs:?}"
    );
    assert!(*seqs.last().unwrap() > before);
    let order_x = view.json("cell/order/x").expect("order x");
    assert_eq!(state_texts(&order_x["State"]), ["AllowedToStart", "Ready"]);
    assert_eq!(
        ids(&view.json("new-scope/state-index").expect("new scope index")),
        ["z"]
    );

    // Later changes keep flowing.
    assert_eq!(
        mes.status("Abort", "cell", json!({"JobOrderID": "y"}))
            .await,
        1
    );
    view.absorb(sub.drain(Duration::from_millis(1000)).await);
    assert_eq!(
        state_texts(&view.json("cell/order/y").unwrap()["State"]),
        ["Aborted"]
    );
    processor.stop().await;
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_of_two_publishers_publishes_and_the_other_takes_over() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let a = jobs::start(jobs::env(m.port(), r.0.port(), "pa")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = jobs::start(jobs::env(m.port(), r.0.port(), "pb")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut sub = subscriber(m.port(), "view").await;
    let mut view = View::default();
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("one")}))
            .await,
        1
    );
    view.absorb(sub.drain(Duration::from_millis(1000)).await);
    // One change, one index: a second publisher would double it.
    assert_eq!(view.seq_of("s").len(), 1, "{:?}", view.seq_of("s"));
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let owner: String = redis::cmd("GET")
        .arg("t:publisher:lock")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner, "pa");

    // The owner dies; the lock expires and the other takes over.
    a.crash();
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("two")}))
            .await,
        1
    );
    until(&mut sub, &mut view, Duration::from_secs(25), |v| {
        v.json("s/state-index").is_some_and(|i| ids(&i).len() == 2)
    })
    .await;
    assert_eq!(
        ids(&view.json("s/state-index").expect("index")),
        ["one", "two"]
    );
    let seqs = view.seq_of("s");
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    let owner: String = redis::cmd("GET")
        .arg("t:publisher:lock")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner, "pb");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_topics_survive_a_broker_restart() {
    init_tracing();
    let mut m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "p1")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("keep")}))
            .await,
        1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.restart();
    // The station reconnects by itself and keeps publishing.
    let mut mes = Mes::connect(m.port(), "mes2").await;
    let mut sub = subscriber(m.port(), "after-restart").await;
    let mut view = View::default();
    view.absorb(sub.drain(Duration::from_millis(800)).await);
    assert_eq!(
        ids(&view.json("s/state-index").expect("retained index survived")),
        ["keep"]
    );
    assert!(view.json("s/order/keep").is_some());
    let seq_before = *view.seq_of("s").last().unwrap();
    assert_eq!(
        mes.status("Start", "s", json!({"JobOrderID": "keep"}))
            .await,
        1
    );
    view.absorb(sub.drain(Duration::from_millis(1000)).await);
    assert!(*view.seq_of("s").last().unwrap() > seq_before);
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_order_ids_with_topic_wildcards_are_retained_under_encoded_levels() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "st-1")).await;
    let mut sub = subscriber(m.port(), "view").await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    // `#` in order numbers is common in plants; `+` and `/` too.
    let weird = "PO#4711+a/b";
    let level = "PO%234711%2Ba%2Fb";
    let store = |id: &str| json!({ "JobOrder": order(id) });
    assert_eq!(mes.status("Store", "line", store(weird)).await, 1);
    // A later job proves the publisher did not stall on the first one.
    assert_eq!(mes.status("Store", "line", store("PO-2")).await, 1);
    let mut view = View::default();
    until(&mut sub, &mut view, Duration::from_secs(15), |v| {
        v.json("line/order/PO-2").is_some()
            && v.json("line/state-index")
                .is_some_and(|i| ids(&i).len() == 2)
    })
    .await;
    let o = view
        .json(&format!("line/order/{level}"))
        .expect("order retained under the encoded level");
    assert_eq!(o["JobOrder"]["JobOrderID"], weird, "payload keeps the id");
    let index = view.json("line/state-index").expect("state index");
    assert!(ids(&index).contains(&weird.to_string()), "{index}");
    assert!(view.json("line/order/PO-2").is_some());

    // Ending the job clears its encoded topics.
    assert_eq!(
        mes.status("Cancel", "line", json!({"JobOrderID": weird}))
            .await,
        1
    );
    until(&mut sub, &mut view, Duration::from_secs(15), |v| {
        v.cleared(&format!("line/order/{level}"))
    })
    .await;
    assert!(view.cleared(&format!("line/order/{level}")));
    station.stop().await;
}

/// A change stream capped at 20 entries (approximately: Redis trims whole
/// nodes of about 100 entries) and a publisher that was down while far more
/// changes passed: its cursor is behind the first entry left, so it cannot
/// know from the stream which jobs changed. It must resynchronise the scope
/// in full: every live job's topics as they are now, and the topics it had
/// retained for jobs that ended meanwhile cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_behind_a_trimmed_change_stream_resynchronises_the_scope() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let capped = |instance: &str| {
        let mut e = jobs::env(m.port(), r.0.port(), instance);
        jobs::set(&mut e, "APP_JOBS_CHANGE_STREAM_MAX_LEN", "20");
        e
    };
    let station = jobs::start(capped("p1")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut sub = subscriber(m.port(), "view").await;
    let mut view = View::default();
    // Retained before the gap: one job to be cancelled (an id that needs
    // encoding), one to end and be cleared, one that stays.
    for (method, j) in [
        ("Store", "gone#1"),
        ("StoreAndStart", "done"),
        ("Store", "keep"),
    ] {
        assert_eq!(
            mes.status(method, "cell", json!({"JobOrder": order(j)}))
                .await,
            1
        );
    }
    complete(&station, "cell", "done").await;
    until(&mut sub, &mut view, Duration::from_secs(10), |v| {
        v.json("cell/order/gone%231").is_some()
            && v.json("cell/order/keep").is_some()
            && v.json("cell/result/done").is_some()
    })
    .await;
    assert!(view.json("cell/result/done").is_some());
    station.stop().await; // graceful: the publisher lock is released at once

    // No publisher runs while a processor-only instance changes far more
    // jobs than the stream keeps. The retained jobs end first, so their
    // entries are among the trimmed ones.
    let mut env = capped("proc-only");
    jobs::set(&mut env, "APP_IS_PUBLISHER_INSTANCE", "false");
    let processor = jobs::start(env).await;
    let call = |m: &str, id: &str| (m.to_string(), json!({"JobOrderID": id}));
    for (method, body) in [
        call("Cancel", "gone#1"),
        call("Clear", "done"),
        call("Start", "keep"),
    ] {
        assert_eq!(mes.status(&method, "cell", body).await, 1, "{method}");
    }
    for i in 0..80 {
        let id = format!("n{i}");
        let method = if (40..50).contains(&i) {
            "StoreAndStart"
        } else {
            "Store"
        };
        assert_eq!(
            mes.status(method, "cell", json!({"JobOrder": order(&id)}))
                .await,
            1
        );
    }
    for i in 0..40 {
        assert_eq!(
            mes.status("Cancel", "cell", json!({"JobOrderID": format!("n{i}")}))
                .await,
            1
        );
    }
    for i in 40..50 {
        complete(&processor, "cell", &format!("n{i}")).await;
    }
    let live: Vec<String> = std::iter::once("keep".to_string())
        .chain((40..80).map(|i| format!("n{i}")))
        .collect();

    // The premise, checked: the stream was trimmed past the stored cursor.
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let info = microdcs::jobs::store::stream_info(&mut c, "t:{cell}:changes")
        .await
        .unwrap()
        .expect("change stream");
    let cursor: String = redis::cmd("GET")
        .arg("t:{cell}:pub:cursor")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(info.trimmed() > 0, "{info:?}");
    assert!(info.lost_after(&cursor), "cursor {cursor} behind {info:?}");
    assert!(
        sub.drain(Duration::from_millis(300)).await.is_empty(),
        "nothing is published while no publisher runs"
    );

    let mut env = capped("pub-only");
    jobs::set(&mut env, "APP_IS_PROCESSOR_INSTANCE", "false");
    let publisher = jobs::start(env).await;
    until(&mut sub, &mut view, Duration::from_secs(20), |v| {
        v.json("cell/state-index")
            .is_some_and(|i| ids(&i).len() == live.len())
            && v.cleared("cell/order/gone%231")
            && v.cleared("cell/order/done")
            && live
                .iter()
                .all(|j| v.json(&format!("cell/order/{j}")).is_some())
    })
    .await;
    view.absorb(sub.drain(Duration::from_millis(500)).await);
    let index = view.json("cell/state-index").expect("index");
    let mut indexed = ids(&index);
    indexed.sort();
    let mut expected = live.clone();
    expected.sort();
    assert_eq!(indexed, expected);
    assert!(view.cleared("cell/order/gone%231"), "cancelled meanwhile");
    assert!(view.cleared("cell/order/done"), "cleared meanwhile");
    assert!(view.cleared("cell/result/done"));

    // What an MES connecting now finds: exactly the live jobs, each in its
    // current state, results for those that ended, nothing else.
    let mut late = subscriber(m.port(), "late").await;
    let mut retained = View::default();
    retained.absorb(late.drain(Duration::from_millis(1000)).await);
    let mut orders: Vec<String> = retained
        .topics
        .keys()
        .filter_map(|t| t.strip_prefix(&format!("{PREFIX}/cell/order/")))
        .map(str::to_string)
        .collect();
    orders.sort();
    assert_eq!(orders, expected, "order topics are the live jobs");
    let mut results: Vec<String> = retained
        .topics
        .keys()
        .filter_map(|t| t.strip_prefix(&format!("{PREFIX}/cell/result/")))
        .map(str::to_string)
        .collect();
    results.sort();
    let mut ended: Vec<String> = (40..50).map(|i| format!("n{i}")).collect();
    ended.sort();
    assert_eq!(results, ended, "result topics are the ended live jobs");
    for entry in index["jobs"].as_array().unwrap() {
        let id = entry["job_order_id"].as_str().unwrap();
        let o = retained
            .json(&format!("cell/order/{id}"))
            .expect("order topic");
        assert_eq!(
            state_texts(&o["State"]),
            state_texts(&entry["state"]),
            "order/{id} shows the job's current state"
        );
    }
    assert_eq!(
        state_texts(&retained.json("cell/order/keep").unwrap()["State"]),
        ["AllowedToStart", "Ready"]
    );

    // And it follows the stream again afterwards.
    assert_eq!(
        mes.status("Cancel", "cell", json!({"JobOrderID": "n79"}))
            .await,
        1
    );
    until(&mut sub, &mut view, Duration::from_secs(10), |v| {
        v.cleared("cell/order/n79")
    })
    .await;
    assert!(view.cleared("cell/order/n79"));
    processor.stop().await;
    publisher.stop().await;
}

/// Many changes within one state-index interval make one index, with the
/// latest states: with a 60 s interval, 20 `Store`s after the first index
/// publish every order topic at once, and the index only when the station
/// stops (a changed index is published before the publisher stops), listing
/// all 20 jobs under the next `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_the_interval_coalesce_into_one_state_index_with_the_latest_states() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "p1");
    env.push((
        "APP_PUBLISHER_STATE_INDEX_INTERVAL_MS".into(),
        "60000".into(),
    ));
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let mut sub = subscriber(m.port(), "mes-view").await;
    let mut view = View::default();

    assert_eq!(
        mes.status("Store", "s", json!({"JobOrder": order("j0")}))
            .await,
        1
    );
    until(&mut sub, &mut view, Duration::from_secs(10), |v| {
        !v.seq_of("s").is_empty()
    })
    .await;
    let first = view.seq_of("s");
    assert!(
        !first.is_empty(),
        "the scope's first index is published at once"
    );
    for i in 1..20 {
        assert_eq!(
            mes.status("Store", "s", json!({"JobOrder": order(&format!("j{i}"))}))
                .await,
            1
        );
    }
    until(&mut sub, &mut view, Duration::from_secs(10), |v| {
        v.json("s/order/j19").is_some()
    })
    .await;
    assert!(
        view.json("s/order/j19").is_some(),
        "order topics per change"
    );
    view.absorb(sub.drain(Duration::from_millis(300)).await);
    assert_eq!(
        view.seq_of("s"),
        first,
        "no index within the interval after the first"
    );

    station.stop().await;
    until(&mut sub, &mut view, Duration::from_secs(10), |v| {
        v.seq_of("s").len() > first.len()
    })
    .await;
    let seqs = view.seq_of("s");
    assert_eq!(
        seqs.len(),
        first.len() + 1,
        "one index for 19 changes: {seqs:?}"
    );
    assert_eq!(*seqs.last().unwrap(), first.last().unwrap() + 1);
    let index = view.json("s/state-index").unwrap();
    let listed = ids(&index);
    assert_eq!(listed.len(), 20, "{listed:?}");
}

/// Jobs stored by a version that kept no state index in Redis (simulated:
/// the index hash deleted, a stale entry left for a job that is gone) are
/// listed again when the publisher adopts the scope: the index is repaired
/// from the live jobs, each at the version read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_without_a_stored_index_is_repaired_when_the_publisher_adopts_it() {
    use redis::AsyncCommands;
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let station = jobs::start(jobs::env(m.port(), r.0.port(), "p1")).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    for j in ["a", "PO#4711", "c"] {
        assert_eq!(
            mes.status("Store", "old", json!({"JobOrder": order(j)}))
                .await,
            1
        );
    }
    station.stop().await;
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let index = "t:{old}:index";
    let listed: usize = c.hlen(index).await.unwrap();
    assert_eq!(listed, 3, "job_apply.lua keeps the index with the jobs");
    let _: () = c.del(index).await.unwrap();
    let _: () = c
        .hset(
            index,
            "ghost",
            r#"{"has_result":false,"job_order_id":"ghost","state":[]}"#,
        )
        .await
        .unwrap();

    let _station = jobs::start(jobs::env(m.port(), r.0.port(), "p2")).await;
    let mut sub = subscriber(m.port(), "view").await;
    let mut view = View::default();
    until(&mut sub, &mut view, Duration::from_secs(10), |v| {
        v.json("old/state-index")
            .is_some_and(|i| ids(&i).len() == 3)
    })
    .await;
    let index_topic = view.json("old/state-index").expect("state index");
    assert_eq!(ids(&index_topic), ["PO#4711", "a", "c"]);
    let stored: std::collections::HashMap<String, String> = c.hgetall(index).await.unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(!stored.contains_key("ghost"));
}
