//! Configuration loading: file plus environment, MicroDCS variable names,
//! validation messages, redaction, and the `microdcs config check` command.
//! Pure: no broker, no Redis, and the process environment is never touched
//! (the binary runs with an explicit environment).

use microdcs::config::{Config, ConfigError, InstanceIdSource, Origin};
use microdcs::telemetry::LogFormat;
use microdcs::{Direction, TopicBinding};
use std::process::{Command, Output};
use std::time::Duration;

const NO_ENV: [(&str, &str); 0] = [];

fn load(toml: Option<&str>, env: &[(&str, &str)]) -> Config {
    match Config::from_sources(toml, env.iter().copied()) {
        Ok(c) => c,
        Err(e) => panic!("configuration should load: {e}"),
    }
}

fn error(toml: Option<&str>, env: &[(&str, &str)]) -> ConfigError {
    match Config::from_sources(toml, env.iter().copied()) {
        Ok(c) => panic!("configuration should be rejected:\n{}", c.redacted_toml()),
        Err(e) => e,
    }
}

/// Asserts that `err` has a problem from `origin` whose message contains
/// `needle`, and that the rendered error names the origin too.
fn assert_problem(err: &ConfigError, origin: &str, needle: &str) {
    let text = err.to_string();
    assert!(
        err.problems().iter().any(|p| {
            let o = p.origin.to_string();
            o.contains(origin) && p.message.contains(needle)
        }),
        "expected a problem at {origin} mentioning {needle:?}, got:\n{text}"
    );
    assert!(text.contains(origin), "{text}");
}

#[test]
fn environment_overrides_file() {
    let file = r#"
        [mqtt]
        host = "file-broker"
        port = 1884
        identifier = "from-file"

        [redis]
        key_prefix = "file"

        [processors.machinery-jobs]
        prefix = "file/jobs"
        wildcard_levels = 2
    "#;
    let c = load(
        Some(file),
        &[
            ("APP_MQTT_HOSTNAME", "env-broker"),
            ("APP_PROCESSING_TOPIC_PREFIXES", "machinery-jobs:env/jobs"),
            ("POD_ID", "p1"),
        ],
    );
    assert_eq!(c.mqtt.host, "env-broker");
    assert_eq!(
        c.mqtt.port, 1884,
        "the file still fills what the environment leaves out"
    );
    assert_eq!(c.mqtt.identifier, "from-file");
    assert_eq!(c.redis.key_prefix, "file");
    let jobs = &c.processors["machinery-jobs"];
    assert_eq!(jobs.prefix.as_deref(), Some("env/jobs"));
    assert_eq!(jobs.wildcard_levels, Some(2));
    assert_eq!(
        c.origin("mqtt.host"),
        Some(&Origin::Env {
            var: "APP_MQTT_HOSTNAME".into()
        })
    );
    assert!(matches!(c.origin("mqtt.port"), Some(Origin::File { key, .. }) if key == "mqtt.port"));
    assert_eq!(c.origin("mqtt.keep_alive"), None, "defaults have no origin");
}

#[test]
fn every_microdcs_environment_variable_is_mapped() {
    let env = [
        ("POD_ID", "pod-7"),
        ("APP_MQTT_HOSTNAME", "mqtt.example"),
        ("APP_MQTT_PORT", "8883"),
        ("APP_MQTT_IDENTIFIER", "station"),
        ("APP_REDIS_HOSTNAME", "redis.example"),
        ("APP_REDIS_PORT", "6380"),
        ("APP_REDIS_KEY_PREFIX", "st1"),
        ("APP_REDIS_USERNAME", "ruser"),
        ("APP_REDIS_PASSWORD", "rpass"),
        ("APP_PROCESSING_CLOUDEVENT_SOURCE", "urn:station:1"),
        ("APP_PROCESSING_MESSAGE_EXPIRY_INTERVAL", "120"),
        ("APP_PROCESSING_SHARED_SUBSCRIPTION_NAME", "grp"),
        ("APP_PROCESSING_TOPIC_PREFIXES", "machinery-jobs:app/jobs"),
        ("APP_PROCESSING_TOPIC_WILDCARD_LEVELS", "machinery-jobs:1"),
        ("APP_PROCESSING_TOPIC_DISCRIMINATORS", "machinery-jobs:v2"),
        (
            "APP_PROCESSING_RESPONSE_TOPICS",
            "machinery-jobs:app/jobs/responses",
        ),
        ("APP_PROCESSING_SHUTDOWN_GRACE_PERIOD", "25"),
        ("APP_MQTT_DEDUPE_TTL_SECONDS", "900"),
        ("APP_PUBLISHER_RETAINED_TTL_SECONDS", "3600"),
        ("APP_PUBLISHER_STATE_INDEX_INTERVAL_MS", "250"),
        ("APP_MSGPACK_HOSTNAME", "0.0.0.0"),
        ("APP_MSGPACK_PORT", "9999"),
        ("APP_MSGPACK_MAX_CONCURRENT_REQUESTS", "4"),
        ("APP_IS_PROCESSOR_INSTANCE", "false"),
        ("APP_IS_PUBLISHER_INSTANCE", "true"),
        // Our own.
        ("APP_MQTT_USERNAME", "muser"),
        ("APP_MQTT_PASSWORD", "mpass"),
        ("APP_MQTT_KEEP_ALIVE", "15"),
        ("APP_MQTT_SESSION_EXPIRY", "0"),
        ("APP_MQTT_MAX_PAYLOAD_SIZE", "2048"),
        ("APP_MQTT_MAX_INFLIGHT", "7"),
        ("APP_MQTT_TCP_NODELAY", "no"),
        ("APP_MQTT_EVENTS_QOS", "0"),
        ("APP_MQTT_DEAD_LETTER_TOPIC", "dlq/station"),
        ("APP_REDIS_DB", "3"),
        ("APP_LOG_LEVEL", "debug,rumqttc=warn"),
        ("APP_LOG_FORMAT", "JSON"),
    ];
    let c = load(None, &env);
    assert_eq!(c.instance.id, "pod-7");
    assert_eq!(c.instance.id_source, InstanceIdSource::PodId);
    assert!(!c.instance.is_processor_instance);
    assert!(c.instance.is_publisher_instance);
    assert_eq!(c.mqtt.host, "mqtt.example");
    assert_eq!(c.mqtt.port, 8883);
    assert_eq!(c.mqtt.identifier, "station");
    assert_eq!(c.mqtt.username.as_deref(), Some("muser"));
    assert_eq!(c.mqtt.password.as_ref().map(|p| p.expose()), Some("mpass"));
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(15));
    assert_eq!(c.mqtt.session_expiry, Duration::ZERO);
    assert_eq!(c.mqtt.max_payload_size, 2048);
    assert_eq!(c.mqtt.max_inflight, 7);
    assert!(!c.mqtt.tcp_nodelay);
    assert_eq!(c.mqtt.dedupe_ttl_seconds, 900);
    assert_eq!(c.mqtt.events_qos, 0);
    assert_eq!(c.mqtt.dead_letter_topic, "dlq/station");
    assert_eq!(c.redis.host, "redis.example");
    assert_eq!(c.redis.port, 6380);
    assert_eq!(c.redis.key_prefix, "st1");
    assert_eq!(c.redis.username.as_deref(), Some("ruser"));
    assert_eq!(c.redis.password.as_ref().map(|p| p.expose()), Some("rpass"));
    assert_eq!(c.redis.db, 3);
    assert_eq!(c.processing.cloudevent_source, "urn:station:1");
    assert_eq!(
        c.processing.message_expiry_interval,
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        c.processing.shared_subscription_name.as_deref(),
        Some("grp")
    );
    assert_eq!(c.processing.shutdown_grace_period, Duration::from_secs(25));
    let jobs = &c.processors["machinery-jobs"];
    assert_eq!(jobs.prefix.as_deref(), Some("app/jobs"));
    assert_eq!(jobs.wildcard_levels, Some(1));
    assert_eq!(jobs.discriminator.as_deref(), Some("v2"));
    assert_eq!(jobs.response_topic.as_deref(), Some("app/jobs/responses"));
    assert_eq!(c.publisher.retained_ttl_seconds, 3600);
    assert_eq!(c.publisher.state_index_interval_ms, 250);
    assert_eq!(c.msgpack.host, "0.0.0.0");
    assert_eq!(c.msgpack.port, 9999);
    assert_eq!(c.msgpack.max_concurrent_requests, 4);
    assert_eq!(c.log.level, "debug,rumqttc=warn");
    assert_eq!(c.log_format(), LogFormat::Json);
    assert!(
        c.unrecognised_env().is_empty(),
        "{:?}",
        c.unrecognised_env()
    );

    // And they reach the transport settings.
    let s = c.mqtt_settings();
    assert_eq!((s.host.as_str(), s.port), ("mqtt.example", 8883));
    assert_eq!(s.client_id, "station-pod-7");
    assert_eq!(s.instance_id, "pod-7");
    assert_eq!(s.username.as_deref(), Some("muser"));
    assert_eq!(s.password.as_ref().map(|p| p.expose()), Some("mpass"));
    assert_eq!(s.keep_alive, Duration::from_secs(15));
    assert_eq!(s.session_expiry, Duration::ZERO);
    assert_eq!(s.max_payload_size, 2048);
    assert_eq!(s.max_inflight, 7);
    assert!(!s.tcp_nodelay);
    assert_eq!(s.dead_letter_topic, "dlq/station");
    assert_eq!(s.source, "urn:station:1");
    assert_eq!(s.events_qos, 0);
    assert_eq!(s.shutdown_grace, Duration::from_secs(25));
    assert_eq!(s.message_expiry, Some(Duration::from_secs(120)));
    assert_eq!(c.redis_url(), "redis://ruser:rpass@redis.example:6380/3");
}

#[test]
fn defaults_match_microdcs_and_the_wire_contract() {
    let c = load(None, &[("POD_ID", "a")]);
    assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("localhost", 1883));
    assert_eq!((c.redis.host.as_str(), c.redis.port), ("localhost", 6379));
    assert_eq!(c.redis.key_prefix, "microdcs");
    assert_eq!(c.mqtt.dedupe_ttl_seconds, 600);
    assert_eq!(c.mqtt.events_qos, 1);
    assert_eq!(c.publisher.retained_ttl_seconds, 172_800);
    assert_eq!(c.publisher.state_index_interval_ms, 50);
    assert_eq!(c.msgpack.port, 8888);
    assert!(c.instance.is_processor_instance && c.instance.is_publisher_instance);
    assert_eq!(c.processing.message_expiry_interval, None);
    assert_eq!(c.log_format(), LogFormat::Text);
    assert_eq!(c.redis_url(), "redis://localhost:6379/0");
}

#[test]
fn name_value_lists_split_at_the_first_colon_only() {
    let c = load(
        None,
        &[
            (
                "APP_PROCESSING_TOPIC_PREFIXES",
                " machinery-jobs : plant/area:1/jobs , greeter:app/greetings,",
            ),
            (
                "APP_PROCESSING_RESPONSE_TOPICS",
                "machinery-jobs:plant/area:1/jobs/responses",
            ),
            ("APP_PROCESSING_TOPIC_WILDCARD_LEVELS", "greeter:3"),
        ],
    );
    assert_eq!(
        c.processors["machinery-jobs"].prefix.as_deref(),
        Some("plant/area:1/jobs")
    );
    assert_eq!(
        c.processors["machinery-jobs"].response_topic.as_deref(),
        Some("plant/area:1/jobs/responses")
    );
    assert_eq!(
        c.processors["greeter"].prefix.as_deref(),
        Some("app/greetings")
    );
    assert_eq!(c.processors["greeter"].wildcard_levels, Some(3));
    assert_eq!(c.processors.len(), 2);
}

#[test]
fn topic_binding_for_machinery_jobs_follows_the_wire_contract_example() {
    let c = load(
        None,
        &[
            ("POD_ID", "inst-1"),
            ("APP_PROCESSING_TOPIC_PREFIXES", "machinery-jobs:app/jobs"),
            ("APP_PROCESSING_TOPIC_WILDCARD_LEVELS", "machinery-jobs:1"),
            (
                "APP_PROCESSING_RESPONSE_TOPICS",
                "machinery-jobs:app/jobs/responses",
            ),
        ],
    );
    let b = c.topic_binding("machinery-jobs", TopicBinding::new("default/jobs"));
    assert_eq!(
        b.subscriptions(Direction::Northbound),
        ["app/jobs/commands", "app/jobs/+/commands"]
    );
    assert_eq!(
        b.response_topic(c.instance_id()).as_deref(),
        Some("app/jobs/responses/inst-1")
    );
    assert_eq!(b.shared_group, None);

    // A processor the configuration does not mention keeps its defaults.
    let mut default = TopicBinding::new("app/greetings");
    default.discriminator = Some("v1".into());
    assert_eq!(c.topic_binding("greeter", default.clone()), default);
}

#[test]
fn shared_group_applies_to_every_binding_unless_overridden() {
    let file = r#"
        [processors.special]
        shared_group = "own"
    "#;
    let c = load(
        Some(file),
        &[("APP_PROCESSING_SHARED_SUBSCRIPTION_NAME", "station")],
    );
    let jobs = c.topic_binding("machinery-jobs", TopicBinding::new("app/jobs"));
    assert_eq!(jobs.shared_group.as_deref(), Some("station"));
    assert_eq!(
        jobs.subscriptions(Direction::Northbound),
        ["$share/station/app/jobs/commands"]
    );
    let unnamed = c.topic_binding("anything", TopicBinding::new("x"));
    assert_eq!(unnamed.shared_group.as_deref(), Some("station"));
    let special = c.topic_binding("special", TopicBinding::new("y"));
    assert_eq!(special.shared_group.as_deref(), Some("own"));
}

#[test]
fn replicas_get_distinct_mqtt_client_ids() {
    for identifier in [None, Some("line-3")] {
        let ids: Vec<String> = ["station-0", "station-1"]
            .iter()
            .map(|pod| {
                let mut env = vec![("POD_ID", *pod)];
                if let Some(i) = identifier {
                    env.push(("APP_MQTT_IDENTIFIER", i));
                }
                load(None, &env).mqtt_settings().client_id
            })
            .collect();
        assert_ne!(ids[0], ids[1], "{identifier:?}");
        let prefix = identifier.unwrap_or("microdcs");
        assert_eq!(ids[0], format!("{prefix}-station-0"));
    }
    // An explicit client id is used verbatim.
    let c = load(None, &[("POD_ID", "a"), ("APP_MQTT_CLIENT_ID", "exact")]);
    assert_eq!(c.mqtt_settings().client_id, "exact");
}

#[test]
fn instance_id_falls_back_from_pod_id_to_file_to_hostname_to_random() {
    let file = "[instance]\nid = \"from-file\"\n";
    let c = load(Some(file), &[("POD_ID", "pod"), ("HOSTNAME", "host")]);
    assert_eq!(
        (c.instance_id(), c.instance.id_source),
        ("pod", InstanceIdSource::PodId)
    );
    let c = load(Some(file), &[("HOSTNAME", "host")]);
    assert_eq!(
        (c.instance_id(), c.instance.id_source),
        ("from-file", InstanceIdSource::File)
    );
    let c = load(None, &[("HOSTNAME", "host"), ("POD_ID", "")]);
    assert_eq!(
        (c.instance_id(), c.instance.id_source),
        ("host", InstanceIdSource::Hostname)
    );
    let a = load(None, NO_ENV.as_slice());
    let b = load(None, NO_ENV.as_slice());
    assert_eq!(a.instance.id_source, InstanceIdSource::Random);
    assert!(!a.instance_id().is_empty());
    assert_ne!(a.instance_id(), b.instance_id());
    assert_ne!(a.mqtt_client_id(), b.mqtt_client_id());
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let file = "[mqtt]\nhost = \"file-broker\"\n";
    let c = load(
        Some(file),
        &[
            ("APP_MQTT_HOSTNAME", ""),
            ("APP_MQTT_PASSWORD", ""),
            ("APP_PROCESSING_TOPIC_PREFIXES", ""),
        ],
    );
    assert_eq!(c.mqtt.host, "file-broker");
    assert!(c.mqtt.password.is_none());
    assert!(c.processors.is_empty());
}

#[test]
fn booleans_accept_common_spellings_in_the_environment() {
    for (text, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("Yes", true),
        ("false", false),
        ("0", false),
        ("NO", false),
    ] {
        let c = load(None, &[("APP_IS_PROCESSOR_INSTANCE", text)]);
        assert_eq!(c.instance.is_processor_instance, expected, "{text}");
    }
    let e = error(None, &[("APP_IS_PUBLISHER_INSTANCE", "sometimes")]);
    assert_problem(&e, "APP_IS_PUBLISHER_INSTANCE", "\"sometimes\"");
}

#[test]
fn invalid_values_are_reported_with_their_key_or_variable() {
    type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            None,
            &[("APP_MQTT_PORT", "70000")],
            "APP_MQTT_PORT",
            "70000",
        ),
        (
            None,
            &[("APP_REDIS_PORT", "redis")],
            "APP_REDIS_PORT",
            "port",
        ),
        (
            Some("[mqtt]\nport = 0\n"),
            &[],
            "`mqtt.port`",
            "from 1 to 65535",
        ),
        (
            Some("[mqtt]\nport = \"1883\"\n"),
            &[],
            "`mqtt.port`",
            "found a string",
        ),
        (
            Some("[mqtt]\nhots = \"x\"\n"),
            &[],
            "`mqtt.hots`",
            "did you mean `host`",
        ),
        (Some("[mqt]\n"), &[], "`mqt`", "unknown section"),
        (
            Some("[processors.machinery-jobs]\nprefx = \"a\"\n"),
            &[],
            "`processors.machinery-jobs.prefx`",
            "unknown key",
        ),
        (
            None,
            &[("APP_MQTT_EVENTS_QOS", "2")],
            "APP_MQTT_EVENTS_QOS",
            "QoS 0 or 1",
        ),
        (
            Some("[mqtt]\nevents_qos = 2\n"),
            &[],
            "`mqtt.events_qos`",
            "from 0 to 1",
        ),
        (
            None,
            &[("APP_PROCESSING_SHUTDOWN_GRACE_PERIOD", "0")],
            "APP_PROCESSING_SHUTDOWN_GRACE_PERIOD",
            "found 0",
        ),
        (
            None,
            &[("APP_PROCESSING_TOPIC_PREFIXES", "machinery-jobs")],
            "APP_PROCESSING_TOPIC_PREFIXES",
            "entry `machinery-jobs`: expected `name:prefix`",
        ),
        (
            None,
            &[(
                "APP_PROCESSING_TOPIC_WILDCARD_LEVELS",
                "machinery-jobs:many",
            )],
            "APP_PROCESSING_TOPIC_WILDCARD_LEVELS",
            "\"many\"",
        ),
        (
            None,
            &[("APP_PROCESSING_TOPIC_PREFIXES", ":app/jobs")],
            "APP_PROCESSING_TOPIC_PREFIXES",
            "processor name is empty",
        ),
        (
            None,
            &[("APP_PROCESSING_TOPIC_PREFIXES", "a:x,a:y")],
            "APP_PROCESSING_TOPIC_PREFIXES",
            "more than once",
        ),
        (
            None,
            &[("APP_PROCESSING_RESPONSE_TOPICS", "a:app/#")],
            "APP_PROCESSING_RESPONSE_TOPICS",
            "wildcards",
        ),
        (
            None,
            &[("APP_PROCESSING_TOPIC_DISCRIMINATORS", "a:v2/x")],
            "APP_PROCESSING_TOPIC_DISCRIMINATORS",
            "single MQTT topic level",
        ),
        (
            None,
            &[("POD_ID", "pod/1")],
            "POD_ID",
            "single MQTT topic level",
        ),
        (
            None,
            &[("APP_LOG_LEVEL", "verbose")],
            "APP_LOG_LEVEL",
            "unknown log level",
        ),
        (
            None,
            &[("APP_LOG_FORMAT", "xml")],
            "APP_LOG_FORMAT",
            "\"xml\"",
        ),
        (
            Some("[redis]\nkey_prefix = \"\"\n"),
            &[],
            "`redis.key_prefix`",
            "must not be empty",
        ),
        (
            None,
            &[("APP_MQTT_PASSWORD", "secret")],
            "APP_MQTT_PASSWORD",
            "needs a user name",
        ),
        (
            None,
            &[
                ("APP_IS_PROCESSOR_INSTANCE", "false"),
                ("APP_IS_PUBLISHER_INSTANCE", "false"),
            ],
            "APP_IS_PROCESSOR_INSTANCE",
            "APP_IS_PUBLISHER_INSTANCE",
        ),
    ];
    for (toml, env, origin, needle) in cases {
        let e = error(*toml, env);
        assert_problem(&e, origin, needle);
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = error(
        Some("[mqtt]\nport = 0\n[redis]\nport = 0\n"),
        &[("APP_MSGPACK_PORT", "x")],
    );
    assert_eq!(e.problems().len(), 3, "{e}");
    assert!(e
        .to_string()
        .starts_with("invalid configuration (3 problems)"));
}

#[test]
fn toml_syntax_errors_give_the_position() {
    let e = error(Some("[mqtt]\nport = \n"), &[]);
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn secrets_are_redacted_everywhere_they_are_printed() {
    let file = "[mqtt]\nusername = \"u\"\npassword = \"file-secret\"\n";
    let c = load(
        Some(file),
        &[("APP_REDIS_PASSWORD", "env-secret"), ("POD_ID", "a")],
    );
    let out = c.redacted_toml();
    assert!(
        !out.contains("file-secret") && !out.contains("env-secret"),
        "{out}"
    );
    assert!(out.contains("password = \"***\""), "{out}");
    assert!(
        out.contains("password = \"***\"  # from APP_REDIS_PASSWORD"),
        "{out}"
    );
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("file-secret") && !debug.contains("env-secret"),
        "{debug}"
    );
    // The secret is still there for the clients.
    assert!(c.redis_url().contains("env-secret"));
}

#[test]
fn redacted_output_reads_back_as_the_same_settings() {
    let c = load(
        Some(include_str!("../../microdcs.example.toml")),
        &[
            ("POD_ID", "p-1"),
            ("APP_PROCESSING_SHARED_SUBSCRIPTION_NAME", "g"),
            ("APP_PROCESSING_TOPIC_DISCRIMINATORS", "greeter:v1"),
            ("APP_MQTT_USERNAME", "u"),
            ("APP_MQTT_PASSWORD", "p"),
            ("APP_PROCESSING_MESSAGE_EXPIRY_INTERVAL", "30"),
        ],
    );
    let again = load(Some(&c.redacted_toml()), NO_ENV.as_slice());
    assert_eq!(again.instance.id, c.instance.id);
    assert_eq!(again.mqtt_client_id(), c.mqtt_client_id());
    assert_eq!(again.redis, c.redis);
    assert_eq!(again.processing, c.processing);
    assert_eq!(again.processors, c.processors);
    assert_eq!(again.publisher, c.publisher);
    assert_eq!(again.msgpack, c.msgpack);
    assert_eq!(again.log, c.log);
    let mut mqtt = again.mqtt.clone();
    mqtt.password = c.mqtt.password.clone();
    assert_eq!(mqtt, c.mqtt, "only the password differs");
    assert_eq!(
        again.mqtt.password.as_ref().map(|p| p.expose()),
        Some("***")
    );
}

#[test]
fn redis_url_escapes_credentials_and_brackets_ipv6() {
    let c = load(
        None,
        &[
            ("APP_REDIS_HOSTNAME", "::1"),
            ("APP_REDIS_PASSWORD", "p@ss:w/rd"),
        ],
    );
    assert_eq!(c.redis_url(), "redis://:p%40ss%3Aw%2Frd@[::1]:6379/0");
}

#[test]
fn unknown_app_variables_are_listed_not_fatal() {
    let c = load(
        None,
        &[
            ("APP_MQTT_PROT", "1884"),
            ("APP_MQTT_MESSAGE_WORKERS", "5"),
            ("PATH", "/bin"),
        ],
    );
    assert_eq!(
        c.unrecognised_env(),
        ["APP_MQTT_MESSAGE_WORKERS", "APP_MQTT_PROT"]
    );
}

#[test]
fn example_file_is_valid_and_complete() {
    let c = load(
        Some(include_str!("../../microdcs.example.toml")),
        &[("POD_ID", "x")],
    );
    assert_eq!(
        c.processors["machinery-jobs"].prefix.as_deref(),
        Some("app/jobs")
    );
    // Every key of the effective output appears in the example, at least
    // as a comment, so the example documents every setting.
    let example = include_str!("../../microdcs.example.toml");
    for line in c.redacted_toml().lines() {
        let key = line
            .trim_start_matches("# ")
            .split([' ', '='])
            .next()
            .unwrap_or_default();
        if line.starts_with('[')
            || key.is_empty()
            || !key.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
        {
            continue;
        }
        if line.starts_with("# ") && !line.contains(" is not set") {
            continue;
        }
        assert!(
            example.contains(&format!("{key} = ")),
            "microdcs.example.toml does not mention `{key}`"
        );
    }
}

// The `microdcs` binary.

fn microdcs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output();
    match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run microdcs: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_shows_the_msgpack_server_and_refuses_an_unknown_processor() {
    let out = microdcs(
        &["config", "check"],
        &[
            ("POD_ID", "st-1"),
            ("APP_MSGPACK_PROCESSORS", "machinery-jobs,equipment"),
            ("APP_MSGPACK_PORT", "9999"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("processors = \"machinery-jobs,equipment\"  # from APP_MSGPACK_PROCESSORS"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "MessagePack-RPC: localhost:9999 serving machinery-jobs, equipment (plain TCP)"
        ),
        "{stderr}"
    );
    let out = microdcs(
        &["config", "check"],
        &[
            ("POD_ID", "st-1"),
            ("APP_MSGPACK_PROCESSORS", "machinery-jobs,mes-bridge"),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("'mes-bridge'"), "{stderr}");
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("station.toml");
    std::fs::write(
        &file,
        "[mqtt]\nhost = \"file-broker\"\nusername = \"u\"\npassword = \"hunter2\"\n\n[processors.machinery-jobs]\nprefix = \"app/jobs\"\n",
    )
    .expect("write config");
    let path = file.to_string_lossy().into_owned();
    let out = microdcs(
        &["config", "check", "--config", &path],
        &[
            ("POD_ID", "station-1-0"),
            ("APP_MQTT_PORT", "1884"),
            ("APP_MQTT_PROT", "1"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("host = \"file-broker\""), "{stdout}");
    assert!(
        stdout.contains("port = 1884  # from APP_MQTT_PORT"),
        "{stdout}"
    );
    assert!(
        stdout.contains("id = \"station-1-0\"  # from POD_ID"),
        "{stdout}"
    );
    assert!(stdout.contains("\"microdcs-station-1-0\""), "{stdout}");
    assert!(stdout.contains("[processors.machinery-jobs]"), "{stdout}");
    assert!(stdout.contains("password = \"***\""), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    assert!(stderr.contains("configuration OK"), "{stderr}");
    assert!(stderr.contains("APP_MQTT_PROT"), "{stderr}");
    // The output is itself a valid configuration.
    assert!(Config::from_sources(Some(&stdout), NO_ENV).is_ok());
}

#[test]
fn config_check_fails_with_the_offending_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mqtt]\nport = 99999\n").expect("write config");
    let path = file.to_string_lossy().into_owned();
    let out = microdcs(
        &["config", "check", &format!("--config={path}")],
        &[("APP_PROCESSING_TOPIC_PREFIXES", "machinery-jobs")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("`mqtt.port`") && stderr.contains("99999"),
        "{stderr}"
    );
    assert!(stderr.contains("APP_PROCESSING_TOPIC_PREFIXES"), "{stderr}");

    let missing = dir
        .path()
        .join("missing.toml")
        .to_string_lossy()
        .into_owned();
    let out = microdcs(&["config", "check", "--config", &missing], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read configuration file"));
}

#[test]
fn command_line_mistakes_exit_with_2_and_help_with_0() {
    let out = microdcs(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("config check"));

    let out = microdcs(&["config", "check", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--config FILE"));

    for args in [&[][..], &["frobnicate"], &["config", "check", "--config"]] {
        let out = microdcs(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("--help"), "{args:?}");
    }
}

#[test]
fn redis_cluster_nodes_come_from_the_environment_or_the_file() {
    let c = load(
        None,
        &[
            (
                "APP_REDIS_CLUSTER_NODES",
                "10.0.0.1:7000, redis-b:7001,[::1]:7002",
            ),
            ("APP_REDIS_USERNAME", "st@tion"),
            ("APP_REDIS_PASSWORD", "p:w"),
        ],
    );
    assert_eq!(
        c.redis.cluster_nodes,
        ["10.0.0.1:7000", "redis-b:7001", "[::1]:7002"]
    );
    assert_eq!(
        c.redis_cluster_urls().unwrap(),
        [
            "redis://st%40tion:p%3Aw@10.0.0.1:7000",
            "redis://st%40tion:p%3Aw@redis-b:7001",
            "redis://st%40tion:p%3Aw@[::1]:7002",
        ]
    );
    let file = r#"
        [redis]
        cluster_nodes = ["a:7000", "b:7000"]
    "#;
    assert_eq!(
        load(Some(file), &NO_ENV).redis.cluster_nodes,
        ["a:7000", "b:7000"]
    );
    assert_eq!(
        load(None, &NO_ENV).redis_cluster_urls(),
        None,
        "one Redis by default"
    );
    // The effective configuration reads back as the same nodes.
    let c = load(None, &[("APP_REDIS_CLUSTER_NODES", "a:7000,b:7001")]);
    let again = load(Some(&c.redacted_toml()), &NO_ENV);
    assert_eq!(again.redis.cluster_nodes, ["a:7000", "b:7001"]);
}

#[test]
fn redis_cluster_nodes_must_be_host_port_and_db_zero() {
    for bad in ["redis-a", "redis-a:0", "redis-a:99999", ":7000", " , "] {
        let e = error(None, &[("APP_REDIS_CLUSTER_NODES", bad)]);
        assert_problem(&e, "APP_REDIS_CLUSTER_NODES", "cluster node");
    }
    let e = error(
        None,
        &[("APP_REDIS_CLUSTER_NODES", "a:7000"), ("APP_REDIS_DB", "2")],
    );
    assert_problem(&e, "APP_REDIS_DB", "only database 0");
    // db 0 stated explicitly is fine.
    load(
        None,
        &[("APP_REDIS_CLUSTER_NODES", "a:7000"), ("APP_REDIS_DB", "0")],
    );
}
