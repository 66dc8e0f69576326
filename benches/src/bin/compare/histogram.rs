//! Latency histogram of fixed size, so the harness's memory does not grow with throughput.
//!
//! The webhook load generator keeps every duration and sorts them; here each mode's RSS is
//! part of the report, and a vector of durations would grow with the mode's speed (the
//! fastest mode would look the fattest). Log-linear buckets — 128 per power of two — keep
//! every percentile within 0.8 % of the exact nearest-rank value, in 32 KiB per histogram.

/// Sub-buckets per power of two, as a power of two: 2^7 = 128, a relative error < 1/128.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Longest duration told apart (2^36 ns, about 69 s); anything longer counts as this.
const MAX_TRACKED_NANOS: u64 = (1 << 36) - 1;
const BUCKETS: usize = bucket(MAX_TRACKED_NANOS) + 1;

/// Durations in nanoseconds, counted in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

/// The bucket of `nanos`: values below 128 have one each; above, each power of two is
/// split into 128 equal buckets.
const fn bucket(nanos: u64) -> usize {
    if nanos < SUB {
        return nanos as usize;
    }
    let shift = 63 - nanos.leading_zeros() - SUB_BITS;
    ((shift as u64 + 1) * SUB + ((nanos >> shift) - SUB)) as usize
}

/// The largest value in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let sub = index % SUB + SUB;
    ((sub + 1) << shift) - 1
}

impl Histogram {
    /// Counts one duration.
    pub fn record(&mut self, nanos: u64) {
        self.counts[bucket(nanos.min(MAX_TRACKED_NANOS))] += 1;
        self.total += 1;
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The nearest-rank `q` quantile (0 < q ≤ 1), as the upper bound of its bucket, in
    /// nanoseconds; 0 when nothing was counted.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound(index);
            }
        }
        MAX_TRACKED_NANOS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lies_in_its_bucket_within_the_relative_error() {
        let mut previous_upper = None;
        for index in 0..BUCKETS {
            let upper = upper_bound(index);
            assert_eq!(bucket(upper), index);
            if let Some(previous) = previous_upper {
                assert_eq!(bucket(previous + 1), index, "no gap before bucket {index}");
                let width = upper - previous;
                assert!(width as f64 <= (upper as f64 / SUB as f64).max(1.0));
            }
            previous_upper = Some(upper);
        }
        assert_eq!(upper_bound(BUCKETS - 1), MAX_TRACKED_NANOS);
    }

    #[test]
    fn percentiles_are_nearest_rank_within_a_bucket() {
        let mut h = Histogram::default();
        for nanos in 1..=1_000u64 {
            h.record(nanos * 1_000);
        }
        let close = |got: u64, want: u64| (got as f64 / want as f64 - 1.0).abs() < 0.008;
        assert!(close(h.percentile(0.5), 500_000), "{}", h.percentile(0.5));
        assert!(close(h.percentile(0.99), 990_000));
        assert!(close(h.percentile(0.999), 999_000));
        assert!(h.percentile(0.5) >= 500_000, "an upper bound, never below");
        let mut other = Histogram::default();
        other.record(u64::MAX);
        h.merge(&other);
        assert_eq!(h.count(), 1_001);
        assert_eq!(h.percentile(1.0), MAX_TRACKED_NANOS);
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }
}
