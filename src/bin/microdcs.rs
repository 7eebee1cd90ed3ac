//! The `microdcs` command line.
//!
//! ```text
//! microdcs run [--config FILE]            run a station
//! microdcs config check [--config FILE]   validate, print the effective configuration
//! microdcs recipe check FILE              validate an SFC recipe, list every problem
//! microdcs recipe graph FILE              print an SFC recipe as a Mermaid flowchart
//! microdcs sim [--config FILE] [--host H] [--port P] [--seed N]
//!                                         simulate equipment answering commands
//! microdcs --help | --version
//! ```
//!
//! Exit codes: 0 success, 1 the command failed (e.g. invalid configuration),
//! 2 the command line itself is wrong.
//!
//! Arguments are parsed by hand to keep the build lean. A command is a
//! variant of `Command`, a line in `COMMANDS` and an arm in `parse` and
//! `execute`.

use microdcs::config::{Config, InstanceIdSource};
use microdcs::sfc::recipe::{Recipe, RecipeError, RecipeErrors};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Commands shown by `--help`: (usage, description).
const COMMANDS: &[(&str, &str)] = &[
    (
        "run [--config FILE]",
        "Run a station: job management, the SFC engine and/or the MES publisher",
    ),
    (
        "sim [--config FILE] [--host H] [--port P] [--seed N]",
        "Simulate equipment: answer southbound commands by seeded rules",
    ),
    (
        "config check [--config FILE]",
        "Validate the configuration and print the effective settings as TOML",
    ),
    (
        "recipe check FILE",
        "Validate an SFC recipe (or a work master carrying one), list every problem",
    ),
    (
        "recipe graph FILE",
        "Print an SFC recipe as a Mermaid flowchart",
    ),
];

const ABOUT: &str = "microdcs: distributed sequence control for manufacturing stations \
(OPC UA Machinery Jobs over CloudEvents/MQTT v5, coordinated through Redis)";

const CONFIG_SOURCES: &str = "\
The configuration is read from an optional TOML file and from environment
variables (the MicroDCS names: APP_MQTT_HOSTNAME, APP_REDIS_HOSTNAME, POD_ID,
...); the environment wins. See microdcs.example.toml for every setting.";

const RECIPE_FILE: &str = "\
FILE is JSON: the recipe itself ({\"Steps\": ..., \"Transitions\": ..., \"Actions\": ...}),
or a work master that carries it ({\"ID\": ..., \"data\": <recipe>, \"dataschema\": ...}).
`-` reads standard input.";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Print help for a command path (`[]` = the whole program).
    Help(&'static [&'static str]),
    /// Print the version.
    Version,
    /// `config check`.
    ConfigCheck { config: Option<PathBuf> },
    /// `run`.
    Run { config: Option<PathBuf> },
    /// `sim`.
    Sim(SimArgs),
    /// `recipe check FILE`.
    RecipeCheck { file: PathBuf },
    /// `recipe graph FILE`.
    RecipeGraph { file: PathBuf },
}

/// Options of `sim`; the flags override the file.
#[derive(Debug, Default, PartialEq, Eq)]
struct SimArgs {
    config: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    seed: Option<u64>,
}

/// A command line that cannot be understood; printed with a usage hint.
#[derive(Debug, PartialEq, Eq)]
struct UsageError {
    message: String,
    /// The command path whose help to point at.
    help_for: &'static [&'static str],
}

fn usage_error(help_for: &'static [&'static str], message: impl Into<String>) -> UsageError {
    UsageError {
        message: message.into(),
        help_for,
    }
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help" | "help")
}

/// Parses the arguments after the program name.
fn parse(args: &[String]) -> Result<Command, UsageError> {
    let mut args = args.iter().map(String::as_str);
    match args.next() {
        None => Err(usage_error(&[], "no command given")),
        Some(a) if is_help(a) => Ok(Command::Help(&[])),
        Some("-V" | "--version") => Ok(Command::Version),
        Some("config") => match args.next() {
            None => Err(usage_error(
                &["config"],
                "`config` needs a subcommand: check",
            )),
            Some(a) if is_help(a) => Ok(Command::Help(&["config"])),
            Some("check") => parse_config_file(args, &["config", "check"], |config| {
                Command::ConfigCheck { config }
            }),
            Some(other) => Err(usage_error(
                &["config"],
                format!("unknown subcommand `config {other}`"),
            )),
        },
        Some("run") => parse_config_file(args, &["run"], |config| Command::Run { config }),
        Some("sim") => parse_sim(args),
        Some("recipe") => match args.next() {
            None => Err(usage_error(
                &["recipe"],
                "`recipe` needs a subcommand: check, graph",
            )),
            Some(a) if is_help(a) => Ok(Command::Help(&["recipe"])),
            Some("check") => parse_one_file(args, &["recipe", "check"], |file| {
                Command::RecipeCheck { file }
            }),
            Some("graph") => parse_one_file(args, &["recipe", "graph"], |file| {
                Command::RecipeGraph { file }
            }),
            Some(other) => Err(usage_error(
                &["recipe"],
                format!("unknown subcommand `recipe {other}`"),
            )),
        },
        Some(other) => Err(usage_error(&[], format!("unknown command `{other}`"))),
    }
}

/// A command whose only option is `--config FILE`: `make` turns the file
/// (if any) into the command; `-h` asks for the command's help.
fn parse_config_file<'a>(
    mut args: impl Iterator<Item = &'a str>,
    help_for: &'static [&'static str],
    make: fn(Option<PathBuf>) -> Command,
) -> Result<Command, UsageError> {
    let mut config = None;
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help(help_for));
        }
        if let Some(value) = option_value(arg, &["-c", "--config"], &mut args) {
            let value = value.map_err(|m| usage_error(help_for, m))?;
            if config.replace(PathBuf::from(value)).is_some() {
                return Err(usage_error(help_for, "--config given more than once"));
            }
            continue;
        }
        return Err(usage_error(
            help_for,
            format!("unexpected argument `{arg}`"),
        ));
    }
    Ok(make(config))
}

/// A command whose only argument is one FILE (`-`: standard input); `-h`
/// asks for the command's help.
fn parse_one_file<'a>(
    args: impl Iterator<Item = &'a str>,
    help_for: &'static [&'static str],
    make: fn(PathBuf) -> Command,
) -> Result<Command, UsageError> {
    let mut file = None;
    for arg in args {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help(help_for));
        }
        if arg.starts_with('-') && arg != "-" {
            return Err(usage_error(help_for, format!("unknown option `{arg}`")));
        }
        if file.replace(PathBuf::from(arg)).is_some() {
            return Err(usage_error(
                help_for,
                format!("unexpected argument `{arg}`: give one FILE"),
            ));
        }
    }
    match file {
        Some(file) => Ok(make(file)),
        None => Err(usage_error(help_for, "FILE is missing")),
    }
}

/// `sim [--config FILE] [--host H] [--port P] [--seed N]`.
fn parse_sim<'a>(mut args: impl Iterator<Item = &'a str>) -> Result<Command, UsageError> {
    const HELP: &[&str] = &["sim"];
    let err = |m: String| usage_error(HELP, m);
    let mut sim = SimArgs::default();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help(HELP));
        }
        if let Some(v) = option_value(arg, &["-c", "--config"], &mut args) {
            if sim.config.replace(PathBuf::from(v.map_err(err)?)).is_some() {
                return Err(err("--config given more than once".into()));
            }
        } else if let Some(v) = option_value(arg, &["--host"], &mut args) {
            sim.host = Some(v.map_err(err)?.to_owned());
        } else if let Some(v) = option_value(arg, &["-p", "--port"], &mut args) {
            let v = v.map_err(err)?;
            let port = v.parse().ok().filter(|p| *p > 0);
            sim.port = Some(port.ok_or_else(|| err(format!("--port `{v}` is not a port number")))?);
        } else if let Some(v) = option_value(arg, &["--seed"], &mut args) {
            let v = v.map_err(err)?;
            sim.seed = Some(
                v.parse()
                    .map_err(|_| err(format!("--seed `{v}` is not an unsigned 64-bit number")))?,
            );
        } else {
            return Err(err(format!("unexpected argument `{arg}`")));
        }
    }
    Ok(Command::Sim(sim))
}

/// If `arg` is one of `names` (`--name value`, `--name=value`), its value.
fn option_value<'a>(
    arg: &'a str,
    names: &[&str],
    rest: &mut impl Iterator<Item = &'a str>,
) -> Option<Result<&'a str, String>> {
    for name in names {
        if arg == *name {
            return Some(match rest.next() {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{name} needs a value")),
            });
        }
        if let Some(v) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(if v.is_empty() {
                Err(format!("{name} needs a value"))
            } else {
                Ok(v)
            });
        }
    }
    None
}

fn help(path: &[&str]) -> String {
    match path {
        ["config", "check"] => format!(
            "Usage: microdcs config check [--config FILE]\n\n\
             Loads the configuration exactly as the runtime would, checks every\n\
             setting, and prints the effective configuration as TOML on stdout\n\
             (passwords shown as \"***\"). Problems go to stderr; the exit code is\n\
             0 when the configuration is valid, 1 when it is not.\n\n\
             Options:\n  -c, --config FILE  TOML configuration file\n  -h, --help         Print this help\n\n\
             {CONFIG_SOURCES}\n"
        ),
        ["run"] => format!(
            "Usage: microdcs run [--config FILE]\n\n\
             Runs a station from its configuration: the machinery-jobs processor\n\
             with the SFC engine and the equipment processor\n\
             (APP_IS_PROCESSOR_INSTANCE) and the MES publisher of retained topics\n\
             (APP_IS_PUBLISHER_INSTANCE), until SIGTERM or SIGINT, then shuts down\n\
             gracefully within processing.shutdown_grace_period.\n\n\
             Options:\n  -c, --config FILE  TOML configuration file\n  -h, --help         Print this help\n\n\
             {CONFIG_SOURCES}\n"
        ),
        ["recipe", "check"] => format!(
            "Usage: microdcs recipe check FILE\n\n\
             Validates an SFC recipe as a work master's recipe is validated before it\n\
             is stored: the schema, one initial step, unique names, references,\n\
             reachability, branch structure, conditions (CEL), qualifier times and\n\
             TypeIds. Prints `OK: <counts>` on stdout, or every problem with its\n\
             location (e.g. `Transitions[3].Condition`) on stderr.\n\n\
             {RECIPE_FILE}\n\n\
             Exit code: 0 valid, 1 invalid or unreadable.\n"
        ),
        ["recipe", "graph"] => format!(
            "Usage: microdcs recipe graph FILE\n\n\
             Prints the recipe as a Mermaid flowchart (`flowchart TD`): steps with their\n\
             actions, transitions labelled with their conditions, branches as subgraphs\n\
             between fork and join nodes. Paste it into a ```mermaid block.\n\n\
             {RECIPE_FILE}\n\n\
             Exit code: 0 printed, 1 the recipe is invalid (problems on stderr).\n"
        ),
        ["recipe"] => {
            let mut s = String::from("Usage: microdcs recipe <subcommand> FILE\n\nSubcommands:\n");
            for (usage, about) in COMMANDS {
                if let Some(sub) = usage.strip_prefix("recipe ") {
                    s.push_str(&format!("  {sub:<28} {about}\n"));
                }
            }
            s.push('\n');
            s.push_str(RECIPE_FILE);
            s.push('\n');
            s
        }
        ["sim"] => "Usage: microdcs sim [--config FILE] [--host H] [--port P] [--seed N]\n\n\
             Simulates equipment behind a station's southbound processor: subscribes\n\
             {prefix}/+/commands (and deeper), answers each command on its Response\n\
             Topic with the Correlation Data echoed, after a delay, with a templated\n\
             result or a failure, and publishes follow-up events with the command's\n\
             `jobid` as correlationid. Decisions follow the seed. Runs until SIGTERM\n\
             or SIGINT and prints its counters every 5 seconds.\n\n\
             Options:\n  -c, --config FILE  rules and settings (TOML, or JSON if FILE ends in .json;\n                     see `microdcs::sim::SimConfig`); defaults: answer {} at once\n      --host H       broker host (default localhost)\n  -p, --port P       broker port (default 1883)\n      --seed N       seed of every random decision (default 0)\n  -h, --help         Print this help\n\n\
             Logging follows RUST_LOG (default info).\n"
            .to_owned(),
        ["config"] => {
            let mut s = String::from("Usage: microdcs config <subcommand>\n\nSubcommands:\n");
            for (usage, about) in COMMANDS {
                if let Some(sub) = usage.strip_prefix("config ") {
                    s.push_str(&format!("  {sub:<28} {about}\n"));
                }
            }
            s
        }
        _ => {
            let mut s = format!("{ABOUT}\n\nUsage: microdcs <command> [options]\n\nCommands:\n");
            for (usage, about) in COMMANDS {
                s.push_str(&format!("  {usage:<30} {about}\n"));
            }
            s.push_str(
                "\nOptions:\n  -h, --help     Print help (also after a command)\n  \
                 -V, --version  Print the version\n\n",
            );
            s.push_str(CONFIG_SOURCES);
            s.push('\n');
            s
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn execute(command: Command) -> ExitCode {
    match command {
        Command::Help(path) => {
            out(&help(path));
            ExitCode::SUCCESS
        }
        Command::Version => {
            out(&format!("microdcs {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Command::ConfigCheck { config } => config_check(config.as_deref()),
        Command::Run { config } => run(config.as_deref()),
        Command::Sim(args) => sim(args),
        Command::RecipeCheck { file } => match load_recipe(&file) {
            Ok(recipe) => {
                out(&format!(
                    "OK: {} steps, {} transitions, {} actions, {} branches\n",
                    recipe.steps.len(),
                    recipe.transitions.len(),
                    recipe.actions.len(),
                    recipe.branches.len()
                ));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::RecipeGraph { file } => match load_recipe(&file) {
            Ok(recipe) => {
                out(&microdcs::sfc::graph::mermaid(&recipe));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

/// Reads, parses and validates the recipe in `path`; on failure prints
/// every problem to stderr.
fn load_recipe(path: &Path) -> Result<Recipe, ExitCode> {
    let shown = path.display();
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    let text = text.map_err(|e| {
        eprintln!("error: cannot read {shown}: {e}");
        ExitCode::FAILURE
    })?;
    let report = |what: &str, errors: &RecipeErrors| {
        let n = errors.len();
        let problems = if n == 1 { "problem" } else { "problems" };
        eprintln!("error: {shown}: {what} ({n} {problems}):");
        for e in errors {
            eprintln!("  {}: {}", e.location, e.message);
        }
        ExitCode::FAILURE
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        let error = RecipeError::new(
            format!("line {}, column {}", e.line(), e.column()),
            format!("not valid JSON ({e})"),
        );
        report("not JSON", &RecipeErrors(vec![error]))
    })?;
    let (recipe, what) = match recipe_of(&value) {
        Ok(found) => found,
        Err(e) => return Err(report("not an SFC recipe", &RecipeErrors(vec![e]))),
    };
    Recipe::parse(recipe).map_err(|errors| report(&format!("invalid SFC recipe{what}"), &errors))
}

/// The recipe in a document: a work master's `data` (when its `dataschema`,
/// if any, is the SFC recipe schema), else the document itself. The second
/// value names the work master for messages.
fn recipe_of(value: &serde_json::Value) -> Result<(&serde_json::Value, String), RecipeError> {
    let Some(data) = value.get("data") else {
        return Ok((value, String::new()));
    };
    let id = value
        .get("ID")
        .or_else(|| value.get("id"))
        .and_then(serde_json::Value::as_str)
        .map(|id| format!(" in work master '{id}'"))
        .unwrap_or_else(|| " in the work master's data".to_owned());
    match value.get("dataschema").and_then(serde_json::Value::as_str) {
        Some(schema)
            if schema.trim_end_matches('/')
                != microdcs::models::sfc_recipe::SCHEMA_ID.trim_end_matches('/') =>
        {
            Err(RecipeError::new(
                "dataschema",
                format!(
                    "the work master's data follows `{schema}`, not the SFC recipe schema `{}`",
                    microdcs::models::sfc_recipe::SCHEMA_ID
                ),
            ))
        }
        _ => Ok((data, id)),
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    microdcs::telemetry::init_logging(config.log_format(), &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(microdcs::station::run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sim(args: SimArgs) -> ExitCode {
    use microdcs::sim::{SimConfig, Simulator};
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = simulator.handle();
    let stats = runtime.block_on(async move {
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                out(&format!("sim: {}\n", handle.stats()));
            }
        });
        let stats = simulator.run(shutdown_signal()).await;
        ticker.abort();
        stats
    });
    out(&format!("sim stopped: {stats}\n"));
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

fn config_check(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    out(&config.redacted_toml());
    for var in config.unrecognised_env() {
        eprintln!("warning: environment variable {var} is ignored: no setting reads it");
    }
    if config.instance.id_source == InstanceIdSource::Random {
        eprintln!(
            "warning: no POD_ID, instance.id or host name, so the instance id is random and \
             changes on every start (the broker cannot resume the MQTT session)"
        );
    }
    match path {
        Some(p) => eprintln!("configuration OK ({} and environment)", p.display()),
        None => eprintln!("configuration OK (environment only, no --config file)"),
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match parse(&args) {
        Ok(command) => execute(command),
        Err(e) => {
            eprintln!("error: {}", e.message);
            let cmd = e.help_for.join(" ");
            let cmd = if cmd.is_empty() {
                String::new()
            } else {
                format!(" {cmd}")
            };
            eprintln!("Run `microdcs{cmd} --help` for usage.");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn config_check_takes_an_optional_file() {
        assert_eq!(
            parse(&args("config check")),
            Ok(Command::ConfigCheck { config: None })
        );
        for line in [
            "config check --config a.toml",
            "config check --config=a.toml",
            "config check -c a.toml",
        ] {
            assert_eq!(
                parse(&args(line)),
                Ok(Command::ConfigCheck {
                    config: Some("a.toml".into())
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn recipe_commands_take_one_file() {
        assert_eq!(
            parse(&args("recipe check a.json")),
            Ok(Command::RecipeCheck {
                file: "a.json".into()
            })
        );
        assert_eq!(
            parse(&args("recipe graph -")),
            Ok(Command::RecipeGraph { file: "-".into() })
        );
        for line in [
            "recipe",
            "recipe frobnicate a.json",
            "recipe check",
            "recipe check a.json b.json",
            "recipe graph --frob a.json",
        ] {
            assert!(parse(&args(line)).is_err(), "{line:?}");
        }
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for line in [
            "",
            "frobnicate",
            "config",
            "config frobnicate",
            "config check --config",
            "config check --config=",
            "config check --config a --config b",
            "config check extra",
        ] {
            assert!(parse(&args(line)).is_err(), "{line:?}");
        }
    }

    #[test]
    fn sim_takes_config_host_port_and_seed() {
        assert_eq!(parse(&args("sim")), Ok(Command::Sim(SimArgs::default())));
        assert_eq!(
            parse(&args("sim --config s.toml --host broker -p 1884 --seed=7")),
            Ok(Command::Sim(SimArgs {
                config: Some("s.toml".into()),
                host: Some("broker".into()),
                port: Some(1884),
                seed: Some(7),
            }))
        );
        for line in [
            "sim --port x",
            "sim --port 0",
            "sim --seed -1",
            "sim --host",
            "sim extra",
        ] {
            assert!(parse(&args(line)).is_err(), "{line:?}");
        }
        assert_eq!(parse(&args("sim -h")), Ok(Command::Help(&["sim"])));
        assert!(help(&[]).contains("sim [--config FILE]"));
        assert!(help(&["sim"]).contains("--seed"));
    }

    #[test]
    fn help_is_available_at_every_level() {
        assert_eq!(parse(&args("--help")), Ok(Command::Help(&[])));
        assert_eq!(parse(&args("config help")), Ok(Command::Help(&["config"])));
        assert_eq!(
            parse(&args("config check --config x -h")),
            Ok(Command::Help(&["config", "check"]))
        );
        assert!(help(&[]).contains("config check"));
        assert!(help(&[]).contains("recipe graph FILE"));
        assert_eq!(parse(&args("recipe -h")), Ok(Command::Help(&["recipe"])));
        assert_eq!(
            parse(&args("recipe check x.json --help")),
            Ok(Command::Help(&["recipe", "check"]))
        );
        assert!(help(&["recipe"]).contains("graph"));
        assert!(help(&["config"]).contains("check"));
    }
}
