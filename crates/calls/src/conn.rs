//! One Redis connection, opened when first needed and dropped after a failure that may have
//! broken it, so the next command reconnects (a restarted Redis is picked up again).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

/// A lazily (re)connected multiplexed connection with bounded connect and response times.
pub(crate) struct Conn {
    client: redis::Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    /// The open connection; a std mutex, held only to clone or replace it.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Conn {
    /// A connection to `client` whose every command answers within `timeout` (also the
    /// connect timeout). A blocking read's connection gets its block on top.
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> Conn {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Conn {
            client,
            config,
            timeout,
            conn: Mutex::new(None),
        }
    }

    /// The connection, opening it if needed; a clone, as multiplexed connections are.
    async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.slot().as_ref() {
            return Ok(conn.clone());
        }
        // The connect has its own timeout; this one bounds the handshake around it too.
        let conn = tokio::time::timeout(
            self.timeout * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        .map_err(|_| timed_out())??;
        // Two callers connecting at once each open one; the last kept serves the rest.
        *self.slot() = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `cmd`, forgetting the connection if the error may have broken it.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        let mut conn = self.get().await?;
        let result = cmd.query_async(&mut conn).await;
        self.check(result)
    }

    /// Runs `pipe` (one round trip), forgetting the connection as [`query`](Self::query).
    pub(crate) async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = self.get().await?;
        let result = pipe.query_async(&mut conn).await;
        self.check(result)
    }

    /// Runs a script (`EVALSHA`, loading it on `NOSCRIPT`), forgetting the connection as
    /// [`query`](Self::query).
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut conn = self.get().await?;
        let result = invocation.invoke_async(&mut conn).await;
        self.check(result)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error())
        {
            // A late answer to a timed-out command could otherwise be read as the next
            // one's; a fresh connection costs one connect.
            *self.slot() = None;
        }
        result
    }
}

/// The error of a connect that outlived its deadline.
fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connecting to Redis timed out",
    ))
}
