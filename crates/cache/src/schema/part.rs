//! The parts a key is built from: integers, words from a fixed list, and keyed digests of
//! text. Each part is packed into one or two 64-bit slots, so a key stays a small `Copy`
//! value that L1 hashes without allocating.

use std::fmt;

/// Slots a key holds; a [`Digest`] takes two, every other part one.
pub(crate) const SLOTS: usize = 4;

/// How a part is written in a key's Redis form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartKind {
    /// A signed integer, in decimal.
    Int,
    /// An unsigned integer, in decimal.
    Uint,
    /// A keyed digest of text, in 32 hex digits.
    Digest,
    /// One of a fixed list of words (see [`KeyWord`]).
    Word(&'static [&'static str]),
}

impl PartKind {
    /// Slots the part takes.
    pub(crate) fn slots(self) -> usize {
        match self {
            PartKind::Digest => 2,
            _ => 1,
        }
    }

    /// Writes the part held in `slots` (its first slot on).
    pub(crate) fn render(self, slots: &[u64], out: &mut String) {
        use fmt::Write;
        // Writing into a String cannot fail.
        let _ = match self {
            PartKind::Int => write!(out, "{}", slots[0].cast_signed()),
            PartKind::Uint => write!(out, "{}", slots[0]),
            PartKind::Digest => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&slots[0].to_be_bytes());
                bytes[8..].copy_from_slice(&slots[1].to_be_bytes());
                write!(out, "{}", hex::encode(bytes))
            }
            PartKind::Word(words) => {
                let word = usize::try_from(slots[0])
                    .ok()
                    .and_then(|i| words.get(i))
                    .copied()
                    .unwrap_or("?");
                write!(out, "{word}")
            }
        };
    }

    /// Reads the part from its text into `slots`; `None` when the text is not one.
    pub(crate) fn parse(self, text: &str, slots: &mut [u64]) -> Option<()> {
        match self {
            PartKind::Int => slots[0] = text.parse::<i64>().ok()?.cast_unsigned(),
            PartKind::Uint => slots[0] = text.parse::<u64>().ok()?,
            PartKind::Digest => {
                let mut bytes = [0u8; 16];
                hex::decode_to_slice(text, &mut bytes).ok()?;
                let (high, low) = bytes.split_at(8);
                slots[0] = u64::from_be_bytes(high.try_into().ok()?);
                slots[1] = u64::from_be_bytes(low.try_into().ok()?);
            }
            PartKind::Word(words) => {
                slots[0] = u64::try_from(words.iter().position(|w| *w == text)?).ok()?;
            }
        }
        Some(())
    }
}

/// A keyed digest of text (the first 128 bits of HMAC-SHA256 under the namespace's
/// secret): how text enters a key. A key holding one is bounded in length, needs no
/// escaping, and shows nothing of the text (a name, an email, a SKU).
///
/// Made by [`KeySchema::digest`](crate::KeySchema::digest).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub(crate) [u8; 16]);

impl Digest {
    /// The digest as it appears in keys (32 hex digits).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`to_hex`](Self::to_hex)'s output.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Digest(bytes))
    }
}

impl fmt::Debug for Digest {
    /// The first 8 hex digits: enough to tell two apart in a log, never the whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..4]))
    }
}

/// A type whose values are a fixed list of words, usable as a key part (a channel, a
/// locale). Only these words can appear in the key, so an invalidation can enumerate
/// every key that differs only in them, without an index.
pub trait KeyWord: Copy + Send + Sync + 'static {
    /// Every word, each of ASCII letters, digits, `_` or `-`.
    const WORDS: &'static [&'static str];
    /// The value's position in [`WORDS`](Self::WORDS).
    fn index(self) -> usize;
    /// The value at `index` in [`WORDS`](Self::WORDS).
    fn from_index(index: usize) -> Option<Self>;
}

/// A value that can be one part of a key.
pub trait KeyPart: Copy + Send + Sync + 'static {
    /// How it is written.
    const KIND: PartKind;
    /// Packs it into `slots` (as many as its kind takes).
    fn pack(self, slots: &mut [u64]);
    /// Unpacks it from `slots`.
    fn unpack(slots: &[u64]) -> Option<Self>;
}

impl KeyPart for i64 {
    const KIND: PartKind = PartKind::Int;
    fn pack(self, slots: &mut [u64]) {
        slots[0] = self.cast_unsigned();
    }
    fn unpack(slots: &[u64]) -> Option<Self> {
        Some(slots[0].cast_signed())
    }
}

impl KeyPart for u64 {
    const KIND: PartKind = PartKind::Uint;
    fn pack(self, slots: &mut [u64]) {
        slots[0] = self;
    }
    fn unpack(slots: &[u64]) -> Option<Self> {
        Some(slots[0])
    }
}

impl KeyPart for u32 {
    const KIND: PartKind = PartKind::Uint;
    fn pack(self, slots: &mut [u64]) {
        slots[0] = u64::from(self);
    }
    fn unpack(slots: &[u64]) -> Option<Self> {
        u32::try_from(slots[0]).ok()
    }
}

impl KeyPart for Digest {
    const KIND: PartKind = PartKind::Digest;
    fn pack(self, slots: &mut [u64]) {
        let (high, low) = self.0.split_at(8);
        // Both halves are 8 bytes long.
        slots[0] = u64::from_be_bytes(high.try_into().unwrap_or_default());
        slots[1] = u64::from_be_bytes(low.try_into().unwrap_or_default());
    }
    fn unpack(slots: &[u64]) -> Option<Self> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&slots[0].to_be_bytes());
        bytes[8..].copy_from_slice(&slots[1].to_be_bytes());
        Some(Digest(bytes))
    }
}

impl<W: KeyWord> KeyPart for W {
    const KIND: PartKind = PartKind::Word(W::WORDS);
    fn pack(self, slots: &mut [u64]) {
        slots[0] = self.index() as u64;
    }
    fn unpack(slots: &[u64]) -> Option<Self> {
        W::from_index(usize::try_from(slots[0]).ok()?)
    }
}

/// The parts of one kind of key: a single [`KeyPart`], or a tuple of up to four (a
/// [`Digest`] counts two of the four slots).
pub trait KeyParts: Copy + Send + Sync + 'static {
    /// The kind of each part, in order.
    const KINDS: &'static [PartKind];
    /// Packs the parts into a key's slots.
    fn pack(self) -> [u64; SLOTS];
    /// Unpacks them from a key's slots.
    fn unpack(slots: &[u64; SLOTS]) -> Option<Self>;
}

impl<A: KeyPart> KeyParts for A {
    const KINDS: &'static [PartKind] = &[A::KIND];
    fn pack(self) -> [u64; SLOTS] {
        let mut slots = [0; SLOTS];
        self.pack(&mut slots);
        slots
    }
    fn unpack(slots: &[u64; SLOTS]) -> Option<Self> {
        A::unpack(slots)
    }
}

macro_rules! tuple_parts {
    ($($part:ident),+) => {
        impl<$($part: KeyPart),+> KeyParts for ($($part,)+) {
            const KINDS: &'static [PartKind] = &[$($part::KIND),+];
            #[allow(non_snake_case, unused_assignments)]
            fn pack(self) -> [u64; SLOTS] {
                let ($($part,)+) = self;
                let mut slots = [0; SLOTS];
                let mut at = 0;
                $(
                    // A declaration whose parts take more than `SLOTS` is refused when
                    // the schema is built, so no key of it is ever packed.
                    if at + $part::KIND.slots() <= SLOTS {
                        $part.pack(&mut slots[at..]);
                    }
                    at += $part::KIND.slots();
                )+
                slots
            }
            #[allow(unused_assignments)]
            fn unpack(slots: &[u64; SLOTS]) -> Option<Self> {
                let mut at = 0;
                Some(($({
                    let part = $part::unpack(slots.get(at..)?)?;
                    at += $part::KIND.slots();
                    part
                },)+))
            }
        }
    };
}

tuple_parts!(A, B);
tuple_parts!(A, B, C);
tuple_parts!(A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_schema::Size;

    #[test]
    fn parts_pack_and_unpack() {
        let digest = Digest([7; 16]);
        let parts = (digest, -3i64, Size::Large);
        assert_eq!(<(Digest, i64, Size)>::unpack(&parts.pack()), Some(parts));
        assert_eq!(<(i64, u32, u32)>::KINDS.len(), 3);
        assert_eq!(<i64 as KeyParts>::unpack(&KeyParts::pack(42i64)), Some(42));
    }

    #[test]
    fn every_kind_renders_and_parses_back() {
        let cases: [(PartKind, &[u64], &str); 4] = [
            (PartKind::Int, &[(-5i64).cast_unsigned()], "-5"),
            (PartKind::Uint, &[20], "20"),
            (PartKind::Word(Size::WORDS), &[1], "large"),
            (
                PartKind::Digest,
                &[0x0102_0304_0506_0708, 0x090a_0b0c_0d0e_0f10],
                "0102030405060708090a0b0c0d0e0f10",
            ),
        ];
        for (kind, slots, text) in cases {
            let mut out = String::new();
            kind.render(slots, &mut out);
            assert_eq!(out, text);
            let mut back = [0u64; 2];
            kind.parse(text, &mut back).unwrap();
            assert_eq!(&back[..kind.slots()], slots);
        }
        let mut slot = [0u64; 2];
        assert!(
            PartKind::Word(Size::WORDS)
                .parse("medium", &mut slot)
                .is_none()
        );
        assert!(PartKind::Int.parse("x", &mut slot).is_none());
        assert!(PartKind::Digest.parse("zz", &mut slot).is_none());
    }
}
