//! The domain API: organizations, leads and their derived views, and the two writes.
//!
//! Every handler runs behind `auth::require_key` and takes the key's [`Scope`]: data of
//! an organization the key does not speak for is a 404 with the body a missing entity
//! gets, so a key cannot learn what exists elsewhere.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use tiercache_repository::Channel;
use tiercache_repository::Phone;
use tiercache_repository::model::{
    Context, Greeting, HistoryPage, Lead, LeadPatch, Message, NewMessage, Org, Summary,
};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Parses a phone from a path segment (URL-decoded by the router).
pub(crate) fn phone(field: &str, raw: &str) -> Result<Phone, ApiError> {
    Phone::parse(raw).map_err(|e| ApiError::bad(field, e.to_string()))
}

fn found<T>(value: Option<Arc<T>>, entity: &'static str) -> ApiResult<T>
where
    T: Clone,
{
    match value {
        Some(value) => Ok(Json(Arc::unwrap_or_clone(value))),
        None => Err(ApiError::NotFound(entity)),
    }
}

/// Passes when `scope` may see lead `id`; a lead of another organization is "lead not
/// found", as a missing one is. An operator's key needs no lookup; an organization's
/// reads the lead through the cache (a lead's organization never changes through the API).
async fn lead_in_scope(state: &AppState, scope: Scope, id: i64) -> Result<(), ApiError> {
    if scope == Scope::Operator {
        return Ok(());
    }
    match state.repo.lead(id).await? {
        Some(lead) if scope.admits(lead.org_id) => Ok(()),
        _ => Err(ApiError::NotFound("lead")),
    }
}

/// `GET /api/orgs/by-phone/{phone}`
pub async fn org_by_phone(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Org> {
    let Path(raw) = path?;
    let phone = phone("phone", &raw)?;
    let org = state.repo.org_by_phone(&phone).await?;
    found(org.filter(|org| scope.admits(org.id)), "organization")
}

/// `GET /api/orgs/{org_id}/leads/by-phone/{phone}`
pub async fn lead_by_phone(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<(i64, String)>, PathRejection>,
) -> ApiResult<Lead> {
    let Path((org_id, raw)) = path?;
    let phone = phone("phone", &raw)?;
    if !scope.admits(org_id) {
        return Err(ApiError::NotFound("lead"));
    }
    found(state.repo.lead_by_phone(&phone, org_id).await?, "lead")
}

/// `GET /api/leads/{id}`
pub async fn lead(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
) -> ApiResult<Lead> {
    let Path(id) = path?;
    let lead = state.repo.lead(id).await?;
    found(lead.filter(|lead| scope.admits(lead.org_id)), "lead")
}

/// `GET /api/leads/{id}/context`
pub async fn context(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
) -> ApiResult<Context> {
    let Path(id) = path?;
    lead_in_scope(&state, scope, id).await?;
    found(state.repo.context(id).await?, "lead")
}

/// `GET /api/leads/{id}/summary`
pub async fn summary(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
) -> ApiResult<Summary> {
    let Path(id) = path?;
    lead_in_scope(&state, scope, id).await?;
    found(state.repo.summary(id).await?, "lead")
}

/// The greeting's query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreetingQuery {
    channel: Option<String>,
}

/// `GET /api/leads/{id}/greeting?channel=voice|sms|web` (voice when absent)
pub async fn greeting(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    query: Result<Query<GreetingQuery>, QueryRejection>,
) -> ApiResult<Greeting> {
    let Path(id) = path?;
    let Query(query) = query?;
    let channel = match query.channel.as_deref() {
        None => Channel::Voice,
        Some(raw) => raw
            .parse::<Channel>()
            .map_err(|e| ApiError::bad("channel", e.to_string()))?,
    };
    lead_in_scope(&state, scope, id).await?;
    found(state.repo.greeting(id, channel).await?, "lead")
}

/// The history's query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<u32>,
    offset: Option<u32>,
}

/// Page size when none is given.
const DEFAULT_PAGE_LIMIT: u32 = 20;

/// `GET /api/leads/{id}/history?limit=&offset=`
pub async fn history(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<HistoryPage> {
    let Path(id) = path?;
    let Query(query) = query?;
    lead_in_scope(&state, scope, id).await?;
    let page = state
        .repo
        .history(
            id,
            query.limit.unwrap_or(DEFAULT_PAGE_LIMIT),
            query.offset.unwrap_or(0),
        )
        .await?;
    found(page, "lead")
}

/// `PATCH /api/leads/{id}` with `{name?, status?, notes?}`
pub async fn update_lead(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<LeadPatch>, JsonRejection>,
) -> ApiResult<Lead> {
    let Path(id) = path?;
    let Json(patch) = body?;
    lead_in_scope(&state, scope, id).await?;
    match state.repo.update_lead(id, &patch).await? {
        Some(lead) => Ok(Json(lead)),
        None => Err(ApiError::NotFound("lead")),
    }
}

/// `POST /api/leads/{id}/messages` with `{channel, direction, body}`
pub async fn add_message(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<NewMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let Path(id) = path?;
    let Json(message) = body?;
    lead_in_scope(&state, scope, id).await?;
    match state.repo.add_message(id, &message).await? {
        Some(message) => Ok((StatusCode::CREATED, Json(message))),
        None => Err(ApiError::NotFound("lead")),
    }
}

/// Any other route.
pub async fn not_found() -> impl IntoResponse {
    ApiError::NotFound("route")
}

/// A route asked with a method it does not take (axum adds the `Allow` header).
pub async fn method_not_allowed() -> impl IntoResponse {
    ApiError::MethodNotAllowed
}
