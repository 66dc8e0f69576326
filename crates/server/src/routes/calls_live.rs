//! The live call feed: an organization's session changes as Server-Sent Events, as pages
//! to poll, or over a WebSocket.
//!
//! Every client follows the same way ([`Follower`]): it subscribes to the feed first, then
//! replays what the store holds after its cursor (`Last-Event-ID` or `?since=`), then goes
//! on live, skipping any change at or before the last one sent. Within an organization
//! change numbers are consecutive and announced in order, so a jump means something was
//! missed: it catches up from the store, as it does when its receiver lagged or the feed
//! lost its connection (`Closed`). Catching up reads pages of [`PAGE`], so one client's
//! work is bounded however far behind it is.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::json;
use tiercache_calls::{CallSession, Cursor, LiveFeed, SessionStore, StoreError};
use tiercache_monitoring::{FeedClientGuard, FeedTransport};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::routes::calls::{calls, org_in_scope};
use crate::state::AppState;

/// Changes read from the store at once when catching up, and most in one poll.
pub const PAGE: i64 = 100;

/// Longest a WebSocket send may take before the client is given up on.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message read from a WebSocket client (it has nothing to say but pongs).
const MAX_CLIENT_MESSAGE: usize = 1024;

/// The live routes' query string (`ticket` is the auth layer's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    mode: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
    #[allow(dead_code)]
    ticket: Option<String>,
}

/// `GET /api/orgs/{org_id}/calls/live`: Server-Sent Events (`event: session`, `id:` the
/// cursor), or with `?mode=poll` one page of changes and the cursor to ask from next.
pub async fn live(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    query: Result<Query<LiveQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let calls = calls(&state)?;
    let Path(org_id) = path?;
    let Query(query) = query?;
    let poll = match query.mode.as_deref() {
        None | Some("sse") => false,
        Some("poll") => true,
        Some(_) => return Err(ApiError::bad("mode", "must be poll or sse")),
    };
    let since = resume_from(&query, &headers)?;
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=PAGE).contains(&limit) {
        return Err(ApiError::bad(
            "limit",
            format!("must be between 1 and {PAGE}"),
        ));
    }
    org_in_scope(&state, scope, org_id).await?;
    if poll {
        let after = match since {
            Some(cursor) => cursor,
            None => current(&calls.store, org_id).await?,
        };
        let (changes, cursor) = calls
            .store
            .changes(org_id, after, limit)
            .await
            .map_err(ApiError::SessionsUnavailable)?;
        return Ok(Json(json!({ "changes": changes, "cursor": cursor })).into_response());
    }
    let follower = Follower::start(calls.store.clone(), calls.feed.clone(), org_id, since).await?;
    let guard = state.metrics.call_log().feed_client(FeedTransport::Sse);
    let events = sse_events(follower, guard, calls.heartbeat);
    Ok(Sse::new(events.take_until(calls.closed()))
        .keep_alive(KeepAlive::new().interval(calls.heartbeat))
        .into_response())
}

/// `GET /api/orgs/{org_id}/calls/ws`: the same changes over a WebSocket, as text frames
/// `{"type":"session","cursor","session"}`, with `{"type":"heartbeat","cursor"}` (and a
/// ping) every heartbeat.
pub async fn ws(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    query: Result<Query<LiveQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let calls = calls(&state)?;
    let Path(org_id) = path?;
    let Query(query) = query?;
    let since = resume_from(&query, &headers)?;
    // Scope first: another organization's key gets its 404 whatever the request is.
    org_in_scope(&state, scope, org_id).await?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let follower = Follower::start(calls.store.clone(), calls.feed.clone(), org_id, since).await?;
    let guard = state.metrics.call_log().feed_client(FeedTransport::Ws);
    let heartbeat = calls.heartbeat;
    let closed = calls.closed();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            tokio::select! {
                () = follow_ws(socket, follower, guard, heartbeat) => {}
                () = closed => {}
            }
        }))
}

/// The cursor to resume from: `?since=`, else `Last-Event-ID` (what an `EventSource` sends
/// when it reconnects); `None`: from now on.
fn resume_from(query: &LiveQuery, headers: &HeaderMap) -> Result<Option<Cursor>, ApiError> {
    const MESSAGE: &str = "must be a cursor this feed gave";
    if let Some(since) = &query.since {
        return since
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad("since", MESSAGE));
    }
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad("last-event-id", MESSAGE)),
    }
}

/// The organization's cursor now.
async fn current(store: &SessionStore, org_id: i64) -> Result<Cursor, ApiError> {
    let (_, cursor) = store
        .sessions(org_id, Utc::now(), 1)
        .await
        .map_err(ApiError::SessionsUnavailable)?;
    Ok(cursor)
}

/// One client following an organization's changes, in cursor order, each once.
pub struct Follower {
    store: SessionStore,
    feed: LiveFeed,
    org_id: i64,
    receiver: broadcast::Receiver<Arc<CallSession>>,
    /// The last change handed out.
    last: Cursor,
    /// Changes read from the store, not yet handed out.
    backlog: VecDeque<CallSession>,
    /// Whether the store may hold changes after `last` that the feed will not bring.
    behind: bool,
}

impl Follower {
    /// Subscribes, then places the client after `since` (`None`: now).
    async fn start(
        store: SessionStore,
        feed: LiveFeed,
        org_id: i64,
        since: Option<Cursor>,
    ) -> Result<Follower, ApiError> {
        // Subscribed before the store is read, so nothing falls between the two.
        let receiver = feed.subscribe(org_id);
        let (last, behind) = match since {
            Some(cursor) => (cursor, true),
            None => (current(&store, org_id).await?, false),
        };
        Ok(Follower {
            store,
            feed,
            org_id,
            receiver,
            last,
            backlog: VecDeque::new(),
            behind,
        })
    }

    /// The cursor of the last change handed out.
    pub fn cursor(&self) -> Cursor {
        self.last
    }

    /// The next change, waiting for one; an error when the store cannot be read.
    ///
    /// # Cancel safety
    /// Cancel-safe: state changes only once a read completes, and a broadcast receive is
    /// cancel-safe.
    pub async fn next(&mut self) -> Result<CallSession, StoreError> {
        loop {
            if let Some(session) = self.backlog.pop_front() {
                if session.cursor > self.last {
                    self.last = session.cursor;
                    return Ok(session);
                }
                continue;
            }
            if self.behind {
                let (page, _) = self.store.changes(self.org_id, self.last, PAGE).await?;
                self.behind = page.len() as i64 >= PAGE;
                self.backlog.extend(page);
                continue;
            }
            match self.receiver.recv().await {
                Ok(session) if session.cursor <= self.last => {}
                Ok(session) if session.cursor.0 == self.last.0 + 1 => {
                    self.last = session.cursor;
                    return Ok(Arc::unwrap_or_clone(session));
                }
                // A jump: what lies between is in the store (this one too).
                Ok(_) | Err(RecvError::Lagged(_)) => self.behind = true,
                Err(RecvError::Closed) => {
                    // The feed lost its connection: what it did not hear is in the store.
                    self.receiver = self.feed.subscribe(self.org_id);
                    self.behind = true;
                }
            }
        }
    }

    /// Catches up from the store at the next call when the feed is not listening (changes
    /// are then not announced): called at each heartbeat.
    pub fn heartbeat(&mut self) {
        if !self.feed.is_listening() {
            self.behind = true;
        }
    }
}

/// The SSE stream: each change as an event; at each heartbeat with no change the follower
/// checks the feed (the keep-alive comment is axum's). Ends when the store fails (the client
/// resumes with `Last-Event-ID`).
fn sse_events(
    follower: Follower,
    guard: FeedClientGuard,
    heartbeat: Duration,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((follower, guard), move |(mut follower, guard)| async move {
        loop {
            let next = tokio::time::timeout(heartbeat, follower.next()).await;
            match next {
                Ok(Ok(session)) => {
                    let event = Event::default()
                        .event("session")
                        .id(session.cursor.to_string())
                        .data(serde_json::to_string(&session).unwrap_or_default());
                    return Some((Ok(event), (follower, guard)));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = ?e, "live call feed ended: the store failed");
                    return None;
                }
                Err(_quiet) => follower.heartbeat(),
            }
        }
    })
}

/// Follows over a WebSocket until the client goes, a send fails or times out, or the store
/// fails.
async fn follow_ws(
    mut socket: WebSocket,
    mut follower: Follower,
    _guard: FeedClientGuard,
    heartbeat: Duration,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            next = follower.next() => match next {
                Ok(session) => json!({"type": "session", "cursor": session.cursor, "session": session}),
                Err(e) => {
                    tracing::warn!(error = ?e, "live call feed ended: the store failed");
                    break;
                }
            },
            _ = ticks.tick() => {
                follower.heartbeat();
                if !send(&mut socket, Message::Ping(Default::default())).await {
                    break;
                }
                json!({"type": "heartbeat", "cursor": follower.cursor()})
            }
            incoming = socket.recv() => match incoming {
                // Pongs and anything else the client says are read and dropped.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
        };
        if !send(&mut socket, Message::Text(frame.to_string().into())).await {
            break;
        }
    }
}

/// Sends within [`SEND_TIMEOUT`]; whether it went.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}
