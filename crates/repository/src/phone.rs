//! Phone numbers, normalized to E.164 by libphonenumber's rules (the `phonenumber` crate).

use std::fmt;
use std::sync::Arc;

use phonenumber::{Mode, country};
use sha2::{Digest, Sha256};

/// Why a string is not a usable phone number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// It holds something other than digits, a leading `+`, spaces, dashes, dots and
    /// parentheses: a letter (libphonenumber would read keypad letters as digits), a
    /// `tel:` prefix, an extension, a control character, an emoji.
    #[error("may hold only digits, a leading +, spaces, dashes, dots and parentheses")]
    Characters,
    /// It is longer than [`Phone::MAX_INPUT_LEN`] characters.
    #[error("longer than {} characters", Phone::MAX_INPUT_LEN)]
    TooLong,
    /// It does not parse as a phone number at all.
    #[error("not a phone number")]
    Unparseable,
    /// It parses, but no such number can exist (wrong length, unassigned range).
    #[error("not a valid phone number")]
    Invalid,
}

/// A phone number in E.164 (`+16462000042`), checked when built.
///
/// `Debug` and `Display` print a short hash, not the number, so a stray `?phone` in a log
/// line leaks nothing; [`Phone::as_str`] gives the number itself. Cloning it does not
/// allocate (a read's loader takes a clone, even when the read is an L1 hit).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone(Arc<str>);

impl Phone {
    /// Default region for numbers written without a country code.
    pub const DEFAULT_REGION: country::Id = country::Id::US;

    /// Longest input accepted: E.164 has at most 15 digits, and this leaves room for any
    /// way of writing them out.
    pub const MAX_INPUT_LEN: usize = 40;

    /// Normalizes `input` (E.164, or a national format of the default region): digits, with
    /// an optional leading `+`, spaces, dashes, dots and parentheses, nothing else.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        check_characters(input)?;
        let number = phonenumber::parse(Some(Self::DEFAULT_REGION), input.trim())
            .map_err(|_| PhoneError::Unparseable)?;
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::Invalid);
        }
        Ok(Phone(number.format().mode(Mode::E164).to_string().into()))
    }

    /// The number in E.164.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a phone number may be written with, before libphonenumber reads it: it accepts far
/// more (keypad letters, `tel:` URIs, extensions, trailing garbage), which no caller of this
/// service means.
fn check_characters(input: &str) -> Result<(), PhoneError> {
    if input.len() > Phone::MAX_INPUT_LEN {
        return Err(PhoneError::TooLong);
    }
    let number = input.trim_start_matches(' ');
    let number = number.strip_prefix('+').unwrap_or(number);
    if number
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')'))
    {
        Ok(())
    } else {
        Err(PhoneError::Characters)
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = Sha256::digest(self.0.as_bytes());
        write!(f, "phone#{}", hex::encode(&digest[..4]))
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_normalize_to_e164() {
        for input in [
            "+16462000042",
            "+1 646 200 0042",
            "(646) 200-0042",
            "646.200.0042",
            " +1-646-200-0042 ",
        ] {
            assert_eq!(
                Phone::parse(input).unwrap().as_str(),
                "+16462000042",
                "{input}"
            );
        }
        assert_eq!(
            Phone::parse("+18005550001").unwrap().as_str(),
            "+18005550001"
        );
        assert_eq!(
            Phone::parse("+442079460958").unwrap().as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert_eq!(Phone::parse("hello").unwrap_err(), PhoneError::Characters);
        assert_eq!(Phone::parse("").unwrap_err(), PhoneError::Unparseable);
        assert_eq!(Phone::parse("+").unwrap_err(), PhoneError::Unparseable);
        assert!(Phone::parse("+1 123").is_err());
        assert!(Phone::parse("+1646200004299999").is_err());
    }

    #[test]
    fn only_digits_and_separators_are_read() {
        for input in [
            "+1646ABC0000",
            "1-800-FLOWERS",
            "tel:+16462000042",
            "+16462000042😀",
            "+16462000042\0",
            "\0+16462000042",
            "+16462000042;ext=1",
            "+1646200\t0042",
            "1+6462000042",
            "++16462000042",
            "+16462000042\n",
        ] {
            assert_eq!(
                Phone::parse(input).unwrap_err(),
                PhoneError::Characters,
                "{input:?}"
            );
        }
        let long = format!("+1646200004{}2", " ".repeat(Phone::MAX_INPUT_LEN));
        assert_eq!(Phone::parse(&long).unwrap_err(), PhoneError::TooLong);
    }

    #[test]
    fn debug_and_display_hide_the_number() {
        let phone = Phone::parse("+16462000042").unwrap();
        for text in [format!("{phone:?}"), format!("{phone}")] {
            assert!(!text.contains("6462000042"), "{text}");
            assert!(text.starts_with("phone#"));
        }
    }

    #[test]
    fn every_demo_number_is_valid() {
        for i in [1, 42, 100] {
            assert!(Phone::parse(&format!("+1800555{i:04}")).is_ok(), "org {i}");
        }
        for j in [0, 42, 99_999] {
            assert!(Phone::parse(&format!("+16462{j:06}")).is_ok(), "lead {j}");
        }
    }
}
