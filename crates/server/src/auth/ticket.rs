//! Tickets for the live call feed: what a browser's `EventSource` or `WebSocket` can carry,
//! since neither sends an `Authorization` header.
//!
//! A ticket is `{org_id}.{expires_unix}.{tag}`, the tag an HMAC-SHA256 of the first two
//! parts under a key derived from the service's key secret (`CACHE_KEY_SECRET`): stateless,
//! so every instance accepts a ticket any instance issued, and short-lived (60 s), so one
//! left in a proxy's log is of little use. It speaks for one organization, and is taken as
//! `?ticket=` on the live feed's two routes only ([`require_key_or_ticket`]).

use std::fmt;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::{ApiKeys, Scope, require_key};
use crate::error::{ApiError, Unauthorized};

/// How long a ticket is accepted after it is issued.
pub const TICKET_TTL_SECS: i64 = 60;

/// Longest ticket read; a longer `?ticket=` is invalid without being hashed.
const MAX_TICKET_LEN: usize = 128;

/// What the key is derived for, so no other use of the key secret shares it.
const KEY_PURPOSE: &[u8] = b"tiercache call feed tickets v1";

/// The key tickets are signed with; cheap to clone.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl TicketKey {
    /// The key derived from the service's key secret.
    pub fn derive(key_secret: &[u8]) -> TicketKey {
        let mut mac = new_mac(key_secret);
        mac.update(KEY_PURPOSE);
        TicketKey(mac.finalize().into_bytes().into())
    }

    /// A ticket for `org_id`, good until [`TICKET_TTL_SECS`] after `now`.
    pub fn issue(&self, org_id: i64, now: DateTime<Utc>) -> String {
        let expires = now.timestamp() + TICKET_TTL_SECS;
        let body = format!("{org_id}.{expires}");
        format!("{body}.{}", hex::encode(self.tag(&body)))
    }

    /// The organization `ticket` speaks for, if it is one of ours and has not expired at
    /// `now`; `None` for anything else.
    pub fn verify(&self, ticket: &str, now: DateTime<Utc>) -> Option<i64> {
        if ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (body, tag) = ticket.rsplit_once('.')?;
        let (org, expires) = body.split_once('.')?;
        let given = hex::decode(tag).ok()?;
        // Checked before anything else is trusted; equal lengths, compared in constant time.
        if given.len() != 32 || !bool::from(given.ct_eq(&self.tag(body))) {
            return None;
        }
        let org_id: i64 = org.parse().ok()?;
        let expires: i64 = expires.parse().ok()?;
        (now.timestamp() < expires).then_some(org_id)
    }

    fn tag(&self, body: &str) -> [u8; 32] {
        let mut mac = new_mac(&self.0);
        mac.update(body.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (a long one is hashed first): this cannot fail.
    #[allow(clippy::expect_used)]
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC keys may be any length")
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(***)")
    }
}

/// What the live routes' check needs: the keys, and the ticket key.
#[derive(Clone)]
pub struct LiveAuth {
    /// The API keys.
    pub keys: ApiKeys,
    /// The ticket key.
    pub tickets: TicketKey,
}

/// Middleware for the live feed's routes: an `Authorization: Bearer` key as everywhere
/// (see [`require_key`]), or, without that header, a `?ticket=`, which gives the scope of
/// its organization. A bad or expired ticket is a 401.
pub async fn require_key_or_ticket(
    State(auth): State<LiveAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) {
        return require_key(State(auth.keys), request, next).await;
    }
    let Some(ticket) = ticket_in(request.uri().query()) else {
        return ApiError::Unauthorized(Unauthorized::MissingKey).into_response();
    };
    match auth.tickets.verify(ticket, Utc::now()) {
        Some(org_id) => {
            request.extensions_mut().insert(Scope::Org(org_id));
            next.run(request).await
        }
        None => ApiError::Unauthorized(Unauthorized::InvalidTicket).into_response(),
    }
}

/// The `ticket` parameter of a query string (a ticket needs no percent-decoding: digits,
/// dots and hex).
fn ticket_in(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_ticket_speaks_for_its_organization_until_it_expires() {
        let key = TicketKey::derive(b"a-key-secret-long-enough");
        let now = Utc::now();
        let ticket = key.issue(7, now);
        assert_eq!(key.verify(&ticket, now), Some(7));
        assert_eq!(
            key.verify(&ticket, now + Duration::seconds(TICKET_TTL_SECS - 1)),
            Some(7)
        );
        assert_eq!(
            key.verify(&ticket, now + Duration::seconds(TICKET_TTL_SECS)),
            None
        );
    }

    #[test]
    fn a_ticket_altered_or_signed_with_another_secret_is_refused() {
        let key = TicketKey::derive(b"a-key-secret-long-enough");
        let now = Utc::now();
        let ticket = key.issue(7, now);
        let other = TicketKey::derive(b"another-key-secret-entirely");
        assert_eq!(other.verify(&ticket, now), None);
        let (_, rest) = ticket.split_once('.').unwrap();
        assert_eq!(key.verify(&format!("8.{rest}"), now), None);
        let later = ticket.replacen('.', ".9", 1);
        assert_eq!(key.verify(&later, now), None);
        for junk in ["", "7", "7.1", "7.1.zz", "..", &"a".repeat(200)] {
            assert_eq!(key.verify(junk, now), None, "{junk:?}");
        }
        assert!(!format!("{key:?}").contains(&hex::encode(key.0)));
    }

    #[test]
    fn the_ticket_is_found_in_the_query() {
        assert_eq!(ticket_in(Some("ticket=a.b.c")), Some("a.b.c"));
        assert_eq!(ticket_in(Some("since=3&ticket=x")), Some("x"));
        assert_eq!(ticket_in(Some("since=3")), None);
        assert_eq!(ticket_in(None), None);
    }
}
