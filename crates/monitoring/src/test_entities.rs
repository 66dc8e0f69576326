//! Six entities, named as the voice agent's are, for this crate's tests.

use std::sync::LazyLock;
use std::time::Duration;

use tiercache::{Entity, EntityPolicy, Schema};

pub(crate) static ALL: LazyLock<Vec<Entity>> = LazyLock::new(|| {
    let mut b = Schema::builder();
    let ttl = EntityPolicy::with_l2_ttl(Duration::from_secs(600));
    ["lead", "org", "context", "summary", "greeting", "history"]
        .into_iter()
        .map(|name| b.entity(name, ttl))
        .collect()
});

pub(crate) static LEAD: LazyLock<Entity> = LazyLock::new(|| ALL[0]);
pub(crate) static ORG: LazyLock<Entity> = LazyLock::new(|| ALL[1]);
pub(crate) static SUMMARY: LazyLock<Entity> = LazyLock::new(|| ALL[3]);
pub(crate) static GREETING: LazyLock<Entity> = LazyLock::new(|| ALL[4]);
pub(crate) static HISTORY: LazyLock<Entity> = LazyLock::new(|| ALL[5]);
