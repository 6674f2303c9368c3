//! Makes an LLM's reply plain text: SMS-friendly before the sender counts
//! and splits it, and the base of what a call speaks ([`crate::twiml::speakable`]).
//!
//! 1. Typographic look-alikes become their GSM-7 twins (curly quotes, dashes,
//!    ellipsis, unusual spaces, bullets, full-width ASCII), so one `’` does
//!    not turn the whole reply into UCS-2 at two to three times the cost.
//!    Letters are never changed (`á` stays `á`): that would alter the text,
//!    not just its typography.
//! 2. Markdown is flattened: emphasis markers, headings, block quotes, rules
//!    and code fences go; `[text](url)` becomes `text url`; bullets become
//!    `- ` and numbered items `1. ` without indentation, so lists stay
//!    readable as lines on a phone.
//! 3. Whitespace is tidied: runs of spaces become one, lines are trimmed, at
//!    most one blank line separates paragraphs.

/// The whole pipeline: look-alikes, markdown, whitespace.
pub fn normalize(text: &str) -> String {
    let mapped = map_lookalikes(text);
    let flat = flatten_markdown(&mapped);
    // Backticks left over after markdown (a lone one) are not GSM-7.
    let flat = flat.replace('`', "'");
    tidy_whitespace(&flat)
}

/// Maps typographic look-alikes to GSM-7 (a subset of Twilio's Smart
/// Encoding map, the characters LLMs actually produce). The backtick is left
/// for the markdown pass, which needs it for code spans.
pub fn map_lookalikes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' | '\u{2035}' | '\u{00B4}' | '\u{02B9}'
            | '\u{02BB}' | '\u{02BC}' | '\u{02BD}' | '\u{FF07}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{2033}' | '\u{2036}' | '\u{00AB}' | '\u{00BB}'
            | '\u{02BA}' | '\u{301D}' | '\u{301E}' | '\u{FF02}' => out.push('"'),
            '\u{2039}' => out.push('<'),
            '\u{203A}' => out.push('>'),
            // Hyphens, figure/en/em dashes, horizontal bar, minus sign.
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => out.push('-'),
            '\u{2026}' => out.push_str("..."),
            // Bullets and bullet-like dots (a line-leading one becomes a list marker).
            '\u{2022}' | '\u{2023}' | '\u{2043}' | '\u{2219}' | '\u{25AA}' | '\u{25AB}' | '\u{25CF}' | '\u{25E6}'
            | '\u{00B7}' | '\u{30FB}' => out.push('-'),
            // Non-breaking, fixed-width, narrow, ideographic spaces, and tabs.
            '\t'
            | '\u{000B}'
            | '\u{00A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}' => out.push(' '),
            // Invisible: zero-width space, word joiner, BOM, soft hyphen. (Not
            // the zero-width joiner U+200D: emoji sequences need it.)
            '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' => {}
            '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            '\u{02C6}' => out.push('^'),
            '\u{02DC}' => out.push('~'),
            '\u{2044}' | '\u{2215}' => out.push('/'),
            // Full-width ASCII (U+FF01..U+FF5E) to ASCII.
            '\u{FF01}'..='\u{FF5E}' => out.push(char::from_u32(c as u32 - 0xFEE0).unwrap_or(c)),
            _ => out.push(c),
        }
    }
    out
}

/// Flattens markdown line by line; code fences keep their content verbatim.
pub fn flatten_markdown(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out: Vec<String> = Vec::new();
    let mut in_fence = false;
    for line in text.split('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            out.push(line.to_owned());
            continue;
        }
        if is_rule(trimmed) {
            continue;
        }
        out.push(flatten_line(trimmed));
    }
    out.join("\n")
}

/// `---`, `***`, `___` (spaces allowed), and setext underlines `===`.
fn is_rule(line: &str) -> bool {
    let compact: Vec<char> = line.chars().filter(|c| *c != ' ').collect();
    compact.len() >= 3 && matches!(compact[0], '-' | '*' | '_' | '=') && compact.iter().all(|c| *c == compact[0])
}

fn flatten_line(line: &str) -> String {
    let mut rest = line;
    // Block quotes, possibly nested.
    while let Some(r) = rest.strip_prefix('>') {
        rest = r.trim_start();
    }
    // Headings: 1-6 '#' and a space; closing '#'s go too.
    let hashes = rest.chars().take_while(|c| *c == '#').count();
    if (1..=6).contains(&hashes) {
        let after = &rest[hashes..];
        if after.is_empty() || after.starts_with(' ') {
            let title = after.trim().trim_end_matches('#').trim_end();
            return inline(title);
        }
    }
    // Bullets become "- ", numbered items "N. ", indentation gone.
    if let Some(item) = ["- ", "* ", "+ "].iter().find_map(|m| rest.strip_prefix(m)) {
        let item = strip_task_box(item.trim_start());
        return format!("- {}", inline(item));
    }
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if (1..=9).contains(&digits) {
        let after = &rest[digits..];
        if let Some(item) = after.strip_prefix(". ").or_else(|| after.strip_prefix(") ")) {
            return format!("{}. {}", &rest[..digits], inline(item.trim_start()));
        }
    }
    inline(rest)
}

/// `[ ] task` / `[x] task` check boxes of task lists.
fn strip_task_box(item: &str) -> &str {
    for b in ["[ ] ", "[x] ", "[X] "] {
        if let Some(r) = item.strip_prefix(b) {
            return r;
        }
    }
    item
}

/// Escaped punctuation is parked in the private use area while emphasis is
/// removed, then restored without its backslash.
const PARK: u32 = 0xF0000;

fn park(c: char) -> char {
    char::from_u32(PARK + c as u32).unwrap_or(c)
}

fn unpark(c: char) -> char {
    let v = c as u32;
    if (PARK..PARK + 128).contains(&v) { char::from_u32(v - PARK).unwrap_or(c) } else { c }
}

/// Inline markdown: code spans verbatim, then links, then emphasis.
fn inline(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut plain = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        match after.find(fence) {
            Some(end) => {
                plain.push_str(&rest[..start]);
                out.push_str(&inline_plain(&plain));
                plain.clear();
                out.push_str(after[..end].trim());
                rest = &after[end + ticks..];
            }
            None => {
                plain.push_str(&rest[..start + ticks]);
                rest = after;
            }
        }
    }
    plain.push_str(rest);
    out.push_str(&inline_plain(&plain));
    out
}

fn inline_plain(text: &str) -> String {
    // Escapes first, so `\*` survives emphasis removal as a literal star.
    let mut parked = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&n)) if n.is_ascii_punctuation() => {
                parked.push(park(n));
                chars.next();
            }
            _ => parked.push(c),
        }
    }
    let linked = links(&parked);
    let mut s = linked;
    for delim in ["***", "___", "**", "__", "~~", "*", "_"] {
        s = emphasis(&s, delim);
    }
    s.chars().map(unpark).collect()
}

/// `[text](url "title")` → `text url`, `![alt](url)` → `alt url`,
/// `<https://…>` → the URL. A link whose text is its URL is written once.
/// Linear: brackets are matched once up front, not searched per `[`.
fn links(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let square = matching(&chars, '[', ']');
    let round = matching(&chars, '(', ')');
    // next_gt[i]: the first '>' at or after i.
    let mut next_gt = vec![None; chars.len() + 1];
    for i in (0..chars.len()).rev() {
        next_gt[i] = if chars[i] == '>' { Some(i) } else { next_gt[i + 1] };
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let image = chars[i] == '!' && chars.get(i + 1) == Some(&'[');
        let open = if image { i + 1 } else { i };
        if chars[open] == '['
            && let Some((label, url, end)) = link_at(&chars, open, &square, &round)
        {
            let label = label.trim();
            let url = url.trim();
            if label.is_empty() || label == url || format!("mailto:{label}") == url {
                out.push_str(url);
            } else {
                out.push_str(label);
                if !url.is_empty() {
                    out.push(' ');
                    out.push_str(url);
                }
            }
            i = end;
            continue;
        }
        if chars[i] == '<'
            && let Some(close) = next_gt[i + 1]
        {
            let inner: String = chars[i + 1..close].iter().collect();
            if (inner.starts_with("http://") || inner.starts_with("https://") || inner.starts_with("mailto:"))
                && !inner.contains(' ')
            {
                out.push_str(inner.strip_prefix("mailto:").unwrap_or(&inner));
                i = close + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// For each `open` character, the index of its matching `close` (nesting
/// respected), found in one pass with a stack.
fn matching(chars: &[char], open: char, close: char) -> Vec<Option<usize>> {
    let mut matches = vec![None; chars.len()];
    let mut stack = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        if *c == open {
            stack.push(i);
        } else if *c == close
            && let Some(o) = stack.pop()
        {
            matches[o] = Some(i);
        }
    }
    matches
}

/// At `[`: the label, the URL (without a title) and the index after `)`.
fn link_at(
    chars: &[char],
    open: usize,
    square: &[Option<usize>],
    round: &[Option<usize>],
) -> Option<(String, String, usize)> {
    let close = square[open]?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = round[close + 1]?;
    let label: String = chars[open + 1..close].iter().collect();
    let target: String = chars[close + 2..end].iter().collect();
    let target = target.trim();
    let url = target
        .strip_prefix('<')
        .and_then(|t| t.split_once('>'))
        .map_or_else(|| target.split_whitespace().next().unwrap_or("").to_owned(), |(u, _)| u.to_owned());
    Some((label, url, end + 1))
}

/// Removes matched emphasis delimiters (`**x**`, `_x_`, …) following
/// CommonMark's flanking rules closely enough that `2*3*4`, `snake_case`
/// and `a * b` are left alone.
fn emphasis(text: &str, delim: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let d: Vec<char> = delim.chars().collect();
    let n = d.len();
    let at = |i: usize| i + n <= chars.len() && chars[i..i + n] == d[..];
    // A run longer than the delimiter (e.g. `***` when removing `*`) is
    // handled by the longer delimiter's pass first; skip partial runs here.
    let run_edge = |i: usize| {
        let before = i.checked_sub(1).map(|k| chars[k]);
        let after = chars.get(i + n).copied();
        before != Some(d[0]) && after != Some(d[0])
    };
    let intraword_ok = d[0] == '*' || d[0] == '~';
    let is_opener = |i: usize| {
        let before = i.checked_sub(1).map(|k| chars[k]);
        let after = chars.get(i + n).copied();
        at(i)
            && run_edge(i)
            && after.is_some_and(|c| !c.is_whitespace())
            && (intraword_ok && n == 2 || before.is_none_or(|c| !c.is_alphanumeric()))
    };
    let is_closer = |i: usize| {
        let before = i.checked_sub(1).map(|k| chars[k]);
        let after = chars.get(i + n).copied();
        at(i)
            && run_edge(i)
            && before.is_some_and(|c| !c.is_whitespace())
            && (intraword_ok && n == 2 || after.is_none_or(|c| !c.is_alphanumeric()))
    };
    // next_closer[i]: the first closer at or after i, so that finding an
    // opener's closer is a look-up, not a scan (linear overall).
    let mut next_closer = vec![None; chars.len() + 1];
    for i in (0..chars.len()).rev() {
        next_closer[i] = if is_closer(i) { Some(i) } else { next_closer[i + 1] };
    }
    let mut remove = vec![false; chars.len()];
    let mut i = 0;
    while i < chars.len() {
        if is_opener(i)
            && let Some(j) = next_closer.get(i + n + 1).copied().flatten()
        {
            for k in 0..n {
                remove[i + k] = true;
                remove[j + k] = true;
            }
            i = j + n;
            continue;
        }
        i += 1;
    }
    chars.iter().zip(remove).filter(|(_, r)| !r).map(|(c, _)| *c).collect()
}

/// One space between words, trimmed lines, at most one blank line in a row,
/// nothing at either end.
pub fn tidy_whitespace(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0usize;
    for line in text.split('\n') {
        let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(&words.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curly_quotes_dashes_and_ellipsis_become_gsm() {
        let text = normalize("It\u{2019}s \u{201C}fine\u{201D} \u{2014} really\u{2026} 5\u{2013}7 \u{2018}ok\u{2019}");
        assert_eq!(text, "It's \"fine\" - really... 5-7 'ok'");
        assert!(text.is_ascii(), "{text}");
    }

    #[test]
    fn unusual_spaces_become_plain_spaces_and_invisible_ones_go() {
        let text = normalize("a\u{00A0}b\u{2009}c\u{202F}d\u{3000}e\tf zero\u{200B}width\u{FEFF}");
        assert_eq!(text, "a b c d e f zerowidth");
        assert!(text.is_ascii(), "{text}");
    }

    #[test]
    fn bullets_become_hyphens() {
        assert_eq!(normalize("\u{2022} one\n\u{2022} two"), "- one\n- two");
        assert_eq!(normalize("a \u{2022} b \u{00B7} c"), "a - b - c");
    }

    #[test]
    fn letters_and_emoji_are_left_alone() {
        assert_eq!(normalize("¿Qué tal? 😀 façade"), "¿Qué tal? 😀 façade");
    }

    #[test]
    fn bold_italics_and_strikethrough_markers_go() {
        assert_eq!(
            normalize("**Bold** and *italic* and __also__ and _this_ and ~~gone~~"),
            "Bold and italic and also and this and gone"
        );
        assert_eq!(normalize("***both***"), "both");
        assert_eq!(normalize("Total: **$42**."), "Total: $42.");
    }

    #[test]
    fn stars_and_underscores_that_are_not_emphasis_stay() {
        assert_eq!(normalize("2*3*4 = 24"), "2*3*4 = 24");
        assert_eq!(normalize("use snake_case_names here"), "use snake_case_names here");
        assert_eq!(normalize("a * b * c"), "a * b * c");
        assert_eq!(normalize("literal \\*star\\*"), "literal *star*");
    }

    #[test]
    fn headings_lose_their_hashes() {
        assert_eq!(normalize("# Title\n## Sub ##\nbody #1"), "Title\nSub\nbody #1");
        assert_eq!(normalize("#hashtag"), "#hashtag");
    }

    #[test]
    fn bullet_and_numbered_list_markers_are_flattened() {
        let md = "Steps:\n\n* first\n  + nested **bold**\n- [ ] task\n\n1) one\n   2. two";
        assert_eq!(normalize(md), "Steps:\n\n- first\n- nested bold\n- task\n\n1. one\n2. two");
    }

    #[test]
    fn links_become_text_then_url() {
        assert_eq!(
            normalize("See [the docs](https://example.com/a_b) now."),
            "See the docs https://example.com/a_b now."
        );
        assert_eq!(normalize("[https://x.io](https://x.io)"), "https://x.io");
        assert_eq!(normalize("![logo](https://x.io/l.png \"Logo\")"), "logo https://x.io/l.png");
        assert_eq!(normalize("Mail <mailto:a@b.c> or <https://x.io>"), "Mail a@b.c or https://x.io");
        assert_eq!(normalize("[not a link] (x)"), "[not a link] (x)");
    }

    #[test]
    fn code_fences_and_spans_keep_their_content() {
        let md = "Run:\n```bash\necho *hi*\n```\nthen `cargo *test*`.";
        assert_eq!(normalize(md), "Run:\necho *hi*\nthen cargo *test*.");
        assert_eq!(normalize("a lone ` tick"), "a lone ' tick");
    }

    #[test]
    fn rules_quotes_and_blank_lines_are_tidied() {
        let md = "> quoted\n\n---\n\n\n\npara  with   spaces  \r\nnext";
        assert_eq!(normalize(md), "quoted\n\npara with spaces\nnext");
    }

    #[test]
    fn full_width_ascii_is_mapped() {
        assert_eq!(normalize("ＡＢＣ！"), "ABC!");
    }
}
