//! [`DbPool`]: the PostgreSQL pool and what it knows of broken connections. A connection
//! that breaks (PostgreSQL restarted or crashed, the socket dropped) takes every connection
//! opened before it out of the pool at their next checkout, and a read that met it runs
//! once more on a new connection. Every checkout through it is timed for a
//! [`PoolObserver`], and [`DbPool::state`] says how full the pool is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::error::DbError;

/// A PostgreSQL pool that discards, at checkout and without a round trip, every connection
/// opened before the last one that broke.
///
/// The pool does not ping a connection before handing it out (a second round trip per
/// query). So when PostgreSQL restarts, every idle connection is dead and nothing says so
/// until a statement fails on it. The first such failure is noted here, and the pool's
/// checkout hook (`before_acquire`, which sees each connection's age) then closes every
/// connection older than that failure instead of handing it out: a restart costs one
/// failed statement, not one per pooled connection.
///
/// # When PostgreSQL fails
///
/// A read that meets a broken connection runs once more, on a connection opened after the
/// break (see [`read`](Self::read)); if that fails too, or no connection can be had within
/// the acquire timeout, the error is [`DbError::is_unavailable`]. A write is never run
/// twice: its connection may have broken after it committed.
#[derive(Clone, Debug)]
pub struct DbPool {
    pool: PgPool,
    breaks: Breaks,
    acquires: Arc<Acquires>,
}

/// What the pool reports; every method defaults to doing nothing. Called on the request
/// path: an implementation bumps a counter and never blocks.
pub trait PoolObserver: Send + Sync + 'static {
    /// A checkout through [`DbPool`] ended after `took`, with a connection or (`ok` false)
    /// without one (the acquire timeout passed, or PostgreSQL refused).
    fn acquired(&self, _took: Duration, _ok: bool) {}
}

struct NoopPoolObserver;

impl PoolObserver for NoopPoolObserver {}

/// How full the pool is at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open, idle or in use.
    pub size: u32,
    /// Of those, connections idle in the pool.
    pub idle: u32,
    /// The pool's bound (`max_connections`).
    pub max: u32,
    /// Callers waiting for a connection through [`DbPool`] right now (sqlx does not count
    /// its own waiters; the few reads that use the bare pool are not among them).
    pub waiting: u32,
}

/// The observer of checkouts and the number waiting for one.
struct Acquires {
    observer: Arc<dyn PoolObserver>,
    waiting: AtomicU32,
}

impl std::fmt::Debug for Acquires {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquires")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl Acquires {
    fn shared(observer: Arc<dyn PoolObserver>) -> Arc<Self> {
        Arc::new(Acquires {
            observer,
            waiting: AtomicU32::new(0),
        })
    }
}

/// Counts one caller as waiting while it lives, so a dropped checkout stops counting.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn start(waiting: &'a AtomicU32) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DbPool {
    /// Opens a pool with `options` on `connect`, its checkout hook installed.
    pub async fn connect(
        options: PgPoolOptions,
        connect: PgConnectOptions,
    ) -> Result<DbPool, sqlx::Error> {
        let breaks = Breaks::new();
        let pool = breaks.install(options).connect_with(connect).await?;
        Ok(DbPool {
            pool,
            breaks,
            acquires: Acquires::shared(Arc::new(NoopPoolObserver)),
        })
    }

    /// This pool reporting its checkouts to `observer` (clones made before keep theirs).
    pub fn observed(mut self, observer: Arc<dyn PoolObserver>) -> Self {
        self.acquires = Acquires::shared(observer);
        self
    }

    /// The sqlx pool. Checkouts made on it directly are neither timed nor counted as
    /// waiting: use [`acquire`](Self::acquire) on request paths.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How full the pool is now.
    pub fn state(&self) -> PoolState {
        PoolState {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
            waiting: self.acquires.waiting.load(Ordering::Relaxed),
        }
    }

    /// A pooled connection, its wait timed for the observer.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives up the place in the queue; the wait is then not reported.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let started = Instant::now();
        let conn = {
            let _waiting = Waiting::start(&self.acquires.waiting);
            self.pool.acquire().await
        };
        self.acquires
            .observer
            .acquired(started.elapsed(), conn.is_ok());
        conn
    }

    /// A transaction on a pooled connection, its checkout timed as [`acquire`](Self::acquire)'s.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the connection, which sqlx rolls back or closes.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let conn = self.acquire().await?;
        // What `PgPool::begin` does after its own checkout (public, though hidden from docs).
        Transaction::begin(conn, None).await
    }

    /// Runs the read `query` on a pooled connection. If that connection broke, the break is
    /// noted (so the pool discards every connection opened before it) and `query` runs once
    /// more on another connection, which the pool then opens afresh. Only for statements
    /// that are safe to run twice: reads.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the connection in use, which sqlx then checks and returns
    /// to the pool or closes.
    pub async fn read<T, F, Fut>(&self, query: F) -> Result<T, DbError>
    where
        F: Fn(PoolConnection<Postgres>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut retried = false;
        loop {
            // No connection at all (PostgreSQL down, the pool exhausted): another try would
            // only wait out another acquire timeout.
            let conn = self.acquire().await.map_err(DbError::from)?;
            let error = match query(conn).await {
                Ok(value) => return Ok(value),
                Err(e) => self.checked(e),
            };
            if !error.is_broken_connection() || retried {
                return Err(error);
            }
            retried = true;
        }
    }

    /// Classifies a failure of a statement on this pool, noting a broken connection.
    pub fn checked(&self, e: sqlx::Error) -> DbError {
        let error = DbError::from(e);
        if error.is_broken_connection() {
            self.breaks.note();
        }
        error
    }
}

/// A pool built elsewhere, without the checkout hook: reads are still run again after a
/// broken connection, but the other dead connections leave only as each fails a statement.
impl From<PgPool> for DbPool {
    fn from(pool: PgPool) -> Self {
        DbPool {
            pool,
            breaks: Breaks::new(),
            acquires: Acquires::shared(Arc::new(NoopPoolObserver)),
        }
    }
}

/// When a connection of the pool last broke.
#[derive(Clone, Debug)]
struct Breaks(Arc<BreaksInner>);

#[derive(Debug)]
struct BreaksInner {
    /// What `last` counts from.
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last break, plus one; 0 while none was noted.
    last: AtomicU64,
}

/// What the checkout hook returns, as `PoolOptions::before_acquire` takes it.
type Checkout<'c> = Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + 'c>>;

impl Breaks {
    fn new() -> Self {
        Breaks(Arc::new(BreaksInner {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }))
    }

    /// `options` with a checkout hook that keeps only connections opened after the last
    /// break; it answers from the connection's age, without a round trip.
    fn install(&self, options: PgPoolOptions) -> PgPoolOptions {
        let breaks = self.clone();
        options.before_acquire(move |conn, meta| breaks.checkout(conn, meta))
    }

    /// The checkout hook: keeps the connection if it was opened after the last break.
    fn checkout<'c>(&self, _: &'c mut PgConnection, meta: PoolConnectionMetadata) -> Checkout<'c> {
        let keep = self.opened_since_last(meta.age, Instant::now());
        Box::pin(std::future::ready(Ok(keep)))
    }

    /// Notes that a connection broke now.
    fn note(&self) {
        self.note_at(Instant::now());
    }

    fn note_at(&self, at: Instant) {
        let since = at.saturating_duration_since(self.0.epoch);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1);
        // Later breaks only move it forward (two notes may race).
        self.0.last.fetch_max(nanos + 1, Ordering::AcqRel);
    }

    /// Whether a connection `age` old at `now` was opened after the last break.
    fn opened_since_last(&self, age: Duration, now: Instant) -> bool {
        let last = self.0.last.load(Ordering::Acquire);
        if last == 0 {
            return true;
        }
        let broke_at = self.0.epoch + Duration::from_nanos(last - 1);
        now.checked_sub(age).is_some_and(|opened| opened > broke_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_is_counted_until_its_checkout_ends_or_is_dropped() {
        let waiting = AtomicU32::new(0);
        let first = Waiting::start(&waiting);
        let second = Waiting::start(&waiting);
        assert_eq!(waiting.load(Ordering::Relaxed), 2);
        drop(first);
        drop(second);
        assert_eq!(waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_connection_is_kept_until_one_breaks() {
        let breaks = Breaks::new();
        let now = Instant::now() + Duration::from_secs(60);
        assert!(breaks.opened_since_last(Duration::from_secs(30), now));
        assert!(breaks.opened_since_last(Duration::ZERO, now));
    }

    #[test]
    fn connections_opened_before_a_break_are_discarded_and_later_ones_kept() {
        let breaks = Breaks::new();
        let broke = Instant::now() + Duration::from_secs(10);
        breaks.note_at(broke);
        let now = broke + Duration::from_secs(5);
        // Opened 1 s before the break.
        assert!(!breaks.opened_since_last(Duration::from_secs(6), now));
        // Opened 1 s after it.
        assert!(breaks.opened_since_last(Duration::from_secs(4), now));
    }

    #[test]
    fn an_earlier_note_arriving_late_does_not_move_the_break_back() {
        let breaks = Breaks::new();
        let start = Instant::now();
        breaks.note_at(start + Duration::from_secs(10));
        breaks.note_at(start + Duration::from_secs(2));
        let now = start + Duration::from_secs(20);
        // Opened at 5 s: before the later break, so still discarded.
        assert!(!breaks.opened_since_last(Duration::from_secs(15), now));
    }
}
