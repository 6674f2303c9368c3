//! What may reach a log line, a dead letter or an error message (docs/ARCHITECTURE.md
//! invariant 5): phone numbers masked, third-party text masked and clipped.
//!
//! - [`mask`]: one number (or number-like string), its middle hidden.
//! - [`mask_numbers`]: every number inside a text we did not write (Twilio's
//!   error messages, a model's or an agent's answer), masked with [`mask`].
//! - [`clip`]: at most N characters, cut on a character boundary with `…`.
//!   Format precision (`{:.80}`) truncates only `str`s: on a `Display` of
//!   anything else it is silently ignored, so clip explicitly.
//! - [`third_party`]: the two together, the one call for foreign text.

use std::borrow::Cow;

/// Masks a phone-number-like string: `+1415***4567` for a full-length
/// number (12 characters or more), `+44***78` for a short one (9 to 11),
/// `***` for anything shorter. At least three digits are always hidden.
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let (head, tail) = match n {
        12.. => (5, 4),
        9..=11 => (3, 2),
        _ => return "***".to_owned(),
    };
    let head: String = chars[..head].iter().collect();
    let tail: String = chars[n - tail..].iter().collect();
    format!("{head}***{tail}")
}

/// The fewest digits a run must have to be treated as a phone number.
const MIN_DIGITS: usize = 7;

/// Masks every phone number inside `text`: a run that starts with `+` or a
/// digit, holds at least seven digits and may be written with spaces,
/// dashes, dots or parentheses between them (`+1 (415) 555-0100`), and is
/// not part of a longer word (so SIDs such as `SM1234567…` stay readable).
/// A number becomes `mask("+<digits>")`; what is not a number is left alone.
pub fn mask_numbers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if bytes.iter().filter(|b| b.is_ascii_digit()).count() < MIN_DIGITS {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let starts = (b == b'+' || b == b'(' || b.is_ascii_digit())
            && (i == 0 || !is_word_byte(bytes[i - 1]))
            && (b.is_ascii_digit() || bytes.get(i + 1).is_some_and(|c| c.is_ascii_digit() || *c == b'('));
        if !starts {
            i += 1;
            continue;
        }
        let (end, digits) = number_run(bytes, i);
        let followed_by_word = bytes.get(end).is_some_and(|c| is_word_byte(*c));
        if digits.len() >= MIN_DIGITS && !followed_by_word {
            out.push_str(&text[copied..i]);
            out.push_str(&mask(&format!("+{digits}")));
            copied = end;
            i = end;
        } else {
            // Skip the whole run, so its inner digits do not start another.
            i = end.max(i + 1);
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// From `start`: the end of the number-like run (separators between digits
/// only) and its digits.
fn number_run(bytes: &[u8], start: usize) -> (usize, String) {
    let mut digits = String::new();
    let mut end = start;
    let mut i = start;
    if bytes[i] == b'+' {
        i += 1;
    }
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            digits.push(char::from(b));
            i += 1;
            end = i;
        } else if matches!(b, b' ' | b'-' | b'.' | b'(' | b')') && i + 1 < bytes.len() {
            // A separator counts only when more of the number follows it.
            let next = bytes[i + 1];
            if next.is_ascii_digit() || (b != b'(' && next == b'(') || (b == b')' && next == b' ') {
                i += 1;
            } else {
                break;
            }
        } else {
            break;
        }
    }
    if bytes.get(end) == Some(&b')') {
        end += 1;
    }
    (end, digits)
}

/// At most `max` characters of `text`; a longer one is cut on a character
/// boundary and ends with `…`.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// Text from a third party (an error message, a model's answer), made fit
/// for a log line: numbers masked, at most `max` characters.
pub fn third_party(text: &str, max: usize) -> String {
    // Mask first: a cut could otherwise leave a number unrecognised.
    clip(&mask_numbers(text), max).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_middle_of_full_and_short_numbers() {
        assert_eq!(mask("+14155554567"), "+1415***4567");
        assert_eq!(mask("+4930123456"), "+49***56");
        assert_eq!(mask("+35312345"), "+35***45");
        assert_eq!(mask("12345"), "***");
    }

    #[test]
    fn masks_numbers_inside_twilio_error_messages() {
        let text = "The 'To' number +14155550100 is not a valid phone number.";
        assert_eq!(mask_numbers(text), "The 'To' number +1415***0100 is not a valid phone number.");
        let formatted = "Call +1 (415) 555-0100 or 415.555.0199 today";
        let masked = mask_numbers(formatted);
        assert!(!masked.contains("555"), "{masked}");
        assert!(masked.starts_with("Call +1415***0100 or +41***99"), "{masked}");
    }

    #[test]
    fn leaves_codes_sids_and_short_numbers_alone() {
        for text in [
            "error 21211: see https://www.twilio.com/docs/errors/21211",
            "SM0123456789abcdef0123456789abcdef failed",
            "retry in 30 s, attempt 3 of 5",
            "",
        ] {
            assert_eq!(mask_numbers(text), text);
        }
    }

    #[test]
    fn clips_on_character_boundaries() {
        assert_eq!(clip("héllo wörld", 5), "héllo…");
        assert_eq!(clip("short", 5), "short");
        assert_eq!(clip("😀😀😀", 2), "😀😀…");
        assert_eq!(third_party("to +14155550100 and more", 15), "to +1415***0100…");
    }
}
