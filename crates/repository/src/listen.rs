//! `LISTEN` on a connection of its own, as the change listener and the call feed both do:
//! connecting within a bound, receiving until a deadline, proving a quiet connection live,
//! and backing off between failed attempts.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use tokio::time::Instant;

/// How long a quiet connection goes unchecked when nothing else says how often to check.
pub const IDLE_CHECK: Duration = Duration::from_secs(10);

/// Bound on one connection attempt (connect and `LISTEN`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the `SELECT 1` that proves a connection live.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before connecting again after a failed attempt; doubles up to the cap.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A listener on `channel` over a fresh connection of its own (a pool of one, which
/// `PgListener` needs), never one of the service's.
pub async fn connect(options: &PgConnectOptions, channel: &str) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.clone());
    let attempt = async {
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection ends `try_recv` with `Ok(None)` at once; the caller reconnects.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen(channel).await?;
        Ok(listener)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// The next notification if one comes before `deadline` (`Ok(None)` if none did); an error
/// once the connection is lost. Cancel-safe: sqlx consumes a message only once it has all
/// of it.
pub async fn recv_until(
    listener: &mut PgListener,
    deadline: Instant,
) -> Result<Option<PgNotification>, sqlx::Error> {
    match tokio::time::timeout_at(deadline, listener.try_recv()).await {
        Ok(Ok(Some(notification))) => Ok(Some(notification)),
        Ok(Ok(None)) => Err(sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
        Ok(Err(e)) => Err(e),
        Err(_due) => Ok(None),
    }
}

/// A `SELECT 1` on the listener's connection: a connection that died without a word (a
/// half-open TCP connection) would otherwise look like a quiet database forever. What
/// arrived before its answer is then in [`PgListener::next_buffered`].
pub async fn check(listener: &mut PgListener) -> Result<(), sqlx::Error> {
    let check = sqlx::query("SELECT 1").execute(&mut *listener);
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// The wait between failed connection attempts: 50 ms, doubling up to 2 s.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(BACKOFF_MIN)
    }
}

impl Backoff {
    /// The wait before the next attempt; the one after will be twice as long, up to the cap.
    pub fn wait(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        wait
    }

    /// Back to the shortest wait (an attempt succeeded).
    pub fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}
