//! What one write invalidates: an entity's keys and every key derived from it.

use crate::key::{CacheKey, Channel, KeySchema, PhoneDigest};
use crate::observer::Entity;

/// A set of keys to drop from both tiers, built for one changed entity.
#[derive(Clone, Debug)]
pub struct Invalidation {
    pub(crate) entity: Entity,
    pub(crate) keys: Vec<CacheKey>,
    /// The lead whose history pages (whatever their limit and offset) go too.
    pub(crate) history_of: Option<i64>,
    /// The phone numbers whose epochs this bumps (see `epoch.rs`); none bumps the global one.
    pub(crate) groups: Vec<PhoneDigest>,
}

impl Invalidation {
    /// A lead changed: its phone and id keys, context, summary, greetings and history pages.
    pub fn lead(keys: &KeySchema, lead_id: i64, org_id: i64, phone: &str) -> Self {
        let mut out = Self::lead_activity(keys, lead_id, phone);
        out.entity = Entity::Lead;
        out.keys.push(keys.lead_by_id(lead_id));
        out.keys.push(keys.lead_by_phone(phone, org_id));
        out
    }

    /// A lead's conversation changed (a new message): context, summary, greetings, history.
    /// `phone` is the lead's number (it keys the lead's epoch).
    pub fn lead_activity(keys: &KeySchema, lead_id: i64, phone: &str) -> Self {
        let mut list = Vec::with_capacity(7);
        list.push(keys.context(lead_id));
        list.push(keys.summary(lead_id));
        list.extend(Channel::ALL.map(|c| keys.greeting(lead_id, c)));
        Invalidation {
            entity: Entity::Context,
            keys: list,
            history_of: Some(lead_id),
            groups: vec![keys.phone_digest(phone)],
        }
    }

    /// An organization changed: its phone key, and the views of `lead_ids` (its leads)
    /// that show its name and agent (context and greetings), in one invalidation. Its
    /// phone's epoch moves, so a call to it that read before does not install after.
    pub fn org(keys: &KeySchema, phone: &str, lead_ids: &[i64]) -> Self {
        let mut list = Vec::with_capacity(1 + lead_ids.len() * (1 + Channel::ALL.len()));
        list.push(keys.org_by_phone(phone));
        for &lead in lead_ids {
            list.push(keys.context(lead));
            list.extend(Channel::ALL.map(|c| keys.greeting(lead, c)));
        }
        Invalidation {
            entity: Entity::Org,
            keys: list,
            history_of: None,
            groups: vec![keys.phone_digest(phone)],
        }
    }

    /// Exactly one key.
    pub fn key(key: CacheKey) -> Self {
        Invalidation {
            entity: key.entity(),
            keys: vec![key],
            history_of: None,
            groups: Vec::new(),
        }
    }

    /// The entity this invalidation is counted under.
    pub fn entity(&self) -> Entity {
        self.entity
    }

    /// The fixed keys (history pages are found when it runs).
    pub fn keys(&self) -> &[CacheKey] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lead_takes_all_its_derived_keys_with_it() {
        let s = KeySchema::new("tc", "t", 1, b"0123456789abcdef").unwrap();
        let inv = Invalidation::lead(&s, 5, 9, "+16462000005");
        let rendered: Vec<String> = inv.keys().iter().map(|k| s.render(k)).collect();
        for expected in [
            "tc:t:v1:lead:id:5",
            "tc:t:v1:context:5",
            "tc:t:v1:summary:5",
            "tc:t:v1:greeting:5:voice",
            "tc:t:v1:greeting:5:sms",
            "tc:t:v1:greeting:5:web",
        ] {
            assert!(rendered.iter().any(|r| r == expected), "{expected} missing");
        }
        assert!(inv.keys().contains(&s.lead_by_phone("+16462000005", 9)));
        assert_eq!(inv.history_of, Some(5));
        assert_eq!(inv.keys().len(), 7);

        let activity = Invalidation::lead_activity(&s, 5, "+16462000005");
        assert!(!activity.keys().contains(&s.lead_by_id(5)));
        assert_eq!(activity.history_of, Some(5));
    }
}
