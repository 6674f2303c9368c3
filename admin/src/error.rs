//! [`AdminError`]: every way an admin request fails, with one status code
//! each and a JSON `{code, detail}` body.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The longest any single NATS operation of an admin request may take.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an admin request failed. Each variant has one status code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong: 400.
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    /// No such channel, conversation or dead letter: 404.
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    /// The request clashes with what exists (a channel id or path token in
    /// use, a file channel that cannot be removed): 409.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// The server is not set up for this (no `SMSGATE_SECRET_KEY`): 412.
    #[error("{detail}")]
    NotSetUp { code: &'static str, detail: String },
    /// Twilio refused or could not be reached while acting for the
    /// operator: 502.
    #[error("{detail}")]
    Upstream { code: &'static str, detail: String },
    /// Missing or wrong bearer token: 401.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// Refused before any handler ([`crate::guard`]): wrong host (421),
    /// another origin (403), not JSON (415).
    #[error("{detail}")]
    Refused { status: StatusCode, code: &'static str, detail: &'static str },
    /// The compliance guard refused: 403, or 409 for quiet hours when the
    /// request asked not to defer (with the next allowed time).
    #[error("{detail}")]
    Guard { status: StatusCode, code: &'static str, detail: &'static str, next_allowed_at: Option<String> },
    /// Over a limit of this listener (event streams open, sign-in
    /// attempts): 503 or 429, with `Retry-After` seconds.
    #[error("{detail}")]
    Limited { status: StatusCode, code: &'static str, detail: String, retry_after: u64 },
    /// NATS is down or did not answer in time: 503.
    #[error("NATS is unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else: logged with its cause chain, answered as an opaque 500.
    #[error("{what}")]
    Internal {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl AdminError {
    pub(crate) fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid { code, detail: detail.into() }
    }

    pub(crate) fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::NotFound { code, detail: detail.into() }
    }

    pub(crate) fn nats(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable { what: what.into(), source: Some(Box::new(e)) }
    }

    pub(crate) fn refused(status: StatusCode, code: &'static str, detail: &'static str) -> Self {
        Self::Refused { status, code, detail }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Refused { status, .. } | Self::Guard { status, .. } | Self::Limited { status, .. } => *status,
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::NotSetUp { .. } => StatusCode::PRECONDITION_FAILED,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Invalid { code, .. }
            | Self::NotFound { code, .. }
            | Self::Refused { code, .. }
            | Self::Guard { code, .. }
            | Self::Limited { code, .. }
            | Self::Conflict { code, .. }
            | Self::NotSetUp { code, .. }
            | Self::Upstream { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Unavailable { .. } => "nats_unavailable",
            Self::Internal { .. } => "internal",
        }
    }
}

/// The JSON body of every error answer. The guard's refusals also carry
/// the code as `error` (DESIGN: 403 `{error}`) and, for quiet hours,
/// `next_allowed_at`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_allowed_at: Option<String>,
}

impl AdminError {
    /// The status and the body this error is answered with, logged as
    /// every admin answer is (the MCP tools answer the same body as a tool
    /// error), and a `Retry-After` in seconds when there is one.
    pub(crate) fn into_parts(self) -> (StatusCode, ErrorBody, Option<u64>) {
        let status = self.status();
        let detail = match &self {
            Self::Internal { .. } => {
                tracing::error!(
                    service = "ingress",
                    stage = "admin",
                    outcome = "error",
                    error = &self as &dyn std::error::Error,
                    "admin request failed"
                );
                "internal error (see the ingress log)".to_owned()
            }
            Self::Unavailable { .. } => {
                tracing::warn!(
                    service = "ingress",
                    stage = "admin",
                    outcome = "nats_unavailable",
                    error = &self as &dyn std::error::Error,
                    "admin request failed"
                );
                let mut text = self.to_string();
                let mut source = std::error::Error::source(&self);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text
            }
            // The guard and the limits log their own refusals.
            Self::Refused { .. } | Self::Unauthorized | Self::Limited { .. } => self.to_string(),
            _ => {
                tracing::info!(
                    service = "ingress",
                    stage = "admin",
                    status = status.as_u16(),
                    code = self.code(),
                    outcome = "refused",
                    reason = %smsgate_shared::redact::third_party(&self.to_string(), 300),
                    "admin request refused"
                );
                self.to_string()
            }
        };
        let (error, next_allowed_at) = match &self {
            Self::Guard { code, next_allowed_at, .. } => (Some((*code).to_owned()), next_allowed_at.clone()),
            _ => (None, None),
        };
        let body = ErrorBody { code: self.code().to_owned(), detail, error, next_allowed_at };
        let retry_after = match &self {
            Self::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        (status, body, retry_after)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, body, retry_after) = self.into_parts();
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

/// Runs a NATS operation with [`NATS_TIMEOUT`]; a timeout is a 503.
pub(crate) async fn bounded<T, E, F>(what: &str, f: F) -> Result<T, AdminError>
where
    F: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(NATS_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(AdminError::nats(what, e)),
        Err(_) => {
            Err(AdminError::Unavailable { what: format!("{what}: no answer within {NATS_TIMEOUT:?}"), source: None })
        }
    }
}
