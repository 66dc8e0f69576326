//! L1 on its own: bounded by bytes, not entries, and evictions reported.

use std::io;

use tiercache_tests::cache::{TestLead, build, config};
use tiercache_tests::unique_namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_is_bounded_by_bytes_and_reports_evictions() {
    let max_bytes = 64 * 1024;
    let (cache, rec) = build(config(&unique_namespace("bytes"), None).l1_max_bytes(max_bytes));
    // 2,000 leads with 1 KiB names: about 2.3 MiB encoded, 35 times the bound.
    for id in 0..2000 {
        let lead = TestLead {
            name: "x".repeat(1024),
            ..TestLead::new(id, 1)
        };
        cache
            .get_or_load(
                tiercache_repository::keys(&cache).lead_by_id(id),
                move || async move { Ok::<_, io::Error>(Some(lead)) },
            )
            .await
            .unwrap();
    }
    cache.run_pending_tasks().await;
    let stats = cache.l1_stats();
    assert_eq!(stats.max_bytes, max_bytes);
    assert!(stats.weighted_bytes <= max_bytes, "{stats:?}");
    assert!(
        stats.weighted_bytes > max_bytes / 2,
        "the bound is used, not just respected: {stats:?}"
    );
    // Each entry is charged its encoded size (1 KiB and a bit) plus overhead, so about 50 fit.
    assert!((30..=64).contains(&stats.entries), "{stats:?}");
    assert!(
        rec.count("evicted.lead.size") >= 1900,
        "evictions reported: {}",
        rec.count("evicted.lead.size")
    );

    // Small values: the same bound holds many more of them.
    let (small, _) = build(config(&unique_namespace("bytes"), None).l1_max_bytes(max_bytes));
    for id in 0..2000 {
        small
            .get_or_load(
                tiercache_repository::keys(&small).lead_by_id(id),
                move || async move { Ok::<_, io::Error>(Some(TestLead::new(id, 1))) },
            )
            .await
            .unwrap();
    }
    small.run_pending_tasks().await;
    assert!(
        small.l1_stats().entries > 5 * stats.entries,
        "{:?}",
        small.l1_stats()
    );
}
