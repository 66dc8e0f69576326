//! What a child reports for one run (one JSON line on its stdout), and the per-mode
//! summary the parent makes of a mode's rounds.

use serde::{Deserialize, Serialize};
use tiercache_benches::cpu::CpuTicks;

/// One mode's run in one round, as its child process measured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The mode's name.
    pub mode: String,
    /// The round (1-based).
    pub round: usize,
    /// Operations started in the measured window.
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// From the window's start to the last of its operations' end, in seconds.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// Read latency percentiles, in microseconds.
    pub read_p50_us: f64,
    /// 99th percentile of reads.
    pub read_p99_us: f64,
    /// 99.9th percentile of reads.
    pub read_p999_us: f64,
    /// Write latency percentiles (write and invalidation), in microseconds.
    pub write_p50_us: f64,
    /// 99th percentile of writes.
    pub write_p99_us: f64,
    /// 99.9th percentile of writes.
    pub write_p999_us: f64,
    /// SELECTs (loads) for reads in the window.
    pub read_queries: u64,
    /// UPDATEs in the window.
    pub write_queries: u64,
    /// `1 − read_queries / reads`.
    pub hit_ratio: f64,
    /// The best hit ratio the window's operations allow (see `Trace::best_hit_ratio`).
    pub best_hit_ratio: f64,
    /// Commands Redis ran in the window, all clients (`INFO commandstats`).
    pub redis_commands: u64,
    /// `redis_commands / ops`.
    pub redis_cmds_per_op: f64,
    /// CPU time this process, PostgreSQL and Redis took in the window, per operation, µs.
    #[serde(default)]
    pub cpu_us_per_op: f64,
    /// Of which this process's (the mode and the load generator), µs.
    #[serde(default)]
    pub cpu_process_us_per_op: f64,
    /// Of which PostgreSQL's, µs.
    #[serde(default)]
    pub cpu_postgres_us_per_op: f64,
    /// Of which Redis's, µs.
    #[serde(default)]
    pub cpu_redis_us_per_op: f64,
    /// The machine's busy share in the window (1.0: every core all the time).
    #[serde(default)]
    pub cpu_busy: f64,
    /// Of that, the share the hypervisor stole for other tenants.
    #[serde(default)]
    pub cpu_steal: f64,
    /// Resident memory at the end of the window, in bytes.
    pub rss_bytes: u64,
    /// Resident memory once the mode was built, before the first operation, in bytes.
    pub rss_setup_bytes: u64,
    /// Loader runs for the stampede probe's concurrent reads of one cold key.
    pub stampede_loader_runs: u64,
    /// Reads older than the last write committed before they began, warm-up included.
    pub violations: u64,
    /// The longest such a read began after that write had committed, ms.
    #[serde(default)]
    pub stale_max_ms: f64,
    /// Operations that failed, warm-up included.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Whether `--max-seconds` passed before the operations were done.
    pub timed_out: bool,
    /// With `--rate`: measured operations that started over 2 ms after they were due
    /// (every worker busy, or the host late to run the timer).
    #[serde(default)]
    pub late: u64,
}

/// A mode over its rounds: medians, but sums for violations and errors (one in any round
/// shows) and the worst round for the stampede.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The mode's name.
    pub mode: String,
    /// Rounds that reported.
    pub rounds: usize,
    /// Median operations per second.
    pub ops_per_sec: f64,
    /// Median read p50, µs.
    pub read_p50_us: f64,
    /// Median read p99, µs.
    pub read_p99_us: f64,
    /// Median read p999, µs.
    pub read_p999_us: f64,
    /// Median write p50, µs.
    pub write_p50_us: f64,
    /// Median write p99, µs.
    pub write_p99_us: f64,
    /// Median write p999, µs.
    pub write_p999_us: f64,
    /// Median statements (reads' and writes') per measured window.
    pub queries: f64,
    /// Median statements per operation.
    pub queries_per_op: f64,
    /// Median hit ratio.
    pub hit_ratio: f64,
    /// Median best hit ratio.
    pub best_hit_ratio: f64,
    /// Median Redis commands per operation.
    pub redis_cmds_per_op: f64,
    /// Median CPU (this process, PostgreSQL, Redis) per operation, µs.
    pub cpu_us_per_op: f64,
    /// Median CPU of the mode's process per operation, µs.
    pub cpu_process_us_per_op: f64,
    /// Median CPU of PostgreSQL per operation, µs.
    pub cpu_postgres_us_per_op: f64,
    /// Median CPU of Redis per operation, µs.
    pub cpu_redis_us_per_op: f64,
    /// Median busy share of the machine.
    pub cpu_busy: f64,
    /// Median share stolen by the hypervisor.
    pub cpu_steal: f64,
    /// Median resident memory at the end of the window, MiB.
    pub rss_mib: f64,
    /// Median resident memory before the first operation, MiB.
    pub rss_setup_mib: f64,
    /// The most loader runs any round's stampede probe saw.
    pub stampede_loader_runs: u64,
    /// Stale reads, all rounds.
    pub violations: u64,
    /// The longest a stale read began after the newer write committed, any round, ms.
    pub stale_max_ms: f64,
    /// Failed operations, all rounds.
    pub errors: u64,
    /// Whether any round's `--max-seconds` passed before its operations were done.
    pub timed_out: bool,
    /// Operations that started late for `--rate`, all rounds.
    pub late: u64,
    /// Operations measured, all rounds.
    pub ops: u64,
}

impl RunResult {
    /// Fills the CPU figures from the counters at the window's start and end.
    pub fn set_cpu(&mut self, start: CpuTicks, end: CpuTicks) {
        let per_op = |seconds: f64| seconds * 1e6 / self.ops.max(1) as f64;
        let [process, postgres, redis] = end.work_split_since(start).map(per_op);
        let shares = end.shares_since(start).unwrap_or_default();
        self.cpu_us_per_op = process + postgres + redis;
        self.cpu_process_us_per_op = process;
        self.cpu_postgres_us_per_op = postgres;
        self.cpu_redis_us_per_op = redis;
        self.cpu_busy = shares.busy;
        self.cpu_steal = shares.steal;
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => 0.0,
        n if n.is_multiple_of(2) => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    }
}

impl Summary {
    /// The summary of `mode`'s runs; `None` when no round reported.
    pub fn of(mode: &str, runs: &[RunResult]) -> Option<Summary> {
        if runs.is_empty() {
            return None;
        }
        let of = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
        const MIB: f64 = 1024.0 * 1024.0;
        Some(Summary {
            mode: mode.to_owned(),
            rounds: runs.len(),
            ops_per_sec: of(|r| r.ops_per_sec),
            read_p50_us: of(|r| r.read_p50_us),
            read_p99_us: of(|r| r.read_p99_us),
            read_p999_us: of(|r| r.read_p999_us),
            write_p50_us: of(|r| r.write_p50_us),
            write_p99_us: of(|r| r.write_p99_us),
            write_p999_us: of(|r| r.write_p999_us),
            queries: of(|r| (r.read_queries + r.write_queries) as f64),
            queries_per_op: of(|r| (r.read_queries + r.write_queries) as f64 / r.ops.max(1) as f64),
            hit_ratio: of(|r| r.hit_ratio),
            best_hit_ratio: of(|r| r.best_hit_ratio),
            redis_cmds_per_op: of(|r| r.redis_cmds_per_op),
            cpu_us_per_op: of(|r| r.cpu_us_per_op),
            cpu_process_us_per_op: of(|r| r.cpu_process_us_per_op),
            cpu_postgres_us_per_op: of(|r| r.cpu_postgres_us_per_op),
            cpu_redis_us_per_op: of(|r| r.cpu_redis_us_per_op),
            cpu_busy: of(|r| r.cpu_busy),
            cpu_steal: of(|r| r.cpu_steal),
            rss_mib: of(|r| r.rss_bytes as f64) / MIB,
            rss_setup_mib: of(|r| r.rss_setup_bytes as f64) / MIB,
            stampede_loader_runs: runs
                .iter()
                .map(|r| r.stampede_loader_runs)
                .max()
                .unwrap_or(0),
            violations: runs.iter().map(|r| r.violations).sum(),
            stale_max_ms: runs.iter().map(|r| r.stale_max_ms).fold(0.0, f64::max),
            errors: runs.iter().map(|r| r.errors).sum(),
            timed_out: runs.iter().any(|r| r.timed_out),
            late: runs.iter().map(|r| r.late).sum(),
            ops: runs.iter().map(|r| r.ops).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
