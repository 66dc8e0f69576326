//! The `/calls` page in a real headless Chromium (Debian's, through chromedriver) against the
//! real server, PostgreSQL and Redis: what a browser shows as calls start and end, how the
//! page carries the organization's key. What the feed sends is the calls suites' business;
//! here, only what the page does with it.

use std::time::Duration;

use reqwest::Method;
use tiercache_repository::api_key::{self, Scope};
use tiercache_repository::seed::demo_org_phone;
use tiercache_tests::browser::Browser;
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{SHARED_REDIS_URL, unique_namespace};

/// How long the page gets to connect its live feed, and then to show each change: the feed
/// delivers within a second, the rest is a cold browser's start.
const PAGE_DEADLINE: Duration = Duration::from_secs(15);

/// The new caller's number; the page must only ever show it masked.
const CALLER: &str = "+16465550199";

/// The live indicator's state, for failure messages.
const LIVE_STATE: &str = "document.getElementById('live').dataset.live";

/// Every call row, as `sid status | cells`, for failure messages.
const ROWS: &str = "[...document.querySelectorAll('tr[data-call-sid]')]\
    .map(r => r.dataset.callSid + ' ' + r.dataset.status + ' | ' + r.innerText).join(' / ') \
    + ' (live: ' + document.getElementById('live').dataset.live + ')'";

fn row_status_is(sid: &str, status: &str) -> String {
    format!("document.querySelector('tr[data-call-sid=\"{sid}\"]')?.dataset.status === '{status}'")
}

async fn org_key(server: &TestServer, db: &TestDb, org: i64) -> String {
    let (_, key) = api_key::create(&db.pool().await, Scope::Org(org), "portal")
        .await
        .unwrap();
    // The server reads its keys in the background; read them now rather than wait a round.
    server.state.api_keys.refresh().await.unwrap();
    key.expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_placed_through_the_webhook_appears_in_progress_then_ends_on_the_page() {
    let db = TestDb::seeded("callspage", 2, 10).await;
    let ns = unique_namespace("callspage");
    let server = TestServer::start(
        &db,
        Options {
            calls: true,
            ..Options::new(&ns, Some(SHARED_REDIS_URL))
        },
    )
    .await;
    let key = org_key(&server, &db, 1).await;
    let browser = Browser::start().await;

    browser
        .goto(&format!("{}/calls#org=1&key={key}", server.base))
        .await;
    browser
        .wait_until(
            "the live indicator says connected",
            &format!("{LIVE_STATE} === 'connected'"),
            LIVE_STATE,
            PAGE_DEADLINE,
        )
        .await;
    // The key left the address bar (and history) and lives in this tab's storage only.
    let url = browser.url().await;
    assert_eq!(url, format!("{}/calls", server.base));
    let stored = browser
        .eval("return sessionStorage.getItem('tiercache.calls.auth')")
        .await;
    assert!(
        stored.as_str().is_some_and(|s| s.contains(&key)),
        "{stored}"
    );
    // The stylesheet applies under the page's policy (its own files only, nothing inline).
    let radius = browser
        .eval("return getComputedStyle(document.querySelector('#live .dot')).borderRadius")
        .await;
    assert_eq!(radius, "50%");

    let sid = format!("CA{ns}");
    let body = format!(
        r#"{{"caller_id":"{CALLER}","called_number":"{}","call_sid":"{sid}"}}"#,
        demo_org_phone(1)
    );
    let (status, answer) = server
        .send(Method::POST, "/api/webhooks/conversation-initiation", &body)
        .await;
    assert_eq!(status, 200, "{answer}");
    browser
        .wait_until(
            "the call's row appears, in progress",
            &row_status_is(&sid, "in_progress"),
            ROWS,
            PAGE_DEADLINE,
        )
        .await;
    let cells = browser
        .eval(&format!(
            "return document.querySelector('tr[data-call-sid=\"{sid}\"]').innerText"
        ))
        .await;
    let cells = cells.as_str().unwrap_or_default();
    assert!(cells.contains("•••0199"), "{cells}");
    assert!(cells.contains("New caller"), "{cells}");
    assert!(cells.contains("In progress"), "{cells}");
    let text = browser.eval("return document.body.innerText").await;
    assert!(
        !text.as_str().unwrap_or_default().contains("5550199"),
        "the caller's number in clear: {text}"
    );

    let (status, answer) = server
        .send(
            Method::POST,
            &format!("/api/calls/{sid}/events"),
            r#"{"type":"call_ended","data":{"duration_seconds":65}}"#,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    browser
        .wait_until(
            "the call's row says ended",
            &row_status_is(&sid, "ended"),
            ROWS,
            PAGE_DEADLINE,
        )
        .await;
    let row = browser
        .eval(&format!(
            "const rows = document.querySelectorAll('tr[data-call-sid=\"{sid}\"]'); \
             return [rows.length, rows[0].innerText]"
        ))
        .await;
    assert_eq!(row[0], 1, "one row per call: {row}");
    let cells = row[1].as_str().unwrap_or_default();
    assert!(cells.contains("Ended"), "{cells}");
    assert!(cells.contains("1:05"), "the duration: {cells}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_leaves_the_page_asking_for_one_and_keeps_nothing() {
    let db = TestDb::seeded("callspagekey", 2, 10).await;
    let ns = unique_namespace("callspagekey");
    let server = TestServer::start(
        &db,
        Options {
            calls: true,
            ..Options::new(&ns, None)
        },
    )
    .await;
    // A real key of organization 2, used for organization 1: another organization's calls
    // read as missing, and the page says the key does not open them.
    let key = org_key(&server, &db, 2).await;
    let browser = Browser::start().await;

    browser
        .goto(&format!("{}/calls#org=1&key={key}", server.base))
        .await;
    browser
        .wait_until(
            "the sign-in form shows again, with why",
            "!document.getElementById('auth').hidden \
             && document.getElementById('auth-error').textContent !== ''",
            "document.body.innerText",
            PAGE_DEADLINE,
        )
        .await;
    let state = browser
        .eval(
            "return [sessionStorage.getItem('tiercache.calls.auth'), location.href, \
             document.getElementById('live').dataset.live, \
             document.querySelectorAll('tr[data-call-sid]').length]",
        )
        .await;
    assert_eq!(state[0], serde_json::Value::Null, "the key is forgotten");
    assert_eq!(state[1], format!("{}/calls", server.base));
    assert_eq!(state[2], "offline");
    assert_eq!(state[3], 0);
    browser.close().await;
}
