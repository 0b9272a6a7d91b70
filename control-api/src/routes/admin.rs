//! Operator routes: tenants and their tokens.

use crate::AppState;
use crate::auth::{AdminAuth, hash_token, new_token};
use crate::error::{ApiError, on_unique};
use crate::extract::{Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use gannet_model::api::Problem;
use gannet_model::api::{CreateTenant, Quotas, Tenant, TenantCreated, TokenCreated};

/// `/v1/admin/…`
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/admin/tenants/{name}/tokens", post(create_tenant_token))
        .route("/v1/admin/domains/{hostname}/renew", post(renew_domain))
}

#[utoipa::path(post, path = "/v1/admin/domains/{hostname}/renew", tag = "admin", security(("bearer" = [])), params(("hostname" = String, Path, description = "a hostname with a managed certificate")),
    description = "Obtains a new managed certificate for the hostname now (after a key compromise, or to retry a failed one at once). The current certificate is served until the new one is issued.",
    responses((status = 202, description = "due now; `gannet domains list` shows its progress"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn renew_domain(
    State(s): State<AppState>,
    auth: AdminAuth,
    Path(hostname): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.config.acme.is_none() {
        return Err(ApiError::AcmeUnavailable);
    }
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    if !s.store.renew_managed_now(&hostname).await? {
        return Err(ApiError::NotFound(format!(
            "`{hostname}` has no managed certificate"
        )));
    }
    s.acme_wake.notify_one();
    s.store
        .audit(None, auth.token_id, "domain.renew", &hostname)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", security(("bearer" = [])), request_body = CreateTenant,
    responses((status = 201, description = "created; the token is shown once", body = TenantCreated), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_tenant(
    State(s): State<AppState>,
    auth: AdminAuth,
    Json(req): Json<CreateTenant>,
) -> Result<(StatusCode, axum::Json<TenantCreated>), ApiError> {
    super::check_name("tenant", &req.name)?;
    let quotas = req.quotas.apply(&Quotas::default());
    let (id, tenant) = s
        .store
        .create_tenant(&req.name, &quotas)
        .await
        .map_err(|e| on_unique(e, || format!("tenant `{}` already exists", req.name)))?;
    let token = new_token();
    s.store
        .insert_token(Some(id), "tenant", &hash_token(&token), "initial")
        .await?;
    s.store
        .audit(Some(id), auth.token_id, "tenant.create", &req.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TenantCreated { tenant, token }),
    ))
}

#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "all tenants", body = [Tenant]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_tenants(
    State(s): State<AppState>,
    _auth: AdminAuth,
) -> Result<axum::Json<Vec<Tenant>>, ApiError> {
    Ok(axum::Json(s.store.list_tenants().await?))
}

#[utoipa::path(post, path = "/v1/admin/tenants/{name}/tokens", tag = "admin", security(("bearer" = [])), params(("name" = String, Path, description = "tenant")),
    responses((status = 201, description = "a new token for the tenant", body = TokenCreated), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_tenant_token(
    State(s): State<AppState>,
    auth: AdminAuth,
    Path(name): Path<String>,
) -> Result<(StatusCode, axum::Json<TokenCreated>), ApiError> {
    let id = s
        .store
        .tenant_id(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant `{name}`")))?;
    let token = new_token();
    s.store
        .insert_token(Some(id), "tenant", &hash_token(&token), "operator-issued")
        .await?;
    s.store
        .audit(Some(id), auth.token_id, "token.create", &name)
        .await?;
    let info = s
        .store
        .list_tokens(id)
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("token just created is missing".into()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenCreated { info, token }),
    ))
}
