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
    /// A canary version served beside this (stable) one during a rollout,
    /// with its share of this PoP's traffic (possibly 0: reachable only by
    /// the `gannet-version` header). Both stay warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryVersion>,
    /// What keeps an end user on one version while a rollout moves.
    #[serde(default, skip_serializing_if = "Affinity::is_client")]
    pub affinity: Affinity,
    /// The app's plain config: environment variables over each version's
    /// own `env` (stable and canary alike).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// The app's secrets: environment variables over its config. Travel
    /// only over the (TLS) link, sit 0600 in the gateway's state
    /// directory, never in a log line (`Debug` shows names only).
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
}

/// An app's secrets by name. `Debug` shows the names, never the values.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl Secrets {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl DeployedApp {
    /// A version's environment as its guests see it: the version's own
    /// `env`, then the app's config over it, then its secrets over both.
    pub fn environment(&self, version_env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = version_env.clone();
        env.extend(self.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.secrets.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// The canary version of a rollout, as a gateway serves it. Hostnames,
/// certificates and challenges are the app's (its stable version's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CanaryVersion {
    /// Version number.
    pub version: u32,
    /// The component to run.
    pub digest: Sha256Digest,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Limits.
    pub limits: Limits,
    /// Outbound allowlist.
    pub outbound: Vec<String>,
    /// Its share of the PoP's requests, in percent (0 to 100); the stable
    /// version gets the rest.
    pub weight: u8,
}

/// The affinity key of a request: what the traffic split hashes, so that
/// one end user keeps one version at a fixed weight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// The client's address (from the connection, or from
    /// `X-Forwarded-For` behind proxies the operator trusts).
    #[default]
    Client,
    /// A request header's value (lowercase name); the client address when
    /// the request has none.
    Header(String),
    /// A cookie's value; the client address when the request has none.
    Cookie(String),
}

/// Why an affinity setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "affinity `{0}`: use `client`, `header:<name>` or `cookie:<name>` with a name of 1 to 64 of a-z, 0-9, '-', '_', '.'"
)]
pub struct AffinityError(pub String);

impl Affinity {
    /// Whether it is [`Affinity::Client`].
    pub fn is_client(&self) -> bool {
        matches!(self, Affinity::Client)
    }

    /// Parses `client` (or the empty string), `header:<name>` or
    /// `cookie:<name>`. Header names are lowercased.
    pub fn parse(s: &str) -> Result<Affinity, AffinityError> {
        let bad = || AffinityError(s.to_string());
        let s = s.trim();
        if s.is_empty() || s == "client" {
            return Ok(Affinity::Client);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !ok(name) {
            return Err(bad());
        }
        match kind {
            "header" => Ok(Affinity::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(Affinity::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

/// `client`, `header:<name>`, `cookie:<name>`: what [`Affinity::parse`] reads.
impl std::fmt::Display for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Affinity::Client => f.write_str("client"),
            Affinity::Header(h) => write!(f, "header:{h}"),
            Affinity::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
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

/// What a gateway pushes every analysis interval (`POST
/// /v1/pops/{pop}/report`): per app version, counters cumulative since its
/// boot. The control API diffs successive reports of one boot, so a lost or
/// repeated report moves or adds nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayReport {
    /// The gateway's boot id (as registered).
    pub boot_id: String,
    /// Per version served.
    #[serde(default)]
    pub versions: Vec<VersionCounters>,
}

/// One app version's requests on one gateway since its boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionCounters {
    /// `tenant/app`.
    pub key: String,
    /// Version number.
    pub version: u32,
    /// Requests answered (or failed), whatever the outcome.
    pub requests: u64,
    /// Answered 5xx by the guest (or for it: no response, a guest error).
    pub server_errors: u64,
    /// Guests that trapped.
    pub traps: u64,
    /// Guests killed at a limit (CPU, memory, wall time).
    pub limit_kills: u64,
    /// Requests per latency bucket (time to the response head), with the
    /// bounds of `gannet_scheduler::analysis::LATENCY_BOUNDS_US` and an
    /// overflow bucket last.
    pub latency: Vec<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_win_over_config_over_a_versions_env_and_never_show_in_debug() {
        let mut app = DeployedApp {
            tenant: "acme".into(),
            app: "shop".into(),
            version: 1,
            digest: crate::Sha256Digest::of(b"x"),
            size_bytes: 1,
            hosts: vec![],
            env: BTreeMap::new(),
            limits: Default::default(),
            outbound: vec![],
            retain: vec![],
            certificates: vec![],
            challenges: vec![],
            canary: None,
            affinity: Affinity::Client,
            config: BTreeMap::from([("A".into(), "config".into()), ("B".into(), "config".into())]),
            secrets: Secrets(BTreeMap::from([("B".into(), "hunter2".into())])),
        };
        let version = BTreeMap::from([("A".into(), "env".into()), ("C".into(), "env".into())]);
        let env = app.environment(&version);
        assert_eq!(env["A"], "config");
        assert_eq!(env["B"], "hunter2");
        assert_eq!(env["C"], "env");
        let debug = format!("{app:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("\"B\""), "{debug}");
        // On the wire the secrets are a plain map (the gateway needs them).
        let json = serde_json::to_value(&app).unwrap();
        assert_eq!(json["secrets"]["B"], "hunter2");
        app.secrets = Secrets::default();
        assert!(serde_json::to_value(&app).unwrap().get("secrets").is_none());
    }
}
