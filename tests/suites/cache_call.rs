//! The call lookup (organization → lead → context and greeting): one Redis round trip
//! when L1 lacks anything, none when L1 has everything, and no stale install after an
//! invalidation even though the batched load holds no key lock while it reads.

use tiercache::{InvalidationSource, NoopObserver, Slot, TwoTierCache};
use tiercache_repository::Channel;
use tiercache_tests::cache::{TestLead, build, config};
use tiercache_tests::{RedisServer, command_count, unique_namespace};

type Slots = tiercache_repository::cache_keys::CallSlots<TestLead, TestLead, TestLead, TestLead>;

const ORG: &str = "+18005550001";
const CALLER: &str = "+16462000000";

fn cache(ns: &str, redis_url: &str) -> TwoTierCache {
    TwoTierCache::new(config(ns, Some(redis_url)).build().unwrap(), NoopObserver).unwrap()
}

/// Loads the missing parts the way the repository does: org 7, lead 42, its context and greeting.
async fn complete(cache: &TwoTierCache, slots: &Slots, lead: Option<TestLead>) {
    let keys = tiercache_repository::keys(cache);
    if !slots.org().is_known() {
        cache
            .install(
                slots.batch(),
                keys.org_by_phone(ORG),
                Some(TestLead::new(7, 1)),
            )
            .await
            .unwrap();
    }
    if !slots.lead().is_known() {
        cache
            .install(slots.batch(), keys.lead_by_phone(CALLER, 7), lead.clone())
            .await
            .unwrap();
    }
    if let Some(lead) = lead {
        cache
            .install(
                slots.batch(),
                keys.context(lead.id),
                Some(TestLead::new(lead.id, 10)),
            )
            .await
            .unwrap();
        cache
            .install(
                slots.batch(),
                keys.greeting(lead.id, Channel::Voice),
                Some(TestLead::new(lead.id, 20)),
            )
            .await
            .unwrap();
    }
    // Redis's copies go behind the installs.
    cache.flush_l2_writes().await;
}

fn found(slot: &Slot<TestLead>) -> Option<(i64, u32)> {
    match slot {
        Slot::Found(v) => Some((v.id, v.version)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_call_costs_one_script_round_trip_or_nothing() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("call");
    let (a, b) = (cache(&ns, &server.url()), cache(&ns, &server.url()));
    let mut admin = server.client().await;

    let cold: Slots = tiercache_repository::keys(&a)
        .call(ORG, CALLER, Channel::Voice)
        .read(&a)
        .await;
    assert!(!cold.is_complete());
    complete(&a, &cold, Some(TestLead::new(42, 1))).await;

    // Instance A: everything in L1, no Redis command.
    let before = command_count(&mut admin, "evalsha").await;
    let warm: Slots = tiercache_repository::keys(&a)
        .call(ORG, CALLER, Channel::Voice)
        .read(&a)
        .await;
    assert!(warm.is_complete());
    assert_eq!(command_count(&mut admin, "evalsha").await, before);

    // Instance B, cold L1: one script call follows the ids through Redis and finds all four.
    let gets = command_count(&mut admin, "get").await;
    let from_l2: Slots = tiercache_repository::keys(&b)
        .call(ORG, CALLER, Channel::Voice)
        .read(&b)
        .await;
    assert_eq!(
        [
            found(&from_l2.org()),
            found(&from_l2.lead()),
            found(&from_l2.context()),
            found(&from_l2.greeting())
        ],
        [Some((7, 1)), Some((42, 1)), Some((42, 10)), Some((42, 20))]
    );
    assert_eq!(
        command_count(&mut admin, "evalsha").await,
        before + 1,
        "one round trip"
    );
    // Redis counts the script's own GETs too: four values and three invalidation epochs,
    // all inside that one call.
    assert_eq!(command_count(&mut admin, "get").await, gets + 7);
    // And B now has them in L1.
    let again: Slots = tiercache_repository::keys(&b)
        .call(ORG, CALLER, Channel::Voice)
        .read(&b)
        .await;
    assert!(again.is_complete());
    assert_eq!(command_count(&mut admin, "evalsha").await, before + 1);
}

/// A key on the call's way that holds another load's lease marker is missing for the
/// lookup, not corrupt: the parts before and beside it are still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_marker_on_the_way_is_missing_not_corrupt() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("callmarker");
    let a = cache(&ns, &server.url());
    let (b, rec) = build(config(&ns, Some(&server.url())));
    let cold: Slots = tiercache_repository::keys(&a)
        .call(ORG, CALLER, Channel::Voice)
        .read(&a)
        .await;
    complete(&a, &cold, Some(TestLead::new(42, 1))).await;
    a.flush_l2_writes().await;

    // Another instance is loading the context: its marker has replaced the value.
    let mut admin = server.client().await;
    let marker = format!("{}elsewhere:1", tiercache::l2::LEASE_MARKER_PREFIX);
    let _: () = redis::cmd("SET")
        .arg(a.keys().render(&tiercache_repository::keys(&a).context(42)))
        .arg(&marker)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    let slots: Slots = tiercache_repository::keys(&b)
        .call(ORG, CALLER, Channel::Voice)
        .read(&b)
        .await;
    assert_eq!(
        [
            found(&slots.org()),
            found(&slots.lead()),
            found(&slots.context()),
            found(&slots.greeting())
        ],
        [Some((7, 1)), Some((42, 1)), None, Some((42, 20))]
    );
    assert!(matches!(slots.context(), Slot::Missing));
    assert_eq!(rec.sum("corrupt"), 0, "a marker is not a corrupt entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_caller_is_cached_as_not_found_in_both_tiers() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("callneg");
    let (a, b) = (cache(&ns, &server.url()), cache(&ns, &server.url()));
    let cold: Slots = tiercache_repository::keys(&a)
        .call(ORG, CALLER, Channel::Voice)
        .read(&a)
        .await;
    complete(&a, &cold, None).await;
    for instance in [&a, &b] {
        let slots: Slots = tiercache_repository::keys(instance)
            .call(ORG, CALLER, Channel::Voice)
            .read(instance)
            .await;
        assert!(slots.is_complete());
        assert!(matches!(slots.lead(), Slot::NotFound));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_load_that_raced_an_invalidation_is_not_installed() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("callrace");
    let a = cache(&ns, &server.url());
    let keys = tiercache_repository::keys(&a);
    let warm: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    complete(&a, &warm, Some(TestLead::new(42, 1))).await;
    a.invalidate(keys.lead_activity(42, CALLER), InvalidationSource::Write)
        .await;

    // A lookup starts, reads (context missing), loads the old row...
    let racing: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    assert!(matches!(racing.context(), Slot::Missing));
    // ...a write to the same lead commits and invalidates...
    a.invalidate(keys.lead_activity(42, CALLER), InvalidationSource::Write)
        .await;
    // ...and the old row arrives: it is returned to its caller but not cached.
    let served = a
        .install(
            racing.batch(),
            keys.context(42),
            Some(TestLead::new(42, 10)),
        )
        .await
        .unwrap();
    assert_eq!(served.map(|v| v.version), Some(10));
    let after: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    assert!(
        matches!(after.context(), Slot::Missing),
        "the stale context was not installed"
    );
    let mut admin = server.client().await;
    let exists: bool = redis::AsyncCommands::exists(&mut admin, keys.render(&keys.context(42)))
        .await
        .unwrap();
    assert!(!exists, "nor written to Redis");

    // Without a racing invalidation, the same install lands.
    a.install(after.batch(), keys.context(42), Some(TestLead::new(42, 11)))
        .await
        .unwrap();
    let last: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    assert_eq!(found(&last.context()), Some((42, 11)));
}

/// A call's install puts the value in L1 without waiting for Redis, and no Redis command runs
/// under the key's lock: with Redis frozen, the install returns at once and a reader of the
/// key is answered from L1 instead of waiting out the Redis timeout behind the install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_holds_no_key_lock_while_redis_answers() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("calllock");
    let (cache, _) = build(tiercache_tests::cache::frozen_redis_config(
        &ns,
        &server.url(),
    ));
    let slots: Slots = tiercache_repository::keys(&cache)
        .call(ORG, CALLER, Channel::Voice)
        .read(&cache)
        .await;
    assert!(!slots.org().is_known());
    server.pause();
    let key = tiercache_repository::keys(&cache).org_by_phone(ORG);
    let bound = std::time::Duration::from_secs(5);
    let installed = tokio::time::timeout(
        bound,
        cache.install(slots.batch(), key, Some(TestLead::new(7, 1))),
    )
    .await
    .expect("the install does not wait for a frozen Redis");
    assert_eq!(installed.unwrap().unwrap().version, 1);
    let read = tokio::time::timeout(
        bound,
        cache.get_or_load(key, || async {
            Ok::<_, std::io::Error>(Some(TestLead::new(7, 2)))
        }),
    )
    .await
    .expect("the reader is not held behind Redis");
    assert_eq!(read.unwrap().unwrap().version, 1, "from L1");
    server.resume();
    cache.flush_l2_writes().await;
    let mut admin = server.client().await;
    let stored: Option<Vec<u8>> = redis::AsyncCommands::get(&mut admin, cache.keys().render(&key))
        .await
        .unwrap();
    assert!(stored.is_some(), "Redis got its copy once it answered");
}
