//! L2 failures, classified once into a small fixed set of kinds that become metric labels.

use std::fmt;

/// Why an L2 command did not succeed. A fixed set, so it can be a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L2ErrorKind {
    /// No answer within the command timeout (pool checkout included).
    Timeout,
    /// The connection could not be made or was lost.
    Connection,
    /// Redis answered with an error, or with something we could not parse.
    Protocol,
    /// Redis refused to write: out of memory (`noeviction`), a read-only replica, a
    /// failing disk (`MISCONF`), or an ACL that forbids the command.
    Refused,
    /// The circuit is open: the command was skipped without touching Redis.
    CircuitOpen,
}

impl L2ErrorKind {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [L2ErrorKind; 5] = [
        L2ErrorKind::Timeout,
        L2ErrorKind::Connection,
        L2ErrorKind::Protocol,
        L2ErrorKind::Refused,
        L2ErrorKind::CircuitOpen,
    ];

    /// The label value for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            L2ErrorKind::Timeout => "timeout",
            L2ErrorKind::Connection => "connection",
            L2ErrorKind::Protocol => "protocol",
            L2ErrorKind::Refused => "refused",
            L2ErrorKind::CircuitOpen => "circuit_open",
        }
    }

    /// Maps a Redis error to its kind, by the error's own classification, never its text.
    pub fn of(error: &redis::RedisError) -> Self {
        if error.is_timeout() {
            L2ErrorKind::Timeout
        } else if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
            || is_auth_refusal(error)
        {
            L2ErrorKind::Connection
        } else if server_codes(error).iter().any(|code| is_refusal(code)) {
            L2ErrorKind::Refused
        } else {
            L2ErrorKind::Protocol
        }
    }
}

/// Whether Redis refused this connection its credentials: a wrong password
/// (`WRONGPASS`, or an `AUTH` that failed while connecting) or none where one is required
/// (`NOAUTH`, answered to every command). Such a connection is refused as surely as one
/// whose socket was: it fails every command until it is made again with the right ones.
pub(crate) fn is_auth_refusal(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || server_codes(error)
            .iter()
            .any(|code| matches!(code.as_str(), "NOAUTH" | "WRONGPASS"))
}

/// The codes Redis answered `error` with: its own, or each failed command's in a pipeline.
fn server_codes(error: &redis::RedisError) -> Vec<String> {
    match error.code() {
        Some(code) => vec![code.to_owned()],
        None => error
            .clone()
            .into_server_errors()
            .map(|errors| errors.iter().map(|(_, e)| e.code().to_owned()).collect())
            .unwrap_or_default(),
    }
}

/// Whether Redis answered `code` because it will not write now (see [`L2ErrorKind::Refused`]).
fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "OOM" | "READONLY" | "MISCONF" | "NOPERM" | "NOREPLICAS"
    )
}

impl fmt::Display for L2ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An L2 command that failed; the engine absorbs these, they never reach a caller.
#[derive(Debug, thiserror::Error)]
#[error("redis {op} failed: {kind}")]
pub struct L2Error {
    /// The kind of failure.
    pub kind: L2ErrorKind,
    /// The command that failed.
    pub op: &'static str,
    /// The Redis error, when there was one (not for timeouts or an open circuit).
    #[source]
    pub source: Option<redis::RedisError>,
}
