//! The connection every component shares, and the dedicated ones for
//! blocking reads.

use std::time::Duration;

/// A Redis client with its shared, auto-reconnecting connection. Components
/// that block on Redis (stream reads) open their own connection from
/// `client`; everything else shares `conn`.
#[derive(Clone)]
pub struct Redis {
    /// The client (for dedicated connections).
    pub client: redis::Client,
    /// The shared multiplexed connection.
    pub conn: redis::aio::ConnectionManager,
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
        Ok(Redis { client, conn })
    }
}
