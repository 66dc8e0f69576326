//! Smoke test of the comparison binary (`src/bin/compare/`): a quick run over a small
//! data set exits 0 and writes one result per mode, with no stale read from the modes that
//! promise none. Timings are printed by the binary, never asserted. Needs the shared
//! PostgreSQL and Redis, as the binary does, and for the modes in other languages Node.js and
//! Python (their packages are installed from the registries on the first run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

const MODES: [&str; 9] = [
    "postgres",
    "redis-readthrough",
    "moka-redis",
    "bound",
    "tiercache",
    "tiercache-l1",
    "tiercache-x2",
    "bentocache",
    "cashews",
];

/// A database of this run's own for the binary (`COMPARE_DATABASE_URL`), dropped when the
/// test ends, passed or failed, so that none is left behind on the shared server.
struct ScratchDatabase {
    url: String,
}

impl ScratchDatabase {
    fn new(name: &str) -> ScratchDatabase {
        let url = format!(
            "postgres://postgres@127.0.0.1:5432/tiercache_{}_{}",
            name.replace('-', "_"),
            std::process::id()
        );
        drop_database(&url);
        ScratchDatabase { url }
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        drop_database(&self.url);
    }
}

/// Drops the database at `url` if it exists; a failure is printed, not raised (it may run
/// while a failed test unwinds).
fn drop_database(url: &str) {
    use sqlx::migrate::MigrateDatabase as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime to drop the database");
    if let Err(e) = runtime.block_on(sqlx::Postgres::drop_database(url)) {
        eprintln!("could not drop {url}: {e}");
    }
}

/// Runs the binary with `args` on a database of its own, its output under `name` in the
/// target's scratch folder; asserts it exits 0 and returns its standard output and
/// `results.jsonl`.
fn run_compare(name: &str, args: &[&str]) -> (String, String) {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&out);
    let database = ScratchDatabase::new(name);
    let output = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(args)
        .env("COMPARE_DATABASE_URL", &database.url)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running the compare binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "compare exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(std::fs::metadata(out.join("compare.svg")).unwrap().len() > 0);
    let text = std::fs::read_to_string(out.join("results.jsonl")).expect("results.jsonl");
    (stdout, text)
}

#[test]
fn a_quick_run_reports_every_mode_and_no_stale_read_from_tiercache() {
    let (_, text) = run_compare("compare-smoke", &["--quick", "--leads", "2000"]);
    let results: HashMap<String, Value> = text
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            (value["mode"].as_str().expect("a mode").to_owned(), value)
        })
        .collect();
    assert_eq!(
        text.lines().count(),
        MODES.len(),
        "one line per mode:\n{text}"
    );
    for mode in MODES {
        let result = results
            .get(mode)
            .unwrap_or_else(|| panic!("no result for {mode}"));
        assert_eq!(result["rounds"], 1, "{mode}: {result}");
        assert!(
            result["ops_per_sec"].as_f64().unwrap() > 0.0,
            "{mode}: {result}"
        );
        assert_eq!(result["errors"], 0, "{mode}: {result}");
    }
    for mode in ["postgres", "tiercache", "tiercache-l1", "tiercache-x2"] {
        let result = &results[mode];
        if mode == "tiercache-x2" {
            // Two instances may serve a stale value until the bus delivers the other's
            // invalidation (the staleness bound); counted, not failed.
            assert!(result["violations"].as_u64().is_some(), "{result}");
            continue;
        }
        assert_eq!(result["violations"], 0, "{mode}: {result}");
    }
    // The engine merges concurrent loads of one cold key, across instances too.
    assert_eq!(results["tiercache"]["stampede_loader_runs"], 1);
    assert_eq!(results["tiercache-l1"]["stampede_loader_runs"], 1);
}

#[test]
fn an_open_loop_run_offers_its_rate_and_no_more() {
    let rate = 2_000.0;
    // Its own data set (each run has a database of its own), as the other test may run
    // meanwhile and resets the rows it wrote.
    let (stdout, text) = run_compare(
        "compare-smoke-rate",
        &[
            "--quick",
            "--leads",
            "1000",
            "--rate",
            "2000",
            "--modes",
            "redis-readthrough,tiercache",
        ],
    );
    assert!(stdout.contains("open loop"), "{stdout}");
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        let result: Value = serde_json::from_str(line).expect("a JSON line");
        let ops_per_sec = result["ops_per_sec"].as_f64().unwrap();
        // Never faster than offered (the window spans every due time); slower only if the
        // machine could not keep up, which it can at this rate with room to spare.
        assert!(
            ops_per_sec <= rate * 1.05 && ops_per_sec >= rate * 0.5,
            "{result}"
        );
        assert_eq!(result["errors"], 0, "{result}");
        assert!(result["late"].as_u64().is_some(), "{result}");
    }
}
