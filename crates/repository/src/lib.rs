//! Tiercache's data: PostgreSQL models and queries (sqlx), the demo data set, and the
//! cached [`Repository`] that reads through the `tiercache` engine and invalidates it on
//! writes, and the [`DbListener`] that invalidates it on writes that bypass the service.

pub mod api_key;
pub mod cache_keys;
pub mod error;
pub mod greeting;
pub mod listen;
pub mod listener;
pub mod model;
pub mod phone;
pub mod pool;
pub mod queries;
mod repository;
pub mod seed;

pub use cache_keys::{Channel, ChannelError, Keys, keys, schema};
pub use error::{DbError, Error};
pub use listener::{DbListener, ListenerStatus};
pub use phone::{Phone, PhoneError};
pub use pool::{DbPool, PoolObserver, PoolState};
pub use repository::{
    CallSlots, CallView, Clock, MAX_PAGE_LIMIT, MAX_PAGE_OFFSET, MAX_TEXT_LEN, Repository,
};

/// The migrations in `migrations/` at the workspace root, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
