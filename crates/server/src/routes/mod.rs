//! The HTTP API: one function builds the router from its state.

mod admin;
mod calls;
mod calls_live;
mod calls_page;
mod domain;
mod request_id;
mod stale;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::auth;
use crate::state::AppState;

pub use calls::parse_since;
pub use calls_page::CONTENT_SECURITY_POLICY;
pub use request_id::{MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER};
pub use stale::STALE_HEADER;
pub use webhook::{
    DynamicVariables, GREETING_SOURCE_HEADER, GreetingSource, MAX_CALL_SID_LEN, WebhookRequest,
    WebhookResponse,
};

/// Largest request body accepted (a 413 past it): a message of `MAX_TEXT_LEN` characters,
/// each escaped as `\uXXXX\uXXXX`, fits with room to spare.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const _: () = assert!(tiercache_repository::MAX_TEXT_LEN * 12 < MAX_BODY_BYTES);

/// The service's routes on one listener: the API (domain routes behind API keys, the
/// webhook behind its secret, admin with a token) and monitoring. Every request is counted
/// by route template through the metrics layer. Errors, a wrong method's 405 and an
/// unknown route's 404 included, are JSON (`crate::error`).
pub fn router(state: AppState) -> Router {
    finish(
        api_routes(&state).merge(tiercache_monitoring::router(state.monitoring())),
        &state,
    )
}

/// The API alone, for the public listener when monitoring has its own
/// (`MONITORING_BIND_ADDR`): a monitoring route is an unknown route here (404).
pub fn api_router(state: AppState) -> Router {
    finish(api_routes(&state), &state)
}

/// Monitoring alone, for its own listener (`MONITORING_BIND_ADDR`).
pub fn monitoring_router(state: AppState) -> Router {
    finish(tiercache_monitoring::router(state.monitoring()), &state)
}

/// The domain routes (each behind an API key), the webhook (behind its secret, when one
/// is set) and, with a token, admin.
fn api_routes(state: &AppState) -> Router {
    let domain = Router::new()
        .route("/api/orgs/by-phone/{phone}", get(domain::org_by_phone))
        .route(
            "/api/orgs/{org_id}/leads/by-phone/{phone}",
            get(domain::lead_by_phone),
        )
        .route(
            "/api/leads/{id}",
            get(domain::lead).patch(domain::update_lead),
        )
        .route("/api/leads/{id}/context", get(domain::context))
        .route("/api/leads/{id}/summary", get(domain::summary))
        .route("/api/leads/{id}/greeting", get(domain::greeting))
        .route("/api/leads/{id}/history", get(domain::history))
        .route("/api/leads/{id}/messages", post(domain::add_message))
        // Applies to the routes above only, and only when one matched.
        .route_layer(axum::middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_key,
        ));
    let mut webhook = Router::new().route(
        "/api/webhooks/conversation-initiation",
        post(webhook::conversation_initiation),
    );
    if let Some(secret) = &state.webhook_secret {
        webhook = webhook.route_layer(axum::middleware::from_fn_with_state(
            secret.clone(),
            auth::require_secret,
        ));
    }
    let mut app = domain.merge(webhook);
    if let Some(calls) = &state.calls {
        app = app.merge(call_routes(state, calls));
    }
    // Without a token the admin routes do not exist (404), rather than exist and refuse.
    if state.admin_token.is_some() {
        app = app.route("/api/admin/invalidate", post(admin::invalidate));
        if state.calls.is_some() {
            app = app.route("/api/admin/streams", get(admin::streams));
        }
    }
    app.layer(axum::middleware::from_fn(stale::mark))
        .with_state(state.clone())
}

/// The call log's routes: events in (behind the webhook's secret), calls and tickets
/// (behind an API key), the live feed (a key, or a ticket for browsers), and the page.
fn call_routes(state: &AppState, calls: &crate::calls::Calls) -> Router<AppState> {
    let mut events = Router::new().route("/api/calls/{call_sid}/events", post(calls::post_event));
    if let Some(secret) = &state.webhook_secret {
        events = events.route_layer(axum::middleware::from_fn_with_state(
            secret.clone(),
            auth::require_secret,
        ));
    }
    let keyed = Router::new()
        .route("/api/orgs/{org_id}/calls", get(calls::list))
        .route("/api/orgs/{org_id}/calls/ticket", post(calls::ticket))
        .route_layer(axum::middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_key,
        ));
    let live = Router::new()
        .route("/api/orgs/{org_id}/calls/live", get(calls_live::live))
        .route("/api/orgs/{org_id}/calls/ws", get(calls_live::ws))
        .route_layer(axum::middleware::from_fn_with_state(
            auth::LiveAuth {
                keys: state.api_keys.clone(),
                tickets: calls.tickets.clone(),
            },
            auth::require_key_or_ticket,
        ));
    let page = Router::new()
        .route("/calls", get(calls_page::page))
        .route("/calls.js", get(calls_page::script))
        .route("/calls.css", get(calls_page::style));
    events.merge(keyed).merge(live).merge(page)
}

/// What every listener's routes share: JSON 404s and 405s, the body limit, HTTP metrics,
/// and, around all of it, the request id (`request_id`).
fn finish(routes: Router, state: &AppState) -> Router {
    let routes = routes
        .fallback(domain::not_found)
        // After every route is in: it applies to the routes registered before it.
        .method_not_allowed_fallback(domain::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            tiercache_monitoring::track_http,
        ));
    request_id::layer(routes)
}
