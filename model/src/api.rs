//! Wire types of the control API (`/v1`). The CLI and the API share them;
//! every struct tolerates unknown fields so either side may be newer.

use crate::{ByteSize, Limits, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A tenant's quotas: how much it may hold, and the ceilings for the limits
/// its apps may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quotas {
    /// Apps the tenant may have.
    pub max_apps: u32,
    /// Largest component it may upload.
    pub max_component_size: ByteSize,
    /// Total bytes of components it may store.
    pub max_total_bytes: ByteSize,
    /// Versions kept per app; older ones not in use are pruned.
    pub max_versions_per_app: u32,
    /// Ceiling for an app's `memory` limit.
    pub max_memory: ByteSize,
    /// Ceiling for an app's `cpu_ms` limit.
    pub max_cpu_ms: u64,
    /// Ceiling for an app's `wall_ms` limit.
    pub max_wall_ms: u64,
    /// API tokens the tenant may hold at once (revoked ones do not count).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Ceiling for an app's `max_inflight` limit.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u32,
}

/// [`Quotas::max_tokens`] when a peer predating it leaves it out.
fn default_max_tokens() -> u32 {
    Quotas::default().max_tokens
}

/// [`Quotas::max_inflight`] when a peer predating it leaves it out.
fn default_max_inflight() -> u32 {
    Quotas::default().max_inflight
}

impl Default for Quotas {
    /// The platform's default quotas (admit a 25 MB componentize-py app).
    fn default() -> Self {
        Quotas {
            max_apps: 20,
            max_component_size: ByteSize::mib(32),
            max_total_bytes: ByteSize::mib(512),
            max_versions_per_app: 10,
            max_memory: ByteSize::mib(256),
            max_cpu_ms: 200,
            max_wall_ms: 60_000,
            max_tokens: 20,
            max_inflight: 100,
        }
    }
}

/// Quota values to set; missing ones keep their current (or default) value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaPatch {
    /// See [`Quotas::max_apps`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_apps: Option<u32>,
    /// See [`Quotas::max_component_size`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_component_size: Option<ByteSize>,
    /// See [`Quotas::max_total_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_bytes: Option<ByteSize>,
    /// See [`Quotas::max_versions_per_app`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_versions_per_app: Option<u32>,
    /// See [`Quotas::max_memory`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    /// See [`Quotas::max_cpu_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_ms: Option<u64>,
    /// See [`Quotas::max_wall_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_ms: Option<u64>,
    /// See [`Quotas::max_tokens`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// See [`Quotas::max_inflight`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
}

impl QuotaPatch {
    /// `base` with this patch applied.
    pub fn apply(&self, base: &Quotas) -> Quotas {
        Quotas {
            max_apps: self.max_apps.unwrap_or(base.max_apps),
            max_component_size: self.max_component_size.unwrap_or(base.max_component_size),
            max_total_bytes: self.max_total_bytes.unwrap_or(base.max_total_bytes),
            max_versions_per_app: self
                .max_versions_per_app
                .unwrap_or(base.max_versions_per_app),
            max_memory: self.max_memory.unwrap_or(base.max_memory),
            max_cpu_ms: self.max_cpu_ms.unwrap_or(base.max_cpu_ms),
            max_wall_ms: self.max_wall_ms.unwrap_or(base.max_wall_ms),
            max_tokens: self.max_tokens.unwrap_or(base.max_tokens),
            max_inflight: self.max_inflight.unwrap_or(base.max_inflight),
        }
    }
}

/// `POST /v1/admin/tenants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateTenant {
    /// The tenant's name (an id: a-z, 0-9, '-').
    pub name: String,
    /// Quotas; unset ones take the platform defaults.
    #[serde(default)]
    pub quotas: QuotaPatch,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
}

/// A tenant with the token created for it (shown once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantCreated {
    /// The tenant.
    pub tenant: Tenant,
    /// Its first API token. Not retrievable again.
    pub token: String,
}

/// What a token holder sees about itself: `GET /v1/whoami`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// `operator` or `tenant`.
    pub role: String,
    /// The tenant, for tenant tokens.
    #[serde(default)]
    pub tenant: Option<Tenant>,
    /// Bytes of components the tenant stores.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Apps the tenant has.
    #[serde(default)]
    pub apps: u32,
}

/// A token's public record (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// Its id, for revocation.
    pub id: i64,
    /// A label.
    pub label: String,
    /// Creation time, ms.
    pub created_ms: i64,
    /// Last use, ms.
    #[serde(default)]
    pub last_used_ms: Option<i64>,
    /// Revocation time, ms.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
}

/// `POST /v1/tokens`: a new token for the caller's tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// The record.
    pub info: TokenInfo,
    /// The secret, shown once.
    pub token: String,
}

/// `POST /v1/apps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApp {
    /// The app's name (an id: a-z, 0-9, '-').
    pub name: String,
    /// Where it is served: a selector over PoP labels such as
    /// `region=eu,tier!=canary`; every PoP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Its affinity key: `client` (default), `header:<name>` or
    /// `cookie:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
}

/// An app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct App {
    /// Its name, unique within the tenant.
    pub name: String,
    /// Hostnames: the platform one first, then added ones.
    pub hostnames: Vec<String>,
    /// The number of the version in service, if any.
    #[serde(default)]
    pub active_version: Option<u32>,
    /// Creation time, ms.
    pub created_ms: i64,
    /// Its placement selector (canonical; empty: every PoP).
    #[serde(default)]
    pub placement: String,
    /// The PoPs it is served at now.
    #[serde(default)]
    pub pops: Vec<String>,
    /// Its affinity key (`client`, `header:<name>`, `cookie:<name>`).
    #[serde(default)]
    pub affinity: String,
    /// The canary version of its live rollout, if one is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_version: Option<u32>,
    /// Its own rollout policy for canary deploys that name no steps
    /// (unset: the platform's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_policy: Option<RolloutPolicy>,
}

/// An app's rollout policy (`PUT /v1/apps/{app}/rollout-policy`): what a
/// canary deploy that names no steps or bake time uses. Both unset: the
/// platform's policy again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutPolicy {
    /// Steps, as `gannet deploy --steps` writes them
    /// (`pops=tier:canary 100%; 10%; 50%; 100%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<String>,
    /// Each step's bake time, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_ms: Option<u64>,
}

/// `PUT /v1/apps/{app}/placement`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetPlacement {
    /// A selector over PoP labels (`region=eu,tier!=canary`, `gpu`, `!gpu`); empty for every PoP.
    pub selector: String,
}

/// `PUT /v1/apps/{app}/affinity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetAffinity {
    /// `client`, `header:<name>` or `cookie:<name>`.
    pub affinity: String,
}

/// A secret's or a config value's record. Secrets never carry their value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppSetting {
    /// Its name: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
    pub name: String,
    /// Its value (config only: a secret's is never returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When it was last set, ms.
    pub updated_ms: i64,
}

/// `PUT /v1/apps/{app}/secrets/{name}` and `/config/{name}`. `Debug`
/// shows no value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetSetting {
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for SetSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSetting")
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

/// A rollout, as `gannet rollout status` shows it
/// (`GET /v1/apps/{app}/rollout`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutStatus {
    /// Its id.
    pub id: i64,
    /// The app.
    pub app: String,
    /// The version serving the rest of the traffic.
    pub stable: u32,
    /// The version being rolled out.
    pub canary: u32,
    /// `pending`, `progressing`, `paused`, `succeeded`, `aborted` or
    /// `superseded`.
    pub phase: String,
    /// Why it is paused, aborted or superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The current step, counted from 1, while progressing or paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The policy's steps.
    pub steps: Vec<RolloutStep>,
    /// The canary's weight (percent) at each of the app's PoPs.
    pub weights: BTreeMap<String, u8>,
    /// Per PoP: its gateways' progress on the current step.
    pub pops: Vec<PopProgress>,
    /// The canary's requests at the current step's PoPs since it started.
    pub canary_figures: Figures,
    /// The stable version's, over the same window (the baseline).
    pub stable_figures: Figures,
    /// Every transition, oldest first.
    pub history: Vec<RolloutTransition>,
    /// The analysis interval, ms.
    pub analysis_interval_ms: u64,
    /// Creation time, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
    /// An action asked for and not yet applied by the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<String>,
}

/// One step of a rollout policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutStep {
    /// Its PoP selector (canonical; empty: every PoP of the app).
    pub pops: String,
    /// The app's PoPs it applies to.
    pub pop_names: Vec<String>,
    /// The canary's weight there, percent.
    pub weight: u8,
    /// How long it bakes, ms.
    pub bake_ms: u64,
}

/// A PoP's gateways on a rollout's current step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopProgress {
    /// The PoP.
    pub pop: String,
    /// The canary's weight there, percent.
    pub weight: u8,
    /// Gateways that ACKed the step's revision with the canary warm.
    pub ready: Vec<String>,
    /// Gateways that did not yet.
    pub waiting: Vec<String>,
    /// Gateways silent past the grace (not waited for).
    pub silent: Vec<String>,
}

/// Request figures of one version over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Figures {
    /// Requests.
    pub requests: u64,
    /// Failed ones: 5xx, traps, limit kills.
    pub failures: u64,
    /// failures / requests, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_percent: Option<f64>,
    /// Median latency (upper bound of its histogram bucket), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    /// 99th percentile, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
}

/// A rollout's change of phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutTransition {
    /// When, ms.
    pub at_ms: u64,
    /// The phase before (`progressing (step 2)`…).
    pub from: String,
    /// The phase after.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// An immutable version of an app: component + env + limits + allowlist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Version {
    /// 1, 2, 3… per app.
    pub number: u32,
    /// The component's digest.
    pub digest: Sha256Digest,
    /// The component's size.
    pub size_bytes: u64,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Limits as requested.
    pub limits: Limits,
    /// Outbound host allowlist.
    pub outbound: Vec<String>,
    /// Whether it is the version in service.
    pub active: bool,
    /// Creation time, ms.
    pub created_ms: i64,
}

/// `POST /v1/apps/{app}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollback {
    /// The version to return to; the one before the active one if unset.
    #[serde(default)]
    pub to: Option<u32>,
}

/// `POST /v1/apps/{app}/domains`: adds a custom hostname to an app, or
/// (for a hostname the app already has) replaces its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddDomain {
    /// The hostname.
    pub hostname: String,
    /// The tenant's own certificate for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateUpload>,
    /// Have the platform obtain and renew a certificate over ACME
    /// (HTTP-01): the hostname then serves only its challenge until the
    /// first certificate is issued. The default when no `certificate` is
    /// given and the control API has an ACME directory; without one, a
    /// hostname without a certificate gets the platform's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// A certificate and its private key, as a tenant uploads them. The key is
/// stored encrypted, sent only to gateways, and never returned.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateUpload {
    /// PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_pem: String,
}

impl std::fmt::Debug for CertificateUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateUpload")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A custom hostname of an app, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Domain {
    /// The hostname.
    pub hostname: String,
    /// The app it routes to.
    pub app: String,
    /// The certificate served for it (the tenant's own or a managed one);
    /// without one HTTPS clients get the platform's.
    #[serde(default)]
    pub certificate: Option<CertificateSummary>,
    /// For a managed certificate: where obtaining or renewing it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedCertificate>,
    /// Whether the tenant proved it controls the hostname (it serves only
    /// then), and how to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<Ownership>,
    /// When it was added, ms.
    pub created_ms: i64,
}

/// Whether a custom hostname's owner proved control, and how to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ownership {
    /// Proved: the hostname serves.
    pub verified: bool,
    /// How: `dns`, `http`, `acme` (a managed certificate's validation),
    /// `operator`, or `legacy` (claimed before proofs were required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// Until proved: a TXT record to add (`_gannet-challenge.<hostname>`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_record: Option<String>,
    /// …or the hostname pointed at the platform, whose gateways then answer
    /// this URL (the value to find is the same token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
    /// The token either must show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// What the last check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the platform checks again by itself, ms (`gannet domains
    /// verify` checks at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_ms: Option<i64>,
    /// Unproved by then (ms), the claim is released: another tenant may
    /// take the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

/// Where a managed certificate stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManagedCertificate {
    /// `pending` (never issued: the hostname serves only its ACME
    /// challenge), `issued`, `failed` (see `error`; a certificate issued
    /// earlier is still served) or `renewing`.
    pub state: String,
    /// The CA's reason for the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the platform next works on it (a renewal, or a retry after a
    /// failure), ms.
    pub next_attempt_ms: i64,
}

/// What a stored certificate says (never its key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateSummary {
    /// `custom`: the tenant's own; `managed`: obtained by the platform.
    pub kind: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// When it was uploaded, ms.
    pub updated_ms: i64,
}

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Its id.
    pub id: i64,
    /// What happened: `app.create`, `version.create`, `token.revoke`, …
    pub action: String,
    /// What it happened to.
    pub target: String,
    /// Which token did it.
    #[serde(default)]
    pub token_id: Option<i64>,
    /// When, ms.
    pub at_ms: i64,
}

/// An error, as `application/problem+json` (RFC 9457).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A stable URI per error kind, e.g. `https://gannet.dev/problems/quota-exceeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time, and what to do.
    #[serde(default)]
    pub detail: String,
    /// For refused imports: each one, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_imports: Vec<String>,
}
