//! Per-entity TTL policies: how long each tier keeps a value or a "not found", with jitter.

use std::time::Duration;

use rand::Rng;

use crate::schema::{Entity, Schema};

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

    /// A policy keeping values `l2_ttl` in Redis, with the defaults for everything else.
    pub fn with_l2_ttl(l2_ttl: Duration) -> Self {
        EntityPolicy {
            l2_ttl,
            l1_ttl: Self::DEFAULT_L1_TTL.min(l2_ttl),
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

/// One policy per declared entity, indexed by [`Entity::index`].
#[derive(Clone, PartialEq)]
pub struct Policies {
    by_entity: Vec<(Entity, EntityPolicy)>,
}

impl std::fmt::Debug for Policies {
    /// A map by entity name, so the start-up log says whose policy each one is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.by_entity.iter().map(|(e, p)| (e.as_str(), p)))
            .finish()
    }
}

/// The policy of an entity no schema declared: what a key of another schema is kept by.
const UNDECLARED: EntityPolicy = EntityPolicy {
    l2_ttl: Duration::from_secs(60),
    l1_ttl: Duration::from_secs(60),
    negative_ttl: EntityPolicy::DEFAULT_NEGATIVE_TTL,
    jitter: EntityPolicy::DEFAULT_JITTER,
    grace: Duration::ZERO,
};

impl Policies {
    /// The policies `schema` declares.
    pub fn declared(schema: &Schema) -> Self {
        Policies {
            by_entity: schema
                .entities()
                .map(|e| (e, schema.policy(e).copied().unwrap_or(UNDECLARED)))
                .collect(),
        }
    }

    /// The policy for `entity`.
    pub fn get(&self, entity: Entity) -> &EntityPolicy {
        self.by_entity
            .get(entity.index())
            .filter(|(e, _)| *e == entity)
            .map_or(&UNDECLARED, |(_, p)| p)
    }

    /// Replaces the policy for `entity`; `false` when the schema does not declare it.
    pub fn set(&mut self, entity: Entity, policy: EntityPolicy) -> bool {
        match self.by_entity.get_mut(entity.index()) {
            Some((e, slot)) if *e == entity => {
                *slot = policy;
                true
            }
            _ => false,
        }
    }

    /// Every entity with its policy, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (Entity, &EntityPolicy)> {
        self.by_entity.iter().map(|(e, p)| (*e, p))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn declared_policies_are_kept_by_entity_and_named_in_debug() {
        let mut builder = Schema::builder();
        let a = builder.entity("alpha", EntityPolicy::with_l2_ttl(Duration::from_secs(900)));
        let b = builder.entity("beta", EntityPolicy::with_l2_ttl(Duration::from_secs(30)));
        let schema = builder.build().unwrap();
        let mut policies = Policies::declared(&schema);
        assert_eq!(policies.get(a).l2_ttl, Duration::from_secs(900));
        assert_eq!(
            policies.get(b).l1_ttl,
            Duration::from_secs(30),
            "capped by l2"
        );
        let text = format!("{policies:?}");
        assert!(text.contains("\"alpha\": EntityPolicy {"), "{text}");
        let other =
            Schema::builder().entity("gamma", EntityPolicy::with_l2_ttl(Duration::from_secs(1)));
        assert!(!policies.set(other, EntityPolicy::with_l2_ttl(Duration::from_secs(5))));
        assert_eq!(*policies.get(other), UNDECLARED);
        assert!(policies.set(b, EntityPolicy::with_l2_ttl(Duration::from_secs(5))));
        assert_eq!(policies.get(b).l2_ttl, Duration::from_secs(5));
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
