//! Single-flight on one instance: a stampede on a cold key costs one load.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tiercache_tests::cache::{TestLead, build, config};
use tiercache_tests::{SHARED_REDIS_URL, unique_namespace};

async fn stampede(redis_url: Option<&str>) {
    let ns = unique_namespace("stampede");
    let (cache, rec) = build(config(&ns, redis_url));
    let key = tiercache_repository::keys(&cache).lead_by_id(77);
    let calls = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(key, || async move {
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        // A slow query, so that every caller arrives while it runs.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, io::Error>(Some(TestLead::new(77, n)))
                    })
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    let mut versions = HashSet::new();
    let mut pointers = HashSet::new();
    for task in tasks {
        let value = task.await.unwrap();
        versions.insert(value.version);
        pointers.insert(Arc::as_ptr(&value) as usize);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader call");
    assert_eq!(versions.len(), 1, "one distinct value");
    assert_eq!(
        pointers.len(),
        1,
        "every caller shares the one loaded value"
    );
    assert_eq!(rec.count("load.lead.found"), 1);
    assert_eq!(
        rec.count("coalesced.lead") + rec.count("lookup.lead.l1.hit"),
        499,
        "every other caller waited for the load or hit its result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_callers_one_load_with_redis() {
    stampede(Some(SHARED_REDIS_URL)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_callers_one_load_l1_only() {
    stampede(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_shared_with_its_waiters_not_retried_by_each() {
    let ns = unique_namespace("failshare");
    let (cache, _) = build(config(&ns, None));
    let key = tiercache_repository::keys(&cache).context(1);
    let calls = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load::<TestLead, _, _, _>(key, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(io::Error::other("database down"))
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_err());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the failing database was asked once"
    );
}
