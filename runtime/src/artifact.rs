//! The on-disk cache of precompiled components.
//!
//! An artifact is `<dir>/<component sha256>-<engine key>.cwasm`, where the
//! engine key hashes the engine's precompile-compatibility hash, so a gateway
//! with other engine settings or another wasmtime never loads it. Beside it,
//! `….cwasm.sum` holds the sha256 of the `.cwasm` bytes. Both are written to a
//! temporary file, synced and renamed, so a reader never sees half a file.
//!
//! Executing a precompiled artifact trusts it completely, so one that is
//! truncated or corrupted must never be loaded: every load first checks the
//! file against its sum, and a mismatch (or a missing sum) discards the
//! artifact and recompiles from the component bytes.
//!
//! A component that cannot be prepared for a reason that would not change
//! on a retry (it does not compile, does not fit the pool, does not link)
//! is remembered as `<sha256>-<refusal key>.refused`, holding the reason;
//! the refusal key hashes the engine key and the pool's admission limits, so
//! a gateway with a wider pool tries again.

use crate::RuntimeError;
use crate::admission::AdmissionLimits;
use gannet_model::Sha256Digest;
use sha2::{Digest, Sha256};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a prepared component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A verified `.cwasm` from disk (mmapped, no compilation).
    Disk,
    /// Compiled now and written to disk.
    Compiled,
    /// Compiled now because the artifact on disk failed its checksum.
    RecompiledCorrupt,
}

/// A component loaded from (or just written to) the store.
pub struct Loaded {
    /// The component, mmapped from its `.cwasm`.
    pub component: Component,
    /// Size of the `.cwasm` file.
    pub artifact_bytes: usize,
    /// Whether it was compiled.
    pub source: ArtifactSource,
}

/// Precompiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    engine_key: String,
    refusal_key: String,
}

/// Longest refusal reason kept.
const MAX_REASON: usize = 4096;

impl ArtifactStore {
    /// Opens (creating if needed) the artifact directory for `engine`, whose
    /// pool admits `admits` (`None`: it allocates on demand).
    pub fn open(
        dir: &Path,
        engine: &Engine,
        admits: Option<AdmissionLimits>,
    ) -> Result<Self, RuntimeError> {
        fs::create_dir_all(dir)
            .map_err(|e| RuntimeError::io(format!("creating cache dir {}", dir.display()), e))?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        admits.hash(&mut h);
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
            engine_key,
            refusal_key: format!("{:016x}", h.finish()),
        })
    }

    fn refusal_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.refused", self.refusal_key))
    }

    /// Why `digest` was refused before by this engine and pool, if it was.
    pub fn refusal(&self, digest: &Sha256Digest) -> Option<String> {
        use std::io::Read;
        let mut reason = String::new();
        fs::File::open(self.refusal_path(digest))
            .ok()?
            .take(MAX_REASON as u64)
            .read_to_string(&mut reason)
            .ok()?;
        Some(reason)
    }

    /// Remembers that `digest` cannot be prepared, and why. Best effort: a
    /// refusal that cannot be written is only computed again.
    pub fn remember_refusal(&self, digest: &Sha256Digest, reason: &str) {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        if let Err(e) = write_atomic(&self.refusal_path(digest), &reason.as_bytes()[..end]) {
            tracing::warn!(digest = %digest.short(), error = %e, "refusal not remembered");
        }
    }

    /// Deletes everything kept for `digest`: artifact, checksum, refusal.
    /// Returns the bytes freed.
    pub fn remove(&self, digest: &Sha256Digest) -> u64 {
        let mut freed = 0;
        for path in [
            self.path(digest),
            self.sum_path(digest),
            self.refusal_path(digest),
        ] {
            let len = fs::metadata(&path).map_or(0, |m| m.len());
            if fs::remove_file(&path).is_ok() {
                freed += len;
            }
        }
        freed
    }

    /// Path of `digest`'s artifact.
    pub fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    fn sum_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm.sum", self.engine_key))
    }

    /// Loads `digest` from disk if a verified artifact exists, otherwise
    /// compiles the bytes from `source` (checking they hash to `digest`),
    /// writes the artifact atomically and loads that. Blocking.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: Sha256Digest,
        source: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<Loaded, RuntimeError> {
        let path = self.path(&digest);
        let sum_path = self.sum_path(&digest);
        let mut compiled_because_corrupt = false;
        match self.verify(&path, &sum_path) {
            Verified::Ok(len) => match self.deserialize(engine, &path) {
                Ok(component) => {
                    return Ok(Loaded {
                        component,
                        artifact_bytes: len,
                        source: ArtifactSource::Disk,
                    });
                }
                Err(e) => {
                    // Verified bytes that do not deserialize: written by an
                    // incompatible build. Recompile over them.
                    tracing::warn!(artifact = %path.display(), error = %e, "artifact does not load; recompiling");
                    compiled_because_corrupt = true;
                }
            },
            Verified::Missing => {}
            Verified::Corrupt(why) => {
                tracing::warn!(artifact = %path.display(), reason = why, "corrupt artifact discarded; recompiling");
                compiled_because_corrupt = true;
            }
        }
        let _ = fs::remove_file(&sum_path);
        let _ = fs::remove_file(&path);

        let bytes = source().map_err(|e| RuntimeError::io("reading component", e))?;
        let actual = Sha256Digest::of(&bytes);
        if actual != digest {
            return Err(RuntimeError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let cwasm = engine
            .precompile_component(&bytes)
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        drop(bytes);
        let sum = hex(&Sha256::digest(&cwasm));
        let io = |e| RuntimeError::io(format!("writing {}", path.display()), e);
        write_atomic(&path, &cwasm).map_err(io)?;
        write_atomic(&sum_path, sum.as_bytes()).map_err(io)?;
        let component = self.deserialize(engine, &path)?;
        Ok(Loaded {
            component,
            artifact_bytes: cwasm.len(),
            source: if compiled_because_corrupt {
                ArtifactSource::RecompiledCorrupt
            } else {
                ArtifactSource::Compiled
            },
        })
    }

    fn verify(&self, path: &Path, sum_path: &Path) -> Verified {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Verified::Missing,
            Err(_) => return Verified::Corrupt("artifact unreadable"),
        };
        let Ok(expected) = fs::read_to_string(sum_path) else {
            return Verified::Corrupt("checksum file missing");
        };
        if hex(&Sha256::digest(&bytes)) != expected.trim() {
            return Verified::Corrupt("checksum mismatch");
        }
        Verified::Ok(bytes.len())
    }

    fn deserialize(&self, engine: &Engine, path: &Path) -> Result<Component, RuntimeError> {
        // SAFETY: `deserialize_file` trusts the file to be a `.cwasm` produced
        // by this engine configuration and to stay unchanged while mapped.
        // Every file reaching here was either written by `precompile_component`
        // of this engine a moment ago, or just verified against the checksum
        // recorded when it was written; its name carries the engine's
        // compatibility key; and the cache directory belongs to the gateway,
        // whose writes are all rename-into-place (never in-place edits).
        unsafe { Component::deserialize_file(engine, path) }
            .map_err(|e| RuntimeError::Compile(format!("loading {}: {e:#}", path.display())))
    }
}

enum Verified {
    Ok(usize),
    Missing,
    Corrupt(&'static str),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` through a synced temporary file (a random name
/// beside it) and a rename, then syncs the directory: a reader sees the old
/// file or the new one, never half of one, and after a crash the new one is
/// either there whole or not at all. On failure the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", random_suffix()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// A value that differs between calls and processes, for temporary names.
fn random_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = DefaultHasher::new();
    std::process::id().hash(&mut h);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish()
}
