//! Twilio's opt-out keywords (docs/TWILIO.md §7): the whole body, trimmed,
//! compared without regard to case; and opting out in free text ("please
//! stop texting me"), which Twilio's filter never sees. Twilio itself answers STOP and START on
//! long codes; the worker records them so the conversation is honoured here
//! too, and answers HELP with the channel's own text.

/// What a keyword asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
    Help,
}

const OPT_OUT: &[&str] = &["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"];
const OPT_IN: &[&str] = &["START", "YES", "UNSTOP"];
const HELP: &[&str] = &["HELP", "INFO"];

/// Phrases that revoke consent in free text. Revocation "by any reasonable
/// means" counts (47 CFR 64.1200(a)(10), docs/COMPLIANCE.md), and such texts
/// never reach Twilio's keyword filter; reading one wrongly as an opt-out is
/// the safe mistake (START undoes it), missing one is not.
const OPT_OUT_PHRASES: &[&str] = &[
    "stop texting",
    "stop messaging",
    "stop sending",
    "stop contacting",
    "stop calling",
    "opt out",
    "opt me out",
    "unsubscribe",
    "remove me from",
    "take me off",
    "do not text",
    "dont text",
    "don't text",
    "no more texts",
    "no more messages",
];

/// The keyword `body` is, if it is one: the whole body a keyword, or (for
/// opting out) a short text starting with STOP or one with a revocation
/// phrase.
pub fn classify(body: &str) -> Option<Keyword> {
    let word = body.trim().trim_end_matches(['.', '!', '?']);
    let is = |list: &[&str]| list.iter().any(|k| k.eq_ignore_ascii_case(word));
    if is(OPT_OUT) || revokes(word) {
        Some(Keyword::OptOut)
    } else if is(OPT_IN) {
        Some(Keyword::OptIn)
    } else if is(HELP) {
        Some(Keyword::Help)
    } else {
        None
    }
}

/// A free-text revocation: "stop please", "Please stop texting me",
/// "unsubscribe me", "opt me out".
fn revokes(text: &str) -> bool {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()).collect();
    let plain: Vec<&str> = words.iter().copied().filter(|w| !matches!(*w, "please" | "pls" | "plz")).collect();
    let short_stop = plain.first() == Some(&"stop") && plain.len() <= 4;
    let joined = words.join(" ");
    short_stop || OPT_OUT_PHRASES.iter().any(|p| joined.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_in_free_text_opt_out_and_ordinary_texts_do_not() {
        for text in [
            "stop please",
            "STOP!!",
            "Please stop texting me",
            "can you opt me out",
            "Unsubscribe me.",
            "remove me from this list",
            "Don't text me again",
            "no more texts thanks",
        ] {
            assert_eq!(classify(text), Some(Keyword::OptOut), "{text}");
        }
        for text in ["hello", "when do you stop serving lunch today?", "I can't stop laughing at this", "start"] {
            assert_ne!(classify(text), Some(Keyword::OptOut), "{text}");
        }
    }

    #[test]
    fn matches_the_whole_trimmed_body_in_any_case() {
        assert_eq!(classify("STOP"), Some(Keyword::OptOut));
        assert_eq!(classify("  stop\n"), Some(Keyword::OptOut));
        assert_eq!(classify("Unsubscribe"), Some(Keyword::OptOut));
        assert_eq!(classify("optout"), Some(Keyword::OptOut));
        assert_eq!(classify("start"), Some(Keyword::OptIn));
        assert_eq!(classify("Yes"), Some(Keyword::OptIn));
        assert_eq!(classify("UNSTOP"), Some(Keyword::OptIn));
        assert_eq!(classify("help"), Some(Keyword::Help));
        assert_eq!(classify("Info "), Some(Keyword::Help));
    }

    #[test]
    fn an_opt_in_or_help_keyword_inside_a_sentence_is_just_a_message() {
        // Opting out is honoured however it is said; opting in and HELP
        // only as the keyword itself.
        assert_eq!(classify("please stop"), Some(Keyword::OptOut));
        assert_eq!(classify("STOP!"), Some(Keyword::OptOut));
        assert_eq!(classify("yes please"), None);
        assert_eq!(classify("help me with my order"), None);
        assert_eq!(classify(""), None);
    }
}
