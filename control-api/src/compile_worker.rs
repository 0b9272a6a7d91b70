//! Validating an upload in a child process: the same binary started as
//! `<exe> __compile-worker <component-file>`, so a compile that runs too
//! long, uses too much memory or crashes takes only itself down, and is
//! killed when the upload that asked for it is answered, times out or is
//! dropped.
//!
//! The worker ([`run_worker`]) reads the component, validates it with
//! [`gannet_runtime::validate::validate`] on the platform's validation
//! engine ([`EngineConfig::validation`]) and linker — exactly what the
//! in-process path runs — and writes the outcome as one JSON document to
//! stdout: `{"Ok":null}`, or `{"Err":{"kind":…,"detail":…}}` with the
//! validation error. It exits 0 when the component is valid, 1 when it is
//! not, 2 when it could not run.
//!
//! The parent ([`compile_in_child`]) starts it with `kill_on_drop`, lowered
//! priority and resource limits set between fork and exec:
//! - `RLIMIT_DATA` (memory): heap and private writable mappings. Not
//!   `RLIMIT_AS`: the validation engine's pool reserves the address space of
//!   one instance at the admission limits — 8 memories of 4 GiB plus guards,
//!   over 32 GiB, `PROT_NONE` and never touched while validating — so an
//!   address-space limit low enough to matter would make the pool fail
//!   (and the engine fall back to on-demand allocation, which no longer
//!   checks the per-component aggregates). `RLIMIT_DATA` counts none of that
//!   reservation and every byte Cranelift allocates;
//! - `RLIMIT_CPU` (CPU seconds, all threads): `SIGXCPU` at the limit,
//!   `SIGKILL` a second later;
//! - `RLIMIT_CORE` 0: a killed compile leaves no core file;
//! - nice (default +10): compiles yield the CPU to the API's requests;
//!
//! and bounds its wall-clock time itself (killing and reaping the worker).

use gannet_model::ByteSize;
use gannet_runtime::validate::ValidationError;
use gannet_runtime::{AdmissionLimits, EngineConfig};
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The first argument that makes the binary a compile worker.
pub const WORKER_ARG: &str = "__compile-worker";

/// Most bytes of the worker's report read.
const REPORT_CAP: usize = 1 << 20;
/// Most bytes of the worker's stderr kept (for the log).
const STDERR_CAP: usize = 16 << 10;

/// How a worker runs: which executable, and its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerLimits {
    /// The executable started as `<exe> __compile-worker <file>`: a binary
    /// whose `main` calls [`dispatch`] first (`gannet-control-api`,
    /// `gannet`).
    pub exe: PathBuf,
    /// `RLIMIT_DATA`, bytes: heap and private writable mappings.
    pub memory_bytes: u64,
    /// `RLIMIT_CPU`, whole seconds of CPU time across all threads (at least 1).
    pub cpu: Duration,
    /// Wall-clock time from start to exit.
    pub wall: Duration,
    /// Nice value of the worker (0–19; higher yields more).
    pub nice: i32,
}

impl WorkerLimits {
    /// Default memory bound: 4 GiB of heap (Cranelift on a 32 MiB
    /// component needs a fraction of it).
    pub const DEFAULT_MEMORY: u64 = 4 << 30;
    /// Default CPU bound.
    pub const DEFAULT_CPU: Duration = Duration::from_secs(120);
    /// Default wall-clock bound.
    pub const DEFAULT_WALL: Duration = Duration::from_secs(180);
    /// Default nice value.
    pub const DEFAULT_NICE: i32 = 10;

    /// The default bounds for `exe`.
    pub fn new(exe: PathBuf) -> WorkerLimits {
        WorkerLimits {
            exe,
            memory_bytes: Self::DEFAULT_MEMORY,
            cpu: Self::DEFAULT_CPU,
            wall: Self::DEFAULT_WALL,
            nice: Self::DEFAULT_NICE,
        }
    }
}

/// Why a worker gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum WorkerFailure {
    /// It ran past its wall-clock bound and was killed.
    #[error(
        "compiling the component took longer than the {} s allowed; it was stopped",
        .0.as_secs_f64()
    )]
    TimedOut(Duration),
    /// The kernel stopped it at its CPU bound (or killed it: also what the
    /// out-of-memory killer does).
    #[error(
        "compiling the component used more than the {} s of CPU time allowed (or ran out of memory); it was stopped",
        .0.as_secs()
    )]
    CpuLimit(Duration),
    /// An allocation failed at its memory bound.
    #[error("compiling the component needed more than the {0} of memory allowed; it was stopped")]
    MemoryLimit(ByteSize),
    /// It could not be started.
    #[error("starting the compile worker {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: String,
        /// The error.
        source: std::io::Error,
    },
    /// Waiting for it failed.
    #[error("waiting for the compile worker: {0}")]
    Wait(std::io::Error),
    /// It ended without a readable verdict.
    #[error("the compile worker failed ({status}): {stderr}")]
    Crashed {
        /// How it ended.
        status: String,
        /// The start of its stderr.
        stderr: String,
    },
}

impl WorkerFailure {
    /// Whether the component passed a bound (the tenant's problem, 422),
    /// rather than the platform failing (500).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            WorkerFailure::TimedOut(_) | WorkerFailure::CpuLimit(_) | WorkerFailure::MemoryLimit(_)
        )
    }
}

/// A [`ValidationError`] on the wire between worker and parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
enum WireError {
    NotWasm,
    CoreModule,
    Malformed(String),
    MissingHandler(String),
    RefusedImports(Vec<String>),
    Admission(String),
    Compile(String),
    Link(String),
}

impl From<ValidationError> for WireError {
    fn from(e: ValidationError) -> Self {
        match e {
            ValidationError::NotWasm => WireError::NotWasm,
            ValidationError::CoreModule => WireError::CoreModule,
            ValidationError::Malformed(s) => WireError::Malformed(s),
            ValidationError::MissingHandler(s) => WireError::MissingHandler(s),
            ValidationError::RefusedImports(v) => WireError::RefusedImports(v),
            ValidationError::Admission(s) => WireError::Admission(s),
            ValidationError::Compile(s) => WireError::Compile(s),
            ValidationError::Link(s) => WireError::Link(s),
        }
    }
}

impl From<WireError> for ValidationError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotWasm => ValidationError::NotWasm,
            WireError::CoreModule => ValidationError::CoreModule,
            WireError::Malformed(s) => ValidationError::Malformed(s),
            WireError::MissingHandler(s) => ValidationError::MissingHandler(s),
            WireError::RefusedImports(v) => ValidationError::RefusedImports(v),
            WireError::Admission(s) => ValidationError::Admission(s),
            WireError::Compile(s) => ValidationError::Compile(s),
            WireError::Link(s) => ValidationError::Link(s),
        }
    }
}

/// The worker's verdict.
type Report = Result<(), WireError>;

// ------------------------------------------------------------------ worker

/// If this process was started as a compile worker (first argument
/// [`WORKER_ARG`]), runs it and exits; otherwise returns at once. Call it
/// first in `main`, before any runtime or thread is started.
pub fn dispatch() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(OsStr::new(WORKER_ARG)) {
        run_worker(args.next())
    }
}

/// The worker: validates the component in the file `path`, writes the
/// verdict to stdout and exits (0 valid, 1 invalid, 2 could not run).
pub fn run_worker(path: Option<OsString>) -> ! {
    // Diagnostics (a pool that could not be reserved) go to stderr, which
    // the parent logs.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let code = match verdict(path) {
        Ok(report) => {
            let code = if report.is_ok() { 0 } else { 1 };
            let mut out = std::io::stdout().lock();
            match serde_json::to_writer(&mut out, &report)
                .and_then(|()| out.flush().map_err(serde_json::Error::io))
            {
                Ok(()) => code,
                Err(e) => {
                    eprintln!("compile worker: writing the verdict: {e}");
                    2
                }
            }
        }
        Err(e) => {
            eprintln!("compile worker: {e}");
            2
        }
    };
    std::process::exit(code)
}

/// Reads and validates; an error is the worker's own failure.
fn verdict(path: Option<OsString>) -> Result<Report, String> {
    let path = path.ok_or_else(|| format!("usage: {WORKER_ARG} <component-file>"))?;
    let bytes =
        std::fs::read(&path).map_err(|e| format!("reading {}: {e}", Path::new(&path).display()))?;
    let config = EngineConfig::validation();
    let (engine, allocator) = gannet_runtime::engine::build_engine(&config)
        .map_err(|e| format!("building the validation engine: {e}"))?;
    if allocator != gannet_runtime::AllocatorKind::Pooling {
        tracing::warn!("validating without the pool: per-component aggregates are not checked");
    }
    let linker = gannet_runtime::linker::build_linker(&engine)
        .map_err(|e| format!("building the linker: {e}"))?;
    // What `Runtime::validate` runs, on the same engine config and linker.
    let result =
        gannet_runtime::validate::validate(&engine, &linker, &AdmissionLimits::PLATFORM, &bytes);
    Ok(result.map(|_info| ()).map_err(WireError::from))
}

// ------------------------------------------------------------------ parent

/// Validates the component in the file `component` in a worker bounded by
/// `limits`: the validation verdict, or why there is none. Dropping the
/// future kills the worker.
pub async fn compile_in_child(
    limits: &WorkerLimits,
    component: &Path,
) -> Result<Result<(), ValidationError>, WorkerFailure> {
    let mut cmd = tokio::process::Command::new(&limits.exe);
    cmd.arg(WORKER_ARG)
        .arg(component)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A dropped upload (client gone, request timed out) kills its compile.
        .kill_on_drop(true)
        // The worker handles untrusted input: it gets no secrets from the
        // environment (database URL, operator token).
        .env_clear();
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    set_bounds(&mut cmd, limits);
    let mut child = cmd.spawn().map_err(|source| WorkerFailure::Spawn {
        exe: limits.exe.display().to_string(),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let outcome = tokio::time::timeout(limits.wall, async {
        tokio::join!(
            child.wait(),
            read_capped(stdout, REPORT_CAP),
            read_capped(stderr, STDERR_CAP)
        )
    })
    .await;
    let (status, report, stderr) = match outcome {
        Ok((status, report, stderr)) => (status.map_err(WorkerFailure::Wait)?, report, stderr),
        Err(_) => {
            // Kill and reap: no worker outlives its upload.
            if let Err(e) = child.kill().await {
                tracing::warn!(error = %e, "killing a compile worker past its time failed");
            }
            return Err(WorkerFailure::TimedOut(limits.wall));
        }
    };
    let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
    if !stderr.is_empty() {
        tracing::warn!(%status, stderr = %stderr, "compile worker said");
    }
    if let Some(failure) = limit_passed(status, &stderr, limits) {
        return Err(failure);
    }
    match serde_json::from_slice::<Report>(&report) {
        Ok(report) if status.code().is_some_and(|c| c == 0 || c == 1) => {
            Ok(report.map_err(ValidationError::from))
        }
        _ => Err(WorkerFailure::Crashed {
            status: status.to_string(),
            stderr: if stderr.is_empty() {
                "no output".into()
            } else {
                stderr
            },
        }),
    }
}

/// Which bound, if any, ended the worker.
fn limit_passed(status: ExitStatus, stderr: &str, limits: &WorkerLimits) -> Option<WorkerFailure> {
    use std::os::unix::process::ExitStatusExt;
    match status.signal()? {
        libc::SIGXCPU | libc::SIGKILL => Some(WorkerFailure::CpuLimit(limits.cpu)),
        // Rust aborts when an allocation fails.
        libc::SIGABRT if stderr.contains("memory allocation of") => {
            Some(WorkerFailure::MemoryLimit(ByteSize(limits.memory_bytes)))
        }
        _ => None,
    }
}

/// Reads `reader` to its end, keeping the first `cap` bytes (reading on, so
/// the worker never blocks on a full pipe).
async fn read_capped(reader: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
            }
        }
    }
}

/// The resource limit resource type of this libc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// Sets the worker's rlimits and priority between fork and exec.
fn set_bounds(cmd: &mut tokio::process::Command, limits: &WorkerLimits) {
    let memory = limits.memory_bytes;
    let cpu = limits.cpu.as_secs().max(1);
    let nice = limits.nice;
    let bound = move || -> std::io::Result<()> {
        set_rlimit(libc::RLIMIT_CORE, 0, 0)?;
        set_rlimit(libc::RLIMIT_DATA, memory, memory)?;
        // SIGXCPU at the soft limit, SIGKILL a second later.
        set_rlimit(libc::RLIMIT_CPU, cpu, cpu.saturating_add(1))?;
        // Best effort: if it cannot be lowered, the worker keeps the
        // parent's priority.
        // SAFETY: a plain system call on the calling process.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        Ok(())
    };
    // SAFETY: `bound` runs in the forked child before exec; it makes only
    // async-signal-safe system calls (getrlimit, setrlimit, setpriority),
    // allocates nothing (an OS error is stored inline) and takes no lock.
    unsafe {
        cmd.pre_exec(bound);
    }
}

/// Lowers `resource` to `soft`/`hard`, never above the current hard limit
/// (which an unprivileged process cannot raise). Async-signal-safe.
// `rlim_t` is u64 on 64-bit Linux, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
fn set_rlimit(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let hard = (hard as libc::rlim_t).min(current.rlim_max);
    let wanted = libc::rlimit {
        rlim_cur: (soft as libc::rlim_t).min(hard),
        rlim_max: hard,
    };
    // SAFETY: `wanted` is a valid rlimit.
    if unsafe { libc::setrlimit(resource, &wanted) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_cross_the_wire_intact() {
        let errors = || {
            [
                ValidationError::NotWasm,
                ValidationError::CoreModule,
                ValidationError::Malformed("eof".into()),
                ValidationError::MissingHandler("none".into()),
                ValidationError::RefusedImports(vec!["fastly:api/http-req".into()]),
                ValidationError::Admission("too many memories".into()),
                ValidationError::Compile("bad".into()),
                ValidationError::Link("missing".into()),
            ]
        };
        for (e, expected) in errors().into_iter().zip(errors()) {
            let report: Report = Err(e.into());
            let text = serde_json::to_string(&report).unwrap();
            let back: Report = serde_json::from_str(&text).unwrap();
            assert_eq!(ValidationError::from(back.unwrap_err()), expected, "{text}");
        }
        let ok: Report = Ok(());
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"Ok":null}"#);
    }

    #[test]
    fn kills_by_the_kernel_are_named() {
        use std::os::unix::process::ExitStatusExt;
        let limits = WorkerLimits::new("/nonexistent".into());
        let by = |signal: i32| ExitStatus::from_raw(signal);
        assert!(matches!(
            limit_passed(by(libc::SIGXCPU), "", &limits),
            Some(WorkerFailure::CpuLimit(_))
        ));
        assert!(matches!(
            limit_passed(
                by(libc::SIGABRT),
                "memory allocation of 4096 bytes failed",
                &limits
            ),
            Some(WorkerFailure::MemoryLimit(_))
        ));
        assert!(limit_passed(by(libc::SIGABRT), "assertion failed", &limits).is_none());
        assert!(limit_passed(ExitStatus::from_raw(1 << 8), "", &limits).is_none());
    }

    #[tokio::test]
    async fn a_missing_worker_is_a_spawn_failure() {
        let limits = WorkerLimits::new("/nonexistent/gannet-worker".into());
        let e = compile_in_child(&limits, Path::new("/dev/null"))
            .await
            .unwrap_err();
        assert!(matches!(e, WorkerFailure::Spawn { .. }), "{e}");
        assert!(!e.is_limit());
    }
}
