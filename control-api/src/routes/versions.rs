//! Versions: upload (the deploy pipeline), list, rollback; and component
//! downloads.
//!
//! `POST /v1/apps/{app}/versions` takes the component as the raw body and
//! the version's settings in the query string: `env=K=V` (repeatable),
//! `memory`, `cpu_ms`, `wall_ms`, `max_inflight`, `max_request_body`,
//! `outbound` (repeatable), `activate` (default true). The pipeline: check
//! the limits against the tenant's ceilings → take one of the tenant's
//! upload places ([`crate::compile`]) → stream the body to a temporary
//! file within the size quota → sha256 → total-bytes quota → validate in a
//! bounded compile worker (unless this exact blob was validated before) →
//! store the blob → create the version in one transaction (which re-checks
//! the quota and that the blob is still stored, and feeds the change to
//! gateways) → collect components no one holds any more.

use super::apps::app_of;
use crate::AppState;
use crate::auth::TenantAuth;
use crate::desired_state::Scope;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::fault::FaultPoint;
use crate::upload;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gannet_model::api::Problem;
use gannet_model::api::{App, Quotas, Rollback, Version};
use gannet_model::{ByteSize, Limits, Sha256Digest};
use gannet_runtime::outbound::AllowEntry;
use std::collections::BTreeMap;

/// `/v1/apps/{app}/versions`, `/v1/apps/{app}/rollback`, `/v1/components/{digest}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/versions", post(upload).get(list))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/components/{digest}", get(download))
}

/// Most bytes read and discarded to deliver an early refusal.
const DISCARD_CAP: u64 = 64 << 20;

/// The upload's query parameters, for the OpenAPI document. (The handler
/// reads them as pairs, since `env` and `outbound` repeat.)
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UploadParams {
    /// `KEY=VALUE`; repeat for more.
    env: Option<Vec<String>>,
    /// Memory limit, e.g. `64MiB`.
    memory: Option<String>,
    /// CPU time per request, ms.
    cpu_ms: Option<u64>,
    /// Wall-clock time per request, ms.
    wall_ms: Option<u64>,
    /// Instances at once per gateway.
    max_inflight: Option<u32>,
    /// Largest request body, e.g. `10MiB`.
    max_request_body: Option<String>,
    /// An allowlist entry: `host`, `*.domain`, `*`, `https://host` (port
    /// 443 only) or `http://host:8080`; repeat for more.
    outbound: Option<Vec<String>>,
    /// Make it the live version (default true).
    activate: Option<bool>,
    /// `immediate` (default: the new version serves everywhere at once) or
    /// `canary` (a progressive rollout over the version in service, with
    /// health-gated automatic rollback).
    strategy: Option<String>,
    /// A canary's steps, overriding the platform's: `pops=tier=canary
    /// 100%; 10%; 50%; 100%` (each step an optional PoP selector and a
    /// weight; the last at 100 % everywhere).
    steps: Option<String>,
    /// How long each step bakes before it may advance: `60s`, `5m`, `1h`
    /// or seconds.
    bake: Option<String>,
}

/// How a new version reaches the PoPs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Strategy {
    /// Everywhere at once.
    #[default]
    Immediate,
    /// A progressive rollout.
    Canary,
}

/// `60s`, `5m`, `1h`, `250ms` or plain seconds.
fn parse_bake(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000)?,
        "ms" => n,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

/// Settings of a new version, from the query string.
#[derive(Debug, Default)]
struct Spec {
    env: BTreeMap<String, String>,
    limits: Limits,
    outbound: Vec<String>,
    activate: bool,
    strategy: Strategy,
    steps: Option<String>,
    bake: Option<std::time::Duration>,
}

fn parse_spec(pairs: Vec<(String, String)>) -> Result<Spec, ApiError> {
    let mut spec = Spec {
        activate: true,
        ..Spec::default()
    };
    let bad = |k: &str, v: &str| ApiError::Invalid(format!("`{k}={v}` is not valid"));
    for (k, v) in pairs {
        match k.as_str() {
            "env" => {
                let (key, value) = v
                    .split_once('=')
                    .filter(|(key, _)| !key.is_empty())
                    .ok_or_else(|| ApiError::Invalid(format!("env `{v}` must be KEY=VALUE")))?;
                spec.env.insert(key.to_string(), value.to_string());
            }
            "memory" => spec.limits.memory = Some(v.parse().map_err(|_| bad(&k, &v))?),
            "max_request_body" => {
                spec.limits.max_request_body = Some(v.parse().map_err(|_| bad(&k, &v))?)
            }
            "cpu_ms" => spec.limits.cpu_ms = Some(v.parse().map_err(|_| bad(&k, &v))?),
            "wall_ms" => spec.limits.wall_ms = Some(v.parse().map_err(|_| bad(&k, &v))?),
            "max_inflight" => spec.limits.max_inflight = Some(v.parse().map_err(|_| bad(&k, &v))?),
            "outbound" => {
                v.parse::<AllowEntry>()
                    .map_err(|e| ApiError::Invalid(e.to_string()))?;
                spec.outbound.push(v)
            }
            "activate" => spec.activate = v.parse().map_err(|_| bad(&k, &v))?,
            "strategy" => {
                spec.strategy = match v.as_str() {
                    "immediate" => Strategy::Immediate,
                    "canary" => Strategy::Canary,
                    _ => {
                        return Err(ApiError::Invalid(format!(
                            "strategy `{v}`: use `immediate` or `canary`"
                        )));
                    }
                }
            }
            "steps" => spec.steps = Some(v),
            "bake" => {
                spec.bake = Some(parse_bake(&v).ok_or_else(|| {
                    ApiError::Invalid(format!("bake `{v}`: use a duration such as 60s, 5m or 1h"))
                })?)
            }
            _ => return Err(ApiError::Invalid(format!("unknown parameter `{k}`"))),
        }
    }
    Ok(spec)
}

fn check_ceilings(l: &Limits, q: &Quotas) -> Result<(), ApiError> {
    let over = |what: &str, asked: String, max: String| {
        Err(ApiError::LimitAboveQuota(format!(
            "{what} {asked} is above the tenant's ceiling of {max}"
        )))
    };
    if let Some(m) = l.memory
        && m > q.max_memory
    {
        return over("memory", m.to_string(), q.max_memory.to_string());
    }
    if let Some(c) = l.cpu_ms
        && c > q.max_cpu_ms
    {
        return over("cpu_ms", c.to_string(), q.max_cpu_ms.to_string());
    }
    if let Some(w) = l.wall_ms
        && w > q.max_wall_ms
    {
        return over("wall_ms", w.to_string(), q.max_wall_ms.to_string());
    }
    if let Some(n) = l.max_inflight
        && n > q.max_inflight
    {
        return over("max_inflight", n.to_string(), q.max_inflight.to_string());
    }
    if l.cpu_ms == Some(0) || l.wall_ms == Some(0) || l.max_inflight == Some(0) {
        return Err(ApiError::Invalid("limits must be at least 1".into()));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/apps/{app}/versions", tag = "versions", security(("bearer" = [])), params(("app" = String, Path), UploadParams), request_body(content = Vec<u8>, content_type = "application/wasm", description = "the component's bytes"),
    responses((status = 201, description = "the new version", body = Version), (status = "4XX", description = "refused; see the problem document (429 with `Retry-After`: too many requests or uploads in progress)", body = Problem, content_type = "application/problem+json"), (status = 503, description = "every compile slot and queue place is taken (`compiler-busy`); retry after `Retry-After`", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn upload(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, axum::Json<Version>), ApiError> {
    // Checks that need no body. When one fails, the body is read and
    // discarded (up to a cap) so the client, still sending, gets the answer.
    let checked = async {
        let app = app_of(&s, &auth, &name).await?;
        let mut spec = parse_spec(pairs)?;
        let tenant = s.store.tenant(auth.tenant_id).await?;
        check_ceilings(&spec.limits, &tenant.quotas)?;
        // A canary needs a version in service to roll out over, and room
        // for both; its policy is checked before the body is read.
        let policy = match spec.strategy {
            Strategy::Canary if !spec.activate => {
                return Err(ApiError::Invalid(
                    "`strategy=canary` rolls the version out: it cannot be combined with `activate=false`".into(),
                ));
            }
            Strategy::Canary if app.active_version_id.is_some() => {
                if tenant.quotas.max_versions_per_app < 2 {
                    return Err(ApiError::Invalid(
                        "a canary needs room for two versions; the tenant keeps only one per app".into(),
                    ));
                }
                // The deploy's own steps and bake, else the app's, else
                // the platform's.
                let (app_steps, app_bake) = s.store.rollout_policy_of(app.id).await?;
                let steps = spec.steps.clone().or(app_steps);
                let bake = spec
                    .bake
                    .or(app_bake.map(std::time::Duration::from_millis));
                let policy = s
                    .config
                    .rollouts
                    .policy(steps.as_deref(), bake)
                    .map_err(|e| ApiError::Invalid(format!("rollout policy: {e}")))?;
                spec.activate = false;
                Some(policy)
            }
            // Nothing in service yet: the first version goes live at once.
            _ => None,
        };
        // One of the tenant's upload places, held until this upload is
        // answered (429 past the tenant's bound; 503 when every compile
        // slot and queue place is taken).
        let slot = s.compiler.enter(auth.tenant_id)?;
        Ok::<_, ApiError>((app, spec, tenant, slot, policy))
    }
    .await;
    let (app, spec, tenant, _slot, policy) = match checked {
        Ok(v) => v,
        Err(e) => {
            upload::discard(body, DISCARD_CAP).await;
            return Err(e);
        }
    };
    let quotas = &tenant.quotas;
    let max = quotas.max_component_size.bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        // Read (and drop) a body of reasonable size so the client, still
        // sending, receives the 413; close on anything larger.
        if n <= DISCARD_CAP {
            upload::discard(body, DISCARD_CAP).await;
        }
        return Err(ApiError::TooLarge(format!(
            "the component is larger than the {} allowed",
            quotas.max_component_size
        )));
    }
    let received = upload::receive(body, max, &s.config.data_dir.join("tmp")).await?;

    if !s
        .store
        .tenant_has_component(auth.tenant_id, &received.digest)
        .await?
    {
        let stored = s.store.stored_bytes(auth.tenant_id).await?;
        if stored + received.size > quotas.max_total_bytes.bytes() {
            return Err(ApiError::Quota(format!(
                "storing {} more would pass the tenant's {} of stored components ({} in use); roll back and let old versions be pruned, or ask the operator for more",
                ByteSize(received.size),
                quotas.max_total_bytes,
                ByteSize(stored)
            )));
        }
    }

    // A blob is stored only after it validated, so a stored one is valid.
    if !s
        .blobs
        .exists(&received.digest)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    {
        // Bounded: waits for a compile slot (503 if none frees up in time),
        // and a compile past its time or memory bound is killed (422).
        s.compiler.validate(&received.file).await?;
        s.blobs
            .put(&received.digest, &received.file)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }

    s.store.faults().at(FaultPoint::UploadStored).await;
    // The version is created only if the blob is still stored when its row
    // is referenced; if a collection of the same component deleted it
    // meanwhile, store it again (the upload is still on disk) and retry.
    let mut attempts = 0;
    let created = loop {
        let result = s
            .store
            .create_version(
                auth.tenant_id,
                app.id,
                &received.digest,
                received.size,
                &spec.env,
                &spec.limits,
                &spec.outbound,
                spec.activate,
                s.blobs.as_ref(),
            )
            .await;
        match result {
            Err(e) if e.component_collected() && attempts < 3 => {
                attempts += 1;
                tracing::info!(digest = %received.digest.short(), "component collected during the upload; storing it again");
                s.blobs
                    .put(&received.digest, &received.file)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
            }
            Err(e) => {
                s.store
                    .discard_unclaimed_blob(s.blobs.as_ref(), &received.digest)
                    .await;
                return Err(e.into());
            }
            Ok(created) => break created,
        }
    };
    let number = created.number;
    if let Some(r) = created.revision {
        s.notifier.bump(r, Scope::Everywhere);
    }
    // Old versions pruned above may have left components no one holds.
    s.store.collect_components(s.blobs.as_ref()).await;
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "version.create",
            &format!("{name}@{number}"),
        )
        .await?;
    // A canary: its rollout, over the version in service, at the PoPs the
    // app is placed at now; the scheduler's leader starts it.
    let mut rollout = None;
    if let Some(policy) = policy {
        let stable = s
            .store
            .list_versions(&app)
            .await?
            .into_iter()
            .find(|v| v.active)
            .map(|v| v.number);
        if let Some(stable) = stable {
            let placed = s.store.placed_pops_of(app.id).await?;
            let (id, revision) = s
                .store
                .start_rollout(app.id, stable, number, &policy, &placed)
                .await?;
            s.notifier.bump(revision, Scope::Everywhere);
            s.store
                .audit(
                    Some(auth.tenant_id),
                    auth.token_id,
                    "rollout.create",
                    &format!("{name}@{number} over {stable}"),
                )
                .await?;
            rollout = Some((id, revision));
        }
    }
    let revision = match (rollout, created.revision) {
        (Some((_, r)), _) | (None, Some(r)) => r,
        (None, None) => s.store.app_revision(app.id).await?,
    };
    let app = app_of(&s, &auth, &name).await?;
    let version = s
        .store
        .list_versions(&app)
        .await?
        .into_iter()
        .find(|v| v.number == number)
        .ok_or_else(|| ApiError::Internal("version just created is missing".into()))?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = revision.to_string().parse() {
        headers.insert(REVISION_HEADER, v);
    }
    if let Some((id, _)) = rollout
        && let Ok(v) = id.to_string().parse()
    {
        headers.insert(ROLLOUT_HEADER, v);
    }
    Ok((StatusCode::CREATED, headers, axum::Json(version)))
}

/// Response header carrying the id of the rollout an upload started.
pub const ROLLOUT_HEADER: &str = "gannet-rollout";

/// Response header carrying the desired-state revision a change produced.
pub const REVISION_HEADER: &str = "gannet-revision";

#[utoipa::path(get, path = "/v1/apps/{app}/versions", tag = "versions", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "versions, newest first", body = [Version]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<Version>>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    Ok(axum::Json(s.store.list_versions(&app).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app}/rollback", tag = "versions", security(("bearer" = [])), params(("app" = String, Path)), request_body = Rollback,
    responses((status = 200, description = "the app at its new version", body = App), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rollback(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    Json(req): Json<Rollback>,
) -> Result<axum::Json<App>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let versions = s.store.list_versions(&app).await?;
    let target = match req.to {
        Some(n) => n,
        None => {
            let active = versions
                .iter()
                .find(|v| v.active)
                .map(|v| v.number)
                .ok_or_else(|| {
                    ApiError::Invalid(format!(
                        "app `{name}` has no active version to roll back from"
                    ))
                })?;
            versions
                .iter()
                .map(|v| v.number)
                .filter(|n| *n < active)
                .max()
                .ok_or_else(|| {
                    ApiError::Invalid(format!("app `{name}` has no version before {active}"))
                })?
        }
    };
    let Some(revision) = s.store.activate(&app, target).await? else {
        return Err(ApiError::NotFound(format!(
            "app `{name}` has no version {target}"
        )));
    };
    s.notifier.bump(revision, Scope::Everywhere);
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            "version.rollback",
            &format!("{name}@{target}"),
        )
        .await?;
    let apps = s.store.list_apps(auth.tenant_id).await?;
    apps.into_iter()
        .find(|a| a.name == name)
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(format!("no app `{name}`")))
}

#[utoipa::path(get, path = "/v1/components/{digest}", tag = "versions", security(("bearer" = [])), params(("digest" = String, Path, description = "sha256")),
    responses((status = 200, description = "the component", content_type = "application/wasm", body = Vec<u8>), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn download(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest: Sha256Digest = digest
        .parse()
        .map_err(|_| ApiError::Invalid(format!("`{digest}` is not a sha256 digest")))?;
    if !s
        .store
        .tenant_has_component(auth.tenant_id, &digest)
        .await?
    {
        return Err(ApiError::NotFound(format!("no component {digest}")));
    }
    component_response(&s, &digest).await
}

/// Streams a stored component as `application/wasm` (404 if absent).
pub async fn component_response(s: &AppState, digest: &Sha256Digest) -> Result<Response, ApiError> {
    let stream = s
        .blobs
        .get(digest)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no component {digest}")))?;
    let body = Body::from_stream(stream);
    Ok(([(header::CONTENT_TYPE, "application/wasm")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_from_query() {
        let pairs = vec![
            ("env".into(), "A=1".into()),
            ("env".into(), "B=x=y".into()),
            ("memory".into(), "64MiB".into()),
            ("cpu_ms".into(), "20".into()),
            ("outbound".into(), "api.example.com".into()),
            ("activate".into(), "false".into()),
        ];
        let s = parse_spec(pairs).unwrap();
        assert_eq!(s.env["B"], "x=y");
        assert_eq!(s.limits.memory, Some(ByteSize::mib(64)));
        assert!(!s.activate);
        assert!(parse_spec(vec![("env".into(), "novalue".into())]).is_err());
        assert!(parse_spec(vec![("memory".into(), "lots".into())]).is_err());
        assert!(parse_spec(vec![("colour".into(), "red".into())]).is_err());
        for good in [
            "*.example.com",
            "https://api.example.com:8443",
            "http://[::1]:8080",
        ] {
            let s = parse_spec(vec![("outbound".into(), good.into())]).unwrap();
            assert_eq!(s.outbound, [good]);
        }
        for bad in [
            "ftp://x",
            "https://x:99999",
            "https://x/path",
            "https://u@x",
            "https://",
        ] {
            let err = parse_spec(vec![("outbound".into(), bad.into())]).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn strategies_and_bake_times_parse() {
        let s = parse_spec(vec![
            ("strategy".into(), "canary".into()),
            ("steps".into(), "10%; 100%".into()),
            ("bake".into(), "2m".into()),
        ])
        .unwrap();
        assert_eq!(s.strategy, Strategy::Canary);
        assert_eq!(s.steps.as_deref(), Some("10%; 100%"));
        assert_eq!(s.bake, Some(std::time::Duration::from_secs(120)));
        assert_eq!(parse_spec(vec![]).unwrap().strategy, Strategy::Immediate);
        assert_eq!(parse_bake("90"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(
            parse_bake("250ms"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_bake("1h"), Some(std::time::Duration::from_secs(3600)));
        for bad in ["", "s", "10 days", "-5s", "99999999999999999999h"] {
            assert_eq!(parse_bake(bad), None, "{bad}");
        }
        assert!(parse_spec(vec![("strategy".into(), "yolo".into())]).is_err());
        assert!(parse_spec(vec![("bake".into(), "soon".into())]).is_err());
    }

    #[test]
    fn ceilings() {
        let q = Quotas::default();
        let mut l = Limits::default();
        assert!(check_ceilings(&l, &q).is_ok());
        l.memory = Some(ByteSize::mib(1024));
        assert!(matches!(
            check_ceilings(&l, &q),
            Err(ApiError::LimitAboveQuota(_))
        ));
        l.memory = Some(q.max_memory);
        assert!(check_ceilings(&l, &q).is_ok());
        l.cpu_ms = Some(q.max_cpu_ms + 1);
        assert!(matches!(
            check_ceilings(&l, &q),
            Err(ApiError::LimitAboveQuota(_))
        ));
        l.cpu_ms = Some(q.max_cpu_ms);
        l.max_inflight = Some(q.max_inflight + 1);
        assert!(matches!(
            check_ceilings(&l, &q),
            Err(ApiError::LimitAboveQuota(_))
        ));
        l.max_inflight = Some(q.max_inflight);
        assert!(check_ceilings(&l, &q).is_ok());
    }
}
