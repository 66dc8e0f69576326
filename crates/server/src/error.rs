//! `ApiError`: every way a request can fail, as a status and a JSON body.
//!
//! Bodies are `{"error": {"code", "message", "field"?}}`. A caller's mistake is a 400 that
//! names the field; internals stay in the logs, never in a body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tiercache_repository::Error as RepoError;
use tiercache_repository::log_throttle::{LOG_INTERVAL, LogThrottle};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a value is out of range.
    #[error("{message}")]
    BadRequest {
        /// The offending input, when one can be named.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// No such entity.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// PostgreSQL is unreachable and nothing usable is cached.
    #[error("the database is unavailable and nothing usable is cached")]
    Unavailable(#[source] RepoError),
    /// Anything else: a bug or an unexpected database error.
    #[error("internal error")]
    Internal(#[source] RepoError),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        // A fault repeats these on every request: one line per interval each, saying how many
        // were left out (`tiercache_http_requests_total` counts every one).
        static INTERNAL: LogThrottle = LogThrottle::new(LOG_INTERVAL);
        static UNAVAILABLE: LogThrottle = LogThrottle::new(LOG_INTERVAL);
        match &self {
            ApiError::Internal(e) => {
                if let Some(suppressed) = INTERNAL.admit() {
                    tracing::error!(error = ?e, suppressed, "request failed");
                }
            }
            ApiError::Unavailable(e) => {
                if let Some(suppressed) = UNAVAILABLE.admit() {
                    tracing::warn!(error = ?e, suppressed, "database unavailable");
                }
            }
            _ => {}
        }
        let mut error = json!({ "code": code, "message": self.to_string() });
        if let ApiError::BadRequest {
            field: Some(field), ..
        } = &self
        {
            error["field"] = json!(field);
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Phone { field, source } => ApiError::bad(field, source.to_string()),
            RepoError::Invalid { field, message } => ApiError::bad(field, message),
            e if e.is_unavailable() => ApiError::Unavailable(e),
            e => ApiError::Internal(e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        ApiError::BadRequest {
            field: field_in(&message),
            message,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest {
            field: Some("path".to_owned()),
            message: rejection.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let message = rejection.body_text();
        ApiError::BadRequest {
            field: field_in(&message).or_else(|| Some("query".to_owned())),
            message,
        }
    }
}

/// The field serde names in its message (`unknown field `x``, `missing field `y``, or
/// `x: invalid type`), if any.
fn field_in(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            return rest.find('`').map(|end| rest[..end].to_owned());
        }
    }
    // With a path: "…into the target type: name: invalid type …" or
    // "Failed to deserialize query string: offset: invalid digit …".
    let tail = ["target type: ", "query string: "]
        .iter()
        .find_map(|marker| message.split_once(marker).map(|(_, tail)| tail))?;
    let (path, _) = tail.split_once(": ")?;
    (!path.contains(' ') && !path.is_empty()).then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_in("Failed to deserialize the JSON body into the target type: unknown field `colour`, expected one of `name`").as_deref(),
            Some("colour")
        );
        assert_eq!(
            field_in("Failed to deserialize the JSON body into the target type: missing field `body` at line 1").as_deref(),
            Some("body")
        );
        assert_eq!(
            field_in("Failed to deserialize the JSON body into the target type: status: invalid type: integer `3`, expected a string at line 1 column 12").as_deref(),
            Some("status")
        );
        assert_eq!(
            field_in("Expected request with `Content-Type: application/json`"),
            None
        );
    }
}
