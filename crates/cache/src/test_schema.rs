//! A small schema for the crate's own tests: items by id and by name, an item's views per
//! size (enumerated), and its pages (indexed), both tagged by the item.

use std::sync::LazyLock;
use std::time::Duration;

use crate::policy::EntityPolicy;
use crate::schema::{Digest, Entity, KeyDef, KeyWord, Schema, TagDef};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Size {
    Small,
    Large,
}

impl KeyWord for Size {
    const WORDS: &'static [&'static str] = &["small", "large"];
    fn index(self) -> usize {
        self as usize
    }
    fn from_index(index: usize) -> Option<Self> {
        [Size::Small, Size::Large].get(index).copied()
    }
}

pub(crate) struct TestKeys {
    pub schema: Schema,
    pub item: Entity,
    pub view: Entity,
    pub by_id: KeyDef<i64>,
    pub by_name: KeyDef<(Digest, i64)>,
    pub sized: KeyDef<(i64, Size)>,
    pub page: KeyDef<(i64, u32)>,
    pub owner: TagDef<i64>,
}

pub(crate) fn keys() -> &'static TestKeys {
    static KEYS: LazyLock<TestKeys> = LazyLock::new(|| {
        let mut b = Schema::builder();
        let item = b.entity("item", EntityPolicy::with_l2_ttl(Duration::from_secs(900)));
        let view = b.entity("view", EntityPolicy::with_l2_ttl(Duration::from_secs(300)));
        let by_id = b.key(item, "item:id:{}");
        let by_name = b.key(item, "item:name:{}:{}");
        let sized = b.key(view, "view:{}:{}");
        let page = b.key(view, "page:{}:{}");
        let owner = b.tag("item");
        b.tagged(sized, owner);
        b.tagged(page, owner);
        #[allow(clippy::unwrap_used)]
        let schema = b.build().unwrap();
        TestKeys {
            schema,
            item,
            view,
            by_id,
            by_name,
            sized,
            page,
            owner,
        }
    });
    &KEYS
}
