//! The admin API: invalidate an entity with its derived keys, one exact key, or everything;
//! inspect the call log's streams.
//!
//! Behind a bearer token compared in constant time; every action is logged (what and
//! the outcome, never a phone number) and counted.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tiercache::{Invalidation, InvalidationSource};
use tiercache_repository::queries;

use crate::error::ApiError;
use crate::state::AppState;

/// `POST /api/admin/invalidate`: exactly one of `{entity, id}`, `{key}`, `{all: true}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateRequest {
    entity: Option<String>,
    id: Option<i64>,
    key: Option<String>,
    all: Option<bool>,
}

/// `POST /api/admin/invalidate`
pub async fn invalidate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<InvalidateRequest>, JsonRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        state.metrics.admin_action("invalidate", "unauthorized");
        tracing::warn!(
            action = "invalidate",
            "admin request refused: missing or wrong token"
        );
        return unauthorized();
    }
    match run(&state, body).await {
        Ok((action, response)) => {
            state.metrics.admin_action(action, "ok");
            response
        }
        Err((action, error)) => {
            state.metrics.admin_action(action, "refused");
            error.into_response()
        }
    }
}

type Outcome = Result<(&'static str, Response), (&'static str, ApiError)>;

async fn run(state: &AppState, body: Result<Json<InvalidateRequest>, JsonRejection>) -> Outcome {
    let Json(request) = body.map_err(|e| ("invalidate", ApiError::from(e)))?;
    let cache = state.repo.cache();
    let keys = tiercache_repository::keys(cache);
    match request {
        InvalidateRequest {
            entity: Some(entity),
            id: Some(id),
            key: None,
            all: None,
        } => {
            let pool = state.repo.pool();
            let invalidation = match entity.as_str() {
                "lead" => match queries::lead_by_id(pool, id).await {
                    Ok(Some(lead)) => keys.lead_changed(lead.id, lead.org_id, &lead.phone),
                    Ok(None) => return Err(("invalidate_lead", ApiError::NotFound("lead"))),
                    Err(e) => {
                        return Err((
                            "invalidate_lead",
                            ApiError::from(tiercache_repository::Error::from(e)),
                        ));
                    }
                },
                "org" => match queries::org_by_id(pool, id).await {
                    Ok(Some(org)) => {
                        match queries::org_invalidation(pool, keys, org.id, &org.phone).await {
                            Ok(invalidation) => invalidation,
                            Err(e) => {
                                return Err((
                                    "invalidate_org",
                                    ApiError::from(tiercache_repository::Error::from(e)),
                                ));
                            }
                        }
                    }
                    Ok(None) => return Err(("invalidate_org", ApiError::NotFound("organization"))),
                    Err(e) => {
                        return Err((
                            "invalidate_org",
                            ApiError::from(tiercache_repository::Error::from(e)),
                        ));
                    }
                },
                _ => {
                    return Err((
                        "invalidate",
                        ApiError::bad("entity", "must be one of lead, org"),
                    ));
                }
            };
            let action = if entity == "lead" {
                "invalidate_lead"
            } else {
                "invalidate_org"
            };
            let report = cache
                .invalidate(invalidation, InvalidationSource::Admin)
                .await;
            tracing::info!(
                action,
                id,
                keys = report.keys,
                "admin invalidated an entity"
            );
            Ok((action, invalidated(report)))
        }
        InvalidateRequest {
            entity: None,
            id: None,
            key: Some(text),
            all: None,
        } => {
            let key = keys
                .namespace()
                .parse(&text)
                .map_err(|e| ("invalidate_key", ApiError::bad("key", e.to_string())))?;
            let report = cache
                .invalidate(Invalidation::key(key), InvalidationSource::Admin)
                .await;
            // The key's Debug form shortens phone digests; the text itself is never logged.
            tracing::info!(action = "invalidate_key", key = ?key, "admin invalidated a key");
            Ok(("invalidate_key", invalidated(report)))
        }
        InvalidateRequest {
            entity: None,
            id: None,
            key: None,
            all: Some(true),
        } => {
            let sweep = cache.invalidate_all(InvalidationSource::Admin);
            tracing::info!(action = "invalidate_all", "admin cleared the cache");
            let l2 = if sweep.is_some() {
                "sweeping"
            } else {
                "disabled"
            };
            let body = json!({"invalidated": "all", "l1": "cleared", "l2": l2});
            Ok((
                "invalidate_all",
                (StatusCode::ACCEPTED, Json(body)).into_response(),
            ))
        }
        _ => Err((
            "invalidate",
            ApiError::bad(
                "body",
                "give exactly one of {\"entity\", \"id\"}, {\"key\"} or {\"all\": true}",
            ),
        )),
    }
}

/// `GET /api/admin/streams`: each call stream of the last day (length, first and last
/// entry, groups, consumers, pending, lag), the dead-letter stream's length, this
/// instance's consumer and queue.
pub async fn streams(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        state.metrics.admin_action("streams", "unauthorized");
        tracing::warn!(
            action = "streams",
            "admin request refused: missing or wrong token"
        );
        return unauthorized();
    }
    let Some(calls) = &state.calls else {
        return ApiError::NotFound("route").into_response();
    };
    let (streams, dead_letter) = tokio::join!(calls.log.streams(), calls.log.dead_letters());
    let (streams, dead_letter) = match (streams, dead_letter) {
        (Ok(streams), Ok(dead_letter)) => (streams, dead_letter),
        (Err(e), _) | (_, Err(e)) => {
            state.metrics.admin_action("streams", "refused");
            return ApiError::CallLogUnavailable(e).into_response();
        }
    };
    state.metrics.admin_action("streams", "ok");
    let status = calls.log.status();
    Json(json!({
        "streams": streams,
        "dead_letter": dead_letter,
        "consumer": status.consumer,
        "queue": {
            "depth": status.queue_depth,
            "capacity": status.queue_capacity,
            "published": status.published,
            "dropped": status.dropped,
            "redis": status.redis,
        },
    }))
    .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": {"code": "unauthorized", "message": "a valid bearer token is required"}})),
    )
        .into_response()
}

fn invalidated(report: tiercache::InvalidationReport) -> Response {
    let l2 = match report.l2_failure {
        None => "done".to_owned(),
        Some(kind) => format!("owed ({})", kind.as_str()),
    };
    Json(json!({"keys": report.keys, "l2": l2})).into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.admin_token else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}
