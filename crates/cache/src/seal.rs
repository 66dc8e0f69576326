//! Values sealed at rest in Redis: the envelope encrypted and authenticated under the
//! cache's [`EncryptionKey`], bound to the Redis key it is stored at.
//!
//! The cipher is XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): its 192-bit nonce can
//! be drawn at random for every value without counting how many values a key has sealed
//! (AES-GCM's 96-bit random nonces call for a new key after about 2³² values, which a busy
//! cache writes within days), and it runs in constant time without AES instructions.
//!
//! Layout: `[SEALED_VERSION][flag][id][nonce: 24][ciphertext][tag: 16]`. The ciphertext is
//! the plain envelope (see `envelope.rs`), whole. With `flag` 1 the value's leading id
//! follows in the clear, as postcard wrote it (a zigzag varint), so a batched read can
//! follow the id inside Redis without the key (see `engine/batch`); values at a
//! [followable](crate::SchemaBuilder::followable) key are sealed so, any other with `flag` 0.
//! Ids are surrogate keys that other key names already hold in the clear (`reviews:{id}`),
//! not personal data; everything else in a value is sealed.
//! The associated data is everything before the nonce, then the Redis key: a value copied
//! under another key, or whose clear id was changed, does not open. Nonces come from `rand`'s
//! thread-local generator, a CSPRNG seeded from the operating system.
//!
//! A value that does not open (another encryption key, another Redis key, tampered, cut
//! short), a sealed value where values are plain, and a plain one where they are sealed are
//! all [`CorruptKind::Seal`]: misses, deleted and reloaded like any corrupt entry.

use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};

use crate::envelope::{self, ENVELOPE_VERSION};
use crate::error::{EncryptionKeyError, SealError};
use crate::observer::CorruptKind;

/// The high bit of an envelope's first byte: set on a sealed envelope.
pub const SEALED_BIT: u8 = 0x80;
/// The first byte of a sealed envelope: [`SEALED_BIT`] over the plain version inside.
pub const SEALED_VERSION: u8 = SEALED_BIT | ENVELOPE_VERSION;
/// The flag byte of a sealed value whose leading id is in the clear.
pub const WITH_ID: u8 = 1;
const WITHOUT_ID: u8 = 0;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The longest id in the clear: an `i64` as a varint.
const MAX_ID_LEN: usize = 10;

/// The 32-byte key values are sealed with; its `Debug` never shows it.
#[derive(Clone)]
pub struct EncryptionKey([u8; EncryptionKey::LEN]);

impl EncryptionKey {
    /// Its length in bytes.
    pub const LEN: usize = 32;

    /// A key of these bytes (from a secret store, say).
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        EncryptionKey(bytes)
    }

    /// A key written as 64 hex digits (`openssl rand -hex 32`), either case. The error
    /// says what is wrong without quoting the text, which is a secret.
    pub fn from_hex(text: &str) -> Result<Self, EncryptionKeyError> {
        let digits = text.chars().count();
        if digits != 2 * Self::LEN {
            return Err(EncryptionKeyError::Length(digits));
        }
        let mut bytes = [0u8; Self::LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| EncryptionKeyError::NotHex)?;
        Ok(EncryptionKey(bytes))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

/// Seals and opens envelopes under one [`EncryptionKey`].
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer with this key.
    pub fn new(key: &EncryptionKey) -> Self {
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
        }
    }

    /// Seals the plain envelope `plain` for the Redis key `redis_key`. With `show_id`, a
    /// value's leading id (see [`envelope::leading_id`]) stays readable in the clear.
    pub fn seal(&self, redis_key: &str, plain: &[u8], show_id: bool) -> Result<Vec<u8>, SealError> {
        let id = if show_id {
            envelope::leading_id_bytes(plain)
        } else {
            None
        };
        let mut out = Vec::with_capacity(2 + MAX_ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.push(SEALED_VERSION);
        match id {
            Some(id) => {
                out.push(WITH_ID);
                out.extend_from_slice(id);
            }
            None => out.push(WITHOUT_ID),
        }
        let header_len = out.len();
        let nonce: [u8; NONCE_LEN] = rand::random();
        out.extend_from_slice(&nonce);
        let body = out.len();
        out.extend_from_slice(plain);
        let aad = associated_data(&out[..header_len], redis_key);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&XNonce::from(nonce), &aad, &mut out[body..])
            .map_err(|_| SealError)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value read from Redis at `redis_key`, in place: the plain envelope.
    pub fn open<'a>(&self, redis_key: &str, sealed: &'a mut [u8]) -> Result<&'a [u8], CorruptKind> {
        let header_len = sealed_header_len(sealed)?;
        if sealed.len() < header_len + NONCE_LEN + TAG_LEN {
            return Err(CorruptKind::Seal);
        }
        let (header, rest) = sealed.split_at_mut(header_len);
        let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let aad = associated_data(header, redis_key);
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), &aad, body, Tag::from_slice(tag))
            .map_err(|_| CorruptKind::Seal)?;
        Ok(body)
    }
}

/// The length of a sealed value's clear header (version, flag, id), or why it has none.
fn sealed_header_len(bytes: &[u8]) -> Result<usize, CorruptKind> {
    match bytes.first() {
        Some(&SEALED_VERSION) => {}
        // Sealed by another envelope version.
        Some(first) if first & SEALED_BIT != 0 => return Err(CorruptKind::Version),
        _ => return Err(CorruptKind::Seal),
    }
    match bytes.get(1) {
        Some(&WITHOUT_ID) => Ok(2),
        Some(&WITH_ID) => {
            let varint = bytes
                .get(2..)
                .unwrap_or_default()
                .iter()
                .take(MAX_ID_LEN)
                .position(|b| b & 0x80 == 0)
                .ok_or(CorruptKind::Seal)?;
            Ok(2 + varint + 1)
        }
        _ => Err(CorruptKind::Seal),
    }
}

/// The id a sealed value shows in the clear, as the batched read's script reads it.
pub(crate) fn clear_id(bytes: &[u8]) -> Option<i64> {
    if bytes.get(1) != Some(&WITH_ID) {
        return None;
    }
    let header_len = sealed_header_len(bytes).ok()?;
    postcard::from_bytes::<i64>(&bytes[2..header_len]).ok()
}

/// What a value's tag covers besides its ciphertext: its clear header (self-delimiting, so
/// the two parts cannot be confused), then the Redis key.
fn associated_data(header: &[u8], redis_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + redis_key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(redis_key.as_bytes());
    aad
}

/// How this cache keeps values in Redis: plain envelopes, or sealed ones.
pub(crate) struct Sealing(Option<Sealer>);

impl Sealing {
    /// Sealed with `key`, or plain without one.
    pub fn new(key: Option<&EncryptionKey>) -> Self {
        Sealing(key.map(Sealer::new))
    }

    /// Whether values are sealed.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// What Redis keeps of the plain envelope `plain` at `redis_key`: sealed, showing its
    /// id when `show_id` (a batched read follows it, see `batch.rs`), or `plain` itself.
    pub fn store(
        &self,
        redis_key: &str,
        plain: Vec<u8>,
        show_id: bool,
    ) -> Result<Vec<u8>, SealError> {
        match &self.0 {
            Some(sealer) => sealer.seal(redis_key, &plain, show_id),
            None => Ok(plain),
        }
    }

    /// The plain envelope in `stored`, read from Redis at `redis_key` (`None`: values are
    /// plain, and the key is not needed).
    pub fn plain<'a>(
        &self,
        redis_key: Option<&str>,
        stored: &'a mut [u8],
    ) -> Result<&'a [u8], CorruptKind> {
        match (&self.0, redis_key) {
            (Some(sealer), Some(redis_key)) => sealer.open(redis_key, stored),
            (Some(_), None) => Err(CorruptKind::Seal),
            (None, _) if stored.first().is_some_and(|b| b & SEALED_BIT != 0) => {
                Err(CorruptKind::Seal)
            }
            (None, _) => Ok(stored),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    const KEY: &str = "tc:test:v1:lead:id:42";

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Lead {
        id: i64,
        name: String,
        phone: String,
    }

    fn lead(id: i64) -> Lead {
        Lead {
            id,
            name: "Ada Lovelace".to_owned(),
            phone: "+16462000042".to_owned(),
        }
    }

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&EncryptionKey::from_bytes([byte; 32]))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_sealed_value_opens_to_its_envelope_and_shows_nothing_else() {
        let plain = envelope::encode(Some(&lead(42)), 1_700_000_000_123).unwrap();
        let mut sealed = sealer(7).seal(KEY, &plain, false).unwrap();
        assert_eq!(sealed[0], SEALED_VERSION);
        assert_eq!(sealed.len(), 2 + NONCE_LEN + plain.len() + TAG_LEN);
        for clear in [&b"Ada"[..], b"Lovelace", b"6462000042"] {
            assert!(contains(&plain, clear), "the test's premise");
            assert!(!contains(&sealed, clear), "{clear:?} in the clear");
        }
        let opened = sealer(7).open(KEY, &mut sealed).unwrap();
        assert_eq!(opened, plain);
        let decoded = envelope::decode::<Lead>(opened).unwrap();
        assert_eq!(decoded.value, Some(lead(42)));
        assert_eq!(decoded.loaded_at_ms, 1_700_000_000_123);

        // A "not found" too.
        let plain = envelope::encode::<Lead>(None, 5).unwrap();
        let mut sealed = sealer(7).seal(KEY, &plain, true).unwrap();
        assert_eq!(sealed[1], WITHOUT_ID, "no id to show");
        assert_eq!(sealer(7).open(KEY, &mut sealed).unwrap(), plain);
    }

    #[test]
    fn every_value_has_its_own_nonce() {
        let plain = envelope::encode(Some(&lead(42)), 0).unwrap();
        let (a, b) = (
            sealer(7).seal(KEY, &plain, false).unwrap(),
            sealer(7).seal(KEY, &plain, false).unwrap(),
        );
        assert_ne!(a[2..2 + NONCE_LEN], b[2..2 + NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn another_encryption_key_does_not_open_it() {
        let plain = envelope::encode(Some(&lead(42)), 0).unwrap();
        let mut sealed = sealer(7).seal(KEY, &plain, true).unwrap();
        assert_eq!(sealer(8).open(KEY, &mut sealed), Err(CorruptKind::Seal));
    }

    #[test]
    fn a_value_copied_under_another_redis_key_does_not_open() {
        let plain = envelope::encode(Some(&lead(42)), 0).unwrap();
        let sealed = sealer(7).seal(KEY, &plain, true).unwrap();
        for other in [
            "tc:test:v1:lead:id:43",
            "tc:test:v1:lead:id:4",
            "",
            "tc:test:v1:lead:id:42 ",
        ] {
            let mut copy = sealed.clone();
            assert_eq!(
                sealer(7).open(other, &mut copy),
                Err(CorruptKind::Seal),
                "{other:?}"
            );
        }
        let mut copy = sealed.clone();
        assert!(sealer(7).open(KEY, &mut copy).is_ok(), "its own key");
    }

    #[test]
    fn any_changed_or_missing_byte_is_refused() {
        let plain = envelope::encode(Some(&lead(300)), 0).unwrap();
        let sealed = sealer(7).seal(KEY, &plain, true).unwrap();
        for at in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[at] ^= 0x01;
            assert!(
                sealer(7).open(KEY, &mut tampered).is_err(),
                "byte {at} flipped"
            );
        }
        for len in 0..sealed.len() {
            let mut cut = sealed[..len].to_vec();
            assert!(sealer(7).open(KEY, &mut cut).is_err(), "cut to {len}");
        }
        let mut longer = [sealed.as_slice(), b"x"].concat();
        assert!(sealer(7).open(KEY, &mut longer).is_err(), "a byte more");
        // The clear id is covered too: one naming another lead does not open.
        let mut other_id = sealed.clone();
        other_id[2] = 2 * 41;
        other_id.remove(3);
        assert_eq!(sealer(7).open(KEY, &mut other_id), Err(CorruptKind::Seal));
    }

    #[test]
    fn the_leading_id_stays_in_the_clear_only_when_asked() {
        for id in [
            0,
            1,
            42,
            300,
            -5,
            100_000,
            i64::from(u32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let plain = envelope::encode(Some(&lead(id)), 7).unwrap();
            let shown = sealer(7).seal(KEY, &plain, true).unwrap();
            assert_eq!(shown[1], WITH_ID);
            assert_eq!(envelope::leading_id(&shown), Some(id), "{id}");
            let hidden = sealer(7).seal(KEY, &plain, false).unwrap();
            assert_eq!(envelope::leading_id(&hidden), None, "{id}");
            let mut shown = shown;
            assert_eq!(sealer(7).open(KEY, &mut shown).unwrap(), plain);
        }
    }

    #[test]
    fn plain_and_sealed_values_are_each_refused_where_the_other_is_expected() {
        let plain = envelope::encode(Some(&lead(42)), 0).unwrap();
        let sealed = sealer(7).seal(KEY, &plain, false).unwrap();
        let (on, off) = (
            Sealing::new(Some(&EncryptionKey::from_bytes([7; 32]))),
            Sealing::new(None),
        );
        assert_eq!(
            on.plain(Some(KEY), &mut plain.clone()),
            Err(CorruptKind::Seal)
        );
        assert_eq!(off.plain(None, &mut sealed.clone()), Err(CorruptKind::Seal));
        assert_eq!(on.plain(Some(KEY), &mut sealed.clone()).unwrap(), plain);
        assert_eq!(off.plain(None, &mut plain.clone()).unwrap(), plain);
        // Sealed by another envelope version.
        let mut newer = sealed.clone();
        newer[0] = SEALED_BIT | (ENVELOPE_VERSION + 1);
        assert_eq!(on.plain(Some(KEY), &mut newer), Err(CorruptKind::Version));
    }

    #[test]
    fn keys_are_64_hex_digits_and_errors_do_not_quote_them() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        assert!(EncryptionKey::from_hex(hex).is_ok());
        assert_eq!(
            EncryptionKey::from_hex(&hex[..62]).unwrap_err(),
            EncryptionKeyError::Length(62)
        );
        assert_eq!(
            EncryptionKey::from_hex(&hex.replace('a', "g")).unwrap_err(),
            EncryptionKeyError::NotHex
        );
        // 64 bytes but not 64 characters.
        let wide = format!("{}é", &hex[..62]);
        assert_eq!(
            EncryptionKey::from_hex(&wide).unwrap_err(),
            EncryptionKeyError::Length(63)
        );
        let err = EncryptionKey::from_hex(&hex.replace('a', "g")).unwrap_err();
        assert!(!err.to_string().contains("0011"), "{err}");
        let key = EncryptionKey::from_hex(hex).unwrap();
        assert_eq!(format!("{key:?}"), "EncryptionKey(..)");
    }
}
