//! What the services share about retrying an HTTP call: reading the
//! server's `Retry-After` (the chat backend's and Twilio's).

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// `Retry-After` (RFC 9110 §10.2.3): delay seconds or an HTTP date, capped
/// at `cap` (a date in the past is zero). `None` when it is neither.
pub fn parse_retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
        Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_or_a_date_capped() {
        let cap = Duration::from_secs(120);
        assert_eq!(parse_retry_after("3", cap), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 7 ", cap), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("100000", cap), Some(cap));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap), Some(Duration::ZERO));
        let soon = (OffsetDateTime::now_utc() + time::Duration::seconds(60)).format(&Rfc2822).unwrap();
        let d = parse_retry_after(&soon, cap).unwrap();
        assert!(d > Duration::from_secs(55) && d <= Duration::from_secs(60), "{d:?}");
        assert_eq!(parse_retry_after("soon", cap), None);
    }
}
