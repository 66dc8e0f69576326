//! `webhook_load`: drives the conversation-initiation webhook of in-process servers, one per
//! cache mode (both tiers, L1 only, Redis only, neither), with the same Zipf-distributed
//! callers, and reports throughput, latency percentiles, errors, cache hit ratios, SQL
//! statements per request and where the CPU went.
//!
//! ```sh
//! cargo run --release -p tiercache-benches --bin webhook_load -- --seconds 10 --concurrency 32
//! ```
//!
//! `--events on,off` runs every mode twice, with the live call log (each call publishes
//! `call_started`, appended to Redis and applied to PostgreSQL by the consumer, as in
//! production) and without it, and reports the ratio of their latencies; `publish` adds a run
//! whose server only publishes (`CALL_EVENTS_CONSUMER=false`, the consumers elsewhere). `--rate N` offers
//! N requests per second whatever the latency (an open loop), so both see the same load.
//!
//! Every mode replays one pre-generated sequence of callers (fixed seed), so the modes differ
//! only in their tiers. Each mode gets a fresh server, a fresh cache and a Redis namespace of
//! its own, deleted afterwards. After each measured phase the first 200 distinct callers are
//! asked once more, one at a time, and the answers must be the same JSON in every mode: the
//! cache may make the service faster, never different.
//!
//! Needs the shared PostgreSQL (`DATABASE_URL`, default below) and Redis (`REDIS_URL`).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand_distr::{Distribution as _, Zipf};
use serde::Deserialize;
use serde_json::{Value, json};
use tiercache::{CacheObserver, Entity, Fanout, LoadOutcome, Outcome, Tier, TwoTierCache};
use tiercache_benches::cpu::{CpuShares, CpuTicks};
use tiercache_benches::{delete_prefix, redis_connection};
use tiercache_monitoring::{Metrics, MonitorTask};
use tiercache_repository::Repository;
use tiercache_repository::seed::{DEMO_LEADS, DEMO_ORGS, demo_lead_phone, demo_org_phone};
use tiercache_server::auth::WebhookSecret;
use tiercache_server::state::MONITOR_INTERVAL;
use tiercache_server::{AppState, Config, router, startup};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// The database used when `DATABASE_URL` is unset: its own, so the demo data of a
/// development database is neither needed nor touched.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tiercache_bench";
/// Not the built-in development secret, so keys look like production's; 32 characters.
const KEY_SECRET: &str = "webhook-load-bench-key-secret-32";
/// The webhook's shared secret, checked on every call as in production (`WEBHOOK_SECRET`,
/// sent in the default header).
const WEBHOOK_SECRET: &str = "webhook-load-bench-webhook-secret";
/// The seed of the caller sequence: every run and every mode replays the same callers.
const SEED: u64 = 42;
/// The Zipf exponent: the k-th most frequent caller calls about 1/k as often as the first.
const ZIPF_EXPONENT: f64 = 1.0;
/// Distinct callers whose answers are compared across modes.
const CHECKED_CALLERS: usize = 200;
/// A request slower than this is abandoned and counted as an error, so a hung server
/// cannot hang the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to finish its in-flight requests when told to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WEBHOOK_PATH: &str = "/api/webhooks/conversation-initiation";
const USAGE: &str = "\
usage: webhook_load [--seconds N] [--warmup N] [--concurrency N] [--rounds N]
                    [--modes warm,l1-only,redis-only,no-cache] [--max-requests N]
                    [--events on,publish,off] [--rate N]

  --seconds N       measured phase per mode, in seconds (default 10)
  --warmup N        warm-up phase per mode, in seconds, not measured (default 5)
  --concurrency N   requests in flight (default 32; with --rate, the most in flight)
  --rounds N        runs of every mode, interleaved; the report gives medians (default 1)
  --modes LIST      modes to run, in this order (default: all four)
  --max-requests N  requests per mode, warm-up included, at most (default 2000000)
  --events LIST     with the live call log (on), publishing only with its consumer
                    elsewhere (publish), without it (off), or several, each mode run
                    once per setting in every round (default on)
  --rate N          an open loop: N requests started per second whatever the latency,
                    timed from when each was due (default 0: a closed loop)

env: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/tiercache_bench),
     REDIS_URL (default redis://127.0.0.1:6379/)";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A cache configuration under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// L1 and Redis: production's configuration.
    Warm,
    /// L1 only (`REDIS_ENABLED=false`), as one instance without Redis runs.
    L1Only,
    /// Redis only (`L1_ENABLED=false`).
    RedisOnly,
    /// Neither tier: every read goes to PostgreSQL. Concurrent reads of one key still
    /// take turns under the engine's per-key lock, but without L1 none of them finds the
    /// previous one's value, so each loads.
    NoCache,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Warm, Mode::L1Only, Mode::RedisOnly, Mode::NoCache];

    fn name(self) -> &'static str {
        match self {
            Mode::Warm => "warm",
            Mode::L1Only => "l1-only",
            Mode::RedisOnly => "redis-only",
            Mode::NoCache => "no-cache",
        }
    }

    fn l1(self) -> bool {
        matches!(self, Mode::Warm | Mode::L1Only)
    }

    fn redis(self) -> bool {
        matches!(self, Mode::Warm | Mode::RedisOnly)
    }
}

/// One server configuration measured: a cache mode, with or without the call log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    mode: Mode,
    /// Whether and how the webhook publishes `call_started` to the live call log.
    events: Events,
}

/// The call log's setting in one variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Events {
    /// As start-up runs it: the queue, the Redis stream and the consumer, in the server.
    On,
    /// Published only (`CALL_EVENTS_CONSUMER=false`): the consumers run elsewhere, so the
    /// server carries the queue and the appends but not the sessions' transactions.
    Publish,
    /// No call log: the webhook publishes nothing.
    Off,
}

impl Variant {
    fn events_name(self) -> &'static str {
        match self.events {
            Events::On => "on",
            Events::Publish => "publish",
            Events::Off => "off",
        }
    }

    /// `warm`, or `warm events-off` when the call log is off.
    fn name(self) -> String {
        match self.events {
            Events::On => self.mode.name().to_owned(),
            Events::Publish => format!("{} publish-only", self.mode.name()),
            Events::Off => format!("{} events-off", self.mode.name()),
        }
    }
}

/// The command line, checked.
struct Args {
    seconds: u64,
    warmup: u64,
    concurrency: usize,
    rounds: usize,
    modes: Vec<Mode>,
    max_requests: usize,
    /// The call log settings to run each mode with, in this order.
    events: Vec<Events>,
    /// Requests started per second in an open loop; 0 for a closed loop.
    rate: u64,
}

impl Args {
    /// Every (mode, events) pair, in the order they run within a round.
    fn variants(&self) -> Vec<Variant> {
        self.modes
            .iter()
            .flat_map(|&mode| {
                self.events
                    .iter()
                    .map(move |&events| Variant { mode, events })
            })
            .collect()
    }
}

impl Args {
    /// The parsed flags, or `None` when help was asked for.
    fn parse(mut raw: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let mut args = Args {
            seconds: 10,
            warmup: 5,
            concurrency: 32,
            rounds: 1,
            modes: Mode::ALL.to_vec(),
            max_requests: 2_000_000,
            events: vec![Events::On],
            rate: 0,
        };
        while let Some(flag) = raw.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            let value = raw
                .next()
                .ok_or_else(|| format!("{flag}: expected a value"))?;
            let number = |max: u64| -> Result<u64, String> {
                match value.parse::<u64>() {
                    Ok(n) if n <= max => Ok(n),
                    _ => Err(format!(
                        "{flag}: expected a number up to {max}, got {value:?}"
                    )),
                }
            };
            match flag.as_str() {
                "--seconds" => args.seconds = number(3600)?,
                "--warmup" => args.warmup = number(3600)?,
                "--concurrency" => args.concurrency = number(4096)? as usize,
                "--rounds" => args.rounds = number(100)? as usize,
                "--max-requests" => args.max_requests = number(100_000_000)? as usize,
                "--rate" => args.rate = number(1_000_000)?,
                "--events" => {
                    args.events = value
                        .split(',')
                        .map(|setting| match setting {
                            "on" => Ok(Events::On),
                            "publish" => Ok(Events::Publish),
                            "off" => Ok(Events::Off),
                            _ => Err(format!(
                                "--events: expected on, publish or off, got {setting:?}"
                            )),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--modes" => {
                    args.modes = value
                        .split(',')
                        .map(|name| {
                            Mode::ALL
                                .into_iter()
                                .find(|m| m.name() == name)
                                .ok_or_else(|| format!("--modes: unknown mode {name:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        if args.seconds == 0 {
            return Err("--seconds: must be at least 1".to_owned());
        }
        if args.concurrency == 0 || args.rounds == 0 {
            return Err("--concurrency and --rounds must be at least 1".to_owned());
        }
        if args.max_requests < args.concurrency {
            return Err("--max-requests: must be at least --concurrency".to_owned());
        }
        if args.modes.is_empty() {
            return Err("--modes: name at least one mode".to_owned());
        }
        if args.events.is_empty() {
            return Err("--events: name on, off or both".to_owned());
        }
        Ok(Some(args))
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| Config::DEFAULT_REDIS_URL.to_owned());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    count_sql_statements()?;

    // The server runs on a runtime of its own, as it would in its own process, so its
    // handlers and the generator's tasks do not queue in one scheduler. Both share the
    // machine's cores with each other, Redis and PostgreSQL all the same.
    let server_rt = runtime("server", cpus)?;
    let client_rt = runtime("loadgen", cpus)?;

    let env = Env {
        database_url,
        redis_url,
    };
    let facts = server_rt.block_on(prepare_database(&env))?;
    let redis_version = client_rt.block_on(redis_version(&env.redis_url))?;
    println!(
        "machine: {cpus} CPUs, {}, {}; PostgreSQL {}, Redis {redis_version}",
        cpu_model(),
        memory(),
        facts.postgres_version,
    );
    let load = if args.rate > 0 {
        format!(
            "an open loop at {} req/s (at most {} in flight)",
            args.rate, args.concurrency
        )
    } else {
        format!("{} in flight", args.concurrency)
    };
    println!(
        "workload: POST {WEBHOOK_PATH}, callers Zipf(n = {DEMO_LEADS}, s = {ZIPF_EXPONENT}) \
         seed {SEED}; {} s warm-up + {} s measured per mode, {load}, {} round(s), \
         at most {} requests per mode; call log: {}",
        args.warmup,
        args.seconds,
        args.rounds,
        args.max_requests,
        args.events
            .iter()
            .map(|&events| Variant {
                mode: Mode::Warm,
                events,
            }
            .events_name())
            .collect::<Vec<_>>()
            .join(" and ")
    );

    let plan = Arc::new(Plan::new(args.max_requests)?);
    let variants = args.variants();
    let mut runs: Vec<Vec<ModeRun>> = variants.iter().map(|_| Vec::new()).collect();
    let mut reference: Option<(Variant, Vec<Value>)> = None;
    // Interleaved round-robin, so a drift of the machine (another tenant, a warming page
    // cache) spreads over every variant instead of landing on the last one.
    for round in 1..=args.rounds {
        for (slot, &variant) in variants.iter().enumerate() {
            let (run, answers) =
                run_mode(&server_rt, &client_rt, &env, args, &plan, variant, round)?;
            eprintln!("round {round}: {}", run.summary_line());
            match &reference {
                None => reference = Some((variant, answers)),
                Some((reference, expected)) => {
                    compare_answers(&plan, *reference, expected, variant, &answers)?
                }
            }
            runs[slot].push(run);
        }
    }

    let reports: Vec<Report> = variants
        .iter()
        .zip(&runs)
        .map(|(&variant, runs)| Report::median(variant, runs))
        .collect();
    print_table(&reports, args);
    print_event_ratios(&reports);
    for report in &reports {
        println!("RESULT {}", report.json(args));
    }
    println!(
        "answers: the first {} distinct callers got identical JSON in every mode{}{}",
        plan.checked.len(),
        if args.events.len() > 1 {
            ", with and without the call log"
        } else {
            ""
        },
        if args.rounds > 1 { " and round" } else { "" }
    );
    Ok(())
}

fn runtime(name: &str, threads: usize) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// Where the shared services are.
struct Env {
    database_url: String,
    redis_url: String,
}

impl Env {
    /// The service's configuration for `mode`, as its environment variables would give it.
    fn config(&self, mode: Mode, prefix: &str) -> anyhow::Result<Config> {
        let vars = [
            ("DATABASE_URL", self.database_url.as_str()),
            ("REDIS_URL", self.redis_url.as_str()),
            ("REDIS_ENABLED", if mode.redis() { "true" } else { "false" }),
            ("L1_ENABLED", if mode.l1() { "true" } else { "false" }),
            ("CACHE_PREFIX", prefix),
            ("CACHE_KEY_SECRET", KEY_SECRET),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("APP_ENV", "bench"),
        ];
        Config::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned())))
            .with_context(|| format!("configuring the {} server", mode.name()))
    }
}

/// What the database check found.
struct DbFacts {
    postgres_version: String,
}

/// Creates, migrates and seeds the database as the service's start-up does, then checks
/// that it holds the demo data the callers are drawn from (an older, smaller seed would
/// turn known callers into new ones and measure something else).
async fn prepare_database(env: &Env) -> anyhow::Result<DbFacts> {
    let config = env.config(Mode::NoCache, "benchprepare")?;
    let service = startup::prepare(&config).await?;
    let pool = service.state.repo.pool().clone();
    let matching: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM leads
         WHERE id BETWEEN 1 AND $1
           AND phone = '+16462' || lpad((id - 1)::text, 6, '0')
           AND org_id = (id - 1) % $2 + 1",
    )
    .bind(DEMO_LEADS)
    .bind(DEMO_ORGS)
    .fetch_one(&pool)
    .await
    .context("counting the demo leads")?;
    ensure!(
        matching == DEMO_LEADS,
        "the database holds {matching} of the {DEMO_LEADS} demo leads; point DATABASE_URL \
         at a database of its own (it is created and seeded when missing)"
    );
    let postgres_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .context("reading the PostgreSQL version")?;
    pool.close().await;
    Ok(DbFacts { postgres_version })
}

async fn redis_version(url: &str) -> anyhow::Result<String> {
    let mut con = redis_connection(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .context("reading Redis INFO")?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("(unknown version)")
        .trim()
        .to_owned())
}

/// The CPU model from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Total memory from /proc/meminfo, in GiB.
fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "unknown memory".to_owned())
}

/// The requests every mode replays.
struct Plan {
    /// The lead (0-based demo index) calling at each position of the sequence.
    leads: Vec<u32>,
    /// The first distinct callers: (position in the sequence, lead).
    checked: Vec<(usize, u32)>,
}

impl Plan {
    fn new(len: usize) -> anyhow::Result<Plan> {
        let zipf = Zipf::new(DEMO_LEADS as f64, ZIPF_EXPONENT).context("building the Zipf")?;
        let mut rng = StdRng::seed_from_u64(SEED);
        // Zipf draws ranks 1..=n as floats holding whole numbers; rank k is lead k - 1.
        let leads: Vec<u32> = (0..len).map(|_| zipf.sample(&mut rng) as u32 - 1).collect();
        let mut seen = std::collections::HashSet::new();
        let checked: Vec<(usize, u32)> = leads
            .iter()
            .enumerate()
            .filter(|&(_, &lead)| seen.insert(lead))
            .map(|(position, &lead)| (position, lead))
            .take(CHECKED_CALLERS)
            .collect();
        Ok(Plan { leads, checked })
    }

    /// The webhook body for position `position` of the sequence, its call sid `CA{tag}{position}`.
    ///
    /// The load phases tag their sids with the run, so with the call log on, each run's calls
    /// are new ones (a sid seen before would fold its session from every earlier run's
    /// events too); the checked answers use no tag, as the sid is in the answer.
    fn body(&self, position: usize, tag: &str) -> String {
        let lead = i64::from(self.leads[position]);
        let org = lead % DEMO_ORGS + 1;
        // Phone numbers are '+' and digits and the sid is "CA", [a-z0-9-] and digits:
        // nothing to escape.
        format!(
            r#"{{"caller_id":"{}","called_number":"{}","call_sid":"CA{tag}{position}"}}"#,
            demo_lead_phone(lead),
            demo_org_phone(org)
        )
    }
}

/// Cache events, counted: the engine's hit ratios and its loader calls, with their time
/// per entity (where a request's time goes when it misses).
#[derive(Default)]
struct Counters {
    l1_hits: AtomicU64,
    l1_lookups: AtomicU64,
    l2_hits: AtomicU64,
    l2_lookups: AtomicU64,
    loads: [AtomicU64; ENTITIES],
    load_nanos: [AtomicU64; ENTITIES],
    coalesced: AtomicU64,
    l2_errors: AtomicU64,
}

/// SQL statements this process ran, and their total time in nanoseconds: sqlx reports
/// each one as a `sqlx::query` event, counted by [`SqlCounter`].
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static STATEMENT_NANOS: AtomicU64 = AtomicU64::new(0);

/// Counts sqlx's per-statement events (as the tests' `sql_counter` does), which gives the
/// queries each mode sends to PostgreSQL exactly, whatever the repository batches. Its
/// filter admits only that target, so every other callsite stays disabled and costs
/// nothing; sqlx's own cost for an enabled event (a summary and a copy of the SQL text) is
/// a few microseconds per query, in every mode alike.
struct SqlCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlCounter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Elapsed(f64);
        impl tracing::field::Visit for Elapsed {
            fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
                if field.name() == "elapsed_secs" {
                    self.0 = value;
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut elapsed = Elapsed(0.0);
        event.record(&mut elapsed);
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        STATEMENT_NANOS.fetch_add((elapsed.0 * 1e9) as u64, Ordering::Relaxed);
    }
}

/// Installs [`SqlCounter`] as the process's subscriber.
fn count_sql_statements() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::{Layer as _, filter::Targets};
    let subscriber = tracing_subscriber::registry().with(
        SqlCounter.with_filter(Targets::new().with_target("sqlx::query", tracing::Level::TRACE)),
    );
    tracing::subscriber::set_global_default(subscriber).context("installing the SQL counter")
}

/// Room for the voice schema's entities (six).
const ENTITIES: usize = 8;

impl CacheObserver for Counters {
    fn lookup(&self, _entity: Entity, tier: Tier, outcome: Outcome, _took: Duration) {
        let (hits, lookups) = match tier {
            Tier::L1 => (&self.l1_hits, &self.l1_lookups),
            Tier::L2 => (&self.l2_hits, &self.l2_lookups),
        };
        lookups.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Miss {
            hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn load(&self, entity: Entity, _outcome: LoadOutcome, took: Duration) {
        let (Some(loads), Some(nanos)) = (
            self.loads.get(entity.index()),
            self.load_nanos.get(entity.index()),
        ) else {
            return;
        };
        loads.fetch_add(1, Ordering::Relaxed);
        nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn coalesced(&self, _entity: Entity) {
        self.coalesced.fetch_add(1, Ordering::Relaxed);
    }

    fn l2_error(&self, _kind: tiercache::L2ErrorKind) {
        self.l2_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters at one moment (or the difference of two moments).
#[derive(Clone, Copy, Default)]
struct Counts {
    l1_hits: u64,
    l1_lookups: u64,
    l2_hits: u64,
    l2_lookups: u64,
    loads: [u64; ENTITIES],
    load_nanos: [u64; ENTITIES],
    coalesced: u64,
    l2_errors: u64,
    statements: u64,
    statement_nanos: u64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            l1_hits: get(&self.l1_hits),
            l1_lookups: get(&self.l1_lookups),
            l2_hits: get(&self.l2_hits),
            l2_lookups: get(&self.l2_lookups),
            loads: self.loads.each_ref().map(get),
            load_nanos: self.load_nanos.each_ref().map(get),
            coalesced: get(&self.coalesced),
            l2_errors: get(&self.l2_errors),
            statements: get(&STATEMENTS),
            statement_nanos: get(&STATEMENT_NANOS),
        }
    }
}

impl Counts {
    /// `self - other`, field by field (`since` for two snapshots, or a sum with `plus`).
    fn zip(self, other: Counts, f: impl Fn(u64, u64) -> u64) -> Counts {
        let each = |a: [u64; ENTITIES], b: [u64; ENTITIES]| std::array::from_fn(|i| f(a[i], b[i]));
        Counts {
            l1_hits: f(self.l1_hits, other.l1_hits),
            l1_lookups: f(self.l1_lookups, other.l1_lookups),
            l2_hits: f(self.l2_hits, other.l2_hits),
            l2_lookups: f(self.l2_lookups, other.l2_lookups),
            loads: each(self.loads, other.loads),
            load_nanos: each(self.load_nanos, other.load_nanos),
            coalesced: f(self.coalesced, other.coalesced),
            l2_errors: f(self.l2_errors, other.l2_errors),
            statements: f(self.statements, other.statements),
            statement_nanos: f(self.statement_nanos, other.statement_nanos),
        }
    }

    fn since(self, before: Counts) -> Counts {
        self.zip(before, u64::saturating_sub)
    }

    fn plus(self, other: Counts) -> Counts {
        self.zip(other, u64::saturating_add)
    }
}

/// One variant's measured phase.
struct ModeRun {
    variant: Variant,
    requests: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    errors: u64,
    deadline_defaults: u64,
    /// Transport errors and non-200 statuses, warm-up included.
    not_200: u64,
    /// Whether the sequence ran out before the time did.
    capped: bool,
    counts: Counts,
    /// Where the machine's CPU time went while measuring.
    cpu: Option<CpuShares>,
    first_error: Option<String>,
}

impl ModeRun {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn summary_line(&self) -> String {
        let mut line = format!(
            "{:<21} {:>9.0} req/s  p50 {} ms  p99 {} ms  p999 {} ms  max {} ms  errors {}  \
             deadline_defaults {}",
            self.variant.name(),
            self.rps(),
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.errors,
            self.deadline_defaults
        );
        if self.capped {
            line.push_str("  (request cap reached)");
        }
        if let Some(error) = &self.first_error {
            line.push_str(&format!("  first error: {error}"));
        }
        line
    }
}

/// Runs one variant on a fresh server and returns its measurements and the checked
/// answers. Its Redis keys (the cache's and the call log's streams) are deleted afterwards,
/// whether the run succeeded or not.
fn run_mode(
    server_rt: &Runtime,
    client_rt: &Runtime,
    env: &Env,
    args: &Args,
    plan: &Arc<Plan>,
    variant: Variant,
    round: usize,
) -> anyhow::Result<(ModeRun, Vec<Value>)> {
    let mode = variant.mode;
    let prefix = format!(
        "bench{}-{}-e{}-r{round}",
        std::process::id(),
        mode.name(),
        variant.events_name()
    );
    let config = env.config(mode, &prefix)?;
    let counters = Arc::new(Counters::default());
    let server = server_rt.block_on(Server::start(
        &config,
        Arc::clone(&counters),
        variant.events,
    ));
    // Unique per process, variant and round, so no run's calls are another's.
    let tag = format!("{}-{}-", std::process::id(), slot_tag(variant, round));
    let result = server.and_then(|server| {
        let measured =
            client_rt.block_on(drive(&server.base, args, plan, variant, &tag, &counters));
        // Stopped before `?`: a failed mode must not leave its server running.
        let stopped = server_rt.block_on(server.stop());
        let measured = measured?;
        stopped?;
        Ok(measured)
    });
    let cleaned = client_rt.block_on(delete_prefix(&env.redis_url, &prefix));
    let result = result.with_context(|| format!("running {}", variant.name()))?;
    cleaned.with_context(|| format!("deleting the Redis keys of {}", variant.name()))?;
    Ok(result)
}

/// A short tag naming `variant` in `round`: `w1r2` is warm with events, round 2.
fn slot_tag(variant: Variant, round: usize) -> String {
    let mode = match variant.mode {
        Mode::Warm => 'w',
        Mode::L1Only => 'l',
        Mode::RedisOnly => 'r',
        Mode::NoCache => 'n',
    };
    let events = match variant.events {
        Events::On => 'e',
        Events::Publish => 'p',
        Events::Off => 'o',
    };
    format!("{mode}{events}r{round}")
}

/// A service on a loopback port.
struct Server {
    base: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pool: sqlx::PgPool,
    /// The monitor's timer, ticking as in production; stops when dropped.
    monitor: MonitorTask,
    /// The call log's tasks (queue drain, consumer, live feed), when it runs.
    calls: Option<(
        tiercache_server::calls::Calls,
        tiercache_server::calls::CallsTasks,
    )>,
}

impl Server {
    /// Builds the service as its start-up does (metrics and monitor included, as they cost
    /// in production too), with `counters` beside the metrics as the cache's observer, and
    /// with the live call log when `events` (as start-up always runs it), else without
    /// (the webhook then publishes nothing).
    async fn start(
        config: &Config,
        counters: Arc<Counters>,
        events: Events,
    ) -> anyhow::Result<Server> {
        let db = startup::connect(&config.database).await?;
        let pool = db.pool().clone();
        let metrics = Arc::new(Metrics::new(
            tiercache_repository::schema().schema.entities(),
        ));
        let observers: Vec<Arc<dyn CacheObserver>> = vec![metrics.clone(), counters];
        let cache = TwoTierCache::with_observer(config.cache.clone(), Arc::new(Fanout(observers)))
            .context("building the cache")?;
        let calls = match events {
            Events::Off => None,
            Events::On | Events::Publish => {
                let mut config = config.clone();
                config.calls.consume = events == Events::On;
                Some(tiercache_server::calls::start(
                    &config,
                    &cache,
                    pool.clone(),
                    metrics.clone(),
                )?)
            }
        };
        let repo = Repository::new(db, cache);
        let mut state = AppState::new(repo, metrics, config.webhook_budget)
            .with_webhook_secret(config.webhook_secret.clone());
        if let Some((calls, _)) = &calls {
            state = state.with_calls(calls.clone());
        }
        let monitor = state.spawn_monitor(MONITOR_INTERVAL);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let base = format!(
            "http://{}",
            listener.local_addr().context("reading the bound address")?
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(startup::serve(listener, router(state), async move {
            let _ = stopped.await;
        }));
        Ok(Server {
            base,
            stop,
            task,
            pool,
            monitor,
            calls,
        })
    }

    /// Stops the server, waits for it, and closes its Postgres connections (each mode
    /// opens a pool; leaving them open would add up over rounds).
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        drop(self.monitor);
        let served = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.task)
            .await
            .context("waiting for the server to stop")?
            .context("joining the server task")?;
        // The call log's tasks use the pool: stopped before it closes.
        drop(self.calls);
        self.pool.close().await;
        served
    }
}

/// What one worker saw.
#[derive(Default)]
struct WorkerOut {
    /// Durations of the measured requests, in nanoseconds.
    latencies: Vec<u64>,
    errors: u64,
    deadline_defaults: u64,
    not_200: u64,
    last_finish: Option<Instant>,
    exhausted: bool,
    first_error: Option<String>,
}

/// When a run's phases begin and end.
#[derive(Clone, Copy)]
struct Phases {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// The warm-up and measured phases against `base`, then the answers to check.
async fn drive(
    base: &str,
    args: &Args,
    plan: &Arc<Plan>,
    variant: Variant,
    tag: &str,
    counters: &Arc<Counters>,
) -> anyhow::Result<(ModeRun, Vec<Value>)> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        WebhookSecret::DEFAULT_HEADER,
        reqwest::header::HeaderValue::from_static(WEBHOOK_SECRET),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let url: Arc<str> = Arc::from(format!("{base}{WEBHOOK_PATH}"));
    let tag: Arc<str> = Arc::from(tag);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.seconds);
    let phases = Phases {
        start,
        measure_from,
        end,
    };

    let counts_at_start = {
        let counters = Arc::clone(counters);
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            (counters.snapshot(), CpuTicks::now())
        })
    };
    let outs = if args.rate > 0 {
        vec![open_loop(&client, &url, plan, &tag, args, phases).await?]
    } else {
        closed_loop(&client, &url, plan, &tag, args, phases).await?
    };
    let mut latencies = Vec::new();
    let mut run = ModeRun {
        variant,
        requests: 0,
        elapsed: Duration::ZERO,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        p999: Duration::ZERO,
        max: Duration::ZERO,
        errors: 0,
        deadline_defaults: 0,
        not_200: 0,
        capped: false,
        counts: Counts::default(),
        cpu: None,
        first_error: None,
    };
    let mut last_finish = measure_from;
    for out in outs {
        latencies.extend_from_slice(&out.latencies);
        run.errors += out.errors;
        run.deadline_defaults += out.deadline_defaults;
        run.not_200 += out.not_200;
        run.capped |= out.exhausted;
        if run.first_error.is_none() {
            run.first_error = out.first_error;
        }
        if let Some(finished) = out.last_finish {
            last_finish = last_finish.max(finished);
        }
    }
    let (counts_at_end, cpu_at_end) = (counters.snapshot(), CpuTicks::now());
    let (counts_at_start, cpu_at_start) = counts_at_start
        .await
        .context("joining the counter snapshot")?;
    run.counts = counts_at_end.since(counts_at_start);
    run.cpu = cpu_at_end
        .zip(cpu_at_start)
        .and_then(|(end, start)| end.shares_since(start));
    ensure!(
        !latencies.is_empty(),
        "no request was measured (the request cap ran out during the warm-up)"
    );
    // Exact percentiles from every duration, sorted once: at most --max-requests u64s
    // (16 MB at the default cap) and one sort per mode, with no bucketing error and no
    // extra dependency; a histogram (hdrhistogram) would only pay off for much longer runs.
    latencies.sort_unstable();
    run.requests = latencies.len() as u64;
    // Requests started in the measured window count; the window closes when the last of
    // them has answered, so requests and time cover the same span.
    run.elapsed = last_finish.duration_since(measure_from);
    run.p50 = percentile(&latencies, 0.50);
    run.p99 = percentile(&latencies, 0.99);
    run.p999 = percentile(&latencies, 0.999);
    run.max = percentile(&latencies, 1.0);

    let answers = check_answers(&client, &url, plan, variant).await?;
    Ok((run, answers))
}

/// A closed loop: `--concurrency` workers, each sending its next request when the last
/// one is answered.
async fn closed_loop(
    client: &reqwest::Client,
    url: &Arc<str>,
    plan: &Arc<Plan>,
    tag: &Arc<str>,
    args: &Args,
    phases: Phases,
) -> anyhow::Result<Vec<WorkerOut>> {
    let Phases {
        measure_from, end, ..
    } = phases;
    // Worker w takes positions w, w + c, w + 2c, …: together the workers walk the
    // sequence in about its order, whatever the concurrency.
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (client, url, plan, tag) = (
                client.clone(),
                Arc::clone(url),
                Arc::clone(plan),
                Arc::clone(tag),
            );
            let stride = args.concurrency;
            tokio::spawn(async move {
                let mut out = WorkerOut::default();
                let mut position = w;
                loop {
                    if position >= plan.leads.len() {
                        out.exhausted = true;
                        break;
                    }
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let answer = call(&client, &url, plan.body(position, &tag)).await;
                    out.record(started, Instant::now(), answer, measure_from);
                    position += stride;
                }
                out
            })
        })
        .collect();
    let mut outs = Vec::with_capacity(workers.len());
    for worker in workers {
        outs.push(worker.await.context("joining a load worker")?);
    }
    Ok(outs)
}

/// An open loop: request i is due at `start + i / rate` and starts then whatever the
/// answers so far (with at most `--concurrency` in flight; past that it waits for a slot).
/// Each is timed from when it was due, so a server that falls behind shows it in the
/// latencies rather than in a lower offered load.
async fn open_loop(
    client: &reqwest::Client,
    url: &Arc<str>,
    plan: &Arc<Plan>,
    tag: &Arc<str>,
    args: &Args,
    phases: Phases,
) -> anyhow::Result<WorkerOut> {
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut out = WorkerOut::default();
    let per_second = args.rate as f64;
    let mut position = 0usize;
    loop {
        if position >= plan.leads.len() {
            out.exhausted = true;
            break;
        }
        let due = phases.start + Duration::from_secs_f64(position as f64 / per_second);
        if due >= phases.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .context("the in-flight limit closed")?;
        let (client, url, plan, tag) = (
            client.clone(),
            Arc::clone(url),
            Arc::clone(plan),
            Arc::clone(tag),
        );
        in_flight.spawn(async move {
            let answer = call(&client, &url, plan.body(position, &tag)).await;
            drop(slot);
            (due, Instant::now(), answer)
        });
        // Collected as they finish, so the set holds only what is in flight.
        while let Some(done) = in_flight.try_join_next() {
            let (due, finished, answer) = done.context("joining a request")?;
            out.record(due, finished, answer, phases.measure_from);
        }
        position += 1;
    }
    while let Some(done) = in_flight.join_next().await {
        let (due, finished, answer) = done.context("joining a request")?;
        out.record(due, finished, answer, phases.measure_from);
    }
    Ok(out)
}

impl WorkerOut {
    /// Counts one request begun (or due) at `started`: timed when that is in the measured
    /// phase, its failure (transport or status) counted whenever.
    fn record(
        &mut self,
        started: Instant,
        finished: Instant,
        answer: Result<bool, Failure>,
        measure_from: Instant,
    ) {
        if let Err(Failure { not_200: true, .. }) = &answer {
            self.not_200 += 1;
        }
        if started < measure_from {
            return;
        }
        let took = finished.duration_since(started);
        self.latencies
            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        self.last_finish = Some(self.last_finish.map_or(finished, |l| l.max(finished)));
        match answer {
            Ok(deadline_default) => self.deadline_defaults += u64::from(deadline_default),
            Err(failure) => {
                self.errors += 1;
                self.first_error.get_or_insert(failure.message);
            }
        }
    }
}

/// The nearest-rank percentile of sorted nanosecond durations.
fn percentile(sorted: &[u64], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}

/// Why a request did not count as answered.
struct Failure {
    /// A transport error or a status other than 200 (as opposed to a body that did not
    /// parse).
    not_200: bool,
    message: String,
}

/// The part of the answer the load phase looks at: where the greeting came from.
#[derive(Deserialize)]
struct Answer {
    dynamic_variables: Variables,
}

#[derive(Deserialize)]
struct Variables {
    greeting_source: String,
}

/// One webhook call: whether it was answered with the deadline default, or why it failed.
async fn call(client: &reqwest::Client, url: &str, body: String) -> Result<bool, Failure> {
    let transport = |e: reqwest::Error| Failure {
        not_200: true,
        message: error_chain(&e),
    };
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(transport)?;
    if status != reqwest::StatusCode::OK {
        return Err(Failure {
            not_200: true,
            message: format!("status {status}: {}", String::from_utf8_lossy(&bytes)),
        });
    }
    let parsed: Answer = serde_json::from_slice(&bytes).map_err(|e| Failure {
        not_200: false,
        message: format!("unexpected body ({e}): {}", String::from_utf8_lossy(&bytes)),
    })?;
    Ok(parsed.dynamic_variables.greeting_source == "deadline_default")
}

/// An error and its sources on one line (reqwest's own message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The answers to the checked callers, asked one at a time on the otherwise idle server.
async fn check_answers(
    client: &reqwest::Client,
    url: &str,
    plan: &Plan,
    variant: Variant,
) -> anyhow::Result<Vec<Value>> {
    let mode = variant.name();
    let mode = mode.as_str();
    let mut answers = Vec::with_capacity(plan.checked.len());
    for &(position, lead) in &plan.checked {
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(plan.body(position, ""))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
            .with_context(|| format!("{mode}: checking lead {lead}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{mode}: reading lead {lead}'s answer"))?;
        ensure!(
            status == reqwest::StatusCode::OK,
            "{mode}: lead {lead} was answered with {status}: {text}"
        );
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("{mode}: lead {lead}'s answer is not JSON: {text}"))?;
        let source = &answer["dynamic_variables"]["greeting_source"];
        ensure!(
            source == "lead",
            "{mode}: lead {lead}, a known caller, was answered with greeting_source {source} \
             (a deadline_default means the server passed its budget on an idle machine)"
        );
        answers.push(answer);
    }
    Ok(answers)
}

/// Fails when `mode`'s answers differ from the reference mode's, naming the first caller
/// whose answers differ and showing both.
fn compare_answers(
    plan: &Plan,
    reference: Variant,
    expected: &[Value],
    variant: Variant,
    answers: &[Value],
) -> anyhow::Result<()> {
    let (ref_mode, mode) = (reference.name(), variant.name());
    for ((&(_, lead), want), got) in plan.checked.iter().zip(expected).zip(answers) {
        if want != got {
            bail!(
                "answers differ between modes for lead {lead}:\n  {ref_mode}: {want}\n  {mode}: {got}"
            );
        }
    }
    ensure!(
        expected.len() == answers.len(),
        "{ref_mode} checked {} callers, {mode} checked {}",
        expected.len(),
        answers.len()
    );
    Ok(())
}

/// A variant's result over all rounds.
struct Report {
    variant: Variant,
    rounds: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    errors: u64,
    deadline_defaults: u64,
    requests: u64,
    seconds: f64,
    all_200: bool,
    capped: bool,
    counts: Counts,
    /// Where the machine's CPU time went (medians of the rounds, share by share).
    cpu: Option<CpuShares>,
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => 0.0,
        n if n.is_multiple_of(2) => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    }
}

impl Report {
    /// Medians of the rounds for rates, percentiles and CPU shares; the worst round for
    /// the maximum; sums for counts, so a single error in any round shows.
    fn median(variant: Variant, runs: &[ModeRun]) -> Report {
        let of = |f: &dyn Fn(&ModeRun) -> f64| median(runs.iter().map(f).collect());
        let duration =
            |f: &dyn Fn(&ModeRun) -> Duration| Duration::from_secs_f64(of(&|r| f(r).as_secs_f64()));
        let sum = |f: &dyn Fn(&ModeRun) -> u64| runs.iter().map(f).sum::<u64>();
        let cpu: Vec<CpuShares> = runs.iter().filter_map(|r| r.cpu).collect();
        let cpu_median = |f: fn(&CpuShares) -> f64| median(cpu.iter().map(f).collect());
        Report {
            variant,
            rounds: runs.len(),
            rps: of(&|r| r.rps()),
            p50: duration(&|r| r.p50),
            p99: duration(&|r| r.p99),
            p999: duration(&|r| r.p999),
            max: runs.iter().map(|r| r.max).max().unwrap_or_default(),
            errors: sum(&|r| r.errors),
            deadline_defaults: sum(&|r| r.deadline_defaults),
            requests: sum(&|r| r.requests),
            seconds: runs.iter().map(|r| r.elapsed.as_secs_f64()).sum(),
            all_200: runs.iter().all(|r| r.not_200 == 0),
            capped: runs.iter().any(|r| r.capped),
            counts: runs
                .iter()
                .fold(Counts::default(), |total, r| total.plus(r.counts)),
            cpu: (!cpu.is_empty()).then(|| CpuShares {
                busy: cpu_median(|c| c.busy),
                steal: cpu_median(|c| c.steal),
                process: cpu_median(|c| c.process),
                postgres: cpu_median(|c| c.postgres),
                redis: cpu_median(|c| c.redis),
            }),
        }
    }

    fn l1_hit_ratio(&self) -> Option<f64> {
        (self.variant.mode.l1() && self.counts.l1_lookups > 0)
            .then(|| self.counts.l1_hits as f64 / self.counts.l1_lookups as f64)
    }

    fn l2_hit_ratio(&self) -> Option<f64> {
        (self.variant.mode.redis() && self.counts.l2_lookups > 0)
            .then(|| self.counts.l2_hits as f64 / self.counts.l2_lookups as f64)
    }

    /// SQL statements per webhook request.
    fn queries_per_request(&self) -> f64 {
        self.counts.statements as f64 / self.requests.max(1) as f64
    }

    /// Mean time of a SQL statement as sqlx measures it (send to last row), in ms.
    fn mean_query_ms(&self) -> f64 {
        self.counts.statement_nanos as f64 / self.counts.statements.max(1) as f64 / 1e6
    }

    /// Per entity: values loaded from PostgreSQL per request, and the mean time of the
    /// load that brought them, in ms (one batched query may bring several entities).
    fn loads_by_entity(&self) -> Vec<(Entity, f64, f64)> {
        tiercache_repository::schema()
            .schema
            .entities()
            .filter(|e| self.counts.loads.get(e.index()).is_some_and(|n| *n > 0))
            .map(|e| {
                let loads = self.counts.loads[e.index()];
                (
                    e,
                    loads as f64 / self.requests.max(1) as f64,
                    self.counts.load_nanos[e.index()] as f64 / loads as f64 / 1e6,
                )
            })
            .collect()
    }

    fn json(&self, args: &Args) -> Value {
        let round = |x: f64, places: i32| {
            let scale = 10f64.powi(places);
            (x * scale).round() / scale
        };
        let ms = |d: Duration| round(d.as_secs_f64() * 1e3, 3);
        let loads: serde_json::Map<String, Value> = self
            .loads_by_entity()
            .into_iter()
            .map(|(e, per_request, mean_ms)| {
                (
                    e.as_str().to_owned(),
                    json!({"per_request": round(per_request, 4), "mean_ms": round(mean_ms, 3)}),
                )
            })
            .collect();
        json!({
            "mode": self.variant.mode.name(),
            "events": self.variant.events_name(),
            "rate": (args.rate > 0).then_some(args.rate),
            "rps": round(self.rps, 1),
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "p999_ms": ms(self.p999),
            "max_ms": ms(self.max),
            "errors": self.errors,
            "deadline_defaults": self.deadline_defaults,
            "all_200": self.all_200,
            "requests": self.requests,
            "concurrency": args.concurrency,
            "seconds": round(self.seconds, 3),
            "rounds": self.rounds,
            "capped": self.capped,
            "l1_hit_ratio": self.l1_hit_ratio().map(|r| round(r, 4)),
            "l2_hit_ratio": self.l2_hit_ratio().map(|r| round(r, 4)),
            "queries_per_request": round(self.queries_per_request(), 4),
            "mean_query_ms": round(self.mean_query_ms(), 3),
            "loads": loads,
            "coalesced": self.counts.coalesced,
            "l2_errors": self.counts.l2_errors,
            "cpu": self.cpu.map(|c| json!({
                "busy": round(c.busy, 3),
                "this_process": round(c.process, 3),
                "postgres": round(c.postgres, 3),
                "redis": round(c.redis, 3),
                "other": round(c.other(), 3),
            })),
        })
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0))
}

fn print_table(reports: &[Report], args: &Args) {
    // Each variant against no-cache with the same call log setting.
    let baseline = |events: Events| {
        reports
            .iter()
            .find(|r| r.variant.mode == Mode::NoCache && r.variant.events == events)
            .map(|r| r.rps)
    };
    println!();
    if args.rounds > 1 {
        println!(
            "medians of {} rounds (max: the worst round; counts: all rounds)",
            args.rounds
        );
    }
    println!(
        "{:<21} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6} {:>6} {:>9}",
        "mode",
        "rps",
        "×base",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "errors",
        "deadline",
        "all 200",
        "L1 hit",
        "L2 hit",
        "SQL/req",
    );
    for r in reports {
        let ratio = baseline(r.variant.events)
            .map_or_else(|| "-".to_owned(), |b| format!("{:.2}", r.rps / b));
        println!(
            "{:<21} {:>7.0} {:>6} {:>7} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6} {:>6} {:>9.3}{}",
            r.variant.name(),
            r.rps,
            ratio,
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            ms(r.max),
            r.errors,
            r.deadline_defaults,
            if r.all_200 { "yes" } else { "NO" },
            percent(r.l1_hit_ratio()),
            percent(r.l2_hit_ratio()),
            r.queries_per_request(),
            if r.capped {
                "  (request cap reached)"
            } else {
                ""
            }
        );
    }
    println!("×base: rps over no-cache's; deadline: answers with greeting_source deadline_default");
    println!(
        "\nSQL statements (mean time), then values loaded from PostgreSQL per request × the \
         mean time of their load:"
    );
    for r in reports {
        let loads: Vec<String> = r
            .loads_by_entity()
            .into_iter()
            .map(|(e, per_request, mean_ms)| format!("{e} {per_request:.3} × {mean_ms:.2} ms"))
            .collect();
        println!(
            "  {:<21} {:.3} SQL/req ({:.2} ms); {}",
            r.variant.name(),
            r.queries_per_request(),
            r.mean_query_ms(),
            loads.join(", ")
        );
    }
    println!("\nCPU while measuring, as shares of all cores (self: server + load generator):");
    for r in reports {
        let Some(c) = r.cpu else { continue };
        println!(
            "  {:<21} busy {:>4}: self {:>4}, postgres {:>4}, redis {:>4}, other {:>4}",
            r.variant.name(),
            percent(Some(c.busy)),
            percent(Some(c.process)),
            percent(Some(c.postgres)),
            percent(Some(c.redis)),
            percent(Some(c.other())),
        );
    }
    println!();
}

/// For each mode run both with and without the call log: its latencies and throughput with
/// it over without it (the target: p99 within 5 %).
fn print_event_ratios(reports: &[Report]) {
    let pairs: Vec<(&Report, &Report)> = reports
        .iter()
        .filter(|on| on.variant.events != Events::Off)
        .filter_map(|on| {
            reports
                .iter()
                .find(|off| {
                    off.variant.events == Events::Off && off.variant.mode == on.variant.mode
                })
                .map(|off| (on, off))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!(
        "call log on (or publish only) ÷ off, same mode and offered load (target: p99 ≤ 1.05):"
    );
    for (on, off) in pairs {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "  {:<22} p50 {:.3}  p99 {:.3}  p999 {:.3}  rps {:.3}",
            on.variant.name(),
            ratio(on.p50, off.p50),
            ratio(on.p99, off.p99),
            ratio(on.p999, off.p999),
            on.rps / off.rps.max(f64::MIN_POSITIVE)
        );
        println!(
            "RATIO {}",
            json!({
                "mode": on.variant.mode.name(),
                "events": on.variant.events_name(),
                "p50": ratio(on.p50, off.p50),
                "p99": ratio(on.p99, off.p99),
                "p999": ratio(on.p999, off.p999),
                "rps": on.rps / off.rps.max(f64::MIN_POSITIVE),
            })
        );
    }
    println!();
}
