//! The read path against the shared Redis: hits and misses per tier, TTLs, negative
//! caching, corrupt payloads, and what reaches Redis.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use tiercache::envelope::ENVELOPE_VERSION;
use tiercache_tests::cache::{TestLead, build, config, with_ttls};
use tiercache_tests::{SHARED_REDIS_URL, shared_redis, unique_namespace};

type Loaded = Result<Option<TestLead>, io::Error>;

fn counting(
    calls: &Arc<AtomicU32>,
    value: Option<TestLead>,
) -> impl FnOnce() -> std::future::Ready<Loaded> + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_flows_through_loader_then_l2_then_l1() {
    let ns = unique_namespace("flow");
    let (a, rec_a) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let (b, rec_b) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let calls = Arc::new(AtomicU32::new(0));
    let key = tiercache_repository::keys(&a).lead_by_id(1);

    // Cold: L1 miss, L2 miss, one load.
    let v = a
        .get_or_load(key, counting(&calls, Some(TestLead::new(1, 1))))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&TestLead::new(1, 1)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(rec_a.count("lookup.lead.l1.miss"), 1);
    assert_eq!(rec_a.count("lookup.lead.l2.miss"), 1);
    assert_eq!(rec_a.count("load.lead.found"), 1);

    // Warm on this instance: an L1 hit, nothing else.
    let again = a.get_or_load(key, counting(&calls, None)).await.unwrap();
    assert_eq!(again.as_deref(), Some(&TestLead::new(1, 1)));
    assert_eq!(rec_a.count("lookup.lead.l1.hit"), 1);
    assert_eq!(rec_a.sum("lookup.lead.l2"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Another instance (its own L1) finds it in L2, then in its L1.
    let from_l2 = b.get_or_load(key, counting(&calls, None)).await.unwrap();
    assert_eq!(from_l2.as_deref(), Some(&TestLead::new(1, 1)));
    assert_eq!(rec_b.count("lookup.lead.l2.hit"), 1);
    b.get_or_load(key, counting(&calls, None)).await.unwrap();
    assert_eq!(rec_b.count("lookup.lead.l1.hit"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no instance reloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_expire_from_l1_then_from_l2() {
    let ns = unique_namespace("ttl");
    let l1 = Duration::from_millis(300);
    let l2 = Duration::from_millis(1200);
    let (cache, rec) = build(with_ttls(config(&ns, Some(SHARED_REDIS_URL)), l1, l2, l1));
    let calls = Arc::new(AtomicU32::new(0));
    let key = tiercache_repository::keys(&cache).context(7);
    cache
        .get_or_load(key, counting(&calls, Some(TestLead::new(7, 1))))
        .await
        .unwrap();

    // Redis holds it with the policy's TTL.
    cache.flush_l2_writes().await;
    let mut redis = shared_redis().await;
    let pttl: i64 = redis.pttl(cache.keys().render(&key)).await.unwrap();
    assert!(pttl > 900 && pttl <= 1200, "PTTL {pttl}");

    // Waiting is the point of this test: the TTLs are what is under test.
    tokio::time::sleep(l1 + Duration::from_millis(100)).await;
    cache
        .get_or_load(key, counting(&calls, None))
        .await
        .unwrap();
    assert_eq!(
        rec.count("lookup.context.l2.hit"),
        1,
        "L1 expired, L2 still had it"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    tokio::time::sleep(l2).await;
    let v = cache
        .get_or_load(key, counting(&calls, Some(TestLead::new(7, 2))))
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "both tiers expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_cached_and_served_as_not_found() {
    let ns = unique_namespace("neg");
    let negative = Duration::from_millis(400);
    let builder = with_ttls(
        config(&ns, Some(SHARED_REDIS_URL)),
        Duration::from_secs(30),
        Duration::from_secs(60),
        negative,
    );
    let (a, rec_a) = build(builder.clone());
    let (b, rec_b) = build(builder);
    let calls = Arc::new(AtomicU32::new(0));
    let key = tiercache_repository::keys(&a).lead_by_phone("+16462000042", 3);

    assert_eq!(
        a.get_or_load(key, counting(&calls, None)).await.unwrap(),
        None
    );
    assert_eq!(
        a.get_or_load(key, counting(&calls, None)).await.unwrap(),
        None
    );
    assert_eq!(rec_a.count("load.lead.not_found"), 1);
    assert_eq!(rec_a.count("lookup.lead.l1.negative_hit"), 1);
    assert_eq!(
        b.get_or_load(key, counting(&calls, None)).await.unwrap(),
        None
    );
    assert_eq!(rec_b.count("lookup.lead.l2.negative_hit"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let mut redis = shared_redis().await;
    let pttl: i64 = redis.pttl(a.keys().render(&key)).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 400,
        "negative TTL applies in L2: {pttl}"
    );

    // Once the negative TTL passes, the loader is asked again (and may now find it).
    tokio::time::sleep(negative + Duration::from_millis(100)).await;
    let found = a
        .get_or_load(key, counting(&calls, Some(TestLead::new(42, 1))))
        .await
        .unwrap();
    assert_eq!(found.unwrap().id, 42);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_foreign_payloads_are_misses_not_errors() {
    let ns = unique_namespace("corrupt");
    let (cache, rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let mut redis = shared_redis().await;
    let calls = Arc::new(AtomicU32::new(0));

    let garbage = tiercache_repository::keys(&cache).lead_by_id(1);
    let _: () = redis
        .set(
            cache.keys().render(&garbage),
            b"\x01\x00not postcard at all",
        )
        .await
        .unwrap();
    let other_version = tiercache_repository::keys(&cache).lead_by_id(2);
    let mut bytes = tiercache::envelope::encode(Some(&TestLead::new(2, 0)), 0).unwrap();
    bytes[0] = ENVELOPE_VERSION + 1;
    let _: () = redis
        .set(cache.keys().render(&other_version), bytes)
        .await
        .unwrap();
    let wrong_type = tiercache_repository::keys(&cache).lead_by_id(3);
    let foreign = tiercache::envelope::encode(Some(&"just a string"), 0).unwrap();
    let _: () = redis
        .set(cache.keys().render(&wrong_type), foreign)
        .await
        .unwrap();

    for (id, key) in [(1, garbage), (2, other_version), (3, wrong_type)] {
        let v = cache
            .get_or_load(key, counting(&calls, Some(TestLead::new(id, 9))))
            .await
            .unwrap();
        assert_eq!(v.unwrap().version, 9, "reloaded from the loader");
        // The bad payload was replaced by a good one.
        cache.flush_l2_writes().await;
        let stored: Vec<u8> = redis.get(cache.keys().render(&key)).await.unwrap();
        let decoded = tiercache::envelope::decode::<TestLead>(&stored).unwrap();
        assert_eq!(decoded.value, Some(TestLead::new(id, 9)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(rec.count("corrupt.lead.l2.decode"), 2);
    assert_eq!(rec.count("corrupt.lead.l2.version"), 1);
}

/// A load lease is a marker at the value's own key (`SET key marker NX GET PX`): found there,
/// it is another load in flight, to wait for, never a value or a corrupt entry; a load that
/// fails takes its marker away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_marker_is_a_load_in_flight_never_a_value() {
    let ns = unique_namespace("marker");
    let (cache, rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let mut redis = shared_redis().await;
    let calls = Arc::new(AtomicU32::new(0));

    // Another instance's load of lead 1 is in flight, and never lands: its marker expires.
    let key = tiercache_repository::keys(&cache).lead_by_id(1);
    let redis_key = cache.keys().render(&key);
    let marker = format!("{}elsewhere:1", tiercache::l2::LEASE_MARKER_PREFIX);
    let _: () = redis::cmd("SET")
        .arg(&redis_key)
        .arg(&marker)
        .arg("PX")
        .arg(300)
        .query_async(&mut redis)
        .await
        .unwrap();
    let v = cache
        .get_or_load(key, counting(&calls, Some(TestLead::new(1, 5))))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&TestLead::new(1, 5)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "loaded once the marker went"
    );
    assert_eq!(rec.sum("corrupt"), 0, "a marker is not a corrupt entry");
    cache.flush_l2_writes().await;
    let stored: Vec<u8> = redis.get(&redis_key).await.unwrap();
    let decoded = tiercache::envelope::decode::<TestLead>(&stored).unwrap();
    assert_eq!(
        decoded.value,
        Some(TestLead::new(1, 5)),
        "its value replaced the marker"
    );

    // A failing load releases its marker: Redis holds nothing for the key.
    let failing = tiercache_repository::keys(&cache).lead_by_id(2);
    cache
        .get_or_load::<TestLead, _, _, _>(failing, move || async move {
            Err(io::Error::other("database down"))
        })
        .await
        .unwrap_err();
    let left: Option<Vec<u8>> = redis.get(cache.keys().render(&failing)).await.unwrap();
    assert_eq!(left, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_is_the_only_error_a_caller_sees() {
    let ns = unique_namespace("loaderr");
    let (cache, rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let key = tiercache_repository::keys(&cache).summary(1);
    let err = cache
        .get_or_load::<TestLead, _, _, _>(key, move || async move {
            Err(io::Error::other("database down"))
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.loader_error::<io::Error>().unwrap().to_string(),
        "database down"
    );
    assert_eq!(rec.count("load.summary.error"), 1);

    // Nothing was cached: the next caller (who did not wait on the failed load) loads.
    let v = cache
        .get_or_load(key, move || async move {
            Ok::<_, io::Error>(Some(TestLead::new(1, 1)))
        })
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_holds_a_phone_number_in_clear() {
    let ns = unique_namespace("privacy");
    let (cache, _rec) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let phones: Vec<String> = (0..50).map(|j| format!("+16462{j:06}")).collect();
    for (j, phone) in phones.iter().enumerate() {
        let org = (j % 5) as i64 + 1;
        let lead = tiercache_repository::keys(&cache).lead_by_phone(phone, org);
        let found = (j % 3 != 0).then(|| TestLead::new(j as i64, 1));
        cache
            .get_or_load(lead, move || async move { Ok::<_, io::Error>(found) })
            .await
            .unwrap();
        let org_key = tiercache_repository::keys(&cache).org_by_phone(&format!("+1800555{org:04}"));
        cache
            .get_or_load(org_key, move || async move {
                Ok::<_, io::Error>(Some(TestLead::new(org, 1)))
            })
            .await
            .unwrap();
    }
    cache.flush_l2_writes().await;
    let mut redis = shared_redis().await;
    let mut keys: Vec<String> = Vec::new();
    let mut iter: redis::AsyncIter<String> = redis.scan_match(format!("{ns}:*")).await.unwrap();
    while let Some(key) = iter.next_item().await {
        keys.push(key.unwrap());
    }
    drop(iter);
    assert!(
        keys.len() >= 55,
        "the workload reached Redis: {} keys",
        keys.len()
    );
    for key in &keys {
        let value: Vec<u8> = redis.get(key).await.unwrap();
        let value = String::from_utf8_lossy(&value);
        for phone in phones.iter().map(String::as_str).chain(["+18005550001"]) {
            let digits = &phone[1..];
            assert!(!key.contains(digits), "phone in key {key}");
            assert!(!value.contains(digits), "phone in value of {key}");
        }
    }
}
