//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tiercache_repository::Repository;

/// Handler state: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The cached repositories.
    pub repo: Repository,
    /// How long the webhook may take before it answers with what it has.
    pub webhook_budget: Duration,
    /// Webhook calls answered past their budget with a default greeting.
    pub deadline_fallbacks: Arc<AtomicU64>,
}

impl AppState {
    /// State around `repo`.
    pub fn new(repo: Repository, webhook_budget: Duration) -> Self {
        AppState {
            repo,
            webhook_budget,
            deadline_fallbacks: Arc::new(AtomicU64::new(0)),
        }
    }
}
