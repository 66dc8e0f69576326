//! The live call log: the voice agent's call events, published without slowing a call to a
//! Redis stream per organization and day, folded by a consumer group into call sessions in
//! PostgreSQL, and followed live by the portal.
//!
//! - [`CallLog`]: the front door. [`CallLog::publish`] never waits and never fails: events
//!   go to a bounded in-process queue, appended to Redis in batches behind the caller
//!   (or, without Redis, applied to the sessions directly).
//! - The consumer (one per instance, in a consumer group) reads the streams, applies each
//!   event to [`SessionStore`] and acknowledges it after the commit; entries a dead
//!   consumer left pending are claimed, and one that keeps failing goes to a dead-letter
//!   stream.
//! - [`SessionStore`]: call sessions in PostgreSQL, idempotent by event id, right whatever
//!   order events arrive in; every change gets a per-organization [`Cursor`] and is
//!   announced to every instance (`NOTIFY`).
//! - [`LiveFeed`]: those announcements, per organization, for Server-Sent Events, polling
//!   and WebSocket clients.

mod claim;
mod config;
mod conn;
mod consumer;
mod drain;
mod error;
mod event;
mod feed;
mod fold;
mod inspect;
mod log;
mod observer;
mod queue;
mod session;
mod settle;
mod stats;
mod store;
mod streams;
mod xinfo;

pub use config::CallLogConfig;
pub use error::{EventError, StoreError, Unavailable};
pub use event::{
    CallEvent, EventKind, MAX_CALL_SID_LEN, MAX_DATA_BYTES, PostedEvent, mask_phone,
    validate_call_sid,
};
pub use feed::LiveFeed;
pub use inspect::{ConsumerStats, GroupStats, StreamStats};
pub use log::{CallLog, CallLogStatus, CallLogTasks, ConsumerStatus};
pub use observer::{CallLogObserver, DropReason, NoopCallObserver};
pub use session::{CallSession, Cursor, SessionStatus};
pub use store::{Applied, NOTIFY_CHANNEL, SessionStore};
