//! The HTTP API: one function builds the router from its state.

mod admin;
mod domain;
mod stale;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::state::AppState;

pub use stale::STALE_HEADER;
pub use webhook::{
    DynamicVariables, GREETING_SOURCE_HEADER, GreetingSource, MAX_CALL_SID_LEN, WebhookRequest,
    WebhookResponse,
};

/// Largest request body accepted (a 413 past it): a message of `MAX_TEXT_LEN` characters,
/// each escaped as `\uXXXX\uXXXX`, fits with room to spare.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const _: () = assert!(tiercache_repository::MAX_TEXT_LEN * 12 < MAX_BODY_BYTES);

/// The service's routes: the domain API, the webhook, monitoring, and (with a token) admin.
/// Every request is counted by route template through the metrics layer. Errors, a wrong
/// method's 405 and an unknown route's 404 included, are JSON (`crate::error`).
pub fn router(state: AppState) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let mut app = Router::new()
        .route(
            "/api/webhooks/conversation-initiation",
            post(webhook::conversation_initiation),
        )
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
        .route("/api/leads/{id}/messages", post(domain::add_message));
    // Without a token the admin routes do not exist (404), rather than exist and refuse.
    if state.admin_token.is_some() {
        app = app.route("/api/admin/invalidate", post(admin::invalidate));
    }
    app.layer(axum::middleware::from_fn(stale::mark))
        .with_state(state.clone())
        .merge(tiercache_monitoring::router(state.monitoring()))
        .fallback(domain::not_found)
        // After every route is in: it applies to the routes registered before it.
        .method_not_allowed_fallback(domain::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            tiercache_monitoring::track_http,
        ))
}
