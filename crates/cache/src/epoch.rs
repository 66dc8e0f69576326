//! Invalidation epochs: how a read that did not hold a key's lock while it read (a batched
//! read, see `batch.rs`) tells whether an invalidation may have passed it by.
//!
//! Each invalidation bumps the epoch of the groups it names (the values a batched read
//! starts from) before it removes any key from L1 (`Engine::drop_from_l1`). A batched read
//! notes the epochs of its groups before it reads anything, and installs a value only if, under that key's lock, the epoch has not moved; it holds the key in
//! `installing` from before that check to after the insert. Either the install comes first
//! (the invalidation then finds the key in L1 or held, and removes it under its lock), or
//! the epoch has moved (and nothing stale is installed). Epochs are striped: another group
//! on the same stripe only costs an install that is skipped, never a wrong answer.
//! Invalidations that name no group (one exact key) bump a global epoch that every batched
//! read checks too.

use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::schema::Group;
use crate::stripes::Stripes;

/// Striped epoch counters, one per group, and one global.
pub(crate) struct Epochs {
    stripes: Stripes,
    global: AtomicU64,
}

/// The epochs a batched read saw before it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    global: u64,
    // Inline: a batched read's snapshot allocates nothing.
    stripes: SmallVec<[(usize, u64); 4]>,
}

impl Epochs {
    pub fn new() -> Self {
        Epochs {
            stripes: Stripes::new(),
            global: AtomicU64::new(0),
        }
    }

    /// Marks `group` invalidated (or everything, for `None`).
    pub fn bump(&self, group: Option<&Group>) {
        match group {
            Some(group) => {
                self.stripes.add(self.stripes.of(group));
            }
            None => {
                self.global.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// The global epoch: it moves when everything is invalidated (or L1 flushed).
    pub fn global(&self) -> u64 {
        self.global.load(Ordering::Acquire)
    }

    /// The epochs of `groups` (and the global one), before a read.
    pub fn snapshot(&self, groups: &[Group]) -> Snapshot {
        Snapshot {
            global: self.global.load(Ordering::Acquire),
            stripes: groups
                .iter()
                .map(|group| {
                    let i = self.stripes.of(group);
                    (i, self.stripes.get(i))
                })
                .collect(),
        }
    }

    /// Whether nothing `snapshot` covers was invalidated since it was taken.
    pub fn unchanged(&self, snapshot: &Snapshot) -> bool {
        self.global.load(Ordering::Acquire) == snapshot.global
            && snapshot
                .stripes
                .iter()
                .all(|(i, seen)| self.stripes.get(*i) == *seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::KeySchema;

    #[test]
    fn a_bump_of_either_group_or_the_global_epoch_is_seen() {
        let keys =
            KeySchema::new("tc", "t", 1, b"0123456789abcdef", crate::Schema::empty()).unwrap();
        let (one, two) = (keys.group("one"), keys.group("two"));
        let epochs = Epochs::new();
        let before = epochs.snapshot(&[one, two]);
        assert!(epochs.unchanged(&before));
        epochs.bump(Some(&two));
        assert!(!epochs.unchanged(&before));
        let again = epochs.snapshot(&[one, two]);
        epochs.bump(Some(&one));
        assert!(!epochs.unchanged(&again));
        let third = epochs.snapshot(&[one, two]);
        epochs.bump(None);
        assert!(!epochs.unchanged(&third));
    }
}
