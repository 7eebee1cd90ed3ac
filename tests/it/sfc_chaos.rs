//! Chaos: `CHAOS_JOBS` jobs (default 1,000) run on three real
//! `microdcs run` processes while replicas are SIGKILLed and replaced by new
//! ones with new `POD_ID`s (as a Deployment does), the broker is restarted
//! (persistence on) and Redis is restarted (AOF, fsync always), on a
//! schedule drawn from `CHAOS_SEED`. The recipe's actions have no timeout,
//! so a lost command is a job that never ends. At the end every job is
//! Ended/Completed, no step was skipped, every activation was dispatched
//! under one command id (re-deliveries keep it), and no job waited long for
//! its next command. `scripts/chaos.sh --jobs N --seed S` runs it with
//! another size or seed.
//!
//! A second test: a replica that dies for good has its queued commands
//! answered by the survivors (session takeover).

use crate::harness::jobs::{self, order, Mes};
use crate::harness::recipes::{pull_event, push_command, SFC};
use crate::harness::{init_tracing, Mosquitto, Redis};
use bytes::Bytes;
use microdcs::transport::binding;
use microdcs::{CloudEvent, CorrelationId};
use redis::AsyncCommands;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SCOPE: &str = "cell";
const PICK: &str = "com.example.cell.pick.v1";
const PLACE: &str = "com.example.cell.place.v1";
const CONFIRMED: &str = "com.example.cell.confirmed.v1";
/// Rounds of the pick/place loop: each round activates the steps again, so
/// its commands carry new ids (`…/pick/1`, `…/pick/2`).
const ROUNDS: u64 = 2;
/// The target; it fits the CI budget (see README, Tests).
const DEFAULT_JOBS: usize = 1000;
const DEFAULT_SEED: u64 = 20_261_129;
/// How long after a fault the system may be slow: a dead replica's session
/// is taken over after `session_dead_after` (5 s here) plus a heartbeat
/// (1 s), its pending work items are claimed after 3 s idle, reconnects
/// back off; all of it well within this.
const FAULT_WINDOW: Duration = Duration::from_secs(15);
/// Failure bounds (not performance targets) on how long a job waits for its
/// next command (or its end) after the equipment answered the previous one:
/// when the wait overlaps no fault window, and when it does.
const QUIET_BOUND: Duration = Duration::from_secs(20);
const FAULT_BOUND: Duration = Duration::from_secs(45);

fn recipe() -> Value {
    json!({
        "Steps": [{"Name": "pick", "Initial": true}, {"Name": "place"}, {"Name": "confirm"}],
        "Transitions": [
            {"Source": "pick", "Target": "place", "Condition": "always"},
            {"Source": "place", "Target": "pick", "Priority": 1,
             "Condition": format!("results.place.round < {ROUNDS}")},
            {"Source": "place", "Target": "confirm", "Priority": 2,
             "Condition": format!("results.place.round >= {ROUNDS}")}
        ],
        "Actions": [
            push_command("pick", "pick", "N", PICK, 0),
            push_command("place", "place", "N", PLACE, 0),
            pull_event("confirm", "confirm", CONFIRMED, 0)
        ]
    })
}

fn env(m: &Mosquitto, r: &Redis, id: &str) -> Vec<(String, String)> {
    let mut e = jobs::env(m.port(), r.0.port(), id);
    jobs::set(&mut e, "APP_PROCESSING_SHARED_SUBSCRIPTION_NAME", "cell");
    jobs::set(&mut e, "APP_LOG_LEVEL", "error");
    e
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a valid value")),
        _ => default,
    }
}

/// SplitMix64: the fault schedule, the feed's pace and the equipment's
/// answer delays all come from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// A number from the seed and a text, independent of arrival order.
fn mix(seed: u64, text: &str) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325_u64 ^ seed;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    Rng(h).next()
}

/// A replica: the real binary, killed with SIGKILL on drop. Its output goes
/// to a log file (kept when the test fails).
struct Replica {
    pod: String,
    child: std::process::Child,
}

impl Replica {
    /// Output discarded.
    fn start(env: Vec<(String, String)>) -> Replica {
        Self::spawn(
            Path::new(env!("CARGO_BIN_EXE_microdcs")),
            env,
            "",
            std::process::Stdio::null(),
            std::process::Stdio::null(),
        )
    }

    /// The binary `{logs}/microdcs` (see [`pin_binary`]), output to
    /// `{logs}/{pod}.log`.
    fn start_logged(env: Vec<(String, String)>, pod: &str, logs: &Path) -> Replica {
        let log = std::fs::File::create(logs.join(format!("{pod}.log"))).expect("log file");
        let err = log.try_clone().expect("log file");
        Self::spawn(&logs.join("microdcs"), env, pod, log.into(), err.into())
    }

    fn spawn(
        bin: &Path,
        env: Vec<(String, String)>,
        pod: &str,
        out: std::process::Stdio,
        err: std::process::Stdio,
    ) -> Replica {
        let child = std::process::Command::new(bin)
            .arg("run")
            .envs(env)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start microdcs run");
        Replica {
            pod: pod.to_owned(),
            child,
        }
    }

    /// SIGKILL: no shutdown, no DISCONNECT, nothing acknowledged.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The replicas of a run, replacements included, run the binary this test
/// was built with, even if a build replaces it meanwhile (a shared target
/// directory): a link to it (or a copy) in `logs`.
fn pin_binary(logs: &Path) {
    let bin = Path::new(env!("CARGO_BIN_EXE_microdcs"));
    let pinned = logs.join("microdcs");
    if std::fs::hard_link(bin, &pinned).is_err() {
        std::fs::copy(bin, &pinned).expect("copy the microdcs binary");
    }
}

/// An MQTT client that keeps its session across a broker restart (clean
/// start off, session expiry 1 h), as the equipment and the MES must: the
/// broker keeps its subscription and what was queued for it, and rumqttc
/// sends again what the broker had not acknowledged. (The harness's
/// `TestClient` starts clean, and rumqttc drops its unacknowledged
/// publishes when it gets a new session.)
struct Durable {
    client: AsyncClient,
    rx: Option<mpsc::UnboundedReceiver<Publish>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Durable {
    async fn connect(port: u16, id: &str, filter: Option<&str>) -> Durable {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o.set_max_packet_size(Some(64 * 1024 * 1024));
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let sub = client.clone();
        let filter = filter.map(str::to_owned);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    // Subscribed again on every connect: harmless when the
                    // session kept the subscription.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => match &filter {
                        Some(f) => {
                            let _ = sub.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                        None => {
                            let _ = ready_tx.send(());
                        }
                    },
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready.recv())
            .await
            .expect("durable client connects");
        Durable {
            client,
            rx: Some(rx),
            tasks: vec![task],
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the equipment saw and did, with when.
#[derive(Default)]
struct Log {
    /// Every command as it arrived: (when, id, type, job).
    arrivals: Vec<(Instant, String, String, String)>,
    /// Command id → when each answer to it was handed to the client.
    answers: HashMap<String, Vec<Instant>>,
    /// Job → when its confirmation event was handed to the client.
    confirmed: HashMap<String, Instant>,
    /// Jobs whose confirmation event is on its way or sent.
    confirming: BTreeSet<String>,
    /// Commands that did not decode.
    garbled: Vec<String>,
}

/// The equipment: answers every command (re-deliveries too) through its
/// Response Topic after a delay drawn from the seed and the command id;
/// `place` reports its round (the activation in the id), and after the
/// last round's `place` it publishes the job's confirmation event once (an
/// id of its own, so a copy is recognised).
async fn equipment(port: u16, seed: u64, log: Arc<Mutex<Log>>) -> Durable {
    let mut d = Durable::connect(port, "chaos-equipment", Some("app/equipment/+/commands")).await;
    let client = d.client.clone();
    let mut rx = d.rx.take().expect("receiver");
    let task = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let at = Instant::now();
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let Ok(i) = binding::decode(&topic, p.payload.clone(), p.properties.as_ref()) else {
                log.lock().unwrap().garbled.push(topic);
                continue;
            };
            let cmd = i.event;
            let job = cmd.custom.get("jobid").cloned().unwrap_or_default();
            log.lock()
                .unwrap()
                .arrivals
                .push((at, cmd.id.clone(), cmd.ty.clone(), job.clone()));
            let reply_to = p
                .properties
                .as_ref()
                .and_then(|pr| pr.response_topic.clone());
            let correlation = p
                .properties
                .as_ref()
                .and_then(|pr| pr.correlation_data.clone());
            let (client, log) = (client.clone(), log.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 + mix(seed, &cmd.id) % 60)).await;
                let round = cmd
                    .id
                    .rsplit('/')
                    .next()
                    .and_then(|a| a.parse::<u64>().ok())
                    .unwrap_or(0);
                let data = if cmd.ty == PLACE {
                    json!({"ok": true, "round": round})
                } else {
                    json!({"ok": true})
                };
                let mut reply = CloudEvent::new(cmd.ty.clone(), "test-equipment");
                reply.correlationid = cmd.correlationid.clone();
                reply.causationid = Some(cmd.id.clone());
                reply.subject = cmd.subject.clone();
                reply.datacontenttype = Some("application/json".into());
                reply.data = Some(Bytes::from(serde_json::to_vec(&data).unwrap()));
                let out = binding::encode(&reply, None);
                let mut props = out.properties;
                props.correlation_data = correlation;
                if let Some(reply_to) = reply_to {
                    client
                        .publish_with_properties(
                            reply_to,
                            QoS::AtLeastOnce,
                            false,
                            out.payload,
                            props,
                        )
                        .await
                        .expect("equipment reply");
                    log.lock()
                        .unwrap()
                        .answers
                        .entry(cmd.id.clone())
                        .or_default()
                        .push(Instant::now());
                }
                if cmd.ty != PLACE || round < ROUNDS {
                    return;
                }
                if !log.lock().unwrap().confirming.insert(job.clone()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut e = CloudEvent::new(CONFIRMED, "test-equipment");
                e.id = format!("confirm-{job}");
                e.subject = Some(SCOPE.into());
                e.datacontenttype = Some("application/json".into());
                e.data = Some(Bytes::from_static(b"{\"done\":true}"));
                e.correlationid = Some(CorrelationId::from_text(job.clone()));
                let out = binding::encode(&e, None);
                client
                    .publish_with_properties(
                        format!("app/equipment/{SCOPE}/events"),
                        QoS::AtLeastOnce,
                        false,
                        out.payload,
                        out.properties,
                    )
                    .await
                    .expect("equipment event");
                log.lock()
                    .unwrap()
                    .confirmed
                    .entry(job)
                    .or_insert_with(Instant::now);
            });
        }
    });
    d.tasks.push(task);
    d
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL a replica; a new one with a new `POD_ID` follows.
    Replica,
    /// Restart the broker (SIGTERM: it writes its persistence).
    Broker,
    /// SIGKILL Redis and start it again on its append-only file.
    Redis,
}

/// The seeded plan: the feed's pause after every 10 jobs, and when each
/// fault strikes (from the start of the feed). Every fault falls inside
/// the feed, so jobs are running when it strikes.
struct Plan {
    pauses: Vec<Duration>,
    feed: Duration,
    faults: Vec<(Duration, Fault)>,
}

fn plan(rng: &mut Rng, jobs: usize, kinds: &[Fault]) -> Plan {
    let pauses: Vec<Duration> = (0..jobs.div_ceil(10))
        .map(|_| rng.millis(250, 550))
        .collect();
    let feed: Duration = pauses.iter().sum();
    let feed_ms = feed.as_millis() as u64;
    let mut faults = Vec::new();
    // A replica every 3 to 8 s.
    let mut t = rng.range(1000, 3000);
    while t + 1000 < feed_ms {
        faults.push((Duration::from_millis(t), Fault::Replica));
        t += rng.range(3000, 8000);
    }
    if faults.is_empty() {
        faults.push((feed / 2, Fault::Replica));
    }
    // The broker, then Redis, once per minute of feed (at least once), in
    // separate parts of each minute.
    let n = (feed_ms / 60_000).max(1);
    let seg = feed_ms / n;
    for k in 0..n {
        let base = k * seg;
        let broker = base + rng.range(seg * 20 / 100, seg * 45 / 100);
        let redis = base + rng.range(seg * 55 / 100, seg * 85 / 100);
        faults.push((Duration::from_millis(broker), Fault::Broker));
        faults.push((Duration::from_millis(redis), Fault::Redis));
    }
    faults.retain(|f| kinds.contains(&f.1));
    faults.sort_by_key(|f| f.0);
    Plan {
        pauses,
        feed,
        faults,
    }
}

fn start_replica(m: &Mosquitto, r: &Redis, pod: &str, logs: &Path) -> Replica {
    let mut e = env(m, r, pod);
    // Sessions of dead replicas are taken over after 5 s (default 10 s).
    jobs::set(&mut e, "APP_MQTT_SESSION_HEARTBEAT_INTERVAL", "1");
    jobs::set(&mut e, "APP_MQTT_SESSION_DEAD_AFTER", "5");
    // `CHAOS_LOG`: the replicas' log filter, e.g.
    // `warn,microdcs::transport=info` to follow session takeovers.
    let level = std::env::var("CHAOS_LOG").unwrap_or_else(|_| "warn".into());
    jobs::set(&mut e, "APP_LOG_LEVEL", &level);
    Replica::start_logged(e, pod, logs)
}

/// A set's members, or `None` while Redis is away (the connection is
/// opened again on the next call).
async fn members(
    redis: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    key: &str,
) -> Option<Vec<String>> {
    if conn.is_none() {
        *conn = tokio::time::timeout(
            Duration::from_secs(2),
            redis.get_multiplexed_async_connection(),
        )
        .await
        .ok()
        .and_then(Result::ok);
    }
    let c = conn.as_mut()?;
    match tokio::time::timeout(Duration::from_secs(2), c.smembers::<_, Vec<String>>(key)).await {
        Ok(Ok(v)) => Some(v),
        _ => {
            *conn = None;
            None
        }
    }
}

fn job_name(i: usize) -> String {
    format!("job-{i:04}")
}

/// The command ids a job must see, in order: `{scope}/{job}/{action}/{activation}`.
fn expected_ids(job: &str) -> Vec<String> {
    (1..=ROUNDS)
        .flat_map(|r| {
            [
                format!("{SCOPE}/{job}/pick/{r}"),
                format!("{SCOPE}/{job}/place/{r}"),
            ]
        })
        .collect()
}

/// The chaos run. What it checks, per job:
///
/// - it is in the Ended/Completed set (none is Aborted) and its job
///   response lists the steps pick, place, pick, place, confirm;
/// - the *distinct* command ids the equipment saw for it, in order of first
///   arrival, are exactly `pick/1, place/1, pick/2, place/2`, each with its
///   action's type: no step skipped or added, one id per activation. The
///   same id arriving again is a re-delivery and allowed; a second id for
///   an activation, or a command that comes before the previous one was
///   answered, is a failure;
/// - waits: from StoreAndStart to the first command, from each answer to
///   the next command, from the confirmation event to Ended. A wait
///   overlapping no fault window (a fault's start until `FAULT_WINDOW`
///   after it was injected) must stay under `QUIET_BOUND`, any other under
///   `FAULT_BOUND`. Jobs that never end fail the run after the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_jobs_survive_killed_replicas_and_broker_and_redis_restarts() {
    init_tracing();
    let jobs_n: usize = env_or("CHAOS_JOBS", DEFAULT_JOBS);
    let seed: u64 = env_or("CHAOS_SEED", DEFAULT_SEED);
    assert!(jobs_n > 0, "CHAOS_JOBS must be at least 1");
    eprintln!("chaos: CHAOS_SEED={seed} CHAOS_JOBS={jobs_n}");
    let mut rng = Rng(seed);
    // `CHAOS_FAULTS` (default `replica,broker,redis`) narrows a failure
    // down: the other kinds' times stay as planned, they just do not strike.
    let kinds: Vec<Fault> = std::env::var("CHAOS_FAULTS")
        .unwrap_or_else(|_| "replica,broker,redis".into())
        .split(',')
        .filter(|k| !k.trim().is_empty())
        .map(|k| match k.trim() {
            "replica" => Fault::Replica,
            "broker" => Fault::Broker,
            "redis" => Fault::Redis,
            other => panic!("CHAOS_FAULTS: unknown fault {other:?} (replica, broker, redis)"),
        })
        .collect();
    eprintln!("chaos: CHAOS_FAULTS={kinds:?}");
    let plan = plan(&mut rng, jobs_n, &kinds);
    let logs: PathBuf =
        std::env::temp_dir().join(format!("microdcs-chaos-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log directory");
    pin_binary(&logs);

    let mut m = Mosquitto::start();
    let mut r = Redis::start_durable();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| start_replica(&m, &r, &format!("rep-{i}"), &logs))
        .collect();
    let mut next_pod = replicas.len();
    let log = Arc::new(Mutex::new(Log::default()));
    let _equipment = equipment(m.port(), seed, log.clone()).await;
    {
        // Set-up, before any fault: the replicas are up once one of them
        // answers a query; then the recipe.
        let mut mes = Mes::connect(m.port(), "mes").await;
        let ready = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = mes
                .call_with(
                    "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1",
                    &format!("probe-{}", uuid::Uuid::new_v4()),
                    Some(SCOPE),
                    &json!({"JobOrderID": "none"}),
                )
                .await;
            if probe.is_some() {
                break;
            }
            assert!(Instant::now() < ready, "the replicas did not come up");
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // the others too
        mes.configure(
            "workmaster",
            SCOPE,
            json!({"ID": "wm-axle", "data": recipe(), "dataschema": SFC}),
            false,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The MES: StoreAndStart in bursts of 10, paused as planned.
    let mes = Durable::connect(m.port(), "chaos-mes", None).await;
    let stored: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; jobs_n]));
    let t0 = Instant::now();
    let feed = {
        let (client, stored, pauses) = (mes.client.clone(), stored.clone(), plan.pauses.clone());
        tokio::spawn(async move {
            for i in 0..jobs_n {
                let body = json!({"JobOrder": order(&job_name(i))});
                let props = microdcs::testkit::mqtt::ce_props(
                    &format!("{}StoreAndStart.v2", jobs::S),
                    &format!("store-{i}"),
                    Some(SCOPE),
                    None,
                    None,
                );
                stored.lock().unwrap()[i] = Some(Instant::now());
                client
                    .publish_with_properties(
                        "app/jobs/commands",
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&body).unwrap(),
                        props,
                    )
                    .await
                    .expect("StoreAndStart");
                if i % 10 == 9 || i + 1 == jobs_n {
                    tokio::time::sleep(pauses[i / 10]).await;
                }
            }
        })
    };

    // Watch the jobs end; strike as planned.
    let ended_key = format!("t:{{{SCOPE}}}:st:5.1");
    let aborted_key = format!("t:{{{SCOPE}}}:st:6");
    let redis = r.client();
    let mut conn = None;
    let mut ended_at: HashMap<String, Instant> = HashMap::new();
    let mut aborted: Vec<String> = Vec::new();
    let mut struck: Vec<(Instant, Instant, Fault, String)> = Vec::new();
    let mut planned = plan
        .faults
        .iter()
        .copied()
        .collect::<std::collections::VecDeque<_>>();
    let mut replacements: Vec<(Instant, String)> = Vec::new();
    let deadline = t0 + plan.feed + Duration::from_secs(120);
    let mut last_progress = Instant::now();
    let outcome = loop {
        if let Some(done) = members(&redis, &mut conn, &ended_key).await {
            let now = Instant::now();
            for j in done {
                ended_at.entry(j).or_insert_with(|| {
                    last_progress = now;
                    now
                });
            }
        }
        if let Some(a) = members(&redis, &mut conn, &aborted_key).await {
            if !a.is_empty() {
                aborted = a;
                break "a job was aborted";
            }
        }
        let now = Instant::now();
        if ended_at.len() >= jobs_n {
            break "all ended";
        }
        if now > deadline {
            break "deadline passed";
        }
        if planned.is_empty() && now.duration_since(last_progress) > Duration::from_secs(60) {
            break "no job ended for 60 s";
        }
        replacements.retain(|(at, pod)| {
            if *at > now {
                return true;
            }
            replicas.push(start_replica(&m, &r, pod, &logs));
            false
        });
        while let Some(&(at, fault)) = planned.front() {
            if t0 + at > Instant::now() {
                break;
            }
            planned.pop_front();
            let start = Instant::now();
            let what = match fault {
                Fault::Replica if replicas.is_empty() => "no replica to kill".to_owned(),
                Fault::Replica => {
                    let victim = replicas.remove((rng.next() % replicas.len() as u64) as usize);
                    let pod = victim.pod.clone();
                    victim.kill();
                    let new = format!("rep-{next_pod}");
                    next_pod += 1;
                    let after = rng.millis(300, 2000);
                    replacements.push((Instant::now() + after, new.clone()));
                    format!("SIGKILL {pod}; {new} starts {} ms later", after.as_millis())
                }
                Fault::Broker => {
                    tokio::task::block_in_place(|| m.restart());
                    "broker restarted".to_owned()
                }
                Fault::Redis => {
                    tokio::task::block_in_place(|| r.restart());
                    conn = None;
                    "Redis killed and restarted on its AOF".to_owned()
                }
            };
            struck.push((start, Instant::now(), fault, what));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run_time = t0.elapsed();
    // No replica starts any more; the logs are kept on failure, the binary
    // (a copy if /tmp is another file system) need not be.
    let _ = std::fs::remove_file(logs.join("microdcs"));
    let _ = tokio::time::timeout(Duration::from_secs(10), feed).await;

    // Each job's response, for the steps it took.
    let mut c = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis after the run");
    let mut steps: Vec<Option<Vec<String>>> = Vec::with_capacity(jobs_n);
    let mut job_hash: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for i in 0..jobs_n {
        let job = job_name(i);
        let resp: Option<String> = c
            .hget(format!("t:{{{SCOPE}}}:job:{job}"), "resp")
            .await
            .unwrap();
        let s = resp
            .and_then(|r| serde_json::from_str::<Value>(&r).ok())
            .and_then(|resp| {
                resp["JobResponseData"]
                    .as_array()?
                    .iter()
                    .find(|d| d["ID"] == "steps")?["Value"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| s["Step"].as_str().unwrap_or("?").to_owned())
                            .collect()
                    })
            });
        if !ended_at.contains_key(&job) {
            let mut fields: Vec<(String, String)> = Vec::new();
            for key in [
                format!("t:{{{SCOPE}}}:job:{job}"),
                format!("t:{{{SCOPE}}}:exec:{job}"),
            ] {
                let h: HashMap<String, String> = c.hgetall(&key).await.unwrap_or_default();
                fields.extend(h.into_iter().map(|(k, v)| {
                    let v: String = v.chars().take(300).collect();
                    (format!("{key} {k}"), v)
                }));
            }
            fields.sort();
            job_hash.insert(job.clone(), fields);
        }
        steps.push(s);
    }

    // The checks.
    let log = log.lock().unwrap();
    let stored = stored.lock().unwrap();
    let windows: Vec<(Instant, Instant)> = struck
        .iter()
        .map(|(s, e, _, _)| (*s, *e + FAULT_WINDOW))
        .collect();
    let mut by_job: HashMap<&str, Vec<(Instant, &str, &str)>> = HashMap::new();
    for (at, id, ty, job) in &log.arrivals {
        by_job
            .entry(job.as_str())
            .or_default()
            .push((*at, id.as_str(), ty.as_str()));
    }
    let want_steps: Vec<String> = (0..ROUNDS)
        .flat_map(|_| ["pick", "place"])
        .chain(["confirm"])
        .map(str::to_owned)
        .collect();
    let mut failures: Vec<(String, Vec<String>)> = Vec::new();
    let (mut redelivered, mut max_quiet, mut max_fault) = (0usize, Duration::ZERO, Duration::ZERO);
    for (i, steps) in steps.iter().enumerate() {
        let job = job_name(i);
        let mut problems = Vec::new();
        let arrivals = by_job.get(job.as_str()).cloned().unwrap_or_default();
        let mut distinct: Vec<&str> = Vec::new();
        for (_, id, ty) in &arrivals {
            if distinct.contains(id) {
                redelivered += 1;
            } else {
                distinct.push(id);
            }
            let want = match id.split('/').nth(2) {
                Some("pick") => PICK,
                Some("place") => PLACE,
                _ => "?",
            };
            if *ty != want {
                problems.push(format!("command {id} has type {ty}"));
            }
        }
        let expected = expected_ids(&job);
        if distinct != expected {
            problems.push(format!("command ids {distinct:?}, expected {expected:?}"));
        }
        let ended = ended_at.get(&job).copied();
        if ended.is_none() {
            problems.push("not Ended/Completed".to_owned());
        }
        if ended.is_some() && steps.as_ref() != Some(&want_steps) {
            problems.push(format!("steps {steps:?}, expected {want_steps:?}"));
        }
        if distinct == expected {
            let first_arrival = |id: &str| arrivals.iter().filter(|a| a.1 == id).map(|a| a.0).min();
            let first_answer = |id: &str| log.answers.get(id).and_then(|a| a.iter().min().copied());
            let mut waits = vec![(
                stored[i],
                first_arrival(&expected[0]),
                format!("StoreAndStart → {}", expected[0]),
            )];
            for k in 1..expected.len() {
                let (prev, next) = (&expected[k - 1], &expected[k]);
                let (answered, arrived) = (first_answer(prev), first_arrival(next));
                if let (Some(a), Some(b)) = (answered, arrived) {
                    if b < a {
                        problems.push(format!("{next} arrived before {prev} was answered"));
                    }
                }
                waits.push((answered, arrived, format!("answer to {prev} → {next}")));
            }
            if ended.is_some() {
                waits.push((
                    log.confirmed.get(&job).copied(),
                    ended,
                    "confirmation → Ended".to_owned(),
                ));
            }
            for (from, to, what) in waits {
                let (Some(from), Some(to)) = (from, to) else {
                    problems.push(format!("{what}: one end missing ({from:?}, {to:?})"));
                    continue;
                };
                let wait = to.saturating_duration_since(from);
                let faulty = windows.iter().any(|(s, e)| from < *e && to > *s);
                let bound = if faulty { FAULT_BOUND } else { QUIET_BOUND };
                if faulty {
                    max_fault = max_fault.max(wait);
                } else {
                    max_quiet = max_quiet.max(wait);
                }
                if wait > bound {
                    problems.push(format!(
                        "{what} took {} ms (bound {} s{})",
                        wait.as_millis(),
                        bound.as_secs(),
                        if faulty { ", in a fault window" } else { "" }
                    ));
                }
            }
        }
        if !problems.is_empty() {
            failures.push((job, problems));
        }
    }

    let at = |t: Instant| format!("{:>9.3} s", t.saturating_duration_since(t0).as_secs_f64());
    let mut report = format!(
        "CHAOS_SEED={seed} CHAOS_JOBS={jobs_n}: {outcome} after {:.1} s; {} of {jobs_n} \
         Ended/Completed, aborted {aborted:?}; {} commands ({redelivered} re-deliveries); \
         longest wait outside fault windows {} ms, inside {} ms\nfaults:\n",
        run_time.as_secs_f64(),
        ended_at.len(),
        log.arrivals.len(),
        max_quiet.as_millis(),
        max_fault.as_millis(),
    );
    for (s, e, fault, what) in &struck {
        let _ = writeln!(report, "  {} .. {}  {fault:?}: {what}", at(*s), at(*e));
    }
    if !log.garbled.is_empty() {
        let _ = writeln!(report, "undecodable commands on {:?}", log.garbled);
    }
    if failures.is_empty() && log.garbled.is_empty() && outcome == "all ended" {
        println!("{report}");
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        let count = |what: &str| {
            failures
                .iter()
                .filter(|(_, p)| p.iter().any(|p| p.contains(what)))
                .count()
        };
        let _ = writeln!(
            report,
            "{} jobs failed: {} not ended, {} with other command ids, {} with other steps, \
             {} out of order, {} waited too long; the first ones:",
            failures.len(),
            count("not Ended"),
            count("command ids"),
            count("steps "),
            count("before"),
            count(" took "),
        );
        // The first five, and the first two that waited too long outside
        // any fault window.
        let quiet = failures
            .iter()
            .filter(|(_, p)| {
                p.iter()
                    .any(|p| p.contains(" took ") && !p.contains("fault window"))
            })
            .take(2);
        let mut shown: Vec<&(String, Vec<String>)> = failures.iter().take(5).collect();
        for f in quiet {
            if !shown.contains(&f) {
                shown.push(f);
            }
        }
        for (job, problems) in shown {
            let _ = writeln!(report, "{job}: {}", problems.join("; "));
            let i: usize = job[4..].parse().unwrap();
            if let Some(t) = stored[i] {
                let _ = writeln!(report, "  {}  StoreAndStart sent", at(t));
            }
            let mut lines: Vec<(Instant, String)> = Vec::new();
            for (t, id, ty) in by_job.get(job.as_str()).into_iter().flatten() {
                lines.push((*t, format!("command {id} ({ty}) arrived")));
                for a in log.answers.get(*id).into_iter().flatten() {
                    lines.push((*a, format!("command {id} answered")));
                }
            }
            lines.sort();
            lines.dedup();
            if let Some(t) = log.confirmed.get(job) {
                lines.push((*t, "confirmation event sent".to_owned()));
            }
            if let Some(t) = ended_at.get(job) {
                lines.push((*t, "seen Ended/Completed".to_owned()));
            }
            lines.sort();
            for (t, what) in lines {
                let _ = writeln!(report, "  {}  {what}", at(t));
            }
            for (k, v) in job_hash.get(job).into_iter().flatten() {
                let _ = writeln!(report, "  redis {k} = {v}");
            }
        }
        let _ = writeln!(report, "replica logs: {}", logs.display());
        panic!("{report}");
    }
    assert!(
        kinds.iter().all(|k| struck.iter().any(|f| f.2 == *k)),
        "every kind of fault struck while jobs ran: {report}"
    );
    drop(replicas);
}

/// The reply sources of `n` queries sent at once, collected until `within`
/// passes (a failure bound, not a performance target).
async fn ask_all(mes: &mut Mes, n: usize, within: Duration) -> Vec<String> {
    use microdcs::testkit::mqtt::{ce_props, user_prop};
    let mut waiting = BTreeSet::new();
    for i in 0..n {
        let corr = uuid::Uuid::new_v4();
        let props = ce_props(
            "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1",
            &format!("query-{corr}"),
            Some("cell"),
            Some("mes/mes/replies"),
            Some(corr.as_bytes()),
        );
        let body = json!({"JobOrderID": format!("none-{i}")});
        mes.client
            .publish(
                "app/jobs/commands",
                serde_json::to_vec(&body).unwrap(),
                props,
            )
            .await;
        waiting.insert(corr.as_bytes().to_vec());
    }
    let deadline = Instant::now() + within;
    let mut sources = Vec::new();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = mes.client.recv(left).await else {
            break;
        };
        let corr = p
            .properties
            .as_ref()
            .and_then(|pr| pr.correlation_data.as_ref())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        if waiting.remove(&corr) {
            sources.push(user_prop(&p, "source").unwrap_or_default().to_string());
        }
    }
    sources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_are_answered_after_a_replica_dies_for_good() {
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let ids = ["solo-0", "solo-1", "solo-2"];
    // Faster than the defaults (2 s, 10 s: answers ~12 s after the crash)
    // so that the 20 s bound holds on a loaded machine.
    let env = |id: &str| {
        let mut e = env(&m, &r, id);
        jobs::set(&mut e, "APP_MQTT_SESSION_HEARTBEAT_INTERVAL", "1");
        jobs::set(&mut e, "APP_MQTT_SESSION_DEAD_AFTER", "5");
        e
    };
    let mut replicas: Vec<_> = ids.iter().map(|id| Some(Replica::start(env(id)))).collect();
    let mut mes = Mes::connect(m.port(), "mes").await;
    // Every replica is in the group once each has answered a query.
    let mut seen = BTreeSet::new();
    let ready = Instant::now() + Duration::from_secs(60);
    while seen.len() < ids.len() {
        assert!(Instant::now() < ready, "replicas answering: {seen:?}");
        seen.extend(ask_all(&mut mes, 6, Duration::from_secs(2)).await);
    }
    // Killed like a pod that Kubernetes replaces: a new pod gets a new
    // POD_ID, so this client id never connects again.
    replicas[1].take().expect("replica").kill();
    let answered = ask_all(&mut mes, 10, Duration::from_secs(20)).await;
    assert_eq!(
        answered.len(),
        10,
        "every command is answered by the surviving replicas: {answered:?}"
    );
    assert!(
        !answered.iter().any(|s| s == "station/solo-1"),
        "the dead replica answered nothing: {answered:?}"
    );
    // The dead session was ended: it is gone from the registry while the
    // survivors keep their heartbeats.
    let mut c = r.client().get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut sessions: Vec<String> = c.zrange("t:{mqtt}:sessions", 0, -1).await.unwrap();
        sessions.sort();
        if sessions == ["microdcs-solo-0", "microdcs-solo-2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registered sessions: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
