//! The bb8 connection manager for L2: no PING on checkout, broken connections dropped.
//!
//! bb8-redis's own manager PINGs on every checkout (a second round trip per L2 hit) and
//! never reports a connection broken. This one skips the PING and relies instead on the
//! engine flagging a connection after an unrecoverable error, so a dead connection leaves
//! the pool instead of failing every caller that draws it.
//!
//! A checkout is held only long enough to clone the multiplexed connection (see `L2::run`),
//! so concurrent commands share a connection and go out together, and the flag is shared
//! with those clones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::bb8;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// A pooled Redis connection and whether it has failed in a way it cannot recover from.
pub struct Connection {
    /// The connection itself.
    pub inner: MultiplexedConnection,
    /// Set after an unrecoverable error (by any user of a clone); the pool then discards
    /// the connection.
    pub broken: Arc<AtomicBool>,
}

/// Opens L2 connections with bounded connect and response times.
#[derive(Clone, Debug)]
pub struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl Manager {
    /// A manager for `client`; both timeouts bound the raw connection under our own.
    pub fn new(
        client: redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Manager { client, config }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Connection {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        // Only called if test_on_check_out is on, which the pool turns off.
        redis::cmd("PING").query_async(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}
