//! `gannet-control-api`: parse arguments, build, print the bootstrap token
//! once, serve until SIGTERM/SIGINT.
//!
//!     gannet-control-api --listen 127.0.0.1:7070 [--database-url sqlite://./gannet.db | postgres://…] [--data-dir ./data]

use anyhow::Context;
use clap::Parser;
use gannet_control_api::{ApiConfig, AppState, serve};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// An operator token to accept; without it one is created and printed once.
    #[arg(long, env = "GANNET_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// API requests per second per token (0: unlimited).
    #[arg(long, default_value_t = 50.0)]
    rate_limit: f64,
    /// Burst of API requests per token.
    #[arg(long, default_value_t = 200.0)]
    rate_burst: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
        faults: gannet_control_api::fault::Faults::from_env().map_err(anyhow::Error::msg)?,
        ..ApiConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let built = AppState::build(config)
        .await
        .context("starting the control API")?;
    if let Some(token) = &built.bootstrap_token {
        eprintln!("operator token (shown once; keep it): {token}");
    }
    eprintln!("listening on http://{}", listener.local_addr()?);
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
    serve(listener, built.state, shutdown).await?;
    Ok(())
}
