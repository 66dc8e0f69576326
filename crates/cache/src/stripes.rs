//! Striped counters: a fixed array of atomics indexed by a value's hash, for "has anything
//! about this value changed, or is it busy" checks that must cost a read path one atomic
//! load. Two values on one stripe share its counter, so a user must only ever err towards
//! the cautious answer on a collision (skip an install, skip an L2 read), never a wrong one.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

/// Stripes per set of counters.
const STRIPES: usize = 4096;

/// [`STRIPES`] counters and the hasher that picks one for a value.
pub(crate) struct Stripes {
    counts: Box<[AtomicU64]>,
    // Random per process, so no input can aim at one stripe.
    hasher: std::hash::RandomState,
}

impl Stripes {
    /// Every counter at zero.
    pub fn new() -> Self {
        Stripes {
            counts: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The stripe of `value`.
    pub fn of(&self, value: &impl Hash) -> usize {
        // The modulo keeps the value below STRIPES, so the cast cannot truncate.
        (self.hasher.hash_one(value) % STRIPES as u64) as usize
    }

    /// Stripe `i`'s count.
    pub fn get(&self, i: usize) -> u64 {
        self.counts[i].load(Ordering::Acquire)
    }

    /// Adds one to stripe `i`.
    pub fn add(&self, i: usize) {
        self.counts[i].fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one from stripe `i` (after an [`add`](Self::add) of its own).
    pub fn sub(&self, i: usize) {
        self.counts[i].fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts `value`'s stripe busy until the guard drops. A full fence follows the count,
    /// so whatever the holder reads next is ordered after it (and a checker that moves
    /// something, fences, then asks [`busy`](Self::busy) either sees the count or is seen).
    pub fn hold(&self, value: &impl Hash) -> Hold<'_> {
        let i = self.of(value);
        self.add(i);
        std::sync::atomic::fence(Ordering::SeqCst);
        Hold { stripes: self, i }
    }

    /// Whether `value`'s stripe is held (by it, or by another value on the stripe).
    pub fn busy(&self, value: &impl Hash) -> bool {
        self.get(self.of(value)) > 0
    }

    /// Whether every stripe is at zero.
    #[cfg(test)]
    pub fn all_zero(&self) -> bool {
        self.counts.iter().all(|c| c.load(Ordering::Acquire) == 0)
    }
}

/// A stripe held busy by [`Stripes::hold`]; released on drop.
pub(crate) struct Hold<'a> {
    stripes: &'a Stripes,
    i: usize,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.stripes.sub(self.i);
    }
}
