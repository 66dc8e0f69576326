//! The invalidation bus between instances (separate caches with separate L1s and pools on
//! one throwaway Redis): a write on one reaches the others' L1, a disconnected instance
//! catches up from the stream, a gap flushes L1, a publish Redis refused is sent later, and
//! a healthy subscription's heartbeat holds.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tiercache::{BUS_STREAM_TTL_MS, CacheKey, Invalidation, InvalidationSource, TwoTierCache};
use tiercache_tests::cache::{TestLead, config};
use tiercache_tests::{Recorder, RedisServer, command_count, unique_namespace};

fn instance(ns: &str, url: &str) -> (TwoTierCache, Arc<Recorder>) {
    let (recorder, _) = Recorder::new();
    let recorder = Arc::new(recorder);
    let cache =
        TwoTierCache::with_observer(config(ns, Some(url)).build().unwrap(), recorder.clone())
            .unwrap();
    (cache, recorder)
}

/// Reads `key`, loading `version` on a miss; returns the version served and whether it loaded.
async fn read(cache: &TwoTierCache, key: CacheKey, version: u32) -> (u32, bool) {
    let loaded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = loaded.clone();
    let lead = cache
        .get_or_load(key, move || async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, io::Error>(Some(TestLead::new(1, version)))
        })
        .await
        .unwrap()
        .unwrap();
    (
        lead.version,
        loaded.load(std::sync::atomic::Ordering::SeqCst),
    )
}

/// Waits (bounded) until `n` instances are subscribed to the namespace's bus channel.
async fn subscribed(server: &RedisServer, ns: &str, n: i64) {
    tiercache_tests::bus_subscribers(&mut server.client().await, ns, n).await;
}

async fn heard(recorder: &Recorder) {
    tokio::time::timeout(Duration::from_secs(10), recorder.heard.notified())
        .await
        .expect("a bus message within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_clears_the_others_l1() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("bus");
    let (a, rec_a) = instance(&ns, &server.url());
    let (b, rec_b) = instance(&ns, &server.url());
    subscribed(&server, &ns, 2).await;
    let key = tiercache_repository::keys(&a).lead_by_id(1);
    assert_eq!(read(&a, key, 1).await, (1, true));
    assert_eq!(
        read(&b, key, 1).await,
        (1, false),
        "B took it from Redis into its L1"
    );
    assert_eq!(read(&b, key, 1).await, (1, false));

    a.invalidate(
        tiercache_repository::keys(&a).lead_changed(1, 1, "+16462000000"),
        InvalidationSource::Write,
    )
    .await;
    heard(&rec_b).await;
    assert_eq!(
        read(&b, key, 2).await,
        (2, true),
        "B's L1 no longer serves version 1"
    );
    assert_eq!(rec_b.count("bus.received"), 1);
    assert_eq!(
        rec_a.count("bus.received"),
        0,
        "an instance ignores its own messages"
    );
}

/// A throwaway Redis, two instances on one namespace both subscribed, and `keys` cached
/// (version 1) in both L1s.
struct Pair {
    server: RedisServer,
    ns: String,
    a: TwoTierCache,
    rec_a: Arc<Recorder>,
    b: TwoTierCache,
    rec_b: Arc<Recorder>,
}

async fn warm_pair(tag: &str, ids: &[i64]) -> Pair {
    let server = RedisServer::start().await;
    let ns = unique_namespace(tag);
    let (a, rec_a) = instance(&ns, &server.url());
    let (b, rec_b) = instance(&ns, &server.url());
    subscribed(&server, &ns, 2).await;
    for id in ids {
        let key = tiercache_repository::keys(&a).lead_by_id(*id);
        read(&a, key, 1).await;
        read(&b, key, 1).await;
    }
    Pair {
        server,
        ns,
        a,
        rec_a,
        b,
        rec_b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_instance_catches_up_from_the_stream() {
    let Pair {
        server,
        a,
        b,
        rec_b,
        ..
    } = warm_pair("buscatch", &[1]).await;
    let key = tiercache_repository::keys(&a).lead_by_id(1);

    // Every subscriber is cut off; A's invalidation reaches only the stream.
    let mut admin = server.client().await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    a.invalidate(Invalidation::key(key), InvalidationSource::Write)
        .await;
    heard(&rec_b).await;
    assert_eq!(read(&b, key, 2).await, (2, true));
    assert_eq!(rec_b.count("bus.gap"), 0, "caught up, nothing lost");
}

/// B's subscription drops, A invalidates one of two keys B holds, and `lose` (run on the
/// stream's key) takes what B missed before B is back: B cannot know what it missed, so it
/// flushes its whole L1 (the other key then comes from Redis), and counts one gap.
async fn a_loss_while_away_flushes_l1(tag: &str, lose: fn(String) -> redis::Cmd) {
    let Pair {
        server,
        ns,
        a,
        b,
        rec_b,
        ..
    } = warm_pair(tag, &[1, 2]).await;
    let (k1, k2) = (
        tiercache_repository::keys(&a).lead_by_id(1),
        tiercache_repository::keys(&a).lead_by_id(2),
    );
    let mut admin = server.client().await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    a.invalidate(Invalidation::key(k1), InvalidationSource::Write)
        .await;
    let _: i64 = lose(format!("{ns}:test:v1:bus:stream"))
        .query_async(&mut admin)
        .await
        .unwrap();
    heard(&rec_b).await;
    assert_eq!(rec_b.count("bus.gap"), 1);
    // Everything in B's L1 went, not only the key it missed: k2 now comes from Redis.
    let from_l2 = rec_b.count("lookup.lead.l2.hit");
    assert_eq!(read(&b, k2, 2).await, (1, false));
    assert_eq!(rec_b.count("lookup.lead.l2.hit"), from_l2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_stream_no_longer_covers_flushes_l1() {
    a_loss_while_away_flushes_l1("busgap", |stream| {
        let mut trim = redis::cmd("XTRIM");
        trim.arg(stream).arg("MAXLEN").arg(0);
        trim
    })
    .await;
}

/// A stream gone while B was away (expired, or a Redis that restarted empty) is a gap as a
/// trimmed one is, though B had applied no message yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gone_while_away_is_a_gap() {
    a_loss_while_away_flushes_l1("busgone", |stream| {
        let mut del = redis::cmd("DEL");
        del.arg(stream);
        del
    })
    .await;
}

/// The stream's TTL, in ms (`-1`: none, `-2`: no stream).
async fn stream_ttl(server: &RedisServer, ns: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(format!("{ns}:test:v1:bus:stream"))
        .query_async(&mut server.client().await)
        .await
        .unwrap()
}

/// The stream keeps its TTL without a `PEXPIRE` on every append: an instance's first
/// message sets it (by either way onto the stream: an invalidation's script, or a plain
/// publish, here the flush-everything message), later ones within the hour leave it, so a
/// namespace no longer used still leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_first_message_sets_the_streams_ttl_and_the_next_leave_it() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("busttl");
    let (a, _rec) = instance(&ns, &server.url());
    let fresh =
        |ttl: i64| ttl > (BUS_STREAM_TTL_MS as i64) - 60_000 && ttl <= BUS_STREAM_TTL_MS as i64;
    let keys = tiercache_repository::keys(&a);
    a.invalidate(
        Invalidation::key(keys.lead_by_id(1)),
        InvalidationSource::Write,
    )
    .await;
    let ttl = stream_ttl(&server, &ns).await;
    assert!(fresh(ttl), "after a first invalidation: {ttl} ms");

    let _: i64 = redis::cmd("PERSIST")
        .arg(format!("{ns}:test:v1:bus:stream"))
        .query_async(&mut server.client().await)
        .await
        .unwrap();
    a.invalidate(
        Invalidation::key(keys.lead_by_id(2)),
        InvalidationSource::Write,
    )
    .await;
    assert_eq!(
        stream_ttl(&server, &ns).await,
        -1,
        "not renewed by each append"
    );

    let (b, _rec_b) = instance(&ns, &server.url());
    b.invalidate_all(InvalidationSource::Admin)
        .expect("L2 is configured")
        .await
        .unwrap()
        .unwrap();
    let ttl = stream_ttl(&server, &ns).await;
    assert!(
        fresh(ttl),
        "after another instance's first publish: {ttl} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_refused_is_sent_when_it_can_be() {
    let Pair {
        server,
        a,
        rec_a,
        b,
        rec_b,
        ..
    } = warm_pair("busowed", &[1]).await;
    let key = tiercache_repository::keys(&a).lead_by_id(1);

    let mut admin = server.client().await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-@scripting"])
        .query_async(&mut admin)
        .await
        .unwrap();
    a.invalidate(Invalidation::key(key), InvalidationSource::Write)
        .await;
    assert!(a.owed_invalidations() >= 1, "the publish is owed");
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+@scripting"])
        .query_async(&mut admin)
        .await
        .unwrap();
    heard(&rec_b).await;
    assert_eq!(read(&b, key, 2).await, (2, true));
    assert!(rec_a.count("owed_replayed") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_bus_stays_subscribed_and_l1_stays_trusted() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("beat");
    let (cache, _rec) = instance(&ns, &server.url());
    subscribed(&server, &ns, 1).await;
    let mut admin = server.client().await;
    let subscribes = command_count(&mut admin, "subscribe").await;
    let key = tiercache_repository::keys(&cache).lead_by_id(1);
    assert_eq!(read(&cache, key, 1).await, (1, true));

    // Past half the staleness bound (the age cap while the bus is not confirmed), over
    // several heartbeats: this waiting is what is tested.
    tokio::time::sleep(tiercache::CacheConfig::DEFAULT_STALENESS_BOUND * 3 / 4).await;
    // Pins a fixed bug: the heartbeat's PING reply on a RESP2 subscription (an array) was
    // read as a string, so every heartbeat "failed", the subscriber reconnected about ten
    // times a second, and L1 values older than the age cap were loaded again.
    assert_eq!(
        command_count(&mut admin, "subscribe").await,
        subscribes,
        "no resubscription while Redis is healthy"
    );
    assert_eq!(
        read(&cache, key, 2).await,
        (1, false),
        "an L1 value older than the age cap is still served: the bus confirmed"
    );
}
