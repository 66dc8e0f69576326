//! `round_trip`: what one round trip to Redis and to PostgreSQL costs this machine in CPU,
//! the client's and the server's, with nothing else running: the price a cache pays for
//! each Redis command it cannot share a write with, next to the comparison's CPU per
//! operation (`compare`).
//!
//! ```sh
//! cargo run --release -p tiercache-benches --bin round_trip
//! ```
//!
//! Each probe sends a fixed count of the smallest commands (Redis `GET` of a 200-byte value
//! over one multiplexed connection, as the cache's L2 does; PostgreSQL `SELECT $1::int8`
//! through a sqlx pool), first one at a time, then four at once (whose commands can share
//! a write and a wake-up), on a two-thread runtime like the comparison's, twice.
//!
//! `--commands N` sets the count per probe (default 40,000; a multiple of four).
//!
//! Needs the shared PostgreSQL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`)
//! and Redis (`REDIS_URL`).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tiercache_benches::cpu::CpuTicks;
use tiercache_benches::redis_connection;

/// Commands per probe unless `--commands` says otherwise: a few seconds of CPU at this
/// machine's prices, so the clock ticks (10 ms) are well under one per cent of it.
const DEFAULT_COMMANDS: usize = 40_000;
/// The probes run twice, so a quoted figure is one of two that agree.
const PASSES: usize = 2;
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
const KEY: &str = "tiercache:round_trip:probe";

/// One probe's figures, in µs per command.
struct Cost {
    wall: f64,
    client: f64,
    server: f64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("round_trip: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let commands = commands_flag(std::env::args().skip(1))?;
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let redis = redis_connection(&redis_url).await?;
        let mut setup = redis.clone();
        redis::cmd("SET")
            .arg(KEY)
            .arg(vec![b'v'; 200])
            .query_async::<()>(&mut setup)
            .await
            .context("writing the probe's key")?;
        let pg = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await
            .with_context(|| format!("connecting to {database_url}"))?;

        println!("| probe | in flight | wall µs/command | client CPU µs | server CPU µs | both |");
        println!("|---|---|---|---|---|---|");
        for pass in 1..=PASSES {
            for in_flight in [1, 4] {
                let redis = redis.clone();
                let cost = measure(commands, in_flight, Server::Redis, move || {
                    let mut conn = redis.clone();
                    async move {
                        redis::cmd("GET")
                            .arg(KEY)
                            .query_async::<Option<Vec<u8>>>(&mut conn)
                            .await
                            .map(drop)
                            .context("GET")
                    }
                })
                .await?;
                print_row(pass, "Redis GET", in_flight, &cost);
            }
            for in_flight in [1, 4] {
                let pg = pg.clone();
                let cost = measure(commands, in_flight, Server::Postgres, move || {
                    let pg = pg.clone();
                    async move {
                        sqlx::query_scalar::<_, i64>("SELECT $1::int8")
                            .bind(1_i64)
                            .fetch_one(&pg)
                            .await
                            .map(drop)
                            .context("SELECT")
                    }
                })
                .await?;
                print_row(pass, "PostgreSQL SELECT $1", in_flight, &cost);
            }
        }
        redis::cmd("DEL")
            .arg(KEY)
            .query_async::<()>(&mut setup)
            .await
            .context("deleting the probe's key")?;
        Ok(())
    })
}

/// The `--commands N` flag, the only one.
fn commands_flag(mut args: impl Iterator<Item = String>) -> anyhow::Result<usize> {
    let Some(flag) = args.next() else {
        return Ok(DEFAULT_COMMANDS);
    };
    anyhow::ensure!(
        flag == "--commands",
        "unknown argument {flag:?} (usage: round_trip [--commands N])"
    );
    let value = args.next().context("--commands needs a count")?;
    let commands: usize = value
        .parse()
        .with_context(|| format!("--commands {value:?} is not a count"))?;
    anyhow::ensure!(
        commands >= 4 && commands.is_multiple_of(4),
        "--commands {commands}: give a multiple of four, at least 4"
    );
    anyhow::ensure!(args.next().is_none(), "only --commands N is accepted");
    Ok(commands)
}

/// Which server's CPU a probe charges.
#[derive(Clone, Copy)]
enum Server {
    Redis,
    Postgres,
}

/// Sends `commands` commands made by `command`, `in_flight` at a time.
async fn measure<F, Fut>(
    commands: usize,
    in_flight: usize,
    server: Server,
    command: F,
) -> anyhow::Result<Cost>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let before = CpuTicks::now().context("reading /proc")?;
    let started = Instant::now();
    let per_task = commands / in_flight;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let command = command.clone();
        tasks.spawn(async move {
            for _ in 0..per_task {
                command().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a probe task panicked")??;
    }
    let wall = started.elapsed().as_secs_f64();
    let [client, postgres, redis] = CpuTicks::now()
        .context("reading /proc")?
        .work_split_since(before);
    let per = |secs: f64| secs * 1e6 / (per_task * in_flight) as f64;
    Ok(Cost {
        wall: per(wall),
        client: per(client),
        server: per(match server {
            Server::Redis => redis,
            Server::Postgres => postgres,
        }),
    })
}

fn print_row(pass: usize, probe: &str, in_flight: usize, cost: &Cost) {
    println!(
        "| {probe} (pass {pass}) | {in_flight} | {:.1} | {:.1} | {:.1} | {:.1} |",
        cost.wall,
        cost.client,
        cost.server,
        cost.client + cost.server
    );
}
