//! What the examples share: starting up from the command line.

use microdcs::config::Config;

/// The configuration of `--config <file>` among `args` (without one: the
/// `APP_*` variables alone), with logging set up as it says.
pub(crate) fn load_config(args: &[String]) -> Result<Config, Box<dyn std::error::Error>> {
    let file = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let config = Config::load(file.as_deref())?;
    microdcs::telemetry::init_logging(config.log_format(), &config.log.level);
    Ok(config)
}
