//! PoPs, gateways and the gateway ↔ control API protocol.
//!
//! Operators register PoPs and issue node tokens (one per gateway). A
//! gateway long-polls `GET /v1/pops/{pop}/state?since=REV`: the answer comes
//! at once when it is behind (a delta, or a snapshot when it is new or older
//! than the retained feed), otherwise after a change or `wait_ms` (default
//! 30 s) as 304. It downloads components by digest (only those its PoP
//! serves) and ACKs or NACKs each revision with its request figures.
//! When it starts it registers (`POST /v1/pops/{pop}/register`: its
//! architecture, engine compatibility hash, version, listen addresses and
//! boot id); the operator's listing shows that, its lag and whether it is
//! silent.

use crate::AppState;
use crate::auth::{AdminAuth, TenantAuth, hash_token, new_token};
use crate::desired_state::GatewayState;
use crate::desired_state::Scope;
use crate::error::{ApiError, on_unique};
use crate::extract::{Json, Path};
use crate::routes::apps::app_of;
use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use gannet_model::Sha256Digest;
use gannet_model::api::Problem;
use gannet_model::snapshot::GatewayAck;
use gannet_model::snapshot::GatewayRegistration;
use gannet_model::snapshot::StateUpdate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `/v1/admin/pops…`, `/v1/pops/{pop}/…`, `/v1/apps/{app}/status`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/pops", post(create_pop).get(list_pops))
        .route("/v1/admin/pops/{pop}/gateways", post(create_gateway))
        .route("/v1/admin/gateways", get(list_gateways))
        .route("/v1/admin/gateways/{id}", delete(revoke_gateway))
        .route("/v1/pops/{pop}/state", get(state))
        .route("/v1/pops/{pop}/register", post(register))
        .route("/v1/pops/{pop}/components/{digest}", get(component))
        // A report lists every app the gateway serves: larger than the
        // API's default body limit once a PoP serves thousands.
        .route(
            "/v1/pops/{pop}/ack",
            post(ack).layer(axum::extract::DefaultBodyLimit::max(MAX_ACK_BYTES)),
        )
        .route("/v1/apps/{app}/status", get(app_status))
}

/// Largest ACK body: reports of ~100 bytes per app, for 100 000 apps.
const MAX_ACK_BYTES: usize = 16 << 20;

/// `POST /v1/admin/pops`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatePop {
    /// Name (a-z, 0-9, '-').
    pub name: String,
    /// Region label.
    #[serde(default)]
    pub region: String,
    /// Free-form labels, e.g. `tier=canary`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A PoP.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pop {
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A node token, shown once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeToken {
    /// The gateway's id (for revocation).
    pub gateway_id: i64,
    /// Its PoP.
    pub pop: String,
    /// The token.
    pub token: String,
}

#[utoipa::path(post, path = "/v1/admin/pops", tag = "admin", security(("bearer" = [])), request_body = CreatePop,
    responses((status = 201, description = "created", body = Pop), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_pop(
    State(s): State<AppState>,
    auth: AdminAuth,
    Json(req): Json<CreatePop>,
) -> Result<(StatusCode, axum::Json<Pop>), ApiError> {
    super::check_name("PoP", &req.name)?;
    s.store
        .create_pop(&req.name, &req.region, &req.labels)
        .await
        .map_err(|e| on_unique(e, || format!("PoP `{}` already exists", req.name)))?;
    s.store
        .audit(None, auth.token_id, "pop.create", &req.name)
        .await?;
    // Its first session-ticket key now, not at the next rotation.
    match s.store.rotate_ticket_keys(crate::store::now_ms()).await {
        Ok(made) => {
            for (revision, pop_id) in made {
                s.notifier.bump(revision, Scope::Pop(pop_id));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "making the new PoP's ticket key failed; the rotation retries")
        }
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(Pop {
            name: req.name,
            region: req.region,
            labels: req.labels,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/admin/pops", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "all PoPs", body = [Pop]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_pops(
    State(s): State<AppState>,
    _auth: AdminAuth,
) -> Result<axum::Json<Vec<Pop>>, ApiError> {
    let pops = s.store.list_pops().await?;
    Ok(axum::Json(
        pops.into_iter()
            .map(|(name, region, labels)| Pop {
                name,
                region,
                labels,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/admin/pops/{pop}/gateways", tag = "admin", security(("bearer" = [])), params(("pop" = String, Path)),
    responses((status = 201, description = "a node token for a new gateway, shown once", body = NodeToken), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_gateway(
    State(s): State<AppState>,
    auth: AdminAuth,
    Path(pop): Path<String>,
) -> Result<(StatusCode, axum::Json<NodeToken>), ApiError> {
    let pop_id = s.store.pop_id(&pop).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no PoP `{pop}`: create it with `gannet admin pops create`"
        ))
    })?;
    let token = new_token();
    let gateway_id = s.store.create_gateway(pop_id, &hash_token(&token)).await?;
    s.store
        .audit(None, auth.token_id, "gateway.token", &pop)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(NodeToken {
            gateway_id,
            pop,
            token,
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/admin/gateways/{id}", tag = "admin", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 204, description = "revoked"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_gateway(
    State(s): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if !s.store.revoke_gateway(id).await? {
        return Err(ApiError::NotFound(format!("no active gateway {id}")));
    }
    s.store
        .audit(None, auth.token_id, "gateway.revoke", &id.to_string())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/admin/gateways", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "every active gateway: its registration, revision applied and lag, last contact and whether it is silent, apps refused and why, and why its last revision failed, if it did", body = [GatewayState]), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_gateways(
    State(s): State<AppState>,
    _auth: AdminAuth,
) -> Result<axum::Json<Vec<GatewayState>>, ApiError> {
    Ok(axum::Json(s.store.gateway_states().await?))
}

/// A gateway, authenticated by its node token, for the PoP in the path.
pub struct NodeAuth {
    /// Gateway id.
    pub gateway_id: i64,
    /// Its PoP's id.
    pub pop_id: i64,
    /// Its PoP.
    pub pop: String,
}

impl FromRequestParts<AppState> for NodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = crate::auth::bearer(parts)?;
        let node = state
            .store
            .gateway_by_token(&hash_token(token))
            .await?
            .ok_or(ApiError::Unauthorized("unknown node token"))?;
        if node.revoked {
            return Err(ApiError::Unauthorized("this node token has been revoked"));
        }
        let axum::extract::Path(params) =
            axum::extract::Path::<BTreeMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::Invalid(e.body_text()))?;
        if params.get("pop") != Some(&node.pop) {
            return Err(ApiError::Forbidden("a node token reads only its own PoP"));
        }
        Ok(NodeAuth {
            gateway_id: node.gateway_id,
            pop_id: node.pop_id,
            pop: node.pop,
        })
    }
}

/// Query of a state poll.
#[derive(Debug, Deserialize)]
pub struct Poll {
    /// The revision the gateway has applied (-1: none).
    #[serde(default = "nothing_applied")]
    pub since: i64,
    /// Longest wait for a change, ms (at most 60 000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

fn nothing_applied() -> i64 {
    -1
}

#[utoipa::path(get, path = "/v1/pops/{pop}/state", tag = "gateways", security(("node" = [])), params(("pop" = String, Path), ("since" = Option<i64>, Query, description = "revision applied; -1 for none"), ("wait_ms" = Option<u64>, Query, description = "longest wait, ms (default 30000, at most 60000)")),
    responses((status = 200, description = "the state update", body = StateUpdate), (status = 304, description = "no change within the wait"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn state(
    State(s): State<AppState>,
    node: NodeAuth,
    Query(q): Query<Poll>,
) -> Result<Response, ApiError> {
    s.store.touch_gateway(node.gateway_id).await?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000).min(60_000));
    // Subscribed before reading, so a change committed in between wakes us.
    let mut changes = s.notifier.subscribe(node.pop_id);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(update) = s.store.state_since(q.since, node.pop_id).await? {
            return Ok(axum::Json(update).into_response());
        }
        tokio::select! {
            changed = changes.changed() => {
                if !changed {
                    return Ok(StatusCode::NOT_MODIFIED.into_response());
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NOT_MODIFIED.into_response()),
            _ = s.shutdown.cancelled() => return Ok(StatusCode::NOT_MODIFIED.into_response()),
        }
    }
}

#[utoipa::path(get, path = "/v1/pops/{pop}/components/{digest}", tag = "gateways", security(("node" = [])), params(("pop" = String, Path), ("digest" = String, Path)),
    responses((status = 200, description = "the component", content_type = "application/wasm", body = Vec<u8>), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn component(
    State(s): State<AppState>,
    node: NodeAuth,
    Path((_pop, digest)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let digest: Sha256Digest = digest
        .parse()
        .map_err(|_| ApiError::Invalid(format!("`{digest}` is not a sha256 digest")))?;
    // Only components the PoP serves.
    if !s.store.is_served(&digest).await? {
        return Err(ApiError::NotFound(format!(
            "PoP `{}` serves no component {digest}",
            node.pop
        )));
    }
    super::versions::component_response(&s, &digest).await
}

#[utoipa::path(post, path = "/v1/pops/{pop}/ack", tag = "gateways", security(("node" = [])), params(("pop" = String, Path)), request_body = GatewayAck,
    responses((status = 204, description = "recorded"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn ack(
    State(s): State<AppState>,
    node: NodeAuth,
    Json(ack): Json<GatewayAck>,
) -> Result<StatusCode, ApiError> {
    if let Some(err) = &ack.error {
        tracing::warn!(gateway = node.gateway_id, pop = %node.pop, failed = ?ack.failed_revision, error = %err, "gateway refused a revision");
    }
    s.store.record_ack(node.gateway_id, &ack).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Longest string of a registration, bytes.
const MAX_REGISTRATION_FIELD: usize = 128;

/// Most listen addresses a registration may give.
const MAX_LISTEN_ADDRESSES: usize = 8;

/// Checks a registration: every string printable ASCII of at most
/// [`MAX_REGISTRATION_FIELD`] bytes, at most [`MAX_LISTEN_ADDRESSES`]
/// listen addresses, each `ip:port`. The error names the field.
fn check_registration(r: &GatewayRegistration) -> Result<(), ApiError> {
    fn check(field: &str, value: &str) -> Result<(), ApiError> {
        if value.len() > MAX_REGISTRATION_FIELD {
            return Err(ApiError::Invalid(format!(
                "`{field}` is {} bytes long; at most {MAX_REGISTRATION_FIELD} are allowed",
                value.len()
            )));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(ApiError::Invalid(format!(
                "`{field}` must be printable ASCII"
            )));
        }
        Ok(())
    }
    check("arch", &r.arch)?;
    check("engine_compat", &r.engine_compat)?;
    check("gannet_version", &r.gannet_version)?;
    check("boot_id", &r.boot_id)?;
    if r.listen.len() > MAX_LISTEN_ADDRESSES {
        return Err(ApiError::Invalid(format!(
            "`listen` has {} addresses; at most {MAX_LISTEN_ADDRESSES} are allowed",
            r.listen.len()
        )));
    }
    for (i, addr) in r.listen.iter().enumerate() {
        let field = format!("listen[{i}]");
        check(&field, addr)?;
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::Invalid(format!(
                "`{field}` is not a socket address (ip:port)"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/pops/{pop}/register", tag = "gateways", security(("node" = [])), params(("pop" = String, Path)), request_body = GatewayRegistration,
    responses((status = 204, description = "registered: shown in the operator's gateway listing"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn register(
    State(s): State<AppState>,
    node: NodeAuth,
    Json(registration): Json<GatewayRegistration>,
) -> Result<StatusCode, ApiError> {
    check_registration(&registration)?;
    s.store
        .register_gateway(node.gateway_id, &registration)
        .await?;
    tracing::info!(
        gateway = node.gateway_id,
        pop = %node.pop,
        arch = %registration.arch,
        version = %registration.gannet_version,
        boot_id = %registration.boot_id,
        "gateway registered"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// One gateway's view of an app, for `gannet status` and deploy waits.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewayAppStatus {
    /// PoP.
    pub pop: String,
    /// Gateway id.
    pub gateway: i64,
    /// Whether it applied the app's latest change.
    pub current: bool,
    /// Revision it applied.
    pub applied_revision: i64,
    /// Version of the app it reports serving.
    pub version: Option<u32>,
    /// Requests it answered for the app.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Mean time to the response head there, microseconds.
    pub mean_latency_us: u64,
    /// Why it refused this app's latest version, if it did; or, when it
    /// could not apply the revision at all, that it could not (the details,
    /// which may concern other tenants, are the operator's).
    pub last_error: Option<String>,
    /// Last contact, ms.
    pub last_seen_ms: Option<i64>,
}

/// `GET /v1/apps/{app}/status`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppStatus {
    /// The app.
    pub app: String,
    /// Its live version.
    pub active_version: Option<u32>,
    /// The revision that last changed it.
    pub revision: i64,
    /// Every gateway.
    pub gateways: Vec<GatewayAppStatus>,
}

#[utoipa::path(get, path = "/v1/apps/{app}/status", tag = "versions", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "the app at every gateway", body = AppStatus), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn app_status(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
) -> Result<axum::Json<AppStatus>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    let tenant = s.store.tenant(auth.tenant_id).await?;
    let key = format!("{}/{}", tenant.name, name);
    let revision = s.store.app_revision(app.id).await?;
    let active_version = s
        .store
        .list_versions(&app)
        .await?
        .into_iter()
        .find(|v| v.active)
        .map(|v| v.number);
    let gateways = s
        .store
        .gateway_states()
        .await?
        .into_iter()
        .map(|g| {
            let report = g.apps.iter().find(|r| r.key == key);
            let refused = g.failed_apps.iter().find(|f| f.key == key);
            GatewayAppStatus {
                pop: g.pop,
                gateway: g.id,
                current: g.applied_revision >= revision && refused.is_none(),
                applied_revision: g.applied_revision,
                version: report.map(|r| r.version),
                requests: report.map_or(0, |r| r.requests),
                errors: report.map_or(0, |r| r.errors),
                mean_latency_us: report.map_or(0, |r| r.mean_latency_us),
                last_error: refused.map(|f| f.error.clone()).or_else(|| {
                    (g.last_error.is_some() && g.applied_revision < revision).then(|| {
                        format!(
                            "the gateway could not apply revision {revision} (a fault of the gateway, not of this app; its operator has the details)"
                        )
                    })
                }),
                last_seen_ms: g.last_seen_ms,
            }
        })
        .collect();
    Ok(axum::Json(AppStatus {
        app: name,
        active_version,
        revision,
        gateways,
    }))
}
