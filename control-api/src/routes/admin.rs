//! Operator routes: tenants and their tokens, managed certificates'
//! renewal, the platform certificate.

use crate::AppState;
use crate::auth::{AdminAuth, hash_token, new_token};
use crate::desired_state::Scope;
use crate::error::{ApiError, on_unique};
use crate::extract::{Json, Path};
use crate::ownership::store::OperatorDomain;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use gannet_model::api::Problem;
use gannet_model::api::{
    CertificateSummary, CertificateUpload, CreateTenant, Quotas, Tenant, TenantCreated,
    TokenCreated,
};

/// `/v1/admin/…`
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/admin/tenants/{name}/tokens", post(create_tenant_token))
        .route("/v1/admin/domains/{hostname}/renew", post(renew_domain))
        .route("/v1/admin/domains", get(list_domains))
        .route(
            "/v1/admin/domains/{hostname}/verify",
            post(vouch_for_domain),
        )
        .route(
            "/v1/admin/platform-certificate",
            put(set_platform_certificate).get(get_platform_certificate),
        )
}

/// Which custom hostnames `GET /v1/admin/domains` lists.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct DomainFilter {
    /// Only those proved this way (`legacy`: claimed before proofs were
    /// required, to be re-verified; `dns`, `http`, `acme`, `operator`).
    #[serde(default)]
    pub verified_by: Option<String>,
    /// Only those waiting for a proof.
    #[serde(default)]
    pub unverified: bool,
}

#[utoipa::path(get, path = "/v1/admin/domains", tag = "admin", security(("bearer" = [])), params(DomainFilter),
    responses((status = 200, description = "every tenant's custom hostnames with how their control was proved", body = [OperatorDomain]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_domains(
    State(s): State<AppState>,
    _auth: AdminAuth,
    axum::extract::Query(filter): axum::extract::Query<DomainFilter>,
) -> Result<axum::Json<Vec<OperatorDomain>>, ApiError> {
    Ok(axum::Json(
        s.store
            .operator_domains(filter.verified_by.as_deref(), filter.unverified)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/admin/domains/{hostname}/verify", tag = "admin", security(("bearer" = [])), params(("hostname" = String, Path)),
    description = "The operator vouches for a tenant's control of a hostname (checked out of band): it serves within the sync time.",
    responses((status = 204, description = "verified (or verified before)"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn vouch_for_domain(
    State(s): State<AppState>,
    auth: AdminAuth,
    Path(hostname): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    let known = s
        .store
        .operator_domains(None, false)
        .await?
        .into_iter()
        .any(|d| d.hostname == hostname);
    if !known {
        return Err(ApiError::NotFound(format!(
            "no tenant has the custom hostname `{hostname}`"
        )));
    }
    if let Some(revision) = s.store.mark_verified(&hostname, "operator").await? {
        s.notifier.bump(revision, Scope::Everywhere);
        s.store
            .audit(None, auth.token_id, "domain.vouch", &hostname)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/admin/platform-certificate", tag = "admin", security(("bearer" = [])), request_body = CertificateUpload,
    description = "Sets the platform certificate, for `*.<platform domain>`: every gateway serves it (it wins over a gateway's --tls-cert file) within the sync time and keeps it 0600 in its state directory. Checked like a tenant's certificate; the key is sealed with the master key and never returned.",
    responses((status = 200, description = "set; what it says", body = CertificateSummary), (status = "4XX", description = "refused (422 `invalid-certificate` says what to fix); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_platform_certificate(
    State(s): State<AppState>,
    auth: AdminAuth,
    Json(upload): Json<CertificateUpload>,
) -> Result<axum::Json<CertificateSummary>, ApiError> {
    if s.store.master_key().is_none() {
        return Err(ApiError::NoMasterKey);
    }
    let names = format!("*.{}", s.config.platform_domain);
    let checked = tokio::task::spawn_blocking(move || {
        crate::certificate::check(&names, &upload, gannet_server::tls::unix_now())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::Certificate)?;
    let revision = s.store.set_platform_certificate(&checked).await?;
    s.notifier.bump(revision, Scope::Everywhere);
    let info = checked.info();
    s.store
        .audit(
            None,
            auth.token_id,
            "platform.certificate",
            &format!("issuer={:?} not_after={}", info.issuer, info.not_after),
        )
        .await?;
    get_platform_certificate(State(s), auth).await
}

#[utoipa::path(get, path = "/v1/admin/platform-certificate", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "what the platform certificate says (never its key)", body = CertificateSummary), (status = "4XX", description = "none is set; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_platform_certificate(
    State(s): State<AppState>,
    _auth: AdminAuth,
) -> Result<axum::Json<CertificateSummary>, ApiError> {
    s.store
        .platform_certificate()
        .await?
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::NotFound(
                "no platform certificate is set: gateways serve their --tls-cert files".into(),
            )
        })
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
