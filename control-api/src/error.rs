//! `ApiError`: every failure of the API, and the one place it becomes an
//! `application/problem+json` response. Each kind has a stable `type` URI;
//! 5xx details go to the log, never to the client.
//!
//! | kind | status |
//! |---|---|
//! | `unauthorized` (missing, wrong or revoked token) | 401 |
//! | `forbidden` (a tenant token on an operator route) | 403 |
//! | `not-found` (also: another tenant's resource) | 404 |
//! | `conflict` (name or hostname taken) | 409 |
//! | `invalid-request` (bad JSON, bad name, bad limit) | 400 |
//! | `quota-exceeded` | 403 |
//! | `limit-above-quota` | 403 |
//! | `payload-too-large` | 413 |
//! | `invalid-component` (not wasm, core module, malformed, no handler, does not compile) | 422 |
//! | `unsupported-imports` (with `refused_imports`) | 422 |
//! | `compile-limit-exceeded` (compiling took longer, or more CPU time or memory, than allowed) | 422 |
//! | `invalid-certificate` (a domain's certificate or key cannot be served: what to fix in the detail) | 422 |
//! | `rate-limited` (per token, or per tenant across its tokens and replicas; with `Retry-After`) | 429 |
//! | `too-many-uploads` (the tenant's uploads in progress at once; with `Retry-After`) | 429 |
//! | `internal` | 500 |
//! | `compiler-busy` (every compile slot and queue place taken; with `Retry-After`) | 503 |
//! | `certificates-unavailable` (the API runs without a master key, so it cannot store private keys) | 503 |

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gannet_model::api::Problem;
use gannet_runtime::validate::ValidationError;

const TYPE_BASE: &str = "https://gannet.dev/problems/";

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token without the role for this route.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Not found (or not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// Unique name or hostname taken.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A quota would be exceeded.
    #[error("{0}")]
    Quota(String),
    /// A requested limit is above the tenant's ceiling.
    #[error("{0}")]
    LimitAboveQuota(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The upload is not a runnable component.
    #[error("{0}")]
    Component(ValidationError),
    /// Too many requests for this token.
    #[error("too many requests for this token; slow down")]
    RateLimited,
    /// Too many requests for this tenant, across all its tokens and every
    /// replica.
    #[error(
        "too many requests for this tenant: at most {limit} every {window_secs} s across all its tokens; slow down"
    )]
    TenantRateLimited {
        /// Requests allowed per window.
        limit: u64,
        /// The window, seconds.
        window_secs: u64,
        /// Seconds until the window ends.
        retry_after: u64,
    },
    /// The tenant has as many uploads in progress as it may.
    #[error(
        "the tenant already has {0} uploads in progress, the most allowed at once; retry when one has finished"
    )]
    TooManyUploads(usize),
    /// Every compile slot is taken and the queue is full (or the wait for a
    /// slot ran out).
    #[error("the platform is busy compiling other components; retry shortly")]
    CompilerBusy,
    /// Compiling the upload passed its time, CPU or memory bound.
    #[error("{0}")]
    CompileLimit(String),
    /// A domain's certificate or key cannot be served.
    #[error("{0}")]
    Certificate(crate::certificate::CertificateRefused),
    /// The API has no master key, so it cannot store private keys.
    #[error(
        "this control API has no master key, so it cannot store secrets or certificates' private keys: the operator must start it with --master-key-file or GANNET_MASTER_KEY"
    )]
    NoMasterKey,
    /// Managed certificates were asked for, but the operator configured
    /// no ACME directory.
    #[error(
        "this control API obtains no certificates (the operator has not set --acme-directory): upload your own with --cert/--key"
    )]
    AcmeUnavailable,
    /// The hostname's ownership could not be proved (yet): what each
    /// check found.
    #[error("control of the hostname is not proved yet: {0}")]
    NotProved(String),
    /// An app's placement selector matches no PoP.
    #[error("{0}")]
    NoPopMatches(String),
    /// The change would move an app's live rollout (its placement, say).
    #[error("{0}")]
    RolloutInProgress(String),
    /// A rollout action was asked of a rollout that has ended.
    #[error("{0}")]
    RolloutNotLive(String),
    /// Anything else.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Invalid(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
            ),
            ApiError::Quota(_) => (StatusCode::FORBIDDEN, "quota-exceeded", "Quota exceeded"),
            ApiError::LimitAboveQuota(_) => (
                StatusCode::FORBIDDEN,
                "limit-above-quota",
                "Limit above quota",
            ),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::Component(ValidationError::RefusedImports(_)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported-imports",
                "Unsupported imports",
            ),
            ApiError::Component(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-component",
                "Invalid component",
            ),
            ApiError::RateLimited | ApiError::TenantRateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limited",
            ),
            ApiError::TooManyUploads(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-uploads",
                "Too many uploads",
            ),
            ApiError::CompilerBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "compiler-busy",
                "Compiler busy",
            ),
            ApiError::CompileLimit(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "compile-limit-exceeded",
                "Compile limit exceeded",
            ),
            ApiError::Certificate(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-certificate",
                "Invalid certificate",
            ),
            ApiError::NoMasterKey => (
                StatusCode::SERVICE_UNAVAILABLE,
                "certificates-unavailable",
                "Certificates unavailable",
            ),
            ApiError::NotProved(_) => (
                StatusCode::CONFLICT,
                "ownership-not-proved",
                "Ownership not proved",
            ),
            ApiError::AcmeUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "managed-certificates-unavailable",
                "Managed certificates unavailable",
            ),
            ApiError::NoPopMatches(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-pop-matches",
                "No PoP matches",
            ),
            ApiError::RolloutInProgress(_) => (
                StatusCode::CONFLICT,
                "rollout-in-progress",
                "Rollout in progress",
            ),
            ApiError::RolloutNotLive(_) => {
                (StatusCode::CONFLICT, "rollout-not-live", "Rollout not live")
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// Seconds a client should wait before retrying, for refusals that
    /// pass with time (sent as `Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited => Some(1),
            ApiError::TenantRateLimited { retry_after, .. } => Some((*retry_after).max(1)),
            ApiError::TooManyUploads(_) => Some(2),
            ApiError::CompilerBusy => Some(5),
            _ => None,
        }
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.parts();
        Problem {
            kind: format!("{TYPE_BASE}{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            refused_imports: match self {
                ApiError::Component(ValidationError::RefusedImports(v)) => v.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

impl From<crate::store::WriteError> for ApiError {
    fn from(e: crate::store::WriteError) -> Self {
        use crate::store::WriteError;
        match e {
            WriteError::Quota(m) => ApiError::Quota(m),
            WriteError::HostnameTaken(m) => ApiError::Conflict(m),
            WriteError::RolloutInProgress(m) => ApiError::RolloutInProgress(m),
            WriteError::NoMasterKey => ApiError::NoMasterKey,
            WriteError::Db(e) => e.into(),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(format!("io: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Maps a unique-constraint violation to 409 with `what`; other errors pass.
pub fn on_unique(
    e: impl Into<crate::store::WriteError>,
    what: impl FnOnce() -> String,
) -> ApiError {
    match e.into() {
        crate::store::WriteError::Db(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            ApiError::Conflict(what())
        }
        e => e.into(),
    }
}
