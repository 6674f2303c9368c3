//! The CLI's one error type; each variant has its exit status.

use smsgate_shared::config::{ConfigError, EXIT_BAD_CONFIG};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A wrong argument value clap could not catch: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The configuration is invalid: exit 64.
    #[error("{0}")]
    BadConfig(String),
    /// The operation failed: exit 1.
    #[error("{0}")]
    Failed(String),
    /// The admin API (or ingress) could not be reached: exit 1.
    #[error("cannot reach {what} at {url}: {source}{hint}")]
    Unreachable {
        what: &'static str,
        url: String,
        hint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The admin API refused: exit 1.
    #[error("the admin API answered {status}: {code}: {detail}{hint}")]
    Api { status: u16, code: String, detail: String, hint: &'static str },
}

impl CliError {
    /// The same error with `note` added to its message (usage,
    /// configuration and failure errors; the others are left as they are).
    pub fn with_note(self, note: &str) -> Self {
        match self {
            Self::Usage(m) => Self::Usage(m + note),
            Self::BadConfig(m) => Self::BadConfig(m + note),
            Self::Failed(m) => Self::Failed(m + note),
            other => other,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::BadConfig(_) => EXIT_BAD_CONFIG as u8,
            Self::Failed(_) | Self::Unreachable { .. } | Self::Api { .. } => 1,
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        Self::BadConfig(e.to_string())
    }
}
