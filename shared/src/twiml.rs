//! TwiML, the XML Twilio runs during a call, built by one small writer that
//! escapes every text and attribute value, so nothing a caller, a model or
//! an operator says can become markup (`</Say><Dial>+1900…</Dial>` stays
//! words inside `<Say>`). Verb and attribute names are fixed strings of
//! this module; only values pass through [`escape`].
//!
//! Also here: [`speakable`], which turns a model's reply (markdown, links)
//! into text worth reading aloud.

use std::fmt::Write as _;

use crate::domain::E164;

/// The XML declaration every answer starts with.
const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// How the caller hears us: a `<Say>` voice name and a language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech<'a> {
    pub voice: Option<&'a str>,
    pub language: &'a str,
}

/// The `<ConversationRelay>` attributes [`Twiml::connect_relay`] writes.
#[derive(Debug, Clone)]
pub struct Relay<'a> {
    /// `wss://…`: the socket Twilio opens.
    pub url: &'a str,
    pub welcome_greeting: Option<&'a str>,
    pub language: &'a str,
    pub voice: Option<&'a str>,
    pub tts_provider: Option<&'a str>,
    pub transcription_provider: Option<&'a str>,
    pub speech_model: Option<&'a str>,
    pub hints: &'a [String],
    pub interruptible: &'a str,
    pub dtmf: bool,
}

/// A TwiML `<Response>` being written. Each verb method appends one verb;
/// [`Twiml::finish`] closes the document.
#[derive(Debug)]
pub struct Twiml {
    out: String,
}

impl Default for Twiml {
    fn default() -> Self {
        Self::new()
    }
}

impl Twiml {
    pub fn new() -> Self {
        let mut out = String::with_capacity(256);
        out.push_str(HEAD);
        out.push_str("<Response>");
        Self { out }
    }

    /// `<Say voice=… language=…>text</Say>`.
    pub fn say(mut self, text: &str, speech: &Speech<'_>) -> Self {
        say_into(&mut self.out, text, speech);
        self
    }

    /// `<Pause length="secs"/>`.
    pub fn pause(mut self, secs: u32) -> Self {
        let _ = write!(self.out, r#"<Pause length="{secs}"/>"#);
        self
    }

    /// `<Redirect method="POST">url</Redirect>`: Twilio asks `url` for the
    /// call's next TwiML.
    pub fn redirect(mut self, url: &str) -> Self {
        self.out.push_str(r#"<Redirect method="POST">"#);
        escape_into(&mut self.out, url);
        self.out.push_str("</Redirect>");
        self
    }

    /// `<Gather input="speech" action=url …><Say>prompt</Say></Gather>`:
    /// listens for the caller's words and posts them (`SpeechResult`) to
    /// `action`. With no speech Twilio goes on with the verb after it.
    pub fn gather(mut self, action: &str, speech: &Speech<'_>, prompt: Option<&str>) -> Self {
        self.out.push_str("<Gather");
        attr(&mut self.out, "input", "speech");
        attr(&mut self.out, "action", action);
        attr(&mut self.out, "method", "POST");
        attr(&mut self.out, "speechTimeout", "auto");
        attr(&mut self.out, "language", speech.language);
        self.out.push('>');
        if let Some(p) = prompt.filter(|p| !p.trim().is_empty()) {
            say_into(&mut self.out, p, speech);
        }
        self.out.push_str("</Gather>");
        self
    }

    /// `<Record transcribe="true" transcribeCallback=… action=… maxLength=…/>`:
    /// a voicemail, whose transcription Twilio posts to `transcribe_callback`.
    pub fn record(mut self, action: &str, transcribe_callback: &str, max_secs: u32) -> Self {
        self.out.push_str("<Record");
        attr(&mut self.out, "action", action);
        attr(&mut self.out, "method", "POST");
        let _ = write!(self.out, r#" maxLength="{max_secs}""#);
        attr(&mut self.out, "playBeep", "true");
        attr(&mut self.out, "transcribe", "true");
        attr(&mut self.out, "transcribeCallback", transcribe_callback);
        self.out.push_str("/>");
        self
    }

    /// `<Dial action=…>number</Dial>`: connects the caller to `number`;
    /// when that call ends Twilio posts `DialCallStatus` to `action`.
    pub fn dial(mut self, number: &E164, action: &str) -> Self {
        self.out.push_str("<Dial");
        attr(&mut self.out, "action", action);
        attr(&mut self.out, "method", "POST");
        self.out.push('>');
        escape_into(&mut self.out, number.as_str());
        self.out.push_str("</Dial>");
        self
    }

    /// `<Connect action=…><ConversationRelay url=… …><Parameter …/>…</ConversationRelay></Connect>`:
    /// the call is handed to a ConversationRelay session on `relay.url`
    /// (TWILIO.md §11); when it ends Twilio posts to `action`. Per-call
    /// data goes in `params` (`setup.customParameters`), never in the URL.
    pub fn connect_relay(mut self, action: &str, relay: &Relay<'_>, params: &[(&str, &str)]) -> Self {
        self.out.push_str("<Connect");
        attr(&mut self.out, "action", action);
        attr(&mut self.out, "method", "POST");
        self.out.push_str("><ConversationRelay");
        attr(&mut self.out, "url", relay.url);
        if let Some(g) = relay.welcome_greeting.filter(|g| !g.trim().is_empty()) {
            attr(&mut self.out, "welcomeGreeting", g);
        }
        attr(&mut self.out, "language", relay.language);
        let optional = [
            ("voice", relay.voice),
            ("ttsProvider", relay.tts_provider),
            ("transcriptionProvider", relay.transcription_provider),
            ("speechModel", relay.speech_model),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                attr(&mut self.out, name, v);
            }
        }
        if !relay.hints.is_empty() {
            attr(&mut self.out, "hints", &relay.hints.join(","));
        }
        attr(&mut self.out, "interruptible", relay.interruptible);
        attr(&mut self.out, "dtmfDetection", if relay.dtmf { "true" } else { "false" });
        self.out.push('>');
        for (name, value) in params {
            self.out.push_str("<Parameter");
            attr(&mut self.out, "name", name);
            attr(&mut self.out, "value", value);
            self.out.push_str("/>");
        }
        self.out.push_str("</ConversationRelay></Connect>");
        self
    }

    /// `<Reject/>`: the call is refused before it is answered (not billed).
    pub fn reject(mut self) -> Self {
        self.out.push_str("<Reject/>");
        self
    }

    /// `<Hangup/>`.
    pub fn hangup(mut self) -> Self {
        self.out.push_str("<Hangup/>");
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</Response>");
        self.out
    }
}

fn say_into(out: &mut String, text: &str, speech: &Speech<'_>) {
    out.push_str("<Say");
    if let Some(v) = speech.voice {
        attr(out, "voice", v);
    }
    attr(out, "language", speech.language);
    out.push('>');
    escape_into(out, text);
    out.push_str("</Say>");
}

fn attr(out: &mut String, name: &'static str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value);
    out.push('"');
}

/// `value` as XML character data or attribute value: the five special
/// characters as entities, and characters XML 1.0 cannot carry at all
/// (most C0 controls, lone surrogates cannot occur in a `str`, U+FFFE/F)
/// dropped, since no escape makes them valid.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value);
    out
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // A raw CR would be read back as LF by a conforming parser.
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// The longest reply a call speaks: past this, `<Say>` talks for minutes
/// and Twilio's own limit on a `<Say>` (4,096 characters) nears.
pub const MAX_SPOKEN_CHARS: usize = 1500;

/// A model's reply as something to read aloud: look-alikes mapped, markdown
/// flattened (as for SMS, [`crate::markdown`]), every URL replaced by its
/// host ("example.com"), list lines and paragraphs joined into sentences,
/// and cut at [`MAX_SPOKEN_CHARS`] on a word boundary.
pub fn speakable(text: &str) -> String {
    let flat = crate::markdown::flatten_markdown(&crate::markdown::map_lookalikes(text));
    let mut sentences: Vec<String> = Vec::new();
    for line in flat.lines() {
        let line = line.trim();
        let line = line.strip_prefix("- ").unwrap_or(line);
        let words: Vec<String> = line.split_whitespace().map(speak_word).filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            continue;
        }
        let mut sentence = words.join(" ");
        if !sentence.ends_with(['.', '!', '?', ':', ';', ',']) {
            sentence.push('.');
        }
        sentences.push(sentence);
    }
    let spoken = sentences.join(" ").replace('`', "");
    if spoken.chars().count() <= MAX_SPOKEN_CHARS {
        return spoken;
    }
    let cut: String = spoken.chars().take(MAX_SPOKEN_CHARS).collect();
    match cut.rfind(' ') {
        Some(at) => format!("{}…", &cut[..at]),
        None => cut,
    }
}

/// One word: a URL becomes its host without `www.`; anything else stays.
pub fn speak_word(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) else {
        return word.to_owned();
    };
    let end = rest.find(['/', '?', '#', ')', ']']).unwrap_or(rest.len());
    let host = rest[..end].trim_start_matches("www.");
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host).trim_end_matches(['.', ',']);
    // Keep what punctuation ended the sentence.
    let tail = if word.ends_with(['.', ',', '!', '?']) { &word[word.len() - 1..] } else { "" };
    format!("{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: Speech<'static> = Speech { voice: Some("Polly.Joanna"), language: "en-US" };

    #[test]
    fn a_relay_connect_escapes_every_value_and_keeps_the_url_free_of_query() {
        let hints = vec!["Ada".to_owned(), "a\"b".to_owned()];
        let relay = Relay {
            url: "wss://example.com/api/channels/voice/twilio/relay/tok",
            welcome_greeting: Some("Hi <there> & \"you\"]]>"),
            language: "en-US",
            voice: Some("Polly.Joanna"),
            tts_provider: Some("Google"),
            transcription_provider: None,
            speech_model: None,
            hints: &hints,
            interruptible: "any",
            dtmf: true,
        };
        let xml = Twiml::new()
            .connect_relay("https://example.com/relayed/tok", &relay, &[("channel", "x\"/><Hangup/>")])
            .finish();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let connect = doc.root_element().first_element_child().unwrap();
        assert_eq!(connect.tag_name().name(), "Connect");
        assert_eq!(connect.attribute("action"), Some("https://example.com/relayed/tok"));
        let cr = connect.first_element_child().unwrap();
        assert_eq!(cr.tag_name().name(), "ConversationRelay");
        assert_eq!(cr.attribute("welcomeGreeting"), Some("Hi <there> & \"you\"]]>"));
        assert_eq!(cr.attribute("hints"), Some("Ada,a\"b"));
        assert_eq!(cr.attribute("dtmfDetection"), Some("true"));
        assert_eq!(cr.attribute("transcriptionProvider"), None);
        assert!(!cr.attribute("url").unwrap().contains('?'));
        let p = cr.first_element_child().unwrap();
        assert_eq!((p.attribute("name"), p.attribute("value")), (Some("channel"), Some("x\"/><Hangup/>")));
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("Hangup")).count(), 0);
    }

    #[test]
    fn hostile_text_stays_text() {
        let xml = Twiml::new().say("</Say><Dial>+19005550100</Dial><Say>", &EN).finish();
        assert!(xml.contains("&lt;/Say&gt;&lt;Dial&gt;+19005550100&lt;/Dial&gt;"), "{xml}");
        assert_eq!(xml.matches("<Dial").count(), 0, "{xml}");
    }

    #[test]
    fn attributes_are_escaped_too() {
        let hostile = Speech { voice: Some(r#"x" action="https://evil"#), language: "en-US" };
        let xml = Twiml::new().say("hi", &hostile).finish();
        assert!(xml.contains(r#"voice="x&quot; action=&quot;https://evil""#), "{xml}");
    }

    #[test]
    fn a_turn_answer_has_the_expected_shape() {
        let xml = Twiml::new()
            .say("Hello", &EN)
            .gather("https://h/t?n=1&x=2", &EN, None)
            .say("Goodbye", &EN)
            .hangup()
            .finish();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>\
             <Say voice=\"Polly.Joanna\" language=\"en-US\">Hello</Say>\
             <Gather input=\"speech\" action=\"https://h/t?n=1&amp;x=2\" method=\"POST\" speechTimeout=\"auto\" language=\"en-US\"></Gather>\
             <Say voice=\"Polly.Joanna\" language=\"en-US\">Goodbye</Say><Hangup/></Response>"
        );
    }

    /// Parses `xml` and gives the verbs under `<Response>` with their text.
    fn verbs(xml: &str) -> Vec<(String, String)> {
        let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not XML ({e}): {xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "Response");
        root.children()
            .filter(|n| n.is_element())
            .map(|n| (n.tag_name().name().to_owned(), n.text().unwrap_or_default().to_owned()))
            .collect()
    }

    proptest::proptest! {
        /// Whatever a model says (markup, entities, quotes, controls,
        /// any Unicode), the answer is valid XML, `<Say>` says it as text,
        /// and no verb appears that the builder did not write.
        #[test]
        fn hostile_model_output_stays_text_inside_valid_xml(
            text in proptest::string::string_regex("(</Say><Dial>\\+1900[0-9]{7}</Dial>|<Hangup/>|&amp;|&#x0;|]]>|<!--|\"|'|<|>|&|[\\x00-\\x1f]|\\PC){0,40}").unwrap(),
            voice in "\\PC{0,20}",
        ) {
            let speech = Speech { voice: Some(&voice), language: "en-US" };
            let xml = Twiml::new().say(&text, &speech).gather("https://h/t?n=1&w=2", &speech, Some(&text)).hangup().finish();
            let verbs = verbs(&xml);
            let names: Vec<&str> = verbs.iter().map(|(n, _)| n.as_str()).collect();
            proptest::prop_assert_eq!(names, ["Say", "Gather", "Hangup"]);
            let kept: String = text.chars().filter(|c| ((*c as u32) >= 0x20 || matches!(c, '\t' | '\n' | '\r')) && !matches!(c, '\u{FFFE}' | '\u{FFFF}')).collect();
            proptest::prop_assert_eq!(&verbs[0].1, &kept);
        }
    }

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(escape("a\u{0}b\u{1b}c\u{FFFF}\td"), "abc\td");
    }

    #[test]
    fn markdown_and_links_become_speakable() {
        assert_eq!(
            speakable(
                "**Sure!** See [the docs](https://www.example.com/a/b?c=1) or https://twilio.com/x.\n- one\n- two"
            ),
            "Sure! See the docs example.com or twilio.com. one. two."
        );
    }

    #[test]
    fn long_replies_are_cut_on_a_word() {
        let long = "word ".repeat(1000);
        let spoken = speakable(&long);
        assert!(spoken.chars().count() <= MAX_SPOKEN_CHARS + 1);
        assert!(spoken.ends_with("word…"), "{}", &spoken[spoken.len() - 20..]);
    }
}
