//! Twilio's `X-Twilio-Signature` (docs/TWILIO.md §1).
//!
//! base64(HMAC-SHA1(auth_token, url + for each param sorted bytewise by name:
//! name + value)). Repeated keys are handled as twilio-python and twilio-node
//! do: values de-duplicated, sorted, each appended as `name + value`. The same
//! code signs (for `smsgate simulate`, the load generator and tests) and
//! validates, so the two can never drift apart.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The header Twilio signs its requests with.
pub const HEADER: &str = "X-Twilio-Signature";

type HmacSha1 = Hmac<Sha1>;

/// No parameters (a GET, or a JSON body checked by its hash).
const NO_PARAMS: &[(&str, &str)] = &[];

fn mac_for<K: AsRef<str>, V: AsRef<str>>(token: &[u8], url: &str, params: &[(K, V)]) -> HmacSha1 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(token).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(url.as_bytes());
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    sorted.sort_unstable();
    sorted.dedup();
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// The signature Twilio would send for a form POST of `params` to `url`.
/// `params` are name/value pairs as received (`String`s, or `Cow`s borrowed
/// from the body).
pub fn sign<K: AsRef<str>, V: AsRef<str>>(token: &str, url: &str, params: &[(K, V)]) -> String {
    STANDARD.encode(mac_for(token.as_bytes(), url, params).finalize().into_bytes())
}

/// Checks `signature` (the header's value) for a form POST of `params` to
/// `url`, also accepting the URL with the default port added or removed, as
/// Twilio's own validators do. Comparison is constant-time.
pub fn validate<K: AsRef<str>, V: AsRef<str>>(token: &str, url: &str, params: &[(K, V)], signature: &str) -> bool {
    let Ok(expected) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let matches = |candidate: &str| mac_for(token.as_bytes(), candidate, params).verify_slice(&expected).is_ok();
    // The URL as requested first: the variants are only made when it fails.
    matches(url) || url_variants(url).iter().skip(1).any(|candidate| matches(candidate))
}

/// Checks a request with a JSON body: the URL carries `bodySHA256=<hex>`, the
/// signature covers the URL alone, and the hash must match the raw body.
pub fn validate_with_body(token: &str, url: &str, body: &[u8], signature: &str) -> bool {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else {
        return false;
    };
    let Some(claimed) =
        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v.into_owned())
    else {
        return false;
    };
    let actual = hex::encode(Sha256::digest(body));
    let hash_ok: bool =
        subtle::ConstantTimeEq::ct_eq(actual.as_bytes(), claimed.to_ascii_lowercase().as_bytes()).into();
    validate(token, url, NO_PARAMS, signature) && hash_ok
}

/// The parameters Twilio posts for an inbound SMS, in Twilio's order, for
/// whatever has to post one as Twilio would: `smsgate simulate`, the load
/// generator, tests. Media parameters (`MediaUrl{N}`) are the caller's to add.
pub fn inbound_sms_params(
    account_sid: &str,
    to: &str,
    message_sid: &str,
    from: &str,
    body: &str,
    num_media: usize,
) -> Vec<(String, String)> {
    let num_media = num_media.to_string();
    [
        ("ToCountry", "US"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", num_media.as_str()),
        ("SmsSid", message_sid),
        ("SmsStatus", "received"),
        ("Body", body),
        ("To", to),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", account_sid),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// The URL as given, plus the default-port variant: with `:443`/`:80` added
/// when it has no port, or removed when it has the default one.
pub fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let (default_port, rest) = if let Some(rest) = url.strip_prefix("https://") {
        ("443", rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        ("80", rest)
    } else {
        return out;
    };
    let scheme_len = url.len() - rest.len();
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    // An IPv6 literal has colons inside its brackets; a port comes after `]`.
    let port_colon = match host_port.rfind(']') {
        Some(close) => host_port[close..].find(':').map(|i| close + i),
        None => host_port.rfind(':'),
    };
    let authority_end = scheme_len + authority_len;
    match port_colon {
        None => out.push(format!("{}:{default_port}{}", &url[..authority_end], &url[authority_end..])),
        Some(colon) if &host_port[colon + 1..] == default_port => {
            let colon_at = scheme_len + host_start + colon;
            out.push(format!("{}{}", &url[..colon_at], &url[authority_end..]));
        }
        Some(_) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "12345";
    const U: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn call_params() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    fn go_params() -> Vec<(String, String)> {
        let mut g = call_params();
        g.extend(p(&[("ReasonConferenceEnded", "test"), ("Reason", "Participant")]));
        g
    }

    #[test]
    fn signs_the_reference_vector() {
        assert_eq!(sign(TOKEN, U, &call_params()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(validate(TOKEN, U, &call_params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
    }

    #[test]
    fn signs_explicit_port_urls() {
        let p = call_params();
        assert_eq!(sign(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", &p), "kvajT1Ptam85bY51eRf/AJRuM3w=");
        assert_eq!(sign(TOKEN, "http://mycompany.com:80/myapp.php?foo=1&bar=2", &p), "0ZXoZLH/DfblKGATFgpif+LLRf4=");
        assert_eq!(sign(TOKEN, "http://mycompany.com:1234/myapp.php?foo=1&bar=2", &p), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=");
    }

    #[test]
    fn accepts_the_default_port_variant_both_ways() {
        let p = call_params();
        // Twilio signed with :443, we know the URL without a port.
        assert!(validate(TOKEN, U, &p, "kvajT1Ptam85bY51eRf/AJRuM3w="));
        // Twilio signed without a port, we are configured with :443.
        assert!(validate(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", &p, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        // http and :80.
        assert!(validate(TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", &p, "0ZXoZLH/DfblKGATFgpif+LLRf4="));
    }

    #[test]
    fn rejects_a_non_default_port_that_was_not_signed() {
        assert!(!validate(TOKEN, U, &call_params(), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="));
        assert!(validate(
            TOKEN,
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &call_params(),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        ));
    }

    #[test]
    fn repeated_keys_are_deduplicated_and_sorted() {
        let params =
            p(&[("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]);
        assert_eq!(sign(TOKEN, U, &params), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        let a = p(&[("MessagingBinding.Address", "+1325xxxxxxx"), ("MessagingBinding.Address", "+1415xxxxxxx")]);
        let b = p(&[("MessagingBinding.Address", "+1415xxxxxxx"), ("MessagingBinding.Address", "+1325xxxxxxx")]);
        assert_eq!(sign(TOKEN, U, &a), "83O6e2vORAoJHUNzJjDWN1jz+BA=");
        assert_eq!(sign(TOKEN, U, &b), "83O6e2vORAoJHUNzJjDWN1jz+BA=");
    }

    #[test]
    fn json_body_is_checked_by_its_hash() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(hex::encode(Sha256::digest(body)), hash);
        let url = format!("{U}&bodySHA256={hash}");
        assert_eq!(sign(TOKEN, &url, NO_PARAMS), "a9nBmqA0ju/hNViExpshrM61xv4=");
        assert!(validate_with_body(TOKEN, &url, body, "a9nBmqA0ju/hNViExpshrM61xv4="));
        assert!(!validate_with_body(TOKEN, &url, b"{}", "a9nBmqA0ju/hNViExpshrM61xv4="));
        let bare = format!("https://mycompany.com/myapp.php?bodySHA256={hash}");
        assert_eq!(sign(TOKEN, &bare, NO_PARAMS), "y77kIzt2vzLz71DgmJGsen2scGs=");
    }

    #[test]
    fn empty_json_body_matches_only_with_port_443() {
        let signed = "https://mycompany.com:443/myapp.php?foo=1&bar=2&bodySHA256=44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let unsigned = signed.replace(":443", "");
        assert_eq!(sign(TOKEN, signed, NO_PARAMS), "Ldidvp12m26NI7eqEvxnEpkd9Hc=");
        assert_ne!(sign(TOKEN, &unsigned, NO_PARAMS), "Ldidvp12m26NI7eqEvxnEpkd9Hc=");
        // Configured without the port, the :443 variant still validates.
        assert!(validate_with_body(TOKEN, &unsigned, b"{}", "Ldidvp12m26NI7eqEvxnEpkd9Hc="));
    }

    #[test]
    fn userinfo_urls_keep_their_credentials_in_the_signed_string() {
        let p = call_params();
        let tail = "/myapp.php?foo=1&bar=2";
        assert_eq!(sign(TOKEN, &format!("https://user:pass@mycompany.com{tail}"), &p), "CukzLTc1tT5dXEDIHm/tKBanW10=");
        assert_eq!(
            sign(TOKEN, &format!("https://user:pass@mycompany.com:443{tail}"), &p),
            "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI="
        );
        assert_eq!(sign(TOKEN, &format!("https://user@mycompany.com{tail}"), &p), "2YRLlVAflCqxaNicjMpJcSTgzSs=");
        assert_eq!(sign(TOKEN, &format!("https://user@mycompany.com:443{tail}"), &p), "aZfj4hyX1MLZhSS6QIL18Vn2/RA=");
        assert!(validate(TOKEN, &format!("https://user:pass@mycompany.com{tail}"), &p, "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI="));
    }

    #[test]
    fn encoded_query_is_signed_as_written() {
        assert_eq!(sign(TOKEN, &format!("{U}&Body=It%27s+amazing"), &call_params()), "TfZzewPq8wqrGlMfyAud8+/IvJ0=");
    }

    #[test]
    fn go_vectors_and_the_wrong_order_fails() {
        let g = go_params();
        assert_eq!(sign(TOKEN, U, &g), "vOEb5UThFn24KEfnOFLQY2AE5FY=");
        assert_eq!(sign(TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", &g), "n2xBNyzSW7rfYStDtOFiFMv7qNo=");
        assert!(!validate(TOKEN, U, &g, "95+Bu0JVPi0r/SsESZCVf0dWAjw="));
        let form = p(&[("property", "value"), ("boolean", "true")]);
        assert_eq!(sign(TOKEN, U, &form), "NBdBDr/T/lgjI+tlgpXjKZQZs/k=");
    }

    #[test]
    fn docs_worked_example() {
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(sign(TOKEN, "https://example.com/myapp.php?foo=1&bar=2", &params), "L/OH5YylLD5NRKLltdqwSvS0BnU=");
        let json = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
        assert_eq!(
            hex::encode(Sha256::digest(json)),
            "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"
        );
    }

    #[test]
    fn rejects_signature_from_other_token_or_garbage() {
        let sig = sign("other-token", U, &call_params());
        assert!(!validate(TOKEN, U, &call_params(), &sig));
        assert!(!validate(TOKEN, U, &call_params(), "not base64!"));
        assert!(!validate(TOKEN, U, &call_params(), ""));
    }

    #[test]
    fn url_variants_handle_ipv6_and_non_http() {
        assert_eq!(url_variants("http://[::1]/x"), vec!["http://[::1]/x".to_owned(), "http://[::1]:80/x".to_owned()]);
        assert_eq!(url_variants("http://[::1]:80/x")[1], "http://[::1]/x");
        assert_eq!(url_variants("ftp://x/y").len(), 1);
    }
}
