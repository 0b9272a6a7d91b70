//! An app's secrets and plain config ([`crate::app_settings`]).
//!
//! - `PUT /v1/apps/{app}/secrets/{name}` `{"value": …}`: sets a secret (its
//!   record back, never its value); `GET /v1/apps/{app}/secrets`: names and
//!   when they changed; `DELETE /v1/apps/{app}/secrets/{name}`.
//! - The same under `/v1/apps/{app}/config`, whose values are returned.
//!
//! Every change reaches the gateways serving the app within the sync time,
//! without an upload, and is in the audit log by name only.

use super::apps::app_of;
use crate::AppState;
use crate::app_settings::{Kind, check};
use crate::auth::TenantAuth;
use crate::desired_state::Scope;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use gannet_model::api::{AppSetting, Problem, SetSetting};

/// `/v1/apps/{app}/secrets…`, `/v1/apps/{app}/config…`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/secrets", get(list_secrets))
        .route(
            "/v1/apps/{app}/secrets/{name}",
            put(set_secret).delete(delete_secret),
        )
        .route("/v1/apps/{app}/config", get(list_config))
        .route(
            "/v1/apps/{app}/config/{name}",
            put(set_config).delete(delete_config),
        )
}

async fn set(
    s: AppState,
    auth: TenantAuth,
    app: String,
    name: String,
    kind: Kind,
    value: String,
) -> Result<axum::Json<AppSetting>, ApiError> {
    let row = app_of(&s, &auth, &app).await?;
    check(kind, &name, Some(&value))?;
    let (setting, revision) = s.store.set_setting(row.id, kind, &name, &value).await?;
    s.notifier.bump(revision, Scope::Everywhere);
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            &format!("{}.set", kind_word(kind)),
            &format!("{app}: {name}"),
        )
        .await?;
    Ok(axum::Json(setting))
}

async fn delete(
    s: AppState,
    auth: TenantAuth,
    app: String,
    name: String,
    kind: Kind,
) -> Result<StatusCode, ApiError> {
    let row = app_of(&s, &auth, &app).await?;
    check(kind, &name, None)?;
    let Some(revision) = s.store.delete_setting(row.id, kind, &name).await? else {
        return Err(ApiError::NotFound(format!(
            "app `{app}` has no {} `{name}`",
            kind.noun()
        )));
    };
    s.notifier.bump(revision, Scope::Everywhere);
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            &format!("{}.delete", kind_word(kind)),
            &format!("{app}: {name}"),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Config => "config",
        Kind::Secret => "secret",
    }
}

#[utoipa::path(put, path = "/v1/apps/{app}/secrets/{name}", tag = "apps", security(("bearer" = [])), params(("app" = String, Path), ("name" = String, Path, description = "an environment variable name")), request_body = SetSetting,
    responses((status = 200, description = "set (the record, never the value); gateways get it within the sync time", body = AppSetting), (status = "4XX", description = "refused (400: a bad name or an empty value; 413: over 32 KiB; 403: 100 secrets already); see the problem document", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the API has no master key (`certificates-unavailable`)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_secret(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((app, name)): Path<(String, String)>,
    Json(req): Json<SetSetting>,
) -> Result<axum::Json<AppSetting>, ApiError> {
    set(s, auth, app, name, Kind::Secret, req.value).await
}

#[utoipa::path(get, path = "/v1/apps/{app}/secrets", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "the app's secrets: names and when they changed, never values", body = [AppSetting]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_secrets(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<AppSetting>>, ApiError> {
    let row = app_of(&s, &auth, &app).await?;
    Ok(axum::Json(
        s.store.list_settings(row.id, Kind::Secret).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/apps/{app}/secrets/{name}", tag = "apps", security(("bearer" = [])), params(("app" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = "4XX", description = "refused (404: no such secret); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_secret(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((app, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(s, auth, app, name, Kind::Secret).await
}

#[utoipa::path(put, path = "/v1/apps/{app}/config/{name}", tag = "apps", security(("bearer" = [])), params(("app" = String, Path), ("name" = String, Path, description = "an environment variable name")), request_body = SetSetting,
    responses((status = 200, description = "set; gateways get it within the sync time", body = AppSetting), (status = "4XX", description = "refused (400: a bad name or an empty value; 413: over 32 KiB; 403: 100 values already); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_config(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((app, name)): Path<(String, String)>,
    Json(req): Json<SetSetting>,
) -> Result<axum::Json<AppSetting>, ApiError> {
    set(s, auth, app, name, Kind::Config, req.value).await
}

#[utoipa::path(get, path = "/v1/apps/{app}/config", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "the app's config, with values", body = [AppSetting]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_config(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<AppSetting>>, ApiError> {
    let row = app_of(&s, &auth, &app).await?;
    Ok(axum::Json(
        s.store.list_settings(row.id, Kind::Config).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/apps/{app}/config/{name}", tag = "apps", security(("bearer" = [])), params(("app" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = "4XX", description = "refused (404: no such value); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_config(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((app, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(s, auth, app, name, Kind::Config).await
}
