//! Errors: what went wrong building or loading things ([`RuntimeError`]) and
//! how a guest invocation failed ([`GuestFailure`]).

use crate::limits::{CpuLimitExceeded, WallLimitExceeded};
use wasmtime::Trap;

/// A failure of the runtime itself: configuration, compilation, linking, I/O.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be built from its configuration.
    #[error("engine configuration: {0}")]
    Engine(String),
    /// The bytes are not a valid component, or do not compile.
    #[error("component does not compile: {0}")]
    Compile(String),
    /// The component imports something the platform does not provide.
    #[error("component cannot be linked: {0}")]
    Link(String),
    /// The component does not export `wasi:http/incoming-handler`.
    #[error("component is not a wasi:http proxy: {0}")]
    NotAProxy(String),
    /// Refused before, for a reason that does not change (it did not
    /// compile, fit the pool or link): remembered, not compiled again.
    #[error("{0} (remembered; not compiled again)")]
    Refused(String),
    /// The bytes do not hash to the digest they were named by.
    #[error("component bytes do not match digest {expected}: got {actual}")]
    DigestMismatch {
        /// Digest that was asked for.
        expected: String,
        /// Digest of the bytes found.
        actual: String,
    },
    /// Reading or writing the artifact cache or the component failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether preparing the same bytes with the same engine would fail the
    /// same way: compiling, fitting the pool, linking. Not: I/O, or bytes
    /// that do not match their digest (fetch them again).
    pub fn is_deterministic(&self) -> bool {
        matches!(
            self,
            RuntimeError::Compile(_)
                | RuntimeError::Link(_)
                | RuntimeError::NotAProxy(_)
                | RuntimeError::Refused(_)
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Why a guest invocation ended without a normal result. Each kind has its
/// own status at the gateway and its own label in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFailure {
    /// Used more CPU time than its limit (epoch deadline).
    CpuLimit,
    /// Ran longer than its wall-clock limit.
    WallLimit,
    /// Trapped after the memory limit refused a `memory.grow`.
    MemoryLimit,
    /// Trapped: `unreachable` (a Rust panic), out-of-bounds access, stack
    /// overflow and the like.
    Trap,
    /// A host-side error while running the guest.
    Host,
}

impl GuestFailure {
    /// Classifies an error returned by a guest call. `memory_limit_hit` is
    /// whether the store's limiter refused a grow during this invocation.
    pub fn classify(err: &wasmtime::Error, memory_limit_hit: bool) -> GuestFailure {
        if err.downcast_ref::<CpuLimitExceeded>().is_some() {
            return GuestFailure::CpuLimit;
        }
        if err.downcast_ref::<WallLimitExceeded>().is_some() {
            return GuestFailure::WallLimit;
        }
        let trapped = err.downcast_ref::<Trap>().is_some();
        if memory_limit_hit {
            return GuestFailure::MemoryLimit;
        }
        if trapped {
            GuestFailure::Trap
        } else {
            GuestFailure::Host
        }
    }

    /// A short stable name, used as a metric label and in `gannet-error`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestFailure::CpuLimit => "cpu-limit",
            GuestFailure::WallLimit => "wall-limit",
            GuestFailure::MemoryLimit => "memory-limit",
            GuestFailure::Trap => "trap",
            GuestFailure::Host => "host-error",
        }
    }
}
