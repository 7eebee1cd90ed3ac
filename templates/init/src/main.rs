//! Runs the {{name}} station: `{{name}} [--config FILE]`.
//!
//! The configuration comes from the optional TOML file and from the
//! environment (`APP_MQTT_HOSTNAME`, `APP_REDIS_HOSTNAME`, `POD_ID`, …; the
//! environment wins), exactly as for `microdcs run`. The station runs until
//! SIGTERM or SIGINT, then shuts down gracefully.

use microdcs::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

use {{crate_name}}::build;

const USAGE: &str = "usage: {{name}} [--config FILE]";

/// The `--config FILE` argument, if any.
fn config_path(args: &[String]) -> Result<Option<PathBuf>, String> {
    match args {
        [] => Ok(None),
        [flag, file] if flag == "--config" || flag == "-c" => Ok(Some(PathBuf::from(file))),
        [flag] if flag == "--help" || flag == "-h" => Err(String::new()),
        _ => Err(format!("unexpected arguments {args:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match config_path(&args) {
        Ok(path) => path,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(path.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let traces = match microdcs::telemetry::init(
        config.log_format(),
        &config.log.level,
        config.telemetry.enabled,
    ) {
        Ok(traces) => Some(traces),
        Err(e) => {
            tracing::warn!(error = %e, "traces are off");
            None
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let station = build(&config).await?;
        station.app.run().await
    });
    if let Some(traces) = traces {
        runtime.block_on(traces.shutdown());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
