//! One station scenario: a broker and Redis of its own, the simulator and
//! the spy in this process, `replicas` `microdcs run` processes, and the
//! MES running warm-up, sequential and loaded batches of jobs.

use super::mes::{self, Mes, Phase};
use super::replicas::{self, Replica};
use super::spy::{self, Spy, StepTypes, Steps};
use super::stats::rate;
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

/// What one scenario measured.
#[derive(Debug)]
pub(crate) struct StationRun {
    pub(crate) replicas: usize,
    /// Jobs one at a time.
    pub(crate) sequential: Steps,
    /// Jobs `in_flight` at a time.
    pub(crate) loaded: Steps,
    pub(crate) loaded_jobs: usize,
    pub(crate) loaded_elapsed: Duration,
    /// Per replica: (id, RSS now, peak RSS) in MB after the loaded batch.
    pub(crate) rss: Vec<(String, Option<(f64, f64)>)>,
    /// Lines the replicas logged (warnings and errors).
    pub(crate) log_lines: usize,
}

impl StationRun {
    pub(crate) fn jobs_per_s(&self) -> f64 {
        rate(self.loaded_jobs, self.loaded_elapsed)
    }

    pub(crate) fn steps_per_s(&self) -> f64 {
        self.jobs_per_s() * STEPS_PER_JOB as f64
    }
}

/// Runs the station with `replicas` replicas of `bin`.
pub(crate) async fn run(bin: &Path, replicas: usize, sizes: Sizes) -> BenchResult<StationRun> {
    let m = LocalMosquitto::start_with(Autosave::AsShipped)
        .map_err(|e| format!("cannot start mosquitto: {e}"))?;
    let r = LocalRedis::start().map_err(|e| format!("cannot start redis-server: {e}"))?;
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
    let mut spy = Spy::connect(m.port()).await?;
    let mut mes = Mes::connect(m.port()).await?;

    let shared = (replicas > 1).then_some("cell");
    let mut procs = Vec::new();
    for i in 0..replicas {
        let id = format!("replica-{i}");
        let env = replicas::env(m.port(), r.port(), &id, shared);
        procs.push(Replica::spawn(bin, &id, env, logs.path())?);
    }
    let result = drive(&mut mes, &mut spy, &mut procs, &r, sizes).await;
    let log_lines = procs.iter().map(Replica::log_lines).sum();
    if result.is_err() {
        for p in &procs {
            let tail = p.log_tail();
            if !tail.is_empty() {
                eprintln!("--- log of {} ---\n{tail}", p.id);
            }
        }
    }
    tokio::task::block_in_place(|| procs.iter_mut().for_each(Replica::stop));
    sim_handle.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
    let (sequential, loaded, phase, rss) = result?;
    Ok(StationRun {
        replicas,
        sequential,
        loaded,
        loaded_jobs: phase.ended.len(),
        loaded_elapsed: phase.elapsed,
        rss,
        log_lines,
    })
}

type Driven = (Steps, Steps, Phase, Vec<(String, Option<(f64, f64)>)>);

async fn drive(
    mes: &mut Mes,
    spy: &mut Spy,
    procs: &mut [Replica],
    redis: &LocalRedis,
    sizes: Sizes,
) -> BenchResult<Driven> {
    wait_ready(mes, procs).await?;
    store_work_master(mes, redis).await?;

    let warm = mes.run_jobs("warm", sizes.warmup_jobs, 20, STALL).await?;
    report_failures("warm-up", &warm)?;
    let seq = mes.run_jobs("seq", sizes.sequential_jobs, 1, STALL).await?;
    report_failures("sequential", &seq)?;
    let load = mes
        .run_jobs("job", sizes.loaded_jobs, sizes.in_flight, STALL)
        .await?;
    report_failures("loaded", &load)?;
    let rss = procs.iter().map(|p| (p.id.clone(), p.rss())).collect();
    if let Some(why) = procs.iter_mut().find_map(Replica::exited) {
        return Err(why);
    }
    let records = spy.drain(Duration::from_millis(500)).await;
    let sequential = spy::steps(&records, TYPES, &seq.sent);
    let loaded = spy::steps(&records, TYPES, &load.sent);
    Ok((sequential, loaded, load, rss))
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
