//! The control API's configuration: plain data, resolved from the command
//! line by `main.rs` (or built directly by tests and `gannet dev`).

use std::path::PathBuf;
use std::time::Duration;

/// Everything `AppState::build` needs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `sqlite://PATH` (default `sqlite://<data-dir>/gannet.db`) or `postgres://…`.
    pub database_url: String,
    /// Local blobs, temporary uploads, compile cache.
    pub data_dir: PathBuf,
    /// Apps get `<app>-<tenant>.<platform_domain>`.
    pub platform_domain: String,
    /// An operator token to accept (GANNET_OPERATOR_TOKEN); otherwise one is
    /// created and printed once, on first start.
    pub operator_token: Option<String>,
    /// Requests per second per token (0 disables the limit).
    pub rate_limit_per_sec: f64,
    /// Burst per token.
    pub rate_limit_burst: f64,
    /// Requests per [`ApiConfig::tenant_rate_window`] per tenant, across
    /// all its tokens and every replica (counted in the database; 0
    /// disables the limit).
    pub tenant_rate_limit: u64,
    /// The fixed window of the per-tenant limit.
    pub tenant_rate_window: Duration,
    /// How uploads are compiled: isolation, bounds, concurrency.
    pub compile: crate::compile::CompileConfig,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Timeouts and caps of the listener's connections.
    pub server: gannet_server::ServerLimits,
    /// Fault points armed for tests (none by default).
    pub faults: crate::fault::Faults,
    /// Seals the private keys of tenants' certificates at rest. The binary
    /// refuses to start without one; in-process users (tests, `gannet dev`)
    /// pass one. Without it, uploading a certificate is refused (503
    /// `certificates-unavailable`) and plain custom hostnames still work.
    pub master_key: Option<crate::master_key::MasterKey>,
    /// Managed certificates over ACME: off (`None`) unless the operator
    /// names a directory.
    pub acme: Option<crate::acme::AcmeConfig>,
    /// How custom hostnames' ownership is checked.
    pub ownership: crate::ownership::worker::OwnershipConfig,
    /// How rollouts run (the scheduler's leader loop and lease) and the
    /// policy a canary deploy gets by default.
    pub rollouts: crate::rollouts::RolloutSettings,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            database_url: "sqlite://./data/gannet.db".into(),
            data_dir: PathBuf::from("./data"),
            platform_domain: "localhost".into(),
            operator_token: None,
            rate_limit_per_sec: 50.0,
            rate_limit_burst: 200.0,
            tenant_rate_limit: 1000,
            tenant_rate_window: Duration::from_secs(10),
            compile: crate::compile::CompileConfig::default(),
            request_timeout: crate::DEFAULT_REQUEST_TIMEOUT,
            faults: crate::fault::Faults::default(),
            server: gannet_server::ServerLimits::default(),
            master_key: None,
            acme: None,
            ownership: crate::ownership::worker::OwnershipConfig::default(),
            rollouts: crate::rollouts::RolloutSettings::default(),
        }
    }
}
