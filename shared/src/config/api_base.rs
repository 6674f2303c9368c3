//! `twilio_api_base`: where a channel's credentials are sent (every Twilio
//! call carries the account's Basic auth), so it is checked harder than any
//! other URL, and what comes back from it is echoed only when it is Twilio.
//!
//! - https, except for a loopback host (`127.0.0.0/8`, `::1`, `localhost`),
//!   where local stubs and tests listen;
//! - no user or password in the URL;
//! - no link-local or private address (`169.254/16` the cloud metadata
//!   services, `10/8`, `172.16/12`, `192.168/16`, `fc00::/7`, `fe80::/10`,
//!   the unspecified address) unless the channel says
//!   `allow_private_api_base: true` (a Twilio-compatible proxy inside the
//!   network). A host name is not resolved here: the operator names it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Twilio's default API base.
pub const TWILIO_API_BASE: &str = "https://api.twilio.com";

/// Why `u` cannot be a channel's `twilio_api_base`, if it cannot.
pub fn check_api_base(u: &str, allow_private: bool) -> Result<(), String> {
    super::load::check_base_url(u)?;
    let parsed = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user or password (the channel's credentials are sent by smsgate)".to_owned());
    }
    let loopback = is_loopback(&parsed);
    if parsed.scheme() != "https" && !loopback {
        return Err(format!("{} must be https:// (http:// only for a loopback host)", redacted(&parsed)));
    }
    if !allow_private && let Some(ip) = ip_of(&parsed).filter(|ip| is_private(*ip)) {
        return Err(format!(
            "{ip} is a private or link-local address; set \"allow_private_api_base\": true in the channel's config \
             if a Twilio-compatible proxy really listens there"
        ));
    }
    Ok(())
}

/// Whether `base` is Twilio's own: `api.twilio.com` or a host under
/// `twilio.com`, over https. Only their error texts are shown to operators.
pub fn is_twilio_host(base: &str) -> bool {
    url::Url::parse(base).is_ok_and(|u| {
        u.scheme() == "https"
            && u.host_str().is_some_and(|h| {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                h == "twilio.com" || h.ends_with(".twilio.com")
            })
    })
}

/// The URL without anything but scheme, host and port.
fn redacted(u: &url::Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
        (Some(h), None) => format!("{}://{h}", u.scheme()),
        _ => u.scheme().to_owned(),
    }
}

fn ip_of(u: &url::Url) -> Option<IpAddr> {
    match u.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)),
        url::Host::Domain(_) => None,
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(_) => ip_of(u).is_some_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    ip.is_private() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast()
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    // fc00::/7 unique local, fe80::/10 link-local.
    (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 || ip.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_or_loopback_and_no_private_targets_unless_allowed() {
        for ok in [
            "https://api.twilio.com",
            "https://twilio-proxy.example.com/base",
            "http://127.0.0.1:9000",
            "http://127.8.9.1",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert_eq!(check_api_base(ok, false), Ok(()), "{ok}");
        }
        let refused = |u: &str, allow: bool, why: &str| {
            let err = check_api_base(u, allow).unwrap_err();
            assert!(err.contains(why), "{u}: {err}");
            assert!(!err.contains("pw"), "{err}");
        };
        refused("http://api.twilio.com", false, "must be https://");
        refused("http://169.254.169.254", true, "must be https://");
        refused("https://user:pw@api.twilio.com", false, "user or password");
        refused("http://user:pw@127.0.0.1:9000", false, "user or password");
        for private in [
            "https://169.254.169.254",
            "https://10.1.2.3",
            "https://172.16.0.9",
            "https://172.31.255.1",
            "https://192.168.1.1:8443",
            "https://[fd00::1]",
            "https://[fe80::1]",
            "https://[::ffff:10.0.0.1]",
            "https://0.0.0.0",
        ] {
            refused(private, false, "allow_private_api_base");
            assert_eq!(check_api_base(private, true), Ok(()), "{private} with the opt-in");
        }
        assert_eq!(check_api_base("https://172.32.0.1", false), Ok(()), "not in 172.16/12");
    }

    #[test]
    fn only_twilio_hosts_are_twilio() {
        assert!(is_twilio_host("https://api.twilio.com"));
        assert!(is_twilio_host("https://api.dublin.ie1.twilio.com"));
        assert!(!is_twilio_host("http://api.twilio.com"));
        assert!(!is_twilio_host("https://twilio.com.evil.example"));
        assert!(!is_twilio_host("https://eviltwilio.com"));
        assert!(!is_twilio_host("http://127.0.0.1:9000"));
    }
}
