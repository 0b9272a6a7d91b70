//! The gateway's configuration: plain data, no clap. `main.rs` resolves
//! command-line arguments into it; tests build it directly.

use gannet_model::{ByteSize, ResolvedLimits};
use gannet_runtime::outbound::OutboundLimits;
use gannet_runtime::{EngineConfig, Footprint};
use std::path::PathBuf;
use std::time::Duration;

/// How a gateway follows the control API.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// Base URL, e.g. `https://api.example.com` (plain `http://` only to
    /// loopback: see [`crate::sync::trust::control_api_url`]).
    pub url: String,
    /// The PoP this gateway belongs to.
    pub pop: String,
    /// Its node token.
    pub node_token: String,
    /// Where the last applied snapshot and its components are kept.
    pub state_dir: PathBuf,
    /// Longest wait of one state poll.
    pub poll_wait: Duration,
    /// Largest body read from the control API: a component download (which
    /// is also held to the size the state declares for it) or a state
    /// document. At least the largest component size quota of any tenant.
    pub max_body: ByteSize,
    /// The only CAs an `https://` control API's certificate may chain to
    /// (`--control-api-ca`, read with
    /// [`crate::sync::trust::read_ca_file`]); `None`: the web's public
    /// roots (Mozilla's, built in).
    pub trusted_cas: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// How often request counters are pushed (`POST /v1/pops/{pop}/report`)
    /// for the scheduler's analysis of rollouts.
    pub report_interval: Duration,
}

/// The default [`ControlPlane::report_interval`]: the scheduler's default
/// analysis interval.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The default `--max-component-size`: 8× the default tenant quota (32 MiB).
pub const DEFAULT_MAX_COMPONENT_SIZE: ByteSize = ByteSize(256 << 20);

/// How the gateway is shared between tenants ([`gannet_runtime::fair`]).
#[derive(Clone, Debug)]
pub struct Fairness {
    /// Guest worker threads, and so CPU turns; `None`: one per CPU this
    /// process may run on.
    pub guest_threads: Option<usize>,
    /// How much lower than connection threads guest threads run (nice).
    pub guest_nice: i32,
    /// Percent of the pool's slots and of the memory budget that no one
    /// tenant may take.
    pub reserve_percent: u8,
    /// Linear memory all instances may hold together; `None`: half the
    /// machine's memory.
    pub memory_budget: Option<ByteSize>,
    /// How long a request over its app's or tenant's share is held before
    /// its 503, so a client retrying at once cannot turn its own excess
    /// into load on the connection threads everyone shares.
    pub busy_hold: Duration,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            guest_threads: None,
            guest_nice: 0,
            reserve_percent: 25,
            memory_budget: None,
            busy_hold: Duration::from_millis(250),
        }
    }
}

impl Fairness {
    /// Guest worker threads to start.
    pub fn threads(&self) -> usize {
        self.guest_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The memory budget in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget.map_or_else(
            || {
                // SAFETY: sysconf only reads system configuration values.
                let (pages, size) = unsafe {
                    (
                        libc::sysconf(libc::_SC_PHYS_PAGES),
                        libc::sysconf(libc::_SC_PAGESIZE),
                    )
                };
                if pages > 0 && size > 0 {
                    (pages as u64).saturating_mul(size as u64) / 2
                } else {
                    4 << 30
                }
            },
            |b| b.bytes(),
        )
    }
}

/// The HTTPS listener's settings.
#[derive(Clone, Debug)]
pub struct Https {
    /// The platform certificate and key files (re-read on SIGHUP).
    pub platform: crate::tls::PlatformFiles,
    /// How long a client has to finish its handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    /// Whether the plain listener answers 308 to the https URL.
    pub redirect_http: bool,
    /// The port the https URL names (behind a port mapping, the public
    /// one); `None`: the TLS listener's own.
    pub public_port: Option<u16>,
}

/// Everything `Gateway::build` needs.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The routes file (a gateway without one follows the control API).
    pub routes_path: Option<PathBuf>,
    /// The control API to follow, instead of a routes file.
    pub control: Option<ControlPlane>,
    /// Directory for precompiled artifacts.
    pub cache_dir: PathBuf,
    /// Engine and pool settings.
    pub engine: EngineConfig,
    /// Limits for apps that do not set their own.
    pub defaults: ResolvedLimits,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Bytes of precompiled components kept in memory.
    pub cache_capacity: ByteSize,
    /// Whether guests may reach private, loopback and link-local addresses.
    pub allow_private_outbound: bool,
    /// Caps on each instance's outbound requests.
    pub outbound_limits: OutboundLimits,
    /// Guest output lines logged per app per second; the rest are dropped.
    pub guest_log_lines_per_second: u64,
    /// How tenants share the gateway.
    pub fairness: Fairness,
    /// Timeouts and caps of the public listener's connections (its drain
    /// timeout is `drain_timeout`).
    pub server: gannet_server::ServerLimits,
    /// HTTPS, when the gateway has a TLS listener.
    pub https: Option<Https>,
    /// Proxies whose `X-Forwarded-For` gives a request's client address
    /// (the affinity key of a rollout's split); none: the connection's.
    pub trusted_proxies: crate::proxies::TrustedProxies,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            routes_path: None,
            control: None,
            cache_dir: PathBuf::from("cache"),
            engine: EngineConfig::default(),
            defaults: ResolvedLimits::default(),
            drain_timeout: Duration::from_secs(30),
            cache_capacity: ByteSize(1 << 30),
            allow_private_outbound: false,
            outbound_limits: OutboundLimits::default(),
            guest_log_lines_per_second: 100,
            fairness: Fairness::default(),
            server: gannet_server::ServerLimits::default(),
            https: None,
            trusted_proxies: crate::proxies::TrustedProxies::default(),
        }
    }
}

impl GatewayConfig {
    /// The most instances that can run at once: the pool's slots, or a
    /// generous bound when allocating on demand.
    pub fn max_instances(&self) -> usize {
        self.engine
            .pool
            .as_ref()
            .map_or(1000, |p| p.total_component_instances as usize)
    }

    /// The pool's core instances, memories and tables (generous bounds
    /// when allocating on demand, where only the memory budget binds).
    pub fn pool_footprint(&self) -> Footprint {
        self.engine.pool.as_ref().map_or(
            Footprint {
                core_instances: u32::MAX,
                memories: u32::MAX,
                tables: u32::MAX,
            },
            |p| Footprint {
                core_instances: p.total_core_instances,
                memories: p.total_memories,
                tables: p.total_tables,
            },
        )
    }

    /// The largest `memory` limit an app may ask for.
    pub fn max_app_memory(&self) -> u64 {
        self.engine
            .pool
            .as_ref()
            .map_or(4 << 30, |p| p.admits.memory_size as u64)
    }
}
