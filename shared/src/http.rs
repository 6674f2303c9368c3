//! Small HTTP helpers both listeners use (the webhook and the admin side).

use std::borrow::Cow;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

/// SHA-256 of a secret token. Tokens are compared as digests in constant
/// time, so neither their content nor their length shows in the timing.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `Content-Type` is `mime` (parameters such as `charset` aside).
pub fn has_media_type(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(mime))
}

/// A posted form's parameters, in order, decoded exactly as
/// `form_urlencoded::parse` decodes them (`+` is a space, `%XX` a byte, a
/// `%` without two hex digits stays, bytes that are not UTF-8 become U+FFFD,
/// empty pairs are skipped), in one pass: a value with nothing to decode is
/// borrowed from the body. Every Twilio webhook goes through this before its
/// signature is checked; `form_urlencoded` makes three passes per value
/// (plus signs, percent signs, then UTF-8) and cost ingress about 60 % more
/// instructions here (deploy/BENCHMARKS.md).
pub fn parse_form(body: &[u8]) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut out = Vec::with_capacity(24);
    for pair in body.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        out.push((decode_form_part(name), decode_form_part(value)));
    }
    out
}

fn decode_form_part(raw: &[u8]) -> Cow<'_, str> {
    let borrowed = || match std::str::from_utf8(raw) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(raw),
    };
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return borrowed();
    }
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16)).map(|d| d as u8);
    let mut bytes = Vec::with_capacity(raw.len());
    let mut changed = false;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => {
                bytes.push(b' ');
                changed = true;
            }
            b'%' => match (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                (Some(high), Some(low)) => {
                    bytes.push(high << 4 | low);
                    changed = true;
                    i += 2;
                }
                _ => bytes.push(b'%'),
            },
            b => bytes.push(b),
        }
        i += 1;
    }
    if !changed {
        // Only stray `%`s: nothing was decoded.
        return borrowed();
    }
    match String::from_utf8(bytes) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_form` gives what `form_urlencoded::parse` gives, borrowed or
    /// not, on Twilio-like forms and on every odd input a small generator
    /// makes (plus signs, stray and truncated `%`, broken UTF-8, empty pairs).
    #[test]
    fn parse_form_decodes_as_form_urlencoded_does() {
        let fixed: [&[u8]; 9] = [
            b"From=%2B14155550100&To=%2B15005550006&Body=Hello+there%21&NumMedia=0",
            b"a=1&&b&=c&d=",
            b"x=%&y=%2&z=%zz&w=%2b%2B+%20",
            b"k=%C3%A9t%C3%A9&bad=%FF%FE&cut=%E2%82",
            b"",
            b"&&&",
            b"=",
            b"Body=\xff\xfe+raw",
            b"n%3Dm=v%26w",
        ];
        let alphabet: &[u8] = b"ab=&+%2Fc9\xc3\xa9\xff";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut generated = Vec::new();
        for _ in 0..5000 {
            let len = (seed % 24) as usize;
            let mut input = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            generated.push(input);
        }
        for input in fixed.iter().copied().chain(generated.iter().map(Vec::as_slice)) {
            let ours = parse_form(input);
            let theirs: Vec<_> = form_urlencoded::parse(input).collect();
            assert_eq!(ours, theirs, "input {:?}", String::from_utf8_lossy(input));
            for ((k, v), (tk, tv)) in ours.iter().zip(&theirs) {
                assert_eq!(matches!(k, Cow::Borrowed(_)), matches!(tk, Cow::Borrowed(_)), "{input:?}");
                assert_eq!(matches!(v, Cow::Borrowed(_)), matches!(tv, Cow::Borrowed(_)), "{input:?}");
            }
        }
    }
}
