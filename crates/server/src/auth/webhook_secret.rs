//! The webhook's shared secret: the voice platform sends it in a header the operator
//! names (`WEBHOOK_SECRET`, `WEBHOOK_SECRET_HEADER`); missing or wrong is a 401 before the
//! body is read. Without a secret configured (development only) the webhook is open.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Unauthorized};

/// The header the webhook's secret comes in, and the secret; cheap to clone.
#[derive(Clone)]
pub struct WebhookSecret {
    header: HeaderName,
    /// SHA-256 of the secret. Digests of equal length are compared, so the time a check
    /// takes says nothing about the secret's length or any prefix of it.
    digest: [u8; 32],
}

impl WebhookSecret {
    /// The header used when `WEBHOOK_SECRET_HEADER` is unset.
    pub const DEFAULT_HEADER: &'static str = "x-webhook-secret";

    /// `secret`, expected in `header`.
    pub fn new(header: HeaderName, secret: &str) -> WebhookSecret {
        WebhookSecret {
            header,
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// The header it is expected in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether `headers` carry the secret, once.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.header).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        bool::from(given.ct_eq(&self.digest))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("header", &self.header)
            .field("secret", &"***")
            .finish()
    }
}

/// Middleware: lets a request carrying the secret through; any other is a 401.
pub async fn require_secret(
    State(secret): State<WebhookSecret>,
    request: Request,
    next: Next,
) -> Response {
    if !secret.admits(request.headers()) {
        return ApiError::Unauthorized(Unauthorized::WebhookSecret).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_exact_secret_once_in_its_header_is_admitted() {
        let secret = WebhookSecret::new(
            HeaderName::from_static("x-platform-secret"),
            "a-webhook-secret-long-enough",
        );
        let with = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, HeaderValue::from_str(value).unwrap());
            }
            secret.admits(&headers)
        };
        assert!(with(&[(
            "x-platform-secret",
            "a-webhook-secret-long-enough"
        )]));
        assert!(with(&[(
            "X-Platform-Secret",
            "a-webhook-secret-long-enough"
        )]));
        assert!(!with(&[]));
        assert!(!with(&[(
            "x-platform-secret",
            "a-webhook-secret-long-enougH"
        )]));
        assert!(!with(&[(
            "x-platform-secret",
            "a-webhook-secret-long-enough "
        )]));
        assert!(!with(&[("x-platform-secret", "")]));
        assert!(!with(&[(
            "x-webhook-secret",
            "a-webhook-secret-long-enough"
        )]));
        assert!(!with(&[
            ("x-platform-secret", "a-webhook-secret-long-enough"),
            ("x-platform-secret", "a-webhook-secret-long-enough"),
        ]));
        let debug = format!("{secret:?}");
        assert!(!debug.contains("long-enough"), "{debug}");
    }
}
