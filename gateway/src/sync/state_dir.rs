//! The gateway's state directory: `snapshot.json` (what is served) and
//! `artifacts/<sha256>.wasm` (the components it needs), everything written
//! atomically. A component is trusted only after its bytes hash to its
//! name: when it is downloaded, and again before a new version is taken from
//! it; one that does not is deleted and fetched again. Components no served
//! or retained version needs are collected.

use super::{Applied, SyncError};
use gannet_model::Sha256Digest;
use gannet_runtime::artifact::write_atomic;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Longest pause between two pieces of a download.
const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);

/// One gateway's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (created when first written).
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.root.join("snapshot.json")
    }

    fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Where `digest`'s component is kept.
    pub fn artifact_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.artifacts().join(format!("{digest}.wasm"))
    }

    /// The persisted state: `None` when there is none yet, an error when it
    /// cannot be read or parsed.
    pub fn read_snapshot(&self) -> Result<Option<Applied>, String> {
        let text = match std::fs::read_to_string(self.snapshot_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.snapshot_path().display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.snapshot_path().display()))
    }

    /// Persists `applied`; on failure the previous snapshot stays whole.
    pub async fn write_snapshot(&self, applied: &Applied) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(applied).map_err(std::io::Error::other)?;
        let root = self.root.clone();
        let path = self.snapshot_path();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            write_atomic(&path, &json)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Whether `digest`'s component is on disk with bytes that hash to it.
    /// A file that does not is deleted (and must be fetched again).
    pub async fn has_verified(&self, digest: &Sha256Digest) -> std::io::Result<bool> {
        let path = self.artifact_path(digest);
        let digest = *digest;
        tokio::task::spawn_blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            if Sha256Digest::of(&bytes) == digest {
                return Ok(true);
            }
            tracing::warn!(artifact = %path.display(), "component on disk does not match its digest; fetching it again");
            std::fs::remove_file(&path)?;
            Ok(false)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Deletes `digest`'s component (it is fetched again when needed).
    pub fn discard(&self, digest: &Sha256Digest) {
        let _ = std::fs::remove_file(self.artifact_path(digest));
    }

    /// Streams a downloaded component to disk: at most `max` bytes (the
    /// size the state declares for it, within the gateway's ceiling),
    /// hashed as it arrives, kept only when it hashes to `digest`. Returns
    /// its size.
    pub async fn write_artifact(
        &self,
        mut body: Incoming,
        digest: &Sha256Digest,
        max: u64,
    ) -> Result<u64, SyncError> {
        tokio::fs::create_dir_all(self.artifacts()).await?;
        let final_path = self.artifact_path(digest);
        let tmp = self
            .artifacts()
            .join(format!(".{digest}.{:08x}.part", rand::random::<u32>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                let frame = tokio::time::timeout(DOWNLOAD_IDLE, body.frame())
                    .await
                    .map_err(|_| SyncError::Api(format!("downloading {digest}: stalled")))?;
                let Some(frame) = frame else { break };
                let frame =
                    frame.map_err(|e| SyncError::Api(format!("downloading {digest}: {e}")))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                size += data.len() as u64;
                if size > max {
                    return Err(SyncError::TooLarge(format!(
                        "component {digest} is larger than the {max} bytes declared for it"
                    )));
                }
                hasher.update(data);
                file.write_all(data).await?;
            }
            let actual = Sha256Digest::from_bytes(hasher.finalize().into());
            if actual != *digest {
                return Err(SyncError::DigestMismatch {
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            file.sync_all().await?;
            tokio::fs::rename(&tmp, &final_path).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Deletes every component not in `keep`, and any download left
    /// unfinished. Returns the digests deleted.
    pub fn collect(&self, keep: &HashSet<Sha256Digest>) -> Vec<Sha256Digest> {
        let Ok(entries) = std::fs::read_dir(self.artifacts()) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".part") || name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(digest) = name
                .strip_suffix(".wasm")
                .and_then(|d| d.parse::<Sha256Digest>().ok())
            else {
                continue;
            };
            if !keep.contains(&digest) && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(digest);
            }
        }
        removed
    }
}
