//! Modes that run in another language's runtime (`benches/foreign/<mode>/`): the
//! parent writes the replay (every operation of the warm-up and the window, with its lead's
//! id, organization and phone, and the statements the Rust modes send) to a file, runs the
//! mode's driver on it, and reads the machine's CPU and Redis's command count itself when
//! the driver says its window starts (`measuring`) and ends (`measured`). The driver
//! reports the rest as the Rust child does, one [`RunResult`] JSON line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tiercache_benches::cpu::CpuTicks;
use tiercache_benches::redis_connection;
use tiercache_repository::queries::sql;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::args::{Args, Mode};
use crate::handwritten::{MOKA_MAX_ENTRIES, REDIS_TTL_SECS};
use crate::modes::Leads;
use crate::results::RunResult;
use crate::services::{Env, redis_command_calls};
use crate::trace::Trace;

/// Where the drivers live: one folder per mode, with its `package.json`.
const DRIVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/foreign");

/// The operations the foreign drivers replay: the trace, and the file written from it.
pub struct Replay {
    /// The trace (for the best hit ratio of a driver's window).
    trace: Trace,
    /// The file the drivers read.
    path: PathBuf,
}

/// Writes the replay of `args`'s warm-up and window to `dir/replay.txt`: a JSON header
/// line (the run's settings and statements), then one line per operation, `r` or `w`, the
/// lead's id, organization and phone.
pub fn write_replay(dir: &Path, args: &Args, env: &Env) -> anyhow::Result<Replay> {
    let trace = Trace::generate(args.leads)?;
    let config = crate::tiered::config(env, true, "replay")?;
    let leads = Leads::new(args.leads)?;
    let header = serde_json::json!({
        "warmup_ops": args.warmup_ops,
        "ops": args.ops,
        "concurrency": args.concurrency,
        "max_seconds": args.max_seconds,
        "pool_size": config.database.pool_size,
        "statement_timeout_ms": u64::try_from(config.database.statement_timeout.as_millis())
            .unwrap_or(u64::MAX),
        "l2_ttl_secs": REDIS_TTL_SECS,
        "l1_max_entries": MOKA_MAX_ENTRIES,
        "lead_by_phone_sql": sql::LEAD_BY_PHONE,
        "update_lead_sql": sql::UPDATE_LEAD,
    });
    let mut text = header.to_string();
    text.push('\n');
    for index in 0..args.warmup_ops + args.ops {
        let op = trace.op(index);
        let lead = leads.get(op.lead);
        let kind = if op.write { 'w' } else { 'r' };
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "{kind} {} {} {}",
            lead.id,
            lead.org_id,
            lead.phone.as_str()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("replay.txt");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Replay { trace, path })
}

/// How a mode's driver runs: its interpreter, its script, and how its packages get installed
/// into its folder when they are missing.
struct Driver {
    /// The folder under `benches/foreign`.
    dir: PathBuf,
    /// The interpreter, and the script in `dir`.
    program: PathBuf,
    script: &'static str,
}

impl Driver {
    /// `mode`'s driver, its packages installed (`npm ci`, or a venv and `pip install`).
    fn install(mode: Mode) -> anyhow::Result<Driver> {
        let dir = Path::new(DRIVERS).join(mode.name());
        let (installed, program, script, steps): (_, PathBuf, _, Vec<Vec<&str>>) = match mode {
            Mode::Bentocache => (
                dir.join("node_modules"),
                "node".into(),
                "run.mjs",
                vec![vec![
                    "npm",
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ]],
            ),
            Mode::Cashews => (
                dir.join(".venv"),
                dir.join(".venv/bin/python"),
                "run.py",
                vec![
                    vec!["python3", "-m", "venv", ".venv"],
                    vec![".venv/bin/pip", "install", "-q", "-r", "requirements.txt"],
                ],
            ),
            _ => bail!("{} is not a foreign mode", mode.name()),
        };
        if !installed.is_dir() {
            for step in steps {
                eprintln!("{}: {} in {}", mode.name(), step.join(" "), dir.display());
                let status = std::process::Command::new(step[0])
                    .args(&step[1..])
                    .current_dir(&dir)
                    .stdin(Stdio::null())
                    .status()
                    .with_context(|| format!("running {} for the {} mode", step[0], mode.name()))?;
                if !status.success() {
                    // A half-made install would be taken as done next time.
                    let _ = std::fs::remove_dir_all(&installed);
                    bail!("{} in {} failed: {status}", step.join(" "), dir.display());
                }
            }
        }
        Ok(Driver {
            dir,
            program,
            script,
        })
    }
}

/// The counters at one edge of the window.
struct Edge {
    cpu: Option<CpuTicks>,
    redis_calls: u64,
}

/// Runs `mode`'s driver on `replay` in `round` with its keys under `prefix`; kills it if it
/// passes `deadline`.
pub async fn run(
    args: &Args,
    mode: Mode,
    round: usize,
    prefix: &str,
    deadline: Duration,
    env: &Env,
    replay: &Replay,
) -> anyhow::Result<RunResult> {
    let driver = Driver::install(mode)?;
    let mut child = tokio::process::Command::new(&driver.program)
        .arg(driver.dir.join(driver.script))
        .arg("--replay")
        .arg(&replay.path)
        .args(["--prefix", prefix, "--round", &round.to_string()])
        .env("DATABASE_URL", &env.database_url)
        .env("REDIS_URL", &env.redis_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", driver.program.display()))?;
    let pid = child.id().context("the driver exited at once")?;
    let stdout = child.stdout.take().context("taking the driver's output")?;
    let mut redis = redis_connection(&env.redis_url).await?;
    let supervise = async {
        let mut lines = BufReader::new(stdout).lines();
        let (mut start, mut end, mut result) = (None, None, None);
        while let Some(line) = lines.next_line().await.context("reading the driver")? {
            match line.as_str() {
                "measuring" => {
                    let cpu = CpuTicks::now_of(pid);
                    let redis_calls = redis_command_calls(&mut redis).await?;
                    start = Some(Edge { cpu, redis_calls });
                }
                "measured" => {
                    let redis_calls = redis_command_calls(&mut redis).await?;
                    let cpu = CpuTicks::now_of(pid);
                    end = Some(Edge { cpu, redis_calls });
                }
                json if json.starts_with('{') => {
                    result =
                        Some(serde_json::from_str::<RunResult>(json).with_context(|| {
                            format!("the driver's result is not valid: {json}")
                        })?);
                }
                other => eprintln!("{}: {other}", mode.name()),
            }
        }
        let status = child.wait().await.context("waiting for the driver")?;
        if !status.success() {
            bail!("the driver exited with {status}");
        }
        anyhow::Ok((start, end, result))
    };
    let (start, end, result) = tokio::time::timeout(deadline, supervise)
        .await
        .map_err(|_| anyhow::anyhow!("did not answer within {deadline:?}: killed"))??;
    let mut run = result.context("the driver printed no result")?;
    let (Some(start), Some(end)) = (start, end) else {
        bail!("the driver did not mark its window (measuring, measured)");
    };
    let ops = run.ops.max(1) as f64;
    run.redis_commands = end.redis_calls.saturating_sub(start.redis_calls);
    run.redis_cmds_per_op = run.redis_commands as f64 / ops;
    run.best_hit_ratio = replay
        .trace
        .best_hit_ratio(args.leads, args.warmup_ops..args.warmup_ops + run.ops)
        .unwrap_or(0.0);
    if let (Some(before), Some(after)) = (start.cpu, end.cpu) {
        run.set_cpu(before, after);
    }
    Ok(run)
}
