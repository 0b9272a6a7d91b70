//! A tenant's own account: who am I, tokens, audit log.

use crate::AppState;
use crate::auth::{Caller, TenantAuth, hash_token, new_token};
use crate::error::ApiError;
use crate::extract::Path;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use gannet_model::api::Problem;
use gannet_model::api::{AuditEntry, TokenCreated, TokenInfo, WhoAmI};

/// `/v1/whoami`, `/v1/tokens`, `/v1/audit`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/audit", get(audit))
}

#[utoipa::path(get, path = "/v1/whoami", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "the caller", body = WhoAmI), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn whoami(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<WhoAmI>, ApiError> {
    Ok(axum::Json(match caller.tenant_id {
        None => WhoAmI {
            role: "operator".into(),
            tenant: None,
            stored_bytes: 0,
            apps: 0,
        },
        Some(t) => WhoAmI {
            role: "tenant".into(),
            tenant: Some(s.store.tenant(t).await?),
            stored_bytes: s.store.stored_bytes(t).await?,
            apps: s.store.count_apps(t).await?,
        },
    }))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "the tenant's tokens", body = [TokenInfo]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_tokens(
    State(s): State<AppState>,
    auth: TenantAuth,
) -> Result<axum::Json<Vec<TokenInfo>>, ApiError> {
    Ok(axum::Json(s.store.list_tokens(auth.tenant_id).await?))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "account", security(("bearer" = [])),
    responses((status = 201, description = "a new token, shown once", body = TokenCreated), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_token(
    State(s): State<AppState>,
    auth: TenantAuth,
) -> Result<(StatusCode, axum::Json<TokenCreated>), ApiError> {
    let token = new_token();
    // Within the tenant's `max_tokens` quota (403 quota-exceeded past it).
    let id = s
        .store
        .insert_tenant_token(auth.tenant_id, &hash_token(&token), "tenant-issued")
        .await?;
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "token.create",
            &id.to_string(),
        )
        .await?;
    let info = s
        .store
        .list_tokens(auth.tenant_id)
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::Internal("token just created is missing".into()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenCreated { info, token }),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "account", security(("bearer" = [])), params(("id" = i64, Path, description = "token id")),
    responses((status = 204, description = "revoked"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_token(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if !s.store.revoke_token(auth.tenant_id, id).await? {
        return Err(ApiError::NotFound(format!("no active token {id}")));
    }
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "token.revoke",
            &id.to_string(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/audit", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "the tenant's audit log, newest first", body = [AuditEntry]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn audit(
    State(s): State<AppState>,
    auth: TenantAuth,
) -> Result<axum::Json<Vec<AuditEntry>>, ApiError> {
    Ok(axum::Json(s.store.list_audit(auth.tenant_id, 500).await?))
}
