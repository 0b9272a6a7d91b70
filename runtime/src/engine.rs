//! The engine: one per process, configured for running many short-lived
//! instances of many components.

use crate::RuntimeError;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Pool sizes and reuse policy for the pooling instance allocator.
///
/// The defaults are sized for the large components that mainstream
/// toolchains produce (componentize-py ~21 MB, componentize-js ~12 MB):
/// many core instances per component, big tables and instance records, and
/// enough resident memory kept per slot that re-instantiating such a guest
/// does not fault its heap back in page by page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
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
    /// Core instances one component may create.
    pub max_core_instances_per_component: u32,
    /// Memories one component may define.
    pub max_memories_per_component: u32,
    /// Tables one component may define.
    pub max_tables_per_component: u32,
    /// Size of one core instance record (VMContext), bytes.
    pub max_core_instance_size: usize,
    /// Size of one component instance record, bytes.
    pub max_component_instance_size: usize,
    /// Elements per table.
    pub table_elements: usize,
    /// Largest linear memory, bytes: the address space reserved per slot.
    pub max_memory_size: usize,
    /// Bytes of each memory slot kept resident (reset with memset rather than
    /// decommitted) when an instance ends.
    pub linear_memory_keep_resident: usize,
    /// Bytes of each table slot kept resident.
    pub table_keep_resident: usize,
    /// Unused slots kept warm (with their image mapped) for reuse.
    pub max_unused_warm_slots: u32,
    /// Slots decommitted together in one batch.
    pub decommit_batch_size: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            total_component_instances: 1000,
            total_core_instances: 10_000,
            total_memories: 2000,
            total_tables: 4000,
            total_stacks: 1000,
            max_core_instances_per_component: 64,
            max_memories_per_component: 8,
            max_tables_per_component: 16,
            max_core_instance_size: 4 << 20,
            max_component_instance_size: 4 << 20,
            table_elements: 100_000,
            max_memory_size: 4 << 30,
            linear_memory_keep_resident: 64 << 20,
            table_keep_resident: 1 << 20,
            max_unused_warm_slots: 200,
            decommit_batch_size: 16,
        }
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
    c
}

fn pooling(pool: &PoolConfig) -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(pool.total_component_instances)
        .total_core_instances(pool.total_core_instances)
        .total_memories(pool.total_memories)
        .total_tables(pool.total_tables)
        .total_stacks(pool.total_stacks)
        .max_core_instances_per_component(pool.max_core_instances_per_component)
        .max_memories_per_component(pool.max_memories_per_component)
        .max_tables_per_component(pool.max_tables_per_component)
        .max_memories_per_module(1)
        .max_tables_per_module(8)
        .max_core_instance_size(pool.max_core_instance_size)
        .max_component_instance_size(pool.max_component_instance_size)
        .table_elements(pool.table_elements)
        .max_memory_size(pool.max_memory_size)
        .linear_memory_keep_resident(pool.linear_memory_keep_resident)
        .table_keep_resident(pool.table_keep_resident)
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
pub fn build_engine(config: &EngineConfig) -> Result<(Engine, AllocatorKind), RuntimeError> {
    if let Some(pool) = &config.pool {
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
    fn default_pool_is_pooling() {
        let (_engine, kind) = build_engine(&EngineConfig::default()).unwrap();
        assert_eq!(kind, AllocatorKind::Pooling);
    }
}
