//! The versioned envelope every cached payload travels in.
//!
//! Layout: `[version: u8][kind: u8][loaded_at_ms: u64 LE][payload]`. The payload is
//! postcard (chosen by measurement, see `benches/benches/encoding.rs`); a "not found" has
//! kind 1 and no payload. Anything else — short, unknown kind, other version, a payload
//! that does not decode as the asked type — is a miss for the caller, never an error.
//! Version 0 is never used: a value starting with byte 0 is a load's lease marker (see
//! `l2::LEASE_MARKER_PREFIX`). A first byte with the high bit set is a sealed envelope
//! (`seal.rs`), which holds one of these.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::observer::CorruptKind;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

const KIND_VALUE: u8 = 0;
const KIND_NOT_FOUND: u8 = 1;
const HEADER_LEN: usize = 10;

/// A decoded envelope.
#[derive(Debug, PartialEq)]
pub struct Decoded<T> {
    /// The value, or `None` for a cached "not found".
    pub value: Option<T>,
    /// When the value was loaded from the source of truth, in Unix milliseconds.
    pub loaded_at_ms: u64,
}

/// Encodes a value (or a "not found") loaded at `loaded_at_ms`.
pub fn encode<T: Serialize>(
    value: Option<&T>,
    loaded_at_ms: u64,
) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(64);
    out.push(ENVELOPE_VERSION);
    out.push(if value.is_some() {
        KIND_VALUE
    } else {
        KIND_NOT_FOUND
    });
    out.extend_from_slice(&loaded_at_ms.to_le_bytes());
    match value {
        Some(value) => postcard::to_extend(value, out),
        None => Ok(out),
    }
}

/// Decodes an envelope holding a `T`, or says why it is unusable.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Decoded<T>, CorruptKind> {
    let (header, payload) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(CorruptKind::Decode)?;
    if header[0] != ENVELOPE_VERSION {
        return Err(CorruptKind::Version);
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&header[2..HEADER_LEN]);
    let loaded_at_ms = u64::from_le_bytes(stamp);
    let value = match header[1] {
        KIND_VALUE => {
            let (value, rest) =
                postcard::take_from_bytes::<T>(payload).map_err(|_| CorruptKind::Decode)?;
            if !rest.is_empty() {
                return Err(CorruptKind::Decode);
            }
            Some(value)
        }
        KIND_NOT_FOUND if payload.is_empty() => None,
        _ => return Err(CorruptKind::Decode),
    };
    Ok(Decoded {
        value,
        loaded_at_ms,
    })
}

/// The value's id as the batched read's script reads it: the first field of a value whose first
/// field is an `i64` (postcard's zigzag varint), `None` for a "not found" or anything else.
/// A sealed value shows it only when it was sealed so (see `seal.rs`).
pub fn leading_id(bytes: &[u8]) -> Option<i64> {
    if bytes.first() == Some(&crate::seal::SEALED_VERSION) {
        return crate::seal::clear_id(bytes);
    }
    postcard::from_bytes::<i64>(leading_id_bytes(bytes)?).ok()
}

/// The bytes of a plain envelope's leading id, as postcard wrote them.
pub(crate) fn leading_id_bytes(bytes: &[u8]) -> Option<&[u8]> {
    let (header, payload) = bytes.split_at_checked(HEADER_LEN)?;
    if header[0] != ENVELOPE_VERSION || header[1] != KIND_VALUE {
        return None;
    }
    let (_, rest) = postcard::take_from_bytes::<i64>(payload).ok()?;
    Some(&payload[..payload.len() - rest.len()])
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Item {
        id: i64,
        name: String,
        notes: Option<String>,
    }

    fn item() -> Item {
        Item {
            id: 42,
            name: "Ada Lovelace".to_owned(),
            notes: Some("call after 5".to_owned()),
        }
    }

    #[test]
    fn values_and_not_found_round_trip() {
        let bytes = encode(Some(&item()), 1_700_000_000_123).unwrap();
        let decoded = decode::<Item>(&bytes).unwrap();
        assert_eq!(decoded.value, Some(item()));
        assert_eq!(decoded.loaded_at_ms, 1_700_000_000_123);

        let bytes = encode::<Item>(None, 5).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(
            decode::<Item>(&bytes).unwrap(),
            Decoded {
                value: None,
                loaded_at_ms: 5
            }
        );
    }

    #[test]
    fn the_leading_id_is_the_first_field() {
        for id in [0, 1, 42, 300, -5, 100_000, i64::from(u32::MAX)] {
            let item = Item {
                id,
                name: "x".to_owned(),
                notes: None,
            };
            assert_eq!(leading_id(&encode(Some(&item), 7).unwrap()), Some(id));
        }
        assert_eq!(leading_id(&encode::<Item>(None, 7).unwrap()), None);
        assert_eq!(leading_id(b"short"), None);
    }

    #[test]
    fn other_versions_are_refused() {
        let mut bytes = encode(Some(&item()), 0).unwrap();
        bytes[0] = ENVELOPE_VERSION + 1;
        assert_eq!(decode::<Item>(&bytes).unwrap_err(), CorruptKind::Version);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let good = encode(Some(&item()), 0).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![ENVELOPE_VERSION],
            b"{\"id\":42}".to_vec(),
            good[..good.len() - 3].to_vec(),
            [good.as_slice(), b"trailing"].concat(),
            {
                let mut b = good.clone();
                b[1] = 9;
                b
            },
            {
                let mut b = encode::<Item>(None, 0).unwrap();
                b.push(1);
                b
            },
        ];
        for bytes in cases {
            assert!(
                matches!(
                    decode::<Item>(&bytes),
                    Err(CorruptKind::Decode | CorruptKind::Version)
                ),
                "{bytes:?}"
            );
        }
        // A valid envelope of another type does not decode as this one.
        let number = encode(Some(&7u8), 0).unwrap();
        assert_eq!(decode::<Item>(&number).unwrap_err(), CorruptKind::Decode);
    }
}
