//! Splitting a normalized reply into at most `max_parts` messages.
//!
//! Lengths are counted in UTF-16 units (an emoji counts 2): that is what
//! UCS-2 handsets and Twilio's 1600-character limit see, and it is never
//! less than the character count, so a piece fits under either reading.
//!
//! - Up to `max_len` (capped at 1600): one message, no marker.
//! - Longer: pieces of at most `max_len` including a ` (i/n)` marker, cut at
//!   the last sentence end in reach (if that keeps at least half a piece),
//!   else at the last space or newline. Only a single word longer than a
//!   piece is cut inside, and then between two characters, so a surrogate
//!   pair or a GSM-7 extension character is never broken.
//! - Text beyond `max_parts` is dropped and the last piece ends with an
//!   ellipsis: `...` when that piece is GSM-7 (a `…` would make the whole
//!   piece UCS-2 and cost two to three times as much), `…` when it is UCS-2
//!   anyway.
//! - When a marker would leave less than [`MIN_MARKED_BUDGET`] units of text
//!   (a tiny `sms_max_len`), pieces go without markers.

use crate::sms::gsm::is_gsm_text;

/// Twilio's hard limit on one message's body.
pub const TWILIO_MAX_BODY: usize = smsgate_shared::config::TWILIO_MAX_BODY;

/// The least text a marked piece must be able to carry.
pub const MIN_MARKED_BUDGET: usize = 10;

/// The pieces of a reply, markers included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub pieces: Vec<String>,
    /// Whether text was dropped beyond `max_parts`.
    pub truncated: bool,
    /// Whether the pieces carry `(i/n)` markers.
    pub marked: bool,
}

/// UTF-16 length.
pub fn len16(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Splits `text` (already normalized) for `max_len` and `max_parts`.
pub fn split(text: &str, max_len: usize, max_parts: usize) -> Split {
    let cap = max_len.clamp(1, TWILIO_MAX_BODY);
    let max_parts = max_parts.max(1);
    let text = text.trim();
    if len16(text) <= cap {
        let pieces = if text.is_empty() { Vec::new() } else { vec![text.to_owned()] };
        return Split { pieces, truncated: false, marked: false };
    }
    // Worst-case marker width for this many parts: " (10/10)" is 8.
    let digits = max_parts.to_string().len();
    let marker_width = 4 + 2 * digits;
    let marked = max_parts > 1 && cap >= marker_width + MIN_MARKED_BUDGET;
    let budget = if marked { cap - marker_width } else { cap };

    // (start, end) byte offsets of each piece's text in `text`.
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < text.len() && chunks.len() < max_parts {
        let (end, next) = cut(&text[start..], budget);
        chunks.push((start, start + end));
        start += next;
    }
    let truncated = start < text.len();
    let mut bodies: Vec<String> = chunks.iter().map(|&(a, b)| text[a..b].to_owned()).collect();
    // Below 4 units there is no room for an ellipsis: the last piece stays as cut.
    if truncated && budget >= 4 {
        // Redo the last piece with room for the ellipsis (3 units either way).
        let tail = &text[chunks.last().map_or(0, |&(a, _)| a)..];
        let (end, _) = cut(tail, budget.saturating_sub(3).max(1));
        let kept = tail[..end].trim_end();
        let ellipsis = if is_gsm_text(kept) { "..." } else { "\u{2026}" };
        if let Some(last) = bodies.last_mut() {
            *last = format!("{kept}{ellipsis}");
        }
    }
    let n = bodies.len();
    let pieces = if marked && n > 1 {
        bodies.into_iter().enumerate().map(|(i, b)| format!("{b} ({}/{n})", i + 1)).collect()
    } else {
        bodies
    };
    Split { pieces, truncated, marked: marked && n > 1 }
}

/// Where to cut `rest` (which starts at a non-space) for a piece of at most
/// `budget` units: the end of the piece's text and the start of the next
/// piece (past the whitespace at the cut), both byte offsets.
fn cut(rest: &str, budget: usize) -> (usize, usize) {
    if len16(rest) <= budget {
        return (rest.trim_end().len(), rest.len());
    }
    // `limit`: byte offset of the first character that does not fit.
    let mut used = 0usize;
    let mut limit = rest.len();
    for (i, c) in rest.char_indices() {
        if used + c.len_utf16() > budget {
            limit = i;
            break;
        }
        used += c.len_utf16();
    }
    let mut sentence = None;
    let mut word = None;
    // Whitespace positions up to and including `limit` are cut points: a
    // cut at `limit` itself takes the whole window.
    for (i, c) in rest[..limit].char_indices().chain(rest[limit..].char_indices().take(1).map(|(i, c)| (i + limit, c)))
    {
        if i == 0 || !c.is_whitespace() {
            continue;
        }
        word = Some(i);
        if c == '\n' || ends_sentence(&rest[..i]) {
            sentence = Some(i);
        }
    }
    let end = match (sentence, word) {
        (Some(s), _) if 2 * len16(&rest[..s]) >= budget => s,
        (_, Some(w)) => w,
        // One word longer than a piece: cut between characters; always take
        // at least one so the split terminates.
        _ => {
            if limit == 0 {
                rest.chars().next().map_or(rest.len(), char::len_utf8)
            } else {
                limit
            }
        }
    };
    // `rest` starts at a non-space and every cut point is after it, so the
    // piece is never empty.
    let text_end = rest[..end].trim_end().len();
    let next = rest.len() - rest[end..].trim_start().len();
    (text_end, next)
}

/// Whether `s` ends a sentence: `.`, `!` or `?`, maybe followed by closing
/// quotes or brackets.
fn ends_sentence(s: &str) -> bool {
    let trimmed = s.trim_end_matches(['"', '\'', ')', ']']);
    trimmed.ends_with(['.', '!', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::gsm::{Encoding, count};

    fn strip_marker(piece: &str) -> &str {
        match piece.rfind(" (") {
            Some(i) if piece.ends_with(')') => &piece[..i],
            _ => piece,
        }
    }

    #[test]
    fn a_reply_within_the_limit_is_one_unmarked_message() {
        let s = split("Hello there.", 480, 4);
        assert_eq!(s.pieces, vec!["Hello there."]);
        assert!(!s.marked && !s.truncated);
        let exact = "a".repeat(480);
        assert_eq!(split(&exact, 480, 4).pieces, vec![exact.clone()]);
        assert!(split("", 480, 4).pieces.is_empty());
    }

    #[test]
    fn splits_at_sentence_boundaries_with_markers() {
        let text = "First sentence is here. Second one follows it. Third sentence ends the text.";
        let s = split(text, 40, 4);
        assert_eq!(
            s.pieces,
            vec![
                "First sentence is here. (1/3)",
                "Second one follows it. (2/3)",
                "Third sentence ends the text. (3/3)"
            ]
        );
    }

    #[test]
    fn falls_back_to_word_boundaries_and_never_breaks_a_word() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda";
        let s = split(text, 24, 10);
        for p in &s.pieces {
            assert!(len16(p) <= 24, "{p}");
            for w in strip_marker(p).split(' ') {
                assert!(text.split(' ').any(|t| t == w), "broken word {w:?} in {p:?}");
            }
        }
        assert_eq!(s.pieces.len(), 5);
        assert_eq!(s.pieces[0], "alpha beta gamma (1/5)");
    }

    #[test]
    fn prefers_a_sentence_end_only_when_it_keeps_half_a_piece() {
        let text = format!("Hi. {}", "word ".repeat(30));
        let s = split(&text, 60, 4);
        assert!(s.pieces[0].starts_with("Hi. word"), "{:?}", s.pieces);
    }

    #[test]
    fn a_word_longer_than_a_piece_is_cut_between_characters() {
        let url = format!("https://example.com/{}", "x".repeat(100));
        let s = split(&url, 40, 4);
        assert!(s.pieces.iter().all(|p| len16(p) <= 40));
        let joined: String = s.pieces.iter().map(|p| strip_marker(p)).collect();
        assert_eq!(joined, url);
    }

    #[test]
    fn beyond_max_parts_the_rest_is_cut_with_an_ellipsis() {
        let text = "word ".repeat(200);
        let s = split(&text, 50, 3);
        assert_eq!(s.pieces.len(), 3);
        assert!(s.truncated);
        assert!(s.pieces[2].ends_with("... (3/3)"), "{}", s.pieces[2]);
        assert_eq!(count(&s.pieces[2]).encoding, Encoding::Gsm7);
        assert!(s.pieces.iter().all(|p| len16(p) <= 50));
    }

    #[test]
    fn a_ucs2_piece_is_cut_with_the_unicode_ellipsis() {
        let text = "😀 smile ".repeat(100);
        let s = split(&text, 70, 2);
        assert!(s.pieces[1].ends_with("\u{2026} (2/2)"), "{}", s.pieces[1]);
    }

    #[test]
    fn max_parts_one_truncates_without_a_marker() {
        let s = split(&"word ".repeat(100), 30, 1);
        assert_eq!(s.pieces.len(), 1);
        assert!(s.pieces[0].ends_with("..."));
        assert!(len16(&s.pieces[0]) <= 30);
    }

    #[test]
    fn an_emoji_at_a_boundary_is_never_split() {
        // A 42-unit budget: 41 units of text, then an emoji that would straddle it.
        let word = format!("{}😀{}", "a".repeat(41), "b".repeat(30));
        let s = split(&word, 48, 4);
        assert!(s.pieces.iter().all(|p| len16(p) <= 48));
        assert_eq!(s.pieces[0], format!("{} (1/2)", "a".repeat(41)));
        assert!(s.pieces[1].starts_with('😀'));
        let joined: String = s.pieces.iter().map(|p| strip_marker(p)).collect();
        assert_eq!(joined, word);
        assert!(s.pieces.iter().any(|p| p.contains('😀')));
    }

    #[test]
    fn an_extension_char_at_a_boundary_stays_whole() {
        let word = "€".repeat(60);
        let s = split(&word, 30, 4);
        let joined: String = s.pieces.iter().map(|p| strip_marker(p)).collect();
        assert_eq!(joined, word);
    }

    #[test]
    fn a_five_thousand_character_reply_is_bounded() {
        let sentence = "This is a fairly ordinary sentence about the weather today. ";
        let text = sentence.repeat(5000 / sentence.len() + 1);
        assert!(text.len() >= 5000);
        let s = split(&text, 480, 4);
        assert_eq!(s.pieces.len(), 4);
        assert!(s.truncated);
        assert!(s.pieces.iter().all(|p| len16(p) <= 480));
        assert!(s.pieces[3].ends_with("... (4/4)"));
        // The full limit: ten pieces of at most 1600.
        let big = split(&"x ".repeat(10_000), 1600, 10);
        assert_eq!(big.pieces.len(), 10);
        assert!(big.pieces.iter().all(|p| len16(p) <= 1600));
        assert!(big.pieces[0].ends_with(" (1/10)"));
    }

    #[test]
    fn a_tiny_limit_drops_the_markers() {
        let s = split("one two three four five", 8, 4);
        assert!(!s.marked);
        assert!(s.pieces.iter().all(|p| len16(p) <= 8), "{:?}", s.pieces);
    }

    #[test]
    fn newlines_are_cut_points() {
        let text = "Line one of a list\n- item two here\n- item three here";
        let s = split(text, 30, 4);
        assert_eq!(s.pieces[0], "Line one of a list (1/3)");
    }
}
