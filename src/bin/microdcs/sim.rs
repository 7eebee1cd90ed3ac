//! `microdcs sim`: simulated equipment answering a station's commands.

use microdcs::sim::{SimConfig, Simulator};
use std::path::PathBuf;
use std::process::ExitCode;

/// Simulate equipment: answer southbound commands by seeded rules
///
/// Simulates equipment behind a station's southbound processor: subscribes
/// {prefix}/+/commands (and deeper), answers each command on its Response
/// Topic with the Correlation Data echoed, after a delay, with a templated
/// result or a failure, and publishes follow-up events with the command's
/// `jobid` as correlationid. Decisions follow the seed. Runs until SIGTERM or
/// SIGINT and prints its counters every 5 seconds.
///
/// The flags override the file. Logging follows RUST_LOG (default info).
#[derive(Debug, Default, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// Rules and settings (TOML, or JSON if FILE ends in .json; see
    /// `microdcs::sim::SimConfig`); default: answer {} at once.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Broker host [default: localhost].
    #[arg(long, value_name = "H")]
    pub(crate) host: Option<String>,
    /// Broker port [default: 1883].
    #[arg(short, long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) port: Option<u16>,
    /// Seed of every random decision [default: 0].
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
}

/// Runs the simulator until SIGTERM or SIGINT.
pub(crate) fn sim(args: Args) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match SimConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => SimConfig::default(),
    };
    if let Some(host) = args.host {
        config.host = host;
    }
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    let simulator = match Simulator::new(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    microdcs::telemetry::init_logging(microdcs::telemetry::LogFormat::Text, &filter);
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let handle = simulator.handle();
    let stats = runtime.block_on(async move {
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                super::out(&format!("sim: {}\n", handle.stats()));
            }
        });
        let stats = simulator.run(shutdown_signal()).await;
        ticker.abort();
        stats
    });
    super::out(&format!("sim stopped: {stats}\n"));
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
