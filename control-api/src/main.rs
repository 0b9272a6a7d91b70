//! `gannet-control-api`: parse arguments, build, print the bootstrap token
//! once, serve until SIGTERM/SIGINT.
//!
//!     gannet-control-api --listen 127.0.0.1:7070 --master-key-file master.key
//!                        [--database-url sqlite://./gannet.db | postgres://…] [--data-dir ./data]
//!                        [--tls-cert cert.pem --tls-key key.pem]
//!
//! A master key is required (`--master-key-file`, or the key itself in
//! `GANNET_MASTER_KEY`): it seals tenants' private keys in the database.
//!
//! With `--tls-cert`/`--tls-key` it serves HTTPS, and SIGHUP reloads the
//! pair (a pair that cannot be used is logged with its reason and the
//! current one keeps serving).
//!
//! With `--acme-directory URL` it obtains and renews certificates for
//! tenants' managed hostnames over ACME (HTTP-01, answered by the gateways);
//! `--acme-ca-cert` trusts a private ACME CA.

use anyhow::Context;
use clap::Parser;
use gannet_control_api::acme::AcmeConfig;
use gannet_control_api::compile::{CompileConfig, CompileIsolation};
use gannet_control_api::compile_worker::WorkerLimits;
use gannet_control_api::master_key::MasterKey;
use gannet_control_api::ownership::worker::OwnershipConfig;
use gannet_control_api::rollouts::RolloutSettings;
use gannet_control_api::{ApiConfig, AppState, serve, serve_tls};
use gannet_model::ByteSize;
use gannet_server::tls::{ReloadableCert, read_certified_key, server_config};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Gannet's control API: tenants, tokens, apps, uploads, versions, quotas.
#[derive(Parser, Debug)]
#[command(name = "gannet-control-api", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GANNET_API_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Database: sqlite://PATH (default: <data-dir>/gannet.db) or postgres://…
    #[arg(long, env = "GANNET_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory for local blobs and temporary uploads.
    #[arg(long, env = "GANNET_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Apps get `<app>-<tenant>.<platform-domain>`.
    #[arg(long, env = "GANNET_PLATFORM_DOMAIN", default_value = "localhost")]
    platform_domain: String,
    /// File holding the master key that seals tenants' private keys in the
    /// database: 64 hex characters or the base64 of 32 random bytes (e.g.
    /// `head -c 32 /dev/urandom | base64 > master.key`; keep it 0600 and
    /// backed up: without it stored certificates cannot be served). Or the
    /// key itself in GANNET_MASTER_KEY. Required.
    #[arg(long, env = "GANNET_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// An operator token to accept; without it one is created and printed once.
    #[arg(long, env = "GANNET_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// API requests per second per token (0: unlimited).
    #[arg(long, default_value_t = 50.0)]
    rate_limit: f64,
    /// Burst of API requests per token.
    #[arg(long, default_value_t = 200.0)]
    rate_burst: f64,
    /// API requests per tenant per --tenant-rate-window, across all its
    /// tokens and every replica (0: unlimited).
    #[arg(long, default_value_t = 1000)]
    tenant_rate_limit: u64,
    /// The per-tenant limit's window, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tenant_rate_window: u64,
    /// Uploads compiling at once (default: the number of CPUs).
    #[arg(long)]
    max_concurrent_compiles: Option<usize>,
    /// Uploads waiting for a compile slot at once; past that 503 (default: 4 × --max-concurrent-compiles).
    #[arg(long)]
    compile_queue: Option<usize>,
    /// Longest wait for a compile slot, seconds; past that 503.
    #[arg(long, default_value_t = 30)]
    compile_queue_wait: u64,
    /// Uploads of one tenant in progress at once; past that 429 (0: unbounded).
    #[arg(long, default_value_t = 2)]
    max_uploads_per_tenant: usize,
    /// Memory (heap) of one compile, e.g. 4GiB; past it the upload gets 422.
    #[arg(long, default_value = "4GiB")]
    compile_memory: ByteSize,
    /// CPU time of one compile, seconds; past it the upload gets 422.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    compile_cpu_secs: u64,
    /// Wall-clock time of one compile, seconds; past it the upload gets 422.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..))]
    compile_timeout_secs: u64,
    /// Compile in this process instead of a bounded child process (no time
    /// or memory bound; not for production).
    #[arg(long)]
    compile_in_process: bool,
    /// The listener's connection timeouts and caps.
    #[command(flatten)]
    server: gannet_server::ServerArgs,
    /// HTTPS: the certificate and key to serve, and the handshake limits.
    #[command(flatten)]
    tls: gannet_server::TlsArgs,
    /// Managed certificates: the ACME CA's directory URL (e.g.
    /// https://acme-v02.api.letsencrypt.org/directory, or its staging
    /// one). Without it, tenants upload their own certificates.
    #[arg(long, env = "GANNET_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// A contact for the ACME account (`mailto:ops@example.net`); repeat
    /// for several.
    #[arg(
        long = "acme-contact",
        env = "GANNET_ACME_CONTACT",
        value_delimiter = ','
    )]
    acme_contact: Vec<String>,
    /// Trust only the CA certificates in this PEM file for the ACME server
    /// (a private CA); the web's public roots otherwise.
    #[arg(long, env = "GANNET_ACME_CA_CERT")]
    acme_ca_cert: Option<PathBuf>,
    /// Renew managed certificates this many days before they expire (a
    /// third of the lifetime for shorter-lived ones).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=365))]
    acme_renew_before_days: u64,
    /// The DNS server that hostname ownership checks (TXT records, and the
    /// address of the HTTP check) ask; the system's when unset.
    #[arg(long, env = "GANNET_VERIFY_DNS_SERVER")]
    verify_dns_server: Option<std::net::SocketAddr>,
    /// The port the HTTP ownership check fetches the token on (the
    /// gateways' public plain-HTTP port).
    #[arg(long, default_value_t = 80)]
    verify_http_port: u16,
    /// Let the HTTP ownership check connect to private and loopback
    /// addresses (a private network or a test setup only).
    #[arg(long)]
    verify_allow_private_addresses: bool,
    /// Seconds between two analysis windows of a rollout (gateways push
    /// their counters this often).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    analysis_interval_secs: u64,
    /// Seconds the scheduler's leader lease lasts unrenewed: another
    /// replica takes a dead leader's rollouts over after it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    scheduler_lease_secs: u64,
    /// The steps of a canary deploy that names none, separated by `;`,
    /// each `[pops=<key>:<value>,…] <n>%` (the last `100%`).
    #[arg(long, default_value = gannet_scheduler::rollout::DEFAULT_STEPS)]
    rollout_steps: String,
    /// The bake time of each step of a canary deploy that names none,
    /// seconds.
    #[arg(long, default_value_t = 60)]
    rollout_bake_secs: u64,
    /// Requests a step's analysis needs from the canary (and from the
    /// stable version) before it can pass or fail it: fewer is
    /// inconclusive, and the step waits (then pauses) rather than promote.
    #[arg(long, default_value_t = 100)]
    rollout_min_requests: u64,
}

fn main() -> std::process::ExitCode {
    // A compile worker (this binary started by itself) runs and exits here,
    // before any runtime or thread starts.
    gannet_control_api::compile_worker::dispatch();
    serve_main()
}

#[tokio::main]
async fn serve_main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()).await {
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

async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything is created or listens.
    let master_key = master_key(args.master_key_file.as_deref())?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("gannet.db").display()));
    let config = ApiConfig {
        database_url,
        data_dir: args.data_dir.clone(),
        platform_domain: args.platform_domain.clone(),
        operator_token: args.operator_token.clone(),
        rate_limit_per_sec: args.rate_limit,
        rate_limit_burst: args.rate_burst,
        tenant_rate_limit: args.tenant_rate_limit,
        tenant_rate_window: Duration::from_secs(args.tenant_rate_window),
        compile: compile_config(&args)?,
        faults: gannet_control_api::fault::Faults::from_env().map_err(anyhow::Error::msg)?,
        server: args.server.limits(),
        master_key: Some(master_key),
        acme: acme_config(&args)?,
        ownership: ownership_config(&args),
        rollouts: rollout_settings(&args)?,
        ..ApiConfig::default()
    };
    // A certificate that cannot be served stops the start, before anything
    // listens.
    let tls = match args.tls.files() {
        Some((cert, key)) => {
            let certified = read_certified_key(cert, key).with_context(|| {
                format!(
                    "loading the TLS certificate {} and key {}",
                    cert.display(),
                    key.display()
                )
            })?;
            let resolver = ReloadableCert::new(certified);
            let tls_config = server_config(resolver.clone()).context("configuring TLS")?;
            // Before the listening line: a SIGHUP from then on reloads.
            reload_on_sighup(resolver.clone(), cert, key)?;
            Some((resolver, args.tls.settings(tls_config)))
        }
        None => None,
    };
    let listener =
        gannet_server::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let built = AppState::build(config)
        .await
        .context("starting the control API")?;
    if let Some(token) = &built.bootstrap_token {
        eprintln!("operator token (shown once; keep it): {token}");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("listening on {scheme}://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let signalled = shutdown.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        signalled.cancel();
    });
    match tls {
        Some((_, settings)) => serve_tls(listener, settings, built.state, shutdown).await?,
        None => serve(listener, built.state, shutdown).await?,
    }
    Ok(())
}

/// How rollouts run, with the default policy checked (a policy that
/// cannot be used stops the start, saying what to fix).
fn rollout_settings(args: &Args) -> anyhow::Result<RolloutSettings> {
    let settings = RolloutSettings {
        analysis_interval: Duration::from_secs(args.analysis_interval_secs),
        lease_ttl: Duration::from_secs(args.scheduler_lease_secs),
        default_steps: args.rollout_steps.clone(),
        default_bake: Duration::from_secs(args.rollout_bake_secs),
        gates: gannet_scheduler::analysis::Gates {
            min_requests: args.rollout_min_requests.max(1),
            ..Default::default()
        },
        ..RolloutSettings::default()
    };
    settings.policy(None, None).with_context(|| {
        format!(
            "--rollout-steps `{}` with --rollout-bake-secs {}",
            args.rollout_steps, args.rollout_bake_secs
        )
    })?;
    Ok(settings)
}

/// How custom hostnames' ownership is checked.
fn ownership_config(args: &Args) -> OwnershipConfig {
    let mut config = OwnershipConfig::default();
    config.check.dns_server = args.verify_dns_server;
    config.check.http_port = args.verify_http_port;
    config.check.allow_private_addresses = args.verify_allow_private_addresses;
    config
}

/// The ACME settings, when `--acme-directory` is given.
fn acme_config(args: &Args) -> anyhow::Result<Option<AcmeConfig>> {
    let Some(directory) = &args.acme_directory else {
        return Ok(None);
    };
    if !directory.starts_with("https://") {
        anyhow::bail!("--acme-directory must be an https:// URL, not `{directory}`");
    }
    let mut config = AcmeConfig::new(directory.clone());
    config.contact = args.acme_contact.clone();
    config.ca_file = args.acme_ca_cert.clone();
    config.renew_before = Duration::from_secs(args.acme_renew_before_days * 24 * 3600);
    Ok(Some(config))
}

/// The master key: from `--master-key-file` (which wins), else from
/// `GANNET_MASTER_KEY`; neither is an error that says how to make one.
fn master_key(file: Option<&Path>) -> anyhow::Result<MasterKey> {
    if let Some(path) = file {
        return MasterKey::from_file(path)
            .with_context(|| format!("loading the master key from {}", path.display()));
    }
    match std::env::var("GANNET_MASTER_KEY") {
        Ok(value) => MasterKey::parse(&value).context("reading GANNET_MASTER_KEY"),
        Err(std::env::VarError::NotPresent) => anyhow::bail!(
            "a master key is required: --master-key-file or GANNET_MASTER_KEY (e.g. `head -c 32 /dev/urandom | base64 > master.key`)"
        ),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!(
            "GANNET_MASTER_KEY is not text: give 64 hex characters or the base64 of 32 random bytes"
        ),
    }
}

/// Re-reads the certificate and key on every SIGHUP: a pair that loads
/// serves from the next handshake on; one that does not is logged with its
/// reason and the current pair keeps serving.
fn reload_on_sighup(resolver: Arc<ReloadableCert>, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (cert, key) = (cert.to_owned(), key.to_owned());
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let (c, k) = (cert.clone(), key.clone());
            let loaded = tokio::task::spawn_blocking(move || read_certified_key(&c, &k)).await;
            match loaded {
                Ok(Ok(certified)) => {
                    resolver.replace(certified);
                    tracing::info!(cert = %cert.display(), "SIGHUP: TLS certificate reloaded");
                }
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    cert = %cert.display(),
                    key = %key.display(),
                    "SIGHUP: TLS certificate reload failed; keeping the current certificate"
                ),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate reload failed"),
            }
        }
    });
    Ok(())
}

/// The compile settings from the flags: a bounded child process of this
/// executable unless --compile-in-process.
fn compile_config(args: &Args) -> anyhow::Result<CompileConfig> {
    let defaults = CompileConfig::default();
    let isolation = if args.compile_in_process {
        CompileIsolation::InProcess
    } else {
        let exe =
            std::env::current_exe().context("finding this executable (the compile worker)")?;
        CompileIsolation::ChildProcess(WorkerLimits {
            memory_bytes: args.compile_memory.bytes(),
            cpu: Duration::from_secs(args.compile_cpu_secs),
            wall: Duration::from_secs(args.compile_timeout_secs),
            ..WorkerLimits::new(exe)
        })
    };
    let max_concurrent = args
        .max_concurrent_compiles
        .unwrap_or(defaults.max_concurrent)
        .max(1);
    Ok(CompileConfig {
        isolation,
        max_concurrent,
        max_queued: args.compile_queue.unwrap_or(4 * max_concurrent),
        queue_wait: Duration::from_secs(args.compile_queue_wait),
        per_tenant: args.max_uploads_per_tenant,
    })
}
