//! The repository's errors: what the caller did wrong, what is missing, what is down.

use std::time::Duration;

use crate::phone::PhoneError;

/// A repository operation that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A phone number did not normalize.
    #[error("{field}: {source}")]
    Phone {
        /// Which input held it.
        field: &'static str,
        /// Why it was refused.
        #[source]
        source: PhoneError,
    },
    /// An input value is out of range or not one of the allowed values.
    #[error("{field}: {message}")]
    Invalid {
        /// Which input.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// PostgreSQL could not be reached in time (pool exhausted, connection refused).
    #[error("database unavailable")]
    Unavailable(#[source] DbError),
    /// Loading through the cache passed its deadline.
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// A query failed for another reason.
    #[error("database query failed")]
    Database(#[source] DbError),
    /// The cache could not encode a value (a bug in a model's `Serialize`).
    #[error("caching failed")]
    Cache(#[source] tiercache::Error),
}

impl Error {
    /// Whether the source of truth is down (as opposed to a bad request or a bug).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }

    /// A copy, for an error that comes back shared through the cache.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Phone { field, source } => Error::Phone {
                field,
                source: *source,
            },
            Error::Invalid { field, message } => Error::Invalid {
                field,
                message: message.clone(),
            },
            Error::Unavailable(db) => Error::Unavailable(db.clone()),
            Error::Timeout(after) => Error::Timeout(*after),
            Error::Database(db) => Error::Database(db.clone()),
            Error::Cache(e) => Error::Cache(e.clone()),
        }
    }
}

/// A database failure, classified once; cheap to clone, as the cache shares a failed load
/// with every caller that waited for it (and `sqlx::Error` is not `Clone`).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    unavailable: bool,
    message: String,
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = matches!(
            e,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
        );
        DbError {
            unavailable,
            message: e.to_string(),
        }
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        if e.unavailable {
            Error::Unavailable(e)
        } else {
            Error::Database(e)
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::from(DbError::from(e))
    }
}

impl From<tiercache::Error> for Error {
    fn from(e: tiercache::Error) -> Self {
        match e {
            tiercache::Error::LoadTimeout { after, .. } => Error::Timeout(after),
            tiercache::Error::Load { ref source, .. } => match source.downcast_ref::<DbError>() {
                Some(db) => Error::from(db.clone()),
                None => Error::Cache(e),
            },
            other => Error::Cache(other),
        }
    }
}
