//! Stale values: served within their grace window when the loader fails (stale-on-error)
//! or is slower than the soft timeout (then refreshed in the background); past the grace
//! window the loader's error stands; a hard timeout bounds every read that misses.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tiercache::{EntityPolicy, Error, TwoTierCache};
use tiercache_repository::schema;
use tiercache_tests::Recorder;
use tiercache_tests::cache::{TestLead, build, config};
use tiercache_tests::unique_namespace;

const FRESH: Duration = Duration::from_millis(150);

/// L1 only, leads fresh for [`FRESH`], then kept for `grace`.
fn cache(grace: Duration) -> (TwoTierCache, Arc<Recorder>) {
    build(
        config(&unique_namespace("stale"), None)
            .policy(
                schema().lead,
                EntityPolicy {
                    l1_ttl: FRESH,
                    negative_ttl: FRESH,
                    jitter: 0.0,
                    grace,
                    ..*schema().schema.policy(schema().lead).unwrap()
                },
            )
            .soft_timeout(Duration::from_millis(40))
            .load_timeout(Duration::from_millis(800)),
    )
}

async fn load(cache: &TwoTierCache, version: u32) -> Result<Option<Arc<TestLead>>, Error> {
    cache
        .get_or_load(
            tiercache_repository::keys(cache).lead_by_id(1),
            move || async move { Ok::<_, io::Error>(Some(TestLead::new(1, version))) },
        )
        .await
}

async fn fail(cache: &TwoTierCache) -> Result<Option<Arc<TestLead>>, Error> {
    cache
        .get_or_load(tiercache_repository::keys(cache).lead_by_id(1), || async {
            Err::<Option<TestLead>, _>(io::Error::other("database down"))
        })
        .await
}

/// Lets the value's freshness run out (the TTL is what is being tested).
async fn past_freshness() {
    tokio::time::sleep(FRESH + Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_loader_is_answered_with_the_stale_value_within_grace() {
    let (cache, rec) = cache(Duration::from_secs(60));
    load(&cache, 1).await.unwrap();
    past_freshness().await;

    let (served, stale_age) = tiercache::stale::track(fail(&cache)).await;
    assert_eq!(served.unwrap().unwrap().version, 1, "the stale value");
    assert!(stale_age.is_some_and(|age| age >= FRESH), "{stale_age:?}");
    assert_eq!(rec.count("stale.lead.load_failed"), 1);
    assert_eq!(rec.count("load.lead.error"), 1);

    // The source back: the next read loads the new value, not flagged stale.
    let (fresh, stale_age) = tiercache::stale::track(load(&cache, 2)).await;
    assert_eq!(fresh.unwrap().unwrap().version, 2);
    assert_eq!(stale_age, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_window_the_loaders_error_stands() {
    let (cache, rec) = cache(Duration::from_millis(100));
    load(&cache, 1).await.unwrap();
    tokio::time::sleep(FRESH + Duration::from_millis(200)).await;
    assert!(matches!(fail(&cache).await, Err(Error::Load { .. })));
    assert_eq!(rec.sum("stale."), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_is_answered_stale_at_the_soft_timeout_and_refreshes_in_the_background() {
    let (cache, rec) = cache(Duration::from_secs(60));
    load(&cache, 1).await.unwrap();
    past_freshness().await;

    let finished = Arc::new(tokio::sync::Notify::new());
    let done = finished.clone();
    let served = cache
        .get_or_load(
            tiercache_repository::keys(&cache).lead_by_id(1),
            move || async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                done.notify_one();
                Ok::<_, io::Error>(Some(TestLead::new(1, 2)))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served.version, 1, "stale, at the soft timeout");
    assert_eq!(rec.count("stale.lead.soft_timeout"), 1);

    // The load went on without the caller and refreshed the key.
    tokio::time::timeout(Duration::from_secs(5), finished.notified())
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let version = loop {
        let c = calls.clone();
        let v = cache
            .get_or_load(
                tiercache_repository::keys(&cache).lead_by_id(1),
                move || async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, io::Error>(Some(TestLead::new(1, 3)))
                },
            )
            .await
            .unwrap()
            .unwrap()
            .version;
        // The install follows the loader's return by microseconds; version 1 can only be
        // seen again in that gap.
        if v != 1 || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(version, 2, "the background refresh landed");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "and is fresh: no new load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_bounds_a_read_with_nothing_to_fall_back_on() {
    let (cache, rec) = cache(Duration::from_secs(60));
    let started = std::time::Instant::now();
    let read = cache
        .get_or_load(tiercache_repository::keys(&cache).lead_by_id(9), || async {
            std::future::pending::<()>().await;
            Ok::<Option<TestLead>, io::Error>(None)
        })
        .await;
    assert!(matches!(read, Err(Error::LoadTimeout { .. })), "{read:?}");
    // Generous: it must end, near the 800 ms bound rather than never.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rec.sum("stale."), 0);
}

/// PostgreSQL down and L1 not trusted (a feed silent, as the database listener is while
/// PostgreSQL is down): a value this instance never held but Redis does is too old to be
/// served as fresh, yet within its grace: when the loader fails, or is slower than the soft
/// timeout, it is served from Redis, flagged stale, as L1's would be. Past its grace, the
/// loader's error stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_in_redis_is_served_stale_when_the_loader_fails_and_l1_is_not_trusted() {
    const BOUND: Duration = Duration::from_millis(200);
    let ns = unique_namespace("l2stale");
    let url = Some(tiercache_tests::SHARED_REDIS_URL);
    let (writer, _) = build(config(&ns, url));
    load(&writer, 1).await.unwrap();
    writer.flush_l2_writes().await;
    let reader = |policy: EntityPolicy| {
        build(
            config(&ns, url)
                .staleness_bound(BOUND)
                .soft_timeout(Duration::from_millis(40))
                .policy(schema().lead, policy),
        )
    };
    let seed = EntityPolicy {
        jitter: 0.0,
        ..*schema().schema.policy(schema().lead).unwrap()
    };
    let (failing, failing_rec) = reader(seed);
    let (slow, slow_rec) = reader(seed);
    // Its policy gives a lead 100 ms in L2 and no grace: the value is past both.
    let short = Duration::from_millis(100);
    let (strict, strict_rec) = reader(EntityPolicy {
        l2_ttl: short,
        l1_ttl: short,
        negative_ttl: short,
        grace: Duration::ZERO,
        ..seed
    });
    // A feed that never confirms: once half the bound has passed, L1 is not trusted, and the
    // value in Redis is older than half the bound.
    let _silent = [&failing, &slow, &strict].map(|c| c.invalidation_feed().unwrap());
    tokio::time::sleep(BOUND).await;
    assert!(!failing.l1_trusted());

    let (served, stale_age) = tiercache::stale::track(fail(&failing)).await;
    assert_eq!(served.unwrap().unwrap().version, 1, "the value Redis holds");
    assert!(
        stale_age.is_some_and(|age| age >= BOUND / 2),
        "{stale_age:?}"
    );
    assert_eq!(failing_rec.count("stale.lead.load_failed"), 1);
    assert_eq!(
        failing_rec.count("lookup.lead.l2.miss"),
        1,
        "not a fresh hit"
    );
    // The next failing read is answered stale again.
    assert_eq!(fail(&failing).await.unwrap().unwrap().version, 1);
    assert_eq!(failing_rec.count("stale.lead.load_failed"), 2);

    let read = slow
        .get_or_load(tiercache_repository::keys(&slow).lead_by_id(1), || async {
            std::future::pending::<()>().await;
            Ok::<Option<TestLead>, io::Error>(None)
        })
        .await;
    assert_eq!(
        read.unwrap().unwrap().version,
        1,
        "stale at the soft timeout"
    );
    assert_eq!(slow_rec.count("stale.lead.soft_timeout"), 1);

    assert!(matches!(fail(&strict).await, Err(Error::Load { .. })));
    assert_eq!(strict_rec.sum("stale."), 0);
}
