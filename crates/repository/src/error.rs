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
    /// PostgreSQL could not be reached in time (pool exhausted, connection refused), or the
    /// connection broke (a restart ended it).
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
    cause: Cause,
    message: String,
}

/// What a database failure says about PostgreSQL and the connection it happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// No connection could be had in time: the pool timed out (PostgreSQL down or every
    /// connection busy) or is closed.
    NoConnection,
    /// The connection broke under the statement: the socket failed or was dropped, or the
    /// server ended the session (a restart or a crash) or refuses sessions for now.
    Broken,
    /// The statement failed on a working connection.
    Statement,
}

impl DbError {
    /// Whether PostgreSQL could not be reached or the connection broke (a 503, not a 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.cause, Cause::NoConnection | Cause::Broken)
    }

    /// Whether the connection the statement ran on broke: it is of no further use, nor is
    /// any other connection opened before it, and a read may be run again on a new one.
    pub fn is_broken_connection(&self) -> bool {
        self.cause == Cause::Broken
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        let cause = match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => Cause::NoConnection,
            // A protocol error is a stream out of step, as a dropped socket leaves it.
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Cause::Broken,
            sqlx::Error::Database(db) if db.code().is_some_and(|c| ends_session(&c)) => {
                Cause::Broken
            }
            _ => Cause::Statement,
        };
        DbError {
            cause,
            message: e.to_string(),
        }
    }
}

/// SQLSTATEs after which the session is gone: class 08 (connection exception), 57P01
/// (admin shutdown: a fast shutdown or restart ends every backend with it), 57P02 (crash
/// shutdown) and 57P03 (cannot connect now: starting up or shutting down).
fn ends_session(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_level_failures_are_unavailable_and_a_broken_connection_says_so() {
        let timed_out = DbError::from(sqlx::Error::PoolTimedOut);
        assert!(timed_out.is_unavailable() && !timed_out.is_broken_connection());
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for broken in [
            sqlx::Error::Io(io),
            sqlx::Error::Protocol("unexpected end of stream".to_owned()),
        ] {
            let e = DbError::from(broken);
            assert!(e.is_unavailable() && e.is_broken_connection(), "{e}");
        }
        let statement = DbError::from(sqlx::Error::RowNotFound);
        assert!(!statement.is_unavailable() && !statement.is_broken_connection());
        assert!(matches!(Error::from(timed_out), Error::Unavailable(_)));
        assert!(matches!(Error::from(statement), Error::Database(_)));
    }

    #[test]
    fn sqlstates_that_end_the_session() {
        for code in ["08000", "08003", "08006", "57P01", "57P02", "57P03"] {
            assert!(ends_session(code), "{code}");
        }
        // A cancelled statement (statement_timeout), a unique violation, bad input: the
        // session lives on.
        for code in ["57014", "23505", "22021", "40001"] {
            assert!(!ends_session(code), "{code}");
        }
    }
}
