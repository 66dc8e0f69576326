//! Who may call what: API keys for the domain routes ([`ApiKeys`], checked by
//! [`require_key`]), and the webhook's shared secret ([`WebhookSecret`], checked by
//! [`require_secret`]), and short-lived tickets for the live call feed ([`TicketKey`],
//! checked with keys by [`require_key_or_ticket`]). The admin API keeps its own token (`routes::admin`); monitoring
//! routes take none (they carry no personal data, and can have a listener of their own).

mod bearer;
mod keys;
mod ticket;
mod webhook_secret;

pub use bearer::require_key;
pub use keys::{ApiKeys, KeyRefreshTask, Snapshot, Verdict};
pub use ticket::{LiveAuth, TICKET_TTL_SECS, TicketKey, require_key_or_ticket};
pub use tiercache_repository::api_key::Scope;
pub use webhook_secret::{WebhookSecret, require_secret};
