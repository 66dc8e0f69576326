//! What L2 reports of itself and of Redis, for health checks.

use super::L2ErrorKind;

/// The pool's size right now, for health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open.
    pub connections: u32,
    /// Of those, connections idle in the pool.
    pub idle: u32,
}

/// The last L2 failure, for health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastL2Error {
    /// Its kind.
    pub kind: L2ErrorKind,
    /// The command.
    pub op: &'static str,
    /// The error's text (Redis's own message; never a key or a value).
    pub message: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// What Redis says of itself (`INFO memory` and `INFO stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisInfo {
    /// `used_memory`, bytes.
    pub used_memory: u64,
    /// `maxmemory`, bytes (0: no limit).
    pub maxmemory: u64,
    /// `evicted_keys`: keys Redis dropped for memory since it started.
    pub evicted_keys: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
}

/// The value of `name:value` in an `INFO` reply.
pub(super) fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RedisInfo {
    pub(super) fn parse(text: &str) -> Self {
        let field = |name: &str| {
            info_field(text, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        RedisInfo {
            used_memory: field("used_memory"),
            maxmemory: field("maxmemory"),
            evicted_keys: field("evicted_keys"),
            connected_clients: field("connected_clients"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_parse_and_default_to_zero() {
        let info = RedisInfo::parse(
            "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:0\r\n# Stats\r\nevicted_keys:7\r\nconnected_clients:3\r\n",
        );
        assert_eq!(
            info,
            RedisInfo {
                used_memory: 1_048_576,
                maxmemory: 0,
                evicted_keys: 7,
                connected_clients: 3
            }
        );
        assert_eq!(RedisInfo::parse("garbage"), RedisInfo::default());
    }
}
