//! The OpenAPI document, generated from the handlers' annotations and the
//! model's schemas. Served at `/v1/openapi.json`; the checked-in copy
//! (`control-api/openapi.json`) is compared with it by a test, and
//! rewritten by running that test with `GANNET_UPDATE_OPENAPI=1`.

use crate::desired_state::GatewayState;
use crate::ownership::store::OperatorDomain;
use crate::routes::pops::{AppStatus, CreatePop, GatewayAppStatus, NodeToken, Pop};
use crate::routes::{account, admin, apps, pops, rollouts, settings, versions};
use gannet_model::api::*;
use gannet_model::snapshot::{
    AcmeChallenge, Affinity, AppReport, CanaryVersion, DeployedApp, FailedApp, GatewayAck,
    GatewayRegistration, HostCertificate, PemPair, PlatformTls, StateUpdate, TicketKeyWire,
};
use gannet_model::snapshot::{GatewayReport, VersionCounters};
use gannet_model::{ByteSize, Limits, Sha256Digest};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Gannet control API", version = "1", description = "Tenants, tokens, apps, uploads, versions and quotas. Errors are application/problem+json with a stable `type` per kind."),
    paths(
        admin::create_tenant, admin::list_tenants, admin::create_tenant_token, admin::renew_domain,
        admin::set_platform_certificate, admin::get_platform_certificate,
        admin::list_domains, admin::vouch_for_domain, apps::verify_domain,
        account::whoami, account::list_tokens, account::create_token, account::revoke_token, account::audit,
        apps::create_app, apps::list_apps, apps::get_app, apps::add_domain, apps::list_app_domains,
        apps::remove_domain, apps::list_domains, apps::set_placement, apps::set_affinity, apps::set_rollout_policy,
        settings::set_secret, settings::list_secrets, settings::delete_secret,
        settings::set_config, settings::list_config, settings::delete_config,
        versions::upload, versions::list, versions::rollback, versions::download,
        pops::create_pop, pops::list_pops, pops::create_gateway, pops::list_gateways, pops::revoke_gateway,
        pops::state, pops::register, pops::component, pops::ack, pops::app_status,
        rollouts::get_rollout, rollouts::rollout_action, rollouts::report,
    ),
    components(schemas(
        Quotas, QuotaPatch, CreateTenant, Tenant, TenantCreated, WhoAmI, TokenInfo, TokenCreated,
        CreateApp, App, Version, Rollback, AddDomain, CertificateUpload, Domain, CertificateSummary, ManagedCertificate, Ownership, OperatorDomain,
        AuditEntry, Problem, Limits, ByteSize, Sha256Digest,
        CreatePop, Pop, NodeToken, AppStatus, GatewayAppStatus, StateUpdate, DeployedApp, GatewayAck,
        AppReport, FailedApp, GatewayState, GatewayRegistration, HostCertificate, AcmeChallenge,
        PlatformTls, PemPair, TicketKeyWire, SetPlacement, SetAffinity, RolloutPolicy, AppSetting, SetSetting, CanaryVersion, Affinity,
        RolloutStatus, RolloutStep, PopProgress, Figures, RolloutTransition, GatewayReport, VersionCounters,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "admin", description = "Operator routes (operator token)"),
        (name = "account", description = "The caller's tenant: tokens, audit log"),
        (name = "apps", description = "Apps and hostnames"),
        (name = "versions", description = "Uploads, versions, rollbacks, status"),
        (name = "rollouts", description = "Progressive rollouts: status and actions"),
        (name = "gateways", description = "The gateway protocol (node token)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            components.add_security_scheme(
                "node",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("A gateway's node token"))
                        .build(),
                ),
            );
        }
    }
}

/// The document as pretty JSON.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
