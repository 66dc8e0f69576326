//! The command line: the modes compared, and the flags, parsed into plain values and then
//! checked as a whole (as the webhook load generator's flags are).

use std::path::PathBuf;

use tiercache_repository::seed::DEMO_LEADS;

/// What teams use to serve "a lead by (phone, org)", and Tiercache's configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No cache: the SELECT on every read.
    Postgres,
    /// A hand-written read-through over one Redis connection: GET, else SELECT and SET EX.
    RedisReadthrough,
    /// moka in front of the same Redis read-through, glued by hand.
    MokaRedis,
    /// A sharded in-process map with nothing else: the machine's limit for this workload.
    Bound,
    /// Tiercache as production runs it: L1 and Redis, metrics, listener, monitor.
    Tiercache,
    /// Tiercache with `REDIS_ENABLED=false`.
    TiercacheL1,
    /// Two Tiercache instances in one process, sharing the Redis namespace.
    TiercacheX2,
    /// bentocache (Node.js): its memory L1 in front of Redis, with its Redis bus.
    Bentocache,
    /// cashews (Python): its client-side cache in front of Redis.
    Cashews,
}

impl Mode {
    /// Every mode, in the order they run within a round and are reported.
    pub const ALL: [Mode; 9] = [
        Mode::Postgres,
        Mode::RedisReadthrough,
        Mode::MokaRedis,
        Mode::Bound,
        Mode::Tiercache,
        Mode::TiercacheL1,
        Mode::TiercacheX2,
        Mode::Bentocache,
        Mode::Cashews,
    ];

    /// The mode's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Postgres => "postgres",
            Mode::RedisReadthrough => "redis-readthrough",
            Mode::MokaRedis => "moka-redis",
            Mode::Bound => "bound",
            Mode::Tiercache => "tiercache",
            Mode::TiercacheL1 => "tiercache-l1",
            Mode::TiercacheX2 => "tiercache-x2",
            Mode::Bentocache => "bentocache",
            Mode::Cashews => "cashews",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether a stale read fails the run: the modes that promise read-after-write on one
    /// instance. The hand-written caches and the two-instance mode may serve stale values
    /// (the first by their races, the second within the bus's delay); theirs are reported.
    pub fn must_be_fresh(self) -> bool {
        matches!(self, Mode::Postgres | Mode::Tiercache | Mode::TiercacheL1)
    }

    /// Whether the mode runs in another language's runtime (see `foreign.rs`), not in a
    /// child of this binary.
    pub fn is_foreign(self) -> bool {
        matches!(self, Mode::Bentocache | Mode::Cashews)
    }
}

/// What a child process runs: one mode, in one round, under one Redis namespace.
#[derive(Clone, Debug)]
pub struct ChildArgs {
    /// The mode.
    pub mode: Mode,
    /// The round (1-based), for the report.
    pub round: usize,
    /// The Redis key prefix the child writes under; the parent deletes it afterwards.
    pub prefix: String,
}

/// The most operations `--warmup-ops` and `--ops` take: the trace replays from its start
/// past its length, so this only keeps a typo from running for a day.
const MAX_OPS: u64 = 100_000_000;

/// The command line, checked.
#[derive(Clone, Debug)]
pub struct Args {
    /// Operations per mode and round before the measured window (not measured).
    pub warmup_ops: u64,
    /// Operations measured per mode and round: the same trace positions in every mode.
    pub ops: u64,
    /// Runs of every mode, interleaved; the report gives medians.
    pub rounds: usize,
    /// Worker tasks, each with one operation in flight.
    pub concurrency: usize,
    /// Operations offered per second (an open loop), or `None`: each worker starts its next
    /// operation when the last one ends (a closed loop).
    pub rate: Option<u32>,
    /// Leads in the data set (100 organizations either way).
    pub leads: u32,
    /// Modes to run, in this order.
    pub modes: Vec<Mode>,
    /// How long one mode's round may take, in seconds; a run past it stops and fails.
    pub max_seconds: u64,
    /// The share of a window the hypervisor may steal before the round is run again.
    pub max_steal: f64,
    /// Runs of one mode's round at most while the steal is over `max_steal`.
    pub attempts: usize,
    /// Where results.jsonl and compare.svg go.
    pub out: PathBuf,
    /// Set in a child process (the parent re-executes itself with `--child`).
    pub child: Option<ChildArgs>,
}

/// The help text.
pub const USAGE: &str = "\
usage: compare [--warmup-ops N] [--ops N] [--rounds N] [--concurrency N] [--rate N]
               [--leads N] [--modes LIST] [--max-seconds N] [--max-steal F]
               [--attempts N] [--out DIR] [--quick]

  --warmup-ops N   operations per mode and round before the window, not measured
                   (default 50000)
  --ops N          operations measured per mode and round, the same trace positions in
                   every mode (default 150000)
  --rounds N       runs of every mode, interleaved round-robin; medians reported (default 3)
  --concurrency N  worker tasks, one operation in flight each (default 4; 64 with --rate)
  --rate N         offer N operations per second whatever the mode's latency (an open
                   loop: operation i is due i/N s after the first, released at the
                   timer's millisecond ticks), so every mode's latencies are measured at
                   the same load; not for bentocache and cashews, whose drivers run a
                   closed loop (default: none, each worker runs its next operation when
                   its last one ends)
  --leads N        leads in the data set, 100 organizations (default 100000)
  --modes LIST     comma-separated, in this order (default: all) among
                   postgres, redis-readthrough, moka-redis, bound,
                   tiercache, tiercache-l1, tiercache-x2, bentocache, cashews
  --max-seconds N  time one mode's round may take; a round past it stops and fails
                   (default 300)
  --max-steal F    a round whose window had more than this share of the CPU stolen by the
                   hypervisor (other tenants) is run again (default 0.1)
  --attempts N     runs of a round at most while its steal is over --max-steal; the one
                   with the least is kept (default 4)
  --out DIR        where results.jsonl and compare.svg are written (default target/compare)
  --quick          a smoke run: --warmup-ops 2000 --ops 5000 --rounds 1 --attempts 1
                   (flags given override it)

env: COMPARE_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/tiercache_compare,
     with _N appended for --leads N other than 100000; created and seeded when missing),
     REDIS_URL (default redis://127.0.0.1:6379/)";

/// Flags as given, before defaults and `--quick` are applied.
#[derive(Default)]
struct Raw {
    warmup_ops: Option<u64>,
    ops: Option<u64>,
    rounds: Option<u64>,
    concurrency: Option<u64>,
    rate: Option<u64>,
    leads: Option<u64>,
    modes: Option<Vec<Mode>>,
    max_seconds: Option<u64>,
    max_steal: Option<f64>,
    attempts: Option<u64>,
    out: Option<PathBuf>,
    quick: bool,
    child: Option<Mode>,
    round: Option<u64>,
    prefix: Option<String>,
}

impl Args {
    /// The parsed flags, or `None` when help was asked for.
    pub fn parse(mut raw_args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let mut raw = Raw::default();
        while let Some(flag) = raw_args.next() {
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => {
                    raw.quick = true;
                    continue;
                }
                _ => {}
            }
            let value = raw_args
                .next()
                .ok_or_else(|| format!("{flag}: expected a value"))?;
            let number = |min: u64, max: u64| -> Result<Option<u64>, String> {
                match value.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(format!(
                        "{flag}: expected a number from {min} to {max}, got {value:?}"
                    )),
                }
            };
            match flag.as_str() {
                "--warmup-ops" => raw.warmup_ops = number(0, MAX_OPS)?,
                "--ops" => raw.ops = number(100, MAX_OPS)?,
                "--rounds" => raw.rounds = number(1, 100)?,
                "--concurrency" => raw.concurrency = number(1, 1024)?,
                "--rate" => raw.rate = number(100, 1_000_000)?,
                "--leads" => raw.leads = number(100, DEMO_LEADS as u64)?,
                "--max-seconds" => raw.max_seconds = number(1, 86_400)?,
                "--attempts" => raw.attempts = number(1, 20)?,
                "--max-steal" => {
                    raw.max_steal = match value.parse::<f64>() {
                        Ok(f) if (0.0..=1.0).contains(&f) => Some(f),
                        _ => {
                            return Err(format!(
                                "--max-steal: expected a share from 0 to 1, got {value:?}"
                            ));
                        }
                    }
                }
                "--out" => raw.out = Some(PathBuf::from(value)),
                "--modes" => {
                    let modes = value
                        .split(',')
                        .map(|name| {
                            Mode::from_name(name)
                                .ok_or_else(|| format!("--modes: unknown mode {name:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    raw.modes = Some(modes);
                }
                "--child" => {
                    raw.child = Some(
                        Mode::from_name(&value)
                            .ok_or_else(|| format!("--child: unknown mode {value:?}"))?,
                    );
                }
                "--round" => raw.round = number(1, 100)?,
                "--prefix" => raw.prefix = Some(value),
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        raw.check().map(Some)
    }
}

impl Raw {
    fn check(self) -> Result<Args, String> {
        // --quick changes the defaults only: flags given with it still count.
        let (warmup_ops, ops, rounds, attempts) = if self.quick {
            (2_000, 5_000, 1, 1)
        } else {
            (50_000, 150_000, 3, 4)
        };
        let child = match (self.child, self.round, self.prefix) {
            (None, None, None) => None,
            (Some(mode), Some(round), Some(prefix)) => Some(ChildArgs {
                mode,
                round: round as usize,
                prefix,
            }),
            _ => return Err("--child, --round and --prefix go together".to_owned()),
        };
        let rate = self.rate.map(|r| r as u32);
        let modes = match (self.modes, rate) {
            (Some(modes), _) => modes,
            (None, None) => Mode::ALL.to_vec(),
            // The foreign drivers replay in a closed loop only.
            (None, Some(_)) => Mode::ALL.into_iter().filter(|m| !m.is_foreign()).collect(),
        };
        if modes.is_empty() {
            return Err("--modes: name at least one mode".to_owned());
        }
        if rate.is_some()
            && let Some(foreign) = modes.iter().find(|m| m.is_foreign())
        {
            return Err(format!(
                "--rate: {} runs a closed loop only; leave it out of --modes",
                foreign.name()
            ));
        }
        Ok(Args {
            warmup_ops: self.warmup_ops.unwrap_or(warmup_ops),
            ops: self.ops.unwrap_or(ops),
            rounds: self.rounds.map_or(rounds, |r| r as usize),
            concurrency: self
                .concurrency
                .map_or(if rate.is_some() { 64 } else { 4 }, |c| c as usize),
            rate,
            leads: self.leads.map_or(DEMO_LEADS as u32, |n| n as u32),
            modes,
            max_seconds: self.max_seconds.unwrap_or(300),
            max_steal: self.max_steal.unwrap_or(0.1),
            attempts: self.attempts.map_or(attempts, |n| n as usize),
            out: self.out.unwrap_or_else(|| PathBuf::from("target/compare")),
            child,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        Args::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn defaults_then_quick_then_explicit_flags() {
        let args = parse(&[]).unwrap().unwrap();
        assert_eq!(
            (args.warmup_ops, args.ops, args.rounds),
            (50_000, 150_000, 3)
        );
        assert_eq!((args.concurrency, args.leads), (4, 100_000));
        assert_eq!(args.modes, Mode::ALL.to_vec());
        let args = parse(&["--ops", "7000", "--quick"]).unwrap().unwrap();
        assert_eq!((args.warmup_ops, args.ops, args.rounds), (2_000, 7_000, 1));
    }

    #[test]
    fn modes_by_name_and_bad_input() {
        let args = parse(&["--modes", "bound,tiercache-x2"]).unwrap().unwrap();
        assert_eq!(args.modes, vec![Mode::Bound, Mode::TiercacheX2]);
        assert!(parse(&["--modes", "memcached"]).is_err());
        assert!(parse(&["--ops", "0"]).is_err());
        assert!(parse(&["--max-steal", "1.5"]).is_err());
        let args = parse(&["--max-steal", "0.2", "--attempts", "2"])
            .unwrap()
            .unwrap();
        assert_eq!((args.max_steal, args.attempts), (0.2, 2));
        assert!(parse(&["--leads", "200000"]).is_err());
        assert!(parse(&["--child", "bound"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn a_rate_takes_the_rust_modes_and_more_workers() {
        let args = parse(&["--rate", "12000"]).unwrap().unwrap();
        assert_eq!((args.rate, args.concurrency), (Some(12_000), 64));
        assert!(args.modes.iter().all(|m| !m.is_foreign()));
        assert_eq!(args.modes.len(), Mode::ALL.len() - 2);
        let err = parse(&["--rate", "12000", "--modes", "tiercache,cashews"]).unwrap_err();
        assert!(err.contains("cashews"), "{err}");
        assert!(parse(&["--rate", "10"]).is_err());
        assert_eq!(parse(&[]).unwrap().unwrap().rate, None);
    }

    #[test]
    fn every_mode_name_round_trips() {
        for mode in Mode::ALL {
            assert_eq!(Mode::from_name(mode.name()), Some(mode));
        }
    }
}
