//! Connecting to NATS: one server or a cluster (`SMSGATE_NATS_URL` lists
//! several, comma-separated), with the credentials a secured deployment asks
//! for, and addresses that are safe to log.
//!
//! Authentication, in the order NATS deployments use them: a `.creds` file
//! (`SMSGATE_NATS_CREDS`: JWT plus nkey seed, as NGS/Synadia Cloud and
//! operator-mode servers issue), an nkey seed file (`SMSGATE_NATS_NKEY`), a
//! token (`SMSGATE_NATS_TOKEN`), or `user:password@` in the URL. TLS: a
//! `tls://` URL (or a server that requires it), `SMSGATE_NATS_CA` for a
//! private CA, and `SMSGATE_NATS_CERT` with `SMSGATE_NATS_KEY` for a client
//! certificate. Secrets are read from files or `SecretString`s and never
//! logged: [`redact`] strips the user info from URLs before they reach a log
//! line or an error.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{ConfigError, Lookup, Problem};

/// How to reach NATS, from the environment.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `SMSGATE_NATS_URL`, split at commas.
    pub urls: Vec<String>,
    /// `SMSGATE_NATS_REPLICAS` [1]: replicas of every stream and bucket.
    pub replicas: usize,
    pub creds: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    pub token: Option<SecretString>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl NatsOptions {
    /// A plain connection to `url` (one or several, comma-separated).
    pub fn url(url: &str) -> Self {
        Self { urls: split_urls(url), replicas: 1, ..Self::default() }
    }

    /// Reads and checks the `SMSGATE_NATS_*` variables; every problem is
    /// reported at once, naming its variable.
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut fail = |key: &str, message: String| {
            problems.push(Problem { source: "environment".into(), channel: None, key: key.into(), message });
        };
        let get = |k: &str| env(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let urls = split_urls(&get("SMSGATE_NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()));
        if urls.is_empty() {
            fail("SMSGATE_NATS_URL", "lists no server".into());
        }
        for u in &urls {
            if let Err(e) = u.parse::<async_nats::ServerAddr>() {
                fail("SMSGATE_NATS_URL", format!("{} is not a NATS server address ({e})", redact(u)));
            }
        }
        let replicas = match get("SMSGATE_NATS_REPLICAS").map(|v| v.parse::<usize>()) {
            None => 1,
            Some(Ok(n @ 1..=5)) => n,
            Some(_) => {
                fail("SMSGATE_NATS_REPLICAS", "must be a whole number from 1 to 5 (JetStream's limit)".into());
                1
            }
        };
        let mut file = |key: &str| -> Option<PathBuf> {
            let path = PathBuf::from(get(key)?);
            if !path.is_file() {
                fail(key, format!("{} is not a readable file", path.display()));
            }
            Some(path)
        };
        let (creds, nkey, ca, cert, key) = (
            file("SMSGATE_NATS_CREDS"),
            file("SMSGATE_NATS_NKEY"),
            file("SMSGATE_NATS_CA"),
            file("SMSGATE_NATS_CERT"),
            file("SMSGATE_NATS_KEY"),
        );
        let token = get("SMSGATE_NATS_TOKEN").map(SecretString::from);
        if creds.is_some() && nkey.is_some() {
            fail("SMSGATE_NATS_NKEY", "set either SMSGATE_NATS_CREDS or SMSGATE_NATS_NKEY, not both".into());
        }
        if cert.is_some() != key.is_some() {
            fail("SMSGATE_NATS_CERT", "a client certificate needs both SMSGATE_NATS_CERT and SMSGATE_NATS_KEY".into());
        }
        if problems.is_empty() {
            Ok(Self { urls, replicas, creds, nkey, token, ca, cert, key })
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The servers, safe to log.
    pub fn display(&self) -> String {
        self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
    }

    fn tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("tls://")) || self.ca.is_some() || self.cert.is_some()
    }
}

fn split_urls(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

/// `nats://user:secret@host:4222` → `nats://***@host:4222`.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

/// `nats://user:pass@host:4222` → (`nats://host:4222`, user and password,
/// percent-decoded).
fn split_userinfo(u: &str) -> (String, Option<(String, Option<String>)>) {
    let Ok(mut parsed) = url::Url::parse(u) else { return (u.to_owned(), None) };
    if parsed.username().is_empty() {
        return (u.to_owned(), None);
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let user = decode(parsed.username());
    let password = parsed.password().map(decode);
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (parsed.to_string(), Some((user, password)))
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read the NATS credentials file {path}")]
    Creds {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the NATS nkey seed file {path}")]
    Nkey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {servers}")]
    Connect {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connects for `service`, retrying forever in the background (a service
/// starts, and answers health checks, while NATS is still down) and
/// reconnecting to any of the listed servers.
pub async fn connect(options: &NatsOptions, service: &str) -> Result<async_nats::Client, ConnectError> {
    let service_name = service.to_owned();
    let mut connect = async_nats::ConnectOptions::new()
        .name(format!("smsgate-{service}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let service = service_name.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(service, outcome = "connected", "NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(service, outcome = "disconnected", "NATS disconnected")
                    }
                    other => tracing::info!(service, event = %other, "NATS event"),
                }
            }
        });
    if let Some(path) = &options.creds {
        connect = connect
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Creds { path: path.display().to_string(), source })?;
    }
    if let Some(path) = &options.nkey {
        let seed = std::fs::read_to_string(path)
            .map_err(|source| ConnectError::Nkey { path: path.display().to_string(), source })?;
        connect = connect.nkey(seed.trim().to_owned());
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.expose_secret().to_owned());
    }
    if let Some(ca) = &options.ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&options.cert, &options.key) {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if options.tls() {
        connect = connect.require_tls(true);
    }
    // async-nats does not send the user info of a URL itself: take it out
    // and pass it on (user and password, or a token alone).
    let mut servers = Vec::with_capacity(options.urls.len());
    let mut userinfo = None;
    for u in &options.urls {
        let (server, info) = split_userinfo(u);
        servers.push(server);
        userinfo = userinfo.or(info);
    }
    match userinfo {
        Some((user, Some(password))) => connect = connect.user_and_password(user, password),
        Some((token, None)) if options.token.is_none() => connect = connect.token(token),
        _ => {}
    }
    connect
        .connect(servers.as_slice())
        .await
        .map_err(|source| ConnectError::Connect { servers: options.display(), source })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<NatsOptions, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        NatsOptions::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn a_comma_separated_url_is_a_cluster() {
        let o = parse(&[
            ("SMSGATE_NATS_URL", "nats://a:4222, nats://b:4222,nats://c:4222"),
            ("SMSGATE_NATS_REPLICAS", "3"),
        ])
        .unwrap();
        assert_eq!(o.urls, ["nats://a:4222", "nats://b:4222", "nats://c:4222"]);
        assert_eq!(o.replicas, 3);
    }

    #[test]
    fn passwords_in_urls_never_reach_a_log_line() {
        assert_eq!(redact("nats://smsgate:s3cret@nats.example:4222"), "nats://***@nats.example:4222");
        assert_eq!(redact("tls://tok@h:4222"), "tls://***@h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        let o = parse(&[("SMSGATE_NATS_URL", "nats://u:p4ss@a:4222,nats://b:4222")]).unwrap();
        assert_eq!(o.display(), "nats://***@a:4222,nats://b:4222");
        let token = parse(&[("SMSGATE_NATS_TOKEN", "t0ken-value")]).unwrap();
        assert!(!format!("{token:?}").contains("t0ken-value"));
    }

    #[test]
    fn user_info_is_taken_out_of_the_url_and_decoded() {
        let (server, info) = split_userinfo("nats://smsgate:p%40ss@nats.example:4222");
        assert_eq!(server, "nats://nats.example:4222");
        assert_eq!(info, Some(("smsgate".to_owned(), Some("p@ss".to_owned()))));
        assert_eq!(split_userinfo("tls://tok@h:4222").1, Some(("tok".to_owned(), None)));
        assert_eq!(split_userinfo("nats://h:4222"), ("nats://h:4222".to_owned(), None));
    }

    #[test]
    fn bad_settings_are_reported_by_variable() {
        let e = parse(&[
            ("SMSGATE_NATS_REPLICAS", "7"),
            ("SMSGATE_NATS_CA", "/nonexistent/ca.pem"),
            ("SMSGATE_NATS_CERT", "/nonexistent/cert.pem"),
        ])
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"SMSGATE_NATS_REPLICAS"), "{e}");
        assert!(keys.contains(&"SMSGATE_NATS_CA"), "{e}");
        assert!(keys.contains(&"SMSGATE_NATS_CERT"), "{e}");
    }
}
