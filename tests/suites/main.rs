//! End-to-end suites, one test binary: each module says what belongs in it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod api;
mod auth;
mod bus;
mod cache_call;
mod cache_concurrency;
mod cache_faults;
mod cache_invalidation;
mod cache_l1;
mod cache_modes;
mod cache_reads;
mod calls_page;
mod cross_instance;
mod db_notify;
mod fixtures;
mod hostile_input;
mod log_floods;
mod logs;
mod monitoring;
mod monitoring_privacy;
mod pg_server;
mod postgres_down;
mod postgres_restart;
mod prometheus;
mod queries;
mod redis_faults;
mod redis_refusals;
mod sealing;
mod stale_values;
mod staleness_bound;
mod tls;
mod webhook_contract;
mod write_through;
