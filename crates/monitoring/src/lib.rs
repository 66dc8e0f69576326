//! Tiercache's observability: Prometheus metrics fed by the cache's observer and an HTTP
//! layer, health checks, hit-rate statistics, alerts (in process and as Prometheus rules),
//! and a live Server-Sent Events stream, served by axum.

mod age;
pub mod alerts;
pub mod call_log;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod routes;
pub mod stats;
#[cfg(test)]
mod test_entities;

pub use call_log::{CallDropReason, CallLogMetrics, FeedClientGuard, FeedTransport};
pub use health::{CallLogProbe, CallLogSample, CallsHealth, DatabaseProbe, DbPoolState};
pub use metrics::Metrics;
pub use monitor::{Monitor, MonitorTask};
pub use routes::{MonitoringState, router, track_http};
