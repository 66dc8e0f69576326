//! What the monitoring routes show, and where: no personal data in any of them after
//! traffic that carried plenty, and, with `MONITORING_BIND_ADDR`, on a listener of their
//! own while the public port carries only the API.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{RedisServer, unique_namespace};

/// Every monitoring route, the stream aside.
const MONITORING_ROUTES: [&str; 7] = [
    "/api/monitoring/health",
    "/api/monitoring/health/live",
    "/api/monitoring/health/ready",
    "/api/monitoring/health/redis",
    "/api/monitoring/stats/cache",
    "/api/monitoring/metrics",
    "/api/monitoring/alerts",
];

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A phone in the forms it could be written in: E.164, without its `+`, URL-encoded.
fn phone_forms(phone: &str) -> [String; 3] {
    let digits = phone.trim_start_matches('+');
    [phone.to_owned(), digits.to_owned(), format!("%2B{digits}")]
}

/// The text of the stream's events until `snapshots` snapshots have come (bounded).
async fn stream_text(server: &TestServer, base: &str, snapshots: usize) -> String {
    let mut response = server
        .client
        .get(format!("{base}/api/monitoring/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.matches("event: snapshot").count() >= snapshots {
                return;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{snapshots} snapshots within 10 s; got {text}"
    );
    text
}

/// Traffic full of personal data (known and unknown callers, every read, a rename, notes, a
/// message, a 404 by phone, Redis failing under it), then every monitoring route and a bit
/// of the stream: none holds a phone, a name, notes, a message or the API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_routes_carry_no_personal_data_after_traffic() {
    let mut redis = RedisServer::start().await;
    let db = TestDb::seeded("privacy", 2, 20).await;
    let ns = unique_namespace("privacy");
    let url = redis.url();
    let server = TestServer::start(&db, Options::new(&ns, Some(&url))).await;
    let hook = "/api/webhooks/conversation-initiation";
    let mut personal: Vec<String> = Vec::new();

    for j in 0..6_i64 {
        let id = j + 1;
        let org = j % 2 + 1;
        let phone = demo_lead_phone(j);
        let (status, body) = server.get(&format!("/api/leads/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let lead = json(&body);
        personal.push(lead["name"].as_str().unwrap().to_owned());
        if let Some(notes) = lead["notes"].as_str() {
            personal.push(notes.to_owned());
        }
        personal.extend(phone_forms(&phone));
        for view in ["context", "summary", "greeting?channel=sms", "history"] {
            let (status, body) = server.get(&format!("/api/leads/{id}/{view}")).await;
            assert_eq!(status, 200, "{view}: {body}");
        }
        let (status, body) = server
            .get(&format!("/api/orgs/{org}/leads/by-phone/{phone}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let call = format!(
            r#"{{"caller_id":"{phone}","called_number":"{}","call_sid":"CA{id}"}}"#,
            demo_org_phone(org)
        );
        let (status, body) = server.send(Method::POST, hook, &call).await;
        assert_eq!(status, 200, "{body}");
    }
    // An unknown caller, and a number no lead has.
    let stranger = "+16469990123";
    personal.extend(phone_forms(stranger));
    let call = format!(
        r#"{{"caller_id":"{stranger}","called_number":"{}","call_sid":"CA99"}}"#,
        demo_org_phone(1)
    );
    assert_eq!(server.send(Method::POST, hook, &call).await.0, 200);
    let (status, _) = server
        .get(&format!("/api/orgs/1/leads/by-phone/{stranger}"))
        .await;
    assert_eq!(status, 404);
    // Writes carrying new personal data.
    let (name, notes, body) = (
        "Zenobia Quartermaine",
        "Allergic to latex, call her mother",
        "My card ends in 4242, plover",
    );
    personal.extend([name, notes, body].map(str::to_owned));
    let patch = format!(r#"{{"name":"{name}","notes":"{notes}"}}"#);
    assert_eq!(
        server.send(Method::PATCH, "/api/leads/3", &patch).await.0,
        200
    );
    let message = format!(r#"{{"channel":"sms","direction":"inbound","body":"{body}"}}"#);
    let (status, _) = server
        .send(Method::POST, "/api/leads/4/messages", &message)
        .await;
    assert_eq!(status, 201);
    // Redis failing under reads: errors recorded for health to report.
    redis.stop().await;
    for id in 7..=9 {
        assert_eq!(server.get(&format!("/api/leads/{id}")).await.0, 200);
    }
    let (status, body) = server
        .get(&format!("/api/orgs/by-phone/{}", demo_org_phone(2)))
        .await;
    assert_eq!(status, 200, "{body}");
    personal.extend(server.api_key.iter().cloned());

    let mut pages = Vec::new();
    for route in MONITORING_ROUTES {
        let (status, body) = server.get(route).await;
        assert!(status == 200 || status == 503, "{route}: {status}");
        pages.push((route.to_owned(), body));
    }
    // A snapshot from before the traffic's end and one after.
    pages.push((
        "/api/monitoring/stream".to_owned(),
        stream_text(&server, &server.base, 2).await,
    ));
    // What the test reads must have been there to read.
    let redis_health = &pages[3].1;
    assert!(
        json(redis_health)["last_error"].is_object(),
        "{redis_health}"
    );
    for (route, body) in &pages {
        for secret in &personal {
            assert!(!body.contains(secret.as_str()), "{secret:?} in {route}");
        }
    }
}

/// With `MONITORING_BIND_ADDR`, the service's two listeners (as `main` binds and serves
/// them): the public one answers the API and 404s every monitoring route; the monitoring
/// one answers those and 404s the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_monitoring_address_the_public_port_carries_only_the_api() {
    let db = TestDb::seeded("monaddr", 1, 2).await;
    let ns = unique_namespace("monaddr");
    // For its state (repository, keys) and its client (an API key); its own port is unused.
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let config = tiercache_server::Config::from_vars([
        ("DATABASE_URL".to_owned(), db.url.clone()),
        ("BIND_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("MONITORING_BIND_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
    ])
    .unwrap();
    let listeners = tiercache_server::startup::Listeners::bind(&config)
        .await
        .unwrap();
    let public = format!("http://{}", listeners.api.local_addr().unwrap());
    let monitoring = format!(
        "http://{}",
        listeners.monitoring.as_ref().unwrap().local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(listeners.serve(server.state.clone(), config.http, async {
        let _ = stopped.await;
    }));
    let get = |url: String| {
        let request = server.client.get(url);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };

    let (status, body) = get(format!("{public}/api/leads/1")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(format!("{monitoring}/api/leads/1")).await;
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (404, Value::from("not_found"))
    );
    for route in MONITORING_ROUTES
        .into_iter()
        .chain(["/api/monitoring/stream"])
    {
        let (status, body) = get(format!("{public}{route}")).await;
        assert_eq!(status, 404, "{route} on the public port: {body}");
        assert_eq!(json(&body)["error"]["code"], "not_found", "{body}");
    }
    for route in MONITORING_ROUTES {
        let (status, body) = get(format!("{monitoring}{route}")).await;
        assert_eq!(status, 200, "{route} on the monitoring port: {body}");
    }
    // Both listeners count their requests in the one registry.
    let (_, metrics) = get(format!("{monitoring}/api/monitoring/metrics")).await;
    assert!(
        metrics.contains(r#"route="/api/leads/{id}",status="200""#),
        "{metrics}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("both listeners stop")
        .unwrap()
        .unwrap();
}
