//! Validating uploads under bounds: [`Compiler`] admits each compile through
//! the [`CompileGate`] and runs it in a bounded child process
//! ([`crate::compile_worker`]) or, for tests and embedding, in-process.

use crate::compile_gate::{CompileGate, GateLimits, GateRefusal, TenantSlot};
use crate::compile_worker::{self, WorkerLimits};
use crate::error::ApiError;
use gannet_runtime::validate::ValidationError;
use gannet_runtime::{EngineConfig, Runtime, RuntimeConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where compiles run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileIsolation {
    /// In a child process with resource limits, killed when its upload is
    /// answered or dropped (the default).
    ChildProcess(WorkerLimits),
    /// On this process's blocking pool, with no time or memory bound (and a
    /// compile runs to its end even if its upload is dropped). For tests
    /// whose binary cannot be a worker.
    InProcess,
}

impl CompileIsolation {
    /// A child process of this executable, with the default bounds.
    pub fn this_executable() -> CompileIsolation {
        match std::env::current_exe() {
            Ok(exe) => CompileIsolation::ChildProcess(WorkerLimits::new(exe)),
            Err(e) => {
                tracing::warn!(error = %e, "the executable's path is unknown; compiling in-process, unbounded");
                CompileIsolation::InProcess
            }
        }
    }
}

/// How uploads are compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileConfig {
    /// Where compiles run.
    pub isolation: CompileIsolation,
    /// Compiles running at once (default: the number of CPUs).
    pub max_concurrent: usize,
    /// Compiles waiting for a slot at once (default: 4 × `max_concurrent`);
    /// past that an upload is answered 503 `compiler-busy`.
    pub max_queued: usize,
    /// Longest wait for a slot before 503 `compiler-busy`.
    pub queue_wait: Duration,
    /// Uploads of one tenant in progress at once (0: unbounded); past that
    /// 429 `too-many-uploads`.
    pub per_tenant: usize,
}

impl Default for CompileConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CompileConfig {
            isolation: CompileIsolation::this_executable(),
            max_concurrent: cpus,
            max_queued: 4 * cpus,
            queue_wait: Duration::from_secs(30),
            per_tenant: 2,
        }
    }
}

/// Validates uploads: admission, then the compile where the config says.
pub struct Compiler {
    gate: CompileGate,
    backend: Backend,
}

enum Backend {
    Child(WorkerLimits),
    InProcess(Arc<Runtime>),
}

impl Compiler {
    /// A compiler for `config`, using `data_dir` for its files. In-process,
    /// builds the validation runtime; in a child process, starts the worker
    /// once on a file that is not wasm and checks it answers so — the
    /// executable dispatches [`compile_worker::WORKER_ARG`], builds the
    /// validation engine and speaks the protocol — so a misconfigured
    /// worker fails the start, not every upload.
    pub async fn new(config: &CompileConfig, data_dir: &Path) -> anyhow::Result<Compiler> {
        let backend = match &config.isolation {
            CompileIsolation::ChildProcess(limits) => {
                probe(limits, &data_dir.join("tmp")).await?;
                Backend::Child(limits.clone())
            }
            CompileIsolation::InProcess => {
                // Validate on an engine whose pool has the gateways'
                // admission limits (and one slot), so an accepted component
                // loads everywhere.
                let runtime_config = RuntimeConfig {
                    engine: EngineConfig::validation(),
                    cache_dir: data_dir.join("cache"),
                };
                let runtime =
                    tokio::task::spawn_blocking(move || Runtime::new(runtime_config)).await??;
                Backend::InProcess(Arc::new(runtime))
            }
        };
        Ok(Compiler {
            gate: CompileGate::new(GateLimits {
                max_concurrent: config.max_concurrent,
                max_queued: config.max_queued,
                queue_wait: config.queue_wait,
                per_tenant: config.per_tenant,
            }),
            backend,
        })
    }

    /// One of the tenant's upload places, taken before the body is read:
    /// 429 `too-many-uploads` when it has them all, 503 `compiler-busy` when
    /// every compile slot and queue place is taken.
    pub fn enter(&self, tenant_id: i64) -> Result<TenantSlot, ApiError> {
        self.gate.enter(tenant_id).map_err(refused)
    }

    /// Validates the component in the file `component` once a compile slot
    /// is free (503 `compiler-busy` if none frees up in time): 422 with the
    /// reason when it is not a runnable component or passes a compile bound.
    pub async fn validate(&self, component: &Path) -> Result<(), ApiError> {
        let _permit = self.gate.permit().await.map_err(refused)?;
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Child(limits) => {
                match compile_worker::compile_in_child(limits, component).await {
                    Ok(verdict) => verdict.map_err(ApiError::Component),
                    Err(e) if e.is_limit() => Err(ApiError::CompileLimit(e.to_string())),
                    Err(e) => Err(ApiError::Internal(e.to_string())),
                }
            }
            Backend::InProcess(runtime) => {
                let runtime = runtime.clone();
                let path = component.to_path_buf();
                tokio::task::spawn_blocking(move || {
                    let bytes = std::fs::read(&path)?;
                    Ok::<_, std::io::Error>(runtime.validate(&bytes))
                })
                .await
                .map_err(|e| ApiError::Internal(format!("validation task: {e}")))??
                .map(|_info| ())
                .map_err(ApiError::Component)
            }
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "compiled an upload"
        );
        result
    }
}

/// Runs the worker on a file that is not wasm (under `dir`), with time to
/// spare, and expects that verdict.
async fn probe(limits: &WorkerLimits, dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = tempfile::Builder::new()
        .prefix("probe-")
        .tempfile_in(dir)
        .context("creating the compile worker's probe file")?
        .into_temp_path();
    std::fs::write(&file, b"not wasm").context("writing the compile worker's probe file")?;
    let patient = WorkerLimits {
        cpu: limits.cpu.max(Duration::from_secs(30)),
        wall: limits.wall.max(Duration::from_secs(30)),
        ..limits.clone()
    };
    let exe = limits.exe.display();
    match compile_worker::compile_in_child(&patient, &file).await {
        Ok(Err(ValidationError::NotWasm)) => Ok(()),
        Ok(other) => {
            anyhow::bail!("the compile worker {exe} answered {other:?} for a file that is not wasm")
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("the compile worker {exe} does not work")))
        }
    }
}

fn refused(r: GateRefusal) -> ApiError {
    match r {
        GateRefusal::Tenant(n) => ApiError::TooManyUploads(n),
        GateRefusal::Busy => ApiError::CompilerBusy,
    }
}
