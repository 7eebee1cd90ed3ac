//! [`MsgpackSettings`]: the MessagePack-RPC server's settings.

use std::path::PathBuf;

/// Settings of a [`MsgpackTransport`](super::MsgpackTransport): where it
/// listens and the limits that protect it from its clients (wire
/// contract §5; defaults as MicroDCS's `MessagePackConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgpackSettings {
    /// Address to listen on (`APP_MSGPACK_HOSTNAME`, default `localhost`).
    pub host: String,
    /// Port to listen on (`APP_MSGPACK_PORT`, default 8888; 0 lets the
    /// system choose, see [`MsgpackTransport::local_addr`](super::MsgpackTransport::local_addr)).
    pub port: u16,
    /// Calls processed at once per connection
    /// (`APP_MSGPACK_MAX_CONCURRENT_REQUESTS`, default 10). Past it the
    /// server stops reading that connection until one finishes
    /// (back-pressure): nothing is rejected.
    pub max_concurrent_requests: usize,
    /// The largest frame a client may send, in bytes
    /// (`APP_MSGPACK_MAX_BUFFER_SIZE`, default 8 MiB). A larger one is
    /// answered with an error (when its msgid can be read) and its
    /// connection is closed.
    pub max_buffer_size: usize,
    /// Connections the operating system queues before they are accepted
    /// (the listen backlog, `APP_MSGPACK_MAX_QUEUED_CONNECTIONS`, default
    /// 100).
    pub max_queued_connections: u32,
    /// Frames queued for one client before it counts as too slow
    /// (default 1024): an event broadcast that finds its queue full closes
    /// that client's connection, so one slow client never holds up the
    /// others or the processors.
    pub client_queue: usize,
    /// The CloudEvent `source` of replies.
    pub source: String,
    /// Attempts at a call whose handler fails with a retryable error
    /// before it is answered with the error and dead-lettered (as
    /// `APP_PROCESSING_MAX_ATTEMPTS` for MQTT).
    pub max_attempts: u32,
    /// TLS: the server certificate and key, and whether clients must
    /// present a certificate. `None`: plain TCP.
    pub tls: Option<MsgpackTls>,
}

/// TLS settings of the MessagePack-RPC server (feature `tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgpackTls {
    /// PEM file with the server certificate chain
    /// (`APP_MSGPACK_TLS_CERT_PATH`).
    pub cert_path: PathBuf,
    /// PEM file with the server's private key (`APP_MSGPACK_TLS_KEY_PATH`;
    /// absent: the key is in `cert_path` too).
    pub key_path: Option<PathBuf>,
    /// Whether a client must present a certificate signed by `ca_path`
    /// (`APP_MSGPACK_TLS_CLIENT_AUTH`).
    pub client_auth: bool,
    /// PEM file of the CA that signs client certificates
    /// (`APP_MSGPACK_TLS_CA_PATH`); needed with `client_auth`.
    pub ca_path: Option<PathBuf>,
}

impl MsgpackSettings {
    /// Settings with MicroDCS's defaults, listening on `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        MsgpackSettings {
            host: host.into(),
            port,
            max_concurrent_requests: 10,
            max_buffer_size: 8 * 1024 * 1024,
            max_queued_connections: 100,
            client_queue: 1024,
            source: "microdcs".into(),
            max_attempts: 5,
            tls: None,
        }
    }
}
