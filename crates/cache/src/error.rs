//! The crate's errors: what a caller of the cache can get back, and why.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::schema::Entity;

/// A boxed loader error, as the loader returned it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the cache returns to a caller. Redis trouble is never one of these: L2 failures
/// are absorbed (counted, then on to the loader), so only the loader can fail a read.
///
/// Cloning is cheap: a failed load is shared with every caller that waited for it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The configuration was rejected; nothing was built.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A cache with Redis was built outside a Tokio runtime (its pool needs one).
    #[error("building a cache with Redis needs a running Tokio runtime")]
    NoRuntime,
    /// The loader failed; its error is the source (see [`Error::loader_error`]).
    #[error("loading {entity} failed")]
    Load {
        /// The entity being loaded.
        entity: Entity,
        /// The loader's own error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The loader did not answer within the load timeout.
    #[error("loading {entity} timed out after {after:?}")]
    LoadTimeout {
        /// The entity being loaded.
        entity: Entity,
        /// The timeout that passed.
        after: Duration,
    },
    /// The value could not be encoded for the cache (a bug in its `Serialize`).
    #[error("encoding {entity} for the cache failed")]
    Encode {
        /// The entity being encoded.
        entity: Entity,
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },
}

impl Error {
    /// The loader's own error, if this is a load failure of type `E`.
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Load { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// One field of the configuration that was rejected, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field, e.g. `policy.product.l1_ttl`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A rejected configuration, listing every problem at once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Every problem found, in field order.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid cache config: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

/// A key or namespace that could not be built or parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The namespace is empty, has characters other than `[A-Za-z0-9_-]`, or does not match.
    #[error("key namespace is empty, malformed or not this cache's")]
    Namespace,
    /// The key does not have the shape of any declared key.
    #[error("key is not of any declared shape")]
    Malformed,
}

/// A schema declaration that was refused, listing every problem at once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache schema: {}", problems.join("; "))]
pub struct SchemaError {
    /// Every problem found, each naming the entity, key template or tag.
    pub problems: Vec<String>,
}

/// Why a text is not an [`EncryptionKey`](crate::EncryptionKey); never quotes the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionKeyError {
    /// Not 64 characters long.
    #[error("expected 64 hex digits (32 bytes), got {0} characters")]
    Length(usize),
    /// 64 characters, not all of them hex digits.
    #[error("expected 64 hex digits (32 bytes), got a character that is not a hex digit")]
    NotHex,
}

/// A value too long for the cipher (over 256 GiB): not sealed, so not stored in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sealing a value for the cache failed")]
pub struct SealError;
