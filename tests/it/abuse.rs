//! Abuse: a client floods a full station (real Mosquitto and Redis) with
//! random messages mixed with valid job commands. Seeded and bounded: the
//! seed is printed at the start and `ABUSE_SEED` replays a run.
//!
//! What is random: topics (`app/jobs/commands`, `app/jobs/<level>/commands`),
//! user properties named like every CloudEvent attribute (and anything
//! else) with random values, Correlation Data (any bytes, 0..40 long,
//! often 16), content types, payloads (random bytes, truncated JSON,
//! oversized, structured-mode bodies with random members). User property
//! strings stay printable: Mosquitto drops the connection of a sender whose
//! user properties carry control characters, so those never reach the
//! station (the decode fuzz target covers them).

use crate::harness::jobs::{self, order, S};
use crate::harness::{init_tracing, Mosquitto, Redis};
use bytes::Bytes;
use microdcs::envelope::ATTRIBUTE_NAMES;
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const MESSAGES: usize = 400;
const REPLIES: &str = "abuse/replies";
const DEAD_LETTER: &str = "microdcs/dead-letter";
const DEFAULT_SEED: u64 = 0x00ab_05e0_2026;
const REQUIRED: [&str; 4] = ["type", "id", "source", "specversion"];
const STRUCTURED: &str = "application/cloudevents+json";
const CONTENT_TYPES: [&str; 7] = [
    "application/json",
    "application/json; charset=utf-8",
    "application/msgpack",
    "application/octet-stream",
    STRUCTURED,
    "text/plain",
    "APPLICATION/CLOUDEVENTS+JSON; charset=utf-8",
];
/// Marks the Correlation Data of the valid commands.
const VALID_MARK: &[u8] = b"abuse-valid:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `Store` that must be answered with ReturnStatus 1.
    Valid,
    /// Binary mode without one of the required attributes: must be
    /// rejected (error reply when it has a Response Topic, dead letter).
    Missing,
    /// Anything: may be valid by chance.
    Random,
}

#[derive(Debug)]
struct Sent {
    kind: Kind,
    seq: usize,
    topic: String,
    correlation: Option<Vec<u8>>,
    response_topic: bool,
}

fn seed() -> u64 {
    std::env::var("ABUSE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Printable-ish text: what Mosquitto lets through in a user property.
fn text(rng: &mut StdRng, max: usize) -> String {
    const EXTRA: [char; 14] = [
        'ä', '€', '日', '🙂', '/', '+', '#', '%', '\\', '"', ' ', 'ß', '\u{a0}', '\u{2028}',
    ];
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| {
            if rng.random_bool(0.85) {
                char::from(rng.random_range(0x20u8..0x7f))
            } else {
                *pick(rng, &EXTRA)
            }
        })
        .collect()
}

/// One topic level (no `/`, `+`, `#`: a topic the sender may publish to).
fn level(rng: &mut StdRng) -> String {
    const CHARS: &[char] = &[
        'a', 'b', 'z', '0', '9', '-', '_', '.', '%', 'ä', '日', ' ', '~', '$',
    ];
    let n = rng.random_range(1..=10);
    (0..n).map(|_| *pick(rng, CHARS)).collect()
}

fn topic(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        format!("{}/commands", jobs::PREFIX)
    } else {
        format!("{}/{}/commands", jobs::PREFIX, level(rng))
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng.fill(&mut b[..]);
    b
}

/// Correlation Data: any bytes, 0..40 long, 16 often.
fn correlation(rng: &mut StdRng) -> Option<Vec<u8>> {
    if rng.random_bool(0.15) {
        return None;
    }
    let len = if rng.random_bool(0.3) {
        16
    } else {
        rng.random_range(0..40)
    };
    Some(random_bytes(rng, len))
}

/// A value for attribute `name`: plausible with probability `plausible`
/// (so messages get past the first checks), otherwise random text.
fn attribute_value(
    rng: &mut StdRng,
    name: &str,
    structured_allowed: bool,
    plausible: f64,
) -> String {
    if !rng.random_bool(plausible) {
        return text(rng, 24);
    }
    match name {
        "specversion" => pick(rng, &["1.0", "1.0", "1.0", "0.3", ""]).to_string(),
        "type" => {
            let types = [
                format!("{S}Store.v2"),
                format!("{S}Start.v2"),
                format!("{S}Clear.v2"),
                "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1".into(),
                "com.example.unknown.v1".into(),
            ];
            pick(rng, &types).clone()
        }
        "id" => {
            let fresh = format!("r-{}", rng.random::<u32>());
            pick(rng, &["dup-1", "dup-2", &fresh]).to_string()
        }
        "source" => pick(rng, &["abuse-random", "mes", "test-mes"]).to_string(),
        "subject" => pick(rng, &["abuse-r", "abuse-r/x", "+", "a#b", "", "line-1"]).to_string(),
        "time" | "expirytime" | "recordedtime" => pick(
            rng,
            &[
                "2026-01-01T00:00:00Z",
                "2999-01-01T00:00:00+01:00",
                "1970-01-01T00:00:00Z",
                "yesterday",
            ],
        )
        .to_string(),
        "expiryinterval" => rng.random_range(0u64..=u64::from(u32::MAX) + 1).to_string(),
        "datacontenttype" => {
            let ct = *pick(rng, &CONTENT_TYPES);
            if !structured_allowed && ct.to_ascii_lowercase().starts_with(STRUCTURED) {
                "application/json".to_string()
            } else {
                ct.to_string()
            }
        }
        "traceparent" => "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        "correlationid" => pick(
            rng,
            &[
                "base64:AAAAAAAAACo=",
                "base64:!!",
                "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            ],
        )
        .to_string(),
        "method" => pick(rng, &["DELETE", "PUT", "GET", ""]).to_string(),
        _ => text(rng, 16),
    }
}

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(rng.random::<i64>()),
        2 => json!(text(rng, 12)),
        3 => json!(rng.random_bool(0.5)),
        4 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..4))
                .map(|_| (text(rng, 8), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A structured-mode body: some attributes (plausible or random, some
/// not strings), random members, `data` or `data_base64`.
fn structured_body(rng: &mut StdRng) -> Vec<u8> {
    let mut m = Map::new();
    for name in ATTRIBUTE_NAMES {
        if rng.random_bool(if REQUIRED.contains(&name) { 0.8 } else { 0.2 }) {
            let v = if rng.random_bool(0.9) {
                json!(attribute_value(rng, name, false, 0.8))
            } else {
                random_json(rng, 2)
            };
            m.insert(name.to_string(), v);
        }
    }
    for _ in 0..rng.random_range(0..4) {
        m.insert(text(rng, 10), random_json(rng, 2));
    }
    match rng.random_range(0..4) {
        0 => {
            m.insert(
                "data".into(),
                json!({"JobOrder": order(&format!("r-{}", rng.random::<u32>()))}),
            );
        }
        1 => {
            m.insert("data".into(), random_json(rng, 3));
        }
        2 => {
            let b64 = if rng.random_bool(0.7) {
                "aGVsbG8="
            } else {
                "!!not base64"
            };
            m.insert("data_base64".into(), json!(b64));
        }
        _ => {}
    }
    let body = serde_json::to_vec(&Value::Object(m)).expect("json");
    if rng.random_bool(0.15) {
        let cut = rng.random_range(0..body.len());
        body[..cut].to_vec()
    } else {
        body
    }
}

fn payload(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..100) {
        0..30 => {
            let len = rng.random_range(0..2000);
            random_bytes(rng, len)
        }
        30..50 => {
            let body = serde_json::to_vec(&json!({"JobOrder": order("truncated")})).expect("json");
            let cut = rng.random_range(0..body.len());
            body[..cut].to_vec()
        }
        50..60 => serde_json::to_vec(&json!({
            "JobOrder": order(&format!("r-{}", rng.random::<u32>()))
        }))
        .expect("json"),
        // Over the station's 1 MiB limit, under the broker's 16 MiB.
        60..62 => {
            let mut b = vec![b' '; 1024 * 1024 + rng.random_range(1..4096)];
            b[0] = b'{';
            b
        }
        62..85 => structured_body(rng),
        _ => Vec::new(),
    }
}

/// A random message; with `missing`, one that lacks at least one required
/// attribute whatever else it carries (binary mode only, so the body
/// cannot supply it).
fn random_message(
    rng: &mut StdRng,
    seq: usize,
    missing: bool,
) -> (String, PublishProperties, Vec<u8>) {
    let mut user = Vec::new();
    let absent = *pick(rng, &REQUIRED);
    for name in REQUIRED {
        let keep = if missing {
            name != absent && rng.random_bool(0.7)
        } else {
            rng.random_bool(0.9)
        };
        if keep {
            user.push((name.to_string(), attribute_value(rng, name, !missing, 0.9)));
        }
    }
    for _ in 0..rng.random_range(0..8) {
        let name = if rng.random_bool(0.7) {
            pick(rng, &ATTRIBUTE_NAMES).to_string()
        } else {
            text(rng, 12)
        };
        if missing && REQUIRED.contains(&name.as_str()) {
            continue;
        }
        let value = attribute_value(rng, &name, !missing, 0.6);
        user.push((name, value));
    }
    // Ties dead letters to what was sent.
    user.push(("abuse-seq".into(), seq.to_string()));
    let mut content_type = if rng.random_bool(0.15) {
        None
    } else if rng.random_bool(0.1) {
        Some(text(rng, 30))
    } else {
        Some(pick(rng, &CONTENT_TYPES).to_string())
    };
    if missing
        && content_type
            .as_deref()
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with(STRUCTURED))
    {
        content_type = Some("application/octet-stream".into());
    }
    let mut body = payload(rng);
    if !missing && rng.random_bool(0.2) {
        content_type = Some(STRUCTURED.into());
        body = structured_body(rng);
    }
    let props = PublishProperties {
        content_type,
        response_topic: rng.random_bool(0.8).then(|| REPLIES.to_string()),
        correlation_data: correlation(rng).map(Bytes::from),
        message_expiry_interval: rng.random_bool(0.1).then(|| rng.random_range(1..3600)),
        user_properties: user,
        ..Default::default()
    };
    (topic(rng), props, body)
}

fn valid_command(rng: &mut StdRng, seed: u64, seq: usize) -> (String, PublishProperties, Vec<u8>) {
    let mut corr = VALID_MARK.to_vec();
    corr.extend_from_slice(&(seq as u32).to_be_bytes());
    let extra = rng.random_range(0..8);
    corr.extend(random_bytes(rng, extra));
    let props = ce_props(
        &format!("{S}Store.v2"),
        &format!("valid-{seed}-{seq}"),
        Some("abuse"),
        Some(REPLIES),
        Some(&corr),
    );
    let body =
        serde_json::to_vec(&json!({"JobOrder": order(&format!("abuse-{seq}"))})).expect("json");
    (topic(rng), props, body)
}

fn correlation_of(p: &Publish) -> Option<Vec<u8>> {
    p.properties
        .as_ref()?
        .correlation_data
        .as_ref()
        .map(|c| c.to_vec())
}

fn return_status(p: &Publish) -> Option<u64> {
    serde_json::from_slice::<Value>(&p.payload).ok()?["ReturnStatus"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_traffic_never_stops_the_station_and_every_valid_command_is_answered() {
    init_tracing();
    let started = Instant::now();
    let seed = seed();
    eprintln!("abuse: seed {seed} (ABUSE_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);

    let m = Mosquitto::start();
    let r = Redis::start();
    let mut station = jobs::start(jobs::env(m.port(), r.0.port(), "abuse-1")).await;
    let mut client = TestClient::connect(m.port(), "abuse-client").await;
    client.subscribe(REPLIES).await;
    let mut dlq = TestClient::connect(m.port(), "abuse-dlq").await;
    dlq.subscribe(DEAD_LETTER).await;

    // ---- random phase
    let mut sent = Vec::with_capacity(MESSAGES);
    for seq in 0..MESSAGES {
        let kind = match rng.random_range(0..10) {
            0..2 => Kind::Valid,
            2..5 => Kind::Missing,
            _ => Kind::Random,
        };
        let (topic, props, body) = match kind {
            Kind::Valid => valid_command(&mut rng, seed, seq),
            Kind::Missing => random_message(&mut rng, seq, true),
            Kind::Random => random_message(&mut rng, seq, false),
        };
        sent.push(Sent {
            kind,
            seq,
            topic: topic.clone(),
            correlation: props.correlation_data.as_ref().map(|c| c.to_vec()),
            response_topic: props.response_topic.is_some(),
        });
        client.publish(&topic, body, props).await;
    }
    let count = |k| sent.iter().filter(|s| s.kind == k).count();
    eprintln!(
        "abuse: sent {} valid, {} missing an attribute, {} random in {:?}",
        count(Kind::Valid),
        count(Kind::Missing),
        count(Kind::Random),
        started.elapsed()
    );

    // ---- collect replies and dead letters (bounded)
    let mut replies: HashMap<Vec<u8>, Vec<Publish>> = HashMap::new();
    let mut dead: HashMap<usize, Vec<Publish>> = HashMap::new();
    let valid_total = count(Kind::Valid);
    let missing_total = count(Kind::Missing);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = None;
    loop {
        let mut got = false;
        while let Some(p) = client.recv(Duration::from_millis(20)).await {
            got = true;
            if let Some(c) = correlation_of(&p) {
                replies.entry(c).or_default().push(p);
            }
        }
        while let Some(p) = dlq.recv(Duration::from_millis(20)).await {
            got = true;
            if let Some(seq) = user_prop(&p, "abuse-seq").and_then(|s| s.parse().ok()) {
                dead.entry(seq).or_default().push(p);
            }
        }
        let valid_answered = sent
            .iter()
            .filter(|s| s.kind == Kind::Valid)
            .filter(|s| {
                s.correlation
                    .as_ref()
                    .is_some_and(|c| replies.contains_key(c))
            })
            .count();
        let missing_dead = sent
            .iter()
            .filter(|s| s.kind == Kind::Missing && dead.contains_key(&s.seq))
            .count();
        let complete = valid_answered == valid_total && missing_dead == missing_total;
        // Complete and quiet for a moment: duplicates would have shown.
        if got {
            quiet_since = None;
        } else if complete {
            let q = *quiet_since.get_or_insert_with(Instant::now);
            if q.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    eprintln!(
        "abuse: {} distinct reply correlations, {} dead letters after {:?}",
        replies.len(),
        dead.values().map(Vec::len).sum::<usize>(),
        started.elapsed()
    );

    // Correlation Data that only one message carried identifies its reply.
    let mut uses: HashMap<&[u8], usize> = HashMap::new();
    for s in &sent {
        if let Some(c) = &s.correlation {
            *uses.entry(c.as_slice()).or_default() += 1;
        }
    }
    let unique = |s: &Sent| {
        s.correlation
            .as_deref()
            .is_some_and(|c| !c.is_empty() && uses[c] == 1)
    };

    let mut failures = Vec::new();
    for s in &sent {
        let answers = s
            .correlation
            .as_ref()
            .and_then(|c| replies.get(c))
            .map_or(&[][..], Vec::as_slice);
        match s.kind {
            Kind::Valid => {
                if answers.len() != 1 {
                    failures.push(format!(
                        "valid #{} on {}: {} replies",
                        s.seq,
                        s.topic,
                        answers.len()
                    ));
                } else if return_status(&answers[0]) != Some(1)
                    || user_prop(&answers[0], "mdcserrorkind").is_some()
                {
                    failures.push(format!(
                        "valid #{} on {}: answered {:?} {:?} {}",
                        s.seq,
                        s.topic,
                        user_prop(&answers[0], "mdcserrorkind"),
                        user_prop(&answers[0], "mdcserrormessage"),
                        String::from_utf8_lossy(&answers[0].payload)
                    ));
                }
            }
            Kind::Missing => {
                let dl = dead.get(&s.seq).map_or(&[][..], Vec::as_slice);
                if dl.len() != 1
                    || user_prop(&dl[0], "x-dead-letter-reason").is_none_or(str::is_empty)
                {
                    failures.push(format!(
                        "missing #{}: {} dead letters, reason {:?}",
                        s.seq,
                        dl.len(),
                        dl.first()
                            .and_then(|p| user_prop(p, "x-dead-letter-reason"))
                    ));
                }
                if s.response_topic && unique(s) {
                    let error_replies = answers
                        .iter()
                        .filter(|p| user_prop(p, "mdcserrorkind").is_some())
                        .count();
                    if answers.len() != 1 || error_replies != 1 {
                        failures.push(format!(
                            "missing #{}: {} replies, {} of them errors",
                            s.seq,
                            answers.len(),
                            error_replies
                        ));
                    }
                }
            }
            Kind::Random => {
                // Valid by chance or not: one answer, an error or a
                // normal reply.
                if s.response_topic && unique(s) && answers.len() != 1 {
                    failures.push(format!(
                        "random #{} on {}: {} replies, dead letters: {:?}",
                        s.seq,
                        s.topic,
                        answers.len(),
                        dead.get(&s.seq).map(|d| d
                            .iter()
                            .map(|p| user_prop(p, "x-dead-letter-reason").unwrap_or_default())
                            .collect::<Vec<_>>())
                    ));
                }
            }
        }
    }
    let checked: Vec<&Publish> = sent
        .iter()
        .filter(|s| s.kind == Kind::Random && s.response_topic && unique(s))
        .filter_map(|s| replies.get(s.correlation.as_ref()?)?.first())
        .collect();
    let errors = checked
        .iter()
        .filter(|p| user_prop(p, "mdcserrorkind").is_some())
        .count();
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for p in &checked {
        *kinds
            .entry(user_prop(p, "mdcserrorkind").unwrap_or("none"))
            .or_default() += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    eprintln!(
        "abuse: random messages with their own reply: {} errors, {} answered normally; by error kind {kinds:?}",
        errors,
        checked.len() - errors
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // ---- the station still answers promptly
    for i in 0..10 {
        let seq = MESSAGES + i;
        let (topic, props, body) = valid_command(&mut rng, seed, seq);
        let corr = props.correlation_data.clone().expect("correlation");
        let sent_at = Instant::now();
        client.publish(&topic, body, props).await;
        let answer = loop {
            let left = Duration::from_secs(1).saturating_sub(sent_at.elapsed());
            match client.recv(left).await {
                Some(p) if correlation_of(&p).as_deref() == Some(&corr[..]) => break Some(p),
                Some(_) => continue,
                None => break None,
            }
        };
        let answer = answer.unwrap_or_else(|| {
            panic!("seed {seed}: command {i} after the random phase: no reply within 1 s")
        });
        assert_eq!(return_status(&answer), Some(1), "seed {seed}: command {i}");
    }
    assert!(
        matches!(
            station.app.done.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "seed {seed}: the station stopped"
    );
    eprintln!("abuse: done in {:?}", started.elapsed());
    station.stop().await;
}
