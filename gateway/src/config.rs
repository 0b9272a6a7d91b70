//! The gateway's configuration: plain data, no clap. `main.rs` resolves
//! command-line arguments into it; tests build it directly.

use gannet_model::{ByteSize, ResolvedLimits};
use gannet_runtime::EngineConfig;
use std::path::PathBuf;
use std::time::Duration;

/// How a gateway follows the control API.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// Base URL, e.g. `http://127.0.0.1:7070`.
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
}

/// The default `--max-component-size`: 8× the default tenant quota (32 MiB).
pub const DEFAULT_MAX_COMPONENT_SIZE: ByteSize = ByteSize(256 << 20);

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
    /// Guest output lines logged per app per second; the rest are dropped.
    pub guest_log_lines_per_second: u64,
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
            guest_log_lines_per_second: 100,
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

    /// The largest `memory` limit an app may ask for.
    pub fn max_app_memory(&self) -> u64 {
        self.engine
            .pool
            .as_ref()
            .map_or(4 << 30, |p| p.admits.memory_size as u64)
    }
}
