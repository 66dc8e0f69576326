//! The `Tiercache-Stale` response header: a response built from a stale cached value (the
//! database failed or was slower than the soft timeout) says so, with the value's age.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// The header's name; its value is the age in whole seconds of the oldest stale value used.
pub const STALE_HEADER: &str = "tiercache-stale";

/// Runs the handler and marks its response when a read inside it served a stale value.
///
/// A 404 is never marked: a lead of an organization the API key does not speak for is a
/// 404 like a missing one, and a stale mark (the lead read from the cache while
/// PostgreSQL is down) would tell the two apart.
pub async fn mark(request: Request, next: Next) -> Response {
    let (mut response, stale) = tiercache::stale::track(next.run(request)).await;
    if let Some(age) = stale
        && response.status() != StatusCode::NOT_FOUND
    {
        response
            .headers_mut()
            .insert(STALE_HEADER, HeaderValue::from(age.as_secs()));
    }
    response
}
