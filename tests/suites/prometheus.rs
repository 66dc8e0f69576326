//! A real Prometheus scrapes two running instances under a short load with a Redis outage
//! on a throwaway Redis, then every PromQL expression of every dashboard panel and variable
//! and every alert rule is evaluated through its HTTP API: one that errors, returns no
//! series or no sane value (a number, a ratio within [0, 1]) fails the test (a panel that
//! shows nothing is a defect). The dashboard's portability (its variables, descriptions and
//! colours) is checked on the JSON itself.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tiercache_monitoring::alerts::{THRESHOLDS, rules};
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{RedisServer, unique_namespace};

/// A Prometheus on a free loopback port, killed on drop.
struct Prometheus {
    child: tokio::process::Child,
    base: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    async fn start(targets: &[&str]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "tiercache-prom-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../grafana/prometheus/alerts.yml"
        );
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: tiercache\n    metrics_path: /api/monitoring/metrics\n    \
             static_configs:\n      - targets: [{targets}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus (Debian package prometheus; .ci/run installs it)");
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: TempDir(dir),
        };
        let client = reqwest::Client::new();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(r) = client
                    .get(format!("{}/-/ready", prometheus.base))
                    .send()
                    .await
                    && r.status().is_success()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "Prometheus did not become ready within 30 s");
        prometheus
    }

    async fn query(&self, client: &reqwest::Client, expr: &str) -> Value {
        client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The dashboard as checked in.
fn dashboard() -> Value {
    serde_json::from_str(include_str!("../../grafana/dashboards/tiercache.json")).unwrap()
}

/// The dashboard's panels, without its rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// What every metric selector of a panel starts with.
const FILTER: &str = r#"{job=~"$job", instance=~"$instance""#;

/// `expr` with the dashboard's variables replaced as Grafana would for this job and instance.
fn substitute(expr: &str, instance: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$job", "tiercache")
        .replace("$instance", instance);
    assert!(!expr.contains('$'), "a variable left in `{expr}`");
    expr
}

#[test]
fn the_dashboard_is_importable_anywhere_and_filtered_by_its_variables() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["job", "instance"] {
        assert_eq!(variable(name)["type"], "query");
        assert!(
            variable(name)["definition"]
                .as_str()
                .unwrap()
                .starts_with("label_values("),
            "{name}"
        );
    }
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Traffic",
            "Cache",
            "Redis",
            "PostgreSQL",
            "Invalidation and coherence",
            "Call log",
            "Process and admin"
        ]
    );
    let panels = panels(&dashboard);
    let mut shown = String::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title} is not described"
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            shown.push_str(expr);
            // Every selector is filtered by the variables; every range is Grafana's.
            for (at, _) in expr
                .match_indices("tiercache_")
                .chain(expr.match_indices("up{"))
            {
                let name_end = expr[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(expr.len(), |n| at + n);
                assert!(
                    expr[name_end..].starts_with(FILTER),
                    "{title}: a selector without the filter in `{expr}`"
                );
            }
            for (at, _) in expr.match_indices('[') {
                assert!(
                    expr[at..].starts_with("[$__rate_interval]"),
                    "{title}: a fixed range in `{expr}`"
                );
            }
        }
    }
    // What was exported and unshown before has a panel.
    for metric in [
        "tiercache_circuit_transitions_total",
        "tiercache_owed_invalidations_replayed_total",
        "tiercache_admin_actions_total",
        "tiercache_call_events_published_total",
        "tiercache_call_events_applied_total",
        "tiercache_call_events_dropped_total",
        "tiercache_call_events_dead_lettered_total",
        "tiercache_call_events_queue_depth",
        "tiercache_call_events_pending",
        "tiercache_call_events_lag",
        "tiercache_call_feed_clients",
    ] {
        assert!(shown.contains(metric), "no panel shows {metric}");
    }
    // Colours that mean something: Redis down and the circuit open are red.
    let mapping = |title: &str, value: &str| {
        let panel = panels.iter().find(|p| p["title"] == title).unwrap();
        panel["fieldConfig"]["defaults"]["mappings"][0]["options"][value].clone()
    };
    assert_eq!(mapping("Redis status", "0")["text"], "down");
    assert_eq!(mapping("Redis status", "0")["color"], "red");
    assert_eq!(mapping("Circuit breaker state", "2")["text"], "open");
    assert_eq!(mapping("Circuit breaker state", "2")["color"], "red");
    assert_eq!(mapping("Instance scraped", "0")["color"], "red");
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_rule_shows_real_series_in_a_real_prometheus() {
    let db = TestDb::seeded("prom", 3, 60).await;
    let ns = unique_namespace("prom");
    let token = "an-admin-token-long-enough";
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let server = TestServer::start(
        &db,
        Options {
            admin_token: Some(token),
            ..Options::new(&ns, Some(&url))
        },
    )
    .await;
    // A second instance on the same bus hears the first one's invalidations (bus lag).
    let other = TestServer::start(&db, Options::new(&ns, Some(&url))).await;
    let one = server.base.trim_start_matches("http://").to_owned();
    let two = other.base.trim_start_matches("http://").to_owned();
    let instance = format!("{one}|{two}");
    let prometheus = Prometheus::start(&[&one, &two]).await;
    let client = reqwest::Client::new();

    // A short, bounded load: webhooks, reads, writes and a few 404s, for seven seconds,
    // with Redis down from the second to the fourth.
    let started = Instant::now();
    let mut n = 0i64;
    let (mut stopped, mut restarted) = (false, false);
    while started.elapsed() < Duration::from_secs(7) && (n < 20_000 || !restarted) {
        if !stopped && started.elapsed() >= Duration::from_secs(2) {
            redis.stop().await;
            stopped = true;
        }
        if !restarted && started.elapsed() >= Duration::from_secs(4) {
            redis.restart().await;
            restarted = true;
        }
        other.get(&format!("/api/leads/{}", n % 60 + 1)).await;
        let j = n % 60;
        let hook = format!(
            r#"{{"caller_id":"{}","called_number":"{}","call_sid":"CA{n}"}}"#,
            demo_lead_phone(j),
            demo_org_phone(j % 3 + 1)
        );
        server
            .send(Method::POST, "/api/webhooks/conversation-initiation", &hook)
            .await;
        server.get(&format!("/api/leads/{}", j + 1)).await;
        server.get(&format!("/api/leads/{}/summary", j + 1)).await;
        if n % 50 == 0 {
            server
                .send(
                    Method::PATCH,
                    &format!("/api/leads/{}", j + 1),
                    r#"{"status":"contacted"}"#,
                )
                .await;
            server.get("/api/leads/99999").await;
        }
        if n == 10 {
            // One admin action, for its panel.
            let response = server
                .client
                .post(format!("{}/api/admin/invalidate", server.base))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(r#"{"entity":"lead","id":1}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
        }
        n += 1;
    }

    // Enough scrapes for every rate window to hold two samples or more.
    let scraped = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let v = prometheus
                .query(&client, "count_over_time(tiercache_l1_entries[1m])")
                .await;
            let count = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if count.is_some_and(|c| c >= 5.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(scraped.is_ok(), "Prometheus scraped the server");

    let dashboard = dashboard();
    // (what, expression, must show a sane value, is a ratio)
    let mut exprs: Vec<(String, String, bool, bool)> = Vec::new();
    for panel in panels(&dashboard) {
        let ratio = panel["fieldConfig"]["defaults"]["unit"] == "percentunit";
        for target in panel["targets"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap().to_owned();
            let expr = substitute(target["expr"].as_str().unwrap(), &instance);
            exprs.push((title, expr, true, ratio));
        }
    }
    // The variables' `label_values(selector, label)`, as the query Grafana makes of them.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(args) = variable["definition"]
            .as_str()
            .and_then(|d| d.strip_prefix("label_values("))
            .and_then(|d| d.strip_suffix(')'))
        {
            let (selector, label) = args.rsplit_once(", ").unwrap();
            let expr = substitute(&format!("group by ({label}) ({selector})"), &instance);
            exprs.push((
                format!("${}", variable["name"].as_str().unwrap()),
                expr,
                true,
                false,
            ));
        }
    }
    for rule in rules(&THRESHOLDS) {
        // The condition itself may rightly be empty (not firing); it must still evaluate.
        exprs.push((rule.kind.name().to_owned(), rule.expr.clone(), false, false));
        for measure in &rule.measures {
            exprs.push((rule.kind.name().to_owned(), measure.clone(), true, false));
        }
    }
    assert!(exprs.len() > 30);
    let mut failures = Vec::new();
    for (what, expr, needs_series, ratio) in &exprs {
        let answer = prometheus.query(&client, expr).await;
        let values: Vec<f64> = answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|series| series["value"][1].as_str())
            .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
            .collect();
        if answer["status"] != "success" {
            failures.push(format!("{what}: `{expr}` errors: {answer}"));
        } else if *needs_series && values.is_empty() {
            failures.push(format!("{what}: `{expr}` returns no series"));
        } else if *needs_series && !values.iter().any(|v| v.is_finite()) {
            failures.push(format!(
                "{what}: `{expr}` is NaN in every series: {values:?}"
            ));
        } else if *ratio
            && values
                .iter()
                .any(|v| v.is_finite() && !(0.0..=1.0).contains(v))
        {
            failures.push(format!(
                "{what}: `{expr}` is a ratio outside [0, 1]: {values:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions failed:\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n")
    );
    // The outage happened and shows: both instances counted Redis connection errors and
    // opened their circuit.
    for expr in [
        r#"count(tiercache_l2_errors_total{kind="connection"} > 0)"#,
        r#"count(tiercache_circuit_transitions_total{state="open"} > 0)"#,
    ] {
        let answer = prometheus.query(&client, expr).await;
        assert_eq!(
            answer["data"]["result"][0]["value"][1], "2",
            "{expr}: {answer}"
        );
    }
}
