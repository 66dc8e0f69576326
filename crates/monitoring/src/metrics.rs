//! The metrics registry: every series Tiercache exports, with handles resolved once so the
//! hot path only bumps an atomic.
//!
//! Names follow Prometheus conventions (`tiercache_<what>_<unit>`, `_total` on counters,
//! seconds and bytes). Labels come from the cache crate's enums and from route templates,
//! so their sets are fixed: never a key, a phone number or an id. Only label combinations
//! the engine can report are exported (no L1 lookup latency: L1 lookups are not timed),
//! so no series sits at zero forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::age::AgeHistograms;
use crate::call_log::CallLogMetrics;
use crate::health::DbPoolState;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tiercache::{
    CacheObserver, CircuitState, CorruptKind, Entity, EvictionCause, InvalidationSource,
    L2ErrorKind, LoadOutcome, Outcome, StaleReason, Tier, TwoTierCache,
};

/// Latency buckets: 50 µs, where an L2 hit falls, to 10 s, past the longest deadline on a
/// request's path (the 2 s load, statement and acquire timeouts), so a slow incident shows
/// its size instead of piling up in the last bucket.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The commit the binary was built from (`build.rs`), or `unknown`.
pub const COMMIT: &str = env!("TIERCACHE_COMMIT");

/// Age buckets: 100 ms to an hour (the longest L2 TTL is 30 minutes).
pub const AGE_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

const T: usize = Tier::ALL.len();
const O: usize = Outcome::ALL.len();
const K: usize = CorruptKind::ALL.len();

/// Every metric, registered in one [`Registry`].
pub struct Metrics {
    registry: Registry,
    /// The declared entities the series are for, in index order.
    entities: Vec<Entity>,
    requests: Vec<IntCounter>,
    lookup_seconds: Vec<Histogram>,
    loads: Vec<IntCounter>,
    load_seconds: Vec<Histogram>,
    coalesced: Vec<IntCounter>,
    stale: Vec<IntCounter>,
    /// Indexed by (entity, tier, kind); `None` where the engine never reports the pair.
    corrupt: Vec<Option<IntCounter>>,
    l2_errors: Vec<IntCounter>,
    evictions: Vec<IntCounter>,
    invalidations: Vec<IntCounter>,
    circuit_transitions: Vec<IntCounter>,
    age_seconds: Arc<AgeHistograms>,
    owed_replayed: IntCounter,
    bus_messages: IntCounter,
    bus_lag: Histogram,
    bus_gaps: IntCounter,
    circuit_state: IntGaugeVec,
    l1_entries: IntGauge,
    l1_bytes: IntGauge,
    l1_max_bytes: IntGauge,
    owed_invalidations: IntGauge,
    l1_trusted: IntGauge,
    redis_up: IntGauge,
    redis_enabled: IntGauge,
    redis_pool_connections: IntGauge,
    redis_pool_idle: IntGauge,
    db_pool_connections: IntGauge,
    db_pool_idle: IntGauge,
    db_pool_max: IntGauge,
    db_pool_waiting: IntGauge,
    db_acquire_seconds: Histogram,
    db_acquire_failures: IntCounter,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    webhook_fallbacks: IntCounter,
    webhook_unknown_fields: IntCounter,
    admin_actions: IntCounterVec,
    call_log: CallLogMetrics,
    // Totals the alert evaluation reads without gathering every series.
    http_total: AtomicU64,
    http_server_errors: AtomicU64,
    http_nanos: AtomicU64,
}

/// Registers `collector` and returns it; names are static, so a clash is a programming error
/// caught by the tests, not a runtime condition.
pub(crate) fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    if let Err(e) = registry.register(Box::new(collector.clone())) {
        tracing::error!(error = %e, "metric registered twice");
    }
    collector
}

fn counters(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    values: Vec<Vec<&str>>,
) -> Vec<IntCounter> {
    let vec = register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(invalid_definition),
    );
    values.iter().map(|v| vec.with_label_values(v)).collect()
}

fn histograms(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
    values: Vec<Vec<&str>>,
) -> Vec<Histogram> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = register(
        registry,
        HistogramVec::new(opts, labels).unwrap_or_else(invalid_definition),
    );
    values.iter().map(|v| vec.with_label_values(v)).collect()
}

/// Metric definitions are static and valid; prometheus only fails on invalid names.
pub(crate) fn invalid_definition<T>(e: prometheus::Error) -> T {
    panic!("invalid metric definition: {e}")
}

/// Every (entity, tier, outcome) for `tiers`, in index order.
fn entity_tier_outcome(entities: &[Entity], tiers: &[Tier]) -> Vec<Vec<&'static str>> {
    let mut out = Vec::with_capacity(entities.len() * tiers.len() * O);
    for e in entities {
        for t in tiers {
            for o in Outcome::ALL {
                out.push(vec![e.as_str(), t.as_str(), o.as_str()]);
            }
        }
    }
    out
}

fn per_entity<I: Copy>(
    entities: &[Entity],
    other: &[I],
    name: impl Fn(I) -> &'static str,
) -> Vec<Vec<&'static str>> {
    let mut out = Vec::new();
    for e in entities {
        for x in other {
            out.push(vec![e.as_str(), name(*x)]);
        }
    }
    out
}

impl Metrics {
    /// A registry with every Tiercache metric, a series per declared entity (see
    /// [`tiercache::Schema::entities`]), in the order of [`Entity::index`].
    #[allow(clippy::too_many_lines)]
    pub fn new(declared: impl IntoIterator<Item = Entity>) -> Self {
        let r = Registry::new();
        let declared: Vec<Entity> = declared.into_iter().collect();
        let entities: Vec<Vec<&str>> = declared.iter().map(|e| vec![e.as_str()]).collect();
        let requests = counters(
            &r,
            "tiercache_cache_requests_total",
            "Cache lookups by entity, tier and result.",
            &["entity", "tier", "result"],
            entity_tier_outcome(&declared, &Tier::ALL),
        );
        // Only the timed tiers: an L1 series would never get a sample.
        let lookup_seconds = histograms(
            &r,
            "tiercache_cache_lookup_duration_seconds",
            "Time to look a key up in one tier (L2 only: L1 lookups are not timed).",
            &LATENCY_BUCKETS,
            &["entity", "tier", "result"],
            entity_tier_outcome(&declared, &Tier::TIMED),
        );
        let loads = counters(
            &r,
            "tiercache_loads_total",
            "Loader calls (reads from PostgreSQL) by entity and result.",
            &["entity", "result"],
            per_entity(&declared, &LoadOutcome::ALL, LoadOutcome::as_str),
        );
        let load_seconds = histograms(
            &r,
            "tiercache_load_duration_seconds",
            "Loader call duration.",
            &LATENCY_BUCKETS,
            &["entity"],
            entities.clone(),
        );
        let coalesced = counters(
            &r,
            "tiercache_coalesced_loads_total",
            "Callers served by another caller's load of the same key.",
            &["entity"],
            entities.clone(),
        );
        let mut stale_labels = Vec::new();
        for e in &declared {
            for reason in StaleReason::ALL {
                stale_labels.push(vec![e.as_str(), reason.as_str()]);
            }
        }
        let stale = counters(
            &r,
            "tiercache_stale_served_total",
            "Stale values served within their grace window, by why: the loader failed or passed the soft timeout.",
            &["entity", "reason"],
            stale_labels,
        );
        let corrupt_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tiercache_corrupt_entries_total",
                    "Unreadable cached payloads, treated as misses.",
                ),
                &["entity", "tier", "kind"],
            )
            .unwrap_or_else(invalid_definition),
        );
        let mut corrupt = Vec::with_capacity(declared.len() * T * K);
        for e in &declared {
            for t in Tier::ALL {
                for k in CorruptKind::ALL {
                    corrupt.push(k.occurs_in(t).then(|| {
                        corrupt_vec.with_label_values(&[e.as_str(), t.as_str(), k.as_str()])
                    }));
                }
            }
        }
        let l2_errors = counters(
            &r,
            "tiercache_l2_errors_total",
            "Redis commands that failed or were skipped, by kind.",
            &["kind"],
            L2ErrorKind::ALL.iter().map(|k| vec![k.as_str()]).collect(),
        );
        let evictions = counters(
            &r,
            "tiercache_l1_evictions_total",
            "Entries L1 dropped on its own, by cause.",
            &["entity", "cause"],
            per_entity(&declared, &EvictionCause::ALL, EvictionCause::as_str),
        );
        let invalidations = counters(
            &r,
            "tiercache_invalidations_total",
            "Invalidations by entity and source.",
            &["entity", "source"],
            per_entity(
                &declared,
                &InvalidationSource::ALL,
                InvalidationSource::as_str,
            ),
        );
        let circuit_transitions = counters(
            &r,
            "tiercache_circuit_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            &["state"],
            CircuitState::ALL.iter().map(|s| vec![s.as_str()]).collect(),
        );
        let age_seconds =
            Arc::new(AgeHistograms::new(&declared).unwrap_or_else(invalid_definition));
        if let Err(e) = r.register(Box::new(SharedCollector(Arc::clone(&age_seconds)))) {
            tracing::error!(error = %e, "metric registered twice");
        }
        let owed_replayed = register(
            &r,
            IntCounter::new(
                "tiercache_owed_invalidations_replayed_total",
                "Redis deletes replayed after Redis came back.",
            )
            .unwrap_or_else(invalid_definition),
        );
        let bus_messages = register(
            &r,
            IntCounter::new(
                "tiercache_bus_messages_total",
                "Invalidations heard from other instances on the bus.",
            )
            .unwrap_or_else(invalid_definition),
        );
        let bus_lag = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "tiercache_bus_lag_seconds",
                    "Time from another instance's invalidation to its arrival here.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(invalid_definition),
        );
        let bus_gaps = register(
            &r,
            IntCounter::new(
                "tiercache_bus_gaps_total",
                "Times the bus subscriber missed more than the stream keeps and flushed L1.",
            )
            .unwrap_or_else(invalid_definition),
        );
        let circuit_state = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tiercache_circuit_state",
                    "1 for the circuit breaker's current state.",
                ),
                &["state"],
            )
            .unwrap_or_else(invalid_definition),
        );
        let gauge = |name: &str, help: &str| {
            register(
                &r,
                IntGauge::new(name, help).unwrap_or_else(invalid_definition),
            )
        };
        let l1_entries = gauge("tiercache_l1_entries", "Entries in L1.");
        let l1_bytes = gauge("tiercache_l1_bytes", "Bytes charged against the L1 bound.");
        let l1_max_bytes = gauge("tiercache_l1_max_bytes", "The L1 bound in bytes.");
        let owed_invalidations = gauge(
            "tiercache_owed_invalidations",
            "Redis deletes not yet replayed.",
        );
        let l1_trusted = gauge(
            "tiercache_l1_trusted",
            "1 while every invalidation feed is live (L1 served until its TTL); 0 while values older than half the staleness bound are loaded again.",
        );
        let redis_up = gauge(
            "tiercache_redis_up",
            "1 when Redis answers, 0 when it does not or is disabled.",
        );
        let redis_enabled = gauge(
            "tiercache_redis_enabled",
            "1 when the cache has a Redis tier.",
        );
        let redis_pool_connections = gauge(
            "tiercache_redis_pool_connections",
            "Open Redis connections.",
        );
        let redis_pool_idle = gauge(
            "tiercache_redis_pool_idle_connections",
            "Idle Redis connections.",
        );
        let db_pool_connections = gauge(
            "tiercache_postgres_pool_connections",
            "Open PostgreSQL connections, idle or in use.",
        );
        let db_pool_idle = gauge(
            "tiercache_postgres_pool_idle_connections",
            "Idle PostgreSQL connections.",
        );
        let db_pool_max = gauge(
            "tiercache_postgres_pool_max_connections",
            "The PostgreSQL pool's bound.",
        );
        let db_pool_waiting = gauge(
            "tiercache_postgres_pool_waiting",
            "Requests waiting for a PostgreSQL connection.",
        );
        let db_acquire_seconds = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "tiercache_postgres_pool_acquire_duration_seconds",
                    "Time a request waited for a PostgreSQL connection, got or not.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(invalid_definition),
        );
        let db_acquire_failures = register(
            &r,
            IntCounter::new(
                "tiercache_postgres_pool_acquire_failures_total",
                "Requests that got no PostgreSQL connection (acquire timeout, refused).",
            )
            .unwrap_or_else(invalid_definition),
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tiercache_build_info",
                    "Always 1; the version and commit the binary was built from.",
                ),
                &["version", "commit"],
            )
            .unwrap_or_else(invalid_definition),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), COMMIT])
            .set(1);
        // CPU, memory, open files and start time (process_*), read from /proc at scrape time.
        #[cfg(target_os = "linux")]
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::error!(error = %e, "metric registered twice");
        }
        let http_requests = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tiercache_http_requests_total",
                    "HTTP requests by route template, method and status.",
                ),
                &["route", "method", "status"],
            )
            .unwrap_or_else(invalid_definition),
        );
        let http_seconds = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "tiercache_http_request_duration_seconds",
                    "HTTP request duration by route template and method.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "method"],
            )
            .unwrap_or_else(invalid_definition),
        );
        let webhook_fallbacks = register(
            &r,
            IntCounter::new(
                "tiercache_webhook_deadline_fallbacks_total",
                "Webhook calls answered with the default greeting past their budget.",
            )
            .unwrap_or_else(invalid_definition),
        );
        // Label-free: a field's name is client input, never a label.
        let webhook_unknown_fields = register(
            &r,
            IntCounter::new(
                "tiercache_webhook_unknown_fields_total",
                "Top-level fields of webhook requests that the service does not know, ignored.",
            )
            .unwrap_or_else(invalid_definition),
        );
        let admin_actions = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tiercache_admin_actions_total",
                    "Admin API actions, by action and result.",
                ),
                &["action", "result"],
            )
            .unwrap_or_else(invalid_definition),
        );
        let call_log = CallLogMetrics::register(&r);
        Metrics {
            registry: r,
            entities: declared,
            requests,
            lookup_seconds,
            loads,
            load_seconds,
            coalesced,
            stale,
            corrupt,
            l2_errors,
            evictions,
            invalidations,
            circuit_transitions,
            age_seconds,
            owed_replayed,
            bus_messages,
            bus_lag,
            bus_gaps,
            circuit_state,
            l1_entries,
            l1_bytes,
            l1_max_bytes,
            owed_invalidations,
            l1_trusted,
            redis_up,
            redis_enabled,
            redis_pool_connections,
            redis_pool_idle,
            db_pool_connections,
            db_pool_idle,
            db_pool_max,
            db_pool_waiting,
            db_acquire_seconds,
            db_acquire_failures,
            http_requests,
            http_seconds,
            webhook_fallbacks,
            webhook_unknown_fields,
            admin_actions,
            call_log,
            http_total: AtomicU64::new(0),
            http_server_errors: AtomicU64::new(0),
            http_nanos: AtomicU64::new(0),
        }
    }

    /// The call log's series.
    pub fn call_log(&self) -> &CallLogMetrics {
        &self.call_log
    }

    /// Records one HTTP request.
    pub fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .with_label_values(&[route, method, status_label(status)])
            .inc();
        self.http_seconds
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
        self.http_total.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.http_server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.http_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// HTTP responses so far: (all, server errors, summed duration).
    pub fn http_totals(&self) -> (u64, u64, Duration) {
        (
            self.http_total.load(Ordering::Relaxed),
            self.http_server_errors.load(Ordering::Relaxed),
            Duration::from_nanos(self.http_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Webhook calls answered past their budget so far.
    pub fn webhook_fallbacks(&self) -> u64 {
        self.webhook_fallbacks.get()
    }

    /// Counts a webhook answered past its budget.
    pub fn webhook_fallback(&self) {
        self.webhook_fallbacks.inc();
    }

    /// Counts `n` fields a webhook request carried that the service does not know.
    pub fn webhook_unknown_fields(&self, n: u64) {
        self.webhook_unknown_fields.inc_by(n);
    }

    /// Counts an admin action.
    pub fn admin_action(&self, action: &'static str, result: &'static str) {
        self.admin_actions
            .with_label_values(&[action, result])
            .inc();
    }

    /// Records one wait for a PostgreSQL connection, which got one (`ok`) or not.
    pub fn db_acquired(&self, took: Duration, ok: bool) {
        self.db_acquire_seconds.observe(took.as_secs_f64());
        if !ok {
            self.db_acquire_failures.inc();
        }
    }

    /// Sets the PostgreSQL pool gauges, read before each scrape.
    pub fn set_db_pool(&self, pool: DbPoolState) {
        self.db_pool_connections.set(i64::from(pool.size));
        self.db_pool_idle.set(i64::from(pool.idle));
        self.db_pool_max.set(i64::from(pool.max));
        self.db_pool_waiting.set(i64::from(pool.waiting));
    }

    /// Whether Redis answered the last health probe.
    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    /// Lookups by (entity, tier, outcome) so far.
    pub fn requests(&self, entity: Entity, tier: Tier, outcome: Outcome) -> u64 {
        self.requests
            .get(lookup_index(entity, tier, outcome))
            .map_or(0, IntCounter::get)
    }

    /// The entities the series are for.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    /// Every series, in the Prometheus text format; gauges are read from `cache` first.
    pub fn render(&self, cache: &TwoTierCache) -> String {
        let l1 = cache.l1_stats();
        self.l1_entries.set(saturate(l1.entries));
        self.l1_bytes.set(saturate(l1.weighted_bytes));
        self.l1_max_bytes.set(saturate(l1.max_bytes));
        self.owed_invalidations
            .set(saturate(cache.owed_invalidations() as u64));
        self.l1_trusted.set(i64::from(cache.l1_trusted()));
        self.redis_enabled.set(i64::from(cache.has_l2()));
        let current = cache.circuit();
        for state in CircuitState::ALL {
            self.circuit_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(current == Some(state)));
        }
        if let Some(pool) = cache.pool_state() {
            self.redis_pool_connections.set(i64::from(pool.connections));
            self.redis_pool_idle.set(i64::from(pool.idle));
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers a collector the metrics keep a handle to.
struct SharedCollector(Arc<AgeHistograms>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Status codes as a label: the exact code (a fixed, small set in practice).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        415 => "415",
        422 => "422",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

fn lookup_index(entity: Entity, tier: Tier, outcome: Outcome) -> usize {
    (entity.index() * T + tier as usize) * O + outcome as usize
}

/// Where a lookup's duration goes, if its tier is timed.
fn timed_index(entity: Entity, tier: Tier, outcome: Outcome) -> Option<usize> {
    let t = Tier::TIMED.iter().position(|&timed| timed == tier)?;
    Some((entity.index() * Tier::TIMED.len() + t) * O + outcome as usize)
}

/// Counts one event in `series[i]`; an entity this registry was not built for has none,
/// and is not counted (never a panic, never a new series).
fn inc(series: &[IntCounter], i: usize) {
    if let Some(counter) = series.get(i) {
        counter.inc();
    }
}

impl CacheObserver for Metrics {
    fn lookup(&self, entity: Entity, tier: Tier, outcome: Outcome, took: Duration) {
        inc(&self.requests, lookup_index(entity, tier, outcome));
        // L1 lookups are not timed (see `CacheObserver::lookup`): only L2 has a duration.
        if let Some(histogram) =
            timed_index(entity, tier, outcome).and_then(|t| self.lookup_seconds.get(t))
        {
            histogram.observe(took.as_secs_f64());
        }
    }

    fn served(&self, entity: Entity, tier: Tier, age: Duration) {
        self.age_seconds.observe(entity, tier, age);
    }

    fn load(&self, entity: Entity, outcome: LoadOutcome, took: Duration) {
        inc(
            &self.loads,
            entity.index() * LoadOutcome::ALL.len() + outcome as usize,
        );
        if let Some(histogram) = self.load_seconds.get(entity.index()) {
            histogram.observe(took.as_secs_f64());
        }
    }

    fn coalesced(&self, entity: Entity) {
        inc(&self.coalesced, entity.index());
    }

    fn stale_served(&self, entity: Entity, reason: StaleReason) {
        inc(
            &self.stale,
            entity.index() * StaleReason::ALL.len() + reason as usize,
        );
    }

    fn corrupt(&self, entity: Entity, tier: Tier, kind: CorruptKind) {
        let i = (entity.index() * T + tier as usize) * K + kind as usize;
        if let Some(Some(counter)) = self.corrupt.get(i) {
            counter.inc();
        }
    }

    fn l2_error(&self, kind: L2ErrorKind) {
        self.l2_errors[kind as usize].inc();
    }

    fn evicted(&self, entity: Entity, cause: EvictionCause) {
        inc(
            &self.evictions,
            entity.index() * EvictionCause::ALL.len() + cause as usize,
        );
    }

    fn invalidated(&self, entity: Entity, source: InvalidationSource) {
        inc(
            &self.invalidations,
            entity.index() * InvalidationSource::ALL.len() + source as usize,
        );
    }

    fn owed_replayed(&self, keys: usize) {
        self.owed_replayed.inc_by(keys as u64);
    }

    fn bus_received(&self, lag: Duration) {
        self.bus_messages.inc();
        self.bus_lag.observe(lag.as_secs_f64());
    }

    fn bus_gap(&self) {
        self.bus_gaps.inc();
    }

    fn circuit_changed(&self, _from: CircuitState, to: CircuitState) {
        self.circuit_transitions[to as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_entities;

    #[test]
    fn handles_line_up_with_their_labels() {
        let m = Metrics::new(test_entities::ALL.iter().copied());
        m.lookup(
            *test_entities::GREETING,
            Tier::L2,
            Outcome::NegativeHit,
            Duration::from_micros(80),
        );
        m.corrupt(*test_entities::HISTORY, Tier::L1, CorruptKind::Type);
        m.corrupt(*test_entities::HISTORY, Tier::L2, CorruptKind::Seal);
        m.invalidated(*test_entities::ORG, InvalidationSource::Database);
        m.load(
            *test_entities::SUMMARY,
            LoadOutcome::Timeout,
            Duration::from_millis(3),
        );
        let text = {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        for line in [
            r#"tiercache_cache_requests_total{entity="greeting",result="negative_hit",tier="l2"} 1"#,
            r#"tiercache_corrupt_entries_total{entity="history",kind="type",tier="l1"} 1"#,
            r#"tiercache_corrupt_entries_total{entity="history",kind="seal",tier="l2"} 1"#,
            r#"tiercache_invalidations_total{entity="org",source="database"} 1"#,
            r#"tiercache_loads_total{entity="summary",result="timeout"} 1"#,
            r#"tiercache_cache_lookup_duration_seconds_bucket{entity="greeting",result="negative_hit",tier="l2",le="0.0001"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
        assert_eq!(
            m.requests(*test_entities::GREETING, Tier::L2, Outcome::NegativeHit),
            1
        );
        assert_eq!(
            m.requests(*test_entities::GREETING, Tier::L1, Outcome::NegativeHit),
            0
        );
    }

    /// Sends every event the engine can report, each label combination it can use.
    fn everything_the_engine_reports(m: &Metrics) {
        let took = Duration::from_millis(1);
        for e in test_entities::ALL.iter().copied() {
            for t in Tier::ALL {
                for o in Outcome::ALL {
                    m.lookup(e, t, o, took);
                }
                m.served(e, t, took);
                for k in CorruptKind::ALL.into_iter().filter(|k| k.occurs_in(t)) {
                    m.corrupt(e, t, k);
                }
            }
            for o in LoadOutcome::ALL {
                m.load(e, o, took);
            }
            m.coalesced(e);
            for reason in StaleReason::ALL {
                m.stale_served(e, reason);
            }
            for cause in EvictionCause::ALL {
                m.evicted(e, cause);
            }
            for source in InvalidationSource::ALL {
                m.invalidated(e, source);
            }
        }
        for kind in L2ErrorKind::ALL {
            m.l2_error(kind);
        }
        for state in CircuitState::ALL {
            m.circuit_changed(CircuitState::Closed, state);
        }
        m.owed_replayed(1);
        m.bus_received(took);
        m.bus_gap();
        m.webhook_fallback();
        m.webhook_unknown_fields(1);
        m.db_acquired(took, false);
        m.http("/api/leads/{id}", "GET", 200, took);
        m.admin_action("invalidate", "ok");
        let calls = m.call_log();
        calls.published(1);
        for reason in crate::call_log::CallDropReason::ALL {
            calls.dropped(reason, 1);
        }
        calls.applied(1);
        calls.duplicates(1);
        calls.claimed(1);
        calls.dead_lettered(1);
        calls.append_failed();
    }

    #[test]
    fn every_exported_counter_and_histogram_series_can_get_a_sample() {
        let m = Metrics::new(test_entities::ALL.iter().copied());
        everything_the_engine_reports(&m);
        let mut empty = Vec::new();
        for family in m.registry.gather() {
            // The process collector's are the kernel's to fill.
            if !family.name().starts_with("tiercache_") {
                continue;
            }
            for metric in family.get_metric() {
                let sampled = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => {
                        metric.get_counter().get_value() > 0.0
                    }
                    prometheus::proto::MetricType::HISTOGRAM => {
                        metric.get_histogram().get_sample_count() > 0
                    }
                    _ => true,
                };
                if !sampled {
                    let labels: Vec<String> = metric
                        .get_label()
                        .iter()
                        .map(|l| format!("{}={}", l.name(), l.value()))
                        .collect();
                    empty.push(format!("{}{{{}}}", family.name(), labels.join(",")));
                }
            }
        }
        assert!(empty.is_empty(), "never sampled: {empty:#?}");
    }

    #[test]
    fn no_l1_lookup_latency_and_only_possible_corruptions_are_exported() {
        let m = Metrics::new(test_entities::ALL.iter().copied());
        let families = m.registry.gather();
        let count = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map_or(0, |f| f.get_metric().len())
        };
        assert_eq!(
            count("tiercache_cache_lookup_duration_seconds"),
            test_entities::ALL.len() * O
        );
        // L1: `type` only; L2: decode, version, seal.
        assert_eq!(
            count("tiercache_corrupt_entries_total"),
            test_entities::ALL.len() * 4
        );
    }

    #[test]
    fn the_scrape_carries_build_info_process_metrics_and_buckets_to_10_s() {
        let m = Metrics::new(test_entities::ALL.iter().copied());
        m.db_acquired(Duration::from_secs(3), true);
        m.set_db_pool(DbPoolState {
            size: 4,
            idle: 1,
            max: 10,
            waiting: 2,
        });
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let build = format!(
            r#"tiercache_build_info{{commit="{COMMIT}",version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            build.as_str(),
            "tiercache_postgres_pool_connections 4",
            "tiercache_postgres_pool_idle_connections 1",
            "tiercache_postgres_pool_max_connections 10",
            "tiercache_postgres_pool_waiting 2",
            r#"tiercache_postgres_pool_acquire_duration_seconds_bucket{le="2.5"} 0"#,
            r#"tiercache_postgres_pool_acquire_duration_seconds_bucket{le="5"} 1"#,
            "tiercache_postgres_pool_acquire_failures_total 0",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
        assert!(!COMMIT.is_empty());
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "missing {name}");
        }
    }

    #[test]
    fn every_label_combination_is_exported_from_the_start() {
        let m = Metrics::new(test_entities::ALL.iter().copied());
        let families = m.registry.gather();
        let requests = families
            .iter()
            .find(|f| f.name() == "tiercache_cache_requests_total")
            .unwrap();
        assert_eq!(
            requests.get_metric().len(),
            test_entities::ALL.len() * T * O
        );
    }
}
