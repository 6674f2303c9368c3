//! Domain newtypes: a `String` never reaches code that needs a valid number,
//! SID or channel id. Each has a private field and a parsing constructor.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value could not be parsed into a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ParseError {
    pub what: &'static str,
    pub reason: String,
}

fn parse_error(what: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError { what, reason: reason.into() }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A phone number in E.164 form: `+`, a non-zero digit, 7 to 15 digits in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);
string_newtype!(E164);

impl E164 {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match Self::problem(s) {
            None => Ok(Self(s.to_owned())),
            // The value is masked: this error may reach a log line.
            Some(problem) => Err(parse_error("E.164 number", format!("{:?} {problem}", mask(s)))),
        }
    }

    /// What is wrong with `s` as an E.164 number, in words that do not
    /// quote it (so the CLI can show what the operator typed, and logs the
    /// masked value); None when it is one.
    pub fn problem(s: &str) -> Option<&'static str> {
        let Some(digits) = s.strip_prefix('+') else { return Some("must start with '+'") };
        let ok =
            (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if ok { None } else { Some("must be '+' and 7 to 15 digits, not starting with 0") }
    }

    /// The number with its middle hidden, for logs: `+1415***4567`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }

    /// The digits without `+`, usable as a NATS subject token.
    pub fn subject_token(&self) -> &str {
        &self.0[1..]
    }

    /// The country calling code (`1`, `44`, `353`): ITU's codes are
    /// prefix-free, zone 1 and 7 have one digit, the two-digit ones are
    /// listed, every other code has three.
    pub fn calling_code(&self) -> &str {
        const TWO_DIGIT: [&str; 44] = [
            "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
            "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
            "86", "90", "91", "92", "93", "94", "95", "98",
        ];
        let digits = self.subject_token();
        let len = if digits.starts_with('1') || digits.starts_with('7') {
            1
        } else if TWO_DIGIT.contains(&&digits[..2]) {
            2
        } else {
            3
        };
        &digits[..len]
    }

    /// Inverse of [`E164::subject_token`].
    pub fn from_subject_token(token: &str) -> Result<Self, ParseError> {
        Self::parse(&format!("+{token}"))
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

use crate::redact::clip;
pub use crate::redact::mask;

/// A Twilio message SID (`SM…`/`MM…`, 34 characters). Also accepted: any
/// 2-64 character token of letters, digits, `_` and `-`, so that tests and
/// other channels' ids work, but never anything that would break a NATS
/// subject or header.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageSid(String);
string_newtype!(MessageSid);

impl MessageSid {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if is_token(s, 2, 64) {
            Ok(Self(s.to_owned()))
        } else {
            Err(parse_error("MessageSid", format!("{:?} is not 2-64 letters, digits, '_' or '-'", clip(s, 70))))
        }
    }
}

/// A Twilio call SID: `CA` and 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallSid(String);
string_newtype!(CallSid);

impl CallSid {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = s.len() == 34 && s.starts_with("CA") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(parse_error("CallSid", format!("{:?} is not CA and 32 hex digits", clip(s, 40))))
        }
    }
}

/// A channel id from the config: 1-64 letters, digits, `_` or `-` (it is a
/// NATS subject token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);
string_newtype!(ChannelId);

impl ChannelId {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if is_token(s, 1, 64) {
            Ok(Self(s.to_owned()))
        } else {
            Err(parse_error("channel_id", format!("{:?} must be 1-64 letters, digits, '_' or '-'", clip(s, 70))))
        }
    }
}

/// A Twilio Account SID: `AC` and 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountSid(String);
string_newtype!(AccountSid);

impl AccountSid {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(parse_error("AccountSid", format!("{:?} must be 'AC' followed by 32 hex digits", clip(s, 40))))
        }
    }
}

fn is_token(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164_and_rejects_local_forms() {
        assert!(E164::parse("+14155550100").is_ok());
        assert!(E164::parse("14155550100").is_err());
        assert!(E164::parse("+0415555").is_err());
        assert!(E164::parse("+1415555010a").is_err());
        assert!(E164::parse("+1234567890123456").is_err());
    }

    #[test]
    fn masks_the_middle_of_a_number() {
        assert_eq!(E164::parse("+14155554567").unwrap().masked(), "+1415***4567");
        assert_eq!(mask("12345"), "***");
        assert!(!format!("{:?}", E164::parse("+14155554567").unwrap()).contains("555"));
    }

    #[test]
    fn calling_codes_have_one_to_three_digits() {
        let code = |n: &str| E164::parse(n).unwrap().calling_code().to_owned();
        assert_eq!(code("+14155554567"), "1");
        assert_eq!(code("+447911123456"), "44");
        assert_eq!(code("+79161234567"), "7");
        assert_eq!(code("+353861234567"), "353");
        assert_eq!(code("+2348031234567"), "234");
    }

    #[test]
    fn subject_token_round_trips() {
        let n = E164::parse("+14155554567").unwrap();
        assert_eq!(E164::from_subject_token(n.subject_token()).unwrap(), n);
    }

    #[test]
    fn message_sid_refuses_subject_breaking_characters() {
        assert!(MessageSid::parse("SM0123456789abcdef0123456789abcdef").is_ok());
        assert!(MessageSid::parse("SM.1").is_err());
        assert!(MessageSid::parse("SM 1").is_err());
        assert!(MessageSid::parse("").is_err());
    }

    #[test]
    fn account_sid_needs_ac_and_32_hex() {
        assert!(AccountSid::parse("AC0123456789abcdef0123456789ABCDEF").is_ok());
        assert!(AccountSid::parse("AC0123").is_err());
        assert!(AccountSid::parse("SK0123456789abcdef0123456789abcdef").is_err());
    }
}
