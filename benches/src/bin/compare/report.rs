//! What the parent prints and writes: a line per run, the table of medians, one JSON line
//! per mode (stdout and `results.jsonl`), the chart, and the target ratios.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::chart;
use crate::results::{RunResult, Summary};

/// One run, on one line (printed as each child reports).
pub fn run_line(r: &RunResult) -> String {
    let mut line = format!(
        "{:<17} {:>9.0} ops/s  read p50 {:.1} µs p99 {:.1} µs  hit {:.4} (best {:.4})  \
         redis {:.2}/op  cpu {:.1} µs/op (process {:.1}, postgres {:.1}, redis {:.1})  \
         steal {:.2}  stampede {}  stale {} (≤ {:.1} ms)  errors {}",
        r.mode,
        r.ops_per_sec,
        r.read_p50_us,
        r.read_p99_us,
        r.hit_ratio,
        r.best_hit_ratio,
        r.redis_cmds_per_op,
        r.cpu_us_per_op,
        r.cpu_process_us_per_op,
        r.cpu_postgres_us_per_op,
        r.cpu_redis_us_per_op,
        r.cpu_steal,
        r.stampede_loader_runs,
        r.violations,
        r.stale_max_ms,
        r.errors
    );
    if let Some(error) = &r.first_error {
        line.push_str(&format!("  first error: {error}"));
    }
    if r.timed_out {
        line.push_str("  (--max-seconds passed: the window is short)");
    }
    if r.late > 0 {
        line.push_str(&format!("  late starts {}", r.late));
    }
    line
}

/// The table of medians.
pub fn print_table(summaries: &[Summary], rounds: usize) {
    println!();
    if rounds > 1 {
        println!(
            "medians of {rounds} rounds (stale reads and errors: all rounds; stampede: the \
             worst round)"
        );
    }
    println!(
        "{:<17} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>5} {:>5} {:>7} {:>8} {:>5} {:>8}",
        "mode",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "w p50",
        "w p99",
        "queries",
        "hit",
        "best",
        "redis/op",
        "CPU µs",
        "busy",
        "steal",
        "RSS MiB",
        "stampede",
        "stale",
        "stale ms",
    );
    for s in summaries {
        println!(
            "{:<17} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.0} {:>8.0} {:>8.0} {:>7.4} {:>7.4} {:>8.3} {:>7.1} {:>5.2} {:>5.2} {:>7.1} {:>8} {:>5} {:>8.1}{}",
            s.mode,
            s.ops_per_sec,
            s.read_p50_us,
            s.read_p99_us,
            s.read_p999_us,
            s.write_p50_us,
            s.write_p99_us,
            s.queries,
            s.hit_ratio,
            s.best_hit_ratio,
            s.redis_cmds_per_op,
            s.cpu_us_per_op,
            s.cpu_busy,
            s.cpu_steal,
            s.rss_mib,
            s.stampede_loader_runs,
            s.violations,
            s.stale_max_ms,
            match (s.errors, s.timed_out) {
                // Some are late in every mode (the timer's and the scheduler's slack);
                // far more than the bare map's means the mode fell behind.
                (0, false) if s.late * 100 > s.ops => format!(
                    "  ({} of {} operations started over 2 ms late)",
                    s.late, s.ops
                ),
                (0, false) => String::new(),
                (0, true) => "  (--max-seconds passed: the window is short)".to_owned(),
                (errors, _) => format!("  ({errors} failed operations)"),
            }
        );
    }
    println!(
        "p50/p99/p999: reads; w p50/p99: writes (write + invalidation), µs. queries: \
         statements in the measured window (read loads + updates). hit: 1 − read loads / \
         reads; best: the limit for a cache that deletes on write (a read misses only if its \
         lead was never read or was written since; Tiercache, which caches the row its \
         write returned on the writing instance, can pass it). redis/op: every client's commands, heartbeats included. \
         CPU µs: this process's, PostgreSQL's and Redis's CPU time per operation; busy: \
         the machine's busy share; steal: of it, the share the hypervisor gave to other \
         tenants (a window with much of it measured the neighbours too). stale: reads older \
         than the last write committed before they began; stale ms: the longest such a read \
         began after that write committed."
    );
    println!();
}

/// Prints one JSON line per mode and writes them to `out/results.jsonl`, and the chart to
/// `out/compare.svg`.
pub fn write_results(out: &Path, summaries: &[Summary]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("results.jsonl");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    for s in summaries {
        let line = serde_json::to_string(s).context("encoding a result")?;
        println!("{line}");
        writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    let svg = out.join("compare.svg");
    chart::draw(&svg, summaries)?;
    println!("wrote {} and {}", path.display(), svg.display());
    Ok(())
}

/// The ratios the targets are stated in, each with its target and whether this run
/// met it; with `--rate` (`open_loop`) every mode ran the same operations per second, so
/// only the latencies and counts compare.
pub fn print_targets(summaries: &[Summary], open_loop: bool) {
    let get = |mode: &str| summaries.iter().find(|s| s.mode == mode);
    let line = |what: &str, value: Option<f64>, target: &str, met: fn(f64) -> bool| match value {
        Some(v) => println!(
            "  {what:<44} {v:>9.3}   target {target:<10} {}",
            if met(v) { "met" } else { "MISSED" }
        ),
        None => println!(
            "  {what:<44} {:>9}   target {target:<10} (mode not run)",
            "-"
        ),
    };
    let ratio =
        |a: &str, b: &str, f: fn(&Summary) -> f64| get(a).zip(get(b)).map(|(a, b)| f(a) / f(b));
    let tiercache = get("tiercache");
    println!("targets (this run's medians):");
    if open_loop {
        println!("  (no ops/s ratios: every mode was offered the same rate)");
    } else {
        line(
            "tiercache ÷ bound, ops/s",
            ratio("tiercache", "bound", |s| s.ops_per_sec),
            "≥ 0.9",
            |v| v >= 0.9,
        );
        line(
            "tiercache ÷ moka-redis, ops/s",
            ratio("tiercache", "moka-redis", |s| s.ops_per_sec),
            "> 1",
            |v| v > 1.0,
        );
        line(
            "tiercache ÷ redis-readthrough, ops/s",
            ratio("tiercache", "redis-readthrough", |s| s.ops_per_sec),
            "≥ 1.5",
            |v| v >= 1.5,
        );
        for other in ["bentocache", "cashews"] {
            line(
                &format!("tiercache ÷ {other}, ops/s"),
                ratio("tiercache", other, |s| s.ops_per_sec),
                "> 1",
                |v| v > 1.0,
            );
        }
    }
    line(
        "tiercache read p50, µs",
        tiercache.map(|s| s.read_p50_us),
        "< 5",
        |v| v < 5.0,
    );
    line(
        "tiercache ÷ redis-readthrough, read p99",
        ratio("tiercache", "redis-readthrough", |s| s.read_p99_us),
        "≤ 1",
        |v| v <= 1.0,
    );
    line(
        "tiercache hit ratio gap to the best",
        tiercache.map(|s| s.best_hit_ratio - s.hit_ratio),
        "≤ 0.005",
        |v| v <= 0.005,
    );
    line(
        "tiercache stampede loader runs (500 callers)",
        tiercache.map(|s| s.stampede_loader_runs as f64),
        "1",
        |v| v == 1.0,
    );
    println!(
        "CPU per operation (this process, PostgreSQL, Redis; steadier than ops/s on a noisy host):"
    );
    for other in [
        "bound",
        "moka-redis",
        "redis-readthrough",
        "bentocache",
        "cashews",
    ] {
        if let Some(v) = ratio("tiercache", other, |s| s.cpu_us_per_op) {
            println!("  {:<44} {v:>9.3}", format!("tiercache ÷ {other}"));
        }
    }
    println!();
}
