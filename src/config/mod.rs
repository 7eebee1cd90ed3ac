//! Station configuration: an optional TOML file plus environment variables,
//! the environment winning, validated once at start.
//!
//! The environment variables are those of MicroDCS (wire contract §7), so an
//! existing deployment keeps working unchanged; a few of our own follow the
//! same `APP_{SECTION}_{KEY}` pattern. An empty environment variable counts
//! as unset (deployment templates often render unset values as `""`).
//!
//! | file key | environment variable | default |
//! |---|---|---|
//! | `instance.id` | `POD_ID` | hostname, else random |
//! | `instance.is_processor_instance` | `APP_IS_PROCESSOR_INSTANCE` | `true` |
//! | `instance.is_publisher_instance` | `APP_IS_PUBLISHER_INSTANCE` | `true` |
//! | `mqtt.host` | `APP_MQTT_HOSTNAME` | `localhost` |
//! | `mqtt.port` | `APP_MQTT_PORT` | `1883` |
//! | `mqtt.identifier` | `APP_MQTT_IDENTIFIER` | `microdcs` (client id *prefix*) |
//! | `mqtt.client_id` | `APP_MQTT_CLIENT_ID` | `{identifier}-{instance id}` |
//! | `mqtt.username`, `mqtt.password` | `APP_MQTT_USERNAME`, `APP_MQTT_PASSWORD` | unset |
//! | `mqtt.tls_cert_path` | `APP_MQTT_TLS_CERT_PATH` | `/var/run/certs/ca.crt` (TLS when the file exists) |
//! | `mqtt.tls_client_cert_path`, `mqtt.tls_client_key_path` | `APP_MQTT_TLS_CLIENT_CERT_PATH`, `APP_MQTT_TLS_CLIENT_KEY_PATH` | unset (no client certificate) |
//! | `mqtt.tls_server_name` | `APP_MQTT_TLS_SERVER_NAME` | unset (`mqtt.host`) |
//! | `mqtt.sat_token_path` | `APP_MQTT_SAT_TOKEN_PATH` | `/var/run/secrets/tokens/broker-sat` (`K8S-SAT` when the file exists) |
//! | `mqtt.keep_alive` (s) | `APP_MQTT_KEEP_ALIVE` | `30` |
//! | `mqtt.session_expiry` (s) | `APP_MQTT_SESSION_EXPIRY` | `3600` |
//! | `mqtt.max_payload_size` (bytes) | `APP_MQTT_MAX_PAYLOAD_SIZE` | `1048576` |
//! | `mqtt.max_inflight` | `APP_MQTT_MAX_INFLIGHT` | `100` |
//! | `mqtt.tcp_nodelay` | `APP_MQTT_TCP_NODELAY` | `true` |
//! | `mqtt.dedupe_ttl_seconds` | `APP_MQTT_DEDUPE_TTL_SECONDS` | `600` |
//! | `mqtt.events_qos` | `APP_MQTT_EVENTS_QOS` | `1` |
//! | `mqtt.dead_letter_topic` | `APP_MQTT_DEAD_LETTER_TOPIC` | `microdcs/dead-letter` |
//! | `mqtt.dead_letter_max_len` (entries per processor) | `APP_MQTT_DEAD_LETTER_MAX_LEN` | `10000` |
//! | `mqtt.session_takeover` | `APP_MQTT_SESSION_TAKEOVER` | `true` |
//! | `mqtt.session_heartbeat_interval` (s) | `APP_MQTT_SESSION_HEARTBEAT_INTERVAL` | `2` |
//! | `mqtt.session_dead_after` (s) | `APP_MQTT_SESSION_DEAD_AFTER` | `10` (at least twice the heartbeat interval) |
//! | `redis.host` | `APP_REDIS_HOSTNAME` | `localhost` |
//! | `redis.port` | `APP_REDIS_PORT` | `6379` |
//! | `redis.username`, `redis.password` | `APP_REDIS_USERNAME`, `APP_REDIS_PASSWORD` | unset |
//! | `redis.ssl` | `APP_REDIS_SSL` | `false` |
//! | `redis.ssl_ca_certs` | `APP_REDIS_SSL_CA_CERTS` | unset (the system's roots) |
//! | `redis.ssl_certfile`, `redis.ssl_keyfile` | `APP_REDIS_SSL_CERTFILE`, `APP_REDIS_SSL_KEYFILE` | unset (no client certificate) |
//! | `redis.key_prefix` | `APP_REDIS_KEY_PREFIX` | `microdcs` |
//! | `redis.db` | `APP_REDIS_DB` | `0` |
//! | `redis.cluster_nodes` (`host:port,…`) | `APP_REDIS_CLUSTER_NODES` | unset (one Redis at `redis.host`) |
//! | `processing.cloudevent_source` | `APP_PROCESSING_CLOUDEVENT_SOURCE` | `microdcs` |
//! | `processing.message_expiry_interval` (s) | `APP_PROCESSING_MESSAGE_EXPIRY_INTERVAL` | unset |
//! | `processing.shared_subscription_name` | `APP_PROCESSING_SHARED_SUBSCRIPTION_NAME` | unset |
//! | `processing.shutdown_grace_period` (s) | `APP_PROCESSING_SHUTDOWN_GRACE_PERIOD` | `10` |
//! | `processing.max_attempts` | `APP_PROCESSING_MAX_ATTEMPTS` | `30` |
//! | `processors.{name}.prefix` | `APP_PROCESSING_TOPIC_PREFIXES` (`name:prefix,…`) | the processor's |
//! | `processors.{name}.wildcard_levels` | `APP_PROCESSING_TOPIC_WILDCARD_LEVELS` (`name:N,…`) | the processor's |
//! | `processors.{name}.discriminator` | `APP_PROCESSING_TOPIC_DISCRIMINATORS` (`name:disc,…`) | the processor's |
//! | `processors.{name}.response_topic` | `APP_PROCESSING_RESPONSE_TOPICS` (`name:topic,…`) | the processor's |
//! | `processors.{name}.shared_group` | — | `processing.shared_subscription_name` |
//! | `publisher.retained_ttl_seconds` | `APP_PUBLISHER_RETAINED_TTL_SECONDS` | `172800` |
//! | `publisher.state_index_interval_ms` | `APP_PUBLISHER_STATE_INDEX_INTERVAL_MS` | `50` (0 to 60000) |
//! | `webhooks.urls` | `APP_WEBHOOK_URLS` (comma-separated) | none: webhooks off |
//! | `webhooks.secret` | `APP_WEBHOOK_SECRET` | none (required with URLs; shown as `***`) |
//! | `webhooks.timeout_ms` | `APP_WEBHOOK_TIMEOUT_MS` | `5000` |
//! | `webhooks.max_attempts` | `APP_WEBHOOK_MAX_ATTEMPTS` | `10` (then dead-lettered) |
//! | `webhooks.backoff_initial_ms` | `APP_WEBHOOK_BACKOFF_INITIAL_MS` | `500` (doubled per failed attempt) |
//! | `webhooks.backoff_max_ms` | `APP_WEBHOOK_BACKOFF_MAX_MS` | `60000` |
//! | `webhooks.event_types` | `APP_WEBHOOK_EVENT_TYPES` (comma-separated) | `status,progress` |
//! | `webhooks.tls_ca_path` | `APP_WEBHOOK_TLS_CA_PATH` | unset: `https://` receivers are checked against the system's CA certificates |
//! | `webhooks.tls_client_cert_path`, `webhooks.tls_client_key_path` | `APP_WEBHOOK_TLS_CLIENT_CERT_PATH`, `APP_WEBHOOK_TLS_CLIENT_KEY_PATH` | unset (no client certificate) |
//! | `jobs.check_equipment`, `jobs.check_material_class`, `jobs.check_material_definition`, `jobs.check_personnel`, `jobs.check_physical_asset`, `jobs.check_work_master`, `jobs.check_job_limit` | `APP_JOBS_CHECK_EQUIPMENT`, … (same suffixes) | `true` |
//! | `jobs.max_downloadable_job_orders` | `APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS` | `0` (unlimited) |
//! | `jobs.retention_seconds` | `APP_JOBS_RETENTION_SECONDS` | `86400` |
//! | `jobs.audit_steps` | `APP_JOBS_AUDIT_STEPS` | `true` |
//! | `jobs.change_stream_max_len` | `APP_JOBS_CHANGE_STREAM_MAX_LEN` | `10000` |
//! | `opcua.port` | `APP_OPCUA_PORT` | `0` (no OPC UA server) |
//! | `opcua.hostname` | `APP_OPCUA_HOSTNAME` | the system's host name |
//! | `opcua.bind` | `APP_OPCUA_BIND` | `0.0.0.0` |
//! | `opcua.anonymous` | `APP_OPCUA_ANONYMOUS` | `false` |
//! | `opcua.security_policies` | `APP_OPCUA_SECURITY_POLICIES` (comma-separated) | `Basic256Sha256,Aes128-Sha256-RsaOaep,Aes256-Sha256-RsaPss` |
//! | `opcua.security_modes` | `APP_OPCUA_SECURITY_MODES` (comma-separated) | `SignAndEncrypt` |
//! | `opcua.username` | `APP_OPCUA_USERNAME` | unset (no user/password logins) |
//! | `opcua.password` | `APP_OPCUA_PASSWORD` | unset (required with a user name; shown as `***`) |
//! | `opcua.pki_dir` | `APP_OPCUA_PKI_DIR` | `./pki` |
//! | `opcua.application_uri` | `APP_OPCUA_APPLICATION_URI` | `urn:microdcs:{mqtt.identifier}` |
//! | `opcua.scopes` | `APP_OPCUA_SCOPES` (comma-separated) | empty |
//! | `opcua.trust_all_clients` | `APP_OPCUA_TRUST_ALL_CLIENTS` | `false` (tests only) |
//! | `msgpack.host` | `APP_MSGPACK_HOSTNAME` | `localhost` |
//! | `msgpack.port` | `APP_MSGPACK_PORT` | `8888` |
//! | `msgpack.max_concurrent_requests` | `APP_MSGPACK_MAX_CONCURRENT_REQUESTS` | `10` |
//! | `msgpack.processors` (`name,…`) | `APP_MSGPACK_PROCESSORS` | empty (no MessagePack-RPC server) |
//! | `msgpack.max_buffer_size` (bytes) | `APP_MSGPACK_MAX_BUFFER_SIZE` | `8388608` |
//! | `msgpack.max_queued_connections` | `APP_MSGPACK_MAX_QUEUED_CONNECTIONS` | `100` |
//! | `msgpack.tls_cert_path` | `APP_MSGPACK_TLS_CERT_PATH` | unset (plain TCP) |
//! | `msgpack.tls_key_path` | `APP_MSGPACK_TLS_KEY_PATH` | unset (the key is in `tls_cert_path`) |
//! | `msgpack.tls_client_auth` | `APP_MSGPACK_TLS_CLIENT_AUTH` | `false` |
//! | `msgpack.tls_ca_path` | `APP_MSGPACK_TLS_CA_PATH` | unset (needed with `tls_client_auth`) |
//! | `log.level` | `APP_LOG_LEVEL` | `info` (`RUST_LOG` syntax) |
//! | `log.format` | `APP_LOG_FORMAT` | `text` (`text` or `json`) |
//!
//! Booleans in the environment accept `true`/`false`/`1`/`0`/`yes`/`no`, in
//! any case. In the `name:value` lists the value is everything after the
//! *first* `:` (topics contain `/` and may contain `:`).
//!
//! # Securing the connections
//!
//! As MicroDCS: MQTT goes over TLS when the CA file at `mqtt.tls_cert_path`
//! exists (checked when the station starts), with a client certificate
//! (mutual TLS) when both `mqtt.tls_client_cert_path` and
//! `mqtt.tls_client_key_path` are set; `mqtt.tls_server_name` is the name
//! the broker's certificate must hold when it differs from `mqtt.host`.
//! When the Kubernetes service-account token at `mqtt.sat_token_path`
//! exists, CONNECT carries MQTT v5 enhanced authentication (method
//! `K8S-SAT`, the token as data), read again on every reconnect. Redis goes
//! over TLS (`rediss://`) when `redis.ssl` is true, with the redis-py names
//! for the CA and the client certificate. The files are read when a
//! connection is made, so rotated certificates and tokens are picked up on
//! the next reconnect; their contents never appear in logs, errors or
//! `config check`. See [`crate::transport::mqtt::MqttTls`].
//!
//! # MQTT client id
//!
//! MicroDCS uses `APP_MQTT_IDENTIFIER` as the client id itself, so every
//! replica of a deployment connects with the same id and the broker keeps
//! disconnecting one for the other. Here the identifier is a **prefix**: the
//! client id is `{identifier}-{instance id}`, unique per replica as long as
//! the instance ids are. `mqtt.client_id` sets the exact id instead, for a
//! broker whose ACLs are keyed on it; never put it in a template shared by
//! several replicas.
//!
//! # A replica that dies for good
//!
//! With a persistent session (`mqtt.session_expiry` > 0) the broker keeps
//! queueing a shared group's messages for a replica that was killed and
//! replaced by a pod with a new `POD_ID`. Every replica therefore renews a
//! heartbeat of its session in Redis every `mqtt.session_heartbeat_interval`;
//! when one goes `mqtt.session_dead_after` without one, a live peer connects
//! with the dead client id, processes what was queued, leaves the group and
//! lets the session end (`mqtt.session_takeover = false` turns this off).
//! See [`crate::transport::takeover`].
//!
//! # Instance id
//!
//! `POD_ID`, else `instance.id`, else the host name (`HOSTNAME`, or the
//! system's), else a random id. The instance id names the instance's response
//! topic and MQTT client, and a stable one lets the broker resume the MQTT
//! session after a restart, so set it when two instances share a host.
//!
//! # Example
//!
//! ```
//! use microdcs::config::Config;
//! use microdcs::TopicBinding;
//!
//! let file = r#"
//!     [mqtt]
//!     host = "broker.local"
//!
//!     [processors.machinery-jobs]
//!     prefix = "app/jobs"
//! "#;
//! let env = [
//!     ("POD_ID", "station-1-0"),
//!     ("APP_PROCESSING_RESPONSE_TOPICS", "machinery-jobs:app/jobs/responses"),
//! ];
//! let config = Config::from_sources(Some(file), env)?;
//! assert_eq!(config.mqtt_client_id(), "microdcs-station-1-0");
//! let binding = config.topic_binding("machinery-jobs", TopicBinding::new("jobs"));
//! assert_eq!(binding.prefix, "app/jobs");
//! assert_eq!(
//!     binding.response_topic(config.instance_id()).as_deref(),
//!     Some("app/jobs/responses/station-1-0")
//! );
//! # Ok::<(), microdcs::config::ConfigError>(())
//! ```

mod error;
mod keys;
mod load;
mod render;
mod secret;
mod value;

pub use error::{ConfigError, Origin, Problem};
pub use secret::Secret;

use crate::redis::RedisTls;
use crate::telemetry::LogFormat;
use crate::transport::mqtt::{MqttSettings, MqttTls};
use crate::transport::msgpack::{MsgpackSettings, MsgpackTls};
use crate::transport::TopicBinding;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The whole station configuration. Build it with [`Config::load`] (file and
/// process environment) or [`Config::from_sources`] (for tests and
/// embedding); both validate everything before returning.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[instance]`: who this process is and which roles it plays.
    pub instance: InstanceConfig,
    /// `[mqtt]`: the broker connection.
    pub mqtt: MqttConfig,
    /// `[redis]`: the coordination store.
    pub redis: RedisConfig,
    /// `[processing]`: settings shared by all processors.
    pub processing: ProcessingConfig,
    /// `[processors.{name}]`: per-processor topics, by processor name
    /// (`machinery-jobs` is the built-in job management processor).
    pub processors: BTreeMap<String, ProcessorTopics>,
    /// `[publisher]`: the MES publisher of retained topics.
    pub publisher: PublisherConfig,
    /// `[webhooks]`: job status and progress events to HTTP receivers.
    pub webhooks: WebhooksConfig,
    /// `[jobs]`: job management (acceptance checks, retention).
    pub jobs: JobsConfig,
    /// `[msgpack]`: the MessagePack-RPC sidecar server.
    pub msgpack: MsgpackConfig,
    /// `[http]`: the health, readiness and metrics endpoints.
    pub http: HttpConfig,
    /// `[telemetry]`: OpenTelemetry traces and metrics over OTLP.
    pub telemetry: TelemetryConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[opcua]`: the OPC UA server face (feature `opcua`; off while the
    /// port is 0).
    pub opcua: OpcuaConfig,
    /// Where each explicitly set value came from, by dotted key.
    origins: BTreeMap<String, Origin>,
    /// `APP_*` variables in the environment that no setting reads.
    unrecognised_env: Vec<String>,
}

/// `[instance]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// This instance's id (response topic, MQTT client id). Never empty and
    /// usable as one MQTT topic level.
    pub id: String,
    /// Where [`InstanceConfig::id`] came from.
    pub id_source: InstanceIdSource,
    /// Whether this instance runs processors (`APP_IS_PROCESSOR_INSTANCE`).
    pub is_processor_instance: bool,
    /// Whether this instance runs the MES publisher
    /// (`APP_IS_PUBLISHER_INSTANCE`).
    pub is_publisher_instance: bool,
}

/// Where the instance id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceIdSource {
    /// The `POD_ID` environment variable.
    PodId,
    /// `instance.id` in the configuration file.
    File,
    /// The host name (`HOSTNAME` or the system's).
    Hostname,
    /// Generated at start: differs on every restart, so the broker cannot
    /// resume this instance's MQTT session.
    Random,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id prefix: the client id is `{identifier}-{instance id}`.
    pub identifier: String,
    /// Exact client id, replacing the `{identifier}-{instance id}` scheme.
    /// Must be unique per instance.
    pub client_id: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password (needs a user name).
    pub password: Option<Secret>,
    /// CA certificate (PEM) of the broker: MQTT goes over TLS when this
    /// file exists.
    pub tls_cert_path: PathBuf,
    /// Client certificate chain (PEM) for mutual TLS; needs
    /// [`MqttConfig::tls_client_key_path`].
    pub tls_client_cert_path: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of the client certificate.
    pub tls_client_key_path: Option<PathBuf>,
    /// The name the broker's certificate must hold, when it is not
    /// [`MqttConfig::host`].
    pub tls_server_name: Option<String>,
    /// Kubernetes service-account token: CONNECT carries `K8S-SAT`
    /// enhanced authentication with it when this file exists.
    pub sat_token_path: PathBuf,
    /// Keep-alive interval (file: whole seconds).
    pub keep_alive: Duration,
    /// How long the broker keeps our session while we are away (file: whole
    /// seconds; 0 = clean session on every connect).
    pub session_expiry: Duration,
    /// Largest payload processed, in bytes.
    pub max_payload_size: usize,
    /// Messages processed concurrently (also MQTT Receive Maximum).
    pub max_inflight: u16,
    /// Disable Nagle's algorithm.
    pub tcp_nodelay: bool,
    /// Dedupe window for (`source`, `id`) pairs, in seconds.
    pub dedupe_ttl_seconds: u64,
    /// QoS of emitted events (0 or 1).
    pub events_qos: u8,
    /// Topic for messages that could not be processed.
    pub dead_letter_topic: String,
    /// Dead letters kept in Redis per processor, newest first (`crate::dlq`;
    /// older ones are trimmed as new ones arrive).
    pub dead_letter_max_len: u64,
    /// Whether live replicas take over the persistent MQTT session of a
    /// replica that died (see [`crate::transport::takeover`]).
    pub session_takeover: bool,
    /// How often this replica renews its session heartbeat in Redis and
    /// looks for dead peers (file: whole seconds).
    pub session_heartbeat_interval: Duration,
    /// How long a session may go without a heartbeat before a peer takes it
    /// over (file: whole seconds).
    pub session_dead_after: Duration,
}

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Redis host.
    pub host: String,
    /// Redis port.
    pub port: u16,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Whether to connect over TLS (`rediss://`).
    pub ssl: bool,
    /// CA certificate (PEM) to trust Redis's certificate by; unset: the
    /// system's trusted roots.
    pub ssl_ca_certs: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs
    /// [`RedisConfig::ssl_keyfile`].
    pub ssl_certfile: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    pub ssl_keyfile: Option<PathBuf>,
    /// Prefix of every key this station writes.
    pub key_prefix: String,
    /// Database number.
    pub db: u32,
    /// Nodes (`host:port`, some or all) of a Redis Cluster; empty: one
    /// Redis at `host`/`port`. With a cluster, `host` and `port` are not
    /// used, `username` and `password` apply to every node, and `db` must
    /// be 0.
    pub cluster_nodes: Vec<String>,
}

/// `[processing]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingConfig {
    /// CloudEvent `source` of replies and events.
    pub cloudevent_source: String,
    /// Message Expiry Interval of outgoing commands and events that carry
    /// none of their own (file: whole seconds); unset = they never expire.
    pub message_expiry_interval: Option<Duration>,
    /// Shared subscription group (`$share/{group}/…`) of every processor
    /// binding, unless [`ProcessorTopics::shared_group`] overrides it.
    pub shared_subscription_name: Option<String>,
    /// How long shutdown waits for in-flight work (file: whole seconds).
    pub shutdown_grace_period: Duration,
    /// Attempts at a message whose failures are retryable (Redis or the
    /// broker unavailable) before it is dead-lettered with its history.
    pub max_attempts: u32,
}

/// `[processors.{name}]`: topics of one processor. Unset fields keep the
/// processor's own defaults (see [`Config::topic_binding`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorTopics {
    /// Topic prefix, e.g. `app/jobs`.
    pub prefix: Option<String>,
    /// Single-level wildcards subscribed below the prefix.
    pub wildcard_levels: Option<u8>,
    /// Discriminator segment before the intent, e.g. `v2`.
    pub discriminator: Option<String>,
    /// Base of the instance response topic (`{response_topic}/{instance id}`).
    pub response_topic: Option<String>,
    /// Shared subscription group of this processor, overriding
    /// `processing.shared_subscription_name`.
    pub shared_group: Option<String>,
}

/// `[publisher]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Message Expiry Interval of retained MES topics, in seconds.
    pub retained_ttl_seconds: u64,
    /// Least time between two state-index publishes of a scope, in
    /// milliseconds (one more interval per started thousand jobs listed;
    /// 0: after every batch of changes).
    pub state_index_interval_ms: u64,
}

/// `[webhooks]`: the webhook sink (README "Webhooks"). Off while `urls`
/// is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Receivers (`http://…`, and `https://…` in a build with the `tls`
    /// feature), each getting every event.
    pub urls: Vec<String>,
    /// Shared secret of the HMAC-SHA256 signature (required with URLs).
    pub secret: Option<Secret>,
    /// Timeout of one HTTP request, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts at one delivery before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt, in milliseconds; doubled after
    /// each further one.
    pub backoff_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// Which events are sent: `status` (job state transitions, including
    /// the job order being stored) and/or `progress` (job response updates
    /// of a running job).
    pub event_types: Vec<String>,
    /// CA certificates (PEM) that `https://` receivers' certificates must
    /// chain to; unset: the system's CA certificates.
    pub tls_ca_path: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to `https://` receivers
    /// that ask for one (mutual TLS), with `tls_client_key_path`.
    pub tls_client_cert_path: Option<PathBuf>,
    /// Private key (PEM) of `tls_client_cert_path`.
    pub tls_client_key_path: Option<PathBuf>,
}

/// `[opcua]`: the OPC UA server face for job management (README "OPC UA
/// face", issue #13). Off while `port` is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcuaConfig {
    /// TCP port of the `opc.tcp://` endpoint; 0: no OPC UA server.
    pub port: u16,
    /// Host name advertised in the endpoint URLs and written into the
    /// certificate's subject alternative names; unset: the system's host
    /// name.
    pub hostname: Option<String>,
    /// Address the server listens on.
    pub bind: String,
    /// Whether anonymous sessions are allowed.
    pub anonymous: bool,
    /// Offered security policies, by their OPC UA names (see
    /// [`OPCUA_SECURITY_POLICIES`]); `None` only when listed, and then for
    /// anonymous sessions only.
    pub security_policies: Vec<String>,
    /// Message security modes offered with every policy other than `None`:
    /// `Sign` and/or `SignAndEncrypt`.
    pub security_modes: Vec<String>,
    /// The one user name accepted (with `password`); unset: no user/password
    /// logins.
    pub username: Option<String>,
    /// That user's password.
    pub password: Option<Secret>,
    /// The PKI directory: `own/cert.der` and `private/private.pem` (created
    /// on the first start and kept), `trusted/` and `rejected/` client
    /// certificates.
    pub pki_dir: PathBuf,
    /// The server's application URI (also in its certificate); unset:
    /// `urn:microdcs:{mqtt.identifier}`, the same on every replica.
    pub application_uri: Option<String>,
    /// Scopes whose `JobManagement` object is served from the start.
    pub scopes: Vec<String>,
    /// Trust every client certificate (copies it to `trusted/`): for tests
    /// only.
    pub trust_all_clients: bool,
}

/// The OPC UA security policies `[opcua] security_policies` accepts (the
/// deprecated `Basic128Rsa15` and `Basic256` are not offered).
pub const OPCUA_SECURITY_POLICIES: &[&str] = &[
    "None",
    "Basic256Sha256",
    "Aes128-Sha256-RsaOaep",
    "Aes256-Sha256-RsaPss",
];

/// `[jobs]`: the `machinery-jobs` processor's job acceptance and
/// retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// Check `EquipmentRequirements[].ID` against the scope's configuration.
    pub check_equipment: bool,
    /// Check `MaterialRequirements[].MaterialClassID`.
    pub check_material_class: bool,
    /// Check `MaterialRequirements[].MaterialDefinitionID`.
    pub check_material_definition: bool,
    /// Check `PersonnelRequirements[].ID`.
    pub check_personnel: bool,
    /// Check `PhysicalAssetRequirements[].ID`.
    pub check_physical_asset: bool,
    /// Check `WorkMasterID[].ID` against the stored work masters.
    pub check_work_master: bool,
    /// Apply the live-job limit (`max_downloadable_job_orders`).
    pub check_job_limit: bool,
    /// Live-job limit of scopes that set none by `config.jobacceptance`
    /// (0: unlimited).
    pub max_downloadable_job_orders: u64,
    /// How long EndState jobs are kept before they are removed, in seconds.
    pub retention_seconds: u64,
    /// Entries a scope's change stream keeps (approximately, `MAXLEN ~`).
    /// A reader that falls further behind resynchronises in full.
    pub change_stream_max_len: u64,
    /// Whether the SFC engine adds a step entry (steps entered and left,
    /// actions dispatched and ended) to a job's audit trail with every
    /// write that changes them. Off saves one `XADD` per such write; the
    /// trail then keeps commands, refusals and job state transitions only.
    pub audit_steps: bool,
}

/// `[msgpack]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgpackConfig {
    /// Address the MessagePack-RPC server listens on.
    pub host: String,
    /// Port the MessagePack-RPC server listens on.
    pub port: u16,
    /// Requests processed concurrently per connection before the server
    /// stops reading (back-pressure).
    pub max_concurrent_requests: u32,
    /// The processors `microdcs run` binds to the MessagePack-RPC server
    /// besides MQTT (`machinery-jobs`, `equipment`); empty: no server.
    pub processors: Vec<String>,
    /// The largest frame a client may send, in bytes.
    pub max_buffer_size: u64,
    /// The listen backlog.
    pub max_queued_connections: u32,
    /// PEM server certificate chain; set: TLS (MicroDCS's default path
    /// holds a CA, not a server certificate, so nothing is assumed).
    pub tls_cert_path: Option<PathBuf>,
    /// PEM server key (absent: in `tls_cert_path`).
    pub tls_key_path: Option<PathBuf>,
    /// Whether clients must present a certificate signed by `tls_ca_path`.
    pub tls_client_auth: bool,
    /// PEM CA of client certificates.
    pub tls_ca_path: Option<PathBuf>,
}

/// `[http]`: one small HTTP server per process for Kubernetes probes and
/// Prometheus (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address the server listens on.
    pub host: String,
    /// Port the server listens on; 0 (the default) switches it off, so
    /// several replicas on one host do not collide.
    pub port: u16,
}

/// `[telemetry]`: OpenTelemetry export. Where to export to and what the
/// service is called come from the standard `OTEL_*` environment
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Whether traces and metrics are exported over OTLP
    /// (`APP_PROCESSING_OTEL_INSTRUMENTATION_ENABLED`, as MicroDCS). Off by
    /// default.
    pub enabled: bool,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax, e.g. `info` or `info,microdcs=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Where MicroDCS (and this runtime) look for the broker's CA certificate.
pub const DEFAULT_MQTT_TLS_CERT_PATH: &str = "/var/run/certs/ca.crt";

/// Where MicroDCS (and this runtime) look for the projected
/// service-account token for the broker.
pub const DEFAULT_MQTT_SAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/broker-sat";

/// The client id prefix used when `mqtt.identifier` is not set.
pub const DEFAULT_MQTT_IDENTIFIER: &str = "microdcs";

impl Config {
    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance.id
    }

    /// The MQTT client id: `mqtt.client_id` if set, else
    /// `{mqtt.identifier}-{instance id}`.
    pub fn mqtt_client_id(&self) -> String {
        match &self.mqtt.client_id {
            Some(id) => id.clone(),
            None => format!("{}-{}", self.mqtt.identifier, self.instance.id),
        }
    }

    /// Settings for the MQTT transport. TLS is on when the CA file at
    /// `mqtt.tls_cert_path` exists now; the service-account token is
    /// looked for at every connect.
    pub fn mqtt_settings(&self) -> MqttSettings {
        let mut s = MqttSettings::new(
            self.mqtt.host.clone(),
            self.mqtt.port,
            self.instance.id.clone(),
        );
        s.client_id = self.mqtt_client_id();
        s.username = self.mqtt.username.clone();
        s.password = self.mqtt.password.clone();
        s.tls = self.mqtt.tls_cert_path.is_file().then(|| MqttTls {
            ca_file: self.mqtt.tls_cert_path.clone(),
            client_cert: self.mqtt.tls_client_cert_path.clone(),
            client_key: self.mqtt.tls_client_key_path.clone(),
            server_name: self.mqtt.tls_server_name.clone(),
        });
        s.sat_token_path = Some(self.mqtt.sat_token_path.clone());
        s.keep_alive = self.mqtt.keep_alive;
        s.session_expiry = self.mqtt.session_expiry;
        s.max_payload_size = self.mqtt.max_payload_size;
        s.max_inflight = self.mqtt.max_inflight;
        s.tcp_nodelay = self.mqtt.tcp_nodelay;
        s.dead_letter_topic = self.mqtt.dead_letter_topic.clone();
        s.source = self.processing.cloudevent_source.clone();
        s.events_qos = self.mqtt.events_qos;
        s.shutdown_grace = self.processing.shutdown_grace_period;
        s.message_expiry = self.processing.message_expiry_interval;
        s.max_attempts = self.processing.max_attempts;
        s
    }

    /// Settings for the MessagePack-RPC transport (wire contract §5), used
    /// when `msgpack.processors` names at least one processor.
    pub fn msgpack_settings(&self) -> MsgpackSettings {
        let m = &self.msgpack;
        let mut s = MsgpackSettings::new(m.host.clone(), m.port);
        s.max_concurrent_requests = m.max_concurrent_requests as usize;
        s.max_buffer_size = usize::try_from(m.max_buffer_size).unwrap_or(usize::MAX);
        s.max_queued_connections = m.max_queued_connections;
        s.source = self.processing.cloudevent_source.clone();
        s.max_attempts = self.processing.max_attempts;
        s.tls = m.tls_cert_path.clone().map(|cert_path| MsgpackTls {
            cert_path,
            key_path: m.tls_key_path.clone(),
            client_auth: m.tls_client_auth,
            ca_path: m.tls_ca_path.clone(),
        });
        s
    }

    /// TLS to Redis when `redis.ssl` is true: the CA and client
    /// certificate files of `redis.ssl_ca_certs`, `redis.ssl_certfile`
    /// and `redis.ssl_keyfile`.
    pub fn redis_tls(&self) -> Option<RedisTls> {
        let r = &self.redis;
        r.ssl.then(|| RedisTls {
            ca_file: r.ssl_ca_certs.clone(),
            client_cert: r.ssl_certfile.clone(),
            client_key: r.ssl_keyfile.clone(),
        })
    }

    /// The Redis connection URL, `redis://[user[:password]@]host:port/db`
    /// (`rediss://` when `redis.ssl` is true), with user and password
    /// percent-encoded. It contains the password:
    /// never log it.
    pub fn redis_url(&self) -> String {
        let r = &self.redis;
        let mut url = String::from(if r.ssl { "rediss://" } else { "redis://" });
        let password = r.password.as_ref().map(Secret::expose);
        if r.username.is_some() || password.is_some() {
            if let Some(u) = &r.username {
                value::percent_encode_into(&mut url, u);
            }
            if let Some(p) = password {
                url.push(':');
                value::percent_encode_into(&mut url, p);
            }
            url.push('@');
        }
        if r.host.contains(':') && !r.host.starts_with('[') {
            url.push('[');
            url.push_str(&r.host);
            url.push(']');
        } else {
            url.push_str(&r.host);
        }
        url.push_str(&format!(":{}/{}", r.port, r.db));
        url
    }

    /// The node URLs of the Redis Cluster, `redis[s]://[user[:password]@]host:port`
    /// each (user and password percent-encoded), when `redis.cluster_nodes`
    /// is set; `None` for a single Redis. They contain the password: never
    /// log them.
    pub fn redis_cluster_urls(&self) -> Option<Vec<String>> {
        let r = &self.redis;
        if r.cluster_nodes.is_empty() {
            return None;
        }
        let scheme = if r.ssl { "rediss" } else { "redis" };
        let mut auth = String::new();
        let password = r.password.as_ref().map(Secret::expose);
        if r.username.is_some() || password.is_some() {
            if let Some(u) = &r.username {
                value::percent_encode_into(&mut auth, u);
            }
            if let Some(p) = password {
                auth.push(':');
                value::percent_encode_into(&mut auth, p);
            }
            auth.push('@');
        }
        Some(
            r.cluster_nodes
                .iter()
                .map(|node| format!("{scheme}://{auth}{node}"))
                .collect(),
        )
    }

    /// The topics of processor `name`: `default` with every field the
    /// configuration sets for `name` replaced, and the shared group set from
    /// `processors.{name}.shared_group`, else
    /// `processing.shared_subscription_name`, else `default`'s.
    pub fn topic_binding(&self, name: &str, default: TopicBinding) -> TopicBinding {
        let mut b = default;
        let p = self.processors.get(name);
        if let Some(p) = p {
            if let Some(prefix) = &p.prefix {
                b.prefix = prefix.clone();
            }
            if let Some(levels) = p.wildcard_levels {
                b.wildcard_levels = levels;
            }
            if let Some(d) = &p.discriminator {
                b.discriminator = Some(d.clone());
            }
            if let Some(r) = &p.response_topic {
                b.response_base = Some(r.clone());
            }
        }
        if let Some(group) = p
            .and_then(|p| p.shared_group.as_ref())
            .or(self.processing.shared_subscription_name.as_ref())
        {
            b.shared_group = Some(group.clone());
        }
        b
    }

    /// The log output format.
    pub fn log_format(&self) -> LogFormat {
        self.log.format
    }

    /// Where an explicitly set value came from, by dotted key (`mqtt.port`,
    /// `processors.machinery-jobs.prefix`); `None` for a default.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    /// Environment variables starting with `APP_` that no setting reads:
    /// usually a typo, or a MicroDCS setting this runtime does not have.
    pub fn unrecognised_env(&self) -> &[String] {
        &self.unrecognised_env
    }

    /// The effective configuration as TOML, every setting included, with
    /// passwords replaced by `"***"`. Values set by the environment are
    /// annotated with the variable's name. Feeding the output back to
    /// [`Config::from_sources`] yields the same settings, apart from the
    /// passwords.
    pub fn redacted_toml(&self) -> String {
        render::redacted_toml(self)
    }
}
