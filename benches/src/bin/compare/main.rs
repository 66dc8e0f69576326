//! `compare`: Tiercache side by side with what teams use instead, in one run, on the
//! benchmark workload of the design (reads of a lead by phone and organization, Zipf
//! popularity, 5 % updates).
//!
//! ```sh
//! cargo run --release -p tiercache-benches --bin compare
//! ```
//!
//! Modes: `postgres` (no cache), `redis-readthrough` and `moka-redis` (written by hand as
//! teams write them), `bound` (a bare sharded map: the machine's limit), and Tiercache with
//! both tiers, with L1 only, and as two instances. Each mode runs in a child process of its
//! own (this binary, re-executed with `--child`), so memory and caches are its alone; the
//! parent interleaves the modes over rounds and reports medians. Every mode replays the
//! same operations (fixed seed), checks every read against the last committed write, and
//! ends with a stampede probe (500 concurrent reads of one cold key).
//!
//! Needs the shared PostgreSQL (`COMPARE_DATABASE_URL`: a database of its own, created and
//! seeded when missing) and Redis (`REDIS_URL`); each run's keys live under a prefix of
//! their own, deleted afterwards.

mod args;
mod chart;
mod child;
mod foreign;
mod handwritten;
mod histogram;
mod modes;
mod parent;
mod report;
mod results;
mod services;
mod tiered;
mod trace;

use std::process::ExitCode;

use args::{Args, USAGE};

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
    match &args.child {
        // A child prints its result as one JSON line, and nothing else, on stdout.
        Some(child) => match child::run(&args, child)
            .and_then(|run| serde_json::to_string(&run).map_err(anyhow::Error::from))
        {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: error: {e:#}", child.mode.name());
                ExitCode::FAILURE
            }
        },
        None => match parent::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
