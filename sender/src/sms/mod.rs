//! From a reply to SMS pieces: [`normalize`] (markdown and look-alikes),
//! [`split`] (sentence, then word boundaries, `(i/n)` markers) and [`gsm`]
//! (what each piece costs). Pure functions; [`prepare`] runs all three.

pub mod gsm;
pub use smsgate_shared::markdown as normalize;
pub mod split;

pub use gsm::{Count, Encoding, count};
pub use normalize::normalize;
pub use split::{Split, split};

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsPiece {
    /// The body as Twilio receives it, marker included.
    pub body: String,
    pub encoding: Encoding,
    pub segments: u32,
}

/// A reply made ready for SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The normalized text the pieces come from.
    pub text: String,
    pub pieces: Vec<SmsPiece>,
    /// Whether text beyond `max_parts` was cut.
    pub truncated: bool,
}

impl Prepared {
    pub fn segments(&self) -> u32 {
        self.pieces.iter().map(|p| p.segments).sum()
    }
}

/// Normalizes, splits and counts `body` for a channel's `sms_max_len` and
/// `max_parts`. Deterministic: a redelivered message yields the same pieces,
/// which is what makes the per-piece idempotency keys meaningful.
pub fn prepare(body: &str, sms_max_len: usize, max_parts: usize) -> Prepared {
    // Only what max_parts pieces can carry is normalized: a huge reply costs
    // no more work than a long one. Twice the capacity leaves room for the
    // markup and spaces normalizing removes; a cut shows as `...`.
    let room = 2 * max_parts.max(1) * sms_max_len.clamp(1, split::TWILIO_MAX_BODY) + 64;
    let (text, cut) = match body.char_indices().nth(room) {
        Some((at, _)) => (normalize(&format!("{}...", &body[..at])), true),
        None => (normalize(body), false),
    };
    let Split { pieces, truncated, .. } = split(&text, sms_max_len, max_parts);
    let truncated = truncated || cut;
    let pieces = pieces
        .into_iter()
        .map(|body| {
            let c = count(&body);
            SmsPiece { body, encoding: c.encoding, segments: c.segments }
        })
        .collect();
    Prepared { text, pieces, truncated }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::split::len16;
    use super::*;

    #[test]
    fn an_llm_reply_becomes_gsm7_pieces() {
        let reply = "## Your order\n\n**Good news** \u{2014} it\u{2019}s shipped\u{2026}\n\n* Track it [here](https://t.co/x)\n* Call us";
        let p = prepare(reply, 480, 4);
        assert_eq!(p.text, "Your order\n\nGood news - it's shipped...\n\n- Track it here https://t.co/x\n- Call us");
        assert_eq!(p.pieces.len(), 1);
        assert_eq!(p.pieces[0].encoding, Encoding::Gsm7);
        assert_eq!(p.pieces[0].segments, 1);
    }

    #[test]
    fn a_huge_adversarial_reply_is_prepared_quickly_and_cut() {
        // Openers without closers and links without ends made the old
        // passes quadratic (a 24 kB reply took seconds; 200 kB would take
        // minutes). Linear takes milliseconds: the 10 s bound only tells the
        // two apart, with room for a debug build on a loaded machine.
        for unit in ["*a ", "[x", "_b ", "<", "[a](", "`` ` "] {
            let body = unit.repeat(200_000 / unit.len());
            let started = std::time::Instant::now();
            let p = prepare(&body, 1600, 10);
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{unit:?}: {:?}", started.elapsed());
            assert!(p.truncated, "{unit:?}");
            assert!(p.pieces.len() <= 10);
        }
        // Whole-text normalization is linear too, cut or not.
        let body = "*a [b](c ".repeat(20_000);
        let started = std::time::Instant::now();
        normalize(&body);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn each_piece_is_counted_on_its_own() {
        let p = prepare(&format!("{}done.\n\n{}", "word ".repeat(60), "😀 ".repeat(40)), 320, 4);
        assert!(p.pieces.len() >= 2);
        assert_eq!(p.pieces[0].encoding, Encoding::Gsm7);
        assert_eq!(p.pieces.last().map(|x| x.encoding), Some(Encoding::Ucs2));
        assert_eq!(p.segments(), p.pieces.iter().map(|x| count(&x.body).segments).sum::<u32>());
    }

    /// Words from every alphabet that matters (ASCII, GSM accents, GSM
    /// extension chars, non-GSM letters, emoji, CJK) and the separators a
    /// splitter cares about.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9]{1,12}",
            1 => "[àéüñÄÖßΔΩ£¥]{1,6}",
            1 => "[€\\[\\]{}~|^\\\\]{1,4}",
            1 => "[çáíóú中文字]{1,5}",
            1 => prop::sample::select(vec!["😀", "👍🏽", "👨\u{200D}👩\u{200D}👧", "🇫🇷"]).prop_map(str::to_owned),
            1 => "[a-z]{30,200}",
            4 => Just(" ".to_owned()),
            1 => Just(". ".to_owned()),
            1 => Just("? ".to_owned()),
            1 => Just("\n".to_owned()),
            1 => Just("\n\n".to_owned()),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 0..400).prop_map(|t| t.concat())
    }

    /// Removes the `(i/n)` marker of piece `i` of `n`.
    fn body_of(piece: &str, i: usize, n: usize, marked: bool) -> &str {
        if marked {
            let marker = format!(" ({}/{n})", i + 1);
            piece.strip_suffix(marker.as_str()).unwrap_or_else(|| panic!("piece {i} lacks {marker:?}: {piece:?}"))
        } else {
            piece
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn no_piece_exceeds_its_limits(text in text(), max_len in 1usize..2000, max_parts in 1usize..=10) {
            let s = split(&text, max_len, max_parts);
            let cap = max_len.min(1600);
            prop_assert!(s.pieces.len() <= max_parts);
            for p in &s.pieces {
                // A single astral character cannot fit a 1-unit limit.
                prop_assert!(len16(p) <= cap.max(2), "{} > {cap}: {p:?}", len16(p));
                prop_assert!(p.chars().count() <= 1600);
                prop_assert!(!p.is_empty());
            }
        }

        #[test]
        fn joining_the_pieces_gives_back_the_text(text in text(), max_len in 16usize..1700, max_parts in 1usize..=10) {
            let text = normalize(&text);
            let s = split(&text, max_len, max_parts);
            let n = s.pieces.len();
            let mut rest = text.as_str();
            for (i, p) in s.pieces.iter().enumerate() {
                let mut body = body_of(p, i, n, s.marked);
                let last_cut = s.truncated && i + 1 == n;
                if last_cut {
                    body = body.strip_suffix("...").or_else(|| body.strip_suffix('\u{2026}')).unwrap_or_else(|| panic!("no ellipsis: {p:?}"));
                }
                rest = rest.trim_start();
                prop_assert!(rest.starts_with(body), "piece {i} {body:?} is not next in {rest:?}");
                rest = &rest[body.len()..];
                if !last_cut && !rest.is_empty() {
                    // Never a broken word: a cut inside a word only for a word longer than a piece.
                    let at_space = rest.starts_with(char::is_whitespace);
                    prop_assert!(at_space || !body.contains(char::is_whitespace), "word broken after {body:?}");
                }
            }
            if s.truncated {
                prop_assert!(!rest.trim().is_empty());
            } else {
                prop_assert!(rest.trim().is_empty(), "left over: {rest:?}");
            }
        }

        #[test]
        fn prepare_never_panics_and_counts_every_piece(text in any::<String>(), max_len in 1usize..1700, max_parts in 1usize..=10) {
            let p = prepare(&text, max_len, max_parts);
            for piece in &p.pieces {
                prop_assert_eq!(piece.segments, count(&piece.body).segments);
                prop_assert!(piece.segments >= 1);
            }
        }

        #[test]
        fn normalized_markdown_free_text_stays_gsm7_when_it_was(text in "[a-zA-Z0-9 .,!?'\"\u{2019}\u{201C}\u{201D}\u{2014}\u{2026}\u{00A0}]{0,300}") {
            prop_assert_eq!(count(&normalize(&text)).encoding, Encoding::Gsm7);
        }
    }
}
