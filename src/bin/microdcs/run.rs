//! `microdcs run`: a station from its configuration.

use microdcs::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run a station: job management, the SFC engine and/or the MES publisher
///
/// Runs a station from its configuration: the machinery-jobs processor with
/// the SFC engine and the equipment processor (APP_IS_PROCESSOR_INSTANCE)
/// and the MES publisher of retained topics (APP_IS_PUBLISHER_INSTANCE),
/// until SIGTERM or SIGINT, then shuts down gracefully within
/// processing.shutdown_grace_period.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct Args {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Loads the configuration, starts logging and runs the station until a
/// signal stops it.
pub(crate) fn run(args: &Args) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only with `[telemetry] enabled`; the exporter reads the
    // standard OTEL_* environment.
    let traces = match microdcs::telemetry::init(
        config.log_format(),
        &config.log.level,
        config.telemetry.enabled,
    ) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "traces are off");
            None
        }
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(microdcs::station::run(&config));
    if let Some(t) = traces {
        // Sends the spans still buffered before the process exits.
        runtime.block_on(t.shutdown());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
