//! The station benchmark: `cargo bench --bench station [-- --quick]`.
//!
//! Prints figures, asserts nothing. It starts its own Mosquitto and Redis,
//! measures the floor (a bare MQTT v5 request→reply plus one Redis Lua call
//! per round trip through the same broker), then runs the real
//! `microdcs run` binary as 1 and 3 replica processes against the
//! equipment simulator: an MES keeps jobs of a 3-step recipe in flight and
//! waits for each job's Ended status event; a spy client beside the
//! equipment times the steps. The README's `## Benchmark` section explains
//! every figure.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};
use support::floor::{self, Floor};
use support::station::{self, StationRun, STEPS_PER_JOB};
use support::stats::{load_average, machine, ratio, Latencies, Ms};
use support::Sizes;

/// Targets printed next to the figures (not asserted).
const TARGET_STEPS_PER_S: f64 = 2000.0;
const TARGET_P99_RATIO: f64 = 3.0;
const TARGET_RSS_MB: f64 = 50.0;

const USAGE: &str = "\
usage: cargo bench --bench station [-- --quick]

  --quick   a short run (fewer round trips and jobs)

Starts mosquitto and redis-server (scripts/setup.sh installs them) and the
microdcs binary cargo built beside this benchmark. Without `--bench` (which
cargo bench passes; cargo test does not) it does nothing, and `--list`
answers a test runner with no tests.";

fn main() -> ExitCode {
    let mut quick = false;
    let mut bench = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
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
            match station::run(&bin, replicas, sizes).await {
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
    println!(
        "\nload average after: {}   (total {:.0} s)",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    ok
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

fn print_station(r: &StationRun, sizes: Sizes) {
    println!(
        "\nstation: {} replica(s) of `microdcs run`, 3-step recipe, simulator answering at once",
        r.replicas
    );
    println!(
        "  {:>3} jobs in flight: {} jobs in {:.2} s   {:.0} jobs/s   {:.0} steps/s",
        sizes.in_flight,
        r.loaded_jobs,
        r.loaded_elapsed.as_secs_f64(),
        r.jobs_per_s(),
        r.steps_per_s()
    );
    for (label, steps) in [
        ("1 job in flight", &r.sequential),
        ("100 jobs in flight", &r.loaded),
    ] {
        println!("  step latency, {label}:");
        println!("    all steps                  {}", steps.all());
        println!(
            "    reply -> next command      {}",
            steps.command_to_command
        );
        println!("    pull event -> job Ended    {}", steps.event_to_end);
        println!("    (job start: order -> 1st command  {})", steps.start);
    }
    let rss: Vec<String> = r
        .rss
        .iter()
        .map(|(id, m)| match m {
            Some((now, peak)) => format!("{id} {now:.1} MB (peak {peak:.1} MB)"),
            None => format!("{id} unknown"),
        })
        .collect();
    println!("  RSS after the run: {}", rss.join(", "));
    if r.log_lines > 0 {
        println!(
            "  (the replicas logged {} warning/error lines)",
            r.log_lines
        );
    }
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

fn print_summary(floor: Option<&Floor>, runs: &[StationRun]) {
    println!("\nsummary (targets are printed, not asserted)");
    let floor_rate = floor.map(Floor::round_trips_per_s);
    let floor_p99_seq = floor.and_then(|f| secs(f.sequential.p99()));
    let floor_p99_loaded = floor.and_then(|f| secs(f.loaded.p99()));
    println!(
        "  floor: {} round trips/s (100 in flight), p99 {} (1 in flight), p99 {} (100 in flight)",
        fmt_opt(floor_rate, 0),
        Ms(floor.and_then(|f| f.sequential.p99())),
        Ms(floor.and_then(|f| f.loaded.p99())),
    );
    for r in runs {
        let steps = r.steps_per_s();
        let seq: Latencies = r.sequential.all();
        let loaded: Latencies = r.loaded.all();
        let seq_ratio = ratio(secs(seq.p99()), floor_p99_seq);
        let loaded_ratio = ratio(secs(loaded.p99()), floor_p99_loaded);
        let max_rss = r
            .rss
            .iter()
            .filter_map(|(_, m)| m.map(|(now, _)| now))
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        println!("  {} replica(s):", r.replicas);
        let steps_target = if r.replicas == 1 {
            format!(
                "target >= {TARGET_STEPS_PER_S:.0} with 1 replica: {}",
                verdict(Some(steps >= TARGET_STEPS_PER_S))
            )
        } else {
            "no target".to_owned()
        };
        println!(
            "    steps/s                                   {steps:>8.0}   ({:.0} jobs/s x {STEPS_PER_JOB}; {steps_target})",
            r.jobs_per_s()
        );
        println!(
            "    steps/s / floor round trips/s             {:>8}",
            fmt_opt(ratio(Some(steps), floor_rate), 3)
        );
        println!(
            "    step p99 / floor p99, 1 in flight         {:>8}   (target <= {TARGET_P99_RATIO}: {})",
            fmt_opt(seq_ratio, 2),
            verdict(seq_ratio.map(|x| x <= TARGET_P99_RATIO))
        );
        println!(
            "    step p99 / floor p99, 100 in flight       {:>8}   (target <= {TARGET_P99_RATIO}: {})",
            fmt_opt(loaded_ratio, 2),
            verdict(loaded_ratio.map(|x| x <= TARGET_P99_RATIO))
        );
        println!(
            "    RSS per replica (largest), MB             {:>8}   (target < {TARGET_RSS_MB:.0}: {})",
            fmt_opt(max_rss, 1),
            verdict(max_rss.map(|x| x < TARGET_RSS_MB))
        );
    }
}
