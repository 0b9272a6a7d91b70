//! gannet-control-api: the REST API (`/v1`) that holds tenants, tokens,
//! apps, hostnames, component uploads, versions, quotas and the audit log.
//!
//! - [`store`]: every query, over SQLite or Postgres (one `AnyPool`);
//! - [`blob`]: component bytes, in a local directory or in the database;
//! - [`upload`]: the streaming upload pipeline (quota → sha256 → validate →
//!   blob → version);
//! - [`compile`]: validating uploads under bounds — admission
//!   ([`compile_gate`]) and a child process per compile ([`compile_worker`]);
//! - [`auth`]: tokens, the `TenantAuth`/`AdminAuth` extractors and the rate
//!   limits (per token in memory, per tenant in the database);
//! - [`error`]: `ApiError` → `application/problem+json`;
//! - [`certificate`]: the checks a tenant's own certificate passes;
//! - [`master_key`]: the operator's key that seals private keys at rest;
//! - [`acme`]: managed certificates (the ACME worker and its rows);
//! - [`platform_tls`]: the platform certificate and PoPs' ticket keys;
//! - [`ownership`]: proofs that a tenant controls a custom hostname;
//! - [`rollouts`]: progressive rollouts, driven by the scheduler's leader
//!   (one replica at a time, under a lease);
//! - [`routes`]: one module per resource, each exposing `router()`.
//!
//! It never runs guests; it only validates them with the runtime crate.

pub mod acme;
pub mod app_settings;
pub mod auth;
pub mod blob;
pub mod certificate;
pub mod compile;
pub mod compile_gate;
pub mod compile_worker;
pub mod config;
pub mod desired_state;
pub mod error;
pub mod extract;
pub mod fault;
pub mod master_key;
pub mod metrics;
pub mod openapi;
pub mod ownership;
pub mod placement;
pub mod platform_tls;
pub mod rollouts;
pub mod routes;
pub mod store;
pub mod testing;
pub mod upload;

pub use config::ApiConfig;

use crate::auth::RateLimiter;
use crate::blob::{BlobStore, DbBlobs, LocalBlobs};
use crate::store::{Dialect, Store};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Component bytes.
    pub blobs: Arc<dyn BlobStore>,
    /// Validates uploads with the platform's engine and linker, bounded
    /// (see [`compile`]).
    pub compiler: Arc<compile::Compiler>,
    /// Settings.
    pub config: Arc<ApiConfig>,
    /// Per-token rate limit.
    pub limiter: Arc<RateLimiter>,
    /// Wakes gateways' long-polls when the desired state changes.
    pub notifier: desired_state::Notifier,
    /// Cancelled when the server stops (ends long-polls).
    pub shutdown: CancellationToken,
    /// Wakes the ACME worker (a managed hostname was added or asked to
    /// renew).
    pub acme_wake: Arc<tokio::sync::Notify>,
    /// Whether this process's ACME worker was started.
    pub acme_started: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this process's ticket-key rotation was started.
    pub platform_tls_started: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the ownership checks (a hostname was added).
    pub ownership_wake: Arc<tokio::sync::Notify>,
    /// Whether this process's ownership checks were started.
    pub ownership_started: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this process's rollout leader loop was started.
    pub rollouts_started: Arc<std::sync::atomic::AtomicBool>,
    /// What the background work did (`GET /metrics`).
    pub metrics: Arc<metrics::ApiMetrics>,
}

/// What [`AppState::build`] also reports: a bootstrap operator token, when
/// one was created (it is shown once).
pub struct Built {
    /// The state.
    pub state: AppState,
    /// A newly created operator token, to print once.
    pub bootstrap_token: Option<String>,
}

impl AppState {
    /// Connects and migrates the database, checks the master key opens the
    /// stored private keys (refusing to start if it opens none of them),
    /// opens the blob store, sets up the compiler (probing its worker
    /// executable, or building the in-process validation runtime), and
    /// makes sure an operator token exists (taking `config.operator_token`
    /// or creating one).
    pub async fn build(config: ApiConfig) -> anyhow::Result<Built> {
        let store = Store::connect(&config.database_url)
            .await?
            .with_faults(config.faults.clone())
            .with_master_key(config.master_key.clone());
        check_master_key(&store).await?;
        let blobs: Arc<dyn BlobStore> = match store.dialect() {
            Dialect::Postgres => Arc::new(DbBlobs::new(store.pool().clone())),
            Dialect::Sqlite => Arc::new(LocalBlobs::open(&config.data_dir.join("blobs"))?),
        };
        std::fs::create_dir_all(config.data_dir.join("tmp"))?;
        let compiler = compile::Compiler::new(&config.compile, &config.data_dir).await?;
        let mut bootstrap_token = None;
        match &config.operator_token {
            Some(token) => {
                let hash = auth::hash_token(token);
                if store.find_token(&hash).await?.is_none() {
                    store
                        .insert_token(None, "operator", &hash, "GANNET_OPERATOR_TOKEN")
                        .await?;
                }
            }
            None if !store.has_operator_token().await? => {
                let token = auth::new_token();
                store
                    .insert_token(None, "operator", &auth::hash_token(&token), "bootstrap")
                    .await?;
                bootstrap_token = Some(token);
            }
            None => {}
        }
        let limiter = Arc::new(RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
        ));
        let notifier = desired_state::Notifier::new(store.revision().await?);
        if store.dialect() == Dialect::Postgres {
            desired_state::listen_postgres(
                config.database_url.clone(),
                store.clone(),
                notifier.clone(),
            );
        }
        Ok(Built {
            state: AppState {
                store,
                blobs,
                compiler: Arc::new(compiler),
                config: Arc::new(config),
                limiter,
                notifier,
                shutdown: CancellationToken::new(),
                acme_wake: Arc::new(tokio::sync::Notify::new()),
                acme_started: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                platform_tls_started: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                ownership_wake: Arc::new(tokio::sync::Notify::new()),
                ownership_started: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                rollouts_started: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                metrics: Arc::new(metrics::ApiMetrics::new()?),
            },
            bootstrap_token,
        })
    }
}

/// Refuses a master key that opens none of the stored private keys (the
/// wrong key: gateways would lose every tenant's certificate); logs the
/// hostnames of keys it does not open, and warns when there is no key.
async fn check_master_key(store: &Store) -> anyhow::Result<()> {
    let check = store.check_certificate_keys().await?;
    if store.master_key().is_none() {
        tracing::warn!(
            stored_certificates = check.failed.len(),
            "no master key: tenants cannot upload certificates, and stored ones are not sent to gateways"
        );
        return Ok(());
    }
    if check.opened == 0 && !check.failed.is_empty() {
        anyhow::bail!(
            "the master key opens none of the {} stored certificate keys (the first is {}'s): start with the master key they were stored with",
            check.failed.len(),
            check.failed[0]
        );
    }
    for hostname in &check.failed {
        tracing::error!(
            %hostname,
            "the master key does not open this hostname's stored certificate key; its certificate is left out until it is uploaded again"
        );
    }
    Ok(())
}

/// The whole API as a router (tests call it without a socket).
pub fn app(state: AppState) -> Router {
    let timeout = state.config.request_timeout;
    Router::new()
        .merge(routes::admin::router())
        .merge(routes::account::router())
        .merge(routes::apps::router())
        .merge(routes::versions::router())
        .merge(routes::pops::router())
        .merge(routes::rollouts::router())
        .merge(routes::settings::router())
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(s): axum::extract::State<AppState>,
                 _auth: auth::AdminAuth| async move {
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        s.metrics.render(),
                    )
                },
            ),
        )
        .route(
            "/v1/openapi.json",
            axum::routing::get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    openapi::json(),
                )
            }),
        )
        // JSON bodies are small; uploads stream and enforce their own limit.
        .layer(DefaultBodyLimit::max(64 * 1024))
        // Bounds every request, including a slow upload and its validation.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // JSON lists (versions, audit) shrink well; clients opt in.
        .layer(tower_http::compression::CompressionLayer::new())
        // Logs each request inside a span that carries its request id.
        .layer(TraceLayer::new_for_http())
        // Outermost: give every request an id and echo it in the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// `GET /readyz`: 200 `ready` when the database answers and has every
/// migration this binary knows applied; otherwise 503 saying why (a load
/// balancer keeps traffic away from this replica meanwhile).
async fn readyz(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> (http::StatusCode, String) {
    match s.store.readiness().await {
        Ok(()) => (http::StatusCode::OK, "ready\n".into()),
        Err(why) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Serves `app(state)` on `listener` with gannet-server's accept loop,
/// within `state.config.server`'s connection limits, until `shutdown`
/// fires; then ends the gateways' long-polls and drains. Accept errors are
/// retried, never returned.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_on(listener, None, state, shutdown).await
}

/// [`serve`] over TLS (HTTPS): every connection completes a handshake
/// within `tls`'s timeout first (see [`gannet_server::serve_tls`]). The
/// certificate is whatever `tls.config`'s resolver gives; a
/// [`gannet_server::tls::ReloadableCert`] can be replaced while serving.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: gannet_server::TlsSettings,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_on(listener, Some(tls), state, shutdown).await
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    tls: Option<gannet_server::TlsSettings>,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let polls = state.shutdown.clone();
    let limits = state.config.server.clone();
    acme::spawn(state.clone(), shutdown.clone());
    platform_tls::spawn(state.clone(), shutdown.clone());
    ownership::worker::spawn(state.clone(), shutdown.clone());
    rollouts::spawn(state.clone(), shutdown.clone());
    let service = hyper_util::service::TowerToHyperService::new(app(state));
    let end_polls = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            polls.cancel();
        }
    };
    let stats = gannet_server::ServerStats::new();
    let serving = async move {
        match tls {
            None => gannet_server::serve(listener, service, limits, stats, shutdown).await,
            Some(tls) => {
                gannet_server::serve_tls(listener, tls, service, limits, stats, shutdown).await
            }
        }
    };
    tokio::join!(serving, end_polls);
    Ok(())
}

/// Default request timeout (uploads of large components compile here).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
