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
    /// How long Prometheus waits before a low hit rate fires (its `for:`).
    pub low_hit_rate_for: Duration,
    /// How long Prometheus waits before slow responses fire.
    pub slow_responses_for: Duration,
    /// How long Prometheus waits before a high error rate fires.
    pub high_error_rate_for: Duration,
    /// How long Prometheus waits before a failed or missing scrape target fires.
    pub service_down_for: Duration,
    /// The window in which any dropped or dead-lettered call event alerts.
    pub call_events_window: Duration,
    /// How long Prometheus waits before dropped or dead-lettered call events fire (short: a
    /// single one counts, and the window keeps it visible).
    pub call_events_lost_for: Duration,
    /// How long the call log's backlog (pending plus lag) must keep growing to fire.
    pub call_backlog_growing_for: Duration,
}

/// The thresholds of the design: hit rate below 50 % after warm-up, average response above
/// 100 ms, error rate above 5 %, Redis disconnected 30 s or more; in Prometheus, each
/// condition must also hold a while (a blip pages nobody). For the call log: any event
/// dropped or dead-lettered in 5 minutes, a backlog growing for 5 minutes.
pub const THRESHOLDS: Thresholds = Thresholds {
    min_hit_rate: 0.5,
    warmup_lookups: 100,
    max_avg_response: Duration::from_millis(100),
    max_error_rate: 0.05,
    redis_down_for: Duration::from_secs(30),
    window: Duration::from_secs(60),
    low_hit_rate_for: Duration::from_secs(120),
    slow_responses_for: Duration::from_secs(120),
    high_error_rate_for: Duration::from_secs(60),
    service_down_for: Duration::from_secs(60),
    call_events_window: Duration::from_secs(300),
    call_events_lost_for: Duration::from_secs(15),
    call_backlog_growing_for: Duration::from_secs(300),
};

/// Where each alert's runbook lives: the README's "Runbook" section, one heading per alert
/// (relative to the repository, as the service has no hosted documentation).
pub const RUNBOOK: &str = "README.md";

/// The Prometheus job the service is scraped as (`docker-compose.yml`'s Prometheus config).
pub const JOB: &str = "tiercache";

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
    /// Prometheus cannot scrape an instance (Prometheus only: a process that answers is up).
    ServiceDown,
    /// Prometheus has no instance of the job at all (Prometheus only).
    ServiceAbsent,
    /// Call events were dropped (queue full or shutdown): calls missing from the log
    /// (Prometheus only).
    CallEventsDropped,
    /// Call events failed too often and went to the dead-letter stream (Prometheus only).
    CallEventsDeadLettered,
    /// The call log's consumer group falls further behind (Prometheus only).
    CallLogBacklogGrowing,
}

impl AlertKind {
    /// Every alert.
    pub const ALL: [AlertKind; 9] = [
        AlertKind::LowHitRate,
        AlertKind::SlowResponses,
        AlertKind::HighErrorRate,
        AlertKind::RedisDisconnected,
        AlertKind::ServiceDown,
        AlertKind::ServiceAbsent,
        AlertKind::CallEventsDropped,
        AlertKind::CallEventsDeadLettered,
        AlertKind::CallLogBacklogGrowing,
    ];

    /// The alert's name, as in the Prometheus rules.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::LowHitRate => "TiercacheLowHitRate",
            AlertKind::SlowResponses => "TiercacheSlowResponses",
            AlertKind::HighErrorRate => "TiercacheHighErrorRate",
            AlertKind::RedisDisconnected => "TiercacheRedisDisconnected",
            AlertKind::ServiceDown => "TiercacheServiceDown",
            AlertKind::ServiceAbsent => "TiercacheServiceAbsent",
            AlertKind::CallEventsDropped => "TiercacheCallEventsDropped",
            AlertKind::CallEventsDeadLettered => "TiercacheCallEventsDeadLettered",
            AlertKind::CallLogBacklogGrowing => "TiercacheCallLogBacklogGrowing",
        }
    }

    /// The link to the alert's runbook: the README heading named after it.
    pub fn runbook_url(self) -> String {
        format!("{RUNBOOK}#{}", self.name().to_lowercase())
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
///
/// This is the condition now, without Prometheus's `for:` (the in-process view shows an
/// alert as soon as Prometheus would start its pending period). A low hit rate is not an
/// alert of its own while Redis is unreachable: it is a consequence, as in the rule's
/// `unless`. The call log's alerts are Prometheus's only: they need a counter's increase
/// over minutes, which this window does not keep.
pub fn evaluate(t: &Thresholds, window: &Window) -> Vec<(AlertKind, f64, f64)> {
    let mut firing = Vec::new();
    if window.lookups >= t.warmup_lookups && window.redis_down_for.is_none() {
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
        AlertKind::ServiceDown | AlertKind::ServiceAbsent => {
            format!("the service is not scraped (up = {value:.0})")
        }
        AlertKind::CallEventsDropped => format!("{value:.0} call events dropped"),
        AlertKind::CallEventsDeadLettered => {
            format!("{value:.0} call events sent to the dead-letter stream")
        }
        AlertKind::CallLogBacklogGrowing => {
            format!("{value:.0} call events pending or unread, and growing")
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
    /// How long the condition must hold before the alert fires (every rule has one).
    pub hold: Duration,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// One line for the operator.
    pub summary: String,
    /// What is wrong, with the measured value (a Prometheus template).
    pub description: String,
}

/// The Prometheus rules for `t`. Ratios are per instance (`by (job, instance)`), so one bad
/// instance is not averaged away and its alert names it.
pub fn rules(t: &Thresholds) -> Vec<Rule> {
    let w = format!("{}s", t.window.as_secs());
    let by = "sum by (job, instance)";
    let hit_rate = format!(
        "({by} (rate(tiercache_cache_requests_total{{tier=~\"l1|l2\",result=~\"hit|negative_hit\"}}[{w}])) / {by} (rate(tiercache_cache_requests_total{{tier=\"l1\"}}[{w}])))"
    );
    let lookups = format!("{by} (increase(tiercache_cache_requests_total{{tier=\"l1\"}}[{w}]))");
    let redis_down = "tiercache_redis_up == 0 and tiercache_redis_enabled == 1";
    let avg = format!(
        "({by} (rate(tiercache_http_request_duration_seconds_sum[{w}])) / {by} (rate(tiercache_http_request_duration_seconds_count[{w}])))"
    );
    let all = format!("{by} (rate(tiercache_http_requests_total[{w}]))");
    let server_errors =
        format!("{by} (rate(tiercache_http_requests_total{{status=~\"5..\"}}[{w}]))");
    let errors = format!("({server_errors} / {all})");
    let errors_measure = format!("(({server_errors} or 0 * {all}) / {all})");
    let up = format!("up{{job=\"{JOB}\"}}");
    let secs = |d: Duration| d.as_secs();
    let cw = format!("{}s", t.call_events_window.as_secs());
    let dropped = format!("{by} (increase(tiercache_call_events_dropped_total[{cw}]))");
    let dead_lettered = format!("{by} (increase(tiercache_call_events_dead_lettered_total[{cw}]))");
    // Pending (delivered, not acknowledged) plus lag (not yet delivered): what the group
    // still owes the sessions. Growing over the whole hold means it is not keeping up.
    let backlog = "(tiercache_call_events_pending + tiercache_call_events_lag)";
    let gw = format!("{}s", t.call_backlog_growing_for.as_secs());
    let backlog_growth = format!(
        "(delta(tiercache_call_events_pending[{gw}]) + delta(tiercache_call_events_lag[{gw}]))"
    );
    vec![
        Rule {
            kind: AlertKind::LowHitRate,
            // While Redis is down a low hit rate is its consequence, not a second page.
            expr: format!(
                "{hit_rate} < {} and {lookups} >= {} unless on (job, instance) ({redis_down})",
                t.min_hit_rate, t.warmup_lookups
            ),
            measures: vec![hit_rate.clone(), lookups.clone()],
            hold: t.low_hit_rate_for,
            severity: "warning",
            summary: format!(
                "Cache hit rate below {} % after warm-up",
                t.min_hit_rate * 100.0
            ),
            description: format!(
                "{{{{ $labels.instance }}}} answered {{{{ $value | humanizePercentage }}}} of lookups from L1 or L2 over {w} (alerting below {} % after {} lookups, for {} s; not while Redis is down).",
                t.min_hit_rate * 100.0,
                t.warmup_lookups,
                secs(t.low_hit_rate_for)
            ),
        },
        Rule {
            kind: AlertKind::SlowResponses,
            expr: format!("{avg} > {}", t.max_avg_response.as_secs_f64()),
            measures: vec![avg.clone()],
            hold: t.slow_responses_for,
            severity: "warning",
            summary: format!(
                "Average response time above {} ms",
                t.max_avg_response.as_millis()
            ),
            description: format!(
                "{{{{ $labels.instance }}}} took {{{{ $value | humanizeDuration }}}} per response on average over {w} (alerting above {} ms, for {} s).",
                t.max_avg_response.as_millis(),
                secs(t.slow_responses_for)
            ),
        },
        Rule {
            kind: AlertKind::HighErrorRate,
            expr: format!("{errors} > {}", t.max_error_rate),
            measures: vec![errors_measure],
            hold: t.high_error_rate_for,
            severity: "critical",
            summary: format!("Server error rate above {} %", t.max_error_rate * 100.0),
            description: format!(
                "{{{{ $value | humanizePercentage }}}} of the responses of {{{{ $labels.instance }}}} were server errors (5xx) over {w} (alerting above {} %, for {} s).",
                t.max_error_rate * 100.0,
                secs(t.high_error_rate_for)
            ),
        },
        Rule {
            kind: AlertKind::RedisDisconnected,
            expr: redis_down.to_owned(),
            measures: vec![
                "tiercache_redis_up".to_owned(),
                "tiercache_redis_enabled".to_owned(),
            ],
            hold: t.redis_down_for,
            severity: "critical",
            summary: format!(
                "Redis unreachable for {} s or more",
                t.redis_down_for.as_secs()
            ),
            description: format!(
                "{{{{ $labels.instance }}}} has reported tiercache_redis_up = {{{{ $value }}}} for {} s or more while Redis is enabled: reads go to PostgreSQL.",
                secs(t.redis_down_for)
            ),
        },
        Rule {
            kind: AlertKind::ServiceDown,
            expr: format!("{up} == 0"),
            measures: vec![up.clone()],
            hold: t.service_down_for,
            severity: "critical",
            summary: "Tiercache instance down (Prometheus cannot scrape it)".to_owned(),
            description: format!(
                "Scrapes of {{{{ $labels.instance }}}} (job {JOB}) have failed for {} s or more (up = {{{{ $value }}}}).",
                secs(t.service_down_for)
            ),
        },
        Rule {
            kind: AlertKind::ServiceAbsent,
            expr: format!("absent({up})"),
            measures: vec![format!("count({up})")],
            hold: t.service_down_for,
            severity: "critical",
            summary: "No Tiercache instance known to Prometheus".to_owned(),
            description: format!(
                "Prometheus has had no target of job {JOB} for {} s or more (absent = {{{{ $value }}}}): check its scrape configuration and service discovery.",
                secs(t.service_down_for)
            ),
        },
        Rule {
            kind: AlertKind::CallEventsDropped,
            expr: format!("{dropped} > 0"),
            measures: vec![dropped.clone()],
            hold: t.call_events_lost_for,
            severity: "warning",
            summary: "Call events dropped: calls missing from the call log".to_owned(),
            description: format!(
                "{{{{ $labels.instance }}}} dropped {{{{ $value | humanize }}}} call events over {cw} (its queue was full, or it stopped with events queued): those calls are missing or incomplete in the call log."
            ),
        },
        Rule {
            kind: AlertKind::CallEventsDeadLettered,
            expr: format!("{dead_lettered} > 0"),
            measures: vec![dead_lettered.clone()],
            hold: t.call_events_lost_for,
            severity: "warning",
            summary: "Call events sent to the dead-letter stream".to_owned(),
            description: format!(
                "{{{{ $labels.instance }}}} sent {{{{ $value | humanize }}}} call events to the dead-letter stream over {cw} after repeated failures to apply them: their calls lack those events until they are replayed."
            ),
        },
        Rule {
            kind: AlertKind::CallLogBacklogGrowing,
            expr: format!("{backlog} > 0 and {backlog_growth} > 0"),
            measures: vec![backlog.to_owned(), backlog_growth.clone()],
            hold: t.call_backlog_growing_for,
            severity: "warning",
            summary: format!(
                "Call log consumer falling behind for {} minutes",
                secs(t.call_backlog_growing_for) / 60
            ),
            description: format!(
                "{{{{ $labels.instance }}}} reports {{{{ $value }}}} call events pending or not yet read by the consumer group, more than {gw} earlier, for {} s or more: the call log is behind and falling further.",
                secs(t.call_backlog_growing_for)
            ),
        },
    ]
}

/// A YAML single-quoted scalar (templates start with `{`, which a plain scalar cannot).
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The Prometheus alerting rules for `t` (the content of `grafana/prometheus/alerts.yml`).
pub fn prometheus_rules(t: &Thresholds) -> String {
    let mut out = String::from(
        "# Generated from tiercache_monitoring::alerts::THRESHOLDS; a test fails when this file
# and the thresholds differ. Regenerate with:
#   cargo run -q -p tiercache-monitoring --example alert_rules > grafana/prometheus/alerts.yml
# Alertmanager (grafana/alertmanager/alertmanager.yml) inhibits warnings of an instance
# whose Redis alert fires; TiercacheLowHitRate also excludes that case in its expression.
groups:
  - name: tiercache
    rules:
",
    );
    for rule in rules(t) {
        out.push_str(&format!(
            "      - alert: {}\n        expr: {}\n        for: {}s\n",
            rule.kind.name(),
            rule.expr,
            rule.hold.as_secs()
        ));
        out.push_str(&format!(
            "        labels:\n          severity: {}\n        annotations:\n          summary: {}\n          description: {}\n          runbook_url: {}\n",
            rule.severity,
            quoted(&rule.summary),
            quoted(&rule.description),
            quoted(&rule.kind.runbook_url())
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
    fn a_low_hit_rate_is_not_an_alert_of_its_own_while_redis_is_down() {
        let w = Window {
            hits: 100,
            redis_down_for: Some(Duration::from_secs(45)),
            ..window()
        };
        let fired: Vec<AlertKind> = evaluate(&THRESHOLDS, &w)
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        assert_eq!(fired, [AlertKind::RedisDisconnected]);
    }

    #[test]
    fn every_rule_waits_names_its_instance_carries_its_value_and_links_its_runbook() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let rules = rules(&THRESHOLDS);
        assert_eq!(
            rules.iter().map(|r| r.kind).collect::<Vec<_>>(),
            AlertKind::ALL
        );
        for rule in &rules {
            let name = rule.kind.name();
            assert!(rule.hold > Duration::ZERO, "{name} has no for:");
            assert!(rule.description.contains("$value"), "{name}");
            // Ratios are per instance; the others select raw per-instance series.
            assert!(
                !rule.expr.contains("sum(") && !rule.expr.contains("sum (rate"),
                "{name}: {}",
                rule.expr
            );
            assert!(
                readme.contains(&format!("\n### {name}\n")),
                "README.md has no runbook heading for {name}"
            );
            assert_eq!(
                rule.kind.runbook_url(),
                format!("README.md#{}", name.to_lowercase())
            );
        }
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
