//! Loading: defaults, then the file, then the environment, then the derived
//! values (instance id) and the checks that span several settings.

use super::error::{ConfigError, Origin, Problem};
use super::keys::{self, KEYS, PROCESSOR_KEYS, SECTIONS};
use super::value::{self, Raw};
use super::{
    Config, HttpConfig, InstanceConfig, InstanceIdSource, JobsConfig, LogConfig, MqttConfig,
    MsgpackConfig, OpcuaConfig, ProcessingConfig, ProcessorTopics, PublisherConfig, RedisConfig,
    TelemetryConfig, WebhooksConfig, DEFAULT_MQTT_IDENTIFIER, DEFAULT_MQTT_SAT_TOKEN_PATH,
    DEFAULT_MQTT_TLS_CERT_PATH,
};
use crate::telemetry::LogFormat;
use crate::transport::mqtt::MqttSettings;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

impl Config {
    /// Loads the configuration from the TOML file at `path` (if any) and the
    /// process environment, which wins over the file.
    ///
    /// When neither `POD_ID` nor `instance.id` is set, the instance id is the
    /// host name: `HOSTNAME` if exported, else the system's.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read,
    /// [`ConfigError::Syntax`] if it is not TOML, [`ConfigError::Invalid`]
    /// listing every invalid setting (unknown keys, values out of range,
    /// malformed `name:value` lists, variables that are not UTF-8,
    /// inconsistent settings).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
            ),
            None => None,
        };
        let mut problems = Vec::new();
        let mut env = BTreeMap::new();
        for (name, val) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            match val.into_string() {
                Ok(v) => {
                    env.insert(name.to_owned(), v);
                }
                Err(_) if keys::is_known_env(name) => problems.push(Problem {
                    origin: Origin::env(name),
                    message: "is not valid UTF-8".into(),
                }),
                Err(_) => {}
            }
        }
        let hostname = env
            .get("HOSTNAME")
            .filter(|h| !h.is_empty())
            .cloned()
            .or_else(system_hostname);
        build(text.as_deref(), path, &env, hostname, problems)
    }

    /// Builds the configuration from TOML text (if any) and the given
    /// environment variables instead of the process's, which makes it easy
    /// to test. The environment wins over the file. The host name fallback
    /// for the instance id is `HOSTNAME` from `env`; the system is not asked.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Syntax`] if `toml` is not TOML, [`ConfigError::Invalid`]
    /// listing every invalid setting.
    ///
    /// # Example
    ///
    /// ```
    /// use microdcs::config::Config;
    ///
    /// let config = Config::from_sources(
    ///     Some("[mqtt]\nport = 1884\n"),
    ///     [("APP_MQTT_PORT", "8883"), ("POD_ID", "a")],
    /// )?;
    /// assert_eq!(config.mqtt.port, 8883);
    ///
    /// let err = Config::from_sources(None, [("APP_MQTT_PORT", "0")]).unwrap_err();
    /// assert!(err.to_string().contains("APP_MQTT_PORT"));
    /// # Ok::<(), microdcs::config::ConfigError>(())
    /// ```
    pub fn from_sources<I, K, V>(toml: Option<&str>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let hostname = env.get("HOSTNAME").filter(|h| !h.is_empty()).cloned();
        build(toml, None, &env, hostname, Vec::new())
    }

    /// The built-in defaults, before any source is applied. The instance id
    /// is still empty.
    fn defaults() -> Config {
        // The transport's own defaults, so there is one place for them.
        let t = MqttSettings::new("localhost", 1883, "");
        Config {
            instance: InstanceConfig {
                id: String::new(),
                id_source: InstanceIdSource::Random,
                is_processor_instance: true,
                is_publisher_instance: true,
            },
            mqtt: MqttConfig {
                host: t.host,
                port: t.port,
                identifier: DEFAULT_MQTT_IDENTIFIER.into(),
                client_id: None,
                username: None,
                password: None,
                tls_cert_path: DEFAULT_MQTT_TLS_CERT_PATH.into(),
                tls_client_cert_path: None,
                tls_client_key_path: None,
                tls_server_name: None,
                sat_token_path: DEFAULT_MQTT_SAT_TOKEN_PATH.into(),
                keep_alive: t.keep_alive,
                session_expiry: t.session_expiry,
                max_payload_size: t.max_payload_size,
                max_inflight: t.max_inflight,
                tcp_nodelay: t.tcp_nodelay,
                dedupe_ttl_seconds: 600,
                events_qos: t.events_qos,
                dead_letter_topic: t.dead_letter_topic,
                dead_letter_max_len: crate::dlq::DEFAULT_MAX_LEN,
                session_takeover: true,
                session_heartbeat_interval: crate::transport::takeover::DEFAULT_HEARTBEAT_INTERVAL,
                session_dead_after: crate::transport::takeover::DEFAULT_DEAD_AFTER,
            },
            redis: RedisConfig {
                host: "localhost".into(),
                port: 6379,
                username: None,
                password: None,
                ssl: false,
                ssl_ca_certs: None,
                ssl_certfile: None,
                ssl_keyfile: None,
                key_prefix: "microdcs".into(),
                db: 0,
                cluster_nodes: Vec::new(),
            },
            processing: ProcessingConfig {
                cloudevent_source: t.source,
                message_expiry_interval: t.message_expiry,
                shared_subscription_name: None,
                shutdown_grace_period: t.shutdown_grace,
                max_attempts: t.max_attempts,
            },
            processors: BTreeMap::new(),
            publisher: PublisherConfig {
                retained_ttl_seconds: 172_800,
                state_index_interval_ms: 50,
            },
            webhooks: WebhooksConfig {
                urls: Vec::new(),
                secret: None,
                timeout_ms: 5_000,
                max_attempts: 10,
                backoff_initial_ms: 500,
                backoff_max_ms: 60_000,
                event_types: vec!["status".into(), "progress".into()],
                tls_ca_path: None,
                tls_client_cert_path: None,
                tls_client_key_path: None,
            },
            jobs: JobsConfig {
                check_equipment: true,
                check_material_class: true,
                check_material_definition: true,
                check_personnel: true,
                check_physical_asset: true,
                check_work_master: true,
                check_job_limit: true,
                max_downloadable_job_orders: 0,
                retention_seconds: 86_400,
                change_stream_max_len: 10_000,
                audit_steps: true,
            },
            msgpack: MsgpackConfig {
                host: "localhost".into(),
                port: 8888,
                max_concurrent_requests: 10,
                processors: Vec::new(),
                max_buffer_size: 8 * 1024 * 1024,
                max_queued_connections: 100,
                tls_cert_path: None,
                tls_key_path: None,
                tls_client_auth: false,
                tls_ca_path: None,
            },
            http: HttpConfig {
                host: "0.0.0.0".into(),
                port: 0,
            },
            telemetry: TelemetryConfig { enabled: false },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            opcua: OpcuaConfig {
                port: 0,
                hostname: None,
                bind: "0.0.0.0".into(),
                anonymous: false,
                security_policies: vec![
                    "Basic256Sha256".into(),
                    "Aes128-Sha256-RsaOaep".into(),
                    "Aes256-Sha256-RsaPss".into(),
                ],
                security_modes: vec!["SignAndEncrypt".into()],
                username: None,
                password: None,
                pki_dir: "./pki".into(),
                application_uri: None,
                scopes: Vec::new(),
                trust_all_clients: false,
            },
            origins: BTreeMap::new(),
            unrecognised_env: Vec::new(),
        }
    }
}

fn build(
    toml: Option<&str>,
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
    hostname: Option<String>,
    mut problems: Vec<Problem>,
) -> Result<Config, ConfigError> {
    let mut c = Config::defaults();
    if let Some(text) = toml {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.map(Path::to_path_buf),
            message: syntax_message(text, &e),
        })?;
        apply_file(&mut c, &table, path, &mut problems);
    }
    apply_env(&mut c, env, &mut problems);
    resolve_instance_id(&mut c, hostname);
    check_consistency(&c, &mut problems);
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(ConfigError::Invalid { problems })
    }
}

fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

fn apply_file(c: &mut Config, table: &toml::Table, path: Option<&Path>, out: &mut Vec<Problem>) {
    let mut problem = |key: String, message: String| {
        out.push(Problem {
            origin: Origin::file(key, path),
            message,
        })
    };
    for (section, v) in table {
        if !SECTIONS.contains(&section.as_str()) {
            problem(
                section.clone(),
                unknown("section", section, SECTIONS.iter().copied()),
            );
            continue;
        }
        let Some(t) = v.as_table() else {
            problem(
                section.clone(),
                format!("expected a table (`[{section}]`), found {}", v.type_str()),
            );
            continue;
        };
        if section == "processors" {
            for (name, v) in t {
                let prefix = format!("processors.{name}");
                if name.trim().is_empty() {
                    problem(prefix, "a processor name must not be empty".into());
                    continue;
                }
                let Some(t) = v.as_table() else {
                    problem(
                        prefix,
                        format!("expected a table (`[processors.{name}]`) of topic settings"),
                    );
                    continue;
                };
                for (key, v) in t {
                    let path_key = format!("{prefix}.{key}");
                    let Some(k) = PROCESSOR_KEYS.iter().find(|k| k.name == key) else {
                        problem(
                            path_key,
                            unknown("key", key, PROCESSOR_KEYS.iter().map(|k| k.name)),
                        );
                        continue;
                    };
                    let topics = c.processors.entry(name.clone()).or_default();
                    match (k.set)(topics, &Raw::Toml(v)) {
                        Ok(()) => {
                            c.origins
                                .insert(path_key.clone(), Origin::file(path_key, path));
                        }
                        Err(m) => problem(path_key, m),
                    }
                }
            }
            continue;
        }
        let names = || KEYS.iter().filter(|k| k.section == section).map(|k| k.name);
        for (key, v) in t {
            let path_key = format!("{section}.{key}");
            let Some(k) = KEYS.iter().find(|k| k.section == section && k.name == key) else {
                problem(path_key, unknown("key", key, names()));
                continue;
            };
            match (k.set)(c, &Raw::Toml(v)) {
                Ok(()) => {
                    c.origins
                        .insert(path_key.clone(), Origin::file(path_key, path));
                }
                Err(m) => problem(path_key, m),
            }
        }
    }
}

fn unknown<'a>(what: &str, word: &str, known: impl Iterator<Item = &'a str> + Clone) -> String {
    let hint = match value::suggest(word, known.clone()) {
        Some(s) => format!("did you mean `{s}`? "),
        None => String::new(),
    };
    let list: Vec<&str> = known.collect();
    format!("unknown {what}; {hint}expected one of: {}", list.join(", "))
}

fn apply_env(c: &mut Config, env: &BTreeMap<String, String>, out: &mut Vec<Problem>) {
    let get = |var: &str| env.get(var).map(String::as_str).filter(|v| !v.is_empty());
    for k in KEYS {
        let Some((var, v)) = k.env.and_then(|var| get(var).map(|v| (var, v))) else {
            continue;
        };
        match (k.set)(c, &Raw::Env(v)) {
            Ok(()) => {
                c.origins
                    .insert(format!("{}.{}", k.section, k.name), Origin::env(var));
            }
            Err(message) => out.push(Problem {
                origin: Origin::env(var),
                message,
            }),
        }
    }
    for k in PROCESSOR_KEYS {
        let Some((var, list)) = k.env_list.and_then(|var| get(var).map(|v| (var, v))) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut problem = |message: String| {
                out.push(Problem {
                    origin: Origin::env(var),
                    message: format!("entry `{entry}`: {message}"),
                })
            };
            // Split at the first ':' only: the value is a topic and may
            // contain ':' itself.
            let Some((name, v)) = entry.split_once(':') else {
                problem(format!("expected `{}`", k.entry_form));
                continue;
            };
            let (name, v) = (name.trim(), v.trim());
            if name.is_empty() {
                problem(format!(
                    "the processor name is empty; expected `{}`",
                    k.entry_form
                ));
                continue;
            }
            if !seen.insert(name) {
                problem(format!("processor `{name}` is listed more than once"));
                continue;
            }
            let topics = c.processors.entry(name.to_owned()).or_default();
            match (k.set)(topics, &Raw::Env(v)) {
                Ok(()) => {
                    c.origins
                        .insert(format!("processors.{name}.{}", k.name), Origin::env(var));
                }
                Err(m) => problem(m),
            }
        }
    }
    // A processor mentioned only by a rejected entry has nothing set.
    c.processors.retain(|_, p| *p != ProcessorTopics::default());
    c.unrecognised_env = env
        .keys()
        .filter(|k| k.starts_with("APP_") && !keys::is_known_env(k))
        .cloned()
        .collect();
}

fn resolve_instance_id(c: &mut Config, hostname: Option<String>) {
    if !c.instance.id.is_empty() {
        return;
    }
    // A host name that is not a valid topic level is not an explicit
    // setting, so it falls back to a random id rather than failing.
    if let Some(h) = hostname
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && value::topic_level(h).is_ok())
    {
        c.instance.id = h;
        c.instance.id_source = InstanceIdSource::Hostname;
        return;
    }
    c.instance.id = uuid::Uuid::new_v4().simple().to_string();
    c.instance.id_source = InstanceIdSource::Random;
}

fn check_consistency(c: &Config, out: &mut Vec<Problem>) {
    let origin = |key: &str| c.origins.get(key).cloned();
    if c.mqtt.session_dead_after < c.mqtt.session_heartbeat_interval * 2 {
        let o =
            origin("mqtt.session_dead_after").or_else(|| origin("mqtt.session_heartbeat_interval"));
        if let Some(o) = o {
            out.push(Problem {
                origin: o,
                message: format!(
                    "a session is declared dead after {} s without a heartbeat, but heartbeats come every {} s: `mqtt.session_dead_after` must be at least twice `mqtt.session_heartbeat_interval`, or a live replica's session is taken over",
                    c.mqtt.session_dead_after.as_secs(),
                    c.mqtt.session_heartbeat_interval.as_secs()
                ),
            });
        }
    }
    if !c.instance.is_processor_instance && !c.instance.is_publisher_instance {
        if let Some(o) = origin("instance.is_processor_instance") {
            let other = origin("instance.is_publisher_instance")
                .map_or_else(|| "the publisher flag".to_owned(), |o| o.to_string());
            out.push(Problem {
                origin: o,
                message: format!(
                    "is false and so is {other}: an instance must run processors, the publisher, or both"
                ),
            });
        }
    }
    if !c.redis.cluster_nodes.is_empty() && c.redis.db != 0 {
        if let Some(o) = origin("redis.db") {
            out.push(Problem {
                origin: o,
                message: format!(
                    "is {}, but a Redis Cluster (`redis.cluster_nodes`) has only database 0: leave `redis.db` out, or separate stations by `redis.key_prefix`",
                    c.redis.db
                ),
            });
        }
    }
    for (cert, key, cert_key, key_key) in [
        (
            c.mqtt.tls_client_cert_path.is_some(),
            c.mqtt.tls_client_key_path.is_some(),
            "mqtt.tls_client_cert_path",
            "mqtt.tls_client_key_path",
        ),
        (
            c.redis.ssl_certfile.is_some(),
            c.redis.ssl_keyfile.is_some(),
            "redis.ssl_certfile",
            "redis.ssl_keyfile",
        ),
        (
            c.webhooks.tls_client_cert_path.is_some(),
            c.webhooks.tls_client_key_path.is_some(),
            "webhooks.tls_client_cert_path",
            "webhooks.tls_client_key_path",
        ),
    ] {
        let (set, missing) = match (cert, key) {
            (true, false) => (cert_key, key_key),
            (false, true) => (key_key, cert_key),
            _ => continue,
        };
        if let Some(o) = origin(set) {
            out.push(Problem {
                origin: o,
                message: format!(
                    "a client certificate needs both its certificate and its private key: `{missing}` is not set"
                ),
            });
        }
    }
    if !c.redis.ssl {
        for key in [
            "redis.ssl_ca_certs",
            "redis.ssl_certfile",
            "redis.ssl_keyfile",
        ] {
            if let Some(o) = origin(key) {
                out.push(Problem {
                    origin: o,
                    message: "is set, but `redis.ssl` (APP_REDIS_SSL) is false: Redis would be reached without TLS".into(),
                });
            }
        }
    }
    if !c.webhooks.urls.is_empty() && c.webhooks.secret.is_none() {
        if let Some(o) = origin("webhooks.urls") {
            out.push(Problem {
                origin: o,
                message: "webhook URLs need a signing secret (`webhooks.secret` or `APP_WEBHOOK_SECRET`): requests are always signed".into(),
            });
        }
    }
    if c.opcua.password.is_some() != c.opcua.username.is_some() {
        let key = if c.opcua.password.is_some() {
            "opcua.password"
        } else {
            "opcua.username"
        };
        if let Some(o) = origin(key) {
            out.push(Problem {
                origin: o,
                message: "an OPC UA user needs both a user name (`opcua.username`) and a password (`opcua.password`)".into(),
            });
        }
    }
    if c.opcua.port != 0 && !c.opcua.anonymous && c.opcua.username.is_none() {
        if let Some(o) = origin("opcua.port") {
            out.push(Problem {
                origin: o,
                message: "enables the OPC UA server, but nobody could log in: allow anonymous sessions (`opcua.anonymous`) or set `opcua.username` and `opcua.password`".into(),
            });
        }
    }
    if c.opcua.port != 0 && !c.instance.is_processor_instance {
        if let Some(o) = origin("opcua.port") {
            out.push(Problem {
                origin: o,
                message: "enables the OPC UA server, which needs the job manager of a processor instance (`instance.is_processor_instance`)".into(),
            });
        }
    }
    if c.mqtt.password.is_some() && c.mqtt.username.is_none() {
        if let Some(o) = origin("mqtt.password") {
            out.push(Problem {
                origin: o,
                message:
                    "an MQTT password needs a user name (`mqtt.username` or `APP_MQTT_USERNAME`)"
                        .into(),
            });
        }
    }
}

/// The system's host name, without asking libc: Linux exposes it in /proc.
fn system_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
