//! Which history pages of a lead L1 may hold, so invalidation finds them without a scan.
//!
//! History keys carry (limit, offset), which invalidation cannot guess. A page is recorded
//! here when its load starts (before anything is read), and a lead's invalidation takes
//! the whole list. Entries idle out after the longest time a page could still live in L1,
//! so the index holds only leads read recently, and never forgets a page L1 still has.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Pages a lead may have cached at once in L1; further pages are served uncached.
pub const MAX_PAGES_PER_LEAD: usize = 32;

type Pages = Arc<Mutex<Vec<(u32, u32)>>>;

/// Lead id → the (limit, offset) pages L1 may hold for it.
pub(crate) struct HistoryIndex {
    // Entries are drained, never removed, by invalidation: an `add` holding the list keeps
    // writing to the list the map still points at.
    leads: moka::sync::Cache<i64, Pages>,
}

impl HistoryIndex {
    /// An index whose entries outlive, by `idle`, the last page recorded for the lead.
    pub fn new(idle: Duration) -> Self {
        HistoryIndex {
            leads: moka::sync::Cache::builder().time_to_idle(idle).build(),
        }
    }

    /// Records that a page of `lead_id` may be cached; false when the lead has too many.
    pub fn add(&self, lead_id: i64, limit: u32, offset: u32) -> bool {
        let pages = self.leads.get_with(lead_id, Pages::default);
        let mut pages = pages.lock().unwrap_or_else(PoisonError::into_inner);
        if pages.contains(&(limit, offset)) {
            return true;
        }
        if pages.len() >= MAX_PAGES_PER_LEAD {
            return false;
        }
        pages.push((limit, offset));
        true
    }

    /// Takes every page recorded for `lead_id`.
    pub fn take(&self, lead_id: i64) -> Vec<(u32, u32)> {
        match self.leads.get(&lead_id) {
            Some(pages) => {
                std::mem::take(&mut *pages.lock().unwrap_or_else(PoisonError::into_inner))
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_recorded_once_and_taken_together() {
        let index = HistoryIndex::new(Duration::from_secs(60));
        assert!(index.add(1, 20, 0));
        assert!(index.add(1, 20, 20));
        assert!(index.add(1, 20, 0));
        assert!(index.add(2, 10, 0));
        assert_eq!(index.take(1), [(20, 0), (20, 20)]);
        assert!(index.take(1).is_empty());
        assert_eq!(index.take(2), [(10, 0)]);
        assert!(index.take(3).is_empty());
    }

    #[test]
    fn a_lead_has_a_bounded_number_of_pages() {
        let index = HistoryIndex::new(Duration::from_secs(60));
        for offset in 0..MAX_PAGES_PER_LEAD as u32 {
            assert!(index.add(1, 10, offset));
        }
        assert!(!index.add(1, 10, 999));
        // Pages already recorded are still accepted.
        assert!(index.add(1, 10, 0));
        index.take(1);
        assert!(index.add(1, 10, 999));
    }
}
