//! The gateway ↔ control API protocol: what a PoP should serve, and what
//! gateways report back.

use crate::{Limits, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One app version as a gateway serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployedApp {
    /// Tenant name.
    pub tenant: String,
    /// App name (unique within the tenant).
    pub app: String,
    /// Version number.
    pub version: u32,
    /// The component to run.
    pub digest: Sha256Digest,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Hostnames: platform one first.
    pub hosts: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Limits.
    pub limits: Limits,
    /// Outbound allowlist.
    pub outbound: Vec<String>,
    /// Components of the app's other retained versions (what a rollback may
    /// need): a gateway keeps these if it has them and collects the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain: Vec<Sha256Digest>,
    /// Certificates for some of `hosts`, served by SNI. Keys travel only
    /// over the (TLS) link and sit 0600 in the gateway's state directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<HostCertificate>,
    /// ACME HTTP-01 challenges a gateway answers at
    /// `http://<hostname>/.well-known/acme-challenge/<token>`, for hostnames
    /// of this app whether or not they serve traffic yet (a managed
    /// hostname serves only these until its certificate is issued).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<AcmeChallenge>,
}

/// One HTTP-01 challenge response (RFC 8555 §8.3): not secret, the CA
/// fetches it over plain HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AcmeChallenge {
    /// The hostname being validated (lowercase, no trailing dot).
    pub hostname: String,
    /// The challenge token: the last path segment the CA asks for.
    pub token: String,
    /// The body to answer with (`token.thumbprint`).
    pub key_authorization: String,
}

/// A certificate a gateway serves for one of an app's hostnames.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostCertificate {
    /// The hostname (one of the app's `hosts`).
    pub hostname: String,
    /// PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

impl std::fmt::Debug for HostCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCertificate")
            .field("hostname", &self.hostname)
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl DeployedApp {
    /// `tenant/app`, the key of an app across the platform.
    pub fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.app)
    }
}

/// The answer to a state poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateUpdate {
    /// Everything the PoP serves at `revision` (first poll, or the poller
    /// is older than the retained change feed).
    Snapshot {
        /// The revision.
        revision: i64,
        /// All apps.
        apps: Vec<DeployedApp>,
        /// The PoP's TLS settings from the control API; none: the
        /// gateway's own (its `--tls-cert` file, per-process ticket keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<PlatformTls>,
    },
    /// What changed since the poller's revision.
    Delta {
        /// The revision the delta leads to.
        revision: i64,
        /// Apps added or changed.
        upserts: Vec<DeployedApp>,
        /// Keys (`tenant/app`) no longer served.
        removals: Vec<String>,
        /// The PoP's TLS settings, when they changed (whole); absent: as
        /// before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<PlatformTls>,
    },
}

/// TLS settings the control API gives every gateway of a PoP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlatformTls {
    /// The platform certificate (`*.<platform domain>`), set by the
    /// operator with `gannet admin certs set --platform`; it wins over a
    /// gateway's `--tls-cert` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PemPair>,
    /// Session-ticket keys shared by the PoP's gateways (a ticket one
    /// issues resumes at another), rotated by the control API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ticket_keys: Vec<TicketKeyWire>,
}

/// A certificate chain and its private key, PEM. `Debug` shows no key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PemPair {
    /// PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A session-ticket key as it travels. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TicketKeyWire {
    /// Its id: 16 bytes, lowercase hex (the first bytes of its tickets).
    pub id: String,
    /// The AES-256-GCM key: 32 bytes, lowercase hex.
    pub secret: String,
    /// Past this (ms since the epoch) it neither makes nor opens tickets.
    pub not_after_ms: i64,
}

impl std::fmt::Debug for TicketKeyWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeyWire")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("not_after_ms", &self.not_after_ms)
            .finish()
    }
}

/// What a gateway reports after applying (or failing to apply) a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayAck {
    /// The revision now applied (the last good one on failure).
    pub applied_revision: i64,
    /// The revision that failed to apply, if any (a NACK).
    #[serde(default)]
    pub failed_revision: Option<i64>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Per app version: requests and errors since the gateway started.
    #[serde(default)]
    pub apps: Vec<AppReport>,
    /// Apps of the applied revision the gateway could not take (it keeps
    /// serving their previous version), with the reason.
    #[serde(default)]
    pub failed_apps: Vec<FailedApp>,
}

/// What a gateway says about itself when it starts (`POST
/// /v1/pops/{pop}/register`), for the operator's listing. Each string is
/// printable ASCII of at most 128 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayRegistration {
    /// CPU architecture (`std::env::consts::ARCH`, e.g. `x86_64`).
    pub arch: String,
    /// Tells apart the compiled artifacts of different engines: gateways
    /// with the same value can run each other's precompiled components.
    pub engine_compat: String,
    /// The gateway's Gannet version.
    pub gannet_version: String,
    /// The addresses its public listeners are bound to (`ip:port`, at most
    /// 8).
    #[serde(default)]
    pub listen: Vec<String>,
    /// A random id made once per process start: a new one means the
    /// gateway restarted (and its counters began again).
    pub boot_id: String,
}

/// An app a gateway refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedApp {
    /// `tenant/app`.
    pub key: String,
    /// The version it could not take.
    pub version: u32,
    /// Why.
    pub error: String,
}

/// Request figures of one app version on one gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppReport {
    /// `tenant/app`.
    pub key: String,
    /// Version number served.
    pub version: u32,
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Mean time to the response head, microseconds.
    #[serde(default)]
    pub mean_latency_us: u64,
}
