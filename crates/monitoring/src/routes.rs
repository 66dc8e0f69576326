//! The monitoring API: one function builds its router.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use tiercache::TwoTierCache;
use tokio::sync::broadcast::error::RecvError;

use crate::health::{self, CallLogProbe, DatabaseProbe};
use crate::metrics::Metrics;
use crate::monitor::{Monitor, StreamEvent};

/// What the monitoring routes share.
#[derive(Clone)]
pub struct MonitoringState {
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// The cache, for snapshots and Redis probes.
    pub cache: TwoTierCache,
    /// PostgreSQL's probe.
    pub db: Arc<dyn DatabaseProbe>,
    /// Window, alerts and stream.
    pub monitor: Arc<Monitor>,
    /// The call log's probe, when the call log runs here.
    pub calls: Option<Arc<dyn CallLogProbe>>,
}

/// The route Prometheus scrapes.
pub const METRICS_PATH: &str = "/api/monitoring/metrics";

/// The health routes: this one and those under it.
pub const HEALTH_PATH: &str = "/api/monitoring/health";

/// `/api/monitoring/*`.
pub fn router(state: MonitoringState) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(HEALTH_PATH, get(health))
        .route(
            "/api/monitoring/health/live",
            get(|| async { Json(serde_json::json!({"live": true})) }),
        )
        .route("/api/monitoring/health/ready", get(ready))
        .route("/api/monitoring/health/redis", get(redis))
        .route("/api/monitoring/health/calls", get(calls))
        .route("/api/monitoring/stats/cache", get(stats))
        .route("/api/monitoring/alerts", get(alerts))
        .route("/api/monitoring/stream", get(stream))
        .with_state(state)
}

async fn metrics(State(state): State<MonitoringState>) -> impl IntoResponse {
    // L1's entry count and size are estimates until its housekeeping has run.
    state.cache.run_pending_tasks().await;
    if let Some(pool) = state.db.pool() {
        state.metrics.set_db_pool(pool);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.cache),
    )
}

async fn health(State(state): State<MonitoringState>) -> Response {
    let report = health::check(&*state.db, &state.cache, state.calls.as_deref()).await;
    let status = if report.can_serve() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Ready once start-up (migrations) is done, which it is when this serves, and PostgreSQL
/// answers; Redis plays no part.
async fn ready(State(state): State<MonitoringState>) -> Response {
    let postgres = health::probe_db(&*state.db).await;
    let status = if postgres.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": postgres.ok, "postgres": postgres })),
    )
        .into_response()
}

async fn redis(State(state): State<MonitoringState>) -> impl IntoResponse {
    Json(health::redis(&state.cache).await)
}

/// The call log's health (always 200: a degraded call log still answers calls); a 404
/// where it does not run.
async fn calls(State(state): State<MonitoringState>) -> Response {
    match &state.calls {
        Some(probe) => Json(health::calls(&**probe)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {
                "code": "not_found",
                "message": "the call log does not run here"
            }})),
        )
            .into_response(),
    }
}

async fn stats(State(state): State<MonitoringState>) -> impl IntoResponse {
    Json(state.monitor.stats())
}

async fn alerts(State(state): State<MonitoringState>) -> impl IntoResponse {
    Json(serde_json::json!({ "alerts": state.monitor.active_alerts() }))
}

/// Server-Sent Events: a snapshot at once, then every tick's snapshot and each alert as it
/// fires or resolves. A client that falls behind loses the oldest events, never the service.
async fn stream(
    State(state): State<MonitoringState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = StreamEvent::Snapshot(Box::new(state.monitor.snapshot()));
    let receiver = state.monitor.subscribe();
    let events = futures_util::stream::unfold(
        (Some(first), receiver),
        |(first, mut receiver)| async move {
            if let Some(first) = first {
                return Some((to_sse(&first), (None, receiver)));
            }
            match receiver.recv().await {
                Ok(event) => Some((to_sse(&event), (None, receiver))),
                // The client fell behind: it is told how much it missed, and goes on.
                Err(RecvError::Lagged(missed)) => {
                    let lagged = Event::default().event("lagged").data(missed.to_string());
                    Some((Ok(lagged), (None, receiver)))
                }
                Err(RecvError::Closed) => None,
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn to_sse(event: &StreamEvent) -> Result<Event, Infallible> {
    let name = match event {
        StreamEvent::Snapshot(_) => "snapshot",
        StreamEvent::AlertFiring(_) => "alert_firing",
        StreamEvent::AlertResolved(_) => "alert_resolved",
    };
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Ok(Event::default().event(name).data(data))
}

/// A method as a label: the standard ones by name, any other (a client may send any token)
/// as `other`, so a client cannot add series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Whether requests to `route` are counted. Scrapes and health probes are not: a
/// Prometheus or a load balancer polling would otherwise weigh in the request rate, the
/// latency and the error ratio (and their alerts) as if it were traffic.
fn counted(route: &str) -> bool {
    route != METRICS_PATH
        && route
            .strip_prefix(HEALTH_PATH)
            .is_none_or(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// Middleware: counts every request but scrapes and health probes by route template
/// (`unmatched` for a path no route has: never the raw path), method and status, with its
/// duration. Add it with `Router::layer` so the route is known.
pub async fn track_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    if !counted(route) {
        return next.run(request).await;
    }
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http(route, method, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_and_health_probes_are_not_counted_and_the_rest_is() {
        for route in [
            METRICS_PATH,
            HEALTH_PATH,
            "/api/monitoring/health/live",
            "/api/monitoring/health/ready",
            "/api/monitoring/health/redis",
            "/api/monitoring/health/calls",
        ] {
            assert!(!counted(route), "{route}");
        }
        for route in [
            "/api/leads/{id}",
            "/api/monitoring/stats/cache",
            "/api/monitoring/healthy",
            "unmatched",
        ] {
            assert!(counted(route), "{route}");
        }
    }
}
