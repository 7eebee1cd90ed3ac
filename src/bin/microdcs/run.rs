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
    microdcs::telemetry::init_logging(config.log_format(), &config.log.level);
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(microdcs::station::run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
