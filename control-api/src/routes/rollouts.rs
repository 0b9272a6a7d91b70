//! Rollouts: a tenant reads its app's rollout and acts on it; gateways
//! push the counters the rollout's analysis compares.
//!
//! - `GET /v1/apps/{app}/rollout`: the app's newest rollout, live or not
//!   (404 when it never had one).
//! - `POST /v1/apps/{app}/rollout/{promote|pause|resume|abort}`: 202 with
//!   the status, the action pending; the scheduler's leader applies it
//!   within a tick ([`crate::rollouts`]). 409 `rollout-not-live` when the
//!   newest rollout has ended.
//! - `POST /v1/pops/{pop}/report` (node token): per app version, the
//!   gateway's counters since its boot.

use super::apps::app_of;
use super::pops::NodeAuth;
use crate::AppState;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use gannet_model::api::{Problem, RolloutStatus};
use gannet_model::snapshot::GatewayReport;
use gannet_scheduler::analysis::LATENCY_BUCKETS;

/// `/v1/apps/{app}/rollout…`, `/v1/pops/{pop}/report`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/rollout", get(get_rollout))
        .route("/v1/apps/{app}/rollout/{action}", post(rollout_action))
        // A report lists every version a gateway serves: larger than the
        // API's default body limit once a PoP serves thousands.
        .route(
            "/v1/pops/{pop}/report",
            post(report).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
}

/// The actions a tenant may ask of a live rollout.
pub const ACTIONS: [&str; 4] = ["promote", "pause", "resume", "abort"];

/// Most versions one report may carry.
pub const MAX_REPORT_VERSIONS: usize = 4096;

/// Largest report body: ~1 KiB per version at most.
const MAX_REPORT_BYTES: usize = 8 << 20;

/// Longest boot id of a report, bytes.
const MAX_BOOT_ID: usize = 128;

/// Longest app key (`tenant/app`) of a report, bytes.
const MAX_REPORT_KEY: usize = 256;

/// The app's newest rollout, or 404.
async fn newest(s: &AppState, name: &str, app_id: i64) -> Result<RolloutStatus, ApiError> {
    s.store
        .rollout_status(name, app_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no rollout of app `{name}`")))
}

#[utoipa::path(get, path = "/v1/apps/{app}/rollout", tag = "rollouts", security(("bearer" = [])), params(("app" = String, Path)),
    responses((status = 200, description = "the app's newest rollout, live or not: its phase and step, weights per PoP, gateways' progress, figures and history", body = RolloutStatus), (status = "4XX", description = "refused (404: the app never had a rollout); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_rollout(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
) -> Result<axum::Json<RolloutStatus>, ApiError> {
    let app = app_of(&s, &auth, &name).await?;
    Ok(axum::Json(newest(&s, &name, app.id).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app}/rollout/{action}", tag = "rollouts", security(("bearer" = [])),
    params(("app" = String, Path), ("action" = String, Path, description = "`promote` (to the next step, or finish, without the gates), `pause`, `resume` or `abort` (roll the canary back)")),
    responses((status = 202, description = "the action is pending: the scheduler applies it within a second", body = RolloutStatus), (status = "4XX", description = "refused (404: no rollout; 409 `rollout-not-live`: the newest rollout has ended); see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rollout_action(
    State(s): State<AppState>,
    auth: TenantAuth,
    Path((name, action)): Path<(String, String)>,
) -> Result<(StatusCode, axum::Json<RolloutStatus>), ApiError> {
    if !ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::Invalid(format!(
            "`{action}` is not a rollout action: use promote, pause, resume or abort"
        )));
    }
    let app = app_of(&s, &auth, &name).await?;
    if s.store
        .request_rollout_action(app.id, &action)
        .await?
        .is_none()
    {
        let status = newest(&s, &name, app.id).await?;
        return Err(ApiError::RolloutNotLive(format!(
            "the rollout of version {} of app `{name}` has ended ({}): there is nothing to {action}",
            status.canary, status.phase
        )));
    }
    let status = newest(&s, &name, app.id).await?;
    s.store
        .audit(
            Some(auth.tenant_id),
            auth.token_id,
            &format!("rollout.{action}"),
            &format!("{name}@{}", status.canary),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(status)))
}

/// Checks a report: a boot id of 1 to [`MAX_BOOT_ID`] printable ASCII
/// characters, at most [`MAX_REPORT_VERSIONS`] versions, each with an app
/// key of 1 to [`MAX_REPORT_KEY`] printable ASCII characters and a latency
/// histogram of [`LATENCY_BUCKETS`] buckets. The error names the field.
fn check_report(report: &GatewayReport) -> Result<(), ApiError> {
    fn printable(value: &str) -> bool {
        value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    }
    if report.boot_id.is_empty()
        || report.boot_id.len() > MAX_BOOT_ID
        || !printable(&report.boot_id)
    {
        return Err(ApiError::Invalid(format!(
            "`boot_id` must be 1 to {MAX_BOOT_ID} printable ASCII characters"
        )));
    }
    if report.versions.len() > MAX_REPORT_VERSIONS {
        return Err(ApiError::Invalid(format!(
            "`versions` has {} entries; at most {MAX_REPORT_VERSIONS} are allowed",
            report.versions.len()
        )));
    }
    for (i, version) in report.versions.iter().enumerate() {
        if version.key.is_empty() || version.key.len() > MAX_REPORT_KEY || !printable(&version.key)
        {
            return Err(ApiError::Invalid(format!(
                "`versions[{i}].key` must be 1 to {MAX_REPORT_KEY} printable ASCII characters"
            )));
        }
        if version.latency.len() != LATENCY_BUCKETS {
            return Err(ApiError::Invalid(format!(
                "`versions[{i}].latency` has {} buckets; it must have {LATENCY_BUCKETS}",
                version.latency.len()
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/pops/{pop}/report", tag = "gateways", security(("node" = [])), params(("pop" = String, Path)), request_body = GatewayReport,
    responses((status = 204, description = "recorded"), (status = "4XX", description = "refused; see the problem document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn report(
    State(s): State<AppState>,
    node: NodeAuth,
    Json(report): Json<GatewayReport>,
) -> Result<StatusCode, ApiError> {
    check_report(&report)?;
    s.store.record_report(node.gateway_id, &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gannet_model::snapshot::VersionCounters;

    fn version(key: &str, buckets: usize) -> VersionCounters {
        VersionCounters {
            key: key.to_owned(),
            version: 3,
            latency: vec![0; buckets],
            ..VersionCounters::default()
        }
    }

    #[test]
    fn reports_are_checked() {
        let good = GatewayReport {
            boot_id: "b7f3".to_owned(),
            versions: vec![version("acme/shop", LATENCY_BUCKETS)],
        };
        assert!(check_report(&good).is_ok());
        assert!(
            check_report(&GatewayReport {
                versions: Vec::new(),
                ..good.clone()
            })
            .is_ok()
        );
        for (bad, field) in [
            (
                GatewayReport {
                    boot_id: String::new(),
                    ..good.clone()
                },
                "boot_id",
            ),
            (
                GatewayReport {
                    boot_id: "x".repeat(129),
                    ..good.clone()
                },
                "boot_id",
            ),
            (
                GatewayReport {
                    boot_id: "boot\n".to_owned(),
                    ..good.clone()
                },
                "boot_id",
            ),
            (
                GatewayReport {
                    versions: vec![version("acme/shop", 16)],
                    ..good.clone()
                },
                "versions[0].latency",
            ),
            (
                GatewayReport {
                    versions: vec![version("", LATENCY_BUCKETS)],
                    ..good.clone()
                },
                "versions[0].key",
            ),
            (
                GatewayReport {
                    versions: vec![version("acme/shop", LATENCY_BUCKETS); MAX_REPORT_VERSIONS + 1],
                    ..good.clone()
                },
                "versions",
            ),
        ] {
            match check_report(&bad) {
                Err(ApiError::Invalid(message)) => {
                    assert!(message.contains(&format!("`{field}`")), "{message}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
