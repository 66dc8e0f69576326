//! Telling a caller that a stale value was served: [`track`] runs a future and reports the
//! oldest stale value any read inside it was answered with.
//!
//! A read serves a stale value (one past its freshness, within its entity's grace window)
//! when the loader fails or is slower than the soft timeout; the read still succeeds, so
//! this is how a response can say so (a header, a field). Reads outside any `track` are
//! counted through the observer all the same.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static SERVED: Cell<Option<Duration>>;
}

/// Runs `future`; returns its output and, if a read inside it served a stale value, the
/// age of the oldest one.
pub async fn track<F: Future>(future: F) -> (F::Output, Option<Duration>) {
    SERVED
        .scope(Cell::new(None), async move {
            let output = future.await;
            (output, SERVED.with(Cell::get))
        })
        .await
}

/// Records that a value of `age` was served stale (no-op outside [`track`]).
pub(crate) fn record(age: Duration) {
    let _ = SERVED.try_with(|served| {
        served.set(Some(served.get().map_or(age, |a| a.max(age))));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_stale_age_inside_a_scope_is_reported() {
        let ((), none) = track(async {}).await;
        assert_eq!(none, None);
        let ((), age) = track(async {
            record(Duration::from_secs(3));
            record(Duration::from_secs(7));
            record(Duration::from_secs(5));
        })
        .await;
        assert_eq!(age, Some(Duration::from_secs(7)));
        record(Duration::from_secs(1)); // outside: nothing to record into, no panic
    }
}
