//! Hit rates per entity and tier, since start and over the recent window.

use std::collections::BTreeMap;

use serde::Serialize;
use tiercache::{Entity, Outcome, Tier};

use crate::metrics::Metrics;

/// Lookup counts by (entity, tier, outcome), as read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    entities: Vec<Entity>,
    counts: Vec<u64>,
}

impl Counts {
    /// Reads the counters now.
    pub fn read(metrics: &Metrics) -> Self {
        let entities = metrics.entities().to_vec();
        let mut counts = Vec::with_capacity(entities.len() * Tier::ALL.len() * Outcome::ALL.len());
        for e in &entities {
            for t in Tier::ALL {
                for o in Outcome::ALL {
                    counts.push(metrics.requests(*e, t, o));
                }
            }
        }
        Counts { entities, counts }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            entities: self.entities.clone(),
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    fn get(&self, e: Entity, t: Tier, o: Outcome) -> u64 {
        let i = (e.index() * Tier::ALL.len() + t as usize) * Outcome::ALL.len() + o as usize;
        self.counts.get(i).copied().unwrap_or(0)
    }

    fn tier(&self, entities: &[Entity], t: Tier) -> TierRate {
        let mut rate = TierRate::default();
        for e in entities {
            for o in Outcome::ALL {
                let n = self.get(*e, t, o);
                rate.lookups += n;
                if o != Outcome::Miss {
                    rate.hits += n;
                }
            }
        }
        rate.hit_rate = ratio(rate.hits, rate.lookups);
        rate
    }

    fn rates(&self, entities: &[Entity]) -> Rates {
        let l1 = self.tier(entities, Tier::L1);
        let l2 = self.tier(entities, Tier::L2);
        // Every lookup starts at L1; it is answered from cache by L1 or, after an L1 miss, by L2.
        let served = l1.hits + l2.hits;
        Rates {
            lookups: l1.lookups,
            served_from_cache: served,
            hit_rate: ratio(served, l1.lookups),
            l1,
            l2,
        }
    }

    /// (lookups, answered from a cache tier), over every entity.
    pub fn lookups_and_hits(&self) -> (u64, u64) {
        let r = self.rates(&self.entities);
        (r.lookups, r.served_from_cache)
    }

    /// The statistics these counts make.
    pub fn stats(&self) -> StatsBlock {
        StatsBlock {
            overall: self.rates(&self.entities),
            by_entity: self
                .entities
                .iter()
                .map(|e| (e.as_str(), self.rates(&[*e])))
                .collect(),
        }
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// One tier's lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TierRate {
    /// Lookups that reached this tier.
    pub lookups: u64,
    /// Of those, answered (a value or a cached "not found").
    pub hits: u64,
    /// `hits / lookups`; `null` before any lookup.
    pub hit_rate: Option<f64>,
}

/// Hit rates for a set of entities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Lookups (each starts at L1).
    pub lookups: u64,
    /// Answered by L1 or L2, without a load.
    pub served_from_cache: u64,
    /// `served_from_cache / lookups`.
    pub hit_rate: Option<f64>,
    /// L1 alone.
    pub l1: TierRate,
    /// L2 alone (its lookups are L1's misses).
    pub l2: TierRate,
}

/// Overall and per-entity rates.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatsBlock {
    /// Every entity.
    pub overall: Rates,
    /// Each entity.
    pub by_entity: BTreeMap<&'static str, Rates>,
}

/// `GET /api/monitoring/stats/cache`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Since the process started.
    pub since_start: StatsBlock,
    /// Over the recent window.
    pub recent: StatsBlock,
    /// The recent window's length.
    pub window_seconds: f64,
}
