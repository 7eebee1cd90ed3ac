//! `microdcs config check`: the effective configuration, or what is wrong
//! with it.

use microdcs::config::{Config, InstanceIdSource};
use std::path::PathBuf;
use std::process::ExitCode;

/// Validate the configuration and print the effective settings as TOML
///
/// Loads the configuration exactly as the runtime would, checks every
/// setting, and prints the effective configuration as TOML on stdout
/// (passwords shown as "***"). Problems go to stderr; the exit code is 0 when
/// the configuration is valid, 1 when it is not.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct Args {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Prints the effective configuration and warnings, or the problems.
pub(crate) fn config_check(args: &Args) -> ExitCode {
    let path = args.config.as_deref();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::out(&config.redacted_toml());
    // What the files decide at start (as MicroDCS: TLS and K8S-SAT when
    // their files exist), so that a mistyped path is not a silent plain
    // TCP connection.
    let ca = &config.mqtt.tls_cert_path;
    if ca.is_file() {
        eprintln!(
            "MQTT: TLS, the broker trusted by the CA in {}",
            ca.display()
        );
    } else if config.origin("mqtt.tls_cert_path").is_some() {
        eprintln!(
            "warning: MQTT without TLS: the CA file {} (mqtt.tls_cert_path, APP_MQTT_TLS_CERT_PATH) does not exist",
            ca.display()
        );
    } else {
        eprintln!("MQTT: plain TCP (no CA file at {})", ca.display());
    }
    let token = &config.mqtt.sat_token_path;
    if token.is_file() {
        eprintln!("MQTT: K8S-SAT with the token in {}", token.display());
    } else if config.origin("mqtt.sat_token_path").is_some() {
        eprintln!(
            "warning: MQTT without K8S-SAT: the token file {} (mqtt.sat_token_path, APP_MQTT_SAT_TOKEN_PATH) does not exist",
            token.display()
        );
    }
    if !msgpack(&config) {
        return ExitCode::FAILURE;
    }
    if !webhooks(&config) {
        return ExitCode::FAILURE;
    }
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

/// Says whether and how `microdcs run` serves MessagePack-RPC; `false`
/// when `msgpack.processors` names a processor the station does not have.
fn msgpack(config: &Config) -> bool {
    let m = &config.msgpack;
    if m.processors.is_empty() {
        eprintln!("MessagePack-RPC: off (msgpack.processors is empty)");
        return true;
    }
    let known = [
        microdcs::jobs::processor::NAME,
        microdcs::sfc::engine::EQUIPMENT,
    ];
    if let Some(unknown) = m.processors.iter().find(|n| !known.contains(&n.as_str())) {
        eprintln!(
            "error: msgpack.processors (APP_MSGPACK_PROCESSORS) names '{unknown}', which is no processor of `microdcs run` (it has {})",
            known.join(", ")
        );
        return false;
    }
    let security = match &m.tls_cert_path {
        None => "plain TCP".to_owned(),
        Some(cert) if m.tls_client_auth => format!(
            "TLS with {}, client certificates of the CA in {} required",
            cert.display(),
            m.tls_ca_path.as_deref().map_or_else(
                || "(msgpack.tls_ca_path is not set)".into(),
                |p| p.display().to_string()
            )
        ),
        Some(cert) => format!("TLS with {}", cert.display()),
    };
    eprintln!(
        "MessagePack-RPC: {}:{} serving {} ({security})",
        m.host,
        m.port,
        m.processors.join(", ")
    );
    true
}

/// Says where webhooks go and, for `https://` receivers, what they trust;
/// warns about TLS files that nothing uses; `false` when a TLS file of
/// `https://` receivers does not exist (the station would not start).
fn webhooks(config: &Config) -> bool {
    let w = &config.webhooks;
    if w.urls.is_empty() {
        eprintln!("Webhooks: off (webhooks.urls is empty)");
        return true;
    }
    let https = w.urls.iter().filter(|u| u.starts_with("https://")).count();
    let files = [
        (
            &w.tls_ca_path,
            "webhooks.tls_ca_path, APP_WEBHOOK_TLS_CA_PATH",
        ),
        (
            &w.tls_client_cert_path,
            "webhooks.tls_client_cert_path, APP_WEBHOOK_TLS_CLIENT_CERT_PATH",
        ),
        (
            &w.tls_client_key_path,
            "webhooks.tls_client_key_path, APP_WEBHOOK_TLS_CLIENT_KEY_PATH",
        ),
    ];
    if https == 0 {
        eprintln!("Webhooks: {} http:// URL(s), no TLS", w.urls.len());
        if let Some((_, names)) = files.iter().find(|(p, _)| p.is_some()) {
            eprintln!("warning: {names} is set, but no webhook URL is https://: it is not used");
        }
        return true;
    }
    let trust = w.tls_ca_path.as_ref().map_or_else(
        || "the system's CA certificates (no webhooks.tls_ca_path)".to_owned(),
        |ca| format!("the CA in {}", ca.display()),
    );
    let client = w
        .tls_client_cert_path
        .as_ref()
        .map_or_else(String::new, |c| {
            format!(", client certificate {}", c.display())
        });
    eprintln!(
        "Webhooks: {} URL(s), {https} over TLS trusting {trust}{client}",
        w.urls.len()
    );
    let mut ok = true;
    for (path, names) in files {
        if let Some(p) = path.as_ref().filter(|p| !p.is_file()) {
            eprintln!(
                "error: the webhook TLS file {} ({names}) does not exist: the station would not start",
                p.display()
            );
            ok = false;
        }
    }
    ok
}
