//! What the service writes to its logs, through the subscriber it installs
//! (`tiercache_server::logging`): one JSON object per line, every line a request logs
//! carrying its request id (the client's `x-request-id` when usable, else a new one, echoed
//! in the response either way), and no phone number, name or message body at `info`.
//!
//! Lines are captured as in `log_floods`: a thread-default subscriber on a current-thread
//! runtime.

use reqwest::Method;
use serde_json::Value;
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_server::logging::LogSettings;
use tiercache_server::routes::{MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER};
use tiercache_tests::db::TestDb;
use tiercache_tests::logs::Captured;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{SHARED_REDIS_URL, unique_namespace};

const ADMIN_TOKEN: &str = "logs-admin-token-0123456789";
/// Personal data the traffic below carries, none of which may reach a log line.
const NAME: &str = "Quentin Privatename";
const NOTES: &str = "lives at 12 Secret Lane";
const BODY: &str = "my confidential-body text";
const UNKNOWN_CALLER: &str = "+16469999917";

/// The request id a response carries.
fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(REQUEST_ID_HEADER)
        .expect("every response carries a request id")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn json_lines_carry_the_request_id_and_no_personal_data_at_info() {
    let captured = Captured::default();
    let _subscriber =
        captured.install_service(LogSettings::from_values(Some("info"), Some("json")).unwrap());
    let db = TestDb::seeded("logs", 3, 30).await;
    let ns = unique_namespace("logs");
    let mut options = Options::new(&ns, Some(SHARED_REDIS_URL));
    options.admin_token = Some(ADMIN_TOKEN);
    let server = TestServer::start(&db, options).await;
    // Lead j=4 has id 5 and belongs to organization 2.
    let (lead_phone, org_phone) = (demo_lead_phone(4), demo_org_phone(2));

    for path in [
        format!("/api/orgs/by-phone/{}", org_phone.replace('+', "%2B")),
        format!(
            "/api/orgs/2/leads/by-phone/{}",
            lead_phone.replace('+', "%2B")
        ),
        format!(
            "/api/orgs/2/leads/by-phone/{}",
            UNKNOWN_CALLER.replace('+', "%2B")
        ),
        "/api/orgs/by-phone/%2B1646abc".to_owned(),
        "/api/leads/5/context".to_owned(),
    ] {
        let (status, body) = server.get(&path).await;
        assert!([200, 400, 404].contains(&status), "{path}: {status} {body}");
    }
    for (method, path, body) in [
        (
            Method::PATCH,
            "/api/leads/5",
            format!(r#"{{"name":"{NAME}","notes":"{NOTES}"}}"#),
        ),
        (
            Method::POST,
            "/api/leads/5/messages",
            format!(r#"{{"channel":"sms","direction":"inbound","body":"{BODY}"}}"#),
        ),
        (
            Method::POST,
            "/api/webhooks/conversation-initiation",
            format!(
                r#"{{"caller_id":"{lead_phone}","called_number":"{org_phone}","call_sid":"CA1"}}"#
            ),
        ),
        (
            Method::POST,
            "/api/webhooks/conversation-initiation",
            format!(
                r#"{{"caller_id":"{UNKNOWN_CALLER}","called_number":"{org_phone}","call_sid":"CA2"}}"#
            ),
        ),
    ] {
        let (status, answer) = server.send(method.clone(), path, &body).await;
        assert!(status < 300, "{method} {path}: {status} {answer}");
    }

    // An admin action logs at info: its line carries the client's request id.
    let admin = server.client_with(None);
    let response = admin
        .post(format!("{}/api/admin/invalidate", server.base))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .header(REQUEST_ID_HEADER, "client-id-42")
        .body(r#"{"entity":"lead","id":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(request_id(&response), "client-id-42");

    let lines = captured.all_lines();
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"))
        })
        .collect();
    for (line, object) in lines.iter().zip(&objects) {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(object.get(field).is_some(), "no {field}: {line}");
        }
    }
    let admin_lines: Vec<&Value> = objects
        .iter()
        .filter(|o| o["target"].as_str().unwrap_or_default().contains("admin"))
        .collect();
    assert!(!admin_lines.is_empty(), "no admin line in {lines:#?}");
    for object in admin_lines {
        assert_eq!(object["level"], "INFO", "{object}");
        assert_eq!(object["span"]["request_id"], "client-id-42", "{object}");
    }
    let lead_digits = lead_phone.trim_start_matches("+1");
    let org_digits = org_phone.trim_start_matches("+1");
    let unknown_digits = UNKNOWN_CALLER.trim_start_matches("+1");
    for line in &lines {
        for personal in [
            lead_digits,
            org_digits,
            unknown_digits,
            NAME,
            "Privatename",
            NOTES,
            "Secret Lane",
            BODY,
            "confidential",
        ] {
            assert!(!line.contains(personal), "{personal:?} logged: {line}");
        }
    }
}

#[tokio::test]
async fn a_request_id_is_kept_when_usable_and_made_otherwise() {
    let server = TestServer::with_unreachable_database().await;
    let send = |id: Option<String>| {
        let mut request = server
            .client
            .get(format!("{}/api/monitoring/health/live", server.base));
        if let Some(id) = id {
            request = request.header(REQUEST_ID_HEADER, id);
        }
        request.send()
    };
    let kept = "a".repeat(MAX_REQUEST_ID_LEN);
    assert_eq!(request_id(&send(Some(kept.clone())).await.unwrap()), kept);
    assert_eq!(
        request_id(&send(Some("req-7".into())).await.unwrap()),
        "req-7"
    );

    let mut made = Vec::new();
    for id in [
        None,
        Some("two words".to_owned()),
        Some("a".repeat(MAX_REQUEST_ID_LEN + 1)),
    ] {
        let response = send(id.clone()).await.unwrap();
        let new = request_id(&response);
        // A UUID: 36 characters, 4 dashes.
        assert_eq!(
            (new.len(), new.matches('-').count()),
            (36, 4),
            "{id:?} → {new}"
        );
        made.push(new);
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 3, "each request gets an id of its own");
    // Unknown routes and errors carry one too.
    let response = server
        .client
        .get(format!("{}/no/such/route", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(request_id(&response).len(), 36);
}
