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
        ("APP_LOG_LEVEL", "warn".to_owned()),
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

/// One `microdcs run` process; its output goes to a log file.
pub(crate) struct Replica {
    /// Its `POD_ID`.
    pub(crate) id: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Replica {
    /// Starts `bin run` with `env`, logging to `{log_dir}/{id}.log`.
    pub(crate) fn spawn(
        bin: &Path,
        id: &str,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> BenchResult<Self> {
        let log = log_dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run");
        // Our own settings only: nothing of the caller's APP_* leaks in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("APP_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env_remove("RUST_LOG")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {} run: {e}", bin.display()))?;
        Ok(Replica {
            id: id.to_owned(),
            child: Some(child),
            log,
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

    /// Its log, if it wrote anything (warnings and errors only).
    pub(crate) fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 10 s.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
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
