//! Write-through of a written row: after a write's invalidation, the row the write returned
//! goes into this instance's L1, so the next read of it here is a hit instead of a load.
//!
//! The row was read before the invalidation ran, so it must not land over a newer write's
//! invalidation. Every L1 removal by an invalidation (`Engine::drop_from_l1`: a local write,
//! the bus, the database feed) counts on the removed key's stripe (`Engine::dropped`), and
//! a flush moves the global epoch. A [`WriteTicket`], taken before the write, notes both for
//! the key that names the row. After the write's own invalidation the row is installed only
//! if they moved by exactly that invalidation's own removals: any other invalidation of the
//! row since the ticket (or of a key on the same stripe, or a flush) skips the install, and
//! the next read loads as before. The install holds its key in `installing` around that
//! check and its insert, as a batched install does (see `epoch.rs`), so an invalidation
//! that comes after the check finds it and removes it under the key's lock.
//!
//! Only L1: Redis keeps the deletion, and other instances load the row on their next miss.
//!
//! The writer waits for L1 alone: once the row is installed (or kept out) this instance
//! serves nothing older, and Redis's part of the invalidation goes on behind it in the same
//! task. Until Redis has answered, the keys are in flight (`pending.rs`), so no read here
//! takes their values from Redis (it loads and replaces them), and the other instances hear
//! of the write when they would have anyway: the script leaves as early as before, only the
//! caller no longer waits for it.

use serde::Serialize;

use super::Engine;
use crate::clock::unix_millis;
use crate::envelope;
use crate::l1::L1Entry;
use crate::schema::CacheKey;

/// Taken before a write to the row a key caches: how often invalidations had removed that
/// key (its stripe) and flushed L1, for
/// [`invalidate_and_cache`](crate::TwoTierCache::invalidate_and_cache) to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTicket {
    /// When it was taken (Unix ms): the row the write returns left the database after it.
    at_ms: u64,
    global: u64,
    stripe: usize,
    seen: u64,
}

/// A written row on its way into L1, behind its write's invalidation.
pub(crate) struct Written {
    ticket: WriteTicket,
    keys: Vec<CacheKey>,
    entry: L1Entry,
}

impl Engine {
    /// See [`TwoTierCache::write_ticket`](crate::TwoTierCache::write_ticket).
    pub(crate) fn write_ticket(&self, key: &CacheKey) -> WriteTicket {
        let stripe = self.dropped.of(key);
        WriteTicket {
            at_ms: unix_millis(),
            global: self.epochs.global(),
            stripe,
            seen: self.dropped.get(stripe),
        }
    }

    /// `row`, ready to go into L1 under `keys` after its write's invalidation; `None` when
    /// it would not be kept (L1 off, no key, a row that does not encode).
    pub(crate) fn written<T>(
        &self,
        ticket: WriteTicket,
        row: T,
        keys: &[CacheKey],
    ) -> Option<Written>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let first = keys.first()?;
        // No later than the row left the database, as a loaded value's time is.
        let loaded_at_ms = ticket.at_ms;
        let encoded_len = envelope::encode(Some(&row), loaded_at_ms).ok()?.len();
        let life = self.l1_life_for(first.entity(), false);
        (self.has_l1() && !life.0.is_zero()).then(|| Written {
            ticket,
            keys: keys.to_vec(),
            entry: L1Entry::new(
                Some(std::sync::Arc::new(row)),
                encoded_len,
                life,
                loaded_at_ms,
            ),
        })
    }

    /// Installs `written` after its write's invalidation, which removed `own` from L1 and
    /// moved the global epoch `own_global` times.
    pub(crate) async fn cache_written(&self, written: Written, own: &[CacheKey], own_global: u64) {
        let Written {
            ticket,
            keys,
            entry,
        } = written;
        let own_removals = own
            .iter()
            .filter(|key| self.dropped.of(*key) == ticket.stripe)
            .count() as u64;
        let unmoved = || {
            self.epochs.global() == ticket.global + own_global
                && self.dropped.get(ticket.stripe) == ticket.seen + own_removals
        };
        for key in keys {
            self.install_unless_moved(key, entry.clone(), unmoved).await;
        }
    }
}
