//! What may reach a log line, a dead letter or an error message (docs/ARCHITECTURE.md
//! invariant 5): phone numbers masked, third-party text masked and clipped.
//!
//! - [`mask`]: one number (or number-like string), its middle hidden.
//! - [`mask_numbers`]: every phone number inside a text we did not write
//!   (Twilio's error messages, a model's or an agent's answer, an HTTP
//!   client's error with its URL), masked with [`mask`]; dates, versions,
//!   times, ports, SIDs, codes and URL path segments left readable.
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

/// The fewest digits of a number written with its `+` (E.164's shortest).
const MIN_DIGITS_PLUS: usize = 7;
/// The fewest and most digits of a number written without `+`: a national
/// number with its area code (`4155550100`, `(415) 555-0100`) or an
/// international one without the sign (`14155550100`). Shorter digit runs
/// without `+` are counts, codes, amounts and sequence numbers far more
/// often than phone numbers, and nothing smsgate writes quotes a number
/// without its `+`.
const BARE_DIGITS: std::ops::RangeInclusive<usize> = 10..=15;

/// Masks every phone number inside `text`, recognised the way one looks:
///
/// - a `+` (or its URL encoding `%2B`) and at least seven digits, which may
///   be grouped with spaces, dashes, dots or parentheses
///   (`+1 (415) 555-0100`, `To=%2B14155550100`): always a number;
/// - without `+`, 10 to 15 digits, bare or grouped the same way
///   (`4155550100`, `415.555.0199`, `(415) 555-0100`), unless the run is
///   part of something else: a word or id (`AC…`, `SM…`, `req_…`), a URL
///   path segment (`/2010-04-01/`), a time or a port (`:4222`, `10:30`),
///   a date (`2026-12-06 10…`), or an IP address.
///
/// A number becomes `mask("+<digits>")`; everything else is left alone.
pub fn mask_numbers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if bytes.iter().filter(|b| b.is_ascii_digit()).count() < MIN_DIGITS_PLUS {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let Some((run_start, plus)) = candidate(bytes, i) else {
            i += 1;
            continue;
        };
        let run = number_run(bytes, run_start);
        if run.end == run_start {
            i += 1;
            continue;
        }
        let phone = if plus { run.digits.len() >= MIN_DIGITS_PLUS } else { bare_phone(bytes, i, &run) };
        if phone {
            out.push_str(&text[copied..i]);
            out.push_str(&mask(&format!("+{}", run.digits)));
            copied = run.end;
        }
        // Skip the whole run either way, so its inner digits do not start another.
        i = run.end.max(i + 1);
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether a number may start at `i`: where its digits begin and whether
/// it is written with `+` (or `%2B`). Never inside a word, so ids such as
/// `SM1234567…` or `AC00…` stay whole.
fn candidate(bytes: &[u8], i: usize) -> Option<(usize, bool)> {
    let b = bytes[i];
    let after_word = i > 0 && is_word_byte(bytes[i - 1]);
    let opens = |at: usize| bytes.get(at).is_some_and(|c| c.is_ascii_digit() || *c == b'(');
    if b == b'+' && opens(i + 1) {
        return Some((i + 1, true));
    }
    // `%2B` is preceded by whatever the URL has (`=`, `/`), never a word.
    if b == b'%' && bytes.get(i + 1) == Some(&b'2') && bytes.get(i + 2).is_some_and(|c| c.eq_ignore_ascii_case(&b'b')) {
        return opens(i + 3).then_some((i + 3, true));
    }
    if after_word {
        return None;
    }
    (b.is_ascii_digit() || (b == b'(' && opens(i + 1))).then_some((i, false))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A number-like run: digits, and single separators between them.
struct Run {
    end: usize,
    digits: String,
    /// Digits per group, in order.
    groups: Vec<usize>,
    /// The separator after each group but the last (`(` and `)` included).
    separators: Vec<u8>,
}

/// From `start`: the end of the number-like run (separators between digits
/// only), its digits and how they are grouped.
fn number_run(bytes: &[u8], start: usize) -> Run {
    let mut run = Run { end: start, digits: String::new(), groups: Vec::new(), separators: Vec::new() };
    let mut group = 0;
    // Parentheses opened in the run and not yet closed.
    let mut open = 0;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            run.digits.push(char::from(b));
            group += 1;
            i += 1;
            run.end = i;
        } else if matches!(b, b' ' | b'-' | b'.' | b'(' | b')') && i + 1 < bytes.len() {
            // A separator counts only when more of the number follows it.
            let next = bytes[i + 1];
            if next.is_ascii_digit() || (b != b'(' && next == b'(') || (b == b')' && next == b' ') {
                if group > 0 {
                    run.groups.push(group);
                    run.separators.push(b);
                    group = 0;
                }
                match b {
                    b'(' => open += 1,
                    b')' => open -= 1,
                    _ => {}
                }
                i += 1;
            } else {
                break;
            }
        } else {
            break;
        }
    }
    if group > 0 {
        run.groups.push(group);
    }
    // Separators recorded after the last group belong to no gap.
    run.separators.truncate(run.groups.len().saturating_sub(1));
    // A closing parenthesis belongs to the number only when it opened one.
    if open > 0 && bytes.get(run.end) == Some(&b')') {
        run.end += 1;
    }
    run
}

/// Whether a run written without `+` (starting at `at`) is a phone number
/// rather than part of something else.
fn bare_phone(bytes: &[u8], at: usize, run: &Run) -> bool {
    if !BARE_DIGITS.contains(&run.digits.len()) {
        return false;
    }
    let before = at.checked_sub(1).map(|p| bytes[p]);
    let after = bytes.get(run.end).copied();
    let after_next = bytes.get(run.end + 1).copied();
    // A word or id goes on (`…0100abc`); a URL path segment sits between
    // slashes; a time goes on after a colon; a decimal after a dot or a comma.
    if after.is_some_and(is_word_byte) || before == Some(b'/') || after == Some(b'/') {
        return false;
    }
    if matches!(after, Some(b':' | b'.' | b',')) && after_next.is_some_and(|c| c.is_ascii_digit()) {
        return false;
    }
    // Unix time in seconds or milliseconds (`1733481801`): ten or thirteen
    // digits starting with 1, which no phone number written without `+`
    // has (a North American number's area code never starts with 0 or 1,
    // and with its country code it has eleven digits).
    if run.groups.len() == 1 && matches!(run.digits.len(), 10 | 13) && run.digits.starts_with('1') {
        return false;
    }
    let dots = run.separators.iter().filter(|s| **s == b'.').count();
    // Dots group a number only on their own (`415.555.0199`), never beside
    // other separators, and four short dotted groups are an IP address.
    if dots > 0 && dots != run.separators.len() {
        return false;
    }
    if dots == 3 && run.groups.iter().all(|g| *g <= 3) {
        return false;
    }
    // One dot between two groups is a decimal (an amount, a ratio).
    if dots == 1 && run.groups.len() == 2 {
        return false;
    }
    !has_date(run)
}

/// A date inside the run: `2026-12-06`, `2026/12/06`, `06.12.2026`, `12/06/2026`.
fn has_date(run: &Run) -> bool {
    let g = &run.groups;
    let s = &run.separators;
    (0..g.len().saturating_sub(2)).any(|k| {
        let same_sep = s[k] == s[k + 1] && matches!(s[k], b'-' | b'/' | b'.');
        let year_first = g[k] == 4 && g[k + 1] <= 2 && g[k + 2] <= 2;
        let year_last = g[k] <= 2 && g[k + 1] <= 2 && g[k + 2] == 4;
        same_sep && (year_first || year_last)
    })
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

    /// Real texts, as Twilio, reqwest, NATS and smsgate itself write them,
    /// and what may be logged of each: every phone number masked, nothing
    /// else touched.
    #[test]
    fn masks_phone_numbers_and_nothing_else_in_real_texts() {
        let table: &[(&str, &str)] = &[
            // Twilio's error documents (message, more_info).
            (
                "The 'To' number +14155550100 is not a valid phone number.",
                "The 'To' number +1415***0100 is not a valid phone number.",
            ),
            (
                "Attempt to send to unsubscribed recipient +447700900123",
                "Attempt to send to unsubscribed recipient +4477***0123",
            ),
            (
                "The From phone number +15005550006 is not a valid, SMS-capable inbound phone number or short code for your account.",
                "The From phone number +1500***0006 is not a valid, SMS-capable inbound phone number or short code for your account.",
            ),
            (
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +8613812345678.",
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +8613***5678.",
            ),
            (
                "Twilio answered 400 (error 21211): see https://www.twilio.com/docs/errors/21211",
                "Twilio answered 400 (error 21211): see https://www.twilio.com/docs/errors/21211",
            ),
            (
                "Twilio answered 429 (error 20429): Too Many Requests; Retry-After: 30",
                "Twilio answered 429 (error 20429): Too Many Requests; Retry-After: 30",
            ),
            (
                "The requested resource /2010-04-01/Accounts/AC00000000000000000000000000000000/Messages/SM0123456789abcdef0123456789abcdef.json was not found",
                "The requested resource /2010-04-01/Accounts/AC00000000000000000000000000000000/Messages/SM0123456789abcdef0123456789abcdef.json was not found",
            ),
            // reqwest's errors carry the URL: the API version is not a number,
            // the PhoneNumber query parameter is.
            (
                "error sending request for url (https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000.json): client error (Connect): dns error: failed to lookup address information: Temporary failure in name resolution",
                "error sending request for url (https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000.json): client error (Connect): dns error: failed to lookup address information: Temporary failure in name resolution",
            ),
            (
                "error sending request for url (https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000/IncomingPhoneNumbers.json?PhoneNumber=%2B14155550100): operation timed out",
                "error sending request for url (https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000/IncomingPhoneNumbers.json?PhoneNumber=+1415***0100): operation timed out",
            ),
            (
                "error sending request for url (http://127.0.0.1:43117/v1/chat/completions): client error (Connect): tcp connect error: Connection refused (os error 111)",
                "error sending request for url (http://127.0.0.1:43117/v1/chat/completions): client error (Connect): tcp connect error: Connection refused (os error 111)",
            ),
            (
                "HTTP status client error (404 Not Found) for url (http://192.168.100.200:8080/2025-01-31/agent)",
                "HTTP status client error (404 Not Found) for url (http://192.168.100.200:8080/2025-01-31/agent)",
            ),
            // NATS.
            (
                "nats: IO error: Connection refused (os error 111), failed to connect to nats://127.0.0.1:4222 after 3 attempts",
                "nats: IO error: Connection refused (os error 111), failed to connect to nats://127.0.0.1:4222 after 3 attempts",
            ),
            (
                "jetstream error: stream not found (code 404, error code 10059)",
                "jetstream error: stream not found (code 404, error code 10059)",
            ),
            (
                "failed to publish to smsgate.history.local.14155550100: timed out after 5s",
                "failed to publish to smsgate.history.local.+1415***0100: timed out after 5s",
            ),
            // Dates, times, versions, amounts, sizes.
            (
                "2026-12-06 23:03:21 UTC: rate limited until 2026-12-06T23:04:21.123456789Z",
                "2026-12-06 23:03:21 UTC: rate limited until 2026-12-06T23:04:21.123456789Z",
            ),
            (
                "nats-server 2.10.27 (go1.22.5), smsgate 0.13.5, price -0.00750 USD, cost 1234567890.50",
                "nats-server 2.10.27 (go1.22.5), smsgate 0.13.5, price -0.00750 USD, cost 1234567890.50",
            ),
            // Numbers written by people or models, with and without `+`.
            (
                "Call +1 (415) 555-0100 or (415) 555-0199, or text 415.555.0177",
                "Call +1415***0100 or +41***99, or text +41***77",
            ),
            ("my number is 4155550100, call me", "my number is +41***00, call me"),
            ("UK: +44 20 7946 0958; DE: 0049 30 1234 5678", "UK: +4420***0958; DE: +0049***5678"),
            // smsgate's own messages, several numbers in one.
            (
                "reply to +14155550100 from +15005550006 not sent: +14155550100 opted out (21610) at 2026-12-06 10:30",
                "reply to +1415***0100 from +1500***0006 not sent: +1415***0100 opted out (21610) at 2026-12-06 10:30",
            ),
            (
                "dead letter 42 on smsgate.dead.sender.local: outbound api.k-1 to +14155550100 after 5 attempts (retry in 30 s)",
                "dead letter 42 on smsgate.dead.sender.local: outbound api.k-1 to +1415***0100 after 5 attempts (retry in 30 s)",
            ),
            (
                "webhook-timestamp 1733481801 is too old; MessageSid SM0123456789abcdef0123456789abcdef from whatsapp:+14155550100",
                "webhook-timestamp 1733481801 is too old; MessageSid SM0123456789abcdef0123456789abcdef from whatsapp:+1415***0100",
            ),
        ];
        for (text, expected) in table {
            assert_eq!(mask_numbers(text), *expected, "\n  text: {text}");
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
