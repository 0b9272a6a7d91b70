//! The gateway's state directory: `snapshot.json` (what is served, with
//! tenants' certificates and private keys: written 0600, readable by the
//! gateway's user only) and `artifacts/<sha256>.wasm` (the components it
//! needs), everything written atomically. A component is trusted only after its bytes hash to its
//! name: when it is downloaded, and again before a new version is taken from
//! it; one that does not is deleted and fetched again. Components no served
//! or retained version needs are collected.

use super::{Applied, SyncError};
use gannet_model::Sha256Digest;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Longest pause between two pieces of a download.
const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);

/// The snapshot's mode: it holds private keys.
const SNAPSHOT_MODE: u32 = 0o600;

/// The snapshot file's name.
const SNAPSHOT: &str = "snapshot.json";

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
        self.root.join(SNAPSHOT)
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

    /// Persists `applied`, readable and writable by this user only (mode
    /// 0600, whatever the umask and the mode of the file it replaces); on
    /// failure the previous snapshot stays whole.
    pub async fn write_snapshot(&self, applied: &Applied) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(applied).map_err(std::io::Error::other)?;
        let root = self.root.clone();
        let path = self.snapshot_path();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            write_private(&path, &json)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Makes the snapshot readable by this user only if it is not (a
    /// gateway from before tenants' certificates wrote it 0644), and
    /// deletes snapshot writes a crash left unfinished.
    pub fn secure_snapshot(&self) -> std::io::Result<()> {
        let path = self.snapshot_path();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o777 != SNAPSHOT_MODE => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SNAPSHOT_MODE))?;
                tracing::warn!(
                    path = %path.display(),
                    was = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the persisted state is now readable by this user only"
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        let unfinished = format!(".{SNAPSHOT}.");
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(&unfinished) && n.ends_with(".tmp"))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
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

/// Writes `bytes` to `path` atomically (a temporary file beside it, synced,
/// then renamed over it), with mode 0600 from the start: the bytes are never
/// readable by others, not even for a moment.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SNAPSHOT_MODE)
            .open(&tmp)?;
        // The umask may have taken bits away; never added any.
        file.set_permissions(std::fs::Permissions::from_mode(SNAPSHOT_MODE))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_snapshot_is_written_0600_and_an_older_one_is_made_so() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(&root.path().join("state"));
        let path = dir.snapshot_path();
        dir.write_snapshot(&Applied::default()).await.unwrap();
        assert_eq!(mode(&path), 0o600);

        // Replacing a file others could read: the new one is 0600.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let applied = Applied {
            revision: 7,
            ..Applied::default()
        };
        dir.write_snapshot(&applied).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(dir.read_snapshot().unwrap().unwrap().revision, 7);

        // One left 0644 (by an older gateway) is made 0600 at boot, and an
        // unfinished write is deleted; other files stay.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let unfinished = root
            .path()
            .join("state/.snapshot.json.0123456789abcdef.tmp");
        std::fs::write(&unfinished, "{").unwrap();
        let other = root.path().join("state/notes.txt");
        std::fs::write(&other, "x").unwrap();
        dir.secure_snapshot().unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(!unfinished.exists());
        assert!(other.exists());
        assert_eq!(dir.read_snapshot().unwrap().unwrap().revision, 7);

        // Nothing there yet: nothing to do.
        StateDir::new(&root.path().join("none"))
            .secure_snapshot()
            .unwrap();
    }
}
