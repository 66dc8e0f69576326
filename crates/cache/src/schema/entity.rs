//! [`Entity`]: a kind of cached value a service declares, the unit of policies and metrics.

use std::fmt;

/// A kind of cached value, declared with [`SchemaBuilder::entity`](crate::SchemaBuilder::entity):
/// its name is the `entity` label of every metric about it, and its policy sets its TTLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entity {
    index: u16,
    name: &'static str,
}

impl Entity {
    pub(crate) const fn new(index: u16, name: &'static str) -> Self {
        Entity { index, name }
    }

    /// The declared name (the metric label's value).
    pub fn as_str(self) -> &'static str {
        self.name
    }

    /// Its position among the schema's entities (0, 1, …): for per-entity arrays.
    pub fn index(self) -> usize {
        usize::from(self.index)
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Debug for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}
