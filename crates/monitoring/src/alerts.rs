//! The alert rules, kept once: evaluated in process (for `/alerts` and the stream) and
//! rendered as Prometheus alerting rules (`grafana/prometheus/alerts.yml`, checked in and
//! compared with [`prometheus_rules`] by a test, so the two cannot drift apart).

use std::time::Duration;

use serde::Serialize;

/// The thresholds every alert is judged by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Alert when the cache answers fewer than this share of lookups…
    pub min_hit_rate: f64,
    /// …once at least this many lookups were made in the window (warm-up).
    pub warmup_lookups: u64,
    /// Alert when HTTP responses take longer than this on average.
    pub max_avg_response: Duration,
    /// Alert when more than this share of HTTP responses are server errors (5xx).
    pub max_error_rate: f64,
    /// Alert when Redis has been unreachable at least this long.
    pub redis_down_for: Duration,
    /// The window the rates are computed over.
    pub window: Duration,
}

/// The thresholds of the design: hit rate below 50 % after warm-up, average response above
/// 100 ms, error rate above 5 %, Redis disconnected 30 s or more.
pub const THRESHOLDS: Thresholds = Thresholds {
    min_hit_rate: 0.5,
    warmup_lookups: 100,
    max_avg_response: Duration::from_millis(100),
    max_error_rate: 0.05,
    redis_down_for: Duration::from_secs(30),
    window: Duration::from_secs(60),
};

/// Which alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The cache answers too few lookups.
    LowHitRate,
    /// Responses are slow on average.
    SlowResponses,
    /// Too many responses are server errors.
    HighErrorRate,
    /// Redis has been unreachable for a while.
    RedisDisconnected,
}

impl AlertKind {
    /// Every alert.
    pub const ALL: [AlertKind; 4] = [
        AlertKind::LowHitRate,
        AlertKind::SlowResponses,
        AlertKind::HighErrorRate,
        AlertKind::RedisDisconnected,
    ];

    /// The alert's name, as in the Prometheus rules.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::LowHitRate => "TiercacheLowHitRate",
            AlertKind::SlowResponses => "TiercacheSlowResponses",
            AlertKind::HighErrorRate => "TiercacheHighErrorRate",
            AlertKind::RedisDisconnected => "TiercacheRedisDisconnected",
        }
    }
}

/// An alert that is firing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Which.
    pub kind: AlertKind,
    /// Its Prometheus name.
    pub name: &'static str,
    /// The measured value.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// What it means.
    pub message: String,
    /// Since when, in Unix milliseconds.
    pub since_ms: u64,
}

/// What the evaluation looks at, over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Cache lookups (every request starts at L1).
    pub lookups: u64,
    /// Of those, answered from L1 or L2.
    pub hits: u64,
    /// HTTP responses.
    pub responses: u64,
    /// Of those, 5xx.
    pub server_errors: u64,
    /// Their summed duration.
    pub response_time: Duration,
    /// How long Redis has been unreachable (None: reachable or disabled).
    pub redis_down_for: Option<Duration>,
}

/// The alerts `window` fires under `t`, each with its value.
pub fn evaluate(t: &Thresholds, window: &Window) -> Vec<(AlertKind, f64, f64)> {
    let mut firing = Vec::new();
    if window.lookups >= t.warmup_lookups {
        let rate = window.hits as f64 / window.lookups as f64;
        if rate < t.min_hit_rate {
            firing.push((AlertKind::LowHitRate, rate, t.min_hit_rate));
        }
    }
    if window.responses > 0 {
        let avg = window.response_time.as_secs_f64() / window.responses as f64;
        if avg > t.max_avg_response.as_secs_f64() {
            firing.push((
                AlertKind::SlowResponses,
                avg,
                t.max_avg_response.as_secs_f64(),
            ));
        }
        let rate = window.server_errors as f64 / window.responses as f64;
        if rate > t.max_error_rate {
            firing.push((AlertKind::HighErrorRate, rate, t.max_error_rate));
        }
    }
    if let Some(down) = window.redis_down_for
        && down >= t.redis_down_for
    {
        firing.push((
            AlertKind::RedisDisconnected,
            down.as_secs_f64(),
            t.redis_down_for.as_secs_f64(),
        ));
    }
    firing
}

/// A human sentence for an alert.
pub fn message(kind: AlertKind, value: f64, threshold: f64) -> String {
    match kind {
        AlertKind::LowHitRate => format!(
            "cache hit rate {:.1} % is below {:.0} %",
            value * 100.0,
            threshold * 100.0
        ),
        AlertKind::SlowResponses => format!(
            "average response {:.1} ms is above {:.0} ms",
            value * 1000.0,
            threshold * 1000.0
        ),
        AlertKind::HighErrorRate => format!(
            "server error rate {:.1} % is above {:.0} %",
            value * 100.0,
            threshold * 100.0
        ),
        AlertKind::RedisDisconnected => {
            format!("Redis unreachable for {value:.0} s (alerting from {threshold:.0} s)")
        }
    }
}

/// One Prometheus alerting rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Which alert.
    pub kind: AlertKind,
    /// The condition that fires it.
    pub expr: String,
    /// The quantities the condition compares, each a query that returns series whenever
    /// the service is scraped (whether or not the alert fires).
    pub measures: Vec<String>,
    /// How long the condition must hold, if at all.
    pub for_seconds: Option<u64>,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// One line for the operator.
    pub summary: String,
}

/// The Prometheus rules for `t`.
pub fn rules(t: &Thresholds) -> Vec<Rule> {
    let w = format!("{}s", t.window.as_secs());
    let hit_rate = format!(
        "(sum(rate(tiercache_cache_requests_total{{tier=~\"l1|l2\",result=~\"hit|negative_hit\"}}[{w}])) / sum(rate(tiercache_cache_requests_total{{tier=\"l1\"}}[{w}])))"
    );
    let lookups = format!("sum(increase(tiercache_cache_requests_total{{tier=\"l1\"}}[{w}]))");
    let avg = format!(
        "(sum(rate(tiercache_http_request_duration_seconds_sum[{w}])) / sum(rate(tiercache_http_request_duration_seconds_count[{w}])))"
    );
    let errors = format!(
        "(sum(rate(tiercache_http_requests_total{{status=~\"5..\"}}[{w}])) / sum(rate(tiercache_http_requests_total[{w}])))"
    );
    let errors_measure = format!(
        "(sum(rate(tiercache_http_requests_total{{status=~\"5..\"}}[{w}]) or vector(0)) / sum(rate(tiercache_http_requests_total[{w}])))"
    );
    vec![
        Rule {
            kind: AlertKind::LowHitRate,
            expr: format!(
                "{hit_rate} < {} and {lookups} >= {}",
                t.min_hit_rate, t.warmup_lookups
            ),
            measures: vec![hit_rate.clone(), lookups.clone()],
            for_seconds: None,
            severity: "warning",
            summary: format!(
                "Cache hit rate below {} % after warm-up",
                t.min_hit_rate * 100.0
            ),
        },
        Rule {
            kind: AlertKind::SlowResponses,
            expr: format!("{avg} > {}", t.max_avg_response.as_secs_f64()),
            measures: vec![avg.clone()],
            for_seconds: None,
            severity: "warning",
            summary: format!(
                "Average response time above {} ms",
                t.max_avg_response.as_millis()
            ),
        },
        Rule {
            kind: AlertKind::HighErrorRate,
            expr: format!("{errors} > {}", t.max_error_rate),
            measures: vec![errors_measure],
            for_seconds: None,
            severity: "critical",
            summary: format!("Server error rate above {} %", t.max_error_rate * 100.0),
        },
        Rule {
            kind: AlertKind::RedisDisconnected,
            expr: "tiercache_redis_up == 0 and tiercache_redis_enabled == 1".to_owned(),
            measures: vec![
                "tiercache_redis_up".to_owned(),
                "tiercache_redis_enabled".to_owned(),
            ],
            for_seconds: Some(t.redis_down_for.as_secs()),
            severity: "critical",
            summary: format!(
                "Redis unreachable for {} s or more",
                t.redis_down_for.as_secs()
            ),
        },
    ]
}

/// The Prometheus alerting rules for `t` (the content of `grafana/prometheus/alerts.yml`).
pub fn prometheus_rules(t: &Thresholds) -> String {
    let mut out = String::from(
        "# Generated from tiercache_monitoring::alerts::THRESHOLDS; a test fails when this file
# and the thresholds differ. Regenerate with:
#   cargo run -q -p tiercache-monitoring --example alert_rules > grafana/prometheus/alerts.yml
groups:
  - name: tiercache
    rules:
",
    );
    for rule in rules(t) {
        out.push_str(&format!(
            "      - alert: {}\n        expr: {}\n",
            rule.kind.name(),
            rule.expr
        ));
        if let Some(seconds) = rule.for_seconds {
            out.push_str(&format!("        for: {seconds}s\n"));
        }
        out.push_str(&format!(
            "        labels:\n          severity: {}\n        annotations:\n          summary: {}\n",
            rule.severity, rule.summary
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            lookups: 1000,
            hits: 900,
            responses: 1000,
            server_errors: 0,
            response_time: Duration::from_secs(1),
            redis_down_for: None,
        }
    }

    #[test]
    fn a_healthy_window_fires_nothing() {
        assert!(evaluate(&THRESHOLDS, &window()).is_empty());
    }

    #[test]
    fn each_threshold_fires_its_alert() {
        let cases = [
            (
                Window {
                    hits: 400,
                    ..window()
                },
                AlertKind::LowHitRate,
            ),
            (
                Window {
                    response_time: Duration::from_secs(150),
                    ..window()
                },
                AlertKind::SlowResponses,
            ),
            (
                Window {
                    server_errors: 60,
                    ..window()
                },
                AlertKind::HighErrorRate,
            ),
            (
                Window {
                    redis_down_for: Some(Duration::from_secs(30)),
                    ..window()
                },
                AlertKind::RedisDisconnected,
            ),
        ];
        for (w, kind) in cases {
            let fired: Vec<AlertKind> = evaluate(&THRESHOLDS, &w)
                .into_iter()
                .map(|(k, _, _)| k)
                .collect();
            assert_eq!(fired, [kind]);
        }
    }

    #[test]
    fn no_hit_rate_alert_during_warm_up_and_none_below_the_thresholds() {
        assert!(
            evaluate(
                &THRESHOLDS,
                &Window {
                    lookups: 99,
                    hits: 0,
                    ..window()
                }
            )
            .is_empty()
        );
        assert!(
            evaluate(
                &THRESHOLDS,
                &Window {
                    server_errors: 50,
                    ..window()
                }
            )
            .is_empty()
        );
        assert!(
            evaluate(
                &THRESHOLDS,
                &Window {
                    redis_down_for: Some(Duration::from_secs(29)),
                    ..window()
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn the_checked_in_prometheus_rules_match_the_thresholds() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../grafana/prometheus/alerts.yml"
        );
        let committed = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            committed,
            prometheus_rules(&THRESHOLDS),
            "grafana/prometheus/alerts.yml is out of date: regenerate it (see its header)"
        );
    }
}
