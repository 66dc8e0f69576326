//! The same answers with or without Redis: one script of reads and writes, run against an
//! L1-only cache and an L1+L2 cache, compared with each other and with the source of truth.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use tiercache::{InvalidationSource, TwoTierCache};
use tiercache_tests::cache::{TestLead, build, config};
use tiercache_tests::{SHARED_REDIS_URL, unique_namespace};

#[derive(Clone, Copy, Debug)]
enum Step {
    Read(i64),
    Write(i64),
    Delete(i64),
}

/// A deterministic script over 20 leads: mostly reads, some updates and deletes.
fn script() -> Vec<Step> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..2000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let id = (state % 20) as i64;
            match (state >> 8) % 20 {
                0 => Step::Write(id),
                1 => Step::Delete(id),
                _ => Step::Read(id),
            }
        })
        .collect()
}

async fn run(cache: &TwoTierCache) -> Vec<Option<TestLead>> {
    let db: Arc<Mutex<HashMap<i64, TestLead>>> = Arc::new(Mutex::new(
        (0..15).map(|id| (id, TestLead::new(id, 0))).collect(),
    ));
    let mut answers = Vec::new();
    for step in script() {
        match step {
            Step::Read(id) => {
                let source = db.clone();
                let v = cache
                    .get_or_load(
                        tiercache_repository::keys(cache).lead_by_id(id),
                        move || async move {
                            Ok::<_, io::Error>(source.lock().unwrap().get(&id).cloned())
                        },
                    )
                    .await
                    .unwrap();
                let truth = db.lock().unwrap().get(&id).cloned();
                let answer = v.map(|v| (*v).clone());
                assert_eq!(
                    answer, truth,
                    "read of {id} disagrees with the source of truth"
                );
                answers.push(answer);
            }
            Step::Write(id) | Step::Delete(id) => {
                {
                    let mut db = db.lock().unwrap();
                    match step {
                        Step::Write(_) => {
                            let version = db.get(&id).map_or(0, |l| l.version + 1);
                            db.insert(id, TestLead::new(id, version));
                        }
                        _ => {
                            db.remove(&id);
                        }
                    }
                }
                let keys = tiercache_repository::keys(cache);
                cache
                    .invalidate(
                        keys.lead_changed(id, 1, &format!("+1646200{id:04}")),
                        InvalidationSource::Write,
                    )
                    .await;
            }
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_only_answers_exactly_as_l1_and_l2() {
    let (l1_only, rec_l1) = build(config(&unique_namespace("modes"), None));
    let (both, rec_both) = build(config(&unique_namespace("modes"), Some(SHARED_REDIS_URL)));
    assert!(!l1_only.has_l2() && both.has_l2());
    let a = run(&l1_only).await;
    let b = run(&both).await;
    assert_eq!(a.len(), b.len());
    assert_eq!(a, b);
    // Both really cached: far fewer loads than reads.
    let reads = a.len() as u64;
    let loads = |r: &tiercache_tests::Recorder| r.sum("load.lead");
    assert!(
        loads(&rec_l1) < reads / 3,
        "{} loads for {reads} reads",
        loads(&rec_l1)
    );
    assert_eq!(
        loads(&rec_l1),
        loads(&rec_both),
        "the same misses in both modes"
    );
    assert_eq!(rec_l1.sum("lookup.lead.l2"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_only_answers_the_same_and_keeps_nothing_in_process() {
    let (redis_only, rec) =
        build(config(&unique_namespace("modes"), Some(SHARED_REDIS_URL)).l1_enabled(false));
    assert!(!redis_only.has_l1() && redis_only.has_l2());
    let (l1_only, _) = build(config(&unique_namespace("modes"), None));
    assert_eq!(run(&redis_only).await, run(&l1_only).await);
    assert_eq!(
        rec.sum("lookup.lead.l1.hit"),
        0,
        "nothing served from process memory"
    );
    assert!(rec.count("lookup.lead.l2.hit") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_only_still_loads_a_cold_key_once_per_instance() {
    let (cache, rec) =
        build(config(&unique_namespace("modes"), Some(SHARED_REDIS_URL)).l1_enabled(false));
    let key = tiercache_repository::keys(&cache).lead_by_id(1);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(key, || async {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok::<_, io::Error>(Some(TestLead::new(1, 1)))
                    })
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(*task.await.unwrap(), TestLead::new(1, 1));
    }
    assert_eq!(rec.sum("load.lead"), 1);
}
