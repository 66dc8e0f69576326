//! The API key check in front of the domain routes: `Authorization: Bearer <key>` in, the
//! key's [`Scope`] out as a request extension for the handlers, or a 401 (missing or bad
//! key, with `WWW-Authenticate`) or a 503 (keys cannot be checked).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tiercache_repository::api_key::Scope;

use crate::auth::keys::{ApiKeys, Verdict};
use crate::error::{ApiError, Unauthorized};

/// Middleware: lets a request with an active key through, its [`Scope`] attached.
pub async fn require_key(
    State(keys): State<ApiKeys>,
    mut request: Request,
    next: Next,
) -> Response {
    let scope = match bearer(request.headers()).map(|key| keys.check(key)) {
        Ok(Verdict::Valid { scope, .. }) => scope,
        Ok(Verdict::Invalid) => {
            return ApiError::Unauthorized(Unauthorized::InvalidKey).into_response();
        }
        Ok(Verdict::Unverifiable) => return ApiError::KeysUnavailable.into_response(),
        Err(why) => return ApiError::Unauthorized(why).into_response(),
    };
    request.extensions_mut().insert::<Scope>(scope);
    next.run(request).await
}

/// The key in `Authorization: Bearer <key>` (the scheme in any case, RFC 7235).
fn bearer(headers: &HeaderMap) -> Result<&str, Unauthorized> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            Unauthorized::MalformedHeader
        } else {
            Unauthorized::MissingKey
        });
    };
    let value = value.to_str().map_err(|_| Unauthorized::MalformedHeader)?;
    let (scheme, key) = value.split_once(' ').ok_or(Unauthorized::MalformedHeader)?;
    let key = key.trim_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() || key.contains(' ') {
        return Err(Unauthorized::MalformedHeader);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_key_is_taken_from_a_bearer_header() {
        assert_eq!(bearer(&headers(&["Bearer tck_a"])), Ok("tck_a"));
        assert_eq!(bearer(&headers(&["bearer  tck_a "])), Ok("tck_a"));
        assert_eq!(bearer(&headers(&["BEARER tck_a"])), Ok("tck_a"));
    }

    #[test]
    fn anything_else_is_missing_or_malformed() {
        assert_eq!(bearer(&headers(&[])), Err(Unauthorized::MissingKey));
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "tck_a",
            "Bearer a b",
        ] {
            assert_eq!(
                bearer(&headers(&[bad])),
                Err(Unauthorized::MalformedHeader),
                "{bad:?}"
            );
        }
        assert_eq!(
            bearer(&headers(&["Bearer tck_a", "Bearer tck_b"])),
            Err(Unauthorized::MalformedHeader)
        );
    }
}
