//! Media (MMS) rules every service agrees on (docs/ARCHITECTURE.md §2.6):
//!
//! - [`MediaRef`]: the one shape of inbound media URL smsgate ever requests,
//!   `<twilio_api_base>/2010-04-01/Accounts/<the channel's AccountSid>/Messages/<this MessageSid>/Media/<MediaSid>`.
//!   A `MediaUrlN` that is anything else is never fetched: the webhook's
//!   parameters are signed by Twilio, but a forged or replayed one must not
//!   make the worker request an address of the attacker's choosing (SSRF).
//! - [`check_outbound_urls`]: what media a reply may carry (`MediaUrl`
//!   parameters Twilio fetches): https, at most [`MAX_OUTBOUND_MEDIA`], a
//!   public host name.

use std::fmt;

/// Twilio takes at most 10 `MediaUrl`s per message.
pub const MAX_OUTBOUND_MEDIA: usize = 10;

/// An inbound media URL that passed the check: it is exactly under the
/// channel's API base, account and this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    /// The URL as checked (no query, no fragment): what is requested.
    pub url: String,
    /// `ME` and 32 hex digits.
    pub media_sid: String,
}

/// Why an inbound media URL is not requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not under this message's media on the channel's Twilio API base ({0})")]
pub struct NotTwilioMedia(pub &'static str);

impl MediaRef {
    /// Checks `url` against the one allowed shape. `api_base` has no
    /// trailing slash (config strips it). The comparison is on the exact
    /// text: Twilio sends these URLs in this form, and anything spelled
    /// differently (another host, port, scheme, user info, `..`, percent
    /// escapes, a query) is refused rather than normalised.
    pub fn parse(api_base: &str, account_sid: &str, message_sid: &str, url: &str) -> Result<Self, NotTwilioMedia> {
        let prefix = format!("{api_base}/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}/Media/");
        let Some(media_sid) = url.strip_prefix(&prefix) else {
            return Err(NotTwilioMedia(what_differs(api_base, account_sid, message_sid, url)));
        };
        if !is_media_sid(media_sid) {
            return Err(NotTwilioMedia("the MediaSid is not ME and 32 hex digits"));
        }
        // The prefix comes from validated config and SIDs; parse anyway so
        // that a URL the HTTP client would read differently is refused.
        let parsed = url::Url::parse(url).map_err(|_| NotTwilioMedia("not a URL"))?;
        if parsed.as_str() != url || !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(NotTwilioMedia("not in canonical form"));
        }
        Ok(Self { url: url.to_owned(), media_sid: media_sid.to_owned() })
    }

    /// The Media resource (`….json`), for `DELETE`.
    pub fn resource_url(&self) -> String {
        format!("{}.json", self.url)
    }
}

/// Which part of the expected prefix `url` lacks, for the history note.
fn what_differs(api_base: &str, account_sid: &str, message_sid: &str, url: &str) -> &'static str {
    let rest = match url.strip_prefix(api_base) {
        Some(r) if r.starts_with('/') => r,
        _ => return "another host",
    };
    let Some(rest) = rest.strip_prefix("/2010-04-01/Accounts/") else { return "another path" };
    let Some(rest) = rest.strip_prefix(account_sid).filter(|r| r.starts_with('/')) else {
        return "another account";
    };
    let Some(rest) = rest.strip_prefix("/Messages/") else { return "another path" };
    match rest.strip_prefix(message_sid) {
        Some(r) if r.starts_with("/Media/") => "another path",
        _ => "another message",
    }
}

/// `ME` and 32 hex digits (Twilio's Media SID pattern).
pub fn is_media_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("ME") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a reply's media URLs are refused; the text names the URL's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundMediaError {
    TooMany(usize),
    Bad { index: usize, problem: &'static str },
}

impl fmt::Display for OutboundMediaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany(n) => write!(f, "media_urls has {n} URLs; at most {MAX_OUTBOUND_MEDIA} are allowed"),
            Self::Bad { index, problem } => write!(f, "media_urls[{index}] {problem}"),
        }
    }
}

impl std::error::Error for OutboundMediaError {}

/// Checks the media of a reply: at most 10, each an `https://` URL on a
/// public host name. IP literals, `localhost`, single-label names and
/// private suffixes (`.local`, `.internal`, `.home.arpa`, …) are refused:
/// Twilio fetches these from the internet, so such a URL is a mistake at
/// best, and at worst a probe of whatever network would resolve it.
pub fn check_outbound_urls(urls: &[String]) -> Result<(), OutboundMediaError> {
    if urls.len() > MAX_OUTBOUND_MEDIA {
        return Err(OutboundMediaError::TooMany(urls.len()));
    }
    for (index, u) in urls.iter().enumerate() {
        check_outbound_url(u).map_err(|problem| OutboundMediaError::Bad { index, problem })?;
    }
    Ok(())
}

fn check_outbound_url(u: &str) -> Result<(), &'static str> {
    if u.len() > 2048 {
        return Err("is longer than 2048 characters");
    }
    let parsed = url::Url::parse(u.trim()).map_err(|_| "is not a URL")?;
    if parsed.scheme() != "https" {
        return Err("must be an https:// URL");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password");
    }
    let host = match parsed.host() {
        None => return Err("has no host"),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => return Err("must name a host, not an IP address"),
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
    };
    const PRIVATE: [&str; 7] = [".localhost", ".local", ".internal", ".intranet", ".lan", ".home.arpa", ".corp"];
    if host == "localhost" || PRIVATE.iter().any(|s| host.ends_with(s)) {
        return Err("must be on a public host (not localhost or a private name)");
    }
    if !host.contains('.') {
        return Err("must be on a public host (a single-label name is private)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://api.twilio.com";
    const AC: &str = "AC0123456789abcdef0123456789abcdef";
    const SM: &str = "MM0123456789abcdef0123456789abcdef";
    const ME: &str = "ME0123456789abcdef0123456789abcdef";

    fn url(base: &str, ac: &str, sm: &str, tail: &str) -> String {
        format!("{base}/2010-04-01/Accounts/{ac}/Messages/{sm}/Media/{tail}")
    }

    #[test]
    fn only_this_messages_media_on_the_api_base_is_accepted() {
        let ok = MediaRef::parse(BASE, AC, SM, &url(BASE, AC, SM, ME)).unwrap();
        assert_eq!(ok.media_sid, ME);
        assert_eq!(ok.resource_url(), format!("{}.json", url(BASE, AC, SM, ME)));

        let refused = |u: &str| MediaRef::parse(BASE, AC, SM, u).unwrap_err().0;
        assert_eq!(refused(&url("https://evil.example", AC, SM, ME)), "another host");
        assert_eq!(refused(&url("https://api.twilio.com.evil.example", AC, SM, ME)), "another host");
        assert_eq!(refused(&url("https://api.twilio.com@evil.example", AC, SM, ME)), "another host");
        assert_eq!(refused(&url("http://api.twilio.com", AC, SM, ME)), "another host");
        assert_eq!(refused(&url("https://api.twilio.com:8443", AC, SM, ME)), "another host");
        assert_eq!(refused(&url("http://127.0.0.1", AC, SM, ME)), "another host");
        assert_eq!(refused(&url(BASE, "AC99999999999999999999999999999999", SM, ME)), "another account");
        assert_eq!(refused(&url(BASE, AC, "MM99999999999999999999999999999999", ME)), "another message");
        assert_eq!(refused(&format!("{BASE}/2010-04-01/Accounts/{AC}/Calls/x")), "another path");
        for tail in [
            &format!("{ME}?x=1") as &str,
            &format!("{ME}#f"),
            &format!("{ME}/../../../../x"),
            "..%2F..%2Fx",
            "ME0123",
            &format!("{ME}.json"),
            "",
        ] {
            assert!(MediaRef::parse(BASE, AC, SM, &url(BASE, AC, SM, tail)).is_err(), "{tail}");
        }
    }

    #[test]
    fn outbound_media_must_be_public_https_and_at_most_ten() {
        let ok = |u: &str| check_outbound_urls(&[u.to_owned()]);
        assert!(ok("https://cdn.example.com/a.png").is_ok());
        let problem = |u: &str| ok(u).unwrap_err().to_string();
        assert!(problem("http://cdn.example.com/a.png").contains("https"));
        assert!(problem("ftp://cdn.example.com/a.png").contains("https"));
        assert!(problem("https://127.0.0.1/a.png").contains("IP address"));
        assert!(problem("https://[::1]/a.png").contains("IP address"));
        assert!(problem("https://10.0.0.8/a.png").contains("IP address"));
        assert!(problem("https://169.254.169.254/latest").contains("IP address"));
        assert!(problem("https://localhost/a.png").contains("public host"));
        assert!(problem("https://printer.local/a.png").contains("public host"));
        assert!(problem("https://intranet/a.png").contains("single-label"));
        assert!(problem("https://u:p@cdn.example.com/a").contains("password"));
        assert!(problem("not a url").contains("not a URL"));
        let eleven: Vec<String> = (0..11).map(|i| format!("https://cdn.example.com/{i}.png")).collect();
        assert_eq!(check_outbound_urls(&eleven).unwrap_err(), OutboundMediaError::TooMany(11));
        assert!(check_outbound_urls(&eleven[..10]).is_ok());
        let mixed = vec!["https://cdn.example.com/a.png".to_owned(), "http://x.example.com/b".to_owned()];
        assert_eq!(check_outbound_urls(&mixed).unwrap_err().to_string(), "media_urls[1] must be an https:// URL");
    }
}
