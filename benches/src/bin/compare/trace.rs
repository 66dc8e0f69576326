//! The operations every mode replays: reads of a lead by (phone, org) with Zipf popularity
//! and 5 % updates, drawn once from a fixed seed; and the best hit ratio they allow.

use std::ops::Range;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, Zipf};

/// The seed: every run, round and mode replays the same operations.
pub const SEED: u64 = 42;
/// The Zipf exponent: the k-th most popular lead is read about 1/k as often as the first.
pub const ZIPF_EXPONENT: f64 = 1.0;
/// The share of operations that update a lead.
pub const WRITE_SHARE: f64 = 0.05;
/// Operations in the trace; longer runs replay it from the start. 2^20 operations (8 MiB)
/// outlast any measured window on this machine's kind at the default settings, and the
/// same length in every mode keeps the harness's memory the same in each.
pub const TRACE_LEN: usize = 1 << 20;

/// One operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// The lead (0-based demo index: id `lead + 1`, organization `lead % 100 + 1`).
    pub lead: u32,
    /// An update (write, then the mode's invalidation) rather than a read.
    pub write: bool,
}

/// The operation sequence.
pub struct Trace {
    ops: Vec<Op>,
}

impl Trace {
    /// The sequence over `leads` leads, from [`SEED`].
    pub fn generate(leads: u32) -> anyhow::Result<Trace> {
        let zipf = Zipf::new(f64::from(leads), ZIPF_EXPONENT).context("building the Zipf")?;
        let mut rng = StdRng::seed_from_u64(SEED);
        let ops = (0..TRACE_LEN)
            .map(|_| {
                // Zipf draws ranks 1..=n as floats holding whole numbers; rank k is lead k - 1.
                let lead = (zipf.sample(&mut rng) as u32).clamp(1, leads) - 1;
                let write = rng.random_bool(WRITE_SHARE);
                Op { lead, write }
            })
            .collect();
        Ok(Trace { ops })
    }

    /// The operation at position `index` of the endless replay.
    pub fn op(&self, index: u64) -> Op {
        self.ops[(index % self.ops.len() as u64) as usize]
    }

    /// The best hit ratio a cache could reach over the operations at `measured` positions,
    /// the replay before them included as history.
    ///
    /// Replaying the positions in order, a read is a forced miss only when its lead was
    /// never read before, or was written since its last read (a write invalidates; the
    /// next read must reach the database). Every other read could be a hit: an unbounded
    /// cache with no TTL and exact invalidation gets exactly this ratio. The positions are
    /// taken in order although workers run them concurrently; at 4 in flight the
    /// difference is a few operations.
    pub fn best_hit_ratio(&self, leads: u32, measured: Range<u64>) -> Option<f64> {
        #[derive(Clone, Copy, Default)]
        struct State {
            read: bool,
            written_since_read: bool,
        }
        let mut state = vec![State::default(); leads as usize];
        let (mut reads, mut forced) = (0u64, 0u64);
        for index in 0..measured.end {
            let op = self.op(index);
            let lead = &mut state[op.lead as usize];
            if op.write {
                lead.written_since_read = true;
                continue;
            }
            if index >= measured.start {
                reads += 1;
                if !lead.read || lead.written_since_read {
                    forced += 1;
                }
            }
            *lead = State {
                read: true,
                written_since_read: false,
            };
        }
        (reads > 0).then(|| 1.0 - forced as f64 / reads as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_is_the_same_every_time_and_has_its_share_of_writes() {
        let (a, b) = (
            Trace::generate(1_000).unwrap(),
            Trace::generate(1_000).unwrap(),
        );
        assert!(a.ops == b.ops);
        let writes = a.ops.iter().filter(|op| op.write).count() as f64;
        assert!((writes / TRACE_LEN as f64 - WRITE_SHARE).abs() < 0.002);
        assert!(a.ops.iter().all(|op| op.lead < 1_000));
        // Zipf(1): the most popular lead is the first.
        let first = a.ops.iter().filter(|op| op.lead == 0).count();
        let tenth = a.ops.iter().filter(|op| op.lead == 9).count();
        assert!(first > 5 * tenth, "{first} vs {tenth}");
    }

    #[test]
    fn best_hit_ratio_counts_first_reads_and_reads_after_writes() {
        let read = |lead| Op { lead, write: false };
        let write = |lead| Op { lead, write: true };
        let trace = Trace {
            ops: vec![read(0), read(0), write(0), read(0), read(1), read(1)],
        };
        // Positions 1..6: read 0 (hit), write, read 0 (forced), read 1 (forced), read 1 (hit).
        assert_eq!(trace.best_hit_ratio(2, 1..6), Some(0.5));
        // The whole trace: 5 reads, 3 forced.
        assert_eq!(trace.best_hit_ratio(2, 0..6), Some(0.4));
        // Past the end the trace replays: positions 6..12 are all hits but the read after
        // the write.
        assert_eq!(trace.best_hit_ratio(2, 6..12), Some(0.8));
        assert_eq!(trace.best_hit_ratio(2, 2..3), None);
    }
}
