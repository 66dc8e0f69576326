//! Smoke test of `round_trip` (`src/bin/round_trip.rs`): a short run exits 0 and prints
//! every probe of both passes with figures; a bad flag is refused with a message. Timings
//! are printed by the binary, never asserted. Needs the shared PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn a_short_run_prints_every_probe_of_both_passes() {
    let output = Command::new(env!("CARGO_BIN_EXE_round_trip"))
        .args(["--commands", "400"])
        .output()
        .expect("running round_trip");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.contains("(pass "))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(
        rows.len(),
        8,
        "two probes × one and four in flight × two passes:\n{stdout}"
    );
    for row in &rows {
        assert_eq!(row.len(), 6, "{row:?}");
        let wall: f64 = row[2].parse().expect("a wall time");
        assert!(wall > 0.0, "a round trip takes time: {row:?}");
        let figures: Vec<f64> = row[3..]
            .iter()
            .map(|f| f.parse().expect("a figure"))
            .collect();
        assert!(
            (figures[0] + figures[1] - figures[2]).abs() < 0.11,
            "both = client + server: {row:?}"
        );
    }
}

#[test]
fn a_count_that_is_not_a_multiple_of_four_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_round_trip"))
        .args(["--commands", "10"])
        .output()
        .expect("running round_trip");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("multiple of four"), "{stderr}");
}
