//! Which keys of a tag L1 may hold when only an index can find them (their other parts are
//! not words: a history page's limit and offset), so invalidation finds them without a scan.
//!
//! A key is recorded here when its load starts (before anything is read), and the tag's
//! invalidation takes the whole list. Entries idle out after the longest time such a key
//! could still live in L1, so the index holds only tags read recently, and never forgets a
//! key L1 still has.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::schema::{CacheKey, Tag};

/// Keys one tag value may have cached at once in L1 through its index; further keys are
/// served uncached.
pub const MAX_INDEXED_PER_TAG: usize = 32;

type Keys = Arc<Mutex<Vec<CacheKey>>>;

/// Tag → the indexed keys L1 may hold for it.
pub(crate) struct TagIndex {
    // Entries are drained, never removed, by invalidation: an `add` holding the list keeps
    // writing to the list the map still points at.
    tags: moka::sync::Cache<Tag, Keys>,
}

impl TagIndex {
    /// An index whose entries outlive, by `idle`, the last key recorded for the tag.
    pub fn new(idle: Duration) -> Self {
        TagIndex {
            tags: moka::sync::Cache::builder().time_to_idle(idle).build(),
        }
    }

    /// Records that `key` of `tag` may be cached; false when the tag has too many.
    pub fn add(&self, tag: Tag, key: CacheKey) -> bool {
        let keys = self.tags.get_with(tag, Keys::default);
        let mut keys = keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.contains(&key) {
            return true;
        }
        if keys.len() >= MAX_INDEXED_PER_TAG {
            return false;
        }
        keys.push(key);
        true
    }

    /// Takes every key recorded for `tag`.
    pub fn take(&self, tag: &Tag) -> Vec<CacheKey> {
        match self.tags.get(tag) {
            Some(keys) => std::mem::take(&mut *keys.lock().unwrap_or_else(PoisonError::into_inner)),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_schema::keys;

    #[test]
    fn keys_are_recorded_once_and_taken_together() {
        let k = keys();
        let index = TagIndex::new(Duration::from_secs(60));
        let (one, two) = (k.owner.of(1), k.owner.of(2));
        assert!(index.add(one, k.page.key((1, 0))));
        assert!(index.add(one, k.page.key((1, 20))));
        assert!(index.add(one, k.page.key((1, 0))));
        assert!(index.add(two, k.page.key((2, 0))));
        assert_eq!(index.take(&one), [k.page.key((1, 0)), k.page.key((1, 20))]);
        assert!(index.take(&one).is_empty());
        assert_eq!(index.take(&two), [k.page.key((2, 0))]);
        assert!(index.take(&k.owner.of(3)).is_empty());
    }

    #[test]
    fn a_tag_has_a_bounded_number_of_indexed_keys() {
        let k = keys();
        let index = TagIndex::new(Duration::from_secs(60));
        let tag = k.owner.of(1);
        for offset in 0..MAX_INDEXED_PER_TAG as u32 {
            assert!(index.add(tag, k.page.key((1, offset))));
        }
        assert!(!index.add(tag, k.page.key((1, 999))));
        // Keys already recorded are still accepted.
        assert!(index.add(tag, k.page.key((1, 0))));
        index.take(&tag);
        assert!(index.add(tag, k.page.key((1, 999))));
    }
}
