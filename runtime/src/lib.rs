//! gannet-runtime: the one definition of how Gannet runs WebAssembly.
//!
//! It owns the [`wasmtime::Engine`] configuration (pooling allocator,
//! copy-on-write memory images, epoch interruption), the linker and the
//! interfaces a guest may import ([`linker`]), the per-instance host state and
//! its limits ([`host`], [`limits`]), the on-disk cache of precompiled
//! artifacts ([`artifact`]) and the outbound-HTTP policy ([`outbound`]).
//!
//! The gateway uses it to execute guests and the control API to validate
//! uploads, so both agree on what a valid component is. It does no networking
//! of its own except the guest's outbound requests, and never touches a
//! database.
//!
//! How to embed it:
//! 1. [`Runtime::new`] builds the engine, starts the epoch ticker and the
//!    linker once per process.
//! 2. [`Runtime::prepare`] turns component bytes into a [`Prepared`] (loading
//!    the precompiled artifact from disk, or compiling it once). It blocks:
//!    call it off the async executor.
//! 3. Per request, [`host::new_store`] makes a fresh store with the app's
//!    limits, and [`Prepared::pre`] instantiates it.
#![deny(missing_docs)]

pub mod admission;
pub mod artifact;
pub mod engine;
pub mod epoch;
pub mod error;
pub mod fair;
pub mod guest_log;
pub mod host;
pub mod limits;
pub mod linker;
pub mod outbound;
pub mod validate;

pub use admission::{AdmissionLimits, Footprint};
pub use artifact::{ArtifactSource, ArtifactStore};
pub use engine::{AllocatorKind, EngineConfig, PoolConfig};
pub use error::{GuestFailure, RuntimeError};
pub use host::{Host, InstanceSettings};

use gannet_model::Sha256Digest;
use std::path::PathBuf;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Everything needed to build a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Engine and pooling-allocator settings.
    pub engine: EngineConfig,
    /// Directory for precompiled `.cwasm` artifacts.
    pub cache_dir: PathBuf,
}

/// The process-wide runtime: one engine, one epoch ticker, one linker, one
/// artifact store. Cheap to share behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    allocator: AllocatorKind,
    admits: AdmissionLimits,
    artifacts: ArtifactStore,
    // Dropped last: deadlines must keep firing while anything still runs.
    _ticker: epoch::EpochTicker,
}

/// A component ready to instantiate: compiled, linked and pre-instantiated.
#[derive(Clone)]
pub struct Prepared {
    /// The pre-instantiated `wasi:http/proxy` component.
    pub pre: ProxyPre<Host>,
    /// The component's digest.
    pub digest: Sha256Digest,
    /// Size of the precompiled artifact, for cache weighting.
    pub size_bytes: usize,
    /// What each instance takes from the pool's totals.
    pub footprint: Footprint,
}

impl Runtime {
    /// Builds the engine (falling back to on-demand allocation with a warning
    /// when the pool's address space cannot be reserved), starts the epoch
    /// ticker and creates the artifact directory.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let (engine, allocator) = engine::build_engine(&config.engine)?;
        let linker = linker::build_linker(&engine)?;
        let admits = match allocator {
            AllocatorKind::Pooling => Some(config.engine.admits()),
            AllocatorKind::OnDemand => None,
        };
        let artifacts = ArtifactStore::open(&config.cache_dir, &engine, admits)?;
        let ticker = epoch::EpochTicker::start(engine.clone(), limits::EPOCH_TICK);
        Ok(Runtime {
            engine,
            linker,
            allocator,
            admits: config.engine.admits(),
            artifacts,
            _ticker: ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with every granted interface.
    pub fn linker(&self) -> &Linker<Host> {
        &self.linker
    }

    /// Validates an upload against the platform's admission limits and this
    /// runtime's engine and linker. Blocking (compiles).
    pub fn validate(
        &self,
        bytes: &[u8],
    ) -> Result<validate::ComponentInfo, validate::ValidationError> {
        validate::validate(
            &self.engine,
            &self.linker,
            &AdmissionLimits::PLATFORM,
            bytes,
        )
    }

    /// Which instance allocator the engine ended up with.
    pub fn allocator(&self) -> AllocatorKind {
        self.allocator
    }

    /// The on-disk artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    /// Loads `digest`'s precompiled artifact from disk, or compiles the bytes
    /// that `source` returns, then links and pre-instantiates it.
    ///
    /// A component that fails for a reason that would fail again (it does
    /// not compile, does not fit this engine's pool, does not link) is
    /// remembered as refused in the artifact store, and later calls return
    /// [`RuntimeError::Refused`] without compiling it again.
    ///
    /// `source` is called to compile, and to read the component's
    /// [`Footprint`] when the artifact comes from disk.
    ///
    /// Blocking (file I/O, compilation): call it from `spawn_blocking`.
    pub fn prepare(
        &self,
        digest: Sha256Digest,
        source: impl Fn() -> std::io::Result<Vec<u8>>,
    ) -> Result<(Prepared, ArtifactSource), RuntimeError> {
        if let Some(reason) = self.artifacts.refusal(&digest) {
            return Err(RuntimeError::Refused(reason));
        }
        let result = self.load_and_link(digest, source);
        if let Err(e) = &result
            && e.is_deterministic()
        {
            self.artifacts.remember_refusal(&digest, &e.to_string());
        }
        result
    }

    fn load_and_link(
        &self,
        digest: Sha256Digest,
        source: impl Fn() -> std::io::Result<Vec<u8>>,
    ) -> Result<(Prepared, ArtifactSource), RuntimeError> {
        let mut footprint = None;
        let loaded = self.artifacts.load_or_compile(&self.engine, digest, || {
            let bytes = source()?;
            footprint = Some(Footprint::of(&bytes, &self.admits));
            Ok(bytes)
        })?;
        // From disk: read the component again (once per load, not per
        // request); if it is gone, assume the most a component may take.
        let footprint = footprint.unwrap_or_else(|| match source() {
            Ok(bytes) => Footprint::of(&bytes, &self.admits),
            Err(_) => Footprint::most(&self.admits),
        });
        let instance_pre = self
            .linker
            .instantiate_pre(&loaded.component)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let pre =
            ProxyPre::new(instance_pre).map_err(|e| RuntimeError::NotAProxy(format!("{e:#}")))?;
        Ok((
            Prepared {
                pre,
                digest,
                size_bytes: loaded.artifact_bytes,
                footprint,
            },
            loaded.source,
        ))
    }
}
