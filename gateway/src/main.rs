//! `gannet-gateway`: parse arguments, bind, build, serve, handle signals.
//!
//!     gannet-gateway --routes routes.toml --listen 127.0.0.1:8080 \
//!                    --admin-listen 127.0.0.1:9090 --cache-dir ./cache
//!
//! SIGHUP reloads the routes file and the TLS certificate (a bad file is
//! logged and the old table or certificate keeps serving); SIGTERM or SIGINT stops accepting, drains in-flight
//! requests up to `--drain-timeout-secs`, and exits 0. A second signal exits
//! at once.

use anyhow::{Context, Result};
use clap::Parser;
use gannet_gateway::tls::PlatformFiles;
use gannet_gateway::{ControlPlane, Fairness, Gateway, GatewayConfig, Https};
use gannet_model::ByteSize;
use gannet_runtime::{EngineConfig, PoolConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Runs tenants' wasi:http components per request, routed by hostname.
#[derive(Parser, Debug)]
#[command(name = "gannet-gateway", version)]
struct Args {
    /// Routes file (TOML): hostnames → app id, component, env, limits.
    #[arg(
        long,
        env = "GANNET_ROUTES",
        required_unless_present = "control_api",
        conflicts_with = "control_api"
    )]
    routes: Option<PathBuf>,
    /// Follow this control API instead of a routes file: https://HOST[:PORT]
    /// (plain http:// only to a loopback address).
    #[arg(long, env = "GANNET_CONTROL_API", requires = "pop")]
    control_api: Option<String>,
    /// PEM file of the CA certificate(s) the control API's certificate must
    /// chain to, instead of the built-in public roots (with --control-api).
    #[arg(long, env = "GANNET_CONTROL_API_CA", requires = "control_api")]
    control_api_ca: Option<PathBuf>,
    /// The PoP this gateway serves (with --control-api).
    #[arg(long, env = "GANNET_POP")]
    pop: Option<String>,
    /// This gateway's node token (with --control-api). Prefer
    /// --node-token-file or GANNET_NODE_TOKEN: other users can read argv.
    #[arg(long, env = "GANNET_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// A file holding this gateway's node token (with --control-api).
    #[arg(long, env = "GANNET_NODE_TOKEN_FILE", conflicts_with = "node_token")]
    node_token_file: Option<PathBuf>,
    /// Largest component (or state document) taken from the control API;
    /// at least the largest component size quota of any tenant.
    #[arg(long, default_value_t = gannet_gateway::config::DEFAULT_MAX_COMPONENT_SIZE)]
    max_component_size: ByteSize,
    /// Where the last applied state and its components are kept (with --control-api).
    #[arg(long, env = "GANNET_STATE_DIR", default_value = "./gannet-state")]
    state_dir: PathBuf,
    /// Public listener (HTTP/1.1 and HTTP/2 prior knowledge).
    #[arg(long, env = "GANNET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "GANNET_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Directory for precompiled components (.cwasm).
    #[arg(long, env = "GANNET_CACHE_DIR", default_value = "./cache")]
    cache_dir: PathBuf,
    /// Seconds in-flight requests may take to finish on shutdown.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Memory for precompiled components kept ready (e.g. 1GiB).
    #[arg(long, default_value = "1GiB")]
    cache_memory: ByteSize,
    /// Let guests reach private, loopback and link-local addresses.
    #[arg(long)]
    allow_private_outbound: bool,
    /// Outbound requests one instance (one incoming request) may have in
    /// flight at once; more are refused at once.
    #[arg(long, default_value_t = gannet_runtime::outbound::limits::DEFAULT_MAX_CONCURRENT)]
    outbound_max_concurrent: u32,
    /// Outbound requests one instance may send in total.
    #[arg(long, default_value_t = gannet_runtime::outbound::limits::DEFAULT_MAX_PER_REQUEST)]
    outbound_max_per_request: u32,
    /// Seconds one outbound request may take, connect to end of body.
    #[arg(long, default_value_t = gannet_runtime::outbound::limits::DEFAULT_TIMEOUT.as_secs())]
    outbound_timeout_secs: u64,
    /// Guest stdout/stderr lines logged per app per second.
    #[arg(long, default_value_t = 100)]
    guest_log_lines_per_second: u64,
    /// Instances (requests being run) the pool holds at once.
    #[arg(long, default_value_t = 1000)]
    pool_instances: u32,
    /// Bytes of each memory slot kept resident between instances.
    #[arg(long, default_value = "64MiB")]
    pool_keep_resident: ByteSize,
    /// Bytes of each async stack zeroed with memset (and kept resident)
    /// when an instance ends; the rest is decommitted. Stacks are always
    /// zeroed before reuse.
    #[arg(long, default_value = "16KiB")]
    pool_stack_keep_resident: ByteSize,
    /// Pool slots released together in one batch (fewer TLB shootdowns).
    #[arg(long, default_value_t = 16)]
    pool_decommit_batch: usize,
    /// Unused pool slots kept warm (image mapped) for reuse.
    #[arg(long, default_value_t = 200)]
    pool_warm_slots: u32,
    /// Allocate instances on demand instead of from a pool.
    #[arg(long)]
    no_pool: bool,
    /// Guest worker threads (CPU turns shared fairly between tenants);
    /// default: one per CPU this process may run on.
    #[arg(long)]
    guest_threads: Option<usize>,
    /// How much lower than connection threads the guest threads run (nice;
    /// 0 measured best with the gateway on one core).
    #[arg(long, default_value_t = 0)]
    guest_nice: i32,
    /// Percent of the pool's slots and of the memory budget no one tenant
    /// may take: kept for tenants that hold little.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=90))]
    tenant_reserve_percent: u8,
    /// Linear memory all instances may hold together (e.g. 8GiB);
    /// default: half the machine's memory.
    #[arg(long)]
    memory_budget: Option<ByteSize>,
    /// Milliseconds a request over its app's or tenant's share is held
    /// before its 503 (app-busy, tenant-busy).
    #[arg(long, default_value_t = 250)]
    busy_hold_ms: u64,
    /// A proxy (address or CIDR block) in front of this gateway whose
    /// `X-Forwarded-For` names the client; repeat for more. The client
    /// address is the key of a rollout's split for apps without a header
    /// or cookie affinity. Default: none, the connection's address.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<gannet_gateway::proxies::Cidr>,
    /// Seconds between two pushes of request counters to the control API
    /// (the scheduler's analysis interval).
    #[arg(long, default_value_t = 10)]
    report_interval_secs: u64,
    /// The public listener's connection timeouts and caps.
    #[command(flatten)]
    server: gannet_server::ServerArgs,
    /// Also serve HTTPS on this address (needs --tls-cert and --tls-key).
    #[arg(long, requires = "tls_cert")]
    tls_listen: Option<SocketAddr>,
    /// The platform certificate and the TLS handshake limits.
    #[command(flatten)]
    tls: gannet_server::TlsArgs,
    /// Answer plain-HTTP requests for served hosts with 308 to the https
    /// URL (ACME HTTP-01 challenges excepted). Needs --tls-listen.
    #[arg(long, requires = "tls_listen")]
    redirect_http: bool,
    /// The port https URLs name in redirects (when a port mapping puts the
    /// TLS listener behind another); default: the TLS listener's port.
    #[arg(long, requires = "tls_listen")]
    https_port: Option<u16>,
    /// Load the routes file and compile every component, then exit.
    #[arg(long)]
    check: bool,
}

impl Args {
    /// The node token, from --node-token, GANNET_NODE_TOKEN or the file.
    fn node_token(&self) -> Result<Option<String>> {
        if let Some(t) = &self.node_token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.node_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the node token from {}", path.display()))?;
        let token = text.trim();
        anyhow::ensure!(!token.is_empty(), "{} holds no node token", path.display());
        Ok(Some(token.to_string()))
    }

    /// The outbound caps, each at least 1.
    fn outbound_limits(&self) -> Result<gannet_runtime::outbound::OutboundLimits> {
        anyhow::ensure!(
            self.outbound_max_concurrent > 0
                && self.outbound_max_per_request > 0
                && self.outbound_timeout_secs > 0,
            "--outbound-max-concurrent, --outbound-max-per-request and --outbound-timeout-secs must be at least 1"
        );
        Ok(gannet_runtime::outbound::OutboundLimits {
            max_concurrent: self.outbound_max_concurrent,
            max_per_request: self.outbound_max_per_request,
            timeout: Duration::from_secs(self.outbound_timeout_secs),
        })
    }

    /// The HTTPS settings, when there is a TLS listener.
    fn https(&self) -> Result<Option<Https>> {
        let Some(_) = self.tls_listen else {
            anyhow::ensure!(
                self.tls.files().is_none(),
                "--tls-cert and --tls-key need --tls-listen"
            );
            return Ok(None);
        };
        let (cert, key) = self
            .tls
            .files()
            .context("--tls-listen needs --tls-cert and --tls-key")?;
        Ok(Some(Https {
            platform: PlatformFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            handshake_timeout: Duration::from_secs(self.tls.tls_handshake_timeout_secs),
            max_handshakes: usize::try_from(self.tls.tls_max_handshakes).unwrap_or(usize::MAX),
            redirect_http: self.redirect_http,
            public_port: self.https_port,
        }))
    }

    fn resolve(&self) -> Result<GatewayConfig> {
        anyhow::ensure!(
            self.pool_instances > 0,
            "--pool-instances must be at least 1"
        );
        let pool = (!self.no_pool).then(|| PoolConfig {
            linear_memory_keep_resident: usize::try_from(self.pool_keep_resident.bytes())
                .unwrap_or(usize::MAX),
            stack_keep_resident: usize::try_from(self.pool_stack_keep_resident.bytes())
                .unwrap_or(usize::MAX),
            decommit_batch_size: self.pool_decommit_batch.max(1),
            max_unused_warm_slots: self.pool_warm_slots,
            ..PoolConfig::for_instances(self.pool_instances)
        });
        Ok(GatewayConfig {
            routes_path: self.routes.clone(),
            control: match (&self.control_api, &self.pop) {
                (Some(url), Some(pop)) => Some(ControlPlane {
                    url: gannet_gateway::sync::trust::control_api_url(url)?,
                    pop: pop.clone(),
                    node_token: self.node_token()?.context(
                        "--control-api needs a node token: --node-token-file, GANNET_NODE_TOKEN or --node-token",
                    )?,
                    state_dir: self.state_dir.clone(),
                    poll_wait: Duration::from_secs(30),
                    max_body: self.max_component_size,
                    trusted_cas: self
                        .control_api_ca
                        .as_deref()
                        .map(gannet_gateway::sync::trust::read_ca_file)
                        .transpose()?,
                    report_interval: Duration::from_secs(self.report_interval_secs.max(1)),
                }),
                _ => None,
            },
            cache_dir: self.cache_dir.clone(),
            engine: EngineConfig {
                pool,
                ..EngineConfig::default()
            },
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            cache_capacity: self.cache_memory,
            allow_private_outbound: self.allow_private_outbound,
            outbound_limits: self.outbound_limits()?,
            guest_log_lines_per_second: self.guest_log_lines_per_second,
            fairness: Fairness {
                guest_threads: self.guest_threads,
                guest_nice: self.guest_nice,
                reserve_percent: self.tenant_reserve_percent,
                memory_budget: self.memory_budget,
                busy_hold: Duration::from_millis(self.busy_hold_ms),
            },
            server: self.server.limits(),
            https: self.https()?,
            trusted_proxies: gannet_gateway::proxies::TrustedProxies::new(
                self.trusted_proxies.clone(),
            ),
            ..GatewayConfig::default()
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let config = args.resolve()?;
    if args.check {
        let gateway = Gateway::build(config).await?;
        let apps = gateway.state().routes.load().apps().len();
        eprintln!(
            "routes ok: {apps} apps, components compiled into {}",
            args.cache_dir.display()
        );
        return Ok(());
    }
    let listener =
        gannet_server::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let admin = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("binding admin {}", args.admin_listen))?;
    let public_addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let tls_listener = match args.tls_listen {
        Some(addr) => {
            Some(gannet_server::bind(addr).with_context(|| format!("binding TLS {addr}"))?)
        }
        None => None,
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let gateway = Arc::new(Gateway::build(config).await?);
    if let Some(l) = &tls_listener {
        eprintln!("listening on https://{}", l.local_addr()?);
    }
    eprintln!("listening on http://{public_addr}");
    eprintln!("admin listening on http://{admin_addr}");

    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gateway.clone().run(
        listener,
        tls_listener,
        admin,
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                if gateway.config().routes_path.is_some() {
                    tracing::info!("SIGHUP: reloading routes");
                    match gateway.reload().await {
                        Ok(s) => tracing::info!(apps = s.apps, "routes reloaded"),
                        Err(e) => tracing::error!(error = %e, "routes reload failed; keeping the current routes"),
                    }
                }
                if gateway.config().https.is_some() {
                    match gateway.reload_tls() {
                        Ok(info) => tracing::info!(names = ?info.names, not_after = info.not_after, "TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the current certificate"),
                    }
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    tokio::select! {
        result = serving => {
            result.context("server task")??;
        }
        _ = sigterm.recv() => anyhow::bail!("second signal: exiting without draining"),
        _ = sigint.recv() => anyhow::bail!("second signal: exiting without draining"),
    }
    tracing::info!("stopped");
    Ok(())
}
