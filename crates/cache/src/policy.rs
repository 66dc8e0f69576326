//! Per-entity TTL policies: how long each tier keeps a value or a "not found", with jitter.

use std::time::Duration;

use rand::Rng;

use crate::observer::Entity;

/// How long one entity's values live in each tier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EntityPolicy {
    /// Time to live in Redis.
    pub l2_ttl: Duration,
    /// Time to live in the in-process cache; bounds staleness on an instance that misses an
    /// invalidation, so it is kept shorter than `l2_ttl`.
    pub l1_ttl: Duration,
    /// Time to live of a cached "not found", in both tiers (capped by `l1_ttl` in L1).
    pub negative_ttl: Duration,
    /// Each TTL is scaled by a random factor in `1 ± jitter`, so keys loaded together do
    /// not expire together. In `0.0..=0.5`.
    pub jitter: f64,
    /// How long past its L1 TTL a value is kept to be served stale when the loader fails
    /// or passes the soft timeout (counted, and flagged through [`crate::stale::track`]).
    pub grace: Duration,
}

impl EntityPolicy {
    /// Default L1 TTL for every entity.
    pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(60);
    /// Default negative TTL for every entity.
    pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
    /// Default jitter for every entity.
    pub const DEFAULT_JITTER: f64 = 0.1;
    /// Default stale grace window for every entity.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

    /// The seed policy for `entity`: L2 TTLs from the design (lead 900 s, org 1800 s,
    /// context 600 s, summary 1200 s, greeting 300 s, history 600 s).
    pub fn seed(entity: Entity) -> Self {
        let l2_secs = match entity {
            Entity::Lead => 900,
            Entity::Org => 1800,
            Entity::Context => 600,
            Entity::Summary => 1200,
            Entity::Greeting => 300,
            Entity::History => 600,
        };
        EntityPolicy {
            l2_ttl: Duration::from_secs(l2_secs),
            l1_ttl: Self::DEFAULT_L1_TTL,
            negative_ttl: Self::DEFAULT_NEGATIVE_TTL,
            jitter: Self::DEFAULT_JITTER,
            grace: Self::DEFAULT_GRACE,
        }
    }

    /// The TTL of a value in `tier`, before jitter.
    pub fn base_ttl(&self, l1: bool, negative: bool) -> Duration {
        match (l1, negative) {
            (true, false) => self.l1_ttl,
            (true, true) => self.negative_ttl.min(self.l1_ttl),
            (false, false) => self.l2_ttl,
            (false, true) => self.negative_ttl,
        }
    }

    /// The TTL of a value in `tier`, with jitter applied.
    pub fn ttl(&self, l1: bool, negative: bool) -> Duration {
        apply_jitter(self.base_ttl(l1, negative), self.jitter, &mut rand::rng())
    }

    /// The longest TTL jitter can give `base`.
    pub fn max_ttl(&self, base: Duration) -> Duration {
        base.mul_f64(1.0 + self.jitter)
    }

    /// The problems with this policy, if any, each as (field, message).
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.l2_ttl.is_zero() {
            out.push(("l2_ttl", "must be greater than zero".to_owned()));
        }
        if self.l1_ttl.is_zero() {
            out.push(("l1_ttl", "must be greater than zero".to_owned()));
        }
        if self.l1_ttl > self.l2_ttl {
            out.push((
                "l1_ttl",
                format!(
                    "must not exceed l2_ttl ({:?} > {:?})",
                    self.l1_ttl, self.l2_ttl
                ),
            ));
        }
        if self.negative_ttl.is_zero() {
            out.push(("negative_ttl", "must be greater than zero".to_owned()));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            out.push((
                "jitter",
                format!("must be between 0.0 and 0.5, got {}", self.jitter),
            ));
        }
        out
    }
}

/// Scales `ttl` by a random factor in `1 ± jitter`, never below one millisecond.
pub(crate) fn apply_jitter(ttl: Duration, jitter: f64, rng: &mut impl Rng) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let factor = rng.random_range(1.0 - jitter..=1.0 + jitter);
    ttl.mul_f64(factor).max(Duration::from_millis(1))
}

/// One policy per entity.
#[derive(Clone, PartialEq)]
pub struct Policies([EntityPolicy; 6]);

impl std::fmt::Debug for Policies {
    /// A map by entity name, so the start-up log says whose policy each one is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(Entity::ALL.iter().map(|e| (e.as_str(), self.get(*e))))
            .finish()
    }
}

impl Policies {
    /// The policy for `entity`.
    pub fn get(&self, entity: Entity) -> &EntityPolicy {
        &self.0[entity.index()]
    }

    /// Replaces the policy for `entity`.
    pub fn set(&mut self, entity: Entity, policy: EntityPolicy) {
        self.0[entity.index()] = policy;
    }
}

impl Default for Policies {
    fn default() -> Self {
        Policies(Entity::ALL.map(EntityPolicy::seed))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn debug_names_each_entity() {
        let text = format!("{:?}", Policies::default());
        for e in Entity::ALL {
            assert!(
                text.contains(&format!("\"{e}\": EntityPolicy {{")),
                "{e}: {text}"
            );
        }
    }

    #[test]
    fn seed_ttls_follow_the_design() {
        let p = Policies::default();
        let secs: Vec<u64> = Entity::ALL
            .iter()
            .map(|e| p.get(*e).l2_ttl.as_secs())
            .collect();
        assert_eq!(secs, [900, 1800, 600, 1200, 300, 600]);
        for e in Entity::ALL {
            assert!(
                p.get(e).l1_ttl < p.get(e).l2_ttl,
                "{e}: L1 TTL must be shorter"
            );
            assert!(p.get(e).problems().is_empty());
        }
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut rng = StdRng::seed_from_u64(7);
        let base = Duration::from_secs(100);
        let ttls: Vec<Duration> = (0..1000)
            .map(|_| apply_jitter(base, 0.1, &mut rng))
            .collect();
        assert!(ttls.iter().all(|t| *t >= Duration::from_secs(90)));
        assert!(ttls.iter().all(|t| *t <= Duration::from_secs(110)));
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(distinct.len() > 900, "jitter should spread expiries");
        assert_eq!(apply_jitter(base, 0.0, &mut rng), base);
    }

    #[test]
    fn negative_ttl_is_capped_by_l1_ttl_in_l1() {
        let p = EntityPolicy {
            l2_ttl: Duration::from_secs(100),
            l1_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(30),
            jitter: 0.0,
            grace: Duration::ZERO,
        };
        assert_eq!(p.base_ttl(true, true), Duration::from_secs(5));
        assert_eq!(p.base_ttl(false, true), Duration::from_secs(30));
        assert_eq!(p.ttl(false, false), Duration::from_secs(100));
    }

    #[test]
    fn bad_policies_are_reported_by_field() {
        let p = EntityPolicy {
            l2_ttl: Duration::from_secs(10),
            l1_ttl: Duration::from_secs(20),
            negative_ttl: Duration::ZERO,
            jitter: 0.9,
            grace: Duration::ZERO,
        };
        let fields: Vec<_> = p.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["l1_ttl", "negative_ttl", "jitter"]);
    }
}
