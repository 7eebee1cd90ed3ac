//! Every setting in one table: its file key, its environment variable, how
//! it is read and how it is shown. Loading, validation of unknown keys and
//! the effective-configuration output are all driven by these tables, so a
//! new setting is one entry here plus its field.

use super::value::{self, Raw};
use super::{Config, InstanceIdSource, ProcessorTopics, Secret};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a value is shown in the effective configuration.
pub(super) enum Shown {
    Str(String),
    Int(u64),
    Bool(bool),
    /// A secret that is set (shown as `"***"`).
    Secret,
    /// An optional setting that is not set.
    Unset,
}

/// A scalar setting.
pub(super) struct Key {
    pub(super) section: &'static str,
    pub(super) name: &'static str,
    pub(super) env: Option<&'static str>,
    pub(super) set: fn(&mut Config, &Raw<'_>) -> Result<(), String>,
    pub(super) get: fn(&Config) -> Shown,
}

/// A per-processor setting (`processors.{name}.{key}`), with the
/// environment list that sets it for several processors at once.
pub(super) struct ProcessorKey {
    pub(super) name: &'static str,
    pub(super) env_list: Option<&'static str>,
    /// What one list entry looks like, for error messages.
    pub(super) entry_form: &'static str,
    pub(super) set: fn(&mut ProcessorTopics, &Raw<'_>) -> Result<(), String>,
    pub(super) get: fn(&ProcessorTopics) -> Shown,
}

/// The file's sections, in output order.
pub(super) const SECTIONS: &[&str] = &[
    "instance",
    "mqtt",
    "redis",
    "processing",
    "processors",
    "publisher",
    "webhooks",
    "jobs",
    "msgpack",
    "http",
    "telemetry",
    "log",
    "opcua",
];

/// Largest accepted grace period: bounded so that deadlines computed from
/// it cannot overflow, and a day is already far beyond any orchestrator's
/// patience.
const MAX_GRACE_SECONDS: u64 = 86_400;

/// `max_payload_size` × 4 is announced as MQTT Maximum Packet Size, which
/// MQTT caps at 256 MiB.
const MAX_PAYLOAD_SIZE: u64 = 64 * 1024 * 1024;

/// Second-valued TTLs end up as MQTT Message Expiry Intervals or Redis
/// expiries; both fit in 32 bits.
const MAX_TTL_SECONDS: u64 = u32::MAX as u64;

fn opt_str(v: &Option<String>) -> Shown {
    v.clone().map_or(Shown::Unset, Shown::Str)
}

fn list_shown(v: &[String]) -> Shown {
    if v.is_empty() {
        Shown::Unset
    } else {
        Shown::Str(v.join(","))
    }
}

fn opt_secret(v: &Option<Secret>) -> Shown {
    if v.is_some() {
        Shown::Secret
    } else {
        Shown::Unset
    }
}

fn path(p: &Path) -> Shown {
    Shown::Str(p.display().to_string())
}

fn opt_path(p: &Option<PathBuf>) -> Shown {
    p.as_deref().map_or(Shown::Unset, path)
}

fn secs(d: Duration) -> Shown {
    Shown::Int(d.as_secs())
}

pub(super) static KEYS: &[Key] = &[
    // [instance]
    Key {
        section: "instance",
        name: "id",
        env: Some("POD_ID"),
        set: |c, v| {
            c.instance.id = v.checked(value::topic_level)?;
            c.instance.id_source = if v.is_env() {
                InstanceIdSource::PodId
            } else {
                InstanceIdSource::File
            };
            Ok(())
        },
        get: |c| Shown::Str(c.instance.id.clone()),
    },
    Key {
        section: "instance",
        name: "is_processor_instance",
        env: Some("APP_IS_PROCESSOR_INSTANCE"),
        set: |c, v| {
            c.instance.is_processor_instance = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.instance.is_processor_instance),
    },
    Key {
        section: "instance",
        name: "is_publisher_instance",
        env: Some("APP_IS_PUBLISHER_INSTANCE"),
        set: |c, v| {
            c.instance.is_publisher_instance = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.instance.is_publisher_instance),
    },
    // [mqtt]
    Key {
        section: "mqtt",
        name: "host",
        env: Some("APP_MQTT_HOSTNAME"),
        set: |c, v| {
            c.mqtt.host = v.checked(value::host)?;
            Ok(())
        },
        get: |c| Shown::Str(c.mqtt.host.clone()),
    },
    Key {
        section: "mqtt",
        name: "port",
        env: Some("APP_MQTT_PORT"),
        set: |c, v| {
            c.mqtt.port = v.port()?;
            Ok(())
        },
        get: |c| Shown::Int(c.mqtt.port.into()),
    },
    Key {
        section: "mqtt",
        name: "identifier",
        env: Some("APP_MQTT_IDENTIFIER"),
        set: |c, v| {
            c.mqtt.identifier = v.checked(value::utf8_string)?;
            Ok(())
        },
        get: |c| Shown::Str(c.mqtt.identifier.clone()),
    },
    Key {
        section: "mqtt",
        name: "client_id",
        env: Some("APP_MQTT_CLIENT_ID"),
        set: |c, v| {
            c.mqtt.client_id = Some(v.checked(value::utf8_string)?);
            Ok(())
        },
        get: |c| opt_str(&c.mqtt.client_id),
    },
    Key {
        section: "mqtt",
        name: "username",
        env: Some("APP_MQTT_USERNAME"),
        set: |c, v| {
            c.mqtt.username = Some(v.checked(value::utf8_string)?);
            Ok(())
        },
        get: |c| opt_str(&c.mqtt.username),
    },
    Key {
        section: "mqtt",
        name: "password",
        env: Some("APP_MQTT_PASSWORD"),
        set: |c, v| {
            c.mqtt.password = Some(Secret::new(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_secret(&c.mqtt.password),
    },
    Key {
        section: "mqtt",
        name: "tls_cert_path",
        env: Some("APP_MQTT_TLS_CERT_PATH"),
        set: |c, v| {
            c.mqtt.tls_cert_path = PathBuf::from(v.non_empty()?);
            Ok(())
        },
        get: |c| path(&c.mqtt.tls_cert_path),
    },
    Key {
        section: "mqtt",
        name: "tls_client_cert_path",
        env: Some("APP_MQTT_TLS_CLIENT_CERT_PATH"),
        set: |c, v| {
            c.mqtt.tls_client_cert_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.mqtt.tls_client_cert_path),
    },
    Key {
        section: "mqtt",
        name: "tls_client_key_path",
        env: Some("APP_MQTT_TLS_CLIENT_KEY_PATH"),
        set: |c, v| {
            c.mqtt.tls_client_key_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.mqtt.tls_client_key_path),
    },
    Key {
        section: "mqtt",
        name: "tls_server_name",
        env: Some("APP_MQTT_TLS_SERVER_NAME"),
        set: |c, v| {
            c.mqtt.tls_server_name = Some(v.checked(value::host)?);
            Ok(())
        },
        get: |c| opt_str(&c.mqtt.tls_server_name),
    },
    Key {
        section: "mqtt",
        name: "sat_token_path",
        env: Some("APP_MQTT_SAT_TOKEN_PATH"),
        set: |c, v| {
            c.mqtt.sat_token_path = PathBuf::from(v.non_empty()?);
            Ok(())
        },
        get: |c| path(&c.mqtt.sat_token_path),
    },
    Key {
        section: "mqtt",
        name: "keep_alive",
        env: Some("APP_MQTT_KEEP_ALIVE"),
        set: |c, v| {
            c.mqtt.keep_alive = Duration::from_secs(v.integer(1, u16::MAX.into())?);
            Ok(())
        },
        get: |c| secs(c.mqtt.keep_alive),
    },
    Key {
        section: "mqtt",
        name: "session_expiry",
        env: Some("APP_MQTT_SESSION_EXPIRY"),
        set: |c, v| {
            c.mqtt.session_expiry = Duration::from_secs(v.integer(0, MAX_TTL_SECONDS)?);
            Ok(())
        },
        get: |c| secs(c.mqtt.session_expiry),
    },
    Key {
        section: "mqtt",
        name: "max_payload_size",
        env: Some("APP_MQTT_MAX_PAYLOAD_SIZE"),
        set: |c, v| {
            c.mqtt.max_payload_size = v.integer(1, MAX_PAYLOAD_SIZE)? as usize;
            Ok(())
        },
        get: |c| Shown::Int(c.mqtt.max_payload_size as u64),
    },
    Key {
        section: "mqtt",
        name: "max_inflight",
        env: Some("APP_MQTT_MAX_INFLIGHT"),
        set: |c, v| {
            c.mqtt.max_inflight = v.integer(1, u16::MAX.into())? as u16;
            Ok(())
        },
        get: |c| Shown::Int(c.mqtt.max_inflight.into()),
    },
    Key {
        section: "mqtt",
        name: "tcp_nodelay",
        env: Some("APP_MQTT_TCP_NODELAY"),
        set: |c, v| {
            c.mqtt.tcp_nodelay = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.mqtt.tcp_nodelay),
    },
    Key {
        section: "mqtt",
        name: "dedupe_ttl_seconds",
        env: Some("APP_MQTT_DEDUPE_TTL_SECONDS"),
        set: |c, v| {
            c.mqtt.dedupe_ttl_seconds = v.integer(1, MAX_TTL_SECONDS)?;
            Ok(())
        },
        get: |c| Shown::Int(c.mqtt.dedupe_ttl_seconds),
    },
    Key {
        section: "mqtt",
        name: "events_qos",
        env: Some("APP_MQTT_EVENTS_QOS"),
        set: |c, v| {
            c.mqtt.events_qos = v
                .integer(0, 1)
                .map_err(|e| format!("{e} (events go out at QoS 0 or 1)"))?
                as u8;
            Ok(())
        },
        get: |c| Shown::Int(c.mqtt.events_qos.into()),
    },
    Key {
        section: "mqtt",
        name: "dead_letter_topic",
        env: Some("APP_MQTT_DEAD_LETTER_TOPIC"),
        set: |c, v| {
            c.mqtt.dead_letter_topic = v.checked(value::topic)?;
            Ok(())
        },
        get: |c| Shown::Str(c.mqtt.dead_letter_topic.clone()),
    },
    Key {
        section: "mqtt",
        name: "dead_letter_max_len",
        env: Some("APP_MQTT_DEAD_LETTER_MAX_LEN"),
        set: |c, v| {
            c.mqtt.dead_letter_max_len = v.integer(1, 10_000_000)?;
            Ok(())
        },
        get: |c| Shown::Int(c.mqtt.dead_letter_max_len),
    },
    Key {
        section: "mqtt",
        name: "session_takeover",
        env: Some("APP_MQTT_SESSION_TAKEOVER"),
        set: |c, v| {
            c.mqtt.session_takeover = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.mqtt.session_takeover),
    },
    Key {
        section: "mqtt",
        name: "session_heartbeat_interval",
        env: Some("APP_MQTT_SESSION_HEARTBEAT_INTERVAL"),
        set: |c, v| {
            c.mqtt.session_heartbeat_interval =
                Duration::from_secs(v.integer(1, MAX_GRACE_SECONDS)?);
            Ok(())
        },
        get: |c| secs(c.mqtt.session_heartbeat_interval),
    },
    Key {
        section: "mqtt",
        name: "session_dead_after",
        env: Some("APP_MQTT_SESSION_DEAD_AFTER"),
        set: |c, v| {
            c.mqtt.session_dead_after = Duration::from_secs(v.integer(2, MAX_GRACE_SECONDS)?);
            Ok(())
        },
        get: |c| secs(c.mqtt.session_dead_after),
    },
    // [redis]
    Key {
        section: "redis",
        name: "host",
        env: Some("APP_REDIS_HOSTNAME"),
        set: |c, v| {
            c.redis.host = v.checked(value::host)?;
            Ok(())
        },
        get: |c| Shown::Str(c.redis.host.clone()),
    },
    Key {
        section: "redis",
        name: "port",
        env: Some("APP_REDIS_PORT"),
        set: |c, v| {
            c.redis.port = v.port()?;
            Ok(())
        },
        get: |c| Shown::Int(c.redis.port.into()),
    },
    Key {
        section: "redis",
        name: "username",
        env: Some("APP_REDIS_USERNAME"),
        set: |c, v| {
            c.redis.username = Some(v.non_empty()?);
            Ok(())
        },
        get: |c| opt_str(&c.redis.username),
    },
    Key {
        section: "redis",
        name: "password",
        env: Some("APP_REDIS_PASSWORD"),
        set: |c, v| {
            c.redis.password = Some(Secret::new(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_secret(&c.redis.password),
    },
    Key {
        section: "redis",
        name: "ssl",
        env: Some("APP_REDIS_SSL"),
        set: |c, v| {
            c.redis.ssl = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.redis.ssl),
    },
    Key {
        section: "redis",
        name: "ssl_ca_certs",
        env: Some("APP_REDIS_SSL_CA_CERTS"),
        set: |c, v| {
            c.redis.ssl_ca_certs = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.redis.ssl_ca_certs),
    },
    Key {
        section: "redis",
        name: "ssl_certfile",
        env: Some("APP_REDIS_SSL_CERTFILE"),
        set: |c, v| {
            c.redis.ssl_certfile = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.redis.ssl_certfile),
    },
    Key {
        section: "redis",
        name: "ssl_keyfile",
        env: Some("APP_REDIS_SSL_KEYFILE"),
        set: |c, v| {
            c.redis.ssl_keyfile = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.redis.ssl_keyfile),
    },
    Key {
        section: "redis",
        name: "key_prefix",
        env: Some("APP_REDIS_KEY_PREFIX"),
        set: |c, v| {
            c.redis.key_prefix = v.non_empty()?;
            Ok(())
        },
        get: |c| Shown::Str(c.redis.key_prefix.clone()),
    },
    Key {
        section: "redis",
        name: "db",
        env: Some("APP_REDIS_DB"),
        set: |c, v| {
            c.redis.db = v.integer(0, u32::MAX.into())? as u32;
            Ok(())
        },
        get: |c| Shown::Int(c.redis.db.into()),
    },
    Key {
        section: "redis",
        name: "cluster_nodes",
        env: Some("APP_REDIS_CLUSTER_NODES"),
        set: |c, v| {
            c.redis.cluster_nodes = value::cluster_nodes(v)?;
            Ok(())
        },
        get: |c| {
            if c.redis.cluster_nodes.is_empty() {
                Shown::Unset
            } else {
                Shown::Str(c.redis.cluster_nodes.join(","))
            }
        },
    },
    // [processing]
    Key {
        section: "processing",
        name: "cloudevent_source",
        env: Some("APP_PROCESSING_CLOUDEVENT_SOURCE"),
        set: |c, v| {
            c.processing.cloudevent_source = v.checked(value::utf8_string)?;
            Ok(())
        },
        get: |c| Shown::Str(c.processing.cloudevent_source.clone()),
    },
    Key {
        section: "processing",
        name: "message_expiry_interval",
        env: Some("APP_PROCESSING_MESSAGE_EXPIRY_INTERVAL"),
        set: |c, v| {
            let s = v
                .integer(1, MAX_TTL_SECONDS)
                .map_err(|e| format!("{e} (leave it unset for messages that never expire)"))?;
            c.processing.message_expiry_interval = Some(Duration::from_secs(s));
            Ok(())
        },
        get: |c| {
            c.processing
                .message_expiry_interval
                .map_or(Shown::Unset, secs)
        },
    },
    Key {
        section: "processing",
        name: "shared_subscription_name",
        env: Some("APP_PROCESSING_SHARED_SUBSCRIPTION_NAME"),
        set: |c, v| {
            c.processing.shared_subscription_name = Some(v.checked(value::topic_level)?);
            Ok(())
        },
        get: |c| opt_str(&c.processing.shared_subscription_name),
    },
    Key {
        section: "processing",
        name: "shutdown_grace_period",
        env: Some("APP_PROCESSING_SHUTDOWN_GRACE_PERIOD"),
        set: |c, v| {
            let s = v.integer(1, MAX_GRACE_SECONDS).map_err(|e| {
                format!("{e} (in-flight messages need time to finish and be acknowledged)")
            })?;
            c.processing.shutdown_grace_period = Duration::from_secs(s);
            Ok(())
        },
        get: |c| secs(c.processing.shutdown_grace_period),
    },
    Key {
        section: "processing",
        name: "max_attempts",
        env: Some("APP_PROCESSING_MAX_ATTEMPTS"),
        set: |c, v| {
            let n = v.integer(1, 1_000_000).map_err(|e| {
                format!("{e} (how often a message whose failures are retryable is tried before it is dead-lettered)")
            })?;
            c.processing.max_attempts = n as u32;
            Ok(())
        },
        get: |c| Shown::Int(u64::from(c.processing.max_attempts)),
    },
    // [publisher]
    Key {
        section: "publisher",
        name: "retained_ttl_seconds",
        env: Some("APP_PUBLISHER_RETAINED_TTL_SECONDS"),
        set: |c, v| {
            c.publisher.retained_ttl_seconds = v.integer(1, MAX_TTL_SECONDS)?;
            Ok(())
        },
        get: |c| Shown::Int(c.publisher.retained_ttl_seconds),
    },
    Key {
        section: "publisher",
        name: "state_index_interval_ms",
        env: Some("APP_PUBLISHER_STATE_INDEX_INTERVAL_MS"),
        set: |c, v| {
            c.publisher.state_index_interval_ms = v.integer(0, 60_000)?;
            Ok(())
        },
        get: |c| Shown::Int(c.publisher.state_index_interval_ms),
    },
    // [webhooks]
    Key {
        section: "webhooks",
        name: "urls",
        env: Some("APP_WEBHOOK_URLS"),
        set: |c, v| {
            c.webhooks.urls = value::list(v, "webhook URL")?;
            for u in &c.webhooks.urls {
                value::webhook_url(u)?;
            }
            Ok(())
        },
        get: |c| list_shown(&c.webhooks.urls),
    },
    Key {
        section: "webhooks",
        name: "secret",
        env: Some("APP_WEBHOOK_SECRET"),
        set: |c, v| {
            c.webhooks.secret = Some(Secret::new(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_secret(&c.webhooks.secret),
    },
    Key {
        section: "webhooks",
        name: "timeout_ms",
        env: Some("APP_WEBHOOK_TIMEOUT_MS"),
        set: |c, v| {
            c.webhooks.timeout_ms = v.integer(1, 600_000)?;
            Ok(())
        },
        get: |c| Shown::Int(c.webhooks.timeout_ms),
    },
    Key {
        section: "webhooks",
        name: "max_attempts",
        env: Some("APP_WEBHOOK_MAX_ATTEMPTS"),
        set: |c, v| {
            c.webhooks.max_attempts = v.integer(1, 1_000)? as u32;
            Ok(())
        },
        get: |c| Shown::Int(u64::from(c.webhooks.max_attempts)),
    },
    Key {
        section: "webhooks",
        name: "backoff_initial_ms",
        env: Some("APP_WEBHOOK_BACKOFF_INITIAL_MS"),
        set: |c, v| {
            c.webhooks.backoff_initial_ms = v.integer(1, 3_600_000)?;
            Ok(())
        },
        get: |c| Shown::Int(c.webhooks.backoff_initial_ms),
    },
    Key {
        section: "webhooks",
        name: "backoff_max_ms",
        env: Some("APP_WEBHOOK_BACKOFF_MAX_MS"),
        set: |c, v| {
            c.webhooks.backoff_max_ms = v.integer(1, 3_600_000)?;
            Ok(())
        },
        get: |c| Shown::Int(c.webhooks.backoff_max_ms),
    },
    Key {
        section: "webhooks",
        name: "event_types",
        env: Some("APP_WEBHOOK_EVENT_TYPES"),
        set: |c, v| {
            let types = value::list(v, "webhook event type")?;
            if let Some(t) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "status" | "progress"))
            {
                return Err(format!("expected status and/or progress, found {t:?}"));
            }
            c.webhooks.event_types = types;
            Ok(())
        },
        get: |c| list_shown(&c.webhooks.event_types),
    },
    Key {
        section: "webhooks",
        name: "tls_ca_path",
        env: Some("APP_WEBHOOK_TLS_CA_PATH"),
        set: |c, v| {
            c.webhooks.tls_ca_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.webhooks.tls_ca_path),
    },
    Key {
        section: "webhooks",
        name: "tls_client_cert_path",
        env: Some("APP_WEBHOOK_TLS_CLIENT_CERT_PATH"),
        set: |c, v| {
            c.webhooks.tls_client_cert_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.webhooks.tls_client_cert_path),
    },
    Key {
        section: "webhooks",
        name: "tls_client_key_path",
        env: Some("APP_WEBHOOK_TLS_CLIENT_KEY_PATH"),
        set: |c, v| {
            c.webhooks.tls_client_key_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.webhooks.tls_client_key_path),
    },
    // [jobs]
    Key {
        section: "jobs",
        name: "check_equipment",
        env: Some("APP_JOBS_CHECK_EQUIPMENT"),
        set: |c, v| {
            c.jobs.check_equipment = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_equipment),
    },
    Key {
        section: "jobs",
        name: "check_material_class",
        env: Some("APP_JOBS_CHECK_MATERIAL_CLASS"),
        set: |c, v| {
            c.jobs.check_material_class = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_material_class),
    },
    Key {
        section: "jobs",
        name: "check_material_definition",
        env: Some("APP_JOBS_CHECK_MATERIAL_DEFINITION"),
        set: |c, v| {
            c.jobs.check_material_definition = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_material_definition),
    },
    Key {
        section: "jobs",
        name: "check_personnel",
        env: Some("APP_JOBS_CHECK_PERSONNEL"),
        set: |c, v| {
            c.jobs.check_personnel = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_personnel),
    },
    Key {
        section: "jobs",
        name: "check_physical_asset",
        env: Some("APP_JOBS_CHECK_PHYSICAL_ASSET"),
        set: |c, v| {
            c.jobs.check_physical_asset = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_physical_asset),
    },
    Key {
        section: "jobs",
        name: "check_work_master",
        env: Some("APP_JOBS_CHECK_WORK_MASTER"),
        set: |c, v| {
            c.jobs.check_work_master = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_work_master),
    },
    Key {
        section: "jobs",
        name: "check_job_limit",
        env: Some("APP_JOBS_CHECK_JOB_LIMIT"),
        set: |c, v| {
            c.jobs.check_job_limit = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.check_job_limit),
    },
    Key {
        section: "jobs",
        name: "max_downloadable_job_orders",
        env: Some("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS"),
        set: |c, v| {
            c.jobs.max_downloadable_job_orders = v.integer(0, u32::MAX as u64)?;
            Ok(())
        },
        get: |c| Shown::Int(c.jobs.max_downloadable_job_orders),
    },
    Key {
        section: "jobs",
        name: "retention_seconds",
        env: Some("APP_JOBS_RETENTION_SECONDS"),
        set: |c, v| {
            c.jobs.retention_seconds = v.integer(1, MAX_TTL_SECONDS)?;
            Ok(())
        },
        get: |c| Shown::Int(c.jobs.retention_seconds),
    },
    Key {
        section: "jobs",
        name: "change_stream_max_len",
        env: Some("APP_JOBS_CHANGE_STREAM_MAX_LEN"),
        set: |c, v| {
            c.jobs.change_stream_max_len = v.integer(1, u32::MAX as u64)?;
            Ok(())
        },
        get: |c| Shown::Int(c.jobs.change_stream_max_len),
    },
    Key {
        section: "jobs",
        name: "audit_steps",
        env: Some("APP_JOBS_AUDIT_STEPS"),
        set: |c, v| {
            c.jobs.audit_steps = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.jobs.audit_steps),
    },
    // [http]
    Key {
        section: "http",
        name: "host",
        env: Some("APP_HTTP_HOSTNAME"),
        set: |c, v| {
            c.http.host = v.checked(value::host)?;
            Ok(())
        },
        get: |c| Shown::Str(c.http.host.clone()),
    },
    Key {
        section: "http",
        name: "port",
        env: Some("APP_HTTP_PORT"),
        set: |c, v| {
            c.http.port = v
                .integer(0, u16::MAX.into())
                .map_err(|e| format!("invalid port (0 switches the server off): {e}"))?
                as u16;
            Ok(())
        },
        get: |c| Shown::Int(c.http.port.into()),
    },
    // [telemetry]
    Key {
        section: "telemetry",
        name: "enabled",
        env: Some("APP_PROCESSING_OTEL_INSTRUMENTATION_ENABLED"),
        set: |c, v| {
            c.telemetry.enabled = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.telemetry.enabled),
    },
    // [msgpack]
    Key {
        section: "msgpack",
        name: "host",
        env: Some("APP_MSGPACK_HOSTNAME"),
        set: |c, v| {
            c.msgpack.host = v.checked(value::host)?;
            Ok(())
        },
        get: |c| Shown::Str(c.msgpack.host.clone()),
    },
    Key {
        section: "msgpack",
        name: "port",
        env: Some("APP_MSGPACK_PORT"),
        set: |c, v| {
            c.msgpack.port = v.port()?;
            Ok(())
        },
        get: |c| Shown::Int(c.msgpack.port.into()),
    },
    Key {
        section: "msgpack",
        name: "max_concurrent_requests",
        env: Some("APP_MSGPACK_MAX_CONCURRENT_REQUESTS"),
        set: |c, v| {
            c.msgpack.max_concurrent_requests = v.integer(1, u32::MAX.into())? as u32;
            Ok(())
        },
        get: |c| Shown::Int(c.msgpack.max_concurrent_requests.into()),
    },
    Key {
        section: "msgpack",
        name: "processors",
        env: Some("APP_MSGPACK_PROCESSORS"),
        set: |c, v| {
            c.msgpack.processors = value::names(v)?;
            Ok(())
        },
        get: |c| {
            if c.msgpack.processors.is_empty() {
                Shown::Unset
            } else {
                Shown::Str(c.msgpack.processors.join(","))
            }
        },
    },
    Key {
        section: "msgpack",
        name: "max_buffer_size",
        env: Some("APP_MSGPACK_MAX_BUFFER_SIZE"),
        set: |c, v| {
            c.msgpack.max_buffer_size = v.integer(64, u32::MAX.into())?;
            Ok(())
        },
        get: |c| Shown::Int(c.msgpack.max_buffer_size),
    },
    Key {
        section: "msgpack",
        name: "max_queued_connections",
        env: Some("APP_MSGPACK_MAX_QUEUED_CONNECTIONS"),
        set: |c, v| {
            c.msgpack.max_queued_connections = v.integer(1, u32::MAX.into())? as u32;
            Ok(())
        },
        get: |c| Shown::Int(c.msgpack.max_queued_connections.into()),
    },
    Key {
        section: "msgpack",
        name: "tls_cert_path",
        env: Some("APP_MSGPACK_TLS_CERT_PATH"),
        set: |c, v| {
            c.msgpack.tls_cert_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.msgpack.tls_cert_path),
    },
    Key {
        section: "msgpack",
        name: "tls_key_path",
        env: Some("APP_MSGPACK_TLS_KEY_PATH"),
        set: |c, v| {
            c.msgpack.tls_key_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.msgpack.tls_key_path),
    },
    Key {
        section: "msgpack",
        name: "tls_client_auth",
        env: Some("APP_MSGPACK_TLS_CLIENT_AUTH"),
        set: |c, v| {
            c.msgpack.tls_client_auth = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.msgpack.tls_client_auth),
    },
    Key {
        section: "msgpack",
        name: "tls_ca_path",
        env: Some("APP_MSGPACK_TLS_CA_PATH"),
        set: |c, v| {
            c.msgpack.tls_ca_path = Some(PathBuf::from(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_path(&c.msgpack.tls_ca_path),
    },
    // [log]
    Key {
        section: "log",
        name: "level",
        env: Some("APP_LOG_LEVEL"),
        set: |c, v| {
            c.log.level = v.checked(value::log_level)?;
            Ok(())
        },
        get: |c| Shown::Str(c.log.level.clone()),
    },
    Key {
        section: "log",
        name: "format",
        env: Some("APP_LOG_FORMAT"),
        set: |c, v| {
            c.log.format = value::log_format(v.text()?)?;
            Ok(())
        },
        get: |c| Shown::Str(value::log_format_name(c.log.format).into()),
    },
    // [opcua]
    Key {
        section: "opcua",
        name: "port",
        env: Some("APP_OPCUA_PORT"),
        set: |c, v| {
            c.opcua.port = v.integer(0, u16::MAX.into())? as u16;
            Ok(())
        },
        get: |c| Shown::Int(u64::from(c.opcua.port)),
    },
    Key {
        section: "opcua",
        name: "hostname",
        env: Some("APP_OPCUA_HOSTNAME"),
        set: |c, v| {
            c.opcua.hostname = Some(v.checked(value::host)?);
            Ok(())
        },
        get: |c| opt_str(&c.opcua.hostname),
    },
    Key {
        section: "opcua",
        name: "bind",
        env: Some("APP_OPCUA_BIND"),
        set: |c, v| {
            c.opcua.bind = v.checked(value::host)?;
            Ok(())
        },
        get: |c| Shown::Str(c.opcua.bind.clone()),
    },
    Key {
        section: "opcua",
        name: "anonymous",
        env: Some("APP_OPCUA_ANONYMOUS"),
        set: |c, v| {
            c.opcua.anonymous = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.opcua.anonymous),
    },
    Key {
        section: "opcua",
        name: "security_policies",
        env: Some("APP_OPCUA_SECURITY_POLICIES"),
        set: |c, v| {
            let policies = value::list(v, "security policy")?;
            if let Some(p) = policies
                .iter()
                .find(|p| !super::OPCUA_SECURITY_POLICIES.contains(&p.as_str()))
            {
                return Err(format!(
                    "unknown security policy {p:?}; expected some of {}",
                    super::OPCUA_SECURITY_POLICIES.join(", ")
                ));
            }
            if policies.is_empty() {
                return Err("expected at least one security policy".into());
            }
            c.opcua.security_policies = policies;
            Ok(())
        },
        get: |c| list_shown(&c.opcua.security_policies),
    },
    Key {
        section: "opcua",
        name: "security_modes",
        env: Some("APP_OPCUA_SECURITY_MODES"),
        set: |c, v| {
            let modes = value::list(v, "security mode")?;
            if let Some(m) = modes
                .iter()
                .find(|m| !matches!(m.as_str(), "Sign" | "SignAndEncrypt"))
            {
                return Err(format!(
                    "unknown security mode {m:?}; expected Sign and/or SignAndEncrypt (the None mode comes with the None policy)"
                ));
            }
            if modes.is_empty() {
                return Err("expected at least one security mode".into());
            }
            c.opcua.security_modes = modes;
            Ok(())
        },
        get: |c| list_shown(&c.opcua.security_modes),
    },
    Key {
        section: "opcua",
        name: "username",
        env: Some("APP_OPCUA_USERNAME"),
        set: |c, v| {
            c.opcua.username = Some(v.non_empty()?);
            Ok(())
        },
        get: |c| opt_str(&c.opcua.username),
    },
    Key {
        section: "opcua",
        name: "password",
        env: Some("APP_OPCUA_PASSWORD"),
        set: |c, v| {
            c.opcua.password = Some(Secret::new(v.non_empty()?));
            Ok(())
        },
        get: |c| opt_secret(&c.opcua.password),
    },
    Key {
        section: "opcua",
        name: "pki_dir",
        env: Some("APP_OPCUA_PKI_DIR"),
        set: |c, v| {
            c.opcua.pki_dir = PathBuf::from(v.non_empty()?);
            Ok(())
        },
        get: |c| path(&c.opcua.pki_dir),
    },
    Key {
        section: "opcua",
        name: "application_uri",
        env: Some("APP_OPCUA_APPLICATION_URI"),
        set: |c, v| {
            c.opcua.application_uri = Some(v.non_empty()?);
            Ok(())
        },
        get: |c| opt_str(&c.opcua.application_uri),
    },
    Key {
        section: "opcua",
        name: "scopes",
        env: Some("APP_OPCUA_SCOPES"),
        set: |c, v| {
            let scopes = value::list(v, "scope")?;
            for s in &scopes {
                value::topic_level(s)?;
            }
            c.opcua.scopes = scopes;
            Ok(())
        },
        get: |c| list_shown(&c.opcua.scopes),
    },
    Key {
        section: "opcua",
        name: "trust_all_clients",
        env: Some("APP_OPCUA_TRUST_ALL_CLIENTS"),
        set: |c, v| {
            c.opcua.trust_all_clients = v.boolean()?;
            Ok(())
        },
        get: |c| Shown::Bool(c.opcua.trust_all_clients),
    },
];

pub(super) static PROCESSOR_KEYS: &[ProcessorKey] = &[
    ProcessorKey {
        name: "prefix",
        env_list: Some("APP_PROCESSING_TOPIC_PREFIXES"),
        entry_form: "name:prefix",
        set: |p, v| {
            p.prefix = Some(v.checked(value::topic)?);
            Ok(())
        },
        get: |p| opt_str(&p.prefix),
    },
    ProcessorKey {
        name: "wildcard_levels",
        env_list: Some("APP_PROCESSING_TOPIC_WILDCARD_LEVELS"),
        entry_form: "name:N",
        set: |p, v| {
            p.wildcard_levels = Some(v.integer(0, u8::MAX.into())? as u8);
            Ok(())
        },
        get: |p| {
            p.wildcard_levels
                .map_or(Shown::Unset, |n| Shown::Int(n.into()))
        },
    },
    ProcessorKey {
        name: "discriminator",
        env_list: Some("APP_PROCESSING_TOPIC_DISCRIMINATORS"),
        entry_form: "name:discriminator",
        set: |p, v| {
            p.discriminator = Some(v.checked(value::topic_level)?);
            Ok(())
        },
        get: |p| opt_str(&p.discriminator),
    },
    ProcessorKey {
        name: "response_topic",
        env_list: Some("APP_PROCESSING_RESPONSE_TOPICS"),
        entry_form: "name:topic",
        set: |p, v| {
            p.response_topic = Some(v.checked(value::topic)?);
            Ok(())
        },
        get: |p| opt_str(&p.response_topic),
    },
    ProcessorKey {
        name: "shared_group",
        env_list: None,
        entry_form: "",
        set: |p, v| {
            p.shared_group = Some(v.checked(value::topic_level)?);
            Ok(())
        },
        get: |p| opt_str(&p.shared_group),
    },
];

/// Whether `var` is read by some setting.
pub(super) fn is_known_env(var: &str) -> bool {
    KEYS.iter().any(|k| k.env == Some(var))
        || PROCESSOR_KEYS.iter().any(|k| k.env_list == Some(var))
}
