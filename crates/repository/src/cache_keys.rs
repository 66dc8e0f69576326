//! The voice agent's cache schema: its six entities, the shapes of their keys, the tags
//! that reach a lead's derived views, and the batched read of a call.
//!
//! Phone numbers enter keys only as keyed digests ([`KeySchema::digest`]), and a call's
//! batched read names the two numbers as its groups, which the invalidations of a lead and
//! of an organization name too.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use tiercache::{
    Batch, CacheKey, Digest, Entity, EntityPolicy, Identified, Invalidation, KeyDef, KeySchema,
    KeyWord, Plan, Schema, Slot, Step, TagDef, TwoTierCache, Value,
};

/// The channel a greeting is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A phone call.
    Voice,
    /// A text message.
    Sms,
    /// A web chat.
    Web,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 3] = [Channel::Voice, Channel::Sms, Channel::Web];

    /// The channel's name in keys and in the API.
    pub fn as_str(self) -> &'static str {
        Self::WORDS[self as usize]
    }
}

impl KeyWord for Channel {
    const WORDS: &'static [&'static str] = &["voice", "sms", "web"];

    fn index(self) -> usize {
        self as usize
    }

    fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }
}

/// A channel name that is not one of voice, sms, web.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channel must be one of voice, sms, web")]
pub struct ChannelError;

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(ChannelError)
    }
}

/// The declared schema: entities, key shapes and tags.
pub struct VoiceSchema {
    /// The engine's view of it, for [`tiercache::CacheConfigBuilder::schema`].
    pub schema: Schema,
    /// A lead, by (phone, organization) or by id.
    pub lead: Entity,
    /// An organization, by the number it is reached on.
    pub org: Entity,
    /// A lead's conversation context (the agent's dynamic variables).
    pub context: Entity,
    /// A lead's conversation summary.
    pub summary: Entity,
    /// A greeting for (lead, channel).
    pub greeting: Entity,
    /// A page of a lead's message history.
    pub history: Entity,
    /// `lead:phone:{phone}:{org}`.
    pub lead_by_phone: KeyDef<(Digest, i64)>,
    /// `lead:id:{lead}`.
    pub lead_by_id: KeyDef<i64>,
    /// `org:phone:{phone}`.
    pub org_by_phone: KeyDef<Digest>,
    /// `context:{lead}`.
    pub context_of: KeyDef<i64>,
    /// `summary:{lead}`.
    pub summary_of: KeyDef<i64>,
    /// `greeting:{lead}:{channel}`.
    pub greeting_of: KeyDef<(i64, Channel)>,
    /// `history:{lead}:{limit}:{offset}`.
    pub history_of: KeyDef<(i64, u32, u32)>,
    /// Every view derived from a lead: context, summary, greetings, history pages.
    pub lead_views: TagDef<i64>,
    /// A lead's views that show its organization (name, agent): context and greetings.
    pub org_views: TagDef<i64>,
}

/// The voice agent's schema, declared once per process.
pub fn schema() -> &'static VoiceSchema {
    static SCHEMA: LazyLock<VoiceSchema> = LazyLock::new(declare);
    &SCHEMA
}

/// L2 TTLs from the design (lead 900 s, org 1800 s, context 600 s, summary 1200 s,
/// greeting 300 s, history 600 s); the rest are the engine's defaults.
fn declare() -> VoiceSchema {
    let mut b = Schema::builder();
    let ttl = |secs| EntityPolicy::with_l2_ttl(Duration::from_secs(secs));
    let lead = b.entity("lead", ttl(900));
    let org = b.entity("org", ttl(1800));
    let context = b.entity("context", ttl(600));
    let summary = b.entity("summary", ttl(1200));
    let greeting = b.entity("greeting", ttl(300));
    let history = b.entity("history", ttl(600));
    let lead_by_phone = b.key(lead, "lead:phone:{}:{}");
    let lead_by_id = b.key(lead, "lead:id:{}");
    let org_by_phone = b.key(org, "org:phone:{}");
    let context_of = b.key(context, "context:{}");
    let summary_of = b.key(summary, "summary:{}");
    let greeting_of = b.key(greeting, "greeting:{}:{}");
    let history_of = b.key(history, "history:{}:{}:{}");
    // The call's read follows the organization to the lead, the lead to its views.
    b.followable(org_by_phone);
    b.followable(lead_by_phone);
    let lead_views = b.tag("lead");
    b.tagged(context_of, lead_views);
    b.tagged(summary_of, lead_views);
    b.tagged(greeting_of, lead_views);
    b.tagged(history_of, lead_views);
    let org_views = b.tag("lead_org");
    b.tagged(context_of, org_views);
    b.tagged(greeting_of, org_views);
    let schema = match b.build() {
        Ok(schema) => schema,
        // A fixed declaration: a test builds it, so a mistake never reaches a running service.
        Err(e) => unreachable!("the voice schema is valid: {e}"),
    };
    VoiceSchema {
        schema,
        lead,
        org,
        context,
        summary,
        greeting,
        history,
        lead_by_phone,
        lead_by_id,
        org_by_phone,
        context_of,
        summary_of,
        greeting_of,
        history_of,
        lead_views,
        org_views,
    }
}

/// The voice schema's keys under one cache's namespace and secret.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    ns: &'a KeySchema,
    s: &'static VoiceSchema,
}

/// The keys of `cache` (which must have been built with [`schema`]).
pub fn keys(cache: &TwoTierCache) -> Keys<'_> {
    Keys {
        ns: cache.keys(),
        s: schema(),
    }
}

impl<'a> Keys<'a> {
    /// The keys under `ns`.
    pub fn under(ns: &'a KeySchema) -> Self {
        Keys { ns, s: schema() }
    }

    /// The namespace and secret.
    pub fn namespace(&self) -> &'a KeySchema {
        self.ns
    }

    /// The key as stored in Redis.
    pub fn render(&self, key: &CacheKey) -> String {
        self.ns.render(key)
    }

    /// `lead:phone:{phone}:{org_id}`.
    pub fn lead_by_phone(&self, phone: &str, org_id: i64) -> CacheKey {
        self.s.lead_by_phone.key((self.ns.digest(phone), org_id))
    }

    /// `lead:id:{lead_id}`.
    pub fn lead_by_id(&self, lead_id: i64) -> CacheKey {
        self.s.lead_by_id.key(lead_id)
    }

    /// `org:phone:{phone}`.
    pub fn org_by_phone(&self, phone: &str) -> CacheKey {
        self.s.org_by_phone.key(self.ns.digest(phone))
    }

    /// `context:{lead_id}`.
    pub fn context(&self, lead_id: i64) -> CacheKey {
        self.s.context_of.key(lead_id)
    }

    /// `summary:{lead_id}`.
    pub fn summary(&self, lead_id: i64) -> CacheKey {
        self.s.summary_of.key(lead_id)
    }

    /// `greeting:{lead_id}:{channel}`.
    pub fn greeting(&self, lead_id: i64, channel: Channel) -> CacheKey {
        self.s.greeting_of.key((lead_id, channel))
    }

    /// `history:{lead_id}:{limit}:{offset}`.
    pub fn history(&self, lead_id: i64, limit: u32, offset: u32) -> CacheKey {
        self.s.history_of.key((lead_id, limit, offset))
    }

    /// A lead changed: its phone and id keys, and every view derived from it. Its phone's
    /// group moves, so a call from it that read before does not install after.
    pub fn lead_changed(&self, lead_id: i64, org_id: i64, phone: &str) -> Invalidation {
        Invalidation::new(self.s.lead)
            .with_key(self.lead_by_id(lead_id))
            .with_key(self.lead_by_phone(phone, org_id))
            .with_tag(self.s.lead_views.of(lead_id))
            .with_group(self.ns.group(phone))
    }

    /// A lead's conversation changed (a new message): context, summary, greetings and
    /// history pages. `phone` is the lead's number (its group).
    pub fn lead_activity(&self, lead_id: i64, phone: &str) -> Invalidation {
        Invalidation::new(self.s.context)
            .with_tag(self.s.lead_views.of(lead_id))
            .with_group(self.ns.group(phone))
    }

    /// An organization changed: its phone key, and the views of `lead_ids` (its leads) that
    /// show its name and agent (context and greetings), in one invalidation. Its phone's
    /// group moves, so a call to it that read before does not install after.
    pub fn org_changed(&self, phone: &str, lead_ids: &[i64]) -> Invalidation {
        let mut invalidation = Invalidation::new(self.s.org)
            .with_key(self.org_by_phone(phone))
            .with_group(self.ns.group(phone));
        for &lead in lead_ids {
            invalidation = invalidation.with_tag(self.s.org_views.of(lead));
        }
        invalidation
    }

    /// The batched read of a call from `caller` to `called` (both E.164), greeting on
    /// `channel`: the organization by the number called, the caller as its lead, and the
    /// lead's context and greeting.
    pub fn call<O, L, C, G>(
        &self,
        called: &str,
        caller: &str,
        channel: Channel,
    ) -> CallPlan<O, L, C, G>
    where
        O: Identified + Value,
        L: Identified + Value,
        C: Value,
        G: Value,
    {
        let (called, caller) = (self.ns.digest(called), self.ns.digest(caller));
        let s = self.s;
        let mut plan = Plan::new();
        plan.group(called.into()).group(caller.into());
        let org = plan.key(s.org_by_phone.key(called));
        let lead = plan.follow(org, s.lead_by_phone, move |org_id| (caller, org_id));
        let context = plan.follow(lead, s.context_of, |lead_id| lead_id);
        let greeting = plan.follow(lead, s.greeting_of, move |lead_id| (lead_id, channel));
        CallPlan {
            plan,
            steps: CallSteps {
                org,
                lead,
                context,
                greeting,
            },
        }
    }
}

/// A call's batched read, before it runs.
pub struct CallPlan<O, L, C, G> {
    plan: Plan,
    steps: CallSteps<O, L, C, G>,
}

impl<O, L, C, G> CallPlan<O, L, C, G> {
    /// Runs it: L1, then at most one Redis round trip.
    pub async fn read(self, cache: &TwoTierCache) -> CallSlots<O, L, C, G> {
        CallSlots {
            batch: cache.read(self.plan).await,
            steps: self.steps,
        }
    }
}

struct CallSteps<O, L, C, G> {
    org: Step<O>,
    lead: Step<L>,
    context: Step<C>,
    greeting: Step<G>,
}

impl<O, L, C, G> Clone for CallSteps<O, L, C, G> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<O, L, C, G> Copy for CallSteps<O, L, C, G> {}

/// What the cache tiers held for a call.
pub struct CallSlots<O, L, C, G> {
    batch: Batch,
    steps: CallSteps<O, L, C, G>,
}

impl<O, L, C, G> Clone for CallSlots<O, L, C, G> {
    fn clone(&self) -> Self {
        CallSlots {
            batch: self.batch.clone(),
            steps: self.steps,
        }
    }
}

impl<O, L, C, G> std::fmt::Debug for CallSlots<O, L, C, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.batch.fmt(f)
    }
}

impl<O, L, C, G> CallSlots<O, L, C, G>
where
    O: Send + Sync + 'static,
    L: Send + Sync + 'static,
    C: Send + Sync + 'static,
    G: Send + Sync + 'static,
{
    /// The organization reached on the number called.
    pub fn org(&self) -> Slot<O> {
        self.batch.get(self.steps.org)
    }

    /// The caller, as a lead of that organization.
    pub fn lead(&self) -> Slot<L> {
        self.batch.get(self.steps.lead)
    }

    /// The lead's context.
    pub fn context(&self) -> Slot<C> {
        self.batch.get(self.steps.context)
    }

    /// The lead's greeting on the call's channel.
    pub fn greeting(&self) -> Slot<G> {
        self.batch.get(self.steps.greeting)
    }

    /// Whether nothing needs loading: an unknown organization, a new caller, or all four.
    pub fn is_complete(&self) -> bool {
        self.batch.is_complete()
    }

    /// The read, for [`TwoTierCache::install`].
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// When loading failed: fills the missing parts with what L1 held past its freshness
    /// (within grace); `true` when that completes the call (see
    /// [`TwoTierCache::fall_back_to_stale`]).
    pub fn fall_back_to_stale(&mut self, cache: &TwoTierCache) -> bool {
        cache.fall_back_to_stale(&mut self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_under(ns: &KeySchema) -> Keys<'_> {
        Keys::under(ns)
    }

    fn namespace() -> KeySchema {
        KeySchema::new("tc", "t", 1, b"0123456789abcdef", schema().schema.clone()).unwrap()
    }

    #[test]
    fn keys_render_as_the_design_names_them() {
        let ns = namespace();
        let k = keys_under(&ns);
        assert_eq!(ns.render(&k.lead_by_id(42)), "tc:t:v1:lead:id:42");
        assert_eq!(ns.render(&k.context(7)), "tc:t:v1:context:7");
        assert_eq!(ns.render(&k.summary(7)), "tc:t:v1:summary:7");
        assert_eq!(
            ns.render(&k.greeting(7, Channel::Sms)),
            "tc:t:v1:greeting:7:sms"
        );
        assert_eq!(
            ns.render(&k.history(7, 20, 40)),
            "tc:t:v1:history:{7}:20:40"
        );
        let lead = ns.render(&k.lead_by_phone("+16462000042", 3));
        assert!(lead.starts_with("tc:t:v1:lead:phone:") && lead.ends_with(":3"));
        for key in [
            k.lead_by_phone("+16462000042", 1),
            k.org_by_phone("+16462000042"),
        ] {
            let rendered = ns.render(&key);
            assert!(!rendered.contains("6462000042"), "{rendered}");
            assert!(!format!("{key:?}").contains("6462000042"));
            assert_eq!(ns.parse(&rendered).unwrap(), key);
        }
        assert_eq!(k.lead_by_id(1).entity(), schema().lead);
        assert_eq!(k.history(1, 1, 0).entity(), schema().history);
    }

    #[test]
    fn channels_parse_and_name_themselves() {
        for channel in Channel::ALL {
            assert_eq!(channel.as_str().parse::<Channel>(), Ok(channel));
        }
        assert_eq!("fax".parse::<Channel>(), Err(ChannelError));
    }

    #[test]
    fn a_lead_takes_all_its_derived_keys_with_it() {
        let ns = namespace();
        let k = keys_under(&ns);
        let inv = k.lead_changed(5, 9, "+16462000005");
        assert_eq!(inv.entity(), schema().lead);
        assert_eq!(
            inv.keys(),
            [k.lead_by_id(5), k.lead_by_phone("+16462000005", 9)]
        );
        assert_eq!(inv.tags(), [schema().lead_views.of(5)]);
        let activity = k.lead_activity(5, "+16462000005");
        assert!(activity.keys().is_empty());
        assert_eq!(activity.tags(), [schema().lead_views.of(5)]);
        let org = k.org_changed("+18005550001", &[5, 6]);
        assert_eq!(org.keys(), [k.org_by_phone("+18005550001")]);
        assert_eq!(org.tags().len(), 2);
    }
}
