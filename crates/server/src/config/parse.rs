//! How one variable's text becomes a value: each parser returns the value, or the message
//! of the problem to report against the variable ("expected milliseconds, got \"fast\"").
//! Parsers of secrets never quote what they were given.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderName;
use tiercache::EncryptionKey;

use super::Config;
use crate::calls::CallsConfig;

/// Longest duration accepted in a `*_MS` variable: one day. Anything longer is a typo, and
/// huge values would overflow `Instant + Duration` in the breaker and the engine (a panic).
const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;

/// Longest TTL accepted in a `CACHE_TTL_*_SECS` variable: 365 days. Jitter multiplies TTLs,
/// and near `u64::MAX` seconds that multiplication panics on the request path.
const MAX_TTL_SECS: u64 = 365 * 24 * 60 * 60;

/// A value taken as it is: a URL, a name, a path or a secret.
pub(super) fn text(value: &str) -> Result<String, String> {
    Ok(value.to_owned())
}

/// `value` through `parse`, or "expected {expected}, got {value:?}"; only for values that
/// are not secret, as the message quotes them.
fn expected<T>(
    value: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, String> {
    parse(value).ok_or_else(|| format!("expected {expected}, got {value:?}"))
}

/// A count, a length or a version.
pub(super) fn whole<T: FromStr>(value: &str) -> Result<T, String> {
    expected(value, "a whole number", |s| s.parse().ok())
}

/// `true`/`false`/`1`/`0`/`yes`/`no`, in any case.
pub(super) fn flag(value: &str) -> Result<bool, String> {
    expected(value, "true/false/1/0/yes/no", |s| {
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        }
    })
}

/// Milliseconds, at most a day.
pub(super) fn millis(value: &str) -> Result<Duration, String> {
    let millis = expected(value, "milliseconds", |s| s.parse().ok())?;
    at_most(millis, MAX_MILLIS, "milliseconds (one day)").map(Duration::from_millis)
}

/// Seconds of a TTL, at most 365 days.
pub(super) fn secs(value: &str) -> Result<Duration, String> {
    let secs = expected(value, "seconds", |s| s.parse().ok())?;
    at_most(secs, MAX_TTL_SECS, "seconds (365 days)").map(Duration::from_secs)
}

fn at_most(value: u64, max: u64, unit: &str) -> Result<u64, String> {
    if value > max {
        return Err(format!("must be at most {max} {unit}, got {value}"));
    }
    Ok(value)
}

/// A fraction such as `0.1`; its range is the cache's to check.
pub(super) fn fraction(value: &str) -> Result<f64, String> {
    expected(value, "a fraction such as 0.1", |s| s.parse().ok())
}

/// `host:port`, the message giving `example`.
pub(super) fn address(value: &str, example: &str) -> Result<SocketAddr, String> {
    expected(value, &format!("host:port such as {example}"), |s| {
        s.parse().ok()
    })
}

/// A size in bytes: a whole number, or one with a `KiB`, `MiB` or `GiB` suffix.
pub(super) fn bytes(value: &str) -> Result<u64, String> {
    expected(
        value,
        "a number of bytes, or one with KiB, MiB or GiB (such as 64MiB)",
        parse_bytes,
    )
}

/// `67108864`, `65536KiB`, `64MiB`, `64 MiB` or `1GiB` (units in any case, as binary
/// multiples; `MB` is refused, as it could mean 10^6 or 2^20); `None` for anything else or
/// a size past `u64`.
fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiple: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiple)
}

/// A 32-byte key as 64 hex digits; a bad one is reported without quoting it (a secret).
pub(super) fn encryption_key(value: &str) -> Result<EncryptionKey, String> {
    EncryptionKey::from_hex(value)
        .map_err(|error| format!("{error} (make one with `openssl rand -hex 32`)"))
}

/// `WEBHOOK_SECRET_HEADER` as a header name: letters, digits and `-` (no token
/// punctuation a proxy might mangle), not one HTTP reads itself.
pub(super) fn webhook_secret_header(value: &str) -> Result<HeaderName, String> {
    expected(
        value,
        "a header name of letters, digits and '-' that HTTP does not reserve",
        |value| {
            let plain = !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let name = HeaderName::from_bytes(value.as_bytes())
                .ok()
                .filter(|_| plain)?;
            (!Config::RESERVED_HEADERS.contains(&name.as_str())).then_some(name)
        },
    )
}

/// `INSTANCE_NAME`: a consumer's name in Redis, so plain (no spaces, no quotes).
pub(super) fn instance_name(value: &str) -> Result<String, String> {
    expected(value, "1 to 64 letters, digits, '.', '_' or '-'", |value| {
        let plain = (1..=CallsConfig::MAX_INSTANCE_NAME_LEN).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        plain.then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_only() {
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("512B"), Some(512));
        for value in [
            "",
            "MiB",
            "64MB",
            "64 M",
            "-1",
            "1.5GiB",
            "64MiB!",
            "99999999999999GiB",
        ] {
            assert_eq!(parse_bytes(value), None, "{value:?}");
        }
    }
}
