//! Counts the SQL statements this process sends, from sqlx's own per-statement events.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

static STATEMENTS: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        // sqlx logs every statement it runs under this target.
        if event.metadata().target() == "sqlx::query" {
            STATEMENTS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// SQL statements run so far by this process. The first call installs the counting
/// subscriber (process-wide: nextest runs each test in a process of its own).
pub fn statements() -> u64 {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Counter);
        // Another global subscriber would make the counts meaningless: fail loudly.
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
    STATEMENTS.load(Ordering::SeqCst)
}
