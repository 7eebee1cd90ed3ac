//! One station scenario: a broker and a durable Redis of its own, the
//! simulator, the spy and the counter probes in this process, `replicas`
//! `microdcs run` processes, and the MES running warm-up, sequential and
//! loaded batches of jobs, storing jobs in between to grow the scope's
//! history.

use super::counters::{
    BrokerProbe, BrokerSnapshot, Packets, RedisDelta, RedisProbe, RedisSnapshot,
};
use super::mes::{self, Mes, Phase};
use super::replicas::{self, Replica};
use super::spy::{self, Spy, StepTypes, Steps};
use super::stats::{cpu_ticks, rate, ticks_per_second};
use super::{BenchResult, Sizes};
use microdcs::sim::{EmitSpec, Rule, SimConfig, Simulator};
use microdcs::testkit::devenv::{Autosave, LocalMosquitto, LocalRedis};
use microdcs::testkit::mqtt::user_prop;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The recipe's action types.
pub(crate) const TYPES: StepTypes = StepTypes {
    first: "com.example.cell.pick.v1",
    second: "com.example.cell.place.v1",
    event: "com.example.cell.confirmed.v1",
};
/// Longer than a replica's interval between two scans for dead sessions
/// (`DEFAULT_HEARTBEAT_INTERVAL`, 2 s).
const SESSION_SCAN: Duration = Duration::from_secs(3);
/// How long a batch may go without any job finishing.
const STALL: Duration = Duration::from_secs(30);

/// Three steps: two `push_command` steps and a `pull_event` step; the
/// second transition reads the first command's result.
pub(crate) fn recipe() -> Value {
    json!({
        "Steps": [{"Name": "pick", "Initial": true}, {"Name": "place"}, {"Name": "confirm"}],
        "Transitions": [
            {"Source": "pick", "Target": "place", "Condition": "always"},
            {"Source": "place", "Target": "confirm", "Condition": "results.place.ok == true"}
        ],
        "Actions": [
            {"Name": "pick", "Step": "pick", "Qualifier": "N", "Interaction": "push_command",
             "TypeId": TYPES.first, "TimeoutSeconds": 30, "Retry": {"MaxAttempts": 3}},
            {"Name": "place", "Step": "place", "Qualifier": "N", "Interaction": "push_command",
             "TypeId": TYPES.second, "TimeoutSeconds": 30, "Retry": {"MaxAttempts": 3}},
            {"Name": "confirm", "Step": "confirm", "Qualifier": "N", "Interaction": "pull_event",
             "TypeId": TYPES.event, "TimeoutSeconds": 120}
        ]
    })
}

/// Steps per job.
pub(crate) const STEPS_PER_JOB: usize = 3;

/// Replica stats: (id, RSS now, peak RSS) in MB.
pub(crate) type Rss = Vec<(String, Option<(f64, f64)>)>;

/// What one scenario measured.
#[derive(Debug)]
pub(crate) struct StationRun {
    pub(crate) replicas: usize,
    /// Jobs one at a time.
    pub(crate) sequential: Steps,
    /// The loaded batches (`in_flight` jobs at a time): one, and with 1
    /// replica a second one after the scope was filled to
    /// [`Sizes::stored_large`] jobs.
    pub(crate) batches: Vec<Batch>,
    /// The `Store` orders between the two batches.
    pub(crate) fill: Option<Fill>,
    /// With the scaling batches: one more after them, with the audit
    /// trail's step entries off (`APP_JOBS_AUDIT_STEPS=false`).
    pub(crate) without_step_audit: Option<Batch>,
    /// Lines the replicas logged (warnings and errors).
    pub(crate) log_lines: usize,
    /// The first of them.
    pub(crate) first_warning: Option<String>,
    /// Times the station did not go idle within the limit before a
    /// counter was read (its figures then miss some late work).
    pub(crate) not_idle: usize,
}

/// One loaded batch and the counters around it.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Jobs stored in the scope when the batch started.
    pub(crate) stored: usize,
    /// Jobs that ended.
    pub(crate) jobs: usize,
    /// From the first order to the last Ended event.
    pub(crate) elapsed: Duration,
    /// Step latencies.
    pub(crate) steps: Steps,
    /// Redis commands and memory from idle before to idle after.
    pub(crate) redis: RedisDelta,
    /// MQTT packets from idle before to idle after.
    pub(crate) packets: Packets,
    /// Redis round trips of the replicas (client calls through their
    /// shared connection) for the batch, when they reported them.
    pub(crate) round_trips: Option<u64>,
    /// Per replica after the batch.
    pub(crate) rss: Rss,
    /// CPU time each process used for the batch.
    pub(crate) cpu: Cpu,
}

/// CPU time (user + system) used over a batch, from idle before to idle
/// after, in seconds; `None` where a process could not be read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// All station replicas together.
    pub(crate) station: Option<f64>,
    /// redis-server.
    pub(crate) redis: Option<f64>,
    /// mosquitto.
    pub(crate) broker: Option<f64>,
    /// This process: the MES, the simulated equipment, the spy and the
    /// probes.
    pub(crate) load: Option<f64>,
}

/// CPU ticks of the processes of a scenario at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    station: Option<u64>,
    redis: Option<u64>,
    broker: Option<u64>,
    load: Option<u64>,
}

impl CpuReading {
    fn take(procs: &[Replica], pids: Pids) -> Self {
        let station = procs
            .iter()
            .map(|p| p.pid().and_then(cpu_ticks))
            .sum::<Option<u64>>();
        CpuReading {
            station,
            redis: pids.redis.and_then(cpu_ticks),
            broker: pids.broker.and_then(cpu_ticks),
            load: cpu_ticks(std::process::id()),
        }
    }

    fn since(&self, before: &CpuReading) -> Cpu {
        let hz = ticks_per_second() as f64;
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.checked_sub(b?)? as f64 / hz);
        Cpu {
            station: d(self.station, before.station),
            redis: d(self.redis, before.redis),
            broker: d(self.broker, before.broker),
            load: d(self.load, before.load),
        }
    }
}

/// Process ids of the scenario's servers.
#[derive(Debug, Clone, Copy)]
struct Pids {
    redis: Option<u32>,
    broker: Option<u32>,
}

impl Batch {
    pub(crate) fn jobs_per_s(&self) -> f64 {
        rate(self.jobs, self.elapsed)
    }

    pub(crate) fn steps_per_s(&self) -> f64 {
        self.jobs_per_s() * STEPS_PER_JOB as f64
    }

    /// Steps in the batch.
    pub(crate) fn steps(&self) -> usize {
        self.jobs * STEPS_PER_JOB
    }

    /// `n` per step.
    pub(crate) fn per_step(&self, n: u64) -> f64 {
        n as f64 / self.steps().max(1) as f64
    }

    /// The largest RSS now of a replica, MB.
    pub(crate) fn max_rss(&self) -> Option<f64> {
        self.rss
            .iter()
            .filter_map(|(_, m)| m.map(|(now, _)| now))
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            })
    }
}

/// Jobs stored (not started) to grow the scope's history.
#[derive(Debug)]
pub(crate) struct Fill {
    /// Jobs stored.
    pub(crate) jobs: usize,
    /// From the first order to the last reply.
    pub(crate) elapsed: Duration,
    /// Change of Redis's `used_memory` from idle before to idle after.
    pub(crate) used_memory: i64,
}

/// Runs the station with `replicas` replicas of `bin` on a durable Redis
/// (AOF, `appendfsync always`); `scaling` adds the second batch after the
/// scope was filled to [`Sizes::stored_large`] jobs.
pub(crate) async fn run(
    bin: &Path,
    replicas: usize,
    sizes: Sizes,
    scaling: bool,
) -> BenchResult<StationRun> {
    let m = LocalMosquitto::start_with_sys_interval(Autosave::AsShipped, 1)
        .map_err(|e| format!("cannot start mosquitto: {e}"))?;
    let r = LocalRedis::start_durable().map_err(|e| format!("cannot start redis-server: {e}"))?;
    let logs = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;

    // The equipment answers at once; `place` also reports the pull event
    // (correlation id = the job) right after its reply.
    let mut sim_config = SimConfig::new("127.0.0.1", m.port())
        .rule(Rule::new(TYPES.first).result(json!({"ok": true})))
        .rule(
            Rule::new(TYPES.second)
                .result(json!({"ok": true}))
                .emit(EmitSpec::new(TYPES.event).data(json!({"done": true}))),
        );
    sim_config.client_id = "bench-sim".into();
    let sim = Simulator::new(sim_config).map_err(|e| format!("simulator: {e}"))?;
    let sim_handle = sim.handle();
    let sim_task = tokio::spawn(sim.run(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(10), sim_handle.ready())
        .await
        .map_err(|_| "the simulator did not subscribe within 10 s".to_owned())?;
    let mut probes = Probes {
        spy: Spy::connect(m.port()).await?,
        redis: RedisProbe::connect(&r.url()).await?,
        broker: BrokerProbe::connect(m.port()).await?,
        not_idle: 0,
    };
    let mut mes = Mes::connect(m.port()).await?;

    let shared = (replicas > 1).then_some("cell");
    let mut procs = Vec::new();
    for i in 0..replicas {
        let id = format!("replica-{i}");
        let env = replicas::env(m.port(), r.port(), &id, shared);
        procs.push(Replica::spawn(bin, &id, env, logs.path())?);
    }
    let pids = Pids {
        redis: r.pid(),
        broker: m.pid(),
    };
    let result = drive(&mut mes, &mut probes, &mut procs, &r, pids, sizes, scaling).await;
    let log_lines = procs.iter().map(Replica::log_lines).sum();
    let first_warning = procs.iter().find_map(Replica::first_warning);
    if result.is_err() {
        for p in &procs {
            let tail = p.log_tail();
            if !tail.is_empty() {
                eprintln!("--- log of {} ---\n{tail}", p.id);
            }
        }
    }
    tokio::task::block_in_place(|| {
        procs.iter_mut().for_each(Replica::terminate);
        procs.iter_mut().for_each(Replica::stop);
    });
    sim_handle.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
    let driven = result?;
    let records = probes.spy.drain(Duration::from_millis(500)).await;
    let sequential = spy::steps(&records, TYPES, &driven.sequential.sent);
    let measured = |b: RawBatch| {
        // The spy's copies (QoS 0, one packet each) are the benchmark's
        // own traffic, not the station's.
        let spied = records
            .iter()
            .filter(|(at, _)| *at > b.broker.0.at && *at <= b.broker.1.at)
            .count() as u64;
        Batch {
            stored: b.stored,
            jobs: b.phase.ended.len(),
            elapsed: b.phase.elapsed,
            steps: spy::steps(&records, TYPES, &b.phase.sent),
            redis: b.redis.1.since(&b.redis.0),
            packets: b.broker.1.since(&b.broker.0, spied),
            round_trips: b.round_trips,
            rss: b.rss,
            cpu: b.cpu,
        }
    };
    let batches = driven.batches.into_iter().map(measured).collect();
    Ok(StationRun {
        replicas,
        sequential,
        batches,
        fill: driven.fill,
        without_step_audit: driven.without_step_audit.map(measured),
        log_lines,
        first_warning,
        not_idle: probes.not_idle,
    })
}

/// The benchmark's observers of one scenario.
struct Probes {
    spy: Spy,
    redis: RedisProbe,
    broker: BrokerProbe,
    /// Waits for idle that ran out.
    not_idle: usize,
}

impl Probes {
    /// Waits until the station is idle.
    async fn settle(&mut self) -> BenchResult<()> {
        if !self.redis.wait_idle().await? {
            self.not_idle += 1;
        }
        Ok(())
    }

    /// Both counters once the station is idle.
    async fn read(&mut self) -> BenchResult<(RedisSnapshot, BrokerSnapshot)> {
        self.settle().await?;
        let broker = self.broker.snapshot().await?;
        let redis = self.redis.snapshot().await?;
        Ok((redis, broker))
    }
}

/// A batch before its spy records are sorted out.
struct RawBatch {
    stored: usize,
    phase: Phase,
    redis: (RedisSnapshot, RedisSnapshot),
    broker: (BrokerSnapshot, BrokerSnapshot),
    round_trips: Option<u64>,
    rss: Rss,
    cpu: Cpu,
}

struct Driven {
    sequential: Phase,
    batches: Vec<RawBatch>,
    fill: Option<Fill>,
    without_step_audit: Option<RawBatch>,
}

async fn drive(
    mes: &mut Mes,
    probes: &mut Probes,
    procs: &mut [Replica],
    redis: &LocalRedis,
    pids: Pids,
    sizes: Sizes,
    scaling: bool,
) -> BenchResult<Driven> {
    wait_ready(mes, procs).await?;
    store_work_master(mes, redis).await?;

    let warm = mes.run_jobs("warm", sizes.warmup_jobs, 20, STALL).await?;
    report_failures("warm-up", &warm)?;
    let seq = mes.run_jobs("seq", sizes.sequential_jobs, 1, STALL).await?;
    report_failures("sequential", &seq)?;
    let mut stored = warm.ended.len() + seq.ended.len();
    stored += fill(
        mes,
        "fill",
        sizes.stored_small.saturating_sub(stored),
        sizes,
    )
    .await?;

    let mut batches = vec![batch(mes, probes, procs, pids, "job", stored, sizes).await?];
    stored += batches[0].phase.ended.len();
    let mut filled = None;
    if scaling {
        let jobs = sizes.stored_large.saturating_sub(stored);
        let started = Instant::now();
        let added = fill(mes, "hist", jobs, sizes).await?;
        let elapsed = started.elapsed();
        stored += added;
        let next = batch(mes, probes, procs, pids, "big", stored, sizes).await?;
        filled = Some(Fill {
            jobs: added,
            elapsed,
            used_memory: next.redis.0.used_memory_since(&batches[0].redis.1),
        });
        batches.push(next);
    }
    let mut without_step_audit = None;
    if scaling {
        stored += batches.last().map_or(0, |b| b.phase.ended.len());
        for p in procs.iter_mut() {
            p.set_env("APP_JOBS_AUDIT_STEPS", "false");
        }
        without_step_audit = Some(batch(mes, probes, procs, pids, "quiet", stored, sizes).await?);
    }
    if let Some(why) = procs.iter_mut().find_map(Replica::exited) {
        return Err(why);
    }
    Ok(Driven {
        sequential: seq,
        batches,
        fill: filled,
        without_step_audit,
    })
}

/// Stores `jobs` jobs named `{prefix}-{n}`; how many were stored.
async fn fill(mes: &mut Mes, prefix: &str, jobs: usize, sizes: Sizes) -> BenchResult<usize> {
    if jobs == 0 {
        return Ok(0);
    }
    eprintln!("  storing {jobs} jobs ...");
    let phase = mes
        .store_jobs(prefix, jobs, sizes.fill_in_flight, STALL)
        .await?;
    report_failures("store", &phase)?;
    Ok(phase.ended.len())
}

/// One loaded batch with the counters read at idle before and after.
///
/// A replica counts its Redis round trips per process and reports the
/// total only when it stops, so the batch runs in a life of its own: the
/// replicas are restarted before it (ending the life of the earlier
/// phases), once more after they went idle (that life's total is the cost
/// of starting and idling, subtracted), and after the batch.
async fn batch(
    mes: &mut Mes,
    probes: &mut Probes,
    procs: &mut [Replica],
    pids: Pids,
    prefix: &str,
    stored: usize,
    sizes: Sizes,
) -> BenchResult<RawBatch> {
    restart_all(procs)?;
    restarted(mes, probes, procs).await?;
    let baseline = restart_all(procs)?;
    restarted(mes, probes, procs).await?;
    let before = probes.read().await?;
    let cpu_before = CpuReading::take(procs, pids);
    eprintln!("  {} jobs, {stored} stored ...", sizes.loaded_jobs);
    let phase = mes
        .run_jobs(prefix, sizes.loaded_jobs, sizes.in_flight, STALL)
        .await?;
    report_failures("loaded", &phase)?;
    let after = probes.read().await?;
    let cpu = CpuReading::take(procs, pids).since(&cpu_before);
    let rss = procs.iter().map(|p| (p.id.clone(), p.rss())).collect();
    if let Some(why) = procs.iter_mut().find_map(Replica::exited) {
        return Err(why);
    }
    let total = restart_all(procs)?;
    restarted(mes, probes, procs).await?;
    let round_trips = match (total, baseline) {
        (Some(t), Some(b)) => Some(t.saturating_sub(b)),
        _ => None,
    };
    Ok(RawBatch {
        stored,
        phase,
        redis: (before.0, after.0),
        broker: (before.1, after.1),
        round_trips,
        rss,
        cpu,
    })
}

/// Waits until restarted replicas are connected and idle. Replicas that
/// share a subscription first get [`SESSION_SCAN`]: a stopped replica
/// marks its MQTT session gone, and a peer's next scan may take it over
/// (the owner, back with the same client id, then takes it back), which
/// must not fall into a measured batch.
async fn restarted(mes: &mut Mes, probes: &mut Probes, procs: &mut [Replica]) -> BenchResult<()> {
    wait_ready(mes, procs).await?;
    if procs.len() > 1 {
        tokio::time::sleep(SESSION_SCAN).await;
    }
    probes.settle().await
}

/// Restarts every replica: all stop before any starts again, so no peer
/// takes over a stopped replica's MQTT session meanwhile. The sum of the
/// Redis round trips their ended lives reported (`None` if one did not
/// report).
fn restart_all(procs: &mut [Replica]) -> BenchResult<Option<u64>> {
    tokio::task::block_in_place(|| {
        // Every life ends before the first one starts again; they shut
        // down in parallel.
        procs.iter_mut().for_each(Replica::terminate);
        let trips: Vec<Option<u64>> = procs.iter_mut().map(Replica::end_life).collect();
        let sum = trips.into_iter().sum();
        for p in procs.iter_mut() {
            p.start_again()?;
        }
        Ok(sum)
    })
}

/// Waits until every replica published its processor metadata (it is
/// connected), or one of them exited.
async fn wait_ready(mes: &mut Mes, procs: &mut [Replica]) -> BenchResult<()> {
    let mut missing: HashSet<String> = procs.iter().map(|p| format!("station/{}", p.id)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() {
        if let Some(why) = procs.iter_mut().find_map(Replica::exited) {
            return Err(why);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "replicas not connected within 30 s: {missing:?} published no metadata"
            ));
        }
        if let Some((_, p)) = mes.recv_at(Duration::from_millis(200)).await {
            if p.topic.as_ref() == b"app/jobs/metadata" {
                if let Some(source) = user_prop(&p, "source") {
                    missing.remove(source);
                }
            }
        }
    }
    Ok(())
}

/// Sends the work master until it is in Redis: a configuration event has
/// no reply, and one sent before a replica's subscription took effect is
/// lost.
async fn store_work_master(mes: &mut Mes, redis: &LocalRedis) -> BenchResult<()> {
    let client = redis::Client::open(redis.url()).map_err(|e| format!("redis url: {e}"))?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let key = format!("bench:{{{}}}:cfg:workmaster", mes::SCOPE);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut resend = Instant::now();
    loop {
        if Instant::now() >= resend {
            mes.store_work_master(recipe()).await?;
            resend = Instant::now() + Duration::from_millis(500);
        }
        let stored: bool = c
            .hexists(&key, mes::WORK_MASTER)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        if stored {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the work master '{}' was not stored within 15 s ({key})",
                mes::WORK_MASTER
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report_failures(what: &str, phase: &Phase) -> BenchResult<()> {
    match phase.failed.first() {
        None => Ok(()),
        Some((job, why)) => Err(format!(
            "{what}: {} jobs failed, e.g. {job}: {why}",
            phase.failed.len()
        )),
    }
}
