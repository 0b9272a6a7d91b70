//! Following the control API: long-poll the PoP's desired state, fetch
//! missing components by digest (verifying sha256), warm them, swap the
//! routing table, persist what was applied, and ACK — or NACK with the reason
//! and keep the last good state. Errors back off exponentially with jitter;
//! there is one outstanding poll per gateway.
//!
//! On disk, under the state directory: `snapshot.json` (the revision and the
//! apps applied) and `artifacts/<sha256>.wasm`, each written atomically. A
//! gateway restarted while the control API is down boots from them at once
//! ([`boot_from_disk`]) and resumes polling from that revision, downloading
//! nothing it already has.

use crate::config::ControlPlane;
use crate::routes_file::AppSpec;
use crate::{Gateway, GatewayError};
use bytes::Bytes;
use gannet_model::snapshot::{AppReport, DeployedApp, FailedApp, GatewayAck, StateUpdate};
use gannet_model::{AppId, Sha256Digest};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What was applied last, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// Its revision; -1 before anything was applied.
    pub revision: i64,
    /// Its apps, by `tenant/app`: what is served.
    pub apps: BTreeMap<String, DeployedApp>,
    /// Versions the revision asks for that could not be taken yet (their
    /// component failed to download or verify), with the reason. Their
    /// previous version keeps serving; they are retried.
    #[serde(default)]
    pub pending: BTreeMap<String, (DeployedApp, String)>,
}

/// Why a revision could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The control API could not be reached or answered badly.
    #[error("control API: {0}")]
    Api(String),
    /// A downloaded component does not hash to its digest.
    #[error("component {expected}: downloaded bytes hash to {actual}")]
    DigestMismatch {
        /// Digest asked for.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// Warming or swapping failed.
    #[error(transparent)]
    Apply(#[from] GatewayError),
    /// Local disk.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            revision: -1,
            apps: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }
}

fn snapshot_path(cp: &ControlPlane) -> PathBuf {
    cp.state_dir.join("snapshot.json")
}

fn artifact_path(cp: &ControlPlane, digest: &Sha256Digest) -> PathBuf {
    cp.state_dir
        .join("artifacts")
        .join(format!("{digest}.wasm"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The routes-file shape of a deployed app (component from the artifacts).
fn spec_of(cp: &ControlPlane, app: &DeployedApp) -> (AppSpec, Sha256Digest) {
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
            component: artifact_path(cp, &app.digest),
            env: app.env.clone(),
            limits: app.limits.clone(),
            outbound: app.outbound.clone(),
            report: Some((app.key(), app.version)),
        },
        app.digest,
    )
}

async fn apply_local(
    gateway: &Gateway,
    cp: &ControlPlane,
    applied: &Applied,
) -> Result<(), SyncError> {
    let specs = applied.apps.values().map(|a| spec_of(cp, a)).collect();
    gateway.apply(specs).await?;
    gateway.state().metrics.sync_revision.set(applied.revision);
    Ok(())
}

/// Serves the snapshot persisted under the state directory, if there is
/// one. Returns whether one was applied.
pub async fn boot_from_disk(gateway: &Gateway, cp: &ControlPlane) -> Result<bool, GatewayError> {
    let text = match std::fs::read_to_string(snapshot_path(cp)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(GatewayError::Io(e)),
    };
    let applied: Applied = serde_json::from_str(&text)
        .map_err(|e| GatewayError::Io(std::io::Error::other(format!("snapshot.json: {e}"))))?;
    match apply_local(gateway, cp, &applied).await {
        Ok(()) => {
            tracing::info!(
                revision = applied.revision,
                apps = applied.apps.len(),
                "serving the persisted state"
            );
            Ok(true)
        }
        Err(SyncError::Apply(e)) => Err(e),
        Err(e) => Err(GatewayError::Io(std::io::Error::other(e.to_string()))),
    }
}

struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    cp: ControlPlane,
}

impl Api {
    fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, SyncError> {
        http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.cp.url.trim_end_matches('/')))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.cp.node_token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| SyncError::Api(e.to_string()))
    }

    async fn call(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), SyncError> {
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| SyncError::Api("timed out".into()))?
            .map_err(|e| SyncError::Api(format!("unreachable: {e}")))?;
        let status = resp.status();
        let body = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .map_err(|_| SyncError::Api("timed out reading the body".into()))?
            .map_err(|e| SyncError::Api(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    async fn poll(
        &self,
        since: i64,
        wait: Option<Duration>,
    ) -> Result<Option<StateUpdate>, SyncError> {
        let wait = wait.unwrap_or(self.cp.poll_wait).min(self.cp.poll_wait);
        let path = format!(
            "/v1/pops/{}/state?since={since}&wait_ms={}",
            self.cp.pop,
            wait.as_millis()
        );
        let (status, body) = self
            .call(
                self.request(http::Method::GET, &path, Bytes::new())?,
                wait + Duration::from_secs(10),
            )
            .await?;
        match status {
            http::StatusCode::NOT_MODIFIED => Ok(None),
            s if s.is_success() => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| SyncError::Api(format!("bad state document: {e}"))),
            s => Err(SyncError::Api(format!(
                "{s}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    async fn download(&self, digest: &Sha256Digest) -> Result<Bytes, SyncError> {
        let path = format!("/v1/pops/{}/components/{digest}", self.cp.pop);
        let (status, body) = self
            .call(
                self.request(http::Method::GET, &path, Bytes::new())?,
                Duration::from_secs(300),
            )
            .await?;
        if !status.is_success() {
            return Err(SyncError::Api(format!("downloading {digest}: {status}")));
        }
        Ok(body)
    }

    async fn ack(&self, ack: &GatewayAck) -> Result<(), SyncError> {
        let body = serde_json::to_vec(ack).map_err(|e| SyncError::Api(e.to_string()))?;
        let path = format!("/v1/pops/{}/ack", self.cp.pop);
        let (status, body) = self
            .call(
                self.request(http::Method::POST, &path, body.into())?,
                Duration::from_secs(10),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(SyncError::Api(format!(
                "ack: {status}: {}",
                String::from_utf8_lossy(&body)
            )))
        }
    }
}

/// Makes sure `app`'s component is on disk, downloading and verifying it.
async fn ensure_artifact(gateway: &Gateway, api: &Api, app: &DeployedApp) -> Result<(), SyncError> {
    let path = artifact_path(&api.cp, &app.digest);
    if path.is_file() {
        return Ok(());
    }
    let bytes = api.download(&app.digest).await?;
    let actual = Sha256Digest::from_bytes(Sha256::digest(&bytes).into());
    if actual != app.digest {
        return Err(SyncError::DigestMismatch {
            expected: app.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    let m = &gateway.state().metrics;
    m.sync_downloads.inc();
    m.sync_download_bytes.inc_by(bytes.len() as u64);
    tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
        .await
        .map_err(|e| SyncError::Io(std::io::Error::other(e)))??;
    Ok(())
}

/// What to serve for `desired`: each app whose component is (now) on disk
/// at its desired version; the others at their version in `current`, and
/// listed as pending with the reason. One app's bad artifact never holds
/// back the rest of a revision.
async fn reconcile(gateway: &Gateway, api: &Api, current: &Applied, desired: &Applied) -> Applied {
    let mut next = Applied {
        revision: desired.revision,
        apps: BTreeMap::new(),
        pending: BTreeMap::new(),
    };
    for (key, app) in &desired.apps {
        match ensure_artifact(gateway, api, app).await {
            Ok(()) => {
                next.apps.insert(key.clone(), app.clone());
            }
            Err(e) => {
                tracing::error!(app = %key, version = app.version, error = %e, "cannot take this version; keeping the previous one");
                if let Some(old) = current.apps.get(key) {
                    next.apps.insert(key.clone(), old.clone());
                }
                next.pending
                    .insert(key.clone(), (app.clone(), e.to_string()));
            }
        }
    }
    next
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

fn next_state(current: &Applied, update: StateUpdate) -> Applied {
    match update {
        StateUpdate::Snapshot { revision, apps } => Applied {
            revision,
            apps: apps.into_iter().map(|a| (a.key(), a)).collect(),
            pending: BTreeMap::new(),
        },
        StateUpdate::Delta {
            revision,
            upserts,
            removals,
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
            }
        }
    }
}

/// Follows the control API until `shutdown` fires.
pub async fn run(gateway: Arc<Gateway>, cp: ControlPlane, shutdown: CancellationToken) {
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        cp: cp.clone(),
    };
    // `current`: what is served. `desired`: what the control API asks for.
    let mut current: Applied = std::fs::read_to_string(snapshot_path(&cp))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut desired = current.clone();
    for (key, (app, _)) in &current.pending {
        desired.apps.insert(key.clone(), app.clone());
    }
    let mut failed: Option<(i64, String)> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        // With versions pending, poll briefly so they are retried soon.
        let wait = if current.pending.is_empty() && failed.is_none() {
            None
        } else {
            Some(backoff)
        };
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
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "state poll failed; keeping the current state");
                sleep_with_jitter(&mut backoff, &shutdown).await;
                continue;
            }
        };
        let retry = !current.pending.is_empty() || failed.is_some();
        match update {
            Some(update) => desired = next_state(&desired, update),
            None if !retry => {
                // No change: a heartbeat with fresh figures.
                if let Err(e) = api.ack(&ack_for(&gateway, &current, &failed)).await {
                    tracing::debug!(error = %e, "heartbeat not delivered");
                }
                backoff = Duration::from_millis(100);
                continue;
            }
            None => {}
        }
        let started = Instant::now();
        let next = reconcile(&gateway, &api, &current, &desired).await;
        let applied = async {
            apply_local(&gateway, &cp, &next).await?;
            let json = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
            let path = snapshot_path(&cp);
            tokio::task::spawn_blocking(move || write_atomic(&path, &json))
                .await
                .map_err(std::io::Error::other)??;
            Ok::<_, SyncError>(())
        }
        .await;
        let m = &gateway.state().metrics;
        match applied {
            Ok(()) => {
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
                    "applied revision"
                );
                current = next;
                failed = None;
                gateway.readiness().set_ready();
            }
            Err(e) => {
                m.sync_applies.with_label_values(&["nack"]).inc();
                tracing::error!(revision = desired.revision, error = %e, "revision refused; keeping the last good state");
                failed = Some((desired.revision, e.to_string()));
            }
        }
        if let Err(e) = api.ack(&ack_for(&gateway, &current, &failed)).await {
            tracing::warn!(error = %e, "ack not delivered");
        }
        if current.pending.is_empty() && failed.is_none() {
            backoff = Duration::from_millis(100);
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

fn ack_for(gateway: &Gateway, current: &Applied, failed: &Option<(i64, String)>) -> GatewayAck {
    let failed_apps: Vec<FailedApp> = current
        .pending
        .iter()
        .map(|(key, (app, error))| FailedApp {
            key: key.clone(),
            version: app.version,
            error: error.clone(),
        })
        .collect();
    let error = failed.as_ref().map(|f| f.1.clone()).or_else(|| {
        failed_apps
            .first()
            .map(|f| format!("{}: {}", f.key, f.error))
    });
    GatewayAck {
        applied_revision: current.revision,
        failed_revision: failed.as_ref().map(|f| f.0),
        error,
        apps: reports(gateway),
        failed_apps,
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
