//! One mode's run, in a child process of its own: build the mode, replay the trace through a
//! warm-up and a measured window while checking every read's freshness, probe a stampede,
//! and report one [`RunResult`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use tiercache_repository::model::Lead;
use tokio::sync::{Mutex, Notify};

use crate::args::{Args, ChildArgs};
use crate::histogram::Histogram;
use crate::modes::{Backend, Leads, QueryCounts, version};
use crate::results::RunResult;
use tiercache_benches::cpu::CpuTicks;
use tiercache_benches::redis_connection;

use crate::services::{Env, redis_command_calls, rss_bytes};
use crate::trace::Trace;

/// Concurrent reads in the stampede probe.
const STAMPEDE_CALLERS: usize = 500;
/// How long the probe's loader takes.
const STAMPEDE_DELAY: Duration = Duration::from_millis(50);
/// The probe's bound: far over one load, far under the child's deadline.
const STAMPEDE_TIMEOUT: Duration = Duration::from_secs(15);
/// Locks that take writes to one lead in turn (a lead's lock is `lead % WRITE_STRIPES`).
const WRITE_STRIPES: usize = 1024;

/// Runs `child`'s mode and returns what it measured.
pub fn run(args: &Args, child: &ChildArgs) -> anyhow::Result<RunResult> {
    // Warnings and errors (a breaker opening, the bus reconnecting) go to stderr, which the
    // parent passes through; `RUST_LOG` shows more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The runtime a service on this machine would have: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .thread_name(child.mode.name())
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(run_mode(args, child))
}

/// Everything the workers share.
struct Shared {
    trace: Trace,
    leads: Leads,
    backend: Arc<Backend>,
    /// Per lead, the version of its last write that had committed and been invalidated.
    committed: Vec<AtomicU32>,
    /// Per lead, when that version was stored there, in nanoseconds since `start`.
    committed_at: Vec<AtomicU64>,
    /// When the run started: the origin of `committed_at`.
    start: Instant,
    /// Writes to one lead take turns, so its versions commit in order.
    write_turns: Vec<Mutex<()>>,
    /// The next operation's position in the replay.
    next: AtomicU64,
    /// The first measured position: the warm-up is the positions before it.
    measure_from: u64,
    /// The position past the last measured one.
    end: u64,
    /// Told when the operation at `measure_from` is taken: the counters are read then.
    measuring: Notify,
    /// When the run stops whether or not its operations are done (`--max-seconds`).
    deadline: Instant,
    /// With `--rate`: when each position is due.
    pace: Option<Pace>,
}

/// An open loop's timetable: position `i` is due `i` intervals after the first.
struct Pace {
    first: Instant,
    interval_ns: f64,
}

/// A start later than this after its due time is counted: every worker was busy (the mode
/// fell behind), or the host did not run the timer's thread in time. Tokio's timer rounds a
/// deadline up to its millisecond tick and its poll's timeout up to a millisecond too, so
/// up to 2 ms late is the timer's own slack; on the 2-core host of `benches/README.md`
/// 1–2 % of starts were later than that in every mode, the bare map's included.
const LATE: Duration = Duration::from_millis(2);

impl Pace {
    fn due(&self, index: u64) -> Instant {
        self.first + Duration::from_nanos((index as f64 * self.interval_ns) as u64)
    }
}

/// What one worker saw.
#[derive(Default)]
struct WorkerOut {
    reads: Histogram,
    writes: Histogram,
    violations: u64,
    /// The longest a stale read began after the newer version had committed, ns.
    stale_max_ns: u64,
    errors: u64,
    first_error: Option<String>,
    /// When the first measured operation this worker ran began.
    first_start: Option<Instant>,
    last_finish: Option<Instant>,
    /// Whether the deadline came before the operations were done.
    timed_out: bool,
    /// Measured operations that started more than [`LATE`] after they were due.
    late: u64,
}

impl WorkerOut {
    fn failed(&mut self, error: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }
}

/// Counters at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    read_queries: u64,
    write_queries: u64,
    redis_calls: u64,
}

async fn run_mode(args: &Args, child: &ChildArgs) -> anyhow::Result<RunResult> {
    let env = Env::from_env(args.leads);
    let trace = Trace::generate(args.leads)?;
    let leads = Leads::new(args.leads)?;
    let counts = Arc::new(QueryCounts::default());
    let backend = Arc::new(
        Backend::build(child.mode, &env, &child.prefix, Arc::clone(&counts))
            .await
            .with_context(|| format!("building the {} mode", child.mode.name()))?,
    );
    // The harness's own connection, for INFO: its two calls are in the count.
    let mut redis = redis_connection(&env.redis_url).await?;
    let rss_setup_bytes = rss_bytes().unwrap_or(0);

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.max_seconds);
    let shared = Arc::new(Shared {
        trace,
        leads,
        backend: Arc::clone(&backend),
        committed: (0..args.leads).map(|_| AtomicU32::new(0)).collect(),
        committed_at: (0..args.leads).map(|_| AtomicU64::new(0)).collect(),
        start,
        write_turns: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
        next: AtomicU64::new(0),
        measure_from: args.warmup_ops,
        end: args.warmup_ops + args.ops,
        measuring: Notify::new(),
        deadline,
        pace: args.rate.map(|rate| Pace {
            first: Instant::now(),
            interval_ns: 1e9 / f64::from(rate),
        }),
    });
    let snapshot = |redis_calls| Snapshot {
        read_queries: counts.reads.load(Ordering::Relaxed),
        write_queries: counts.writes.load(Ordering::Relaxed),
        redis_calls,
    };

    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    // The worker that takes the first measured position tells (`notify_one` keeps the
    // permit if this task is not waiting yet); a run that never gets there stops at the
    // deadline and is reported as timed out below.
    tokio::select! {
        () = shared.measuring.notified() => {}
        () = tokio::time::sleep_until(deadline.into()) => {}
    }
    let at_start = snapshot(redis_command_calls(&mut redis).await?);
    let cpu_at_start = CpuTicks::now();
    let mut out = WorkerOut::default();
    let mut reads = Histogram::default();
    let mut writes = Histogram::default();
    let mut first_start: Option<Instant> = None;
    for worker in workers {
        let w = worker.await.context("joining a worker")?;
        reads.merge(&w.reads);
        writes.merge(&w.writes);
        out.violations += w.violations;
        out.stale_max_ns = out.stale_max_ns.max(w.stale_max_ns);
        out.errors += w.errors;
        out.timed_out |= w.timed_out;
        out.late += w.late;
        if out.first_error.is_none() {
            out.first_error = w.first_error;
        }
        out.last_finish = out.last_finish.max(w.last_finish);
        first_start = match (first_start, w.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (one, other) => one.or(other),
        };
    }
    let cpu_at_end = CpuTicks::now();
    let at_end = snapshot(redis_command_calls(&mut redis).await?);
    let rss_bytes = rss_bytes().unwrap_or(0);
    let (Some(first_start), Some(last_finish)) = (first_start, out.last_finish) else {
        anyhow::bail!(
            "no operation was measured: the warm-up outlasted --max-seconds {}",
            args.max_seconds
        );
    };

    let ops = reads.count() + writes.count();
    let seconds = last_finish.duration_since(first_start).as_secs_f64();
    let read_queries = at_end.read_queries - at_start.read_queries;
    let redis_commands = at_end.redis_calls.saturating_sub(at_start.redis_calls);
    let best_hit_ratio = shared
        .trace
        .best_hit_ratio(args.leads, shared.measure_from..shared.measure_from + ops)
        .unwrap_or(0.0);
    let stampede_loader_runs = backend
        .stampede(
            STAMPEDE_CALLERS,
            STAMPEDE_DELAY,
            STAMPEDE_TIMEOUT,
            probe_value(),
        )
        .await
        .context("the stampede probe")?;
    backend.close().await;
    ensure!(
        reads.count() > 0,
        "no read was measured: the window is too short"
    );
    let us = |h: &Histogram, q: f64| h.percentile(q) as f64 / 1e3;
    let mut run = RunResult {
        mode: child.mode.name().to_owned(),
        round: child.round,
        ops,
        reads: reads.count(),
        writes: writes.count(),
        seconds,
        ops_per_sec: ops as f64 / seconds.max(f64::MIN_POSITIVE),
        read_p50_us: us(&reads, 0.50),
        read_p99_us: us(&reads, 0.99),
        read_p999_us: us(&reads, 0.999),
        write_p50_us: us(&writes, 0.50),
        write_p99_us: us(&writes, 0.99),
        write_p999_us: us(&writes, 0.999),
        read_queries,
        write_queries: at_end.write_queries - at_start.write_queries,
        hit_ratio: 1.0 - read_queries as f64 / reads.count() as f64,
        best_hit_ratio,
        redis_commands,
        redis_cmds_per_op: redis_commands as f64 / ops.max(1) as f64,
        // Filled below from the counters, when /proc could be read.
        cpu_us_per_op: 0.0,
        cpu_process_us_per_op: 0.0,
        cpu_postgres_us_per_op: 0.0,
        cpu_redis_us_per_op: 0.0,
        cpu_busy: 0.0,
        cpu_steal: 0.0,
        rss_bytes,
        rss_setup_bytes,
        stampede_loader_runs,
        violations: out.violations,
        stale_max_ms: out.stale_max_ns as f64 / 1e6,
        errors: out.errors,
        first_error: out.first_error,
        timed_out: out.timed_out,
        late: out.late,
    };
    if let (Some(start), Some(end)) = (cpu_at_start, cpu_at_end) {
        run.set_cpu(start, end);
    }
    Ok(run)
}

/// One worker: takes the next position of the replay until the measured window's last
/// one is taken (or the deadline passes), one operation in flight; with `--rate` it waits
/// for the position's due time first.
async fn worker(shared: Arc<Shared>) -> WorkerOut {
    let mut out = WorkerOut::default();
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= shared.end {
            break;
        }
        let due = shared.pace.as_ref().map(|pace| pace.due(index));
        if let Some(due) = due {
            tokio::time::sleep_until(due.min(shared.deadline).into()).await;
        }
        let started = Instant::now();
        if started >= shared.deadline {
            out.timed_out = true;
            break;
        }
        let measured = index >= shared.measure_from;
        if measured && due.is_some_and(|due| started.duration_since(due) > LATE) {
            out.late += 1;
        }
        if index == shared.measure_from {
            shared.measuring.notify_one();
        }
        let op = shared.trace.op(index);
        let lead = shared.leads.get(op.lead);
        let committed = &shared.committed[op.lead as usize];
        let took = if op.write {
            let _turn = shared.write_turns[op.lead as usize % WRITE_STRIPES]
                .lock()
                .await;
            let next_version = committed.load(Ordering::Acquire) + 1;
            let notes = format!("v{next_version}");
            let began = Instant::now();
            let written = shared.backend.write(index, lead, notes).await;
            let took = began.elapsed();
            match written {
                Ok(()) => {
                    let at = u64::try_from(shared.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    shared.committed_at[op.lead as usize].store(at, Ordering::Relaxed);
                    committed.store(next_version, Ordering::Release);
                }
                Err(e) => out.failed(e),
            }
            took
        } else {
            // What had committed before the read began: the read must be at least as new.
            let expected = committed.load(Ordering::Acquire);
            let committed_at = shared.committed_at[op.lead as usize].load(Ordering::Relaxed);
            let began = Instant::now();
            let read = shared.backend.read(index, lead).await;
            let took = began.elapsed();
            match read {
                Ok(Some(found)) if version(&found) < expected => {
                    out.violations += 1;
                    // How long after the newer version committed this read began (the
                    // version seen may be older still; this is a lower bound).
                    let began_ns = u64::try_from(began.duration_since(shared.start).as_nanos())
                        .unwrap_or(u64::MAX);
                    out.stale_max_ns = out.stale_max_ns.max(began_ns.saturating_sub(committed_at));
                }
                Ok(Some(_)) => {}
                Ok(None) => out.failed(anyhow::anyhow!("lead {} was not found", lead.id)),
                Err(e) => out.failed(e),
            }
            took
        };
        if measured {
            let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            if op.write {
                out.writes.record(nanos);
            } else {
                out.reads.record(nanos);
            }
            out.first_start.get_or_insert(started);
            out.last_finish = Some(Instant::now());
        }
    }
    out
}

/// The value the stampede probe's loader returns: a lead no trace operation reads.
fn probe_value() -> Lead {
    Lead {
        id: -1,
        org_id: 0,
        phone: "+16460000000".to_owned(),
        name: "Stampede Probe".to_owned(),
        status: "new".to_owned(),
        notes: None,
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        updated_at: DateTime::<Utc>::UNIX_EPOCH,
    }
}
