//! The live call feed over its streaming transports on the real server: Server-Sent
//! Events (live, then resumed from `Last-Event-ID`), a WebSocket (changes and heartbeats),
//! and two instances on one database and Redis namespace, a change made through one
//! reaching a client of the other within a second.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;
use tiercache_tests::db::TestDb;
use tiercache_tests::server::TestServer;
use tiercache_tests::unique_namespace;
use tokio_tungstenite::tungstenite::Message;

use crate::calls_api::{calls_server, json_of, place_call, post_event};

/// A Server-Sent Events response, read event by event.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(server: &TestServer, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = server.client.get(format!("{}{path}", server.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next `session` event (its id and data), within `within`; keep-alive comments
    /// are skipped.
    async fn next_session(&mut self, within: Duration) -> (String, Value) {
        let read = async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let field = |name: &str| {
                        block
                            .lines()
                            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                            .map(|v| v.trim_start().to_owned())
                    };
                    if field("event").as_deref() == Some("session") {
                        return (field("id").unwrap(), json_of(&field("data").unwrap()));
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .unwrap()
                    .expect("the stream goes on");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("no session event within {within:?}"))
    }
}

/// Waits (bounded) until the server's feed listens.
async fn feed_listening(server: &TestServer) {
    let feed = &server.state.calls.as_ref().unwrap().feed;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !feed.is_listening() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed listens within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the feed clients gauge of `transport` reads `n`.
async fn feed_clients(server: &TestServer, transport: &str, n: f64) {
    let series = format!(r#"tiercache_call_feed_clients{{transport="{transport}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = server.scrape().await.get(&series).copied();
        if now == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} = {now:?}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_follows_changes_and_resumes_from_the_last_event_id() {
    let db = TestDb::seeded("callssse", 2, 10).await;
    let ns = unique_namespace("callssse");
    let server = calls_server(&db, &ns).await;
    feed_listening(&server).await;
    let (_, body) = server.get("/api/orgs/1/calls").await;
    let start = json_of(&body)["cursor"].as_str().unwrap().to_owned();
    let mut live = SseReader::open(&server, "/api/orgs/1/calls/live", None).await;
    feed_clients(&server, "sse", 1.0).await;

    place_call(&server, "CA-sse-1", 1).await;
    let (id, session) = live.next_session(Duration::from_secs(10)).await;
    assert_eq!(session["call_sid"], "CA-sse-1", "{session}");
    assert_eq!(
        (session["in_progress"].as_bool(), session["cursor"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    let (status, answer) = post_event(
        &server,
        "CA-sse-1",
        r#"{"type":"call_ended","data":{"duration_seconds":42.5}}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let (ended_id, ended) = live.next_session(Duration::from_secs(10)).await;
    assert_eq!(
        (
            ended["status"].as_str(),
            ended["in_progress"].as_bool(),
            ended["duration_seconds"].as_f64()
        ),
        (Some("ended"), Some(false), Some(42.5)),
        "{ended}"
    );
    assert!(ended_id.parse::<i64>().unwrap() > id.parse::<i64>().unwrap());

    // A client that reconnects with the id it had before both changes replays the call
    // as it stands now, then goes on live.
    let mut resumed = SseReader::open(&server, "/api/orgs/1/calls/live", Some(&start)).await;
    let (replayed_id, replayed) = resumed.next_session(Duration::from_secs(10)).await;
    assert_eq!(
        (replayed_id.as_str(), &replayed),
        (ended_id.as_str(), &ended)
    );
    place_call(&server, "CA-sse-2", 1).await;
    let (_, next) = resumed.next_session(Duration::from_secs(10)).await;
    assert_eq!(next["call_sid"], "CA-sse-2");
    // `?since=` is the same as Last-Event-ID.
    let mut since = SseReader::open(
        &server,
        &format!("/api/orgs/1/calls/live?since={ended_id}"),
        None,
    )
    .await;
    let (_, after) = since.next_session(Duration::from_secs(10)).await;
    assert_eq!(after["call_sid"], "CA-sse-2");

    drop((live, resumed, since));
    feed_clients(&server, "sse", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_gets_changes_and_heartbeats() {
    let db = TestDb::seeded("callsws", 2, 10).await;
    let ns = unique_namespace("callsws");
    let server = calls_server(&db, &ns).await;
    feed_listening(&server).await;
    // A browser's WebSocket sends no header: it comes with a ticket.
    let response = server
        .client
        .post(format!("{}/api/orgs/1/calls/ticket", server.base))
        .send()
        .await
        .unwrap();
    let ticket = json_of(&response.text().await.unwrap())["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!(
        "{}/api/orgs/1/calls/ws?ticket={ticket}",
        server.base.replacen("http", "ws", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    feed_clients(&server, "ws", 1.0).await;
    let mut next_frame = async || -> Value {
        let read = async {
            loop {
                match socket.next().await.expect("the socket stays open").unwrap() {
                    Message::Text(text) => return json_of(text.as_str()),
                    // Pings (answered by the client library) and others.
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame within 10 s")
    };
    // The heartbeat (every 200 ms here) comes with nothing happening.
    let heartbeat = next_frame().await;
    assert_eq!(heartbeat["type"], "heartbeat", "{heartbeat}");
    assert!(heartbeat["cursor"].is_string(), "{heartbeat}");

    place_call(&server, "CA-ws-1", 1).await;
    let started = Instant::now();
    let session = loop {
        let frame = next_frame().await;
        if frame["type"] == "session" {
            break frame;
        }
        assert_eq!(frame["type"], "heartbeat", "{frame}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no session frame"
        );
    };
    assert_eq!(session["session"]["call_sid"], "CA-ws-1", "{session}");
    assert_eq!(session["cursor"], session["session"]["cursor"]);
    drop(socket);
    feed_clients(&server, "ws", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_instance_reaches_a_client_of_another_within_a_second() {
    let db = TestDb::seeded("callstwo", 2, 10).await;
    let ns = unique_namespace("callstwo");
    let a = calls_server(&db, &ns).await;
    let b = calls_server(&db, &ns).await;
    feed_listening(&a).await;
    feed_listening(&b).await;
    let mut on_b = SseReader::open(&b, "/api/orgs/1/calls/live", None).await;
    feed_clients(&b, "sse", 1.0).await;

    // The first call of the day makes the organization's stream, which a consumer's
    // blocking read takes in at its next read; it is not what is timed.
    let first = Instant::now();
    place_call(&a, "CA-two-1", 1).await;
    let (_, started) = on_b.next_session(Duration::from_secs(10)).await;
    assert_eq!(started["call_sid"], "CA-two-1");
    eprintln!("first call of the day on b after {:?}", first.elapsed());

    let posted = Instant::now();
    let (status, answer) = post_event(
        &a,
        "CA-two-1",
        r#"{"type":"call_ended","data":{"duration_seconds":3}}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let (_, ended) = on_b.next_session(Duration::from_secs(10)).await;
    let took = posted.elapsed();
    assert_eq!(ended["status"], "ended", "{ended}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // And the other way round.
    let posted = Instant::now();
    place_call(&b, "CA-two-2", 1).await;
    let mut on_a = SseReader::open(
        &a,
        &format!(
            "/api/orgs/1/calls/live?since={}",
            ended["cursor"].as_str().unwrap()
        ),
        None,
    )
    .await;
    let (_, second) = on_a.next_session(Duration::from_secs(10)).await;
    assert_eq!(second["call_sid"], "CA-two-2");
    assert!(
        posted.elapsed() < Duration::from_secs(1),
        "took {:?}",
        posted.elapsed()
    );
}
