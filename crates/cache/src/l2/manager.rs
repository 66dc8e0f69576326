//! The bb8 connection manager for L2: no PING on checkout, broken connections dropped.
//!
//! bb8-redis's own manager PINGs on every checkout (a second round trip per L2 hit) and
//! never reports a connection broken. This one skips the PING and relies instead on the
//! engine flagging a connection after an unrecoverable error, so a dead connection leaves
//! the pool instead of failing every caller that draws it.
//!
//! Each new connection asks Redis its version first (`INFO server`): Tiercache's miss is
//! `SET key marker NX GET`, which Redis understands from 7.0 on, so an older server's
//! connection is refused with an error that says so, and L2 stays out of use (reads go on
//! to the database) instead of failing every miss with a syntax error.
//!
//! A checkout is held only long enough to clone the multiplexed connection (see `L2::run`),
//! and the flag is shared with those clones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Cleared by each connection opened, so a failure on record is one not yet overcome.
    errors: ConnectErrors,
}

impl Manager {
    /// A manager for `client`; both timeouts bound the raw connection under our own.
    /// `errors` is the pool's error sink, cleared whenever a connection opens.
    pub fn new(
        client: redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
        errors: ConnectErrors,
    ) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Manager {
            client,
            config,
            errors,
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let mut inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        // A server that hides INFO (renamed in its configuration) is taken on trust.
        if let Ok(info) = redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut inner)
            .await
        {
            check_version(&info)?;
        }
        self.errors.clear();
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

/// The last connection the pool failed to open, when, and why, until one opens. bb8 hands
/// such errors to a sink, not to the caller waiting for a connection (who times out):
/// [`L2`](super::L2) reads it from here to report the cause instead of a bare timeout.
#[derive(Clone, Debug, Default)]
pub struct ConnectErrors(Arc<Mutex<Option<(Instant, redis::RedisError)>>>);

impl ConnectErrors {
    /// The last failure, if no connection has opened since; with `since`, only one
    /// reported at or after it.
    pub fn last(&self, since: Option<Instant>) -> Option<redis::RedisError> {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some((at, error)) if since.is_none_or(|since| *at >= since) => Some(error.clone()),
            _ => None,
        }
    }

    /// Forgets the last failure: a connection opened.
    fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl bb8::ErrorSink<redis::RedisError> for ConnectErrors {
    fn sink(&self, error: redis::RedisError) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), error));
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<redis::RedisError>> {
        Box::new(self.clone())
    }
}

/// The oldest Redis (major, minor) whose `SET` takes `NX` and `GET` together.
const MIN_REDIS_VERSION: (u32, u32) = (7, 0);

/// Refuses a server older than [`MIN_REDIS_VERSION`], given its `INFO server` text; one
/// that does not say its version is taken on trust.
fn check_version(info: &str) -> Result<(), redis::RedisError> {
    let Some(version) = super::info::info_field(info, "redis_version") else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    if (major, minor) >= MIN_REDIS_VERSION {
        return Ok(());
    }
    let (min_major, min_minor) = MIN_REDIS_VERSION;
    tracing::error!(
        version,
        "Redis is older than {min_major}.{min_minor}: L2 stays unused, reads go to the database"
    );
    Err(redis::RedisError::from((
        redis::ErrorKind::Client,
        "Redis is too old for Tiercache",
        format!(
            "the server is Redis {version}; Tiercache needs {min_major}.{min_minor} or \
             later (SET with NX and GET together)"
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_7_0_are_refused_with_their_version_named() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        for ok in ["7.0.0", "7.0.15", "7.2.4", "8.0.2", "10.1.0"] {
            assert!(check_version(&info(ok)).is_ok(), "{ok} refused");
        }
        for old in ["6.2.14", "6.0.0", "5.0.7"] {
            let error = check_version(&info(old)).expect_err(old);
            assert_eq!(error.kind(), redis::ErrorKind::Client);
            let text = error.to_string();
            assert!(
                text.contains(old) && text.contains("7.0 or later"),
                "{text}"
            );
        }
        // A server that does not say, or says something unparsable, is taken on trust.
        assert!(check_version("# Server\r\nos:Linux\r\n").is_ok());
        assert!(check_version(&info("unstable")).is_ok());
    }
}
