//! `GET /calls`: the live call log's page, served as static files compiled into the
//! binary (no build step): its HTML, script and style.
//!
//! The page holds no secret and takes none in its URL's query: it reads the organization's
//! key from the fragment (never sent to a server) or a form, and sends it in an
//! `Authorization` header. Its Content-Security-Policy admits only this service's own
//! script, style and connections, so an injected `<script>` or inline handler never runs.

use axum::http::header;
use axum::response::IntoResponse;

/// The page's policy: nothing from elsewhere, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const HTML: &str = include_str!("calls_page.html");
const SCRIPT: &str = include_str!("calls_page.js");
const STYLE: &str = include_str!("calls_page.css");

fn serve(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new build's page is seen at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /calls`
pub async fn page() -> impl IntoResponse {
    serve("text/html; charset=utf-8", HTML)
}

/// `GET /calls.js`
pub async fn script() -> impl IntoResponse {
    serve("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /calls.css`
pub async fn style() -> impl IntoResponse {
    serve("text/css; charset=utf-8", STYLE)
}
