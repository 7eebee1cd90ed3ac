//! The connection every component shares, and the client that opens the
//! dedicated connections for blocking reads: each for one Redis or for a
//! Redis Cluster.

use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests sent to Redis by this process through [`RedisConnection`]s: a
/// command or a pipeline counts one (one request, one wait for its
/// answers), whatever Redis runs for it.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// How long the shared connection waits for a connection to a node.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the shared connection waits for an answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection the components share: cheap to clone (clones share one
/// multiplexed, auto-reconnecting connection), usable wherever the `redis`
/// crate takes a [`ConnectionLike`] (`AsyncCommands`, `Script::invoke_async`,
/// `Pipeline::query_async`).
///
/// Over a Redis Cluster it holds one multiplexed connection per node and
/// sends each command (each pipeline, each script) to the master of its
/// keys' slot, following `MOVED`/`ASK` redirections and refreshing the
/// slot map after a failover. Every command of a pipeline must then name
/// keys of one slot: the crate's keys share their scope's hash tag.
///
/// It counts round trips ([`RedisConnection::round_trips`]): the figure the
/// benchmark reports beside Redis's own command count.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Shared,
}

#[derive(Clone)]
enum Shared {
    Single(redis::aio::ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// A shared connection over a connection manager (reconnects by itself).
    pub fn new(manager: redis::aio::ConnectionManager) -> Self {
        RedisConnection {
            inner: Shared::Single(manager),
        }
    }

    /// A shared connection over a Redis Cluster connection (routes by slot,
    /// follows redirections, reconnects by itself).
    pub fn cluster(conn: ClusterConnection) -> Self {
        RedisConnection {
            inner: Shared::Cluster(conn),
        }
    }

    /// Whether this connection talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Shared::Cluster(_))
    }

    /// Requests (commands or pipelines, each one round trip) this process
    /// sent through any `RedisConnection` since it started.
    pub fn round_trips() -> u64 {
        ROUND_TRIPS.load(Ordering::Relaxed)
    }

    /// Runs `cmd` on the node that owns `key`'s slot: for commands that
    /// name no key but are about keys of one slot (`SCAN` of one scope's
    /// keys, which on a cluster must ask the owner of the scope's slot). On
    /// a single Redis, simply runs it.
    ///
    /// # Errors
    /// Redis is unavailable, or the reply is not a `T`.
    pub(crate) async fn query_at_key<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let value = match &mut self.inner {
            Shared::Single(c) => c.req_packed_command(cmd).await?,
            Shared::Cluster(c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key.as_bytes(),
                    SlotAddr::Master,
                ));
                c.route_command(cmd.clone(), RoutingInfo::SingleNode(route))
                    .await?
            }
        };
        redis::from_redis_value(value).map_err(Into::into)
    }

    /// Loads every script of the crate into every node of a cluster, so
    /// the first `EVALSHA` on each master (and on a replica promoted later)
    /// finds it. Nothing to do on a single Redis: a script missing after a
    /// restart is loaded on its first `NOSCRIPT`.
    ///
    /// # Errors
    /// A node is unavailable.
    pub(crate) async fn load_scripts(&mut self) -> redis::RedisResult<()> {
        let Shared::Cluster(c) = &mut self.inner else {
            return Ok(());
        };
        for script in super::scripts::all() {
            ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script);
            let routing = RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllNodes,
                Some(ResponsePolicy::AllSucceeded),
            ));
            c.route_command(load, routing).await?;
        }
        Ok(())
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            Shared::Single(c) => c.req_packed_command(cmd),
            Shared::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            Shared::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Shared::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Shared::Single(c) => c.get_db(),
            Shared::Cluster(c) => c.get_db(),
        }
    }
}

/// What opens the dedicated connections of blocking stream reads
/// (`StreamReader`, `src/redis/streams.rs`): a client of one Redis, or the
/// nodes of a Redis Cluster. Cheap to clone.
#[derive(Clone)]
pub struct RedisClient {
    inner: Client,
}

#[derive(Clone)]
pub(super) enum Client {
    // Boxed: with TLS a client holds its certificates.
    Single(Box<redis::Client>),
    /// The configured nodes (where a reader starts; it follows `MOVED` to
    /// the owner of its slot from there).
    Cluster(std::sync::Arc<[ConnectionInfo]>),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("cluster", &matches!(self.inner, Client::Cluster(_)))
            .finish_non_exhaustive()
    }
}

impl From<redis::Client> for RedisClient {
    fn from(client: redis::Client) -> Self {
        RedisClient {
            inner: Client::Single(Box::new(client)),
        }
    }
}

impl RedisClient {
    pub(super) fn kind(&self) -> &Client {
        &self.inner
    }

    /// Where Redis is, for log lines: `host:port` of the server, or of
    /// each configured cluster node, comma-separated (never credentials).
    pub fn addresses(&self) -> String {
        match &self.inner {
            Client::Single(c) => c.get_connection_info().addr().to_string(),
            Client::Cluster(nodes) => nodes
                .iter()
                .map(|n| n.addr().to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// TLS to Redis (used with `rediss://` URLs): the CA to trust the server
/// by and an optional client certificate, all PEM files (the key PKCS#8,
/// PKCS#1 or SEC1). Configured by `APP_REDIS_SSL_CA_CERTS`,
/// `APP_REDIS_SSL_CERTFILE` and `APP_REDIS_SSL_KEYFILE` (redis-py's names;
/// see [`crate::config`]). The files are read when Redis is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificate(s) Redis's certificate must chain to; `None`: the
    /// system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    /// The certificates in the form the redis crate takes them, read from
    /// the files now.
    #[cfg(feature = "tls")]
    fn certificates(&self) -> Result<redis::TlsCertificates, redis::RedisError> {
        let file_error = |e: crate::tls::TlsFileError| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "unusable TLS file",
                e.0,
            ))
        };
        // Parsed here too (not only by the redis crate) for errors that
        // name the file.
        let root_cert = match &self.ca_file {
            Some(ca) => {
                crate::tls::certificates("Redis CA certificate", ca).map_err(file_error)?;
                Some(crate::tls::read("Redis CA certificate", ca).map_err(file_error)?)
            }
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                crate::tls::certificates("Redis client certificate", cert).map_err(file_error)?;
                crate::tls::private_key("Redis client key", key).map_err(file_error)?;
                Some(redis::ClientTlsConfig {
                    client_cert: crate::tls::read("Redis client certificate", cert)
                        .map_err(file_error)?,
                    client_key: crate::tls::read("Redis client key", key).map_err(file_error)?,
                })
            }
            _ => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }

    /// `error` in words an operator can act on when it is a TLS failure:
    /// the server's certificate not trusted (naming the CA file) or ours
    /// refused; `None` for any other error.
    pub(crate) fn describe(
        tls: Option<&RedisTls>,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<String> {
        let f = crate::tls::failure(error)?;
        let ca = tls
            .and_then(|t| t.ca_file.as_ref())
            .map(|c| format!("{} (APP_REDIS_SSL_CA_CERTS)", c.display()));
        let cert = tls
            .and_then(|t| t.client_cert.as_ref())
            .map(|c| format!("{} (APP_REDIS_SSL_CERTFILE)", c.display()));
        let which = match f {
            crate::tls::Failure::ClientCertRefused(_) => {
                "APP_REDIS_SSL_CERTFILE, APP_REDIS_SSL_KEYFILE"
            }
            _ => "APP_REDIS_SSL_CA_CERTS",
        };
        Some(crate::tls::explain(
            &f,
            "Redis",
            ca.as_deref(),
            cert.as_deref(),
            which,
        ))
    }
}

/// The client of `url`, with `tls`'s certificates for a `rediss://` URL.
fn client_of(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client, redis::RedisError> {
    match tls {
        None => redis::Client::open(url),
        #[cfg(feature = "tls")]
        Some(t) => {
            crate::tls::install_provider();
            redis::Client::build_with_tls(url, t.certificates()?)
        }
        #[cfg(not(feature = "tls"))]
        Some(_) => Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "Redis is to be reached over TLS (APP_REDIS_SSL), but this build has no TLS (cargo feature `tls`)",
        ))),
    }
}

/// A Redis client with its shared, auto-reconnecting connection. Components
/// that block on Redis (stream reads) open their own connections from
/// `client`; everything else shares `conn`.
#[derive(Clone)]
pub struct Redis {
    /// The client (for dedicated connections).
    pub client: RedisClient,
    /// The shared multiplexed connection.
    pub conn: RedisConnection,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").finish_non_exhaustive()
    }
}

impl Redis {
    /// A connection of its own with no response timeout, for blocking
    /// reads (`XREAD BLOCK`): on the shared multiplexed connection a
    /// blocking read would stall every other command, and the default
    /// response timeout would cut it short.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn blocking_connection(
        client: &redis::Client,
    ) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// Opens Redis at `url` lazily: nothing connects until first use, and a
    /// Redis that is down is retried rather than fatal.
    ///
    /// # Errors
    /// The URL cannot be parsed.
    pub fn open(url: &str) -> Result<Redis, redis::RedisError> {
        Self::open_with_tls(url, None)
    }

    /// [`Redis::open`] over TLS when `tls` is given (the URL must then be
    /// `rediss://`): the certificate files are read now.
    ///
    /// # Errors
    /// The URL cannot be parsed or is not `rediss://` while `tls` is
    /// given, or a certificate or key file cannot be read or used (the
    /// error names the file, never its contents).
    pub fn open_with_tls(url: &str, tls: Option<&RedisTls>) -> Result<Redis, redis::RedisError> {
        let client = client_of(url, tls)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
        Ok(Redis {
            client: client.into(),
            conn: RedisConnection::new(conn),
        })
    }

    /// Opens the Redis Cluster whose nodes (some or all of them) are at
    /// `urls` (`redis://[user[:password]@]host:port`), lazily: the
    /// connections to the nodes are made in the background, and a cluster
    /// that is down is retried rather than fatal. Commands go to the
    /// master of their keys' slot.
    ///
    /// # Errors
    /// A URL cannot be parsed, the URLs disagree on user or password, or
    /// one names a database other than 0 (a cluster has only database 0).
    pub fn open_cluster<T: AsRef<str>>(urls: &[T]) -> Result<Redis, redis::RedisError> {
        Self::open_cluster_with_tls(urls, None)
    }

    /// [`Redis::open_cluster`] over TLS when `tls` is given (the URLs must
    /// then be `rediss://`): the certificate files are read now.
    ///
    /// # Errors
    /// As [`Redis::open_cluster`], and a certificate or key file that
    /// cannot be read or used.
    pub fn open_cluster_with_tls<T: AsRef<str>>(
        urls: &[T],
        tls: Option<&RedisTls>,
    ) -> Result<Redis, redis::RedisError> {
        let nodes = urls
            .iter()
            .map(|u| u.as_ref().into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster needs at least one node",
            )));
        }
        if nodes.iter().any(|n| n.redis_settings().db() != 0) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster has only database 0",
            )));
        }
        let builder = ClusterClientBuilder::new(nodes.clone());
        let builder = match tls {
            None => builder,
            #[cfg(feature = "tls")]
            Some(t) => {
                crate::tls::install_provider();
                builder.certs(t.certificates()?)
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "Redis is to be reached over TLS (APP_REDIS_SSL), but this build has no TLS (cargo feature `tls`)",
                )))
            }
        };
        // The stream readers' seeds carry the certificates themselves
        // (they open plain clients from them).
        let seeds = match tls {
            #[cfg(feature = "tls")]
            Some(t) => {
                let certs = t.certificates()?;
                urls.iter()
                    .map(|u| {
                        redis::Client::build_with_tls(u.as_ref(), certs.clone())
                            .map(|c| c.get_connection_info().clone())
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            _ => nodes,
        };
        let client: ClusterClient = builder
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            // Room for the retries of a failover (redirections, slot map
            // refreshes) beyond one answer's time.
            .overall_response_timeout(Some(RESPONSE_TIMEOUT * 2))
            .build()?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(CONNECTION_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        let conn = client.get_pending_async_connection_with_config(config);
        Ok(Redis {
            client: RedisClient {
                inner: Client::Cluster(seeds.into()),
            },
            conn: RedisConnection::cluster(conn),
        })
    }
}
