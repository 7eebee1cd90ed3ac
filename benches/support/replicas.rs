//! Station replicas: the real `microdcs run` binary as child processes,
//! configured by environment like the integration tests, killed on drop.

use super::stats::rss_mb;
use super::BenchResult;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `microdcs` binary `cargo bench` built next to this benchmark.
///
/// Cargo names it in `CARGO_BIN_EXE_microdcs`; when that file is gone (the
/// benchmark executable was copied elsewhere) it is looked for in the
/// profile directory above this executable's `deps/`.
pub(crate) fn binary() -> BenchResult<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_microdcs"));
    if built.is_file() {
        return Ok(built);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("microdcs")));
    match beside {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(format!(
            "the microdcs binary is missing (looked at {} and next to the benchmark's \
             target directory); build it with `cargo build --release --bin microdcs` \
             or run the benchmark through `cargo bench --bench station`",
            built.display()
        )),
    }
}

/// The environment of replica `instance` (as `tests/it/harness/jobs.rs::env`
/// sets it), plus the shared subscription name when `shared` is set.
pub(crate) fn env(
    mqtt_port: u16,
    redis_port: u16,
    instance: &str,
    shared: Option<&str>,
) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = [
        ("APP_MQTT_HOSTNAME", "127.0.0.1".to_owned()),
        ("APP_MQTT_PORT", mqtt_port.to_string()),
        ("APP_REDIS_HOSTNAME", "127.0.0.1".to_owned()),
        ("APP_REDIS_PORT", redis_port.to_string()),
        ("APP_REDIS_KEY_PREFIX", "bench".to_owned()),
        ("POD_ID", instance.to_owned()),
        (
            "APP_PROCESSING_TOPIC_PREFIXES",
            "machinery-jobs:app/jobs".to_owned(),
        ),
        (
            "APP_PROCESSING_TOPIC_WILDCARD_LEVELS",
            "machinery-jobs:1".to_owned(),
        ),
        (
            "APP_PROCESSING_CLOUDEVENT_SOURCE",
            format!("station/{instance}"),
        ),
        ("APP_PROCESSING_SHUTDOWN_GRACE_PERIOD", "3".to_owned()),
        ("APP_JOBS_CHECK_EQUIPMENT", "false".to_owned()),
        ("APP_JOBS_CHECK_MATERIAL_CLASS", "false".to_owned()),
        ("APP_JOBS_CHECK_MATERIAL_DEFINITION", "false".to_owned()),
        ("APP_JOBS_CHECK_PERSONNEL", "false".to_owned()),
        ("APP_JOBS_CHECK_PHYSICAL_ASSET", "false".to_owned()),
        ("APP_JOBS_CHECK_WORK_MASTER", "false".to_owned()),
        // Warnings and errors, and the `stopped` line with the process's
        // Redis round trips.
        ("APP_LOG_LEVEL", "warn,microdcs::app=info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(name) = shared {
        e.push((
            "APP_PROCESSING_SHARED_SUBSCRIPTION_NAME".to_owned(),
            name.to_owned(),
        ));
    }
    e
}

/// One `microdcs run` process; its output goes to a log file, one per
/// life (a restart starts a new one).
pub(crate) struct Replica {
    /// Its `POD_ID`.
    pub(crate) id: String,
    child: Option<Child>,
    log: PathBuf,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    /// Lives started so far.
    lives: usize,
    /// Warning and error lines of the earlier lives.
    earlier_lines: usize,
    /// SIGTERM was sent to the current life.
    terminated: bool,
}

impl Replica {
    /// Starts `bin run` with `env`, logging to `{log_dir}/{id}-1.log`.
    pub(crate) fn spawn(
        bin: &Path,
        id: &str,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> BenchResult<Self> {
        let mut r = Replica {
            id: id.to_owned(),
            child: None,
            log: PathBuf::new(),
            bin: bin.to_owned(),
            env,
            log_dir: log_dir.to_owned(),
            lives: 0,
            earlier_lines: 0,
            terminated: false,
        };
        r.start()?;
        Ok(r)
    }

    /// Sets `key` for the lives started from now on.
    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn start(&mut self) -> BenchResult<()> {
        self.lives += 1;
        let log = self.log_dir.join(format!("{}-{}.log", self.id, self.lives));
        let out = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run");
        // Our own settings only: nothing of the caller's APP_* leaks in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("APP_") {
                cmd.env_remove(k);
            }
        }
        // `BENCH_TRACES=1`: the replicas export traces (to the OTEL_*
        // endpoint of the caller's environment), to compare with off.
        if std::env::var_os("BENCH_TRACES").is_some_and(|v| v == "1") {
            cmd.env("APP_PROCESSING_OTEL_INSTRUMENTATION_ENABLED", "true");
        }
        let child = cmd
            .env_remove("RUST_LOG")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {} run: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.terminated = false;
        self.log = log;
        Ok(())
    }

    /// Ends its life ([`Replica::stop`]); the Redis round trips it
    /// reported ([`Replica::round_trips`]). [`Replica::start_again`]
    /// starts the next one.
    pub(crate) fn end_life(&mut self) -> Option<u64> {
        self.stop();
        let trips = self.round_trips();
        self.earlier_lines += self.log_lines_of_life();
        trips
    }

    /// Starts a new life after [`Replica::end_life`] (a new log file, the
    /// same `POD_ID`, so it resumes its MQTT session).
    pub(crate) fn start_again(&mut self) -> BenchResult<()> {
        self.start()
    }

    /// The Redis round trips (client calls) the current life reported when
    /// it stopped: the `redis_round_trips=` field of its `stopped` log
    /// line. `None` while it runs, or when it stopped without saying.
    pub(crate) fn round_trips(&self) -> Option<u64> {
        if self.child.is_some() {
            return None;
        }
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines().rev().find_map(|l| {
            let (_, rest) = l.split_once("redis_round_trips=")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(reason)` when the process has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "replica {} exited ({status}); its log:\n{}",
                self.id,
                self.log_tail()
            )),
            _ => None,
        }
    }

    /// Resident memory (now, peak) in MB.
    pub(crate) fn rss(&self) -> Option<(f64, f64)> {
        rss_mb(self.pid()?)
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Warning and error lines it logged, over all its lives.
    pub(crate) fn log_lines(&self) -> usize {
        self.earlier_lines + self.log_lines_of_life()
    }

    /// The first warning or error line it logged, over all its lives.
    pub(crate) fn first_warning(&self) -> Option<String> {
        (1..=self.lives).find_map(|life| {
            let log = self.log_dir.join(format!("{}-{life}.log", self.id));
            let text = std::fs::read_to_string(log).ok()?;
            text.lines().find(|l| is_warning(l)).map(str::to_owned)
        })
    }

    fn log_lines_of_life(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().filter(|l| is_warning(l)).count())
            .unwrap_or(0)
    }

    /// Sends SIGTERM (once per life) without waiting: replicas stopped
    /// together shut down in parallel.
    pub(crate) fn terminate(&mut self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        if self.terminated {
            return;
        }
        self.terminated = true;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 10 s.
    pub(crate) fn stop(&mut self) {
        self.terminate();
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("replica {} ignored SIGTERM for 10 s; killing it", self.id);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A warning or error line of a replica's log (`{timestamp} {LEVEL} …`).
fn is_warning(line: &str) -> bool {
    matches!(line.split_whitespace().nth(1), Some("WARN" | "ERROR"))
}
