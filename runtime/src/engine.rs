//! The engine: one per process, configured for running many short-lived
//! instances of many components.

use crate::RuntimeError;
use crate::admission::AdmissionLimits;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Pool sizes and reuse policy for the pooling instance allocator.
///
/// What one component may hold (memories and tables per module, table
/// elements, core instances, instance record sizes) is [`AdmissionLimits`]:
/// the same value the upload validator checks, so whatever the control API
/// accepts loads here. The totals bound how many instances (requests) run at
/// once; [`PoolConfig::for_instances`] sizes them, never below what one
/// admitted component needs.
///
/// The defaults are sized for the large components that mainstream
/// toolchains produce (componentize-py ~21 MB, componentize-js ~12 MB), with
/// enough resident memory kept per slot that re-instantiating such a guest
/// does not fault its heap back in page by page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// What one component may hold. At least [`AdmissionLimits::PLATFORM`]:
    /// a gateway may admit more than the platform, never less.
    pub admits: AdmissionLimits,
    /// Component instances alive at once (one per in-flight request).
    pub total_component_instances: u32,
    /// Core instances alive at once, across all components.
    pub total_core_instances: u32,
    /// Linear memories alive at once.
    pub total_memories: u32,
    /// Tables alive at once.
    pub total_tables: u32,
    /// Async stacks alive at once.
    pub total_stacks: u32,
    /// Bytes of each memory slot kept resident (reset with memset rather than
    /// decommitted) when an instance ends.
    pub linear_memory_keep_resident: usize,
    /// Bytes of each table slot kept resident.
    pub table_keep_resident: usize,
    /// Bytes of each async stack zeroed with memset (and kept resident)
    /// when an instance ends; the rest of the stack is decommitted. Stacks
    /// are always zeroed before reuse.
    pub stack_keep_resident: usize,
    /// Unused slots kept warm (with their image mapped) for reuse.
    pub max_unused_warm_slots: u32,
    /// Slots decommitted together in one batch.
    pub decommit_batch_size: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig::for_instances(1000)
    }
}

impl PoolConfig {
    /// A pool for `instances` concurrent instances of platform-admitted
    /// components: 10 core instances, 2 memories and 4 tables per instance
    /// on average (what a componentize-py app uses), and never fewer than
    /// one component at the admission limits needs.
    pub fn for_instances(instances: u32) -> PoolConfig {
        PoolConfig {
            admits: AdmissionLimits::PLATFORM,
            total_component_instances: instances,
            total_core_instances: instances.saturating_mul(10),
            total_memories: instances.saturating_mul(2),
            total_tables: instances.saturating_mul(4),
            total_stacks: instances,
            linear_memory_keep_resident: 64 << 20,
            table_keep_resident: 1 << 20,
            stack_keep_resident: 16 << 10,
            max_unused_warm_slots: 200,
            decommit_batch_size: 16,
        }
        .with_floors()
    }

    /// The same pool with every total at least what one component at the
    /// admission limits takes, so an admitted component can always run.
    pub fn with_floors(mut self) -> PoolConfig {
        let a = &self.admits;
        self.total_component_instances = self.total_component_instances.max(1);
        self.total_core_instances = self
            .total_core_instances
            .max(a.core_instances_per_component);
        self.total_memories = self.total_memories.max(a.memories_per_component);
        self.total_tables = self
            .total_tables
            .max(a.tables_per_component)
            .max(a.tables_per_module);
        self.total_stacks = self.total_stacks.max(1);
        self
    }
}

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Pooling allocator settings; `None` uses on-demand allocation.
    pub pool: Option<PoolConfig>,
    /// Wasm stack limit per instance, bytes.
    pub max_wasm_stack: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pool: Some(PoolConfig::default()),
            max_wasm_stack: 1 << 20,
        }
    }
}

impl EngineConfig {
    /// The engine the control API validates uploads with: the gateway's
    /// engine settings and admission limits, with a pool of one instance, so
    /// compiling a component checks exactly what a gateway's pool checks
    /// (core instances, memories and tables per component, instance record
    /// sizes) while reserving the address space of a few slots, not a
    /// thousand.
    pub fn validation() -> EngineConfig {
        EngineConfig {
            pool: Some(
                PoolConfig {
                    total_core_instances: 0,
                    total_memories: 0,
                    total_tables: 0,
                    linear_memory_keep_resident: 0,
                    table_keep_resident: 0,
                    stack_keep_resident: 0,
                    max_unused_warm_slots: 0,
                    decommit_batch_size: 1,
                    ..PoolConfig::for_instances(1)
                }
                .with_floors(),
            ),
            ..EngineConfig::default()
        }
    }

    /// What an engine built from this config admits: its pool's limits, or
    /// nothing beyond the platform's when it allocates on demand (which fits
    /// any component).
    pub fn admits(&self) -> AdmissionLimits {
        self.pool
            .as_ref()
            .map_or(AdmissionLimits::PLATFORM, |p| p.admits)
    }
}

/// Which allocator the engine runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Pre-reserved slots reused across instances.
    Pooling,
    /// mmap per instance (fallback when the pool cannot be reserved).
    OnDemand,
}

fn base_config(config: &EngineConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.memory_init_cow(true);
    c.max_wasm_stack(config.max_wasm_stack);
    // Async stacks must hold the wasm stack plus host frames.
    c.async_stack_size(config.max_wasm_stack + (1 << 20));
    c.parallel_compilation(true);
    // Zero an async stack before another instance gets it: a guest's stack
    // frames never reach the next request (of any tenant).
    c.async_stack_zeroing(true);
    c
}

fn pooling(pool: &PoolConfig) -> PoolingAllocationConfig {
    let pool = pool.clone().with_floors();
    let a = &pool.admits;
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(pool.total_component_instances)
        .total_core_instances(pool.total_core_instances)
        .total_memories(pool.total_memories)
        .total_tables(pool.total_tables)
        .total_stacks(pool.total_stacks)
        .max_core_instances_per_component(a.core_instances_per_component)
        .max_memories_per_component(a.memories_per_component)
        .max_tables_per_component(a.tables_per_component)
        .max_memories_per_module(a.memories_per_module)
        .max_tables_per_module(a.tables_per_module)
        .max_core_instance_size(a.core_instance_size)
        .max_component_instance_size(a.component_instance_size)
        .table_elements(a.table_elements)
        .max_memory_size(a.memory_size)
        .linear_memory_keep_resident(pool.linear_memory_keep_resident)
        .table_keep_resident(pool.table_keep_resident)
        .async_stack_keep_resident(pool.stack_keep_resident)
        .max_unused_warm_slots(pool.max_unused_warm_slots)
        .decommit_batch_size(pool.decommit_batch_size)
        // Reset only the pages a guest dirtied, where the kernel can say
        // which (Linux 6.7+); otherwise fall back to keep-resident memset.
        .pagemap_scan(Enabled::Auto);
    p
}

/// Builds the engine. With a pool configured, tries the pooling allocator
/// first; if its address-space reservation fails (a low `ulimit -v`, a small
/// 32-bit space), logs a warning and falls back to on-demand allocation.
///
/// A pool that admits less than the platform ([`AdmissionLimits::PLATFORM`])
/// is refused: a component the control API accepted must load everywhere.
pub fn build_engine(config: &EngineConfig) -> Result<(Engine, AllocatorKind), RuntimeError> {
    if let Some(pool) = &config.pool {
        pool.admits
            .covers(&AdmissionLimits::PLATFORM)
            .map_err(|e| {
                RuntimeError::Engine(format!("the pool admits less than the platform: {e}"))
            })?;
        let mut c = base_config(config);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(pool)));
        match Engine::new(&c) {
            Ok(engine) => return Ok((engine, AllocatorKind::Pooling)),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "pooling allocator unavailable (address-space reservation failed?); \
                 falling back to on-demand allocation"
            ),
        }
    }
    let mut c = base_config(config);
    c.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    let engine = Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Ok((engine, AllocatorKind::OnDemand))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_pool_falls_back_to_on_demand() {
        // A pool whose reservation cannot be made: 10^6 memories of 4 GiB each
        // plus guards is far beyond a 47-bit address space.
        let config = EngineConfig {
            pool: Some(PoolConfig {
                total_memories: 1_000_000,
                total_component_instances: 1_000_000,
                total_core_instances: 1_000_000,
                ..PoolConfig::default()
            }),
            ..EngineConfig::default()
        };
        let (_engine, kind) = build_engine(&config).unwrap();
        assert_eq!(kind, AllocatorKind::OnDemand);
    }

    #[test]
    fn a_pool_narrower_than_the_platform_is_refused() {
        let config = EngineConfig {
            pool: Some(PoolConfig {
                admits: AdmissionLimits {
                    table_elements: 10_000,
                    ..AdmissionLimits::PLATFORM
                },
                ..PoolConfig::default()
            }),
            ..EngineConfig::default()
        };
        let err = build_engine(&config).expect_err("must be refused");
        assert!(err.to_string().contains("table_elements is 10000"), "{err}");
    }

    #[test]
    fn totals_never_fall_below_what_one_admitted_component_needs() {
        let p = PoolConfig::for_instances(1);
        let a = AdmissionLimits::PLATFORM;
        assert_eq!(p.total_component_instances, 1);
        assert!(p.total_core_instances >= a.core_instances_per_component);
        assert!(p.total_memories >= a.memories_per_component);
        assert!(p.total_tables >= a.tables_per_component);
        let p = PoolConfig::for_instances(1000);
        assert_eq!(p.total_core_instances, 10_000);
    }

    /// The control API's validation engine refuses what a gateway's pool
    /// would refuse to load, including what only the engine can count.
    #[test]
    fn the_validation_engine_checks_what_the_pool_checks() {
        let (engine, kind) = build_engine(&EngineConfig::validation()).unwrap();
        assert_eq!(kind, AllocatorKind::Pooling);
        let instances = |n: usize| {
            let mut wat = String::from("(component (core module $m (func)) ");
            wat.push_str(&"(core instance (instantiate $m)) ".repeat(n));
            wat.push(')');
            wat::parse_str(wat).unwrap()
        };
        let limit = AdmissionLimits::PLATFORM.core_instances_per_component as usize;
        assert!(wasmtime::component::Component::new(&engine, instances(limit)).is_ok());
        let err = wasmtime::component::Component::new(&engine, instances(limit + 1))
            .expect_err("one core instance too many");
        assert!(
            format!("{err:#}").contains(&format!("{} core module instances", limit + 1)),
            "{err:#}"
        );
        let two_memories = wat::parse_str(
            "(component (core module $m (memory 1) (memory 1)) (core instance (instantiate $m)))",
        )
        .unwrap();
        let err = wasmtime::component::Component::new(&engine, two_memories)
            .expect_err("two memories in one module");
        assert!(
            format!("{err:#}").contains("memories count of 2"),
            "{err:#}"
        );
    }

    #[test]
    fn default_pool_is_pooling() {
        let (_engine, kind) = build_engine(&EngineConfig::default()).unwrap();
        assert_eq!(kind, AllocatorKind::Pooling);
    }

    /// A fresh store (with an epoch deadline no test reaches) and an
    /// instance of `module` in it.
    fn instantiate(
        engine: &Engine,
        module: &wasmtime::Module,
    ) -> (wasmtime::Store<()>, wasmtime::Instance) {
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
        (store, instance)
    }

    /// Pages of the guest's 4 MiB data image, and pages of zero-initialised
    /// memory after it.
    const IMAGE_PAGES: u32 = 1024;
    const ZERO_PAGES: u32 = 512;

    /// A core module whose memory image has a marker byte `1` at the start of
    /// every 4 KiB page and whose `run` dirties every other page of the image
    /// (to `0xff`) and of the zeroed memory after it (to `1`): 768 disjoint
    /// dirty runs, far more than one pagemap scan buffer holds. It returns how
    /// many of those pages it found not in their initial state.
    fn scattered_writer() -> String {
        let mut wat = String::from("(module (memory (export \"m\") 128)\n");
        for page in 0..IMAGE_PAGES {
            wat.push_str(&format!("(data (i32.const {}) \"\\01\")\n", page * 4096));
        }
        // `$sweep` checks every other page in [from, to) for `expect`, writes
        // `write` there, and returns how many did not hold `expect`.
        wat.push_str(&format!(
            r#"(func $sweep (param $p i32) (param $to i32) (param $expect i32) (param $write i32)
                (result i32) (local $stale i32)
              (loop $page
                (if (i32.ne (i32.load8_u (local.get $p)) (local.get $expect))
                  (then (local.set $stale (i32.add (local.get $stale) (i32.const 1)))))
                (i32.store8 (local.get $p) (local.get $write))
                (local.set $p (i32.add (local.get $p) (i32.const 8192)))
                (br_if $page (i32.lt_u (local.get $p) (local.get $to))))
              (local.get $stale))
            (func (export "run") (result i32)
              (i32.add
                (call $sweep (i32.const 0) (i32.const {image_end}) (i32.const 1) (i32.const 0xff))
                (call $sweep (i32.const {image_end}) (i32.const {zero_end}) (i32.const 0) (i32.const 1)))))"#,
            image_end = IMAGE_PAGES * 4096,
            zero_end = (IMAGE_PAGES + ZERO_PAGES) * 4096,
        ));
        wat
    }

    /// Funcrefs that a table initialises lazily call the right code, from
    /// wasm (`call_indirect`, the `wasm_call` pointer) and from the host (the
    /// `array_call` trampoline), in every new instance: the vendored wasmtime
    /// finds those pointers through its own per-module and per-instance
    /// caches rather than upstream's lookups.
    #[test]
    fn lazily_initialised_funcrefs_call_the_right_functions() {
        let (engine, _) = build_engine(&EngineConfig::default()).unwrap();
        let mut wat = String::from("(module (type $t (func (result i32)))\n");
        let functions = 50;
        for i in 0..functions {
            wat.push_str(&format!("(func $f{i} (type $t) i32.const {})\n", i * 7 + 1));
        }
        wat.push_str("(table (export \"t\") funcref (elem");
        // Reversed, so table slot `i` holds function `functions - 1 - i`.
        for i in (0..functions).rev() {
            wat.push_str(&format!(" $f{i}"));
        }
        wat.push_str(
            "))\n(func (export \"call\") (param i32) (result i32) \
             (call_indirect (type $t) (local.get 0))))",
        );
        let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        for _instance in 0..3 {
            let (mut store, instance) = instantiate(&engine, &module);
            let call = instance
                .get_typed_func::<i32, i32>(&mut store, "call")
                .unwrap();
            let table = instance.get_table(&mut store, "t").unwrap();
            // Odd slots first through wasm, even slots first from the host, so
            // each path initialises half of the funcrefs.
            for slot in (1..functions).step_by(2).chain((0..functions).step_by(2)) {
                let expected = (functions - 1 - slot) as i32 * 7 + 1;
                let via_host = table
                    .get(&mut store, slot)
                    .and_then(|r| r.as_func().flatten().copied())
                    .unwrap()
                    .typed::<(), i32>(&store)
                    .unwrap();
                if slot % 2 == 1 {
                    assert_eq!(call.call(&mut store, slot as i32).unwrap(), expected);
                    assert_eq!(via_host.call(&mut store, ()).unwrap(), expected);
                } else {
                    assert_eq!(via_host.call(&mut store, ()).unwrap(), expected);
                    assert_eq!(call.call(&mut store, slot as i32).unwrap(), expected);
                }
            }
        }
    }

    /// Minor page faults taken by this thread so far.
    fn thread_minor_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a `rusage` into the pointer it is given.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
        // SAFETY: getrusage succeeded, so it initialised the struct.
        unsafe { usage.assume_init() }.ru_minflt
    }

    /// The pool resets a slot that a guest dirtied in hundreds of scattered
    /// places: every new instance sees exactly the initial memory (nothing a
    /// previous instance wrote), and, where the kernel offers `PAGEMAP_SCAN`,
    /// without faulting those pages in again. Upstream wasmtime 48 stopped the
    /// scan after 32 dirty runs and decommitted the rest, so each instance
    /// re-faulted them (the patch in `vendor/wasmtime`).
    #[test]
    fn pool_resets_scattered_dirty_pages_in_place() {
        let (engine, kind) = build_engine(&EngineConfig::default()).unwrap();
        assert_eq!(kind, AllocatorKind::Pooling);
        let wasm = wat::parse_str(scattered_writer()).unwrap();
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let run_once = || {
            let (mut store, instance) = instantiate(&engine, &module);
            let run = instance
                .get_typed_func::<(), i32>(&mut store, "run")
                .unwrap();
            run.call(&mut store, ()).unwrap()
        };
        let dirtied = i64::from((IMAGE_PAGES + ZERO_PAGES) / 2);
        // Warm the slot: the first instance faults its pages in.
        assert_eq!(run_once(), 0, "first instance saw non-initial memory");
        for round in 0..5 {
            let before = thread_minor_faults();
            let stale = run_once();
            let faults = thread_minor_faults() - before;
            assert_eq!(
                stale, 0,
                "round {round}: an instance saw a previous one's writes"
            );
            if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
                assert!(
                    faults < dirtied / 4,
                    "round {round}: {faults} page faults for {dirtied} dirtied pages: \
                     the reset decommitted pages instead of restoring them in place"
                );
            }
        }
    }
}
