//! The in-memory level of the component cache: digest → pre-instantiated
//! component, in a weighted, bounded moka cache. A miss goes to the runtime's
//! disk level (mmap a verified `.cwasm`) or compiles; either way it runs once
//! per digest however many requests arrive together (moka coalesces them),
//! on the blocking pool, never on the async executor.

use crate::metrics::Metrics;
use gannet_model::Sha256Digest;
use gannet_runtime::{ArtifactSource, Prepared, Runtime, RuntimeError};
use moka::future::Cache;
use moka::notification::RemovalCause;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Why a component could not be prepared.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PrepareError {
    /// The runtime refused or failed it.
    #[error(transparent)]
    Runtime(Arc<RuntimeError>),
    /// The blocking task died.
    #[error("preparing the component was cancelled")]
    Cancelled,
}

/// Pre-instantiated components by digest.
pub struct ComponentCache {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    cache: Cache<Sha256Digest, Arc<Prepared>>,
}

impl ComponentCache {
    /// A cache holding up to `capacity_bytes` of artifacts (weighted by each
    /// artifact's size).
    pub fn new(runtime: Arc<Runtime>, metrics: Arc<Metrics>, capacity_bytes: u64) -> Self {
        let evictions = metrics.cache_evictions.clone();
        let cache = Cache::builder()
            .max_capacity(capacity_bytes / 1024)
            .weigher(|_, p: &Arc<Prepared>| {
                u32::try_from(p.size_bytes / 1024)
                    .unwrap_or(u32::MAX)
                    .max(1)
            })
            .eviction_listener(move |_, _, cause| {
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => return,
                    RemovalCause::Replaced => return,
                };
                evictions.with_label_values(&[cause]).inc();
            })
            .build();
        ComponentCache {
            runtime,
            metrics,
            cache,
        }
    }

    /// The prepared component for `digest`, loading or compiling it from
    /// `path` on a miss.
    pub async fn get(
        &self,
        digest: Sha256Digest,
        path: &Path,
    ) -> Result<Arc<Prepared>, PrepareError> {
        if let Some(p) = self.cache.get(&digest).await {
            self.metrics.cache_hits.inc();
            return Ok(p);
        }
        self.metrics.cache_misses.inc();
        let runtime = self.runtime.clone();
        let metrics = self.metrics.clone();
        let path = path.to_path_buf();
        self.cache
            .try_get_with(digest, async move {
                tokio::task::spawn_blocking(move || prepare(&runtime, &metrics, digest, path))
                    .await
                    .map_err(|_| PrepareError::Cancelled)?
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Whether `digest` is in memory now.
    pub async fn contains(&self, digest: &Sha256Digest) -> bool {
        self.cache.get(digest).await.is_some()
    }

    /// Drops `digest` from memory (its component is no longer kept).
    pub async fn forget(&self, digest: &Sha256Digest) {
        self.cache.invalidate(digest).await;
    }
}

fn prepare(
    runtime: &Runtime,
    metrics: &Metrics,
    digest: Sha256Digest,
    path: PathBuf,
) -> Result<Arc<Prepared>, PrepareError> {
    let start = Instant::now();
    let (prepared, source) = runtime
        .prepare(digest, || std::fs::read(&path))
        .map_err(|e| {
            let kind = match &e {
                RuntimeError::Refused(_) => "remembered",
                e if e.is_deterministic() => "refused",
                _ => "transient",
            };
            metrics.prepare_failures.with_label_values(&[kind]).inc();
            tracing::error!(component = %path.display(), digest = %digest.short(), kind, error = %e, "component cannot be prepared");
            PrepareError::Runtime(Arc::new(e))
        })?;
    let label = match source {
        ArtifactSource::Disk => "disk",
        ArtifactSource::Compiled => "compiled",
        ArtifactSource::RecompiledCorrupt => {
            metrics.corrupt.inc();
            "recompiled_corrupt"
        }
    };
    metrics.loads.with_label_values(&[label]).inc();
    if source != ArtifactSource::Disk {
        metrics.compile.observe(start.elapsed().as_secs_f64());
    }
    tracing::info!(
        component = %path.display(),
        digest = %digest.short(),
        source = label,
        ms = start.elapsed().as_millis() as u64,
        "component ready"
    );
    Ok(Arc::new(prepared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gannet_runtime::{EngineConfig, PoolConfig, RuntimeConfig};

    fn small_runtime(dir: &Path) -> Arc<Runtime> {
        let pool = PoolConfig::for_instances(10);
        let config = RuntimeConfig {
            engine: EngineConfig {
                pool: Some(pool),
                ..EngineConfig::default()
            },
            cache_dir: dir.to_path_buf(),
        };
        Arc::new(Runtime::new(config).unwrap())
    }

    fn hello() -> (PathBuf, Sha256Digest) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.wasm");
        let bytes = std::fs::read(&path).expect("run `bash examples/build.sh` first");
        (path, Sha256Digest::of(&bytes))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_miss_compiles_once_for_100_concurrent_requests() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let cache = Arc::new(ComponentCache::new(
            small_runtime(dir.path()),
            metrics.clone(),
            1 << 30,
        ));
        let (path, digest) = hello();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                let path = path.clone();
                tokio::spawn(async move { cache.get(digest, &path).await.map(|p| p.digest) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), digest);
        }
        assert_eq!(metrics.loads.with_label_values(&["compiled"]).get(), 1);
        assert_eq!(metrics.compile.get_sample_count(), 1);
        assert_eq!(metrics.cache_misses.get() + metrics.cache_hits.get(), 100);
        assert!(cache.contains(&digest).await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bytes_that_do_not_match_their_digest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let cache = ComponentCache::new(small_runtime(dir.path()), metrics.clone(), 1 << 30);
        let (path, _) = hello();
        let wrong = Sha256Digest::of(b"something else");
        let err = cache.get(wrong, &path).await.err().expect("must fail");
        assert!(err.to_string().contains("do not match digest"), "{err}");
        assert!(!cache.contains(&wrong).await);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }
}
