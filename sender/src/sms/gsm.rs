//! Segment counting as carriers do it (docs/TWILIO.md §8).
//!
//! A message is GSM-7 when every character is in the GSM 03.38 basic set or
//! its extension table, else UCS-2 as a whole. One segment holds 160 septets
//! (GSM-7) or 70 UTF-16 units (UCS-2); a multipart message loses 6 octets
//! per segment to the concatenation header, leaving 153 / 67. Extension
//! characters (ESC + char) take 2 septets and surrogate pairs 2 units, and
//! neither is ever split across segments: it moves to the next one.
//!
//! Twilio's calculator leaves 66 (not 67) UCS-2 units in the first part of a
//! multipart message; we count 67 like the carriers (and like `sms_splitter`).

use std::fmt;

/// How a message is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }

    /// Octets (bits) per unit: a septet or a UTF-16 code unit.
    fn unit_bits(self) -> usize {
        match self {
            Encoding::Gsm7 => 7,
            Encoding::Ucs2 => 16,
        }
    }

    /// Units in a single-part message, and per part of a multipart one.
    fn capacity(self) -> (usize, usize) {
        match self {
            Encoding::Gsm7 => (160, 153),
            Encoding::Ucs2 => (70, 67),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a text costs on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    /// 0 for an empty text.
    pub segments: u32,
}

/// The 6-octet user data header of each part of a multipart message.
const UDH_BITS: usize = 48;

impl Count {
    /// The message's bits without headers (Twilio calculator's `totalSize`).
    pub fn bits(&self) -> usize {
        self.units * self.encoding.unit_bits()
    }

    /// The bits with the concatenation headers of a multipart message.
    pub fn bits_with_headers(&self) -> usize {
        let headers = if self.segments > 1 { UDH_BITS * self.segments as usize } else { 0 };
        self.bits() + headers
    }
}

/// Whether `c` is in the GSM 03.38 basic character set.
pub fn is_gsm_basic(c: char) -> bool {
    matches!(c,
        '\n' | '\r' | ' '..='_' | 'a'..='z'
        | '¡' | '£' | '¤' | '¥' | '§' | '¿'
        | 'Ä' | 'Å' | 'Æ' | 'Ç' | 'É' | 'Ñ' | 'Ö' | 'Ø' | 'Ü' | 'ß'
        | 'à' | 'ä' | 'å' | 'æ' | 'è' | 'é' | 'ì' | 'ñ' | 'ò' | 'ö' | 'ø' | 'ù' | 'ü'
        | 'Γ' | 'Δ' | 'Θ' | 'Λ' | 'Ξ' | 'Π' | 'Σ' | 'Φ' | 'Ψ' | 'Ω')
        // ' '..='_' covers space to underscore, but four of those are
        // extension characters, not basic ones.
        && !is_gsm_extension(c)
}

/// Whether `c` is in the GSM 03.38 extension table (ESC + char, 2 septets).
pub fn is_gsm_extension(c: char) -> bool {
    matches!(c, '\u{000C}' | '^' | '{' | '}' | '\\' | '[' | ']' | '~' | '|' | '€')
}

pub fn is_gsm(c: char) -> bool {
    is_gsm_basic(c) || is_gsm_extension(c)
}

/// Whether the whole text can go as GSM-7.
pub fn is_gsm_text(text: &str) -> bool {
    text.chars().all(is_gsm)
}

/// What one character costs in `encoding`.
pub fn units_of(c: char, encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gsm7 if is_gsm_extension(c) => 2,
        Encoding::Gsm7 => 1,
        Encoding::Ucs2 => c.len_utf16(),
    }
}

/// Counts `text` the way carriers do.
pub fn count(text: &str) -> Count {
    let encoding = if is_gsm_text(text) { Encoding::Gsm7 } else { Encoding::Ucs2 };
    let units: usize = text.chars().map(|c| units_of(c, encoding)).sum();
    let (single, multi) = encoding.capacity();
    let segments = if units == 0 {
        0
    } else if units <= single {
        1
    } else {
        // A character that does not fit whole moves to the next segment.
        let mut segments = 1u32;
        let mut fill = 0usize;
        for c in text.chars() {
            let cost = units_of(c, encoding);
            if fill + cost > multi {
                segments += 1;
                fill = 0;
            }
            fill += cost;
        }
        segments
    };
    Count { encoding, units, segments }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"1234567890" * 16`, the calculator's test string.
    fn s() -> String {
        "1234567890".repeat(16)
    }

    #[test]
    fn known_answer_gsm_one_segment_with_an_extension_char() {
        let text = format!("{{{}", &s()[1..159]);
        let c = count(&text);
        assert_eq!((c.encoding, c.segments, c.units), (Encoding::Gsm7, 1, 160));
        assert_eq!(c.bits(), 1120);
    }

    #[test]
    fn known_answer_gsm_two_segments_with_an_extension_char() {
        let text = format!("{{{}", &s()[1..160]);
        let c = count(&text);
        assert_eq!((c.encoding, c.segments), (Encoding::Gsm7, 2));
        assert_eq!((c.bits(), c.bits_with_headers()), (1127, 1223));
    }

    #[test]
    fn known_answer_ucs2_one_segment_with_an_emoji() {
        let text = format!("😜{}", &s()[1..69]);
        let c = count(&text);
        assert_eq!((c.encoding, c.segments, c.units), (Encoding::Ucs2, 1, 70));
    }

    #[test]
    fn known_answer_ucs2_two_segments_with_an_emoji() {
        let text = format!("😜{}", &s()[1..70]);
        let c = count(&text);
        assert_eq!((c.encoding, c.segments), (Encoding::Ucs2, 2));
        assert_eq!((c.bits(), c.bits_with_headers()), (1136, 1232));
    }

    #[test]
    fn plain_ascii_fits_160_then_153_per_part() {
        assert_eq!(count(&"a".repeat(160)).segments, 1);
        assert_eq!(count(&"a".repeat(161)).segments, 2);
        assert_eq!(count(&"a".repeat(306)).segments, 2);
        assert_eq!(count(&"a".repeat(307)).segments, 3);
        assert_eq!(count("").segments, 0);
    }

    #[test]
    fn an_extension_char_never_straddles_two_segments() {
        // 152 septets, then '€' (2) does not fit in the first part's 153.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(10));
        let c = count(&text);
        assert_eq!(c.units, 164);
        assert_eq!(c.segments, 2);
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(150));
        // Parts: 152 | € + 150 = 152.
        assert_eq!(count(&text).segments, 2);
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(152));
        assert_eq!(count(&text).segments, 3);
    }

    #[test]
    fn a_surrogate_pair_never_straddles_two_segments() {
        let text = format!("{}😀{}", "a".repeat(66), "b".repeat(10));
        let c = count(&text);
        assert_eq!((c.encoding, c.units, c.segments), (Encoding::Ucs2, 78, 2));
        let text = format!("{}😀{}", "a".repeat(66), "b".repeat(65));
        assert_eq!(count(&text).segments, 2);
        let text = format!("{}😀{}", "a".repeat(66), "b".repeat(66));
        assert_eq!(count(&text).segments, 3);
    }

    #[test]
    fn one_non_gsm_char_makes_the_whole_text_ucs2() {
        assert_eq!(count("Hello").encoding, Encoding::Gsm7);
        assert_eq!(count("Hello ç").encoding, Encoding::Ucs2);
        assert_eq!(count("it’s").encoding, Encoding::Ucs2);
        assert_eq!(count("`code`").encoding, Encoding::Ucs2);
        assert_eq!(count("ΔΩ ÄÖÜ ß é £¥ @_$").encoding, Encoding::Gsm7);
    }

    #[test]
    fn extension_chars_count_two_septets() {
        let c = count("[]{}~|^\\€");
        assert_eq!((c.encoding, c.units), (Encoding::Gsm7, 18));
        assert!(!is_gsm_basic('['));
        assert!(is_gsm_basic('_'));
        assert!(is_gsm_basic('@'));
    }
}
