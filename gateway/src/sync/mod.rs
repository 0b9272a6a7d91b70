//! Following the control API: long-poll the PoP's desired state, take each
//! app's new version where it can — download its component by digest
//! (verifying sha256, within the declared size), compile or load it, warm it
//! — persist what will be served, swap the routing table, collect the
//! components nothing needs any more, and ACK. Apply is per app: an app
//! whose version cannot be taken keeps its previous version and is reported
//! (NACKed) with the reason, and the rest of the revision applies. A failure
//! that a retry may cure (a download, the disk) is retried with backoff; one
//! that it cannot (the component does not compile, fit the pool or link) is
//! remembered and not tried again until the app's desired version changes.
//! If the state cannot be persisted, nothing is swapped: the gateway NACKs
//! and keeps serving what it served, so what is on disk is never behind
//! what is served. There is one outstanding poll per gateway.
//!
//! Tenants' own certificates travel with their apps and are taken the same
//! way: a version bringing a certificate that does not parse, whose key does
//! not match, that has expired or that is for a hostname the app does not
//! serve is refused (NACKed with the reason, never the key) like one whose
//! component does not compile, and the previous version keeps serving with
//! its certificate. Certificates are swapped in with the routing table. The
//! state directory's snapshot holds their keys and is written 0600.
//!
//! ACME HTTP-01 challenges travel with their apps too, and do not depend on
//! the component: every app's are answered, the version asked for where it
//! is pending (NACKed), whether or not their hostnames route yet. They are
//! replaced with the routing table ([`crate::challenges`]).
//!
//! A gateway restarted while the control API is down boots from the state
//! directory at once ([`boot_from_disk`]), app by app, and resumes polling
//! from that revision, downloading nothing it already has. The same holds
//! while the control API cannot be trusted (its certificate does not verify,
//! [`trust`]): the gateway keeps serving what it has and says why it cannot
//! sync.

mod api;
pub mod state_dir;
pub mod trust;

use crate::challenges::ChallengeTable;
use crate::config::ControlPlane;
use crate::routes_file::{AppSpec, CanarySpec};
use crate::tls::HostCertError;
use crate::{Gateway, GatewayError, cache::PrepareError};
use api::Api;
use gannet_model::snapshot::{
    AppReport, DeployedApp, FailedApp, GatewayAck, GatewayRegistration, GatewayReport, PlatformTls,
    StateUpdate,
};
use gannet_model::{AppId, Sha256Digest};
use gannet_runtime::RuntimeError;
use gannet_scheduler::split::Weight;
use serde::{Deserialize, Serialize};
use state_dir::StateDir;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a gateway serves, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// Its revision; -1 before anything was applied.
    pub revision: i64,
    /// Its apps, by `tenant/app`: what is served.
    pub apps: BTreeMap<String, DeployedApp>,
    /// Versions the revision asks for that could not be taken, with the
    /// reason. Their previous version (if any) keeps serving.
    #[serde(default)]
    pub pending: BTreeMap<String, Pending>,
    /// The PoP's TLS settings from the control API (platform certificate,
    /// shared ticket keys), if it gives any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformTls>,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            revision: -1,
            apps: BTreeMap::new(),
            pending: BTreeMap::new(),
            platform: None,
        }
    }
}

/// A version a gateway could not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PendingOnDisk")]
pub struct Pending {
    /// The version asked for.
    pub app: DeployedApp,
    /// Why it could not be taken.
    pub error: String,
    /// Whether trying again may succeed (a download, the disk); if not
    /// (does not compile, fit the pool or link), only a new version will.
    pub retry: bool,
}

/// [`Pending`] as written now, or as gateways before per-app refusals wrote
/// it (`[app, reason]`, always retried).
#[derive(Deserialize)]
#[serde(untagged)]
enum PendingOnDisk {
    Now {
        app: DeployedApp,
        error: String,
        retry: bool,
    },
    Before(DeployedApp, String),
}

impl From<PendingOnDisk> for Pending {
    fn from(p: PendingOnDisk) -> Pending {
        match p {
            PendingOnDisk::Now { app, error, retry } => Pending { app, error, retry },
            PendingOnDisk::Before(app, error) => Pending {
                app,
                error,
                retry: true,
            },
        }
    }
}

/// Why a version could not be taken, or a revision applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The control API could not be reached or answered badly.
    #[error("control API: {0}")]
    Api(String),
    /// The TLS handshake with the control API failed: its certificate is
    /// not trusted, or it does not speak TLS. Says which and what to do.
    #[error("{0}")]
    Tls(String),
    /// A downloaded component does not hash to its digest.
    #[error("component {expected}: downloaded bytes hash to {actual}")]
    DigestMismatch {
        /// Digest asked for.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// A body was larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The component could not be compiled, loaded or linked.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// One of the app's certificates cannot be served.
    #[error(transparent)]
    Certificate(#[from] HostCertError),
    /// The state directory could not be read or written.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

impl SyncError {
    /// Whether the same version may be taken on a later try.
    fn retry(&self) -> bool {
        match self {
            SyncError::Prepare(PrepareError::Runtime(e)) => !e.is_deterministic(),
            SyncError::Certificate(_) => false,
            _ => true,
        }
    }
}

/// The routes-file shape of a deployed app (component from the artifacts).
fn spec_of(dir: &StateDir, app: &DeployedApp) -> (AppSpec, Sha256Digest) {
    // `<app>-<tenant>` (unique: it is the platform hostname's label), or a
    // hash of the key when that is longer than an id may be.
    let id = format!("{}-{}", app.app, app.tenant)
        .parse::<AppId>()
        .unwrap_or_else(|_| AppId::hashed(&app.key()));
    (
        AppSpec {
            id,
            tenant: app.tenant.clone(),
            hosts: app.hosts.clone(),
            component: dir.artifact_path(&app.digest),
            env: app.environment(&app.env),
            limits: app.limits.clone(),
            outbound: app.outbound.clone(),
            report: Some((app.key(), app.version)),
            certificates: app.certificates.clone(),
            canary: app.canary.as_ref().map(|c| CanarySpec {
                component: dir.artifact_path(&c.digest),
                digest: Some(c.digest),
                env: app.environment(&c.env),
                limits: c.limits.clone(),
                outbound: c.outbound.clone(),
                version: Some(c.version),
                weight: Weight::new(c.weight).unwrap_or(Weight::ZERO),
            }),
            affinity: app.affinity.clone(),
        },
        app.digest,
    )
}

fn specs_of(dir: &StateDir, applied: &Applied) -> Vec<(AppSpec, Sha256Digest)> {
    applied.apps.values().map(|a| spec_of(dir, a)).collect()
}

/// The ACME challenges of every app of `applied`: the version asked for
/// where it is pending (its challenges do not need its component), the
/// version served otherwise.
fn challenges_of(applied: &Applied) -> ChallengeTable {
    let served = applied
        .apps
        .iter()
        .filter(|(key, _)| !applied.pending.contains_key(*key))
        .map(|(key, app)| (key.as_str(), app.challenges.as_slice()));
    let pending = applied
        .pending
        .iter()
        .map(|(key, p)| (key.as_str(), p.app.challenges.as_slice()));
    ChallengeTable::build(served.chain(pending))
}

/// Serves `applied` (persisted already): its ACME challenges, then its
/// routing table and certificates. Returns how many challenges are
/// answered.
fn serve_state(gateway: &Gateway, dir: &StateDir, applied: &Applied) -> usize {
    gateway.apply_platform_tls(applied.platform.as_ref());
    let challenges = gateway.challenges().replace(challenges_of(applied));
    gateway.install(specs_of(dir, applied));
    challenges
}

/// Serves the state persisted under the state directory, if there is one,
/// app by app: an app whose component cannot be prepared from disk is left
/// out (and taken again once the control API answers); the others serve.
/// Returns whether a state was found. An unreadable state is logged and
/// ignored: the gateway then starts empty and syncs from scratch.
pub async fn boot_from_disk(gateway: &Gateway, cp: &ControlPlane) -> Result<bool, GatewayError> {
    let dir = StateDir::new(&cp.state_dir);
    if let Err(e) = dir.secure_snapshot() {
        tracing::error!(error = %e, "cannot make the persisted state private to this user");
    }
    let applied = match dir.read_snapshot() {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "the persisted state cannot be read; starting empty, syncing from scratch");
            return Ok(false);
        }
    };
    let mut serving = Vec::new();
    for (mut spec, digest) in specs_of(&dir, &applied) {
        if let Some((canary, canary_digest)) = spec.canary_as_spec()
            && let Err(e) = gateway.prepare(&canary, canary_digest).await
        {
            tracing::error!(app = %spec.id, error = %e, "cannot serve this app's canary from disk; serving its stable version alone");
            spec.canary = None;
        }
        match gateway.prepare(&spec, digest).await {
            Ok(()) => serving.push((spec, digest)),
            Err(e) => {
                tracing::error!(app = %spec.id, error = %e, "cannot serve this app from disk; it is fetched again from the control API");
            }
        }
    }
    let left_out = applied.apps.len() - serving.len();
    gateway.apply_platform_tls(applied.platform.as_ref());
    // Every app's challenges, those left out and pending included.
    gateway.challenges().replace(challenges_of(&applied));
    gateway.install(serving);
    gateway.state().metrics.sync_revision.set(applied.revision);
    tracing::info!(
        revision = applied.revision,
        apps = applied.apps.len(),
        left_out,
        "serving the persisted state"
    );
    Ok(true)
}

/// What is served when the sync loop starts: the persisted state, less the
/// apps [`boot_from_disk`] could not serve (pending, to be taken again).
fn served_at_start(gateway: &Gateway, dir: &StateDir) -> Applied {
    let mut applied = dir.read_snapshot().ok().flatten().unwrap_or_default();
    let table = gateway.state().routes.load();
    let in_table: HashSet<(String, u32)> = table
        .apps()
        .iter()
        .filter_map(|a| a.report.clone())
        .collect();
    let missing: Vec<String> = applied
        .apps
        .iter()
        .filter(|(key, app)| !in_table.contains(&((*key).clone(), app.version)))
        .map(|(key, _)| key.clone())
        .collect();
    for key in missing {
        if let Some(app) = applied.apps.remove(&key) {
            applied.pending.entry(key).or_insert(Pending {
                app,
                error: "could not be served from disk at start".into(),
                retry: true,
            });
        }
    }
    applied
}

/// Makes `want` ready to serve in place of `now` (the version served, if
/// any): its new certificates checked, then, unless its component is the
/// one served, that component taken.
async fn take_version(
    gateway: &Gateway,
    api: &Api,
    dir: &StateDir,
    now: Option<&DeployedApp>,
    want: &DeployedApp,
) -> Result<(), SyncError> {
    let served_certificates = now.map_or(&[][..], |n| n.certificates.as_slice());
    gateway
        .certs()
        .check_app(&want.hosts, &want.certificates, served_certificates)?;
    let (spec, digest) = spec_of(dir, want);
    // A component served already needs nothing: only settings change.
    let served = |d: &Sha256Digest| {
        now.is_some_and(|n| n.digest == *d || n.canary.as_ref().is_some_and(|c| c.digest == *d))
    };
    if !served(&digest) {
        take(gateway, api, dir, &spec, digest, want.size_bytes).await?;
    }
    // A rollout's canary is taken (downloaded, compiled, warm) before the
    // revision is ACKed, so a step's ACK means the canary can serve.
    if let (Some(c), Some((canary_spec, canary_digest))) = (&want.canary, spec.canary_as_spec())
        && !served(&canary_digest)
        && canary_digest != digest
    {
        take(gateway, api, dir, &canary_spec, canary_digest, c.size_bytes).await?;
    }
    Ok(())
}

/// Makes one version's component ready to serve: on disk and verified
/// (downloaded if not), then loaded or compiled and warm.
async fn take(
    gateway: &Gateway,
    api: &Api,
    dir: &StateDir,
    spec: &AppSpec,
    digest: Sha256Digest,
    size_bytes: u64,
) -> Result<(), SyncError> {
    if !dir.has_verified(&digest).await? {
        fetch(gateway, api, dir, &digest, size_bytes).await?;
    }
    match gateway.prepare(spec, digest).await {
        Err(PrepareError::Runtime(e)) if matches!(*e, RuntimeError::DigestMismatch { .. }) => {
            // The file changed after it was verified: fetch it once more.
            dir.discard(&digest);
            fetch(gateway, api, dir, &digest, size_bytes).await?;
            Ok(gateway.prepare(spec, digest).await?)
        }
        result => Ok(result?),
    }
}

/// Downloads a component into the state directory.
async fn fetch(
    gateway: &Gateway,
    api: &Api,
    dir: &StateDir,
    digest: &Sha256Digest,
    size_bytes: u64,
) -> Result<(), SyncError> {
    let ceiling = api.cp.max_body.bytes();
    if size_bytes > ceiling {
        return Err(SyncError::TooLarge(format!(
            "component {digest} is {size_bytes} bytes, above this gateway's --max-component-size of {ceiling}"
        )));
    }
    let body = api.component(digest).await?;
    let size = dir.write_artifact(body, digest, size_bytes).await?;
    let m = &gateway.state().metrics;
    m.sync_downloads.inc();
    m.sync_download_bytes.inc_by(size);
    Ok(())
}

/// What to serve for `desired`: per app, its desired version where it can
/// be taken; otherwise the version served now (if any), with the app
/// pending and why. One app's failure never holds back another's.
async fn reconcile(
    gateway: &Gateway,
    api: &Api,
    dir: &StateDir,
    served: &Applied,
    desired: &Applied,
) -> Applied {
    let mut next = Applied {
        revision: desired.revision,
        apps: BTreeMap::new(),
        pending: BTreeMap::new(),
        platform: desired.platform.clone(),
    };
    for (key, want) in &desired.apps {
        let now = served.apps.get(key);
        if now == Some(want) {
            next.apps.insert(key.clone(), want.clone());
            continue;
        }
        let result = match served.pending.get(key) {
            // Refused for a reason no retry cures: not tried again until
            // the control API asks for another version.
            Some(p) if p.app == *want && !p.retry => Err(p.clone()),
            _ => take_version(gateway, api, dir, now, want).await.map_err(|e| {
                tracing::error!(app = %key, version = want.version, error = %e, "cannot take this version; keeping the previous one");
                Pending {
                    app: want.clone(),
                    error: e.to_string(),
                    retry: e.retry(),
                }
            }),
        };
        match result {
            Ok(()) => {
                next.apps.insert(key.clone(), want.clone());
            }
            Err(pending) => {
                if let Some(now) = now {
                    next.apps.insert(key.clone(), now.clone());
                }
                next.pending.insert(key.clone(), pending);
            }
        }
    }
    next
}

/// Deletes the components no served, pending or retained version uses,
/// from the state directory and the compile cache, and drops them from
/// memory.
async fn collect_garbage(gateway: &Gateway, dir: &StateDir, applied: &Applied) {
    let keep: HashSet<Sha256Digest> = applied
        .apps
        .values()
        .chain(applied.pending.values().map(|p| &p.app))
        .flat_map(|a| {
            std::iter::once(a.digest)
                .chain(a.canary.as_ref().map(|c| c.digest))
                .chain(a.retain.iter().copied())
        })
        .collect();
    let dir = dir.clone();
    let removed = tokio::task::spawn_blocking(move || dir.collect(&keep))
        .await
        .unwrap_or_default();
    let state = gateway.state();
    for digest in &removed {
        state.runtime.artifacts().remove(digest);
        state.cache.forget(digest).await;
        state.metrics.sync_collected.inc();
    }
    if !removed.is_empty() {
        tracing::info!(
            components = removed.len(),
            "collected components no version needs"
        );
    }
}

fn reports(gateway: &Gateway) -> Vec<AppReport> {
    use std::sync::atomic::Ordering::Relaxed;
    gateway
        .state()
        .routes
        .load()
        .apps()
        .iter()
        .filter_map(|a| {
            let (key, version) = a.report.clone()?;
            let count = a.metrics.duration.get_sample_count();
            let mean_latency_us = if count == 0 {
                0
            } else {
                (a.metrics.duration.get_sample_sum() / count as f64 * 1e6) as u64
            };
            Some(AppReport {
                key,
                version,
                requests: a.metrics.counts.answered.load(Relaxed),
                errors: a.metrics.counts.failed.load(Relaxed),
                mean_latency_us,
            })
        })
        .collect()
}

/// The request counters of every version served from the control API,
/// cumulative since this process started.
fn report_of(gateway: &Gateway) -> GatewayReport {
    GatewayReport {
        boot_id: boot_id().to_string(),
        versions: gateway
            .state()
            .routes
            .load()
            .apps()
            .iter()
            .filter_map(|a| {
                let (key, version) = a.report.clone()?;
                Some(a.metrics.counts.snapshot(key, version))
            })
            .collect(),
    }
}

/// Pushes [`report_of`] every `interval` until `shutdown`, on its own
/// schedule (not the state poll's): the scheduler's analysis windows are
/// diffs of successive reports, so a lost push only moves requests into
/// the next window.
async fn push_reports(
    gateway: Arc<Gateway>,
    api: Arc<Api>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = report_of(&gateway);
        if report.versions.is_empty() {
            continue;
        }
        match api.report(&report).await {
            Ok(()) => gateway
                .state()
                .metrics
                .sync_reports
                .with_label_values(&["ok"])
                .inc(),
            Err(e) => {
                gateway
                    .state()
                    .metrics
                    .sync_reports
                    .with_label_values(&["error"])
                    .inc();
                tracing::debug!(error = %e, "report not delivered; the next one carries its requests");
            }
        }
    }
}

fn next_state(current: &Applied, update: StateUpdate) -> Applied {
    match update {
        StateUpdate::Snapshot {
            revision,
            apps,
            platform,
        } => Applied {
            revision,
            apps: apps.into_iter().map(|a| (a.key(), a)).collect(),
            pending: BTreeMap::new(),
            platform,
        },
        StateUpdate::Delta {
            revision,
            upserts,
            removals,
            platform,
        } => {
            let mut apps = current.apps.clone();
            for key in removals {
                apps.remove(&key);
            }
            for a in upserts {
                apps.insert(a.key(), a);
            }
            Applied {
                revision,
                apps,
                pending: BTreeMap::new(),
                platform: platform.or_else(|| current.platform.clone()),
            }
        }
    }
}

/// This gateway's engine compatibility hash, for its registration.
///
/// Not a value wasmtime prints itself: the first 16 bytes (hex) of a
/// SHA-256 fed, through `std::hash::Hash`, with wasmtime's
/// `Engine::precompile_compatibility_hash` (the compilation target, the
/// compiler's flags, tunables and features, and wasmtime's version: what a
/// precompiled artifact depends on). Two gateways with the same value on
/// the same build can run each other's precompiled components.
pub fn engine_compat(engine: &wasmtime::Engine) -> String {
    use sha2::{Digest, Sha256};
    use std::hash::Hash;
    struct Sha(Sha256);
    impl std::hash::Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            // Never read: the digest is taken whole below.
            0
        }
    }
    let mut h = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This process's boot id: 16 random hex characters, made once.
pub fn boot_id() -> &'static str {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// What this gateway tells the control API when it starts: its
/// architecture, engine compatibility hash, version, the addresses its
/// public listeners are bound to (`listen`), and its boot id.
fn registration_of(gateway: &Gateway, listen: Vec<String>) -> GatewayRegistration {
    GatewayRegistration {
        arch: std::env::consts::ARCH.to_string(),
        engine_compat: engine_compat(gateway.state().runtime.engine()),
        gannet_version: env!("CARGO_PKG_VERSION").to_string(),
        listen,
        boot_id: boot_id().to_string(),
    }
}

/// Follows the control API until `shutdown` fires. It first registers
/// (with `listen`, the addresses the public listeners are bound to); a
/// registration that fails is logged and tried again at each poll until
/// it succeeds, and never stops the gateway from syncing or serving.
pub async fn run(
    gateway: Arc<Gateway>,
    cp: ControlPlane,
    listen: Vec<String>,
    shutdown: CancellationToken,
) {
    let dir = StateDir::new(&cp.state_dir);
    let report_interval = cp.report_interval;
    let api = match Api::new(cp) {
        Ok(api) => Arc::new(api),
        Err(e) => {
            // `main` checks the same before starting: only a gateway built
            // by hand gets here. It serves what it has and does not sync.
            tracing::error!(error = %e, "cannot follow the control API; serving the current state without syncing");
            return;
        }
    };
    // `served`: what the routing table serves (and is persisted).
    // `desired`: what the control API asks for.
    let mut served = served_at_start(&gateway, &dir);
    let mut desired = served.clone();
    for (key, p) in &served.pending {
        desired.apps.insert(key.clone(), p.app.clone());
    }
    desired.pending.clear();
    // A revision whose state could not be persisted, and why.
    let mut failed: Option<(i64, String)> = None;
    let mut backoff = Duration::from_millis(100);
    let registration = registration_of(&gateway, listen);
    let mut registered = false;
    tokio::spawn(push_reports(
        gateway.clone(),
        api.clone(),
        report_interval,
        shutdown.clone(),
    ));
    loop {
        if !registered {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = api.register(&registration) => r,
            };
            match result {
                Ok(()) => {
                    registered = true;
                    tracing::info!(
                        boot_id = %registration.boot_id,
                        engine_compat = %registration.engine_compat,
                        "registered with the control API"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering with the control API failed; trying again at the next poll")
                }
            }
        }
        // While something may succeed on a retry, poll briefly.
        let retrying = failed.is_some() || served.pending.values().any(|p| p.retry);
        let wait = retrying.then_some(backoff);
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = api.poll(desired.revision, wait) => r,
        };
        let update = match polled {
            Ok(u) => {
                gateway.state().metrics.sync_last_success.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                );
                u
            }
            Err(e @ SyncError::Tls(_)) => {
                // Nothing syncs until an operator fixes the trust: louder.
                tracing::error!(error = %e, retry_ms = backoff.as_millis() as u64, "state poll failed; keeping the current state");
                sleep_with_jitter(&mut backoff, &shutdown).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "state poll failed; keeping the current state");
                sleep_with_jitter(&mut backoff, &shutdown).await;
                continue;
            }
        };
        match update {
            Some(update) => desired = next_state(&desired, update),
            None if !retrying => {
                // No change: a heartbeat with fresh figures.
                if let Err(e) = api.ack(&ack_for(&gateway, &served, &failed)).await {
                    tracing::debug!(error = %e, "heartbeat not delivered");
                }
                backoff = Duration::from_millis(100);
                continue;
            }
            None => {}
        }
        let started = Instant::now();
        let next = reconcile(&gateway, &api, &dir, &served, &desired).await;
        let m = &gateway.state().metrics;
        // Persist first: if that fails, nothing is swapped.
        match dir.write_snapshot(&next).await {
            Ok(()) => {
                let challenges = serve_state(&gateway, &dir, &next);
                m.sync_revision.set(next.revision);
                m.sync_apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                let result = if next.pending.is_empty() {
                    "ack"
                } else {
                    "nack"
                };
                m.sync_applies.with_label_values(&[result]).inc();
                tracing::info!(
                    revision = next.revision,
                    apps = next.apps.len(),
                    pending = next.pending.len(),
                    challenges,
                    "applied revision"
                );
                collect_garbage(&gateway, &dir, &next).await;
                served = next;
                failed = None;
                gateway.readiness().set_ready();
            }
            Err(e) => {
                m.sync_applies.with_label_values(&["nack"]).inc();
                tracing::error!(revision = desired.revision, error = %e, "the state cannot be persisted; keeping the last good state");
                failed = Some((desired.revision, format!("persisting the state: {e}")));
            }
        }
        if let Err(e) = api.ack(&ack_for(&gateway, &served, &failed)).await {
            tracing::warn!(error = %e, "ack not delivered");
        }
        if failed.is_none() && !served.pending.values().any(|p| p.retry) {
            backoff = Duration::from_millis(100);
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// The ACK for what is served: per app, the versions refused and why; and,
/// when a revision could not be applied at all, that failure (for the
/// operator: it may name any tenant's app).
fn ack_for(gateway: &Gateway, served: &Applied, failed: &Option<(i64, String)>) -> GatewayAck {
    GatewayAck {
        applied_revision: served.revision,
        failed_revision: failed.as_ref().map(|f| f.0),
        error: failed.as_ref().map(|f| f.1.clone()),
        apps: reports(gateway),
        failed_apps: served
            .pending
            .iter()
            .map(|(key, p)| FailedApp {
                key: key.clone(),
                // When the stable version is the one served, what could not
                // be taken is the rollout's canary: name it, so the
                // scheduler sees a NACK of the canary.
                version: match (&p.app.canary, served.apps.get(key)) {
                    (Some(c), Some(now)) if now.version == p.app.version => c.version,
                    _ => p.app.version,
                },
                error: p.error.clone(),
            })
            .collect(),
    }
}

async fn sleep_with_jitter(backoff: &mut Duration, shutdown: &CancellationToken) {
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    let wait = backoff.mul_f64(jitter);
    *backoff = (*backoff * 2).min(Duration::from_secs(10));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Fairness, GatewayConfig};
    use gannet_model::snapshot::{AcmeChallenge, HostCertificate};
    use gannet_runtime::{EngineConfig, PoolConfig};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// A self-signed certificate for `names` and its key, PEM.
    fn pem_pair(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn host_cert(hostname: &str, cert_pem: &str, key_pem: &str) -> HostCertificate {
        HostCertificate {
            hostname: hostname.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// A gateway following a control API nobody answers (nothing in these
    /// tests needs it: components are on disk), its state under `root`.
    async fn gateway(root: &Path) -> Gateway {
        let control = ControlPlane {
            url: "http://127.0.0.1:9".into(),
            pop: "pop1".into(),
            node_token: "gnt_unused".into(),
            state_dir: root.join("state"),
            poll_wait: Duration::from_secs(1),
            max_body: crate::config::DEFAULT_MAX_COMPONENT_SIZE,
            trusted_cas: None,
            report_interval: crate::config::DEFAULT_REPORT_INTERVAL,
        };
        Gateway::build(GatewayConfig {
            control: Some(control),
            cache_dir: root.join("cache"),
            engine: EngineConfig {
                pool: Some(PoolConfig::for_instances(4)),
                ..EngineConfig::default()
            },
            fairness: Fairness {
                guest_threads: Some(1),
                ..Fairness::default()
            },
            ..GatewayConfig::default()
        })
        .await
        .unwrap()
    }

    /// The leaf a handshake for `sni` gets now (DER).
    fn served_leaf(gateway: &Gateway, sni: &str) -> Vec<u8> {
        gateway
            .certs()
            .lookup(Some(sni))
            .and_then(|key| key.cert.first().map(|c| c.to_vec()))
            .unwrap_or_default()
    }

    fn state_of(revision: i64, app: &DeployedApp) -> Applied {
        Applied {
            revision,
            apps: BTreeMap::from([(app.key(), app.clone())]),
            pending: BTreeMap::new(),
            platform: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_certificate_that_cannot_be_served_is_nacked_and_the_previous_version_keeps_its_certificate()
     {
        let root = tempfile::tempdir().unwrap();
        let gw = gateway(root.path()).await;
        let cp = gw.config().control.clone().unwrap();
        let dir = StateDir::new(&cp.state_dir);
        let api = Api::new(cp.clone()).unwrap();
        // The component is on disk already: nothing is downloaded.
        let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.wasm");
        let bytes = std::fs::read(&hello).expect("run `bash examples/build.sh` first");
        let digest = Sha256Digest::of(&bytes);
        let artifact = dir.artifact_path(&digest);
        std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
        std::fs::write(&artifact, &bytes).unwrap();

        let good = pem_pair(&["shop.example.com"]);
        let v1 = DeployedApp {
            tenant: "acme".into(),
            app: "shop".into(),
            version: 1,
            digest,
            size_bytes: bytes.len() as u64,
            hosts: vec!["shop-acme.localhost".into(), "shop.example.com".into()],
            env: BTreeMap::new(),
            limits: Default::default(),
            outbound: Vec::new(),
            retain: Vec::new(),
            certificates: vec![host_cert("shop.example.com", &good.0, &good.1)],
            challenges: Vec::new(),
            canary: None,
            affinity: Default::default(),
            config: BTreeMap::new(),
            secrets: Default::default(),
        };
        let key = v1.key();
        let served = reconcile(&gw, &api, &dir, &Applied::default(), &state_of(1, &v1)).await;
        assert!(served.pending.is_empty(), "{:?}", served.pending);
        gw.install(specs_of(&dir, &served));
        assert_eq!(served_leaf(&gw, "shop.example.com"), der_of(&good.0));

        // Versions the gateway must refuse: a key that is not the
        // certificate's (with a settings change, then with a component not
        // even on disk: the certificate is judged before any download), and
        // a certificate for a hostname the app does not serve.
        let other = pem_pair(&["shop.example.com"]);
        let blog = pem_pair(&["blog.example.com"]);
        let mismatched = host_cert("shop.example.com", &good.0, &other.1);
        let mut new_env = v1.clone();
        new_env.env.insert("GREETING".into(), "v2".into());
        new_env.certificates = vec![mismatched.clone()];
        let mut new_component = v1.clone();
        new_component.version = 2;
        new_component.digest = Sha256Digest::of(b"a component nobody has");
        new_component.certificates = vec![mismatched];
        let mut not_its_host = v1.clone();
        not_its_host
            .certificates
            .push(host_cert("blog.example.com", &blog.0, &blog.1));
        let cases = [
            (
                new_env,
                "certificate for shop.example.com: the private key does not match the certificate's public key",
            ),
            (
                new_component,
                "certificate for shop.example.com: the private key does not match",
            ),
            (
                not_its_host,
                "certificate for blog.example.com: blog.example.com is not one of the app's hostnames",
            ),
        ];
        for (revision, (want, reason)) in (2..).zip(cases) {
            let desired = state_of(revision, &want);
            let next = reconcile(&gw, &api, &dir, &served, &desired).await;
            assert_eq!(next.revision, revision);
            assert_eq!(next.apps.get(&key), Some(&v1), "the previous version stays");
            let pending = &next.pending[&key];
            assert_eq!(pending.app, want);
            assert!(pending.error.starts_with(reason), "{}", pending.error);
            assert!(
                !pending.retry,
                "a certificate does not get better by retrying"
            );
            let ack = ack_for(&gw, &next, &None);
            assert_eq!(ack.applied_revision, revision);
            assert_eq!(ack.failed_apps.len(), 1, "{ack:?}");
            assert_eq!(ack.failed_apps[0].key, key);
            assert_eq!(ack.failed_apps[0].version, want.version);
            assert!(ack.failed_apps[0].error.starts_with(reason));
            let text = serde_json::to_string(&ack).unwrap();
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            // Installed: the previous version and its certificate serve.
            gw.install(specs_of(&dir, &next));
            assert_eq!(served_leaf(&gw, "shop.example.com"), der_of(&good.0));
            let table = gw.state().routes.load();
            let app = table.lookup("shop.example.com").expect("still routed");
            assert_eq!(app.stable.report, Some((key.clone(), 1)));
            // Refused for good: the same version is not judged again.
            let again = reconcile(&gw, &api, &dir, &next, &desired).await;
            assert_eq!(again.pending[&key], *pending);
            assert_eq!(again.apps.get(&key), Some(&v1));
        }

        // A good new pair (a rotation) is taken, and persisted 0600.
        let rotated = pem_pair(&["shop.example.com"]);
        let mut v1_rotated = v1.clone();
        v1_rotated.certificates = vec![host_cert("shop.example.com", &rotated.0, &rotated.1)];
        let next = reconcile(&gw, &api, &dir, &served, &state_of(9, &v1_rotated)).await;
        assert!(next.pending.is_empty(), "{:?}", next.pending);
        assert_eq!(next.apps.get(&key), Some(&v1_rotated));
        dir.write_snapshot(&next).await.unwrap();
        gw.install(specs_of(&dir, &next));
        assert_eq!(served_leaf(&gw, "shop.example.com"), der_of(&rotated.0));
        let snapshot = cp.state_dir.join("snapshot.json");
        let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // A gateway booting from that state directory serves the pair.
        drop(gw);
        let gw = gateway(root.path()).await;
        assert_eq!(served_leaf(&gw, "shop.example.com"), der_of(&rotated.0));
        assert!(
            gw.state()
                .routes
                .load()
                .lookup("shop.example.com")
                .is_some()
        );
    }

    /// hello.wasm written into `dir`'s artifacts (nothing is downloaded):
    /// its digest and size.
    fn hello_on_disk(dir: &StateDir) -> (Sha256Digest, u64) {
        let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.wasm");
        let bytes = std::fs::read(&hello).expect("run `bash examples/build.sh` first");
        let digest = Sha256Digest::of(&bytes);
        let artifact = dir.artifact_path(&digest);
        std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
        std::fs::write(&artifact, &bytes).unwrap();
        (digest, bytes.len() as u64)
    }

    fn challenge(hostname: &str, token: &str) -> AcmeChallenge {
        AcmeChallenge {
            hostname: hostname.into(),
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
        }
    }

    /// What `gateway` answers now for the two challenges of the test below.
    fn answers(gateway: &Gateway) -> (Option<bytes::Bytes>, Option<bytes::Bytes>) {
        let table = gateway.challenges().load();
        (
            table.lookup("shop.example.com", "tok-shop").cloned(),
            table.lookup("blog.example.com", "tok-blog").cloned(),
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_canary_is_taken_warm_beside_its_stable_version_or_nacked_by_its_own_number() {
        let root = tempfile::tempdir().unwrap();
        let gw = gateway(root.path()).await;
        let cp = gw.config().control.clone().unwrap();
        let dir = StateDir::new(&cp.state_dir);
        let api = Api::new(cp.clone()).unwrap();
        let (digest, size_bytes) = hello_on_disk(&dir);
        let stable = DeployedApp {
            tenant: "acme".into(),
            app: "shop".into(),
            version: 1,
            digest,
            size_bytes,
            hosts: vec!["shop-acme.localhost".into()],
            env: BTreeMap::from([("GREETING".into(), "v1".into())]),
            limits: Default::default(),
            outbound: Vec::new(),
            retain: Vec::new(),
            certificates: Vec::new(),
            challenges: Vec::new(),
            canary: None,
            affinity: gannet_model::snapshot::Affinity::Header("x-user".into()),
            config: BTreeMap::new(),
            secrets: Default::default(),
        };
        let served = reconcile(&gw, &api, &dir, &Applied::default(), &state_of(1, &stable)).await;
        assert!(served.pending.is_empty(), "{:?}", served.pending);

        // The same component as a canary with other settings: taken at once.
        let mut with_canary = stable.clone();
        with_canary.canary = Some(gannet_model::snapshot::CanaryVersion {
            version: 2,
            digest,
            size_bytes,
            env: BTreeMap::from([("GREETING".into(), "v2".into())]),
            limits: Default::default(),
            outbound: Vec::new(),
            weight: 25,
        });
        let next = reconcile(&gw, &api, &dir, &served, &state_of(2, &with_canary)).await;
        assert!(next.pending.is_empty(), "{:?}", next.pending);
        gw.install(specs_of(&dir, &next));
        {
            let table = gw.state().routes.load();
            let d = table.lookup("shop-acme.localhost").expect("routed");
            let canary = d.canary.as_ref().expect("a canary");
            assert_eq!(canary.app.number(), Some(2));
            assert_eq!(canary.weight.percent(), 25);
            assert_eq!(d.stable.number(), Some(1));
            assert_eq!(table.apps().len(), 2, "both versions are reported");
            assert_eq!(
                d.affinity,
                crate::router::AffinityKey::Header(http::HeaderName::from_static("x-user"))
            );
        }

        // A canary whose component cannot be had: the stable version keeps
        // serving, and the refusal names the canary's number.
        let mut broken = with_canary.clone();
        if let Some(c) = broken.canary.as_mut() {
            c.version = 3;
            c.digest = Sha256Digest::of(b"a canary nobody has");
        }
        let after = reconcile(&gw, &api, &dir, &next, &state_of(3, &broken)).await;
        assert_eq!(after.apps.get(&stable.key()), Some(&with_canary));
        let ack = ack_for(&gw, &after, &None);
        assert_eq!(ack.failed_apps.len(), 1, "{ack:?}");
        assert_eq!(ack.failed_apps[0].version, 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn challenges_are_answered_for_hostnames_not_routed_and_apps_not_taken_until_a_state_drops_them()
     {
        let root = tempfile::tempdir().unwrap();
        let gw = gateway(root.path()).await;
        let cp = gw.config().control.clone().unwrap();
        let dir = StateDir::new(&cp.state_dir);
        let api = Api::new(cp.clone()).unwrap();
        let (digest, size_bytes) = hello_on_disk(&dir);

        // shop is taken; its challenge is for a hostname it does not route.
        let shop = DeployedApp {
            tenant: "acme".into(),
            app: "shop".into(),
            version: 1,
            digest,
            size_bytes,
            hosts: vec!["shop-acme.localhost".into()],
            env: BTreeMap::new(),
            limits: Default::default(),
            outbound: Vec::new(),
            retain: Vec::new(),
            certificates: Vec::new(),
            challenges: vec![challenge("shop.example.com", "tok-shop")],
            canary: None,
            affinity: Default::default(),
            config: BTreeMap::new(),
            secrets: Default::default(),
        };
        // blog cannot be taken (its component is not on disk and the
        // control API does not answer): NACKed, its challenge answered.
        let mut blog = shop.clone();
        blog.app = "blog".into();
        blog.hosts = vec!["blog-acme.localhost".into()];
        blog.digest = Sha256Digest::of(b"a component nobody has");
        blog.challenges = vec![challenge("blog.example.com", "tok-blog")];
        let both = |revision: i64, shop: &DeployedApp, blog: &DeployedApp| Applied {
            revision,
            apps: BTreeMap::from([(shop.key(), shop.clone()), (blog.key(), blog.clone())]),
            pending: BTreeMap::new(),
            platform: None,
        };
        assert_eq!(answers(&gw), (None, None));

        let next = reconcile(&gw, &api, &dir, &Applied::default(), &both(1, &shop, &blog)).await;
        assert_eq!(next.apps.get(&shop.key()), Some(&shop));
        assert!(!next.apps.contains_key(&blog.key()), "{:?}", next.apps);
        assert!(next.pending.contains_key(&blog.key()), "{:?}", next.pending);
        dir.write_snapshot(&next).await.unwrap();
        assert_eq!(serve_state(&gw, &dir, &next), 2);
        let want = (
            Some(bytes::Bytes::from_static(b"tok-shop.thumbprint")),
            Some(bytes::Bytes::from_static(b"tok-blog.thumbprint")),
        );
        assert_eq!(answers(&gw), want);
        let routes = gw.state().routes.load();
        assert!(routes.lookup("shop-acme.localhost").is_some());
        assert!(routes.lookup("shop.example.com").is_none());
        assert!(routes.lookup("blog.example.com").is_none());
        drop(routes);
        // As the listeners ask: by the request's host and path.
        let req = http::Request::builder()
            .uri("/.well-known/acme-challenge/tok-blog")
            .header(http::header::HOST, "Blog.Example.com.:80")
            .body(())
            .unwrap();
        assert_eq!(
            gw.challenges().answer(&req).as_deref(),
            Some(&b"tok-blog.thumbprint"[..])
        );

        // A gateway booting from that state directory answers both.
        drop(gw);
        let gw = gateway(root.path()).await;
        assert_eq!(answers(&gw), want);

        // A later state without the challenges: neither is answered, and
        // shop still serves.
        let mut shop2 = shop.clone();
        shop2.challenges.clear();
        let mut blog2 = blog.clone();
        blog2.challenges.clear();
        let later = reconcile(&gw, &api, &dir, &next, &both(2, &shop2, &blog2)).await;
        assert_eq!(later.apps.get(&shop.key()), Some(&shop2));
        assert!(
            later.pending.contains_key(&blog.key()),
            "{:?}",
            later.pending
        );
        dir.write_snapshot(&later).await.unwrap();
        assert_eq!(serve_state(&gw, &dir, &later), 0);
        assert_eq!(answers(&gw), (None, None));
        assert!(gw.challenges().answer(&req).is_none());
        assert!(
            gw.state()
                .routes
                .load()
                .lookup("shop-acme.localhost")
                .is_some()
        );
    }
}
