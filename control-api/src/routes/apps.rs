//! Apps and their hostnames, with tenants' own certificates or managed
//! ones (obtained over ACME by [`crate::acme`]).
//!
//! A certificate is checked ([`crate::certificate::check`]) before anything
//! is written: a refused one is a 422 `invalid-certificate` saying what to
//! fix, and changes nothing. Its private key is sealed with the master key
//! before it is stored, goes only to gateways (in the PoP state), and is
//! never in a response, the audit log or a log line.

use crate::AppState;
use crate::auth::TenantAuth;
use crate::desired_state::Scope;
use crate::error::{ApiError, on_unique};
use crate::extract::{Json, Path};
use crate::store::DomainCertificate;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use gannet_model::api::Problem;
use gannet_model::api::{
    AddDomain, App, CreateApp, Domain, RolloutPolicy, SetAffinity, SetPlacement,
};
use gannet_server::tls::unix_now;

/// `/v1/apps…`
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps", post(create_app).get(list_apps))
        .route("/v1/apps/{app}", get(get_app))
        .route("/v1/apps/{app}/placement", put(set_placement))
        .route("/v1/apps/{app}/affinity", put(set_affinity))
        .route("/v1/apps/{app}/rollout-policy", put(set_rollout_policy))
        .route(
            "/v1/apps/{app}/domains",
            post(add_domain).get(list_app_domains),
        )
        .route("/v1/apps/{app}/domains/{hostname}", delete(remove_domain))
        .route(
            "/v1/apps/{app}/domains/{hostname}/verify",
            post(verify_domain),
        )
        .route("/v1/domains", get(list_domains))
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
    let (placement, _) = crate::placement::check(
        req.placement.as_deref().unwrap_or(""),
        &s.store.pop_labels().await?,
    )?;
    let affinity = crate::placement::stored_affinity(&crate::placement::check_affinity(
        req.affinity.as_deref().unwrap_or(""),
    )?);
    let tenant = s.store.tenant(auth.tenant_id).await?;
    let hostname = format!("{}-{}.{}", req.name, tenant.name, s.config.platform_domain);
    let app = s
        .store
        .create_app(auth.tenant_id, &req.name, &hostname, &placement, &affinity)
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

#[utoipa::path(put, path = "/v1/apps/{app}/placement", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)), request_body = SetPlacement,
    responses((status = 200, description = "the app, placed", body = App), (status = 409, description = "a rollout is live (`rollout-in-progress`)", body = Problem, content_type = "application/problem+json"), (status = 422, description = "no PoP matches the selector (`no-pop-matches`)", body = Problem, content_type = "application/problem+json"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_placement(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    Json(req): Json<SetPlacement>,
) -> Result<axum::Json<App>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let (placement, pops) = crate::placement::check(&req.selector, &s.store.pop_labels().await?)?;
    let revision = s.store.set_placement(app.id, &placement).await?;
    s.notifier.bump(revision, Scope::Everywhere);
    let pops: Vec<String> = pops.into_iter().collect();
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "app.place",
            &format!("{name}: `{placement}` ({})", pops.join(", ")),
        )
        .await?;
    get_app(State(s), auth, Path(name)).await
}

#[utoipa::path(put, path = "/v1/apps/{app}/affinity", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)), request_body = SetAffinity,
    responses((status = 200, description = "the app", body = App), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_affinity(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    Json(req): Json<SetAffinity>,
) -> Result<axum::Json<App>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let affinity = crate::placement::check_affinity(&req.affinity)?;
    let revision = s
        .store
        .set_affinity(app.id, &crate::placement::stored_affinity(&affinity))
        .await?;
    s.notifier.bump(revision, Scope::Everywhere);
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "app.affinity",
            &format!("{name}: {affinity}"),
        )
        .await?;
    get_app(State(s), auth, Path(name)).await
}

#[utoipa::path(put, path = "/v1/apps/{app}/rollout-policy", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)), request_body = RolloutPolicy,
    responses((status = 200, description = "the app, with its policy", body = App), (status = "4XX", description = "refused (400: the steps or bake time do not make a valid policy); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_rollout_policy(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    Json(req): Json<RolloutPolicy>,
) -> Result<axum::Json<App>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let steps = req
        .steps
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    // Checked as a deploy would use it, so a canary deploy never finds it
    // invalid later.
    s.config
        .rollouts
        .policy(steps, req.bake_ms.map(std::time::Duration::from_millis))
        .map_err(|e| ApiError::Invalid(format!("rollout policy: {e}")))?;
    s.store
        .set_rollout_policy(app.id, steps, req.bake_ms)
        .await?;
    let described = match (steps, req.bake_ms) {
        (None, None) => "the platform's".to_string(),
        (steps, bake) => format!(
            "steps `{}`, bake {}",
            steps.unwrap_or("(the platform's)"),
            bake.map_or("(the platform's)".to_string(), |b| format!("{b} ms"))
        ),
    };
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "app.rollout-policy",
            &format!("{name}: {described}"),
        )
        .await?;
    get_app(State(s), auth, Path(name)).await
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

/// A DNS hostname of at least two labels, or a wildcard one label above a
/// name of at least two (`*.shop.example`, never `*.example`), as the
/// gateway's router matches them.
fn valid_hostname(h: &str) -> bool {
    match h.strip_prefix("*.") {
        Some(parent) => parent.split('.').count() >= 2 && valid_plain_hostname(parent),
        None => valid_plain_hostname(h),
    }
}

fn valid_plain_hostname(h: &str) -> bool {
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
    description = "Adds a custom hostname: with the tenant's own certificate if given, else (`managed`, the default when the API has an ACME directory) with a certificate the platform obtains over ACME HTTP-01 and renews; a managed hostname answers only its challenge until the first one is issued. Adding a hostname the app already has, with a certificate or `managed`, replaces how its certificate is provided (200). The private key is never returned.",
    responses((status = 201, description = "added", body = App), (status = 200, description = "the certificate of a hostname the app already has was replaced", body = App), (status = "4XX", description = "refused (422 `invalid-certificate` says what to fix); see the problem document", body = Problem, content_type = "application/problem+json")))]
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
    let platform = &s.config.platform_domain;
    if hostname == *platform || hostname.ends_with(&format!(".{platform}")) {
        return Err(ApiError::Invalid(format!(
            "`{platform}` and the hostnames under it are assigned by the platform"
        )));
    }
    if let Some(parent) = hostname.strip_prefix("*.") {
        if *platform == parent || platform.ends_with(&format!(".{parent}")) {
            return Err(ApiError::Invalid(format!(
                "`{hostname}` would cover the platform's hostnames under `{platform}`"
            )));
        }
        if psl::suffix_str(parent) == Some(parent) {
            return Err(ApiError::Invalid(format!(
                "`{hostname}` would cover every site under the public suffix `{parent}`"
            )));
        }
    }
    // Managed: asked for, or the default without a certificate when this
    // API has an ACME directory.
    let managed = match (req.managed, &req.certificate) {
        (Some(true), Some(_)) => {
            return Err(ApiError::Invalid(
                "give either a certificate or `managed`, not both".into(),
            ));
        }
        (Some(true), None) => true,
        (Some(false), _) | (None, Some(_)) => false,
        (None, None) => s.config.acme.is_some(),
    };
    if managed {
        if s.config.acme.is_none() {
            return Err(ApiError::AcmeUnavailable);
        }
        if s.store.master_key().is_none() {
            return Err(ApiError::NoMasterKey);
        }
        if hostname.starts_with("*.") {
            return Err(ApiError::Invalid(format!(
                "`{hostname}` is a wildcard: managed certificates are validated over HTTP-01, which cannot cover one; upload your own certificate with --cert/--key"
            )));
        }
    }
    // Checked before anything is written: a refusal changes nothing.
    let certificate = match &req.certificate {
        None => None,
        Some(upload) => {
            if s.store.master_key().is_none() {
                return Err(ApiError::NoMasterKey);
            }
            // Parsing keys and certificates is CPU work a tenant chooses
            // the size of (RSA-4096…): off the executor.
            let (host, upload) = (hostname.clone(), upload.clone());
            let checked = tokio::task::spawn_blocking(move || {
                crate::certificate::check(&host, &upload, unix_now())
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            Some(checked.map_err(ApiError::Certificate)?)
        }
    };
    let written = s
        .store
        .add_domain(
            app.id,
            &hostname,
            match (&certificate, managed) {
                (Some(c), _) => DomainCertificate::Own(c),
                (None, true) => DomainCertificate::Managed,
                (None, false) => DomainCertificate::None,
            },
        )
        .await
        .map_err(|e| on_unique(e, || format!("hostname `{hostname}` is already in use")))?;
    s.notifier.bump(written.revision, Scope::Everywhere);
    if written.added {
        s.ownership_wake.notify_one();
    }
    if managed {
        s.acme_wake.notify_one();
        s.store
            .audit(
                Some(auth.tenant_id),
                auth.token_id,
                "domain.managed",
                &format!("{name} {hostname}"),
            )
            .await?;
    }
    if written.added {
        s.store
            .audit(
                Some(auth.tenant_id),
                auth.token_id,
                "domain.add",
                &format!("{name} {hostname}"),
            )
            .await?;
    }
    if let Some(c) = &certificate {
        let info = c.info();
        s.store
            .audit(
                Some(auth.tenant_id),
                auth.token_id,
                "domain.certificate",
                &format!(
                    "{name} {hostname} issuer={:?} not_after={}",
                    info.issuer, info.not_after
                ),
            )
            .await?;
    }
    let status = if written.added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    get_app(State(s), auth, Path(name))
        .await
        .map(|a| (status, a))
}

#[utoipa::path(get, path = "/v1/apps/{app}/domains", tag = "apps", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "the app's custom hostnames with what their certificates say (never a key)", body = [Domain]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_app_domains(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<Domain>>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    Ok(axum::Json(
        s.store.list_domains(auth.tenant_id, Some(app.id)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/domains", tag = "apps", security(("bearer" = [])),
    responses((status = 200, description = "the tenant's custom hostnames, of every app, with what their certificates say (never a key)", body = [Domain]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_domains(
    State(s): State<AppState>,
    auth: TenantAuth,
) -> Result<axum::Json<Vec<Domain>>, ApiError> {
    Ok(axum::Json(
        s.store.list_domains(auth.tenant_id, None).await?,
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app}/domains/{hostname}/verify", tag = "apps", security(("bearer" = [])), params(("app" = String, Path), ("hostname" = String, Path)),
    description = "Checks now that the tenant controls the hostname: a TXT record `_gannet-challenge.<hostname>` holding the token, or the token at `http://<hostname>/.well-known/gannet-challenge/<token>` (answered by the gateways once the hostname points at them). On success the hostname serves within the sync time. The listing (`GET /v1/apps/{app}/domains`) shows the token and both ways.",
    responses((status = 200, description = "proved (or proved before)", body = Domain), (status = 409, description = "`ownership-not-proved`: what each check found", body = Problem, content_type = "application/problem+json"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn verify_domain(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((name, hostname)): Path<(String, String)>,
) -> Result<axum::Json<Domain>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    let waiting = match s.store.unverified(app.id, &hostname).await {
        Ok(waiting) => waiting,
        Err(sqlx::Error::RowNotFound) => {
            return Err(ApiError::NotFound(format!(
                "app `{name}` has no custom hostname `{hostname}`"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(host) = waiting {
        let checker = crate::ownership::check::Checker::new(s.config.ownership.check.clone())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match crate::ownership::worker::check_now(&s, &checker, &host).await {
            Ok(proof) => {
                s.store
                    .audit(
                        Some(auth.tenant_id),
                        auth.token_id,
                        "domain.verify",
                        &format!("{name} {hostname} {proof}"),
                    )
                    .await?;
            }
            Err(reasons) => {
                // Shown in the listing too; not counted in the back-off
                // (asking is not a failure of the proof).
                s.store
                    .record_check_failure(
                        &hostname,
                        &reasons,
                        crate::ownership::worker::next_check_ms(
                            crate::store::now_ms(),
                            host.failures,
                            s.config.ownership.first_backoff,
                        ),
                        false,
                    )
                    .await?;
                return Err(ApiError::NotProved(reasons));
            }
        }
    }
    s.store
        .list_domains(auth.tenant_id, Some(app.id))
        .await?
        .into_iter()
        .find(|d| d.hostname == hostname)
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!("app `{name}` has no custom hostname `{hostname}`"))
        })
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

#[cfg(test)]
mod tests {
    #[test]
    fn hostnames_and_wildcards() {
        for ok in [
            "shop.example.com",
            "a-b.c1.example",
            "*.beta.example.org",
            "*.a.b",
        ] {
            assert!(super::valid_hostname(ok), "{ok}");
        }
        for bad in [
            "localhost",
            "*.com",
            "*.*.example.com",
            "a.*.example.com",
            "*example.com",
            "Shop.example.com",
            "-a.example.com",
            "a..example.com",
            "*",
            "*.",
        ] {
            assert!(!super::valid_hostname(bad), "{bad}");
        }
    }
}
