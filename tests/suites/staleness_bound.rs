//! The promised staleness bound, checked under load: two instances (separate caches, L1s and
//! pools) on one throwaway Redis; one writes (commit, then invalidate), both read; every read
//! is recorded with when it began and the version it got, and the checker fails on any read
//! that began more than the bound after a newer version had committed. Once with Redis
//! healthy, once with Redis killed and restarted in the middle.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tiercache::{Invalidation, InvalidationSource, TwoTierCache};
use tiercache_tests::cache::{TestLead, config};
use tiercache_tests::{RedisServer, unique_namespace};

const BOUND: Duration = Duration::from_millis(1000);
const KEYS: i64 = 40;
const PHASE: Duration = Duration::from_millis(1500);
/// Bounds each task's loop, whatever the clock does.
const MAX_OPS: usize = 400_000;

/// The source of truth: each key's committed versions, with when each committed.
#[derive(Default)]
struct Db {
    versions: Mutex<HashMap<i64, Vec<(u32, Instant)>>>,
}

impl Db {
    fn current(&self, id: i64) -> u32 {
        let versions = self.versions.lock().unwrap();
        versions.get(&id).and_then(|v| v.last()).map_or(0, |v| v.0)
    }

    fn commit(&self, id: i64) -> u32 {
        let mut versions = self.versions.lock().unwrap();
        let list = versions
            .entry(id)
            .or_insert_with(|| vec![(0, Instant::now())]);
        let next = list.last().map_or(0, |v| v.0) + 1;
        list.push((next, Instant::now()));
        next
    }

    /// When the first version newer than `version` committed, if one did.
    fn superseded_at(&self, id: i64, version: u32) -> Option<Instant> {
        let versions = self.versions.lock().unwrap();
        versions
            .get(&id)?
            .iter()
            .find(|(v, _)| *v > version)
            .map(|(_, at)| *at)
    }
}

struct Read {
    id: i64,
    began: Instant,
    version: u32,
}

fn instance(ns: &str, url: &str) -> TwoTierCache {
    TwoTierCache::new(
        config(ns, Some(url))
            .staleness_bound(BOUND)
            .recovery(Duration::from_secs(2))
            .build()
            .unwrap(),
        tiercache::NoopObserver,
    )
    .unwrap()
}

async fn read(cache: &TwoTierCache, db: &Arc<Db>, id: i64) -> Read {
    let began = Instant::now();
    let source = db.clone();
    let lead = cache
        .get_or_load(
            tiercache_repository::keys(cache).lead_by_id(id),
            move || async move { Ok::<_, io::Error>(Some(TestLead::new(id, source.current(id)))) },
        )
        .await
        .unwrap()
        .unwrap();
    Read {
        id,
        began,
        version: lead.version,
    }
}

/// Runs readers on both instances and a writer on `a` until `until`; returns every read.
async fn workload(a: &TwoTierCache, b: &TwoTierCache, db: &Arc<Db>, until: Instant) -> Vec<Read> {
    let mut tasks = Vec::new();
    for (n, cache) in [a, b, b].into_iter().enumerate() {
        let (cache, db) = (cache.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
            let mut reads = Vec::new();
            while Instant::now() < until && reads.len() < MAX_OPS {
                reads.push(read(&cache, &db, rng.random_range(0..KEYS)).await);
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let writer = {
        let (a, db) = (a.clone(), db.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            for _ in 0..MAX_OPS {
                if Instant::now() >= until {
                    break;
                }
                let id = rng.random_range(0..KEYS);
                db.commit(id);
                a.invalidate(
                    Invalidation::key(tiercache_repository::keys(&a).lead_by_id(id)),
                    InvalidationSource::Write,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let mut reads = Vec::new();
    for task in tasks {
        reads.extend(task.await.unwrap());
    }
    writer.await.unwrap();
    reads
}

/// The worst staleness over `reads` (how long after a newer version committed a read began
/// and still got the older one), and how many reads exceeded the bound.
fn check(db: &Db, reads: &[Read]) -> (Duration, usize) {
    let mut worst = Duration::ZERO;
    let mut over = 0;
    for r in reads {
        if let Some(at) = db.superseded_at(r.id, r.version) {
            let late = r.began.saturating_duration_since(at);
            worst = worst.max(late);
            if late > BOUND {
                over += 1;
            }
        }
    }
    (worst, over)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_serves_a_value_older_than_the_bound_after_a_write() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("bound");
    let (a, b) = (instance(&ns, &server.url()), instance(&ns, &server.url()));
    let db = Arc::new(Db::default());
    let reads = workload(&a, &b, &db, Instant::now() + 3 * PHASE).await;
    let (worst, over) = check(&db, &reads);
    println!(
        "staleness, Redis healthy: {} reads, worst {worst:?}, over the {BOUND:?} bound: {over}",
        reads.len()
    );
    assert!(
        reads.len() > 1_000,
        "the workload ran: {} reads",
        reads.len()
    );
    assert_eq!(over, 0, "reads older than the bound (worst {worst:?})");
}

/// A fault injected a third of the way in and healed at two thirds.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Killed, then restarted empty.
    Kill,
    /// SIGSTOP, then SIGCONT: Redis comes back with everything it held, including values
    /// whose deletes timed out meanwhile (owed and replayed by the writer; until then the
    /// readers' recovery period keeps them from being trusted).
    Pause,
}

/// Runs the workload over a fault and checks the bound.
async fn bound_over(fault: Fault) {
    let mut server = RedisServer::start().await;
    let ns = unique_namespace("boundfault");
    let (a, b) = (instance(&ns, &server.url()), instance(&ns, &server.url()));
    let db = Arc::new(Db::default());
    let until = Instant::now() + 3 * PHASE;
    let load = {
        let (a, b, db) = (a.clone(), b.clone(), db.clone());
        tokio::spawn(async move { workload(&a, &b, &db, until).await })
    };
    tokio::time::sleep(PHASE).await;
    match fault {
        Fault::Kill => server.stop().await,
        Fault::Pause => server.pause(),
    }
    tokio::time::sleep(PHASE).await;
    match fault {
        Fault::Kill => server.restart().await,
        Fault::Pause => server.resume(),
    }
    let reads = load.await.unwrap();
    let (worst, over) = check(&db, &reads);
    println!(
        "staleness, Redis {fault:?}: {} reads, worst {worst:?}, over the {BOUND:?} bound: {over}",
        reads.len()
    );
    assert!(reads.len() > 500, "the workload ran: {} reads", reads.len());
    assert_eq!(over, 0, "reads older than the bound (worst {worst:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_when_redis_is_killed_and_restarted_mid_run() {
    bound_over(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_when_redis_is_paused_and_keeps_its_stale_data() {
    bound_over(Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bus_live_l1_is_trusted_until_its_ttl_not_just_half_the_bound() {
    // The other side of the bound: while the bus confirms, values older than the age cap
    // (half the bound) are still L1 hits. A heartbeat that never confirms would make every
    // one of them a reload.
    let server = RedisServer::start().await;
    let ns = unique_namespace("trusted");
    let (recorder, _) = tiercache_tests::Recorder::new();
    let recorder = Arc::new(recorder);
    let cache = TwoTierCache::with_observer(
        config(&ns, Some(&server.url()))
            .staleness_bound(Duration::from_millis(400))
            .build()
            .unwrap(),
        recorder.clone(),
    )
    .unwrap();
    let db = Arc::new(Db::default());
    read(&cache, &db, 1).await;
    // Past the age cap (200 ms) several times over: the age is what is being tested.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let hits = recorder.count("lookup.lead.l1.hit");
    read(&cache, &db, 1).await;
    assert_eq!(recorder.count("lookup.lead.l1.hit"), hits + 1, "an L1 hit");
    assert_eq!(recorder.count("load.lead.found"), 1, "loaded once");
}
