//! Twilio's opt-out keywords (docs/TWILIO.md §7): the whole body, trimmed,
//! compared without regard to case. Twilio itself answers STOP and START on
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

/// The keyword `body` is, if it is one.
pub fn classify(body: &str) -> Option<Keyword> {
    let word = body.trim();
    let is = |list: &[&str]| list.iter().any(|k| k.eq_ignore_ascii_case(word));
    if is(OPT_OUT) {
        Some(Keyword::OptOut)
    } else if is(OPT_IN) {
        Some(Keyword::OptIn)
    } else if is(HELP) {
        Some(Keyword::Help)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_keyword_inside_a_sentence_is_just_a_message() {
        assert_eq!(classify("please stop"), None);
        assert_eq!(classify("STOP!"), None);
        assert_eq!(classify("yes please"), None);
        assert_eq!(classify(""), None);
    }
}
