//! Write-through: after a write's invalidation the written row is cached in the writer's L1,
//! unless another invalidation of the row (local, from the bus, or a flush) came between the
//! ticket taken before the write and the install.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use tiercache::{CacheKey, InvalidationSource, TwoTierCache};
use tiercache_tests::cache::{TestLead, build, config, frozen_redis_config};
use tiercache_tests::{RedisServer, SHARED_REDIS_URL, shared_redis, unique_namespace};

const PHONE: &str = "+16462000007";
const ORG: i64 = 9;
const LEAD: i64 = 7;

/// Reads `key` with a loader that counts its calls and returns `fresh`.
async fn read(
    cache: &TwoTierCache,
    key: CacheKey,
    fresh: TestLead,
    loads: &Arc<AtomicU32>,
) -> TestLead {
    let loads = Arc::clone(loads);
    let value = cache
        .get_or_load(key, move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, io::Error>(Some(fresh))
        })
        .await
        .unwrap()
        .unwrap();
    (*value).clone()
}

/// The lead's id and phone keys.
fn lead_keys(cache: &TwoTierCache) -> [CacheKey; 2] {
    let keys = tiercache_repository::keys(cache);
    [keys.lead_by_id(LEAD), keys.lead_by_phone(PHONE, ORG)]
}

/// Caches version 1 of the lead under both keys, then writes version 2 through: takes the
/// ticket, runs `between`, then invalidates and caches version 2.
async fn write_through<F: AsyncFnOnce()>(cache: &TwoTierCache, between: F) {
    let loads = Arc::new(AtomicU32::new(0));
    for key in lead_keys(cache) {
        read(cache, key, TestLead::new(LEAD, 1), &loads).await;
    }
    let ticket = cache.write_ticket(&tiercache_repository::keys(cache).lead_by_id(LEAD));
    between().await;
    cache
        .invalidate_and_cache(
            tiercache_repository::keys(cache).lead_changed(LEAD, ORG, PHONE),
            InvalidationSource::Write,
            ticket,
            TestLead::new(LEAD, 2),
            &lead_keys(cache),
        )
        .await;
    cache.flush_l2_writes().await;
    assert_eq!(cache.owed_invalidations(), 0, "Redis took the invalidation");
}

/// What each of the lead's keys reads after the write (the loader has version 3), and the
/// loads that took.
async fn after(cache: &TwoTierCache) -> (Vec<u32>, u32) {
    let loads = Arc::new(AtomicU32::new(0));
    let mut versions = Vec::new();
    for key in lead_keys(cache) {
        versions.push(
            read(cache, key, TestLead::new(LEAD, 3), &loads)
                .await
                .version,
        );
    }
    (versions, loads.load(Ordering::SeqCst))
}

async fn the_written_row_is_read_here_without_a_load(redis_url: Option<&str>) {
    let ns = unique_namespace("wt-hit");
    let (cache, _) = build(config(&ns, redis_url));
    write_through(&cache, async || {}).await;
    assert_eq!(after(&cache).await, (vec![2, 2], 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_row_is_read_here_without_a_load_l1_only() {
    the_written_row_is_read_here_without_a_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_row_is_read_here_without_a_load_with_redis() {
    the_written_row_is_read_here_without_a_load(Some(SHARED_REDIS_URL)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_row_stays_out_of_redis_and_other_instances_load_it() {
    let ns = unique_namespace("wt-l2");
    let (a, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let (b, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    write_through(&a, async || {}).await;
    a.flush_l2_writes().await;
    let mut redis = shared_redis().await;
    for key in lead_keys(&a) {
        let held: Option<Vec<u8>> = redis.get(a.keys().render(&key)).await.unwrap();
        assert_eq!(held, None, "the invalidation's delete stands in Redis");
    }
    // B's L1 never held the lead and Redis does not: B loads each key (here, version 3).
    assert_eq!(after(&b).await, (vec![3, 3], 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_invalidation_of_the_row_after_the_ticket_keeps_it_out() {
    let ns = unique_namespace("wt-race");
    let (cache, rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    // Another write of the same lead commits after this one's ticket and invalidates
    // first: this write's row may be the older one, so it is not cached.
    write_through(&cache, async || {
        cache
            .invalidate(
                tiercache_repository::keys(&cache).lead_changed(LEAD, ORG, PHONE),
                InvalidationSource::Write,
            )
            .await;
    })
    .await;
    assert_eq!(rec.count("invalidated.lead.write"), 2);
    assert_eq!(after(&cache).await, (vec![3, 3], 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_heard_on_the_bus_after_the_ticket_keeps_the_row_out() {
    let ns = unique_namespace("wt-bus");
    let (a, rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let (b, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    tiercache_tests::bus_subscribers(&mut shared_redis().await, &ns, 2).await;
    write_through(&a, async || {
        b.invalidate(
            tiercache_repository::keys(&b).lead_changed(LEAD, ORG, PHONE),
            InvalidationSource::Write,
        )
        .await;
        assert!(
            rec.wait_count("invalidated.lead.bus", 1, Duration::from_secs(5))
                .await,
            "A heard B's invalidation"
        );
    })
    .await;
    assert_eq!(after(&a).await, (vec![3, 3], 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_after_the_ticket_keeps_the_row_out() {
    let ns = unique_namespace("wt-flush");
    let (cache, _) = build(config(&ns, None));
    write_through(&cache, async || cache.flush_l1()).await;
    assert_eq!(after(&cache).await, (vec![3, 3], 2));
}

/// The writer waits for its L1 only: with Redis frozen (and a command timeout far past the
/// test's bounds), the write returns and the row is read back without a load; a derived
/// view the invalidation named, read meanwhile, comes from the loader, not from Redis,
/// which held the old one; once Redis answers again the deletes land there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_returns_before_redis_answers_and_this_instance_serves_only_the_new_row() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("wt-early");
    let (cache, _) = build(frozen_redis_config(&ns, &server.url()));
    let bound = Duration::from_secs(10);
    let loads = Arc::new(AtomicU32::new(0));
    for key in lead_keys(&cache) {
        read(&cache, key, TestLead::new(LEAD, 1), &loads).await;
    }
    let context = tiercache_repository::keys(&cache).context(LEAD);
    read(&cache, context, TestLead::new(LEAD, 1), &loads).await;
    cache.flush_l2_writes().await;
    let mut redis = server.client().await;
    let held: Option<Vec<u8>> = redis.get(cache.keys().render(&context)).await.unwrap();
    assert!(held.is_some(), "Redis holds the old context");

    server.pause();
    let ticket = cache.write_ticket(&tiercache_repository::keys(&cache).lead_by_id(LEAD));
    tokio::time::timeout(
        bound,
        cache.invalidate_and_cache(
            tiercache_repository::keys(&cache).lead_changed(LEAD, ORG, PHONE),
            InvalidationSource::Write,
            ticket,
            TestLead::new(LEAD, 2),
            &lead_keys(&cache),
        ),
    )
    .await
    .expect("the write returns without waiting for Redis");
    let (versions, loaded) = tokio::time::timeout(bound, after(&cache))
        .await
        .expect("reading the written row needs no Redis");
    assert_eq!((versions, loaded), (vec![2, 2], 0));
    // The view's read needs Redis (its lease), so it waits for the thaw.
    let fresh = Arc::new(AtomicU32::new(0));
    let reading = {
        let (cache, fresh) = (cache.clone(), Arc::clone(&fresh));
        tokio::spawn(async move { read(&cache, context, TestLead::new(LEAD, 3), &fresh).await })
    };

    server.resume();
    let view = tokio::time::timeout(bound, reading)
        .await
        .expect("the view's read ends once Redis is back")
        .unwrap();
    assert_eq!((view.version, fresh.load(Ordering::SeqCst)), (3, 1));
    tokio::time::timeout(bound, cache.flush_l2_writes())
        .await
        .expect("the invalidation is answered once Redis is back");
    assert_eq!(cache.owed_invalidations(), 0, "Redis took the invalidation");
    for key in lead_keys(&cache) {
        let held: Option<Vec<u8>> = redis.get(cache.keys().render(&key)).await.unwrap();
        assert_eq!(held, None, "the delete landed in Redis");
    }
}
