//! `ApiError`: every way a request can fail, as a status and a JSON body.
//!
//! Bodies are `{"error": {"code", "message", "field"?}}`. A caller's mistake is a 400 that
//! always names the field (`body` when nothing more precise can be named); internals stay in
//! the logs, never in a body. Messages quote at most [`MAX_QUOTED_CHARS`] characters of what
//! serde or axum said, so a huge input is never echoed back.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tiercache::log_throttle::{LOG_INTERVAL, LogThrottle};
use tiercache_repository::Error as RepoError;

use crate::http::BodyTimeout;
use crate::routes::MAX_BODY_BYTES;

/// Longest message taken from serde or axum; longer ones are cut (they can quote input).
pub const MAX_QUOTED_CHARS: usize = 200;

/// Longest field name taken from serde's message; a longer or odd one is input, not a field.
const MAX_FIELD_CHARS: usize = 64;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a value is out of range.
    #[error("{message}")]
    BadRequest {
        /// The offending input: a field, `body`, `path` or `query`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("the request body is over {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    /// The body is not declared as JSON.
    #[error("expected a JSON body, with `content-type: application/json`")]
    UnsupportedMediaType,
    /// The body did not arrive whole in time (see [`crate::http`]).
    #[error("the request body did not arrive within {:?}", .0.0)]
    BodyTimeout(BodyTimeout),
    /// The route exists, but not with this method (the `Allow` header lists those it has).
    #[error("this route does not take this method")]
    MethodNotAllowed,
    /// No such entity.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// PostgreSQL is unreachable and nothing usable is cached.
    #[error("the database is unavailable and nothing usable is cached")]
    Unavailable(#[source] RepoError),
    /// Anything else: a bug or an unexpected database error.
    #[error("internal error")]
    Internal(#[source] RepoError),
    /// Credentials missing or wrong (a 401; with `WWW-Authenticate` for an API key).
    #[error("{0}")]
    Unauthorized(Unauthorized),
    /// No one knows the call an event was posted for (a 404 naming `call_sid`).
    #[error("call not found: its call_started has not been seen")]
    UnknownCall,
    /// The call log cannot say which organization a call belongs to (Redis and PostgreSQL
    /// both failing).
    #[error("the call log is unavailable")]
    CallLogUnavailable(#[source] tiercache_calls::Unavailable),
    /// The call sessions cannot be read.
    #[error("the call sessions are unavailable")]
    SessionsUnavailable(#[source] tiercache_calls::StoreError),
    /// API keys cannot be checked: never read from PostgreSQL, or not for longer than
    /// their grace (`crate::auth::ApiKeys`).
    #[error("API keys cannot be checked: the database is unavailable")]
    KeysUnavailable,
}

/// Why a request was refused with a 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// No `Authorization` header.
    #[error("an API key is required: send `Authorization: Bearer <key>`")]
    MissingKey,
    /// An `Authorization` header that is not `Bearer <key>`.
    #[error("the Authorization header must be `Bearer <key>`")]
    MalformedHeader,
    /// A key that is unknown or revoked (the two are not told apart).
    #[error("the API key is not valid")]
    InvalidKey,
    /// The webhook's shared secret is missing or wrong.
    #[error("the webhook secret is missing or wrong")]
    WebhookSecret,
    /// A live feed ticket that is not one of ours or has expired.
    #[error("the ticket is not valid or has expired: ask for another")]
    InvalidTicket,
}

impl Unauthorized {
    /// The `WWW-Authenticate` challenge (RFC 6750) for an API key; none for the webhook.
    fn challenge(self) -> Option<&'static str> {
        match self {
            Unauthorized::MissingKey => Some("Bearer"),
            Unauthorized::MalformedHeader => Some(r#"Bearer error="invalid_request""#),
            Unauthorized::InvalidKey | Unauthorized::InvalidTicket => {
                Some(r#"Bearer error="invalid_token""#)
            }
            Unauthorized::WebhookSecret => None,
        }
    }
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::KeysUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::UnknownCall => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::CallLogUnavailable(_) | ApiError::SessionsUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        }
    }

    /// The input to fix, when there is one.
    fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } => Some(field),
            ApiError::PayloadTooLarge | ApiError::BodyTimeout(_) => Some("body"),
            ApiError::UnsupportedMediaType => Some("content-type"),
            ApiError::UnknownCall => Some("call_sid"),
            _ => None,
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
            ApiError::CallLogUnavailable(e) => {
                if let Some(suppressed) = UNAVAILABLE.admit() {
                    tracing::warn!(error = %e, suppressed, "call log unavailable");
                }
            }
            ApiError::SessionsUnavailable(e) => {
                if let Some(suppressed) = UNAVAILABLE.admit() {
                    tracing::warn!(error = ?e, suppressed, "call sessions unavailable");
                }
            }
            _ => {}
        }
        let mut error = json!({ "code": code, "message": self.to_string() });
        if let Some(field) = self.field() {
            error["field"] = json!(field);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if let ApiError::Unauthorized(why) = &self
            && let Some(challenge) = why.challenge()
        {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        response
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
        if let Some(timeout) = BodyTimeout::find(&rejection) {
            return ApiError::BodyTimeout(timeout);
        }
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
            // Syntax and data errors alike; a syntax error inside a field names that field
            // (serde's path says where the parser stopped), anything else the body.
            _ => {
                let message = rejection.body_text();
                ApiError::BadRequest {
                    field: field_in(&message).unwrap_or_else(|| "body".to_owned()),
                    message: quoted(message),
                }
            }
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest {
            field: "path".to_owned(),
            message: quoted(rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let message = rejection.body_text();
        ApiError::BadRequest {
            field: field_in(&message).unwrap_or_else(|| "query".to_owned()),
            message: quoted(message),
        }
    }
}

/// `message`, cut to [`MAX_QUOTED_CHARS`] characters.
fn quoted(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_QUOTED_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// The field serde names in its message (`unknown field `x``, `missing field `y``, or
/// `x: invalid type`, `x: EOF while parsing`), if any, and if it looks like a field name
/// rather than a pile of input.
fn field_in(message: &str) -> Option<String> {
    named_in(message).filter(|name| {
        name.chars().count() <= MAX_FIELD_CHARS
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
    })
}

fn named_in(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            return rest.find('`').map(|end| rest[..end].to_owned());
        }
    }
    // With a path: "…into the target type: name: invalid type …",
    // "…as JSON: caller_id: EOF while parsing a string …" or
    // "Failed to deserialize query string: offset: invalid digit …".
    let tail = ["target type: ", "as JSON: ", "query string: "]
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

    #[test]
    fn a_syntax_error_inside_a_field_names_it_and_one_outside_names_none() {
        assert_eq!(
            field_in("Failed to parse the request body as JSON: caller_id: EOF while parsing a string at line 1 column 19").as_deref(),
            Some("caller_id")
        );
        assert_eq!(
            field_in(
                "Failed to parse the request body as JSON: key must be a string at line 1 column 2"
            ),
            None
        );
    }

    #[test]
    fn a_name_that_is_a_pile_of_input_is_not_a_field() {
        let long = "q".repeat(MAX_FIELD_CHARS + 1);
        let message = format!("…target type: unknown field `{long}`, expected one of `name`");
        assert_eq!(field_in(&message), None);
        let message = "…target type: unknown field `a b\u{0}`, expected one of `name`";
        assert_eq!(field_in(message), None);
    }

    #[test]
    fn long_messages_are_cut() {
        let message = quoted("é".repeat(MAX_QUOTED_CHARS * 3));
        assert_eq!(message.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(message.ends_with('…'));
        assert_eq!(quoted("short".to_owned()), "short");
    }
}
