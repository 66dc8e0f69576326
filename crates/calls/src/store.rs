//! Call sessions in PostgreSQL: events applied idempotently, sessions folded whatever order
//! events arrive in, each change numbered per organization and announced (`NOTIFY`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::StoreError;
use crate::event::CallEvent;
use crate::session::{CallSession, Cursor};

/// The channel every session change is announced on (payload: the session as JSON).
pub const NOTIFY_CHANNEL: &str = "tiercache_calls";

/// What applying one event did.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// It was new: its session changed to this.
    New(Box<CallSession>),
    /// It had been applied before: nothing changed.
    Duplicate,
}

/// The call sessions' table; cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    pool: PgPool,
}

impl SessionStore {
    /// The store on `pool` (its migrations run).
    pub fn new(pool: PgPool) -> Self {
        SessionStore { pool }
    }

    /// Applies each event in its own transaction, announcing the changed session at
    /// commit; one outcome per event, in order (a failed one changed nothing).
    pub async fn apply(&self, events: &[CallEvent]) -> Vec<Result<Applied, StoreError>> {
        let _ = (&self.pool, events);
        todo!("issue 24: store")
    }

    /// An organization's sessions that started at or after `since`, and those still in
    /// progress that started within the last day, newest first (at most `limit`), with the
    /// organization's cursor now (for a live feed to go on from).
    pub async fn sessions(
        &self,
        org_id: i64,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<(Vec<CallSession>, Cursor), StoreError> {
        let _ = (org_id, since, limit);
        todo!("issue 24: store")
    }

    /// An organization's sessions changed after `after`, oldest change first (at most
    /// `limit`), and the cursor to ask from next.
    pub async fn changes(
        &self,
        org_id: i64,
        after: Cursor,
        limit: i64,
    ) -> Result<(Vec<CallSession>, Cursor), StoreError> {
        let _ = (org_id, after, limit);
        todo!("issue 24: store")
    }

    /// The organization of a call with a session, if any.
    pub async fn org_of(&self, call_sid: &str) -> Result<Option<i64>, StoreError> {
        let _ = call_sid;
        todo!("issue 24: store")
    }
}
