//! Hostile and careless clients against the real server: bytes PostgreSQL refuses, bodies
//! too big or too slow, connections that never finish their headers, malformed JSON, odd
//! methods and phone numbers. Each answer is a 4xx that names what to fix (never a 5xx, never
//! the input echoed back), and no slow client holds a connection past its bound.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::unique_namespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOOK: &str = "/api/webhooks/conversation-initiation";

/// The header and body read bounds the slow-client tests configure.
const BOUND: Duration = Duration::from_millis(500);

/// How long a slow-client test waits for the server to close a connection: the bound, with
/// room for a loaded machine.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Longest error body a refused request may get back (a bound on anything echoed).
const MAX_ERROR_BYTES: usize = 1024;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:.300}"))
}

fn webhook(caller: &str, called: &str, call_sid: &str) -> String {
    serde_json::json!({"caller_id": caller, "called_number": called, "call_sid": call_sid})
        .to_string()
}

/// A server over a small seeded database, L1 only, with the slow-client bounds at [`BOUND`].
async fn server(tag: &str, admin_token: Option<&str>) -> (TestDb, TestServer) {
    let db = TestDb::seeded(tag, 2, 10).await;
    let ns = unique_namespace(tag);
    let mut opts = Options::new(&ns, None);
    opts.admin_token = admin_token;
    opts.vars = vec![
        ("HTTP_HEADER_TIMEOUT_MS", BOUND.as_millis().to_string()),
        ("HTTP_BODY_TIMEOUT_MS", BOUND.as_millis().to_string()),
    ];
    let server = TestServer::start(&db, opts).await;
    (db, server)
}

/// Asserts a JSON error of `status` naming `field`, and returns its message.
fn assert_error(case: &str, (status, text): &(u16, String), want: u16, field: &str) -> String {
    assert_eq!(*status, want, "{case}: {text:.300}");
    assert!(
        text.len() <= MAX_ERROR_BYTES,
        "{case}: a {} byte error body",
        text.len()
    );
    let error = &json(text)["error"];
    assert_eq!(error["field"], field, "{case}: {text}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{case}: {text}");
    message.to_owned()
}

fn http_address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server ends the connection (end of stream or a reset), for at most
/// `within`: what it sent first, and how long after `since` it closed; `Err` with what it
/// sent if it is still open.
async fn await_close(
    stream: &mut (impl AsyncReadExt + Unpin),
    since: Instant,
    within: Duration,
) -> Result<(String, Duration), String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    match closed {
        Ok(()) => Ok((text, since.elapsed())),
        Err(_) => Err(text),
    }
}

/// Writes `bytes` one at a time, one every `every`, until the server closes the connection.
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    bytes: &'static [u8],
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(every);
        for byte in bytes.iter().cycle() {
            pace.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_in_text_is_a_400_naming_the_field_and_reaches_no_database() {
    let (_db, server) = server("nul", None).await;
    let cases = [
        (
            Method::PATCH,
            "/api/leads/1",
            r#"{"name":"Ann\u0000"}"#,
            "name",
        ),
        (
            Method::PATCH,
            "/api/leads/1",
            r#"{"notes":"call \u0000 back"}"#,
            "notes",
        ),
        (
            Method::POST,
            "/api/leads/1/messages",
            r#"{"channel":"sms","direction":"inbound","body":"\u0000"}"#,
            "body",
        ),
    ];
    for (method, path, body, field) in cases {
        let answer = server.send(method.clone(), path, body).await;
        assert_error(&format!("{method} {path} {body}"), &answer, 400, field);
    }
    // Nothing was written, and nothing counted as a server error.
    let (_, lead) = server.get("/api/leads/1").await;
    assert!(!json(&lead)["name"].as_str().unwrap().contains('\0'));
    let (_, history) = server.get("/api/leads/1/history").await;
    assert_eq!(json(&history)["total"], 3);
    let scrape = server.scrape().await;
    let server_errors: Vec<_> = scrape
        .keys()
        .filter(|k| k.starts_with("tiercache_http_requests_total") && k.contains("status=\"5"))
        .collect();
    assert!(server_errors.is_empty(), "{server_errors:?}");
}

/// The `authorization` header line with the server's API key, for requests written by hand.
fn authorization(server: &TestServer) -> String {
    format!(
        "authorization: Bearer {}\r\n",
        server.api_key.as_deref().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_idle_connection_is_closed_within_the_header_bound() {
    let (_db, server) = server("hsilent", None).await;
    // Nothing at all.
    let started = Instant::now();
    let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
    let (sent, after) = await_close(&mut stream, started, CLOSE_WITHIN)
        .await
        .unwrap_or_else(|_| panic!("a silent connection still open after {CLOSE_WITHIN:?}"));
    assert!(after >= BOUND, "closed after {after:?}, before the bound");
    assert!(sent.is_empty(), "{sent}");

    // One request answered, then idle on a kept-alive connection.
    let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
    stream
        .write_all(b"GET /api/monitoring/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let started = Instant::now();
    await_close(&mut stream, started, CLOSE_WITHIN)
        .await
        .unwrap_or_else(|_| panic!("an idle connection still open after {CLOSE_WITHIN:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_closed_within_the_header_bound() {
    let (_db, server) = server("hslow", None).await;
    let started = Instant::now();
    let stream = TcpStream::connect(http_address(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /api/monitoring/health/live HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    // A header value that never ends, a byte every 50 ms.
    let writing = trickle(writer, b"a", Duration::from_millis(50));
    let closed = await_close(&mut reader, started, CLOSE_WITHIN).await;
    writing.abort();
    let (_, after) = closed.unwrap_or_else(|sent| {
        panic!("trickled headers still open after {CLOSE_WITHIN:?}; server sent {sent:?}")
    });
    assert!(after >= BOUND, "closed after {after:?}, before the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_body_is_a_408_and_closed_within_the_body_bound() {
    let (_db, server) = server("bpartial", None).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
    stream
        .write_all(
            format!(
                "PATCH /api/leads/1 HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\n\
                 content-length: 100\r\n\r\n{{\"name\":",
                authorization(&server)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (sent, after) = await_close(&mut stream, started, CLOSE_WITHIN)
        .await
        .unwrap_or_else(|sent| {
            panic!("a partial body still open after {CLOSE_WITHIN:?}; server sent {sent:?}")
        });
    assert!(after >= BOUND, "closed after {after:?}, before the bound");
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    let body = sent.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(json(body)["error"]["field"], "body", "{sent}");
    // The lead was not touched.
    let (_, lead) = server.get("/api/leads/1").await;
    assert_ne!(json(&lead)["name"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_closed_within_the_body_bound() {
    let (_db, server) = server("bslow", None).await;
    let started = Instant::now();
    let stream = TcpStream::connect(http_address(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            format!(
                "POST /api/leads/1/messages HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\n\
                 content-length: 60000\r\n\r\n{{\"channel\":\"sms\",\"direction\":\"inbound\",\"body\":\"",
                authorization(&server)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Always a byte on its way: a bound on the wait for each read would never fire.
    let writing = trickle(writer, b"a", Duration::from_millis(50));
    let closed = await_close(&mut reader, started, CLOSE_WITHIN).await;
    writing.abort();
    let (sent, _) = closed.unwrap_or_else(|sent| {
        panic!("a trickled body still open after {CLOSE_WITHIN:?}; server sent {sent:?}")
    });
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    let (_, history) = server.get("/api/leads/1/history").await;
    assert_eq!(json(&history)["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_in_pieces_within_the_bounds_is_served() {
    let (_db, server) = server("pieces", None).await;
    let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
    let body = r#"{"name":"Pieces"}"#;
    let head = format!(
        "PATCH /api/leads/1 HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        authorization(&server),
        body.len()
    );
    let (head_a, head_b) = head.split_at(20);
    let (body_a, body_b) = body.split_at(5);
    // Well within the bounds: a pause of a fifth of each.
    for piece in [head_a, head_b, body_a, body_b] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(BOUND / 5).await;
    }
    let (sent, _) = await_close(&mut stream, Instant::now(), CLOSE_WITHIN)
        .await
        .unwrap();
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    assert!(sent.contains("Pieces"), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_by_a_slow_client() {
    let (_db, server) = server("hshutdown", None).await;
    let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
    stream
        .write_all(b"GET /api/monitoring/health/live HTTP/1.1\r\nhost")
        .await
        .unwrap();
    let stopped = tokio::time::timeout(CLOSE_WITHIN, server.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "shutdown still waiting on a half-sent request after {CLOSE_WITHIN:?}"
    );
    await_close(&mut stream, Instant::now(), CLOSE_WITHIN)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_a_413_with_the_json_error() {
    let (_db, server) = server("toolarge", None).await;
    let name = "x".repeat(10 * 1024 * 1024);
    let body = format!(r#"{{"name":"{name}"}}"#);
    // The server answers as soon as it sees the length, and may close before the client has
    // written the rest (a client library then reports a broken pipe instead of the answer):
    // the answer is read whatever became of the write.
    for (case, method, path) in [
        ("10 MB PATCH", "PATCH", "/api/leads/1"),
        ("10 MB webhook", "POST", HOOK),
    ] {
        let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            authorization(&server),
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let (sent, _) = await_close(&mut stream, Instant::now(), CLOSE_WITHIN)
            .await
            .unwrap();
        let (status_line, rest) = sent.split_once("\r\n").unwrap_or_default();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok());
        let (_, text) = rest.split_once("\r\n\r\n").unwrap_or_default();
        assert_error(case, &(status.unwrap_or(0), text.to_owned()), 413, "body");
    }

    // Without a length up front (chunked), refused once the limit is passed.
    let mut stream = TcpStream::connect(http_address(&server)).await.unwrap();
    let chunk = "x".repeat(100 * 1024);
    let request = format!(
        "PATCH /api/leads/1 HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        authorization(&server),
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (sent, _) = await_close(&mut stream, Instant::now(), CLOSE_WITHIN)
        .await
        .unwrap();
    assert!(sent.starts_with("HTTP/1.1 413"), "{sent:.300}");
    let (_, lead) = server.get("/api/leads/1").await;
    assert_ne!(json(&lead)["name"].as_str().unwrap().len(), name.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_route_lacks_is_a_405_with_the_json_error() {
    let (_db, server) = server("method", None).await;
    for (method, path) in [
        (Method::DELETE, "/api/leads/1"),
        (Method::POST, "/api/leads/1/context"),
        (Method::GET, HOOK),
        (Method::PUT, "/api/monitoring/metrics"),
    ] {
        let response = server
            .client
            .request(method.clone(), format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let allow = response.headers().get("allow").cloned();
        let text = response.text().await.unwrap();
        assert_eq!(status, 405, "{method} {path}");
        assert!(allow.is_some(), "{method} {path}: no Allow header");
        assert_eq!(
            json(&text)["error"]["code"],
            "method_not_allowed",
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_nobody_knows_adds_no_metric_series() {
    let (_db, server) = server("brew", None).await;
    let send = |method: &str, path: &str| {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = server
            .client
            .request(method, format!("{}{path}", server.base));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // One of each kind first: the series they fall into exist from then on.
    assert_eq!(send("BREW", "/api/leads/1").await, 405);
    assert_eq!(send("GET", "/api/nothing").await, 404);
    assert_eq!(send("BREW", "/api/nothing").await, 404);
    let before = server.scrape().await;
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("tiercache_http_requests_total")
                && k.contains(r#"method="other""#)),
        "the request is still counted"
    );
    // Every answer of these is 404 or 405; none may add a series.
    for i in 0..20 {
        let junk_method = format!("BREW{i}");
        let junk_path = format!("/api/junk{i}/x%20{i}");
        assert_eq!(send(&junk_method, "/api/leads/1").await, 405);
        assert_eq!(send(&junk_method, &junk_path).await, 404);
        assert_eq!(send("GET", &junk_path).await, 404);
        assert_eq!(send("PROPFIND", &format!("/{i}")).await, 404);
    }
    let after = server.scrape().await;
    let mut added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    added.sort();
    assert!(added.is_empty(), "series added: {added:#?}");
    assert_eq!(after.len(), before.len());
    let leaked: Vec<_> = after
        .keys()
        .filter(|k| k.contains("BREW") || k.contains("junk") || k.contains("PROPFIND"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    // Still counted, under the fixed labels.
    let series = r#"tiercache_http_requests_total{method="other",route="unmatched",status="404"}"#;
    assert_eq!(after[series] - before[series], 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_400_names_a_field_and_echoes_little() {
    let token = "a-test-admin-token-1";
    let (_db, server) = server("fields", Some(token)).await;
    let lead = "/api/leads/1";
    let cases: &[(Method, &str, &str, &str)] = &[
        // The parser stopped inside a field: that field.
        (Method::POST, HOOK, r#"{"caller_id":"+1646"#, "caller_id"),
        (Method::PATCH, lead, r#"{"name":"a\qb"}"#, "name"),
        // Nothing more precise than the body as a whole.
        (Method::POST, HOOK, "{not json", "body"),
        (Method::POST, HOOK, "", "body"),
        (Method::POST, HOOK, "[]", "body"),
        (Method::POST, HOOK, "null", "body"),
        (Method::PATCH, lead, r#"{"name":"A"} trailing"#, "body"),
        (Method::PATCH, lead, r#"{"name":"A""#, "body"),
        // Still named as before.
        (Method::PATCH, lead, r#"{"name":42}"#, "name"),
        (Method::PATCH, lead, r#"{"colour":"red"}"#, "colour"),
    ];
    for (method, path, body, field) in cases {
        let answer = server.send(method.clone(), path, body).await;
        assert_error(&format!("{method} {path} {body}"), &answer, 400, field);
    }
    // The admin API's "exactly one of" names the body.
    for body in ["{}", r#"{"entity":"lead"}"#, r#"{"all":true,"id":1}"#] {
        let response = server
            .client
            .post(format!("{}/api/admin/invalidate", server.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let answer = (response.status().as_u16(), response.text().await.unwrap());
        assert_error(&format!("admin {body}"), &answer, 400, "body");
    }
    // Without a JSON content type: 415, naming the header.
    let response = server
        .client
        .patch(format!("{}{lead}", server.base))
        .body(r#"{"name":"A"}"#)
        .send()
        .await
        .unwrap();
    let answer = (response.status().as_u16(), response.text().await.unwrap());
    assert_error("no content type", &answer, 415, "content-type");

    // A huge unknown field is neither named nor echoed whole.
    let long = "q".repeat(60_000);
    let answer = server
        .send(Method::PATCH, lead, &format!(r#"{{"{long}":1}}"#))
        .await;
    let message = assert_error("a 60 kB field name", &answer, 400, "body");
    assert!(!message.contains(&long[..300]), "{message}");
    let answer = server
        .send(Method::PATCH, lead, &format!(r#"{{"status":"{long}"}}"#))
        .await;
    assert_error("a 60 kB status", &answer, 400, "status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sid_is_1_to_128_visible_ascii_characters_and_never_echoed_in_an_error() {
    let (_db, server) = server("callsid", None).await;
    let (caller, called) = (demo_lead_phone(0), demo_org_phone(1));
    let longest = "C".repeat(128);
    let answer = server
        .send(Method::POST, HOOK, &webhook(&caller, &called, &longest))
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(json(&answer.1)["dynamic_variables"]["call_sid"], longest);

    let too_long = "D".repeat(129);
    let huge = "E".repeat(60_000);
    for sid in ["", &too_long, &huge, "CA 1", "CA\u{0}1", "CAé1", "CA\n"] {
        let answer = server
            .send(Method::POST, HOOK, &webhook(&caller, &called, sid))
            .await;
        let message = assert_error(&format!("call_sid {sid:.20?}"), &answer, 400, "call_sid");
        if sid.len() > 3 {
            assert!(!answer.1.contains(&sid[..sid.len() - 1]), "{message}");
        }
    }
    // Over the body limit: refused before it is parsed.
    let two_mb = "F".repeat(2 * 1024 * 1024);
    let answer = server
        .send(Method::POST, HOOK, &webhook(&caller, &called, &two_mb))
        .await;
    assert_error("a 2 MB call_sid", &answer, 413, "body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_is_digits_and_separators_only() {
    let (_db, server) = server("phones", None).await;
    let called = demo_org_phone(1);
    let known = demo_lead_phone(0); // +16462000000
    for caller in [
        "+1646ABC0000",
        "+1 646 ABC 0000",
        "tel:+16462000000",
        "+16462000000😀",
        "+16462000000\u{0}",
        "\u{0}+16462000000",
        "+16462000000;ext=1",
        "+1646200000\t0",
        "1+6462000000",
        "++16462000000",
    ] {
        let answer = server
            .send(Method::POST, HOOK, &webhook(caller, &called, "CA1"))
            .await;
        assert_error(&format!("caller_id {caller:?}"), &answer, 400, "caller_id");
    }
    // The formats people write still work.
    for caller in [
        known.as_str(),
        " +1 (646) 200-0000 ",
        "646.200.0000",
        "(646) 200 0000",
        "1-646-200-0000",
    ] {
        let answer = server
            .send(Method::POST, HOOK, &webhook(caller, &called, "CA1"))
            .await;
        assert_eq!(answer.0, 200, "{caller:?}: {}", answer.1);
        assert_eq!(
            json(&answer.1)["dynamic_variables"]["greeting_source"],
            "lead",
            "{caller:?}: {}",
            answer.1
        );
    }
    for path in [
        "/api/orgs/by-phone/tel:%2B18005550001",
        "/api/orgs/by-phone/%2B18005550001%00",
        "/api/orgs/by-phone/1800555ABCD",
        "/api/orgs/1/leads/by-phone/%2B16462000000%F0%9F%98%80",
    ] {
        let answer = server.get(path).await;
        assert_error(path, &answer, 400, "phone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_status_or_name_is_a_400_and_null_notes_clear_them() {
    let (_db, server) = server("nulls", None).await;
    let lead = "/api/leads/1";
    for (body, field) in [
        (r#"{"status":null}"#, "status"),
        (r#"{"name":null}"#, "name"),
        (r#"{"name":"Kept","status":null}"#, "status"),
    ] {
        let answer = server.send(Method::PATCH, lead, body).await;
        assert_error(body, &answer, 400, field);
    }
    let (_, before) = server.get(lead).await;
    assert_ne!(json(&before)["name"], "Kept");

    let (status, body) = server
        .send(Method::PATCH, lead, r#"{"notes":"call back"}"#)
        .await;
    assert_eq!(
        (status, json(&body)["notes"].clone()),
        (200, "call back".into())
    );
    let (status, body) = server.send(Method::PATCH, lead, r#"{"notes":null}"#).await;
    assert_eq!((status, json(&body)["notes"].clone()), (200, Value::Null));
}
