//! The connection every component shares, and the dedicated ones for
//! blocking reads.

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests sent to Redis by this process through [`RedisConnection`]s: a
/// command or a pipeline counts one (one request, one wait for its
/// answers), whatever Redis runs for it.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// The connection the components share: cheap to clone (clones share one
/// multiplexed, auto-reconnecting connection), usable wherever the `redis`
/// crate takes a [`ConnectionLike`] (`AsyncCommands`, `Script::invoke_async`,
/// `Pipeline::query_async`).
///
/// It counts round trips ([`RedisConnection::round_trips`]): the figure the
/// benchmark reports beside Redis's own command count.
#[derive(Clone)]
pub struct RedisConnection {
    inner: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// A shared connection over a connection manager (reconnects by itself).
    pub fn new(manager: redis::aio::ConnectionManager) -> Self {
        RedisConnection { inner: manager }
    }

    /// Requests (commands or pipelines, each one round trip) this process
    /// sent through any `RedisConnection` since it started.
    pub fn round_trips() -> u64 {
        ROUND_TRIPS.load(Ordering::Relaxed)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A Redis client with its shared, auto-reconnecting connection. Components
/// that block on Redis (stream reads) open their own connection from
/// `client`; everything else shares `conn`.
#[derive(Clone)]
pub struct Redis {
    /// The client (for dedicated connections).
    pub client: redis::Client,
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
            .set_connection_timeout(Some(Duration::from_secs(2)))
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
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
        Ok(Redis {
            client,
            conn: RedisConnection::new(conn),
        })
    }
}
