//! Session changes as they happen, per organization, from every instance (`LISTEN`).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::session::CallSession;

/// The live feed of session changes; cheap to clone.
#[derive(Clone)]
pub struct LiveFeed {
    _private: (),
}

impl LiveFeed {
    /// Listens on [`NOTIFY_CHANNEL`](crate::NOTIFY_CHANNEL) over a connection of its own,
    /// reconnecting when it drops; stops when the returned task is aborted.
    pub fn start(pool: PgPool) -> (LiveFeed, JoinHandle<()>) {
        let _ = pool;
        todo!("issue 24: feed")
    }

    /// Every change to `org_id`'s sessions from now on. A receiver that falls behind gets
    /// `Lagged` and should catch up with [`SessionStore::changes`](crate::SessionStore::changes).
    pub fn subscribe(&self, org_id: i64) -> broadcast::Receiver<Arc<CallSession>> {
        let _ = org_id;
        todo!("issue 24: feed")
    }

    /// Whether it is listening now (else changes reach clients only by catching up).
    pub fn is_listening(&self) -> bool {
        todo!("issue 24: feed")
    }
}
