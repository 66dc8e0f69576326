//! The HTTP API: one function builds the router from its state.

mod domain;
mod webhook;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub use webhook::{WebhookRequest, WebhookResponse};

/// The service's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
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
        .route("/api/leads/{id}/messages", post(domain::add_message))
        .route("/api/monitoring/health/live", get(|| async { "ok" }))
        .fallback(domain::not_found)
        .with_state(state)
}
