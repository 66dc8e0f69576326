//! The parent process: prepares the database, runs every mode in a child process of its
//! own (re-executing this binary with `--child`), round after round, each under a deadline,
//! and hands the medians to the report.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::args::{Args, Mode};
use crate::foreign;
use crate::report;
use crate::results::{RunResult, Summary};
use tiercache_benches::delete_prefix;

use crate::services::{Env, cpu_model, prepare_database, redis_version, reset_leads};
use crate::trace::{SEED, WRITE_SHARE, ZIPF_EXPONENT};

/// How long a child may take beyond `--max-seconds` for its operations: starting, building
/// its mode, the stampede probe, closing. A child past its deadline is killed and reported.
const CHILD_SLACK: Duration = Duration::from_secs(90);
/// How often the parent looks whether a child has exited.
const CHILD_POLL: Duration = Duration::from_millis(20);

/// Runs the comparison; `Ok(false)` when it ran but something failed its checks (a child
/// failed or was killed, or a mode that must never serve a stale read did).
pub fn run(args: &Args) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let env = Env::from_env(args.leads);
    let (pool, postgres_version) = runtime.block_on(prepare_database(&env, args.leads))?;
    let redis_version = runtime.block_on(redis_version(&env.redis_url))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cpus} CPUs, {}; PostgreSQL {postgres_version}, Redis {redis_version}",
        cpu_model()
    );
    println!(
        "workload: lead by (phone, org), Zipf(n = {}, s = {ZIPF_EXPONENT}), {:.0} % updates, \
         seed {SEED}; {} operations of warm-up, then positions {}..{} measured, per mode; {} \
         workers, {}, {} round(s)",
        args.leads,
        WRITE_SHARE * 100.0,
        args.warmup_ops,
        args.warmup_ops,
        args.warmup_ops + args.ops,
        args.concurrency,
        match args.rate {
            Some(rate) => format!("{rate} operations offered per second (open loop)"),
            None => "each running its next operation when its last ends (closed loop)".to_owned(),
        },
        args.rounds
    );
    let exe = std::env::current_exe().context("finding this program's path")?;
    // The modes in other languages replay the same operations from a file.
    let replay = if args.modes.iter().any(|m| m.is_foreign()) {
        Some(foreign::write_replay(&args.out, args, &env)?)
    } else {
        None
    };
    let deadline = Duration::from_secs(args.max_seconds) + CHILD_SLACK;
    let mut runs: Vec<Vec<RunResult>> = args.modes.iter().map(|_| Vec::new()).collect();
    let mut failures = Vec::new();
    // Interleaved round-robin, so a drift of the machine (another tenant, a warming page
    // cache) spreads over every mode instead of landing on the last one.
    for round in 1..=args.rounds {
        for (slot, &mode) in args.modes.iter().enumerate() {
            // A window the hypervisor took much of from this machine measured the neighbours
            // as much as the mode: it is run again, a few times at most, and the attempt with
            // the least steal is kept.
            let mut kept: Option<RunResult> = None;
            for attempt in 1..=args.attempts {
                runtime
                    .block_on(reset_leads(&pool))
                    .context("resetting the leads between runs")?;
                let prefix = format!(
                    "cmp{}-{}-r{round}a{attempt}",
                    std::process::id(),
                    mode.name()
                );
                let outcome = match &replay {
                    Some(replay) if mode.is_foreign() => runtime.block_on(foreign::run(
                        args, mode, round, &prefix, deadline, &env, replay,
                    )),
                    _ => run_child(&exe, args, mode, round, &prefix, deadline),
                };
                // Whatever the child did (it may have been killed), its keys go.
                if let Err(e) = runtime.block_on(delete_prefix(&env.redis_url, &prefix)) {
                    failures.push(format!("deleting {prefix}:*: {e:#}"));
                }
                let run = match outcome {
                    Ok(run) => run,
                    Err(e) => {
                        let failure = format!("round {round}, {}: {e:#}", mode.name());
                        eprintln!("FAILED {failure}");
                        failures.push(failure);
                        break;
                    }
                };
                eprintln!("round {round}: {}", report::run_line(&run));
                let calm = run.cpu_steal <= args.max_steal;
                if kept.as_ref().is_none_or(|k| run.cpu_steal < k.cpu_steal) {
                    kept = Some(run);
                }
                if calm {
                    break;
                }
                if attempt < args.attempts {
                    eprintln!(
                        "round {round}: {} again: steal over --max-steal {}",
                        mode.name(),
                        args.max_steal
                    );
                }
            }
            let Some(run) = kept else { continue };
            if run.timed_out {
                failures.push(format!(
                    "round {round}, {}: --max-seconds {} passed before its {} operations were \
                     done; its figures cover fewer",
                    mode.name(),
                    args.max_seconds,
                    args.ops
                ));
            }
            runs[slot].push(run);
        }
    }
    runtime.block_on(pool.close());

    let summaries: Vec<Summary> = args
        .modes
        .iter()
        .zip(&runs)
        .filter_map(|(mode, runs)| Summary::of(mode.name(), runs))
        .collect();
    report::print_table(&summaries, args.rounds);
    report::write_results(&args.out, &summaries)?;
    report::print_targets(&summaries, args.rate.is_some());
    let stale: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.violations > 0)
        .filter(|s| Mode::from_name(&s.mode).is_some_and(Mode::must_be_fresh))
        .collect();
    for s in &stale {
        eprintln!(
            "FAILED {}: {} stale read(s); this mode must never serve a value older than the \
             last write committed before the read",
            s.mode, s.violations
        );
    }
    for failure in &failures {
        eprintln!("FAILED {failure}");
    }
    Ok(stale.is_empty() && failures.is_empty())
}

/// Runs one child and returns its result; kills it if it passes `deadline`.
fn run_child(
    exe: &Path,
    args: &Args,
    mode: Mode,
    round: usize,
    prefix: &str,
    deadline: Duration,
) -> anyhow::Result<RunResult> {
    let mut child = Command::new(exe)
        .args(["--child", mode.name()])
        .args(["--round", &round.to_string()])
        .args(["--prefix", prefix])
        .args(["--warmup-ops", &args.warmup_ops.to_string()])
        .args(["--ops", &args.ops.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(
            args.rate
                .map(|rate| ["--rate".to_owned(), rate.to_string()])
                .iter()
                .flatten(),
        )
        .args(["--leads", &args.leads.to_string()])
        .args(["--max-seconds", &args.max_seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a child process")?;
    let mut stdout = child
        .stdout
        .take()
        .context("taking the child's standard output")?;
    // Read on a thread of its own, so a child that fills the pipe cannot block on it while
    // the parent waits for it to exit; the thread ends when the child's stdout closes.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the child")? {
            break status;
        }
        if started.elapsed() >= deadline {
            // Both may fail only if the child has just exited by itself: fine either way.
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not answer within {deadline:?}: killed");
        }
        std::thread::sleep(CHILD_POLL);
    };
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading the child's output panicked"))?
        .context("reading the child's output")?;
    if !status.success() {
        bail!("the child exited with {status}");
    }
    let line = text
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .context("the child printed no result")?;
    serde_json::from_str(line).with_context(|| format!("the child's result is not valid: {line}"))
}
