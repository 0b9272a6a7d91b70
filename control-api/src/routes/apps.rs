//! Apps and their hostnames.

use crate::AppState;
use crate::auth::TenantAuth;
use crate::desired_state::Scope;
use crate::error::{ApiError, on_unique};
use crate::extract::{Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use gannet_model::api::Problem;
use gannet_model::api::{AddDomain, App, CreateApp};

/// `/v1/apps…`
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps", post(create_app).get(list_apps))
        .route("/v1/apps/{app}", get(get_app))
        .route("/v1/apps/{app}/domains", post(add_domain))
        .route("/v1/apps/{app}/domains/{hostname}", delete(remove_domain))
}

/// The app named `name` of the caller's tenant, or 404 — also when another
/// tenant has an app of that name.
pub async fn app_of(
    s: &AppState,
    auth: &TenantAuth,
    name: &str,
) -> Result<crate::store::AppRow, ApiError> {
    s.store
        .app_row(auth.tenant_id, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no app `{name}`")))
}

#[utoipa::path(post, path = "/v1/apps", tag = "apps", security(("bearer" = [])), request_body = CreateApp,
    responses((status = 201, description = "created", body = App), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_app(
    State(s): State<AppState>,
    auth: TenantAuth,
    Json(req): Json<CreateApp>,
) -> Result<(StatusCode, axum::Json<App>), ApiError> {
    super::check_name("app", &req.name)?;
    let tenant = s.store.tenant(auth.tenant_id).await?;
    let hostname = format!("{}-{}.{}", req.name, tenant.name, s.config.platform_domain);
    let app = s
        .store
        .create_app(auth.tenant_id, &req.name, &hostname)
        .await
        .map_err(|e| {
            on_unique(e, || {
                format!("app `{}` or hostname `{hostname}` already exists", req.name)
            })
        })?;
    s.store
        .audit(Some(auth.tenant_id), auth.token_id, "app.create", &req.name)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(app)))
}

#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("bearer" = [])),
    responses((status = 200, description = "the tenant's apps", body = [App]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_apps(
    State(s): State<AppState>,
    auth: TenantAuth,
) -> Result<axum::Json<Vec<App>>, ApiError> {
    Ok(axum::Json(s.store.list_apps(auth.tenant_id).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "the app", body = App), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_app(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
) -> Result<axum::Json<App>, ApiError> {
    app_of(&s, &auth, &name).await?;
    let app = s
        .store
        .list_apps(auth.tenant_id)
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no app `{name}`")))?;
    Ok(axum::Json(app))
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').count() >= 2
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[utoipa::path(post, path = "/v1/apps/{app}/domains", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)), request_body = AddDomain,
    responses((status = 201, description = "added", body = App), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn add_domain(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    Json(req): Json<AddDomain>,
) -> Result<(StatusCode, axum::Json<App>), ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let hostname = req.hostname.trim_end_matches('.').to_ascii_lowercase();
    if !valid_hostname(&hostname) {
        return Err(ApiError::Invalid(format!(
            "`{}` is not a hostname",
            req.hostname
        )));
    }
    if hostname.ends_with(&format!(".{}", s.config.platform_domain)) {
        return Err(ApiError::Invalid(format!(
            "hostnames under `{}` are assigned by the platform",
            s.config.platform_domain
        )));
    }
    let revision = s
        .store
        .add_hostname(app.id, &hostname)
        .await
        .map_err(|e| on_unique(e, || format!("hostname `{hostname}` is already in use")))?;
    s.notifier.bump(revision, Scope::Everywhere);
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "domain.add",
            &format!("{name} {hostname}"),
        )
        .await?;
    get_app(State(s), auth, Path(name))
        .await
        .map(|a| (StatusCode::CREATED, a))
}

#[utoipa::path(delete, path = "/v1/apps/{app}/domains/{hostname}", tag = "apps", security(("bearer" = [])), params(("app" = String, Path), ("hostname" = String, Path)),
    responses((status = 204, description = "removed"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn remove_domain(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((name, hostname)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let Some(revision) = s.store.remove_hostname(app.id, &hostname).await? else {
        return Err(ApiError::NotFound(format!(
            "app `{name}` has no custom hostname `{hostname}`"
        )));
    };
    s.notifier.bump(revision, Scope::Everywhere);
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "domain.remove",
            &format!("{name} {hostname}"),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
