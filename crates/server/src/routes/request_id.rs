//! A request id per request: the client's `x-request-id` when it is usable, else a new
//! UUID; echoed in the response, and carried by a span over every line the request logs.

use axum::Router;
use axum::extract::Request;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

/// The header a request id comes in and goes back in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a client; a longer one is replaced by a new one.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Wraps `routes` (all of them, the fallbacks included) in the request id's layers.
pub(super) fn layer(routes: Router) -> Router {
    routes.layer(
        // The first layer listed is outermost: drop an unusable id, make one when there is
        // none, echo it in the response, and open the request's span inside all that.
        ServiceBuilder::new()
            .layer(axum::middleware::map_request(drop_unusable))
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(span)
                    // 5xx answers are logged by `crate::error`, throttled; tower-http's
                    // default would log each one at error level, flooding under a fault.
                    .on_failure(()),
            ),
    )
}

/// Whether a client's request id is kept: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII
/// characters (no spaces, no control characters, nothing a log reader could trip on).
pub fn is_usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(u8::is_ascii_graphic)
}

/// Removes the request's `x-request-id` when it is not usable, or repeated, so that a new
/// one is made in its place.
async fn drop_unusable(mut request: Request) -> Request {
    let keep = {
        let mut ids = request.headers().get_all(REQUEST_ID_HEADER).iter();
        match (ids.next(), ids.next()) {
            (None, _) => true,
            (Some(id), None) => is_usable(id.as_bytes()),
            (Some(_), Some(_)) => false,
        }
    };
    if !keep {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    request
}

/// The request's span: its id only (the path can hold a phone number).
fn span(request: &Request) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    // At error level, so that the span is enabled whatever RUST_LOG lets through: a warning
    // logged under RUST_LOG=warn still carries its request's id.
    tracing::error_span!("request", request_id = %id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_ids_are_short_visible_ascii() {
        assert!(is_usable(b"abc-123"));
        assert!(is_usable(b"0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(is_usable(&[b'a'; MAX_REQUEST_ID_LEN]));
        assert!(!is_usable(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(!is_usable(b""));
        assert!(!is_usable(b"two words"));
        assert!(!is_usable(b"line\nbreak"));
        assert!(!is_usable("caf\u{e9}".as_bytes()));
    }
}
