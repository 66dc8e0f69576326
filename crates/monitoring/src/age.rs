//! The served-value age histogram, kept lighter than the prometheus crate's own.
//!
//! It is updated on every L1 hit, the hottest path there is (about 0.3 µs in all). A
//! `prometheus::Histogram` observation costs four atomic operations, two of them ordered
//! and one a compare-and-swap loop on an `f64`; this one costs two relaxed increments (the
//! bucket and the sum in microseconds), which keeps metrics under 10 % of an L1 hit (see
//! `benches/benches/cache.rs`, group `observability`). At scrape time it is exported as an
//! ordinary Prometheus histogram; the count is the buckets' sum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto;
use tiercache::{Entity, Tier};

use crate::metrics::AGE_BUCKETS;

const BUCKETS: usize = AGE_BUCKETS.len();

/// The bucket bounds in milliseconds, compared without floating point on the hot path.
const BOUNDS_MS: [u64; BUCKETS] = {
    let mut out = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        out[i] = (AGE_BUCKETS[i] * 1000.0) as u64;
        i += 1;
    }
    out
};

struct Cell {
    /// One per bound, plus +Inf.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_micros: AtomicU64,
}

/// `tiercache_served_value_age_seconds{entity, tier}`.
pub struct AgeHistograms {
    desc: Desc,
    entities: Vec<Entity>,
    cells: Vec<Cell>,
}

impl AgeHistograms {
    /// Name of the exported histogram.
    pub const NAME: &'static str = "tiercache_served_value_age_seconds";

    /// One histogram per (entity, tier), all zero.
    pub fn new(entities: &[Entity]) -> Result<Self, prometheus::Error> {
        let desc = Desc::new(
            Self::NAME.to_owned(),
            "How long before being served a cached value was read from PostgreSQL.".to_owned(),
            vec!["entity".to_owned(), "tier".to_owned()],
            Default::default(),
        )?;
        let cells = (0..entities.len() * Tier::ALL.len())
            .map(|_| Cell {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_micros: AtomicU64::new(0),
            })
            .collect();
        Ok(AgeHistograms {
            desc,
            entities: entities.to_vec(),
            cells,
        })
    }

    /// Records one value served from `tier`, `age` after it was loaded.
    pub fn observe(&self, entity: Entity, tier: Tier, age: Duration) {
        // An entity these histograms were not built for is not counted.
        let Some(cell) = self
            .cells
            .get(entity.index() * Tier::ALL.len() + tier as usize)
        else {
            return;
        };
        let ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS);
        cell.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        cell.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far for (entity, tier).
    #[cfg(test)]
    pub fn count(&self, entity: Entity, tier: Tier) -> u64 {
        self.cells[entity.index() * Tier::ALL.len() + tier as usize]
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl Collector for AgeHistograms {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut metrics = Vec::with_capacity(self.cells.len());
        for entity in &self.entities {
            for tier in Tier::ALL {
                let cell = &self.cells[entity.index() * Tier::ALL.len() + tier as usize];
                let mut histogram = proto::Histogram::default();
                let mut cumulative = 0u64;
                let mut buckets = Vec::with_capacity(BUCKETS);
                for (i, bound) in AGE_BUCKETS.iter().enumerate() {
                    cumulative += cell.buckets[i].load(Ordering::Relaxed);
                    let mut bucket = proto::Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(cumulative);
                    buckets.push(bucket);
                }
                cumulative += cell.buckets[BUCKETS].load(Ordering::Relaxed);
                histogram.set_bucket(buckets);
                histogram.set_sample_count(cumulative);
                histogram.set_sample_sum(cell.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
                let mut metric = proto::Metric::default();
                metric.set_label(vec![
                    label("entity", entity.as_str()),
                    label("tier", tier.as_str()),
                ]);
                metric.set_histogram(histogram);
                metrics.push(metric);
            }
        }
        let mut family = proto::MetricFamily::default();
        family.set_name(Self::NAME.to_owned());
        family.set_help(self.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_entities;

    #[test]
    fn ages_land_in_their_buckets_and_export_cumulatively() {
        let h = AgeHistograms::new(&test_entities::ALL).unwrap();
        h.observe(*test_entities::LEAD, Tier::L1, Duration::from_millis(50)); // ≤ 0.1 s
        h.observe(*test_entities::LEAD, Tier::L1, Duration::from_millis(100)); // ≤ 0.1 s (inclusive)
        h.observe(*test_entities::LEAD, Tier::L1, Duration::from_secs(45)); // ≤ 60 s
        h.observe(*test_entities::LEAD, Tier::L1, Duration::from_secs(7200)); // +Inf
        h.observe(*test_entities::ORG, Tier::L2, Duration::from_secs(2));
        assert_eq!(h.count(*test_entities::LEAD, Tier::L1), 4);
        assert_eq!(h.count(*test_entities::ORG, Tier::L2), 1);
        let family = &h.collect()[0];
        let lead = family
            .get_metric()
            .iter()
            .find(|m| m.get_label()[0].value() == "lead" && m.get_label()[1].value() == "l1")
            .unwrap();
        let hist = lead.get_histogram();
        assert_eq!(hist.get_sample_count(), 4);
        let cumulative: Vec<u64> = hist
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cumulative[0], 2, "0.1 s");
        assert_eq!(cumulative[6], 3, "60 s");
        assert_eq!(
            *cumulative.last().unwrap(),
            3,
            "3600 s: the 2 h one is only in +Inf"
        );
        assert!((hist.get_sample_sum() - 7245.15).abs() < 1e-6);
    }
}
