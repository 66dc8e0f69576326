//! Invalidation: every derived key goes from both tiers, and a load that began before an
//! invalidation never installs its stale value after it (the set-after-delete race).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tiercache::{Invalidation, InvalidationSource, TwoTierCache};
use tiercache_repository::Channel;
use tiercache_tests::cache::{TestLead, build, config, frozen_redis_config};
use tiercache_tests::{RedisServer, SHARED_REDIS_URL, shared_redis, unique_namespace};
use tokio::sync::{Notify, oneshot};

async fn put(cache: &TwoTierCache, key: tiercache::CacheKey, value: TestLead) {
    cache
        .get_or_load(key, || async { Ok::<_, io::Error>(Some(value)) })
        .await
        .unwrap();
}

/// Reads `key`; a loader call means the value was not cached. Returns (value, loaded).
async fn probe(
    cache: &TwoTierCache,
    key: tiercache::CacheKey,
    fresh: TestLead,
) -> (TestLead, bool) {
    let loaded = Arc::new(Mutex::new(false));
    let flag = loaded.clone();
    let v = cache
        .get_or_load(key, || async move {
            *flag.lock().unwrap() = true;
            Ok::<_, io::Error>(Some(fresh))
        })
        .await
        .unwrap()
        .unwrap();
    let was_loaded = *loaded.lock().unwrap();
    ((*v).clone(), was_loaded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_write_drops_every_derived_key_from_both_tiers() {
    let ns = unique_namespace("derived");
    let (a, rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let (b, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let keys = tiercache_repository::keys(&a);
    let phone = "+16462000005";
    let derived = |id: i64| {
        let mut list = vec![
            keys.lead_by_id(id),
            keys.lead_by_phone(phone, 9),
            keys.context(id),
            keys.summary(id),
            keys.history(id, 20, 0),
            keys.history(id, 20, 20),
        ];
        list.extend(Channel::ALL.map(|c| keys.greeting(id, c)));
        list
    };
    // Instance A caches lead 5's keys; instance B caches another history page of it, which
    // A's L1 never saw, and an unrelated lead.
    for key in derived(5) {
        put(&a, key, TestLead::new(5, 1)).await;
    }
    put(&b, keys.history(5, 50, 100), TestLead::new(5, 1)).await;
    put(&a, keys.context(6), TestLead::new(6, 1)).await;

    let report = a
        .invalidate(keys.lead_changed(5, 9, phone), InvalidationSource::Write)
        .await;
    assert_eq!(report.l2_failure, None);
    assert_eq!(rec.count("invalidated.lead.write"), 1);

    let mut redis = shared_redis().await;
    let history_index: bool = redis
        .exists(format!("{ns}:test:v1:tag:lead:{{5}}"))
        .await
        .unwrap();
    assert!(!history_index, "the history index is gone too");
    for key in derived(5).into_iter().chain([keys.history(5, 50, 100)]) {
        let rendered = keys.render(&key);
        let exists: bool = redis.exists(&rendered).await.unwrap();
        assert!(!exists, "{rendered} still in Redis");
        let (v, loaded) = probe(&a, key, TestLead::new(5, 2)).await;
        assert!(loaded && v.version == 2, "{key:?} still in L1");
    }
    let (v, loaded) = probe(&a, keys.context(6), TestLead::new(6, 2)).await;
    assert!(
        !loaded && v.version == 1,
        "an unrelated lead keeps its cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_drops_the_conversation_views_but_not_the_lead() {
    let ns = unique_namespace("activity");
    let (cache, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let keys = tiercache_repository::keys(&cache);
    for key in [
        keys.lead_by_id(8),
        keys.context(8),
        keys.summary(8),
        keys.greeting(8, Channel::Voice),
        keys.history(8, 10, 0),
    ] {
        put(&cache, key, TestLead::new(8, 1)).await;
    }
    cache
        .invalidate(
            keys.lead_activity(8, "+16462000008"),
            InvalidationSource::Write,
        )
        .await;
    for key in [
        keys.context(8),
        keys.summary(8),
        keys.greeting(8, Channel::Voice),
        keys.history(8, 10, 0),
    ] {
        assert!(
            probe(&cache, key, TestLead::new(8, 2)).await.1,
            "{key:?} survived"
        );
    }
    assert!(
        !probe(&cache, keys.lead_by_id(8), TestLead::new(8, 2))
            .await
            .1
    );
}

/// A write with no row to cache waits for this instance's L1 only: with Redis frozen (and a
/// command timeout far past the test's bounds), `invalidate_after_write` returns and L1
/// serves none of the views; a view read meanwhile waits for Redis (its lease) and comes
/// from the loader; once Redis answers again the deletes land there, and nothing is owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_row_returns_before_redis_answers() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("activity-early");
    let (cache, _) = build(frozen_redis_config(&ns, &server.url()));
    let bound = Duration::from_secs(10);
    let keys = tiercache_repository::keys(&cache);
    let (context, greeting) = (keys.context(8), keys.greeting(8, Channel::Voice));
    for key in [context, greeting] {
        put(&cache, key, TestLead::new(8, 1)).await;
    }
    cache.flush_l2_writes().await;
    let mut redis = server.client().await;
    for key in [context, greeting] {
        let held: Option<Vec<u8>> = redis.get(keys.render(&key)).await.unwrap();
        assert!(held.is_some(), "Redis holds the old {key:?}");
    }

    server.pause();
    tokio::time::timeout(
        bound,
        cache.invalidate_after_write(
            keys.lead_activity(8, "+16462000008"),
            InvalidationSource::Write,
        ),
    )
    .await
    .expect("the write returns without waiting for Redis");
    let reading = {
        let cache = cache.clone();
        tokio::spawn(async move { probe(&cache, context, TestLead::new(8, 2)).await })
    };

    server.resume();
    let (view, loaded) = tokio::time::timeout(bound, reading)
        .await
        .expect("the view's read ends once Redis is back")
        .unwrap();
    assert_eq!((view.version, loaded), (2, true), "the old view was served");
    tokio::time::timeout(bound, cache.flush_l2_writes())
        .await
        .expect("the invalidation is answered once Redis is back");
    assert_eq!(cache.owed_invalidations(), 0, "Redis took the invalidation");
    let held: Option<Vec<u8>> = redis.get(keys.render(&greeting)).await.unwrap();
    assert_eq!(held, None, "the delete landed in Redis");
}

/// The race, interleaved by hand on one thread: a load reads the old row and stalls; the
/// row changes and the invalidation starts; then the load finishes.
async fn set_after_delete(redis_url: Option<&str>) {
    let ns = unique_namespace("race");
    let (cache, _) = build(config(&ns, redis_url));
    let key = tiercache_repository::keys(&cache).lead_by_id(1);
    let db = Arc::new(Mutex::new(TestLead::new(1, 1)));
    let release = Arc::new(Notify::new());
    let (started_tx, started_rx) = oneshot::channel();

    let slow_read = {
        let (cache, db, release) = (cache.clone(), db.clone(), release.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(key, || async move {
                    let row = db.lock().unwrap().clone();
                    let _ = started_tx.send(());
                    release.notified().await;
                    Ok::<_, io::Error>(Some(row))
                })
                .await
                .unwrap()
        })
    };
    started_rx.await.unwrap();

    // The write commits, then invalidates while the old row is still in flight.
    *db.lock().unwrap() = TestLead::new(1, 2);
    let invalidation = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .invalidate(Invalidation::key(key), InvalidationSource::Write)
                .await
        })
    };
    // Let every task run as far as it can; none does network I/O before the key lock.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !invalidation.is_finished(),
        "the invalidation waits for the load in flight"
    );

    release.notify_one();
    let old = slow_read.await.unwrap().unwrap();
    assert_eq!(
        old.version, 1,
        "the read that began before the write may see the old row"
    );
    invalidation.await.unwrap();

    let fresh = db.lock().unwrap().clone();
    let (after, loaded) = probe(&cache, key, fresh).await;
    assert_eq!(after.version, 2, "no stale value survived the invalidation");
    assert!(loaded);
    if redis_url.is_some() {
        cache.flush_l2_writes().await;
        let mut redis = shared_redis().await;
        let stored: Vec<u8> = redis.get(cache.keys().render(&key)).await.unwrap();
        let stored = tiercache::envelope::decode::<TestLead>(&stored).unwrap();
        assert_eq!(stored.value.unwrap().version, 2, "L2 holds the new row");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_load_cannot_install_after_an_invalidation_l1_only() {
    set_after_delete(None).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_load_cannot_install_after_an_invalidation_with_redis() {
    set_after_delete(Some(SHARED_REDIS_URL)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_key_that_is_not_cached_is_harmless() {
    let ns = unique_namespace("absent");
    let (cache, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let keys = tiercache_repository::keys(&cache);
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        cache.invalidate(
            keys.lead_changed(404, 1, "+16460000000"),
            InvalidationSource::Admin,
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.keys, 7);
    assert_eq!(report.l2_failure, None);
}

/// A history page whose lease command failed (here: its lead's index in Redis is foreign
/// data, so the `SADD` fails) is cached only in this instance's L1 and local index. Another
/// instance's invalidation of the lead must still reach it: the bus message names the lead's
/// history, and each instance drops the pages it indexed itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cached_while_its_index_write_failed_is_dropped_by_another_instances_write() {
    let (ns, a, b, b_rec) = two_on_the_bus("pageidx").await;
    let mut redis = shared_redis().await;
    let keys = tiercache_repository::keys(&a);
    let index = format!("{ns}:test:v1:tag:lead:{{5}}");
    let () = redis.set(&index, "not a set").await.unwrap();
    let page = keys.history(5, 20, 0);
    let (v, loaded) = probe(&b, page, TestLead::new(5, 1)).await;
    assert!(loaded && v.version == 1);
    let (_, loaded) = probe(&b, page, TestLead::new(5, 9)).await;
    assert!(!loaded, "b serves the page from its L1");
    let () = redis.del(&index).await.unwrap();

    a.invalidate(
        keys.lead_activity(5, "+16462000005"),
        InvalidationSource::Write,
    )
    .await;
    heard_context(&b_rec).await;
    let (v, loaded) = probe(&b, page, TestLead::new(5, 2)).await;
    assert!(loaded && v.version == 2, "b dropped its page");
}

/// An invalidation heard on the bus is counted under the entity that changed (a lead), not
/// under whichever of its keys happens to come first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_invalidation_is_counted_under_the_entity_that_changed() {
    let (_, a, _b, b_rec) = two_on_the_bus("busentity").await;
    let keys = tiercache_repository::keys(&a);
    a.invalidate(
        keys.lead_changed(5, 9, "+16462000005"),
        InvalidationSource::Write,
    )
    .await;
    a.invalidate(
        keys.lead_activity(6, "+16462000006"),
        InvalidationSource::Write,
    )
    .await;
    heard_context(&b_rec).await;
    assert_eq!(b_rec.count("invalidated.lead.bus"), 1, "the lead's write");
    assert_eq!(b_rec.count("invalidated.context.bus"), 1, "the new message");
}

/// Two instances on one namespace of the shared Redis, both subscribed to its bus; the
/// second's recorder.
async fn two_on_the_bus(
    tag: &str,
) -> (
    String,
    TwoTierCache,
    TwoTierCache,
    Arc<tiercache_tests::Recorder>,
) {
    let ns = unique_namespace(tag);
    let (a, _) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let (b, b_rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    tiercache_tests::bus_subscribers(&mut shared_redis().await, &ns, 2).await;
    (ns, a, b, b_rec)
}

/// Waits (up to 5 s) until `recorder`'s instance heard a conversation's invalidation.
async fn heard_context(recorder: &tiercache_tests::Recorder) {
    assert!(
        recorder
            .wait_count("invalidated.context.bus", 1, Duration::from_secs(5))
            .await,
        "the other instance's write was heard"
    );
}

/// Invalidating everything sweeps what the cache wrote under its namespace (values, tag
/// indexes, epochs) and nothing else there: the bus stream, and keys the service's other
/// parts keep under the same namespace (the call log's streams), stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_everything_sweeps_the_caches_keys_and_no_others() {
    let ns = unique_namespace("sweep");
    let (a, _rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let keys = tiercache_repository::keys(&a);
    put(&a, keys.lead_by_id(1), TestLead::new(1, 1)).await;
    put(&a, keys.history(1, 20, 0), TestLead::new(1, 1)).await;
    a.invalidate(
        keys.lead_activity(2, "+16462000002"),
        InvalidationSource::Write,
    )
    .await;
    a.flush_l2_writes().await;
    let mut redis = shared_redis().await;
    let prefix = a.keys().namespace().to_owned();
    let foreign = [
        format!("{prefix}calls:42:20261207"),
        format!("{prefix}calls:streams"),
    ];
    let _: String = redis.xadd(&foreign[0], "*", &[("e", "x")]).await.unwrap();
    let _: () = redis.set(&foreign[1], "kept").await.unwrap();
    let before: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    for owned in [
        keys.render(&keys.lead_by_id(1)),
        keys.render(&keys.history(1, 20, 0)),
        format!("{prefix}tag:lead:{{1}}"),
        format!("{prefix}bus:stream"),
    ] {
        assert!(before.contains(&owned), "{owned} was written: {before:?}");
    }
    assert!(
        before
            .iter()
            .any(|k| k.starts_with(&format!("{prefix}epoch:")))
    );

    a.invalidate_all(InvalidationSource::Admin)
        .expect("L2 is configured")
        .await
        .unwrap()
        .unwrap();
    let mut after: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    after.sort();
    let mut kept = vec![
        format!("{prefix}bus:stream"),
        foreign[0].clone(),
        foreign[1].clone(),
    ];
    kept.sort();
    assert_eq!(after, kept);
    let _: () = redis.del(&after).await.unwrap();
}
