//! gannet-gateway: the front door. Accepts HTTP/1.1 and HTTP/2 (h2c), routes
//! by host to an app, and runs the app's component per request from a
//! precompiled, pooled cache, inside the app's limits.
//!
//! Where things are:
//! - [`invoke`]: the hot path, one request end to end;
//! - [`router`]: the lock-free routing table; [`cache`]: the memory cache;
//! - [`body`]: streaming request/response bodies with their limits;
//! - [`error`]: the one place platform responses (404, 413, 503…) are made;
//! - [`server`]: accept loop and graceful drain; [`admin`]: metrics, probes;
//! - [`routes_file`]: the routes file and its validation;
//! - [`challenges`]: ACME HTTP-01 answers, by host and token, apart from routing.
//!
//! It must not touch a database or the control plane on the hot path.

pub mod admin;
pub mod body;
pub mod cache;
pub mod challenges;
pub mod config;
pub mod error;
pub mod guests;
pub mod invoke;
pub mod metrics;
pub mod proxies;
pub mod router;
pub mod routes_file;
pub mod server;
pub mod sync;
pub mod tls;

pub use config::{ControlPlane, DEFAULT_REPORT_INTERVAL, Fairness, GatewayConfig, Https};

use crate::admin::Readiness;
use crate::cache::{ComponentCache, PrepareError};
use crate::challenges::Challenges;
use crate::guests::GuestRuntime;
use crate::invoke::State;
use crate::metrics::{AppMetrics, Metrics};
use crate::router::{App, RouteTable};
use crate::routes_file::{AppSpec, LimitBounds, RoutesError};
use crate::tls::{CertStore, HostCertError};
use arc_swap::ArcSwap;
use gannet_model::Sha256Digest;
use gannet_model::snapshot::PlatformTls;
use gannet_runtime::fair::{ShareConfig, Shares};
use gannet_runtime::guest_log::GuestLog;
use gannet_runtime::outbound::OutboundPolicy;
use gannet_runtime::{InstanceSettings, Runtime, RuntimeConfig, RuntimeError};
use gannet_server::tickets::{SharedTicketer, TicketKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The runtime could not be built.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The routes file is unusable.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// An app's component could not be read, compiled or linked.
    #[error("app `{app}`: {source}")]
    Prepare {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: PrepareError,
    },
    /// An app's component file could not be read.
    #[error("app `{app}`: reading {path}: {source}")]
    Component {
        /// The app.
        app: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An app's own certificate cannot be served.
    #[error("app `{app}`: {source}")]
    Certificate {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: HostCertError,
    },
    /// The TLS certificate or its settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Some I/O failed (binding, threads).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a (re)load applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSummary {
    /// Apps in the new table.
    pub apps: usize,
    /// Distinct components in it.
    pub components: usize,
}

/// A gateway: its state, and the routes file it follows.
pub struct Gateway {
    config: GatewayConfig,
    state: Arc<State>,
    readiness: Arc<Readiness>,
    /// The certificates the TLS listener serves.
    certs: Arc<CertStore>,
    /// The ACME HTTP-01 challenges both listeners answer.
    challenges: Arc<Challenges>,
    /// Session tickets: with keys from the control API, shared by the
    /// PoP's gateways; without, this process's own.
    tickets: Arc<SharedTicketer>,
    /// The control API's TLS settings in service (applied only when they
    /// change: a platform certificate is parsed once).
    platform_tls: std::sync::Mutex<Option<PlatformTls>>,
    /// Serializes reloads; holds the digest memo (path → mtime, size, digest).
    reload: Mutex<HashMap<PathBuf, (SystemTime, u64, Sha256Digest)>>,
}

impl Gateway {
    /// Builds the runtime, loads the routes file and warms every component
    /// (from the disk cache, or by compiling). Fails on any invalid route.
    pub async fn build(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let runtime_config = RuntimeConfig {
            engine: config.engine.clone(),
            cache_dir: config.cache_dir.clone(),
        };
        let runtime = tokio::task::spawn_blocking(move || Runtime::new(runtime_config))
            .await
            .map_err(|e| GatewayError::Io(std::io::Error::other(e)))??;
        let runtime = Arc::new(runtime);
        tracing::info!(allocator = ?runtime.allocator(), "engine ready");
        let metrics = Arc::new(Metrics::new()?);
        let guests = GuestRuntime::start(config.fairness.threads(), config.fairness.guest_nice)?;
        let shares = Arc::new(Shares::new(&ShareConfig {
            cpu_turns: guests.threads(),
            quantum: gannet_runtime::limits::EPOCH_TICK,
            instances: u32::try_from(config.max_instances()).unwrap_or(u32::MAX),
            pool: config.pool_footprint(),
            reserve_percent: config.fairness.reserve_percent,
            memory_budget: config.fairness.memory_budget(),
        }));
        metrics::MemoryBudgetGauges::register(&metrics, shares.memory.clone())?;
        tracing::info!(
            guest_threads = guests.threads(),
            memory_budget = shares.memory.limit(),
            reserve_percent = config.fairness.reserve_percent,
            "fair sharing ready"
        );
        let state = Arc::new(State {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            cache: ComponentCache::new(
                runtime.clone(),
                metrics.clone(),
                config.cache_capacity.bytes(),
            ),
            runtime,
            metrics,
            shares,
            guests,
            busy_hold: config.fairness.busy_hold,
            proxies: config.trusted_proxies.clone(),
        });
        let certs = CertStore::new(state.metrics.clone());
        if let Some(https) = &config.https {
            let info = certs.load_platform(&https.platform).map_err(|e| {
                GatewayError::Tls(format!("{}: {e}", https.platform.cert.display()))
            })?;
            tracing::info!(names = ?info.names, not_after = info.not_after, "platform certificate loaded");
        }
        let gateway = Gateway {
            config,
            state,
            certs,
            challenges: Arc::new(Challenges::new()),
            tickets: SharedTicketer::new().map_err(|e| GatewayError::Tls(e.to_string()))?,
            platform_tls: std::sync::Mutex::new(None),
            readiness: Arc::new(Readiness::default()),
            reload: Mutex::new(HashMap::new()),
        };
        if gateway.config.routes_path.is_some() {
            gateway.reload().await?;
            gateway.readiness.set_ready();
        } else if let Some(cp) = &gateway.config.control {
            // Serve the last applied state at once, without the network.
            if sync::boot_from_disk(&gateway, cp).await? {
                gateway.readiness.set_ready();
            }
        }
        Ok(gateway)
    }

    /// Re-reads the routes file, warms every component it names, then swaps
    /// the routing table in one step. On any error the current table keeps
    /// serving and the error is returned.
    pub async fn reload(&self) -> Result<LoadSummary, GatewayError> {
        let result = self.try_reload().await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.state.metrics.reloads.with_label_values(&[label]).inc();
        result
    }

    async fn try_reload(&self) -> Result<LoadSummary, GatewayError> {
        let Some(path) = self.config.routes_path.clone() else {
            return Err(GatewayError::Io(std::io::Error::other(
                "this gateway follows the control API; it has no routes file to reload",
            )));
        };
        let mut memo = self.reload.lock().await;
        let bounds = LimitBounds {
            max_memory: self.config.max_app_memory(),
        };
        let memo_snapshot = memo.clone();
        let (specs, digests) = tokio::task::spawn_blocking(move || {
            let mut specs = routes_file::load(&path, bounds)?;
            let digests = digest_components(&specs, &memo_snapshot)?;
            for spec in &mut specs {
                if let Some(canary) = &mut spec.canary {
                    let bytes = std::fs::read(&canary.component).map_err(|source| {
                        GatewayError::Component {
                            app: spec.id.to_string(),
                            path: canary.component.clone(),
                            source,
                        }
                    })?;
                    canary.digest = Some(Sha256Digest::of(&bytes));
                }
            }
            Ok::<_, GatewayError>((specs, digests))
        })
        .await
        .map_err(|e| GatewayError::Io(std::io::Error::other(e)))??;
        let summary = self
            .apply(
                specs
                    .iter()
                    .cloned()
                    .zip(digests.iter().map(|d| d.2))
                    .collect(),
            )
            .await?;
        for (spec, entry) in specs.iter().zip(digests) {
            memo.insert(spec.component.clone(), entry);
        }
        Ok(summary)
    }

    /// Re-reads the platform certificate files and serves the new pair from
    /// the next handshake on; on any error the pair in service stays.
    pub fn reload_tls(&self) -> Result<gannet_server::tls::CertInfo, GatewayError> {
        let Some(https) = &self.config.https else {
            return Err(GatewayError::Tls("this gateway has no TLS listener".into()));
        };
        self.certs
            .load_platform(&https.platform)
            .map_err(|e| GatewayError::Tls(format!("{}: {e}", https.platform.cert.display())))
    }

    /// The certificates the TLS listener serves.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// The session-ticket keys in service.
    pub fn tickets(&self) -> &Arc<SharedTicketer> {
        &self.tickets
    }

    /// Serves the control API's TLS settings (`None`: the gateway's own):
    /// its platform certificate in place of the `--tls-cert` files', and
    /// its ticket keys in place of this process's. A platform certificate
    /// that cannot be served is logged and the one in service stays; a
    /// ticket key that does not parse is left out.
    pub fn apply_platform_tls(&self, tls: Option<&PlatformTls>) {
        let mut applied = self
            .platform_tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if applied.as_ref() == tls {
            return;
        }
        let old_certificate = applied.as_ref().and_then(|t| t.certificate.as_ref());
        let certificate = tls.and_then(|t| t.certificate.as_ref());
        if old_certificate != certificate {
            match certificate {
                None => self.certs.set_control_platform(None),
                Some(pair) => {
                    match tls::ServedCert::from_pem(
                        pair.cert_pem.as_bytes(),
                        pair.key_pem.as_bytes(),
                    ) {
                        Ok(cert) => {
                            tracing::info!(names = ?cert.info.names, not_after = cert.info.not_after, "serving the control API's platform certificate");
                            self.certs.set_control_platform(Some(cert));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the control API's platform certificate cannot be served; keeping the one in service")
                        }
                    }
                }
            }
        }
        let keys = tls
            .map(|t| {
                t.ticket_keys
                    .iter()
                    .filter_map(|k| match TicketKey::from_wire(&k.id, &k.secret, k.not_after_ms) {
                        Ok(key) => Some(key),
                        Err(e) => {
                            tracing::error!(id = %k.id, error = %e, "a ticket key from the control API does not parse; left out");
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.tickets.set_keys(keys);
        *applied = tls.cloned();
    }

    /// The ACME HTTP-01 challenges both listeners answer (replaced whole
    /// when a revision from the control API is applied; a routes-file
    /// gateway has none).
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// Loads (from the disk cache) or compiles `spec`'s component and keeps
    /// it warm in memory, ready to be installed. A component refused before
    /// for a reason that does not change is not compiled again.
    pub async fn prepare(&self, spec: &AppSpec, digest: Sha256Digest) -> Result<(), PrepareError> {
        self.state
            .cache
            .get(digest, &spec.component)
            .await
            .map(drop)
    }

    /// Checks every app's certificates and warms every component of
    /// `apps`, then installs them in one step: all or nothing (a routes
    /// file is the operator's, and is taken whole). On any error the table
    /// in service stays.
    pub async fn apply(
        &self,
        apps: Vec<(AppSpec, Sha256Digest)>,
    ) -> Result<LoadSummary, GatewayError> {
        for (spec, _) in &apps {
            self.certs
                .check_app(&spec.hosts, &spec.certificates, &[])
                .map_err(|source| GatewayError::Certificate {
                    app: spec.id.to_string(),
                    source,
                })?;
        }
        let canaries: Vec<(AppSpec, Sha256Digest)> = apps
            .iter()
            .filter_map(|(spec, _)| spec.canary_as_spec())
            .collect();
        let mut distinct = HashMap::new();
        for (spec, digest) in apps.iter().chain(&canaries) {
            distinct.entry(*digest).or_insert(spec);
        }
        for (digest, spec) in distinct {
            self.prepare(spec, digest)
                .await
                .map_err(|source| GatewayError::Prepare {
                    app: spec.id.to_string(),
                    source,
                })?;
        }
        Ok(self.install(apps))
    }

    /// Swaps in the routing table made of `apps`, whose components were
    /// prepared (and certificates checked), and with it the tenants'
    /// certificates those apps bring: certificates first, so that a
    /// hostname never routes without its certificate. Requests and
    /// connections already running keep the table and certificate they
    /// have; the metric series of versions (and apps) no longer served are
    /// removed.
    pub fn install(&self, apps: Vec<(AppSpec, Sha256Digest)>) -> LoadSummary {
        let certificates = self.certs.serve_tenants(
            apps.iter().flat_map(|(spec, _)| {
                spec.certificates
                    .iter()
                    .map(move |cert| (spec.id.as_str(), cert))
            }),
            apps.iter().flat_map(|(spec, _)| {
                spec.hosts
                    .iter()
                    .map(move |host| (spec.id.as_str(), host.as_str()))
            }),
        );
        let old = self.state.routes.load_full();
        let mut components: std::collections::HashSet<Sha256Digest> =
            apps.iter().map(|(_, d)| *d).collect();
        let mut entries = Vec::with_capacity(apps.len());
        for (spec, digest) in apps {
            let stable = Arc::new(self.build_app(&spec, digest, &old, true));
            let canary = match (&spec.canary, spec.canary_as_spec()) {
                (Some(c), Some((canary_spec, canary_digest))) => {
                    components.insert(canary_digest);
                    Some(router::Canary {
                        app: Arc::new(self.build_app(&canary_spec, canary_digest, &old, false)),
                        weight: c.weight,
                    })
                }
                _ => None,
            };
            let deployment = router::Deployment {
                stable,
                canary,
                affinity: router::AffinityKey::from(&spec.affinity),
            };
            entries.push((Arc::new(deployment), spec.hosts));
        }
        let summary = LoadSummary {
            apps: entries.len(),
            components: components.len(),
        };
        let table = RouteTable::new(entries);
        for gone in old.apps() {
            if table.version(&gone.id, &gone.version).is_some() {
                continue;
            }
            let app_gone = table.app(&gone.id).is_none();
            self.state.metrics.forget_version(&gone.metrics, app_gone);
        }
        self.state.routes.store(Arc::new(table));
        self.state.metrics.apps.set(summary.apps as i64);
        tracing::info!(
            apps = summary.apps,
            components = summary.components,
            certificates,
            "routing table applied"
        );
        summary
    }

    /// Prepares one version of an app for the table, keeping what the
    /// same version had in `old` (its log sink and counts; its concurrency
    /// permits when its limit is unchanged, falling back to the app's
    /// stable version's for a `stable` one, so a promoted canary or a new
    /// version keeps counting the requests still running).
    fn build_app(
        &self,
        spec: &AppSpec,
        digest: Sha256Digest,
        old: &RouteTable,
        stable: bool,
    ) -> App {
        // Versions from the control API are known by their number (a new
        // version that changes only env or limits is told apart); a routes
        // file's apps by their component's digest.
        let version = match &spec.report {
            Some((_, number)) => number.to_string(),
            None => digest.short(),
        };
        let same_version = old.version(&spec.id, &version);
        let previous = same_version.or_else(|| if stable { old.app(&spec.id) } else { None });
        let limits = spec.limits.resolve(&self.config.defaults);
        // Keep the concurrency permits and the log sink of an unchanged app,
        // so requests running across a reload still count against its limit.
        let inflight = match previous {
            Some(p) if p.limits().max_inflight == limits.max_inflight => p.inflight.clone(),
            _ => Arc::new(Semaphore::new(limits.max_inflight as usize)),
        };
        let log = match previous {
            Some(p) if p.version == version => p.settings.log.clone(),
            _ => Arc::new(GuestLog::new(
                spec.tenant.clone(),
                spec.id.to_string(),
                version.clone(),
                self.config.guest_log_lines_per_second,
            )),
        };
        let counts = match previous {
            Some(p) if p.version == version => p.metrics.counts.clone(),
            _ => Arc::default(),
        };
        let share = self.state.shares.app(&spec.tenant);
        let env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        App {
            metrics: AppMetrics::new(&self.state.metrics, spec.id.as_str(), &version, counts),
            id: spec.id.clone(),
            version,
            digest,
            component_path: spec.component.clone(),
            settings: InstanceSettings {
                env: env.into(),
                limits,
                log,
                outbound: Arc::new(OutboundPolicy {
                    allowed_hosts: spec.outbound.clone(),
                    allow_private_ips: self.config.allow_private_outbound,
                    limits: self.config.outbound_limits,
                }),
                memory_account: Some(share.memory.clone()),
            },
            inflight,
            report: spec.report.clone(),
            share,
        }
    }

    /// Serves the public listener (and the TLS one, when given) and the
    /// admin listener until `shutdown` fires, then drains (up to the
    /// configured timeout) and returns.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls_listener: Option<tokio::net::TcpListener>,
        admin: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), GatewayError> {
        // Where the public listeners are bound, for the control API.
        let mut listen = vec![listener.local_addr()?.to_string()];
        if let Some(l) = &tls_listener {
            listen.push(l.local_addr()?.to_string());
        }
        let tls = match (&self.config.https, tls_listener) {
            (Some(https), Some(l)) => {
                let config = gannet_server::tls::server_config_with_tickets(
                    self.certs.clone(),
                    self.tickets.clone(),
                )
                .map_err(|e| GatewayError::Tls(e.to_string()))?;
                let settings = gannet_server::TlsSettings {
                    config,
                    handshake_timeout: https.handshake_timeout,
                    max_handshakes: https.max_handshakes,
                };
                let port = match https.public_port {
                    Some(p) => p,
                    None => l.local_addr()?.port(),
                };
                Some((l, settings, https.redirect_http.then_some(port)))
            }
            (None, None) => None,
            _ => {
                return Err(GatewayError::Tls(
                    "a TLS listener needs the HTTPS settings, and they need a listener".into(),
                ));
            }
        };
        let admin_thread = admin::spawn(
            admin,
            self.state.clone(),
            self.readiness.clone(),
            shutdown.clone(),
        )?;
        let readiness = self.readiness.clone();
        let draining = shutdown.clone();
        tokio::spawn(async move {
            draining.cancelled().await;
            readiness.set_draining();
        });
        if let Some(cp) = self.config.control.clone() {
            tokio::spawn(sync::run(self.clone(), cp, listen, shutdown.clone()));
        }
        let limits = gannet_server::ServerLimits {
            drain_timeout: self.config.drain_timeout,
            ..self.config.server.clone()
        };
        let redirect_to = tls.as_ref().and_then(|(_, _, redirect)| *redirect);
        let plain = server::serve(
            listener,
            self.state.clone(),
            self.challenges.clone(),
            limits.clone(),
            redirect_to,
            shutdown.clone(),
        );
        match tls {
            Some((l, settings, _)) => {
                let secure = server::serve_tls(
                    l,
                    settings,
                    self.state.clone(),
                    self.challenges.clone(),
                    limits,
                    shutdown,
                );
                tokio::join!(plain, secure);
            }
            None => plain.await,
        }
        let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
        Ok(())
    }

    /// The readiness latch.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The shared hot-path state (for tests and embedding).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}

/// Reads each spec's component and hashes it, reusing the memo when the
/// file's modification time and size are unchanged.
fn digest_components(
    specs: &[AppSpec],
    memo: &HashMap<PathBuf, (SystemTime, u64, Sha256Digest)>,
) -> Result<Vec<(SystemTime, u64, Sha256Digest)>, GatewayError> {
    specs
        .iter()
        .map(|spec| {
            let err = |source| GatewayError::Component {
                app: spec.id.to_string(),
                path: spec.component.clone(),
                source,
            };
            let meta = std::fs::metadata(&spec.component).map_err(err)?;
            let mtime = meta.modified().map_err(err)?;
            if let Some(&(m, len, d)) = memo.get(&spec.component)
                && m == mtime
                && len == meta.len()
            {
                return Ok((m, len, d));
            }
            let bytes = std::fs::read(&spec.component).map_err(err)?;
            Ok((mtime, meta.len(), Sha256Digest::of(&bytes)))
        })
        .collect()
}
