//! The engine's paths, timed: L1 hit, L2 hit against a bare Redis GET, miss → load, the
//! envelope and key building. Needs the shared Redis on 127.0.0.1:6379; keys go under a
//! namespace of their own and are deleted afterwards.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use redis::AsyncCommands;
use tiercache::seal::Sealer;
use tiercache::{CacheConfig, EncryptionKey, NoopObserver, TwoTierCache, envelope};
use tiercache_benches::{Lead, sample_lead};
use tiercache_repository::keys;
use tokio::runtime::Runtime;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const SECRET: &[u8] = b"tiercache-bench-secret-012345678";

fn unix_millis() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as u64)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn cache(rt: &Runtime, prefix: &str, redis: bool) -> TwoTierCache {
    sealed_cache(rt, prefix, redis, None)
}

/// The key the sealed benches seal with.
fn encryption_key() -> EncryptionKey {
    EncryptionKey::from_bytes([7; 32])
}

fn sealed_cache(
    rt: &Runtime,
    prefix: &str,
    redis: bool,
    key: Option<EncryptionKey>,
) -> TwoTierCache {
    let _runtime = rt.enter();
    let config = CacheConfig::builder()
        .schema(tiercache_repository::schema().schema.clone())
        .prefix(prefix)
        .env("bench")
        .key_secret(SECRET.to_vec())
        .redis_url(redis.then(|| REDIS_URL.to_owned()))
        .encryption_key(key)
        .build()
        .unwrap();
    TwoTierCache::new(config, NoopObserver).unwrap()
}

async fn load(id: i64) -> Result<Option<Lead>, io::Error> {
    let mut lead = sample_lead();
    lead.id = id;
    Ok(Some(lead))
}

fn l1_hit(c: &mut Criterion) {
    let rt = runtime();
    let cache = cache(&rt, "benchl1", false);
    let key = keys(&cache).lead_by_id(1);
    rt.block_on(cache.get_or_load(key, || load(1))).unwrap();
    let mut group = c.benchmark_group("l1_hit");
    group.bench_function("get_or_load", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(cache.get_or_load(black_box(key), || load(1)).await.unwrap())
        })
    });
    // Includes building the key: one HMAC-SHA256 of the phone.
    let phone_key = keys(&cache).lead_by_phone("+16462000042", 7);
    rt.block_on(cache.get_or_load(phone_key, || load(1)))
        .unwrap();
    group.bench_function("get_or_load_by_phone_with_key_building", |b| {
        b.to_async(&rt).iter(|| async {
            let key = keys(&cache).lead_by_phone(black_box("+16462000042"), 7);
            black_box(cache.get_or_load(key, || load(1)).await.unwrap())
        })
    });
    group.finish();
}

/// L2 hits need an L1 miss each time: every timed read is of a key stored in Redis
/// beforehand and never read before, through a cache whose L1 has not seen it.
fn l2_hit_vs_bare_get(c: &mut Criterion) {
    let rt = runtime();
    let prefix = format!("benchl2{}", std::process::id());
    let writer = cache(&rt, &prefix, true);
    let reader = cache(&rt, &prefix, true);
    let sealed_reader = sealed_cache(&rt, &prefix, true, Some(encryption_key()));
    let sealer = Sealer::new(&encryption_key());
    let conn = rt.block_on(async {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    let next = Arc::new(AtomicI64::new(0));
    // Keys are written ahead in batches, outside the timed section; sealed for the sealed
    // reader.
    let prepare = |n: u64, sealer: Option<&Sealer>| {
        let start = next.fetch_add(n as i64, Ordering::SeqCst);
        rt.block_on(async {
            let mut pipe = redis::pipe();
            for id in start..start + n as i64 {
                let key = writer.keys().render(&keys(&writer).lead_by_id(id));
                let mut lead = sample_lead();
                lead.id = id;
                // Loaded now, so a value stays young enough to serve even while a starved
                // bus heartbeat (a busy machine) leaves the reader distrusting older ones.
                let mut bytes = envelope::encode(Some(&lead), unix_millis()).unwrap();
                if let Some(sealer) = sealer {
                    bytes = sealer.seal(&key, &bytes, false).unwrap();
                }
                pipe.set(key, bytes).ignore();
            }
            let _: () = pipe.query_async(&mut conn.clone()).await.unwrap();
        });
        start
    };
    let mut group = c.benchmark_group("l2_hit");
    group.bench_function("bare_redis_get", |b| {
        b.iter_custom(|iters| {
            let start = prepare(iters, None);
            rt.block_on(async {
                let mut conn = conn.clone();
                let began = Instant::now();
                for id in start..start + iters as i64 {
                    let key = writer.keys().render(&keys(&writer).lead_by_id(id));
                    let bytes: Vec<u8> = conn.get(key).await.unwrap();
                    black_box(bytes);
                }
                began.elapsed()
            })
        })
    });
    for (name, reader, sealer) in [
        ("get_or_load", &reader, None),
        ("get_or_load_sealed", &sealed_reader, Some(&sealer)),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = prepare(iters, sealer);
                rt.block_on(async {
                    let began = Instant::now();
                    for id in start..start + iters as i64 {
                        let key = keys(reader).lead_by_id(id);
                        black_box(reader.get_or_load(key, || load(-1)).await.unwrap());
                    }
                    began.elapsed()
                })
            })
        });
    }
    group.finish();
    cleanup(&rt, &prefix);
}

/// A miss in both tiers with an instant loader: the engine's own cost around a load.
fn miss_then_load(c: &mut Criterion) {
    let rt = runtime();
    let prefix = format!("benchmiss{}", std::process::id());
    let mut group = c.benchmark_group("miss_load");
    for (name, redis) in [("l1_only", false), ("l1_l2", true)] {
        let cache = cache(&rt, &prefix, redis);
        let next = AtomicI64::new(1_000_000_000);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let id = next.fetch_add(1, Ordering::Relaxed);
                black_box(
                    cache
                        .get_or_load(keys(&cache).lead_by_id(id), move || load(id))
                        .await
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
    cleanup(&rt, &prefix);
}

fn envelope_and_keys(c: &mut Criterion) {
    let lead = sample_lead();
    let bytes = envelope::encode(Some(&lead), 1_700_000_000_000).unwrap();
    let mut group = c.benchmark_group("envelope");
    group.bench_function("encode", |b| {
        b.iter(|| envelope::encode(Some(black_box(&lead)), 1).unwrap())
    });
    group.bench_function("decode", |b| {
        b.iter(|| envelope::decode::<Lead>(black_box(&bytes)).unwrap())
    });
    // Sealed (CACHE_ENCRYPTION_KEY): what an L2 hit pays on top of `decode`, and a fill on
    // top of `encode`. Opening works in place, as on the bytes Redis returned; each
    // iteration gets its own copy, made outside the timing.
    let sealer = Sealer::new(&encryption_key());
    let redis_key = "tc:bench:v1:lead:id:48213377";
    let sealed = sealer.seal(redis_key, &bytes, false).unwrap();
    group.bench_function("open_and_decode", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |sealed| {
                let plain = sealer.open(black_box(redis_key), sealed).unwrap();
                envelope::decode::<Lead>(plain).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode_and_seal", |b| {
        b.iter(|| {
            let plain = envelope::encode(Some(black_box(&lead)), 1).unwrap();
            sealer.seal(black_box(redis_key), &plain, false).unwrap()
        })
    });
    group.finish();
    let rt = runtime();
    let cache = cache(&rt, "benchkeys", false);
    let mut group = c.benchmark_group("key");
    group.bench_function("lead_by_phone", |b| {
        b.iter(|| keys(&cache).lead_by_phone(black_box("+16462000042"), black_box(7)))
    });
    let key = keys(&cache).lead_by_phone("+16462000042", 7);
    group.bench_function("render", |b| {
        b.iter(|| cache.keys().render(black_box(&key)))
    });
    group.finish();
}

/// Deletes what a bench left under its prefix (SCAN is fine here: not a request path).
fn cleanup(rt: &Runtime, prefix: &str) {
    rt.block_on(async {
        let mut conn = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> =
                conn.scan_match(format!("{prefix}:*")).await.unwrap();
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key.unwrap());
            }
            keys
        };
        for chunk in keys.chunks(1000) {
            let _: () = conn.del(chunk).await.unwrap();
        }
    });
}

/// The hot read path (an L1 hit) with metrics off (no-op observer) and on (the monitoring
/// crate's Prometheus observer): the cost of observability.
fn observability(c: &mut Criterion) {
    let rt = runtime();
    let _runtime = rt.enter();
    let config = || {
        CacheConfig::builder()
            .prefix("benchobs")
            .env("bench")
            .key_secret(SECRET.to_vec())
            .build()
            .unwrap()
    };
    let off = TwoTierCache::new(config(), NoopObserver).unwrap();
    let metrics = std::sync::Arc::new(tiercache_monitoring::Metrics::new(
        tiercache_repository::schema().schema.entities(),
    ));
    let on = TwoTierCache::with_observer(config(), metrics).unwrap();
    let mut group = c.benchmark_group("observability");
    for (name, cache) in [("l1_hit_metrics_off", &off), ("l1_hit_metrics_on", &on)] {
        let key = keys(cache).lead_by_id(1);
        rt.block_on(cache.get_or_load(key, || load(1))).unwrap();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                black_box(cache.get_or_load(black_box(key), || load(1)).await.unwrap())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = l1_hit, l2_hit_vs_bare_get, miss_then_load, envelope_and_keys, observability
}
criterion_main!(benches);
