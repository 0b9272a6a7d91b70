//! The store data of every instance, and the one place a store is made.

use crate::fair::cpu::GuestTurn;
use crate::fair::memory::MemoryAccount;
use crate::guest_log::{GuestLog, GuestStream};
use crate::limits::{CpuMeter, MemoryLimiter};
use crate::outbound::{OutboundHooks, OutboundPolicy};
use gannet_model::ResolvedLimits;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Most resources (streams, fields, pollables…) one instance may hold.
const MAX_TABLE_RESOURCES: usize = 100_000;

/// What one app's instances are given: env, limits, log sink, outbound policy.
/// Built once per app (not per request) and shared.
#[derive(Clone, Debug)]
pub struct InstanceSettings {
    /// Environment variables, the only ones the guest sees.
    pub env: Arc<[(String, String)]>,
    /// Limits enforced on each instance.
    pub limits: ResolvedLimits,
    /// Where the guest's stdout and stderr go.
    pub log: Arc<GuestLog>,
    /// Which hosts the guest may send HTTP requests to.
    pub outbound: Arc<OutboundPolicy>,
    /// Where linear memory is charged besides the instance's own limit:
    /// the gateway's shared budget ([`crate::fair::memory`]).
    pub memory_account: Option<MemoryAccount>,
}

/// Per-instance host state: the only store-data type.
pub struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    memory: MemoryLimiter,
    cpu: CpuMeter,
    turn: Option<Arc<GuestTurn>>,
}

impl Host {
    /// Whether the memory limit refused a grow in this instance.
    pub fn memory_limit_hit(&self) -> bool {
        self.memory.exceeded()
    }
    /// Bytes of linear memory the instance holds.
    pub fn memory_in_use(&self) -> usize {
        self.memory.in_use()
    }
    /// Runs this instance's guest code under the fair CPU scheduler: its
    /// epoch ticks yield through `turn` ([`GuestTurn::yield_turn`]).
    pub fn set_turn(&mut self, turn: Arc<GuestTurn>) {
        self.turn = Some(turn);
    }

    /// CPU time charged to the instance so far.
    pub fn cpu_used(&self) -> std::time::Duration {
        self.cpu.used()
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Makes a fresh store for one request, with the app's grants and limits.
///
/// Grants nothing beyond `settings`: no preopened directories, socket
/// creation and name lookup denied, stdin empty, env only from the app.
pub fn new_store(engine: &Engine, settings: &InstanceSettings) -> Store<Host> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(&settings.env)
        .stdout(GuestStream::stdout(settings.log.clone()))
        .stderr(GuestStream::stderr(settings.log.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    // The builder's default socket-address check refuses every address, so
    // even a socket created some other way can neither bind nor connect.
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_TABLE_RESOURCES);
    let host = Host {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table,
        hooks: OutboundHooks::new(settings.outbound.clone()),
        memory: MemoryLimiter::new(
            settings.limits.memory.bytes(),
            settings.memory_account.clone(),
        ),
        cpu: CpuMeter::new(settings.limits.cpu()),
        turn: None,
    };
    let mut store = Store::new(engine, host);
    store.limiter(|h| &mut h.memory);
    store.set_epoch_deadline(1);
    // Every tick of guest code: charge the CPU budget, then yield. Under
    // the fair scheduler ([`crate::fair::cpu`]) the yield hands the CPU
    // turn on and waits for the next one; the new deadline counts from
    // when the guest runs again.
    store.epoch_deadline_callback(|mut ctx| {
        ctx.data_mut().cpu.charge_tick()?;
        Ok(match &ctx.data().turn {
            Some(turn) => UpdateDeadline::YieldCustom(1, turn.yield_turn()),
            None => UpdateDeadline::Yield(1),
        })
    });
    store
}
