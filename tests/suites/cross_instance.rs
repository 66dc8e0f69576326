//! The set-after-delete race across instances: a load that began before another instance's
//! invalidation does not land its value in Redis, for single keys (guarded by the load
//! lease) and for the batched call lookup (guarded by the invalidation epochs in Redis).

use std::io;
use std::sync::{Arc, Mutex};

use redis::AsyncCommands;
use tiercache::{Invalidation, InvalidationSource, NoopObserver, Slot, TwoTierCache};
use tiercache_repository::Channel;
use tiercache_tests::cache::{TestLead, config};
use tiercache_tests::{RedisServer, command_count, unique_namespace};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

type Slots = tiercache_repository::cache_keys::CallSlots<TestLead, TestLead, TestLead, TestLead>;

const ORG: &str = "+18005550001";
const CALLER: &str = "+16462000000";

fn instance(ns: &str, url: &str) -> TwoTierCache {
    TwoTierCache::new(config(ns, Some(url)).build().unwrap(), NoopObserver).unwrap()
}

/// What Redis holds under `key`, decoded; `None` when nothing. `cache`'s loaded values are
/// sent first (they go to Redis behind the reads).
async fn stored(
    server: &RedisServer,
    cache: &TwoTierCache,
    key: tiercache::CacheKey,
) -> Option<TestLead> {
    cache.flush_l2_writes().await;
    let mut conn = server.client().await;
    let bytes: Option<Vec<u8>> = conn.get(cache.keys().render(&key)).await.unwrap();
    bytes.and_then(|b| tiercache::envelope::decode::<TestLead>(&b).unwrap().value)
}

/// Starts `cache`'s load of `key`, whose loader takes its row from `row` and then stalls
/// until the returned `Notify` is told; returns once the row is read (the load holds the
/// lease).
async fn stalled_load(
    cache: &TwoTierCache,
    key: tiercache::CacheKey,
    row: impl FnOnce() -> TestLead + Send + 'static,
) -> (JoinHandle<Option<Arc<TestLead>>>, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let (read_tx, read_rx) = oneshot::channel();
    let load = {
        let (cache, release) = (cache.clone(), release.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(key, || async move {
                    let row = row();
                    let _ = read_tx.send(());
                    release.notified().await;
                    Ok::<_, io::Error>(Some(row))
                })
                .await
                .unwrap()
        })
    };
    read_rx.await.unwrap();
    (load, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_overtaken_by_another_instances_invalidation_does_not_land_in_redis() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("xrace");
    let (a, b) = (instance(&ns, &server.url()), instance(&ns, &server.url()));
    let key = tiercache_repository::keys(&a).lead_by_id(1);
    let db = Arc::new(Mutex::new(TestLead::new(1, 1)));

    // Instance A reads the old row (holding the load lease) and stalls before installing.
    let (slow, release) = {
        let db = db.clone();
        stalled_load(&a, key, move || db.lock().unwrap().clone()).await
    };

    // Instance B commits a write and invalidates: it does not wait for A (another process).
    *db.lock().unwrap() = TestLead::new(1, 2);
    b.invalidate(Invalidation::key(key), InvalidationSource::Write)
        .await;

    release.notify_one();
    let served = slow.await.unwrap().unwrap();
    assert_eq!(served.version, 1, "A's read began before the write");
    assert_eq!(
        stored(&server, &a, key).await,
        None,
        "A's install of the old row did not land in Redis"
    );

    // A third instance, cold, reads the new row (from the loader: Redis has nothing stale).
    let c = instance(&ns, &server.url());
    let fresh = db.lock().unwrap().clone();
    let read = c
        .get_or_load(key, || async move { Ok::<_, io::Error>(Some(fresh)) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, 2);
    assert_eq!(stored(&server, &c, key).await.map(|l| l.version), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_finishes_before_the_invalidation_is_deleted_by_it() {
    // The other order: A's install lands first, then B's invalidation deletes it.
    let server = RedisServer::start().await;
    let ns = unique_namespace("xorder");
    let (a, b) = (instance(&ns, &server.url()), instance(&ns, &server.url()));
    let key = tiercache_repository::keys(&a).lead_by_id(1);
    a.get_or_load(key, || async {
        Ok::<_, io::Error>(Some(TestLead::new(1, 1)))
    })
    .await
    .unwrap();
    assert_eq!(stored(&server, &a, key).await.map(|l| l.version), Some(1));
    b.invalidate(Invalidation::key(key), InvalidationSource::Write)
        .await;
    assert_eq!(stored(&server, &a, key).await, None);
}

/// An instance waiting for another's load of a key takes the key's lease as soon as an
/// invalidation deletes it (and with it that load's write), and loads and fills Redis
/// itself; before, it polled for a value that could not come until its wait ran out, then
/// loaded without a lease, so Redis stayed empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_another_instances_load_takes_the_lease_an_invalidation_freed() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("xwait");
    let (a, b) = (instance(&ns, &server.url()), instance(&ns, &server.url()));
    let key = tiercache_repository::keys(&a).lead_by_id(1);

    // Instance A holds the load lease and stalls in its loader.
    let (slow, release) = stalled_load(&a, key, || TestLead::new(1, 1)).await;
    let mut admin = server.client().await;
    let sets_before = command_count(&mut admin, "set").await;

    // Instance B misses too, finds the lease taken, and waits.
    let b_loads = Arc::new(Mutex::new(0));
    let waiting = {
        let (b, b_loads) = (b.clone(), b_loads.clone());
        tokio::spawn(async move {
            b.get_or_load(key, || async move {
                *b_loads.lock().unwrap() += 1;
                Ok::<_, io::Error>(Some(TestLead::new(1, 2)))
            })
            .await
            .unwrap()
        })
    };
    // B's miss script has run (its `SET lease NX` is counted even though it failed): B is
    // waiting. Nothing announces it; bounded polling.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while command_count(&mut admin, "set").await <= sets_before {
        assert!(
            std::time::Instant::now() < deadline,
            "B never asked for the lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // A third instance commits a write and invalidates: the key and A's lease go.
    let c = instance(&ns, &server.url());
    c.invalidate(Invalidation::key(key), InvalidationSource::Write)
        .await;

    // B takes the freed lease, loads, and fills Redis, while A is still stalled.
    let read = waiting.await.unwrap().unwrap();
    assert_eq!(read.version, 2);
    assert_eq!(*b_loads.lock().unwrap(), 1);
    assert_eq!(
        stored(&server, &b, key).await.map(|l| l.version),
        Some(2),
        "B loaded under a lease of its own, so its value is in Redis"
    );

    // A's old row does not replace it: its lease is gone.
    release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().version, 1);
    assert_eq!(stored(&server, &a, key).await.map(|l| l.version), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_call_install_overtaken_by_another_instances_invalidation_does_not_land() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("xcall");
    let (a, b) = (instance(&ns, &server.url()), instance(&ns, &server.url()));
    let keys = tiercache_repository::keys(&a);

    // A looks the call up (nothing cached): the script notes the invalidation epochs.
    let slots: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    assert!(matches!(slots.org(), Slot::Missing));
    // A's batched SQL read the old rows here. B then updates the lead and invalidates.
    b.invalidate(keys.lead_changed(42, 7, CALLER), InvalidationSource::Write)
        .await;
    // A installs what it read. None of it lands in Redis: the epochs cover the call's two
    // phone numbers together (a skipped install costs a later load, never a wrong answer).
    a.install(
        slots.batch(),
        keys.org_by_phone(ORG),
        Some(TestLead::new(7, 1)),
    )
    .await
    .unwrap();
    let lead_key = keys.lead_by_phone(CALLER, 7);
    a.install(slots.batch(), lead_key, Some(TestLead::new(42, 1)))
        .await
        .unwrap();
    a.install(slots.batch(), keys.context(42), Some(TestLead::new(42, 10)))
        .await
        .unwrap();
    assert_eq!(stored(&server, &a, lead_key).await, None, "stale lead");
    assert_eq!(
        stored(&server, &a, keys.context(42)).await,
        None,
        "stale context"
    );
    assert_eq!(stored(&server, &a, keys.org_by_phone(ORG)).await, None);

    // A lookup that starts after the invalidation installs normally.
    let later: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    a.install(
        later.batch(),
        keys.org_by_phone(ORG),
        Some(TestLead::new(7, 1)),
    )
    .await
    .unwrap();
    a.install(later.batch(), lead_key, Some(TestLead::new(42, 2)))
        .await
        .unwrap();
    assert_eq!(
        stored(&server, &a, lead_key).await.map(|l| l.version),
        Some(2)
    );
    assert_eq!(
        stored(&server, &a, keys.org_by_phone(ORG))
            .await
            .map(|o| o.id),
        Some(7)
    );
}

/// A load whose lease went (an invalidation deleted it) and was taken by another load does
/// not land over that load's marker: the write-behind replaces a marker in one command, and
/// puts back whatever it finds there that is not its own. The other load's value lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_lease_another_load_took_over_does_not_land_over_it() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("xtaken");
    let (a, b, c) = (
        instance(&ns, &server.url()),
        instance(&ns, &server.url()),
        instance(&ns, &server.url()),
    );
    let key = tiercache_repository::keys(&a).lead_by_id(1);
    let (slow, release_a) = stalled_load(&a, key, || TestLead::new(1, 1)).await;
    b.invalidate(Invalidation::key(key), InvalidationSource::Write)
        .await;
    let (newer, release_c) = stalled_load(&c, key, || TestLead::new(1, 2)).await;

    release_a.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().version, 1);
    a.flush_l2_writes().await;
    let mut conn = server.client().await;
    let held: Vec<u8> = conn.get(a.keys().render(&key)).await.unwrap();
    assert!(
        held.starts_with(tiercache::l2::LEASE_MARKER_PREFIX.as_bytes()),
        "C's marker is still there"
    );

    release_c.notify_one();
    assert_eq!(newer.await.unwrap().unwrap().version, 2);
    assert_eq!(stored(&server, &c, key).await.map(|l| l.version), Some(2));
}
