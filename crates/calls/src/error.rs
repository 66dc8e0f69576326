//! The call log's errors.

/// Why an event was refused; [`field`](Self::field) names the field for a 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The type is not one the agent may post.
    #[error(
        "must be one of call_authenticated, authentication_failed, intent_detected, \
         transfer_initiated, transfer_completed, call_ended"
    )]
    UnknownType,
    /// The time is not RFC 3339.
    #[error("must be a time in RFC 3339 (2026-12-07T12:00:00Z)")]
    BadTime,
    /// The time is more than a day old or minutes ahead.
    #[error("must be within the last 24 hours and at most 5 minutes ahead")]
    TimeOutOfRange,
    /// `data` is not an object.
    #[error("must be an object")]
    DataNotObject,
    /// `data` is larger than [`MAX_DATA_BYTES`](crate::MAX_DATA_BYTES).
    #[error("must be at most {} bytes as JSON", crate::MAX_DATA_BYTES)]
    DataTooLarge,
    /// `data` holds a NUL character, which PostgreSQL cannot store.
    #[error("must not hold a NUL character (\\u0000)")]
    DataNul,
    /// `call_ended` without a non-negative `data.duration_seconds`.
    #[error("call_ended needs a non-negative number of seconds")]
    Duration,
    /// The call sid is empty, too long or not visible ASCII.
    #[error("must be 1 to {} visible ASCII characters", crate::MAX_CALL_SID_LEN)]
    CallSid,
}

impl EventError {
    /// The request field at fault.
    pub const fn field(self) -> &'static str {
        match self {
            EventError::UnknownType => "type",
            EventError::BadTime | EventError::TimeOutOfRange => "at",
            EventError::DataNotObject | EventError::DataTooLarge | EventError::DataNul => "data",
            EventError::Duration => "data.duration_seconds",
            EventError::CallSid => "call_sid",
        }
    }
}

/// A failure of the sessions' store (PostgreSQL).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached or refused the query.
    #[error("call sessions: {context}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// Neither Redis nor PostgreSQL could say which organization a call belongs to (both
/// failing): a 503, never a 404.
#[derive(Debug, thiserror::Error)]
#[error("the call log cannot be reached: {0}")]
pub struct Unavailable(pub String);
