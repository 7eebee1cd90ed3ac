//! The station benchmark: `cargo bench --bench station [-- --quick]`.
//!
//! Prints figures, asserts nothing. It starts its own Mosquitto and Redis,
//! measures the floor (a bare MQTT v5 request→reply plus one Redis Lua call
//! per round trip through the same broker, Redis without persistence),
//! then runs the real `microdcs run` binary as 1 and 3 replica processes
//! on a durable Redis (AOF, `appendfsync always`) against the equipment
//! simulator: an MES keeps jobs of a 3-step recipe in flight and waits for
//! each job's Ended status event; a spy client beside the equipment times
//! the steps; Redis's `INFO` and the broker's `$SYS` counters, read while
//! the station is idle before and after each loaded batch, count the work
//! per step. With 1 replica the scope is then filled with stored jobs and
//! the batch measured again. Schema validation of incoming payloads is
//! measured in process against serde decoding of the same payload
//! (`--validation` runs that part alone, without brokers). The README's
//! `## Benchmark` section explains every figure.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};
use support::floor::{self, Floor};
use support::spy::Steps;
use support::station::{self, Batch, StationRun};
use support::stats::{load_average, machine, rate, ratio, Latencies, Ms};
use support::Sizes;

/// Targets printed next to the figures (not asserted; issues #4 and #9).
/// Steps/s of 1 replica, durable Redis, [`Sizes::stored_small`] stored.
const TARGET_STEPS_PER_S: f64 = 4000.0;
/// The same steps/s ÷ the floor's round trips/s.
const TARGET_FLOOR_SHARE: f64 = 0.45;
/// Steps/s with [`Sizes::stored_large`] stored ÷ with `stored_small`.
const TARGET_SCALING: f64 = 0.9;
/// Redis commands per step with `stored_large` stored.
const TARGET_COMMANDS_PER_STEP: f64 = 30.0;
/// Job start (order → first command) p50, 1 in flight, durable Redis.
const TARGET_START_P50: Duration = Duration::from_millis(2);
/// Step p99, 1 in flight, durable Redis.
const TARGET_STEP_P99: Duration = Duration::from_millis(3);
/// Step p99 ÷ the floor's p99.
const TARGET_P99_RATIO: f64 = 3.0;
/// RSS of a replica, MB.
const TARGET_RSS_MB: f64 = 50.0;
/// Schema validation of a StoreCall ÷ serde decoding of it (#12).
const TARGET_VALIDATION_RATIO: f64 = 3.0;

const USAGE: &str = "\
usage: cargo bench --bench station [-- --quick] [-- --validation]

  --quick       a short run (fewer round trips and jobs; 5,000 jobs stored
                instead of 20,000 for the scaling batch)
  --validation  only the cost of payload validation (in process, no
                brokers, a few seconds)

Starts mosquitto and redis-server (scripts/setup.sh installs them) and the
microdcs binary cargo built beside this benchmark. Without `--bench` (which
cargo bench passes; cargo test does not) it does nothing, and `--list`
answers a test runner with no tests.";

fn main() -> ExitCode {
    let mut quick = false;
    let mut bench = false;
    let mut validation_only = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--validation" => validation_only = true,
            // `cargo bench` passes `--bench` to benchmarks without libtest.
            "--bench" => bench = true,
            // A test runner asking for the tests (`cargo nextest run
            // --all-targets`): there are none.
            "--list" => return ExitCode::SUCCESS,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => eprintln!("ignoring argument '{other}' (see --help)"),
        }
    }
    if !bench {
        // `cargo test --all-targets` runs benchmarks without `--bench`: a
        // test run must not start brokers and replicas for a minute.
        eprintln!("station benchmark not run (no --bench); use `cargo bench --bench station`");
        return ExitCode::SUCCESS;
    }
    let sizes = if quick { Sizes::QUICK } else { Sizes::FULL };
    if validation_only {
        return match validation_cost(quick) {
            Some(cost) => {
                print_validation_row(&cost);
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if rt.block_on(run(quick, sizes)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every scenario, prints the figures; false if one failed.
async fn run(quick: bool, sizes: Sizes) -> bool {
    let started = Instant::now();
    println!(
        "microdcs station benchmark ({} run)",
        if quick { "--quick" } else { "full" }
    );
    println!("machine: {}", machine());
    println!("load average before: {}", load_average());
    let mut ok = true;

    eprintln!("floor ...");
    let floor = match floor::run(sizes).await {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("floor failed: {e}");
            ok = false;
            None
        }
    };
    if let Some(f) = &floor {
        print_floor(f, sizes);
    }
    let validation = validation_cost(quick);
    ok &= validation.is_some();

    let bin = match support::replicas::binary() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("{e}");
            ok = false;
            None
        }
    };
    let mut runs = Vec::new();
    if let Some(bin) = bin {
        for replicas in [1, 3] {
            eprintln!("station with {replicas} replica(s) ...");
            // The scaling batches need one replica only: its cost per step
            // is what must not grow with the history.
            match station::run(&bin, replicas, sizes, replicas == 1).await {
                Ok(r) => {
                    print_station(&r, sizes);
                    runs.push(r);
                }
                Err(e) => {
                    eprintln!("station with {replicas} replica(s) failed: {e}");
                    ok = false;
                }
            }
        }
    }
    print_summary(floor.as_ref(), &runs);
    if let Some(cost) = &validation {
        print_validation_row(cost);
    }
    println!(
        "\nload average after: {}   (total {:.0} s)",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    ok
}

/// Measures and prints the cost of payload validation; `None` (reported)
/// when it failed.
fn validation_cost(quick: bool) -> Option<support::validation::ValidationCost> {
    eprintln!("payload validation ...");
    let n = if quick { 2_000 } else { 20_000 };
    match support::validation::run(n) {
        Ok(cost) => {
            println!(
                "\npayload validation (in process, a {} byte StoreCall with a full job order):",
                cost.bytes
            );
            println!(
                "  serde decode into StoreCall (the floor)     {:>8.1} us/message",
                cost.decode.as_secs_f64() * 1e6
            );
            println!(
                "  decode to a JSON value + schema check       {:>8.1} us/message",
                cost.validate.as_secs_f64() * 1e6
            );
            Some(cost)
        }
        Err(e) => {
            eprintln!("payload validation failed: {e}");
            None
        }
    }
}

/// The summary line of the validation cost.
fn print_validation_row(cost: &support::validation::ValidationCost) {
    let ratio = cost.ratio();
    row(
        "validation / serde decode, StoreCall",
        &format!("{ratio:.2}"),
        &target(
            &format!("<= {TARGET_VALIDATION_RATIO:.1}"),
            Some(ratio <= TARGET_VALIDATION_RATIO),
        ),
    );
}

fn print_floor(f: &Floor, sizes: Sizes) {
    println!("\nfloor: rumqttc v5 QoS 1 request -> mosquitto -> responder (1 EVALSHA) -> reply, TCP_NODELAY");
    println!(
        "  1 in flight     {:>6} round trips   latency {}",
        sizes.floor_sequential, f.sequential
    );
    println!(
        "  {:>3} in flight   {:>6} round trips   {:.0} round trips/s   latency {}",
        sizes.in_flight,
        sizes.floor_loaded,
        f.round_trips_per_s(),
        f.loaded
    );
    if f.redis_errors > 0 {
        println!("  ({} Lua calls failed)", f.redis_errors);
    }
}

fn print_steps(indent: &str, steps: &Steps) {
    println!("{indent}step latency, all steps    {}", steps.all());
    println!(
        "{indent}  reply -> next command    {}",
        steps.command_to_command
    );
    println!("{indent}  pull event -> job Ended  {}", steps.event_to_end);
    println!("{indent}job start: order -> 1st command  {}", steps.start);
}

fn print_station(r: &StationRun, sizes: Sizes) {
    println!(
        "\nstation: {} replica(s) of `microdcs run`, 3-step recipe, simulator answering at once,\n  Redis durable (AOF, appendfsync always)",
        r.replicas
    );
    println!("  1 job in flight ({} jobs):", sizes.sequential_jobs);
    print_steps("    ", &r.sequential);
    let mut previous: Option<&Batch> = None;
    for b in &r.batches {
        if let (Some(f), Some(_)) = (&r.fill, previous) {
            println!(
                "  stored {} more jobs ({} Store orders in flight) in {:.1} s ({:.0} jobs/s); Redis memory per stored job {}",
                f.jobs,
                sizes.fill_in_flight,
                f.elapsed.as_secs_f64(),
                rate(f.jobs, f.elapsed),
                bytes_per(f.used_memory, f.jobs)
            );
        }
        print_batch(b, sizes);
        previous = Some(b);
    }
    if let [small, large] = r.batches.as_slice() {
        println!(
            "  scaling, {} -> {} jobs stored:",
            small.stored, large.stored
        );
        println!(
            "    steps/s                     {:>8.0} -> {:<8.0} ratio {}",
            small.steps_per_s(),
            large.steps_per_s(),
            fmt_opt(
                ratio(Some(large.steps_per_s()), Some(small.steps_per_s())),
                3
            )
        );
        println!(
            "    Redis commands per step     {:>8.1} -> {:.1}",
            small.per_step(small.redis.total()),
            large.per_step(large.redis.total())
        );
        println!(
            "    RSS (largest replica), MB   {:>8} -> {}",
            fmt_opt(small.max_rss(), 1),
            fmt_opt(large.max_rss(), 1)
        );
        println!(
            "    Redis memory per job run    {:>8} -> {}",
            bytes_per(small.redis.used_memory, small.jobs),
            bytes_per(large.redis.used_memory, large.jobs)
        );
    }
    if let Some(b) = &r.without_step_audit {
        println!(
            "  the same, step entries of the audit trail off (APP_JOBS_AUDIT_STEPS=false), {} stored:",
            b.stored
        );
        print_batch(b, sizes);
    }
    if r.log_lines > 0 {
        println!(
            "  (the replicas logged {} warning/error lines, the first: {})",
            r.log_lines,
            r.first_warning.as_deref().unwrap_or("-")
        );
    }
    if r.not_idle > 0 {
        println!(
            "  (the station was still busy {} time(s) when the counters were read: they miss some of its work)",
            r.not_idle
        );
    }
}

fn print_batch(b: &Batch, sizes: Sizes) {
    println!(
        "  {:>3} jobs in flight, {} jobs stored at the start: {} jobs in {:.2} s   {:.0} jobs/s   {:.0} steps/s",
        sizes.in_flight,
        b.stored,
        b.jobs,
        b.elapsed.as_secs_f64(),
        b.jobs_per_s(),
        b.steps_per_s()
    );
    print_steps("    ", &b.steps);
    println!(
        "    Redis commands per step     {:>8.1}   ({})",
        b.per_step(b.redis.total()),
        b.redis.top_per(b.steps(), 6)
    );
    println!(
        "    Redis round trips per step  {:>8}",
        fmt_opt(b.round_trips.map(|n| b.per_step(n)), 1)
    );
    println!(
        "    MQTT packets per step       {:>8.1}   (broker received {:.1}, sent {:.1})",
        b.per_step(b.packets.received + b.packets.sent),
        b.per_step(b.packets.received),
        b.per_step(b.packets.sent)
    );
    let us = |s: Option<f64>| fmt_opt(s.map(|s| s * 1e6 / b.steps() as f64), 0);
    println!(
        "    CPU µs per step             {:>8}   (station {}, redis {}, broker {}, MES + equipment + probes {})",
        us([b.cpu.station, b.cpu.redis, b.cpu.broker, b.cpu.load]
            .into_iter()
            .sum::<Option<f64>>()),
        us(b.cpu.station),
        us(b.cpu.redis),
        us(b.cpu.broker),
        us(b.cpu.load)
    );
    println!(
        "    Redis memory per job run    {:>8}",
        bytes_per(b.redis.used_memory, b.jobs)
    );
    let rss: Vec<String> = b
        .rss
        .iter()
        .map(|(id, m)| match m {
            Some((now, peak)) => format!("{id} {now:.1} MB (peak {peak:.1} MB)"),
            None => format!("{id} unknown"),
        })
        .collect();
    println!("    RSS after the batch: {}", rss.join(", "));
}

/// `bytes` ÷ `jobs`, as bytes per job.
fn bytes_per(bytes: i64, jobs: usize) -> String {
    if jobs == 0 {
        return "-".to_owned();
    }
    format!("{:.0} bytes", bytes as f64 / jobs as f64)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    }
}

/// One summary line: label, value, and the target or a remark.
fn row(label: &str, value: &str, note: &str) {
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("   ({note})")
    };
    println!("    {label:<44}{value:>10}{note}");
}

/// `target {text}: met|MISSED|-`.
fn target(text: &str, met: Option<bool>) -> String {
    format!("target {text}: {}", verdict(met))
}

fn print_summary(floor: Option<&Floor>, runs: &[StationRun]) {
    println!("\nsummary (targets are printed, not asserted)");
    let floor_rate = floor.map(Floor::round_trips_per_s);
    let floor_p99_seq = floor.and_then(|f| secs(f.sequential.p99()));
    let floor_p99_loaded = floor.and_then(|f| secs(f.loaded.p99()));
    println!(
        "  floor (Redis without persistence): {} round trips/s (100 in flight), p99 {} (1 in flight), p99 {} (100 in flight)",
        fmt_opt(floor_rate, 0),
        Ms(floor.and_then(|f| f.sequential.p99())),
        Ms(floor.and_then(|f| f.loaded.p99())),
    );
    for r in runs {
        let Some(first) = r.batches.first() else {
            continue;
        };
        let last = r.batches.last().unwrap_or(first);
        // The throughput, work and latency targets are for 1 replica.
        let one = |text: String| if r.replicas == 1 { text } else { String::new() };
        let steps = first.steps_per_s();
        let seq: Latencies = r.sequential.all();
        let loaded: Latencies = first.steps.all();
        let seq_ratio = ratio(secs(seq.p99()), floor_p99_seq);
        let loaded_ratio = ratio(secs(loaded.p99()), floor_p99_loaded);
        let share = ratio(Some(steps), floor_rate);
        println!("  {} replica(s), Redis durable:", r.replicas);
        row(
            &format!("steps/s, {} stored", first.stored),
            &format!("{steps:.0}"),
            &one(target(
                &format!(">= {TARGET_STEPS_PER_S:.0}"),
                Some(steps >= TARGET_STEPS_PER_S),
            )),
        );
        row(
            "steps/s / floor round trips/s",
            &fmt_opt(share, 3),
            &one(target(
                &format!(">= {TARGET_FLOOR_SHARE}"),
                share.map(|x| x >= TARGET_FLOOR_SHARE),
            )),
        );
        if r.batches.len() > 1 {
            let scaling = ratio(Some(last.steps_per_s()), Some(steps));
            row(
                &format!("steps/s, {} / {} stored", last.stored, first.stored),
                &fmt_opt(scaling, 3),
                &target(
                    &format!(">= {TARGET_SCALING}"),
                    scaling.map(|x| x >= TARGET_SCALING),
                ),
            );
        }
        let commands = last.per_step(last.redis.total());
        row(
            &format!("Redis commands per step, {} stored", last.stored),
            &format!("{commands:.1}"),
            &one(target(
                &format!("<= {TARGET_COMMANDS_PER_STEP:.0}"),
                Some(commands <= TARGET_COMMANDS_PER_STEP),
            )),
        );
        if let Some(quiet) = &r.without_step_audit {
            let commands = quiet.per_step(quiet.redis.total());
            row(
                "  the same, step audit entries off",
                &format!("{commands:.1}"),
                &one(target(
                    &format!("<= {TARGET_COMMANDS_PER_STEP:.0}"),
                    Some(commands <= TARGET_COMMANDS_PER_STEP),
                )),
            );
        }
        row(
            &format!("Redis round trips per step, {} stored", last.stored),
            &fmt_opt(last.round_trips.map(|n| last.per_step(n)), 1),
            "",
        );
        row(
            &format!("MQTT packets per step, {} stored", last.stored),
            &format!(
                "{:.1}",
                last.per_step(last.packets.received + last.packets.sent)
            ),
            "",
        );
        let start_p50 = r.sequential.start.p50();
        row(
            "job start p50, 1 in flight",
            &Ms(start_p50).to_string(),
            &one(target(
                &format!("<= {}", Ms(Some(TARGET_START_P50))),
                start_p50.map(|d| d <= TARGET_START_P50),
            )),
        );
        row(
            "job start p99, 1 in flight",
            &Ms(r.sequential.start.p99()).to_string(),
            "",
        );
        row(
            "step p99, 1 in flight",
            &Ms(seq.p99()).to_string(),
            &one(target(
                &format!("<= {}", Ms(Some(TARGET_STEP_P99))),
                seq.p99().map(|d| d <= TARGET_STEP_P99),
            )),
        );
        row(
            "step p99 / floor p99, 1 in flight",
            &fmt_opt(seq_ratio, 2),
            &target(
                &format!("<= {TARGET_P99_RATIO}"),
                seq_ratio.map(|x| x <= TARGET_P99_RATIO),
            ),
        );
        row(
            "step p99 / floor p99, 100 in flight",
            &fmt_opt(loaded_ratio, 2),
            &target(
                &format!("<= {TARGET_P99_RATIO}"),
                loaded_ratio.map(|x| x <= TARGET_P99_RATIO),
            ),
        );
        let max_rss = r
            .batches
            .iter()
            .filter_map(Batch::max_rss)
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        row(
            "RSS per replica (largest), MB",
            &fmt_opt(max_rss, 1),
            &target(
                &format!("< {TARGET_RSS_MB:.0}"),
                max_rss.map(|x| x < TARGET_RSS_MB),
            ),
        );
    }
}
