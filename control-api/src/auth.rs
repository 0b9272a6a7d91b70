//! Tokens and the extractors that check them.
//!
//! A token is `gnt_` followed by 64 hex digits of randomness; only its
//! sha256 is stored. `Caller` resolves the bearer token (401 when missing,
//! unknown or revoked) and applies the rate limits (429 with `Retry-After`):
//! per token, in memory (a cheap first line, per replica), then, for tenant
//! tokens, per tenant across all its tokens and every replica — a fixed
//! window counted in the database, one statement per request
//! ([`crate::store::Store::count_tenant_request`]). `TenantAuth` and
//! `AdminAuth` narrow it to a role (403 otherwise).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A new random token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("gnt_{hex}")
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The token's id (for the audit log).
    pub token_id: i64,
    /// The tenant, for tenant tokens.
    pub tenant_id: Option<i64>,
}

/// A caller with a tenant token.
#[derive(Debug, Clone, Copy)]
pub struct TenantAuth {
    /// The token's id.
    pub token_id: i64,
    /// The tenant every query is scoped to.
    pub tenant_id: i64,
}

/// A caller with an operator token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth {
    /// The token's id.
    pub token_id: i64,
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized(
            "missing token: send `Authorization: Bearer <token>` (gannet login)",
        ))?;
    header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let row = state
            .store
            .find_token(&hash_token(token))
            .await?
            .ok_or(ApiError::Unauthorized("unknown token"))?;
        if row.revoked_ms.is_some() {
            return Err(ApiError::Unauthorized("this token has been revoked"));
        }
        if !state.limiter.admit(row.id) {
            return Err(ApiError::RateLimited);
        }
        let tenant_id = if row.role == "tenant" {
            row.tenant_id
        } else {
            None
        };
        if let Some(tenant_id) = tenant_id {
            admit_tenant(state, tenant_id).await?;
        }
        Ok(Caller {
            token_id: row.id,
            tenant_id,
        })
    }
}

/// Counts a request of `tenant_id` in its current window (shared by every
/// replica) and refuses it past `tenant_rate_limit`, saying when the window
/// ends.
async fn admit_tenant(state: &AppState, tenant_id: i64) -> Result<(), ApiError> {
    let limit = state.config.tenant_rate_limit;
    if limit == 0 {
        return Ok(());
    }
    let window = state.config.tenant_rate_window;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
    let now = crate::store::now_ms();
    let counted = state
        .store
        .count_tenant_request(tenant_id, now, window_ms)
        .await?;
    if counted.requests <= i64::try_from(limit).unwrap_or(i64::MAX) {
        return Ok(());
    }
    let left_ms = counted.start_ms.saturating_add(window_ms) - now;
    Err(ApiError::TenantRateLimited {
        limit,
        window_secs: window.as_secs().max(1),
        retry_after: u64::try_from(left_ms).unwrap_or(0).div_ceil(1000).max(1),
    })
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.tenant_id {
            Some(tenant_id) => Ok(TenantAuth {
                token_id: caller.token_id,
                tenant_id,
            }),
            None => Err(ApiError::Forbidden("this route needs a tenant token")),
        }
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.tenant_id {
            None => Ok(AdminAuth {
                token_id: caller.token_id,
            }),
            Some(_) => Err(ApiError::Forbidden("this route needs an operator token")),
        }
    }
}

/// Per-token token buckets: `rate` requests per second, bursts of `burst`.
/// Per replica: with N replicas a token gets up to N times the rate.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `rate` 0 disables it.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's worth for `token`; false if it has none left.
    pub fn admit(&self, token: i64) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        // No await while held; the critical section is a few arithmetic ops.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(token).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("gnt_") && a.len() == 68);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), a);
    }

    #[test]
    fn rate_limit_refills() {
        let l = RateLimiter::new(1000.0, 3.0);
        assert!(l.admit(1) && l.admit(1) && l.admit(1));
        assert!(!l.admit(1));
        assert!(l.admit(2), "buckets are per token");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(l.admit(1));
    }
}
