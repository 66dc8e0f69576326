//! The call log's plain routes: the voice agent posting a call's events, an
//! organization's calls of a recent window, and tickets for the live feed.
//!
//! Organization routes take the key's [`Scope`], as the domain routes do: another
//! organization's calls are a 404 with the body a missing organization gets.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tiercache_calls::{CallEvent, PostedEvent, validate_call_sid};
use tiercache_repository::queries;

use crate::auth::{Scope, TICKET_TTL_SECS};
use crate::calls::Calls;
use crate::error::ApiError;
use crate::state::AppState;

/// How far back `since` may reach: the streams keep a day.
const MAX_WINDOW: TimeDelta = TimeDelta::hours(24);

/// Sessions listed when no `limit` is given.
const DEFAULT_LIMIT: i64 = 200;

/// Most sessions listed at once.
pub const MAX_LIMIT: i64 = 1000;

/// The call log, which the routes exist only with.
pub(crate) fn calls(state: &AppState) -> Result<&Calls, ApiError> {
    state.calls.as_ref().ok_or(ApiError::NotFound("route"))
}

/// Passes when `scope` may see organization `org_id` and it exists; anything else is the
/// same "organization not found". An organization's own key needs no lookup (its
/// organization exists); an operator's reads the organization.
pub(crate) async fn org_in_scope(
    state: &AppState,
    scope: Scope,
    org_id: i64,
) -> Result<(), ApiError> {
    if !scope.admits(org_id) {
        return Err(ApiError::NotFound("organization"));
    }
    if scope == Scope::Operator {
        let org = queries::org_by_id(state.repo.pool(), org_id)
            .await
            .map_err(|e| ApiError::from(tiercache_repository::Error::from(e)))?;
        if org.is_none() {
            return Err(ApiError::NotFound("organization"));
        }
    }
    Ok(())
}

/// `POST /api/calls/{call_sid}/events` with `{type, at?, data?}` (other fields ignored):
/// 202 with the event's id once it is queued.
pub async fn post_event(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let calls = calls(&state)?;
    let Path(call_sid) = path?;
    validate_call_sid(&call_sid).map_err(|e| ApiError::bad(e.field(), e.to_string()))?;
    let Json(body) = body?;
    let event = posted(body, Utc::now())?;
    let org_id = match calls.log.org_of(&call_sid).await {
        Ok(Some(org_id)) => org_id,
        Ok(None) => return Err(ApiError::UnknownCall),
        Err(e) => return Err(ApiError::CallLogUnavailable(e)),
    };
    let event = CallEvent::new(call_sid, org_id, event);
    let id = event.id;
    calls.log.publish(event);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "event_id": id.to_string() })),
    ))
}

/// The posted body, checked; a 400 names the field at fault.
fn posted(body: Value, now: DateTime<Utc>) -> Result<PostedEvent, ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::bad(
            "body",
            "must be a JSON object {\"type\", \"at\"?, \"data\"?}",
        ));
    };
    let kind = match body.remove("type") {
        Some(Value::String(kind)) => kind,
        None | Some(Value::Null) => return Err(ApiError::bad("type", "is required")),
        Some(_) => return Err(ApiError::bad("type", "must be a string")),
    };
    let at = match body.remove("at") {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => Some(at),
        Some(_) => {
            return Err(ApiError::bad(
                "at",
                "must be a time in RFC 3339 (2026-12-07T12:00:00Z)",
            ));
        }
    };
    PostedEvent::check(&kind, at.as_deref(), body.remove("data"), now)
        .map_err(|e| ApiError::bad(e.field(), e.to_string()))
}

/// The calls' query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    since: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/orgs/{org_id}/calls?since=5m|1h|24h|<RFC 3339>&limit=`: sessions newest
/// first (those in progress marked), with the cursor to follow the live feed from.
pub async fn list(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
    query: Result<Query<CallsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let calls = calls(&state)?;
    let Path(org_id) = path?;
    let Query(query) = query?;
    let now = Utc::now();
    let since = match query.since.as_deref() {
        None => now - MAX_WINDOW,
        Some(text) => parse_since(text, now)?,
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    org_in_scope(&state, scope, org_id).await?;
    let (sessions, cursor) = calls
        .store
        .sessions(org_id, since, limit)
        .await
        .map_err(ApiError::SessionsUnavailable)?;
    Ok(Json(json!({
        "calls": sessions,
        "cursor": cursor,
        "since": since.to_rfc3339_opts(SecondsFormat::Millis, true),
    })))
}

/// `since` as a window back from `now` (`5m`, `1h`, `24h`: any `<n>m` or `<n>h` up to a
/// day) or a time in RFC 3339 within the last day.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    const MESSAGE: &str = "must be a window such as 5m, 1h or 24h (at most 24h), or a time \
                           in RFC 3339 within the last 24 hours";
    let bad = || ApiError::bad("since", MESSAGE);
    let window = |n: &str, unit: fn(i64) -> TimeDelta| -> Result<TimeDelta, ApiError> {
        let n: i64 = n.parse().map_err(|_| bad())?;
        let window = unit(n);
        if n < 1 || window > MAX_WINDOW {
            return Err(bad());
        }
        Ok(window)
    };
    let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 5;
    if let Some(n) = text.strip_suffix('m').filter(|n| digits(n)) {
        return Ok(now - window(n, TimeDelta::minutes)?);
    }
    if let Some(n) = text.strip_suffix('h').filter(|n| digits(n)) {
        return Ok(now - window(n, TimeDelta::hours)?);
    }
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| bad())?
        .with_timezone(&Utc);
    if at < now - MAX_WINDOW || at > now {
        return Err(bad());
    }
    Ok(at)
}

/// `POST /api/orgs/{org_id}/calls/ticket`: a ticket for the live feed's routes, for
/// clients that cannot send a header (a browser's `EventSource` or `WebSocket`).
pub async fn ticket(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let calls = calls(&state)?;
    let Path(org_id) = path?;
    org_in_scope(&state, scope, org_id).await?;
    Ok(Json(json!({
        "ticket": calls.tickets.issue(org_id, Utc::now()),
        "expires_in": TICKET_TTL_SECS,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ApiError) -> String {
        match e {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn since_takes_windows_up_to_a_day_and_recent_times() {
        let now = Utc::now();
        for (text, back) in [
            ("5m", TimeDelta::minutes(5)),
            ("1h", TimeDelta::hours(1)),
            ("24h", TimeDelta::hours(24)),
            ("90m", TimeDelta::minutes(90)),
            ("1440m", TimeDelta::hours(24)),
        ] {
            assert_eq!(parse_since(text, now).unwrap(), now - back, "{text}");
        }
        let at = now - TimeDelta::hours(3);
        let text = at.to_rfc3339();
        assert_eq!(parse_since(&text, now).unwrap(), at);
        for bad in [
            "0m",
            "25h",
            "1441m",
            "-5m",
            "5",
            "m",
            "5d",
            "1.5h",
            "99999999999h",
            "yesterday",
            "2020-01-01T00:00:00Z",
        ] {
            assert_eq!(field(parse_since(bad, now).unwrap_err()), "since", "{bad}");
        }
        let ahead = (now + TimeDelta::minutes(1)).to_rfc3339();
        assert!(parse_since(&ahead, now).is_err());
    }

    #[test]
    fn a_posted_body_names_the_field_at_fault() {
        let now = Utc::now();
        let check = |body: Value| posted(body, now).map_err(field);
        assert_eq!(check(json!([])).unwrap_err(), "body");
        assert_eq!(check(json!({})).unwrap_err(), "type");
        assert_eq!(check(json!({"type": 3})).unwrap_err(), "type");
        assert_eq!(check(json!({"type": "call_started"})).unwrap_err(), "type");
        assert_eq!(
            check(json!({"type": "intent_detected", "at": 5})).unwrap_err(),
            "at"
        );
        assert_eq!(
            check(json!({"type": "intent_detected", "at": "noon"})).unwrap_err(),
            "at"
        );
        assert_eq!(
            check(json!({"type": "intent_detected", "data": [1]})).unwrap_err(),
            "data"
        );
        assert_eq!(
            check(json!({"type": "call_ended", "data": {}})).unwrap_err(),
            "data.duration_seconds"
        );
        let event =
            check(json!({"type": "intent_detected", "extra": true, "data": {"intent": "book"}}))
                .unwrap();
        assert_eq!(event.at, now);
        assert_eq!(event.data["intent"], "book");
    }
}
