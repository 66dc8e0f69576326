//! What an L1 hit allocates: nothing, through the cache, through the repository the service
//! reads with (Redis on, the Prometheus metrics as observer, as in production), and for the
//! webhook's whole call (organization, lead, context and greeting).
//!
//! Its own test binary, because it counts every allocation of the process with a global
//! allocator. The test runs on a current-thread runtime and an L1 hit never waits, so no other
//! task runs while a hit is counted: the count is the hit's own.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::future::Future;
use std::sync::Arc;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tiercache::{NoopObserver, TwoTierCache};
use tiercache_repository::Phone;
use tiercache_tests::cache::{TestLead, config};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{SHARED_REDIS_URL, unique_namespace};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Hits counted per path.
const HITS: usize = 10_000;

/// moka applies its read log every 64 L1 reads (its housekeeping, which allocates a few
/// buffers); the reads in between allocate nothing. This allows one L1 read in 32 to
/// allocate, so anything that allocates on every read, or on every other, fails.
const READS_PER_ALLOCATION: usize = 32;

#[tokio::test]
async fn an_l1_hit_allocates_nothing() {
    // The cache's own API, observed by nothing.
    let ns = unique_namespace("allocs");
    let cache = TwoTierCache::new(
        config(&ns, Some(SHARED_REDIS_URL)).build().unwrap(),
        NoopObserver,
    )
    .unwrap();
    let key = tiercache_repository::keys(&cache).lead_by_phone("+16462000042", 3);
    let lead = TestLead::new(42, 1);
    let loaded = cache
        .get_or_load(key, || async {
            Ok::<_, std::io::Error>(Some(TestLead::new(42, 1)))
        })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some(&lead));
    let cache_hits = allocating_hits(|| async {
        let hit = cache
            .get_or_load(key, || async { Ok::<_, std::io::Error>(None::<TestLead>) })
            .await
            .unwrap();
        assert!(
            hit.is_some_and(|hit| *hit == lead),
            "a hit serves the loaded value"
        );
    })
    .await;

    // The repository of a running server, wired as the service wires it.
    let db = TestDb::seeded("allocs", 1, 10).await;
    let prefix = unique_namespace("allocsrepo");
    let server = TestServer::start(&db, Options::new(&prefix, Some(SHARED_REDIS_URL))).await;
    let repo = &server.state.repo;
    let (phone, org_id, called): (String, i64, String) = sqlx::query_as(
        "SELECT l.phone, l.org_id, o.phone FROM leads l JOIN organizations o ON o.id = l.org_id
         ORDER BY l.id LIMIT 1",
    )
    .fetch_one(repo.pool())
    .await
    .unwrap();
    let (phone, called) = (
        Phone::parse(&phone).unwrap(),
        Phone::parse(&called).unwrap(),
    );
    let first = repo.lead_by_phone(&phone, org_id).await.unwrap().unwrap();
    let repo_hits = allocating_hits(|| async {
        let hit = repo.lead_by_phone(&phone, org_id).await.unwrap();
        assert!(
            hit.is_some_and(|hit| Arc::ptr_eq(&hit, &first)),
            "served from L1"
        );
    })
    .await;

    let view = repo.call(&called, &phone).await.unwrap();
    assert!(view.org.is_some() && view.lead.is_some() && view.greeting.is_some());
    let call_hits = allocating_hits(|| async {
        let hit = repo.call(&called, &phone).await.unwrap();
        assert!(
            hit.greeting
                .is_some_and(|g| Some(&g) == view.greeting.as_ref())
        );
    })
    .await;

    // Path, L1 reads per hit, (hits that allocated, allocations).
    for (path, reads, (allocating, allocations)) in [
        ("TwoTierCache::get_or_load", 1, cache_hits),
        ("Repository::lead_by_phone", 1, repo_hits),
        ("Repository::call", 4, call_hits),
    ] {
        eprintln!("{path}: {allocating} of {HITS} hits allocated ({allocations} allocations)");
        assert!(
            allocating <= HITS * reads / READS_PER_ALLOCATION,
            "{allocating} of {HITS} hits through {path} allocated ({allocations} allocations)"
        );
    }
}

/// Runs `hit` [`HITS`] times; returns how many of them allocated, and how many allocations
/// they made in all.
async fn allocating_hits<F, Fut>(mut hit: F) -> (usize, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let (mut allocating, mut allocations) = (0, 0);
    for _ in 0..HITS {
        let region = Region::new(GLOBAL);
        hit().await;
        let change = region.change();
        if change.allocations + change.reallocations > 0 {
            allocating += 1;
            allocations += change.allocations + change.reallocations;
        }
    }
    (allocating, allocations)
}
