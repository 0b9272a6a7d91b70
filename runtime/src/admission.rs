//! Admission limits: the shape a component must fit to run on every gateway.
//!
//! The pooling allocator refuses a component whose modules define more
//! memories or tables than a slot holds, whose tables or memories start
//! larger than a slot, or whose instance records outgrow their slots. One
//! [`AdmissionLimits`] value is the single definition of those limits: the
//! gateway's pool is built from it ([`crate::PoolConfig`]), and the upload
//! validator checks it — statically, with `wasmparser`, for everything a
//! core module declares ([`check_static`]), and for the aggregates only the
//! engine can count (core instances, memories and tables per component,
//! instance record sizes) by compiling on a validation engine whose pool has
//! these limits and only a handful of slots ([`crate::EngineConfig::validation`]).
//!
//! A gateway may widen what it admits (a bigger pool), never narrow it:
//! [`AdmissionLimits::covers`] is checked when an engine is built, so a
//! component the control API accepted loads on every gateway.

use wasmparser::{Encoding, Parser, Payload};

/// Bytes in a default WebAssembly page.
const WASM_PAGE: u64 = 64 << 10;

/// What a component must fit. Per core module: memories, tables, initial
/// table elements, initial memory size. Per component: core instances,
/// memories, tables, and the size of the instance records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdmissionLimits {
    /// Linear memories one core module may define.
    pub memories_per_module: u32,
    /// Tables one core module may define.
    pub tables_per_module: u32,
    /// Initial elements of one table (it may grow further at run time, up to
    /// the store's limit).
    pub table_elements: usize,
    /// Largest linear memory, bytes: a memory's initial size must fit, and
    /// it is the address space one pool slot reserves.
    pub memory_size: usize,
    /// Core instances one component may create (transitively).
    pub core_instances_per_component: u32,
    /// Linear memories one component may define (transitively).
    pub memories_per_component: u32,
    /// Tables one component may define (transitively).
    pub tables_per_component: u32,
    /// Size of one core instance record (`VMContext`), bytes.
    pub core_instance_size: usize,
    /// Size of the component instance record plus its core instances, bytes.
    pub component_instance_size: usize,
}

impl AdmissionLimits {
    /// What every Gannet gateway admits. Sized for the large components that
    /// mainstream toolchains produce (componentize-py ~21 MB: ~10 core
    /// instances, tables of tens of thousands of functions).
    pub const PLATFORM: AdmissionLimits = AdmissionLimits {
        memories_per_module: 1,
        tables_per_module: 8,
        table_elements: 100_000,
        memory_size: 4 << 30,
        core_instances_per_component: 64,
        memories_per_component: 8,
        tables_per_component: 16,
        core_instance_size: 4 << 20,
        component_instance_size: 4 << 20,
    };

    /// Each limit with its name, as a number.
    fn named(&self) -> [(&'static str, u64); 9] {
        [
            ("memories_per_module", self.memories_per_module.into()),
            ("tables_per_module", self.tables_per_module.into()),
            ("table_elements", self.table_elements as u64),
            ("memory_size", self.memory_size as u64),
            (
                "core_instances_per_component",
                self.core_instances_per_component.into(),
            ),
            ("memories_per_component", self.memories_per_component.into()),
            ("tables_per_component", self.tables_per_component.into()),
            ("core_instance_size", self.core_instance_size as u64),
            (
                "component_instance_size",
                self.component_instance_size as u64,
            ),
        ]
    }

    /// Whether every component `other` admits also fits these limits; the
    /// first limit that is narrower, named, otherwise.
    pub fn covers(&self, other: &AdmissionLimits) -> Result<(), String> {
        for ((name, mine), (_, theirs)) in self.named().into_iter().zip(other.named()) {
            if mine < theirs {
                return Err(format!(
                    "{name} is {mine}, below the {theirs} the platform admits"
                ));
            }
        }
        Ok(())
    }
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits::PLATFORM
    }
}

/// A component that does not fit the admission limits, with the limit named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}; the platform admits {allowed} (admission limit `{limit}`)")]
pub struct AdmissionError {
    /// What the component declares, e.g. "core module 2 defines 2 linear memories".
    pub what: String,
    /// The most the platform admits, in the same unit.
    pub allowed: String,
    /// The limit's name in [`AdmissionLimits`].
    pub limit: &'static str,
}

/// Checks every core module inside `bytes` (at any nesting depth) against
/// the per-module limits: memories and tables defined, initial table
/// elements, initial memory size, shared memories. Reads the binary only
/// (no compilation); a binary that does not parse is left to the caller's
/// parser to report.
pub fn check_static(bytes: &[u8], limits: &AdmissionLimits) -> Result<(), AdmissionError> {
    // Index of the core module being read (in order of appearance), if any.
    // Core modules cannot nest, so one is enough.
    let mut module: Option<usize> = None;
    let mut modules_seen = 0usize;
    let mut memories = 0u32;
    let mut tables = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return Ok(()) };
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => {
                module = Some(modules_seen);
                modules_seen += 1;
                memories = 0;
                tables = 0;
            }
            Payload::MemorySection(reader) if module.is_some() => {
                let m = module.unwrap_or_default();
                for memory in reader {
                    let Ok(memory) = memory else { return Ok(()) };
                    memories += 1;
                    if memories > limits.memories_per_module {
                        return Err(AdmissionError {
                            what: format!("core module {m} defines {memories} linear memories"),
                            allowed: format!("{} per module", limits.memories_per_module),
                            limit: "memories_per_module",
                        });
                    }
                    if memory.shared {
                        return Err(AdmissionError {
                            what: format!("core module {m} defines a shared memory"),
                            allowed: "none".into(),
                            limit: "memories_per_module",
                        });
                    }
                    let page = memory
                        .page_size_log2
                        .map_or(WASM_PAGE, |log2| 1u64.checked_shl(log2).unwrap_or(u64::MAX));
                    let initial = memory.initial.saturating_mul(page);
                    if initial > limits.memory_size as u64 {
                        return Err(AdmissionError {
                            what: format!(
                                "core module {m} has a memory of {} pages ({initial} bytes) at start",
                                memory.initial
                            ),
                            allowed: format!(
                                "{} bytes ({} pages of 64 KiB)",
                                limits.memory_size,
                                limits.memory_size as u64 / WASM_PAGE
                            ),
                            limit: "memory_size",
                        });
                    }
                }
            }
            Payload::TableSection(reader) if module.is_some() => {
                let m = module.unwrap_or_default();
                for table in reader {
                    let Ok(table) = table else { return Ok(()) };
                    tables += 1;
                    if tables > limits.tables_per_module {
                        return Err(AdmissionError {
                            what: format!("core module {m} defines {tables} tables"),
                            allowed: format!("{} per module", limits.tables_per_module),
                            limit: "tables_per_module",
                        });
                    }
                    if table.ty.initial > limits.table_elements as u64 {
                        return Err(AdmissionError {
                            what: format!(
                                "core module {m} has a table of {} elements at start",
                                table.ty.initial
                            ),
                            allowed: format!("{} elements", limits.table_elements),
                            limit: "table_elements",
                        });
                    }
                }
            }
            Payload::End(_) => {
                // The end of a core module (components nest, modules don't).
                module = None;
            }
            _ => {}
        }
    }
    Ok(())
}

/// What one instance of a component takes from the pool's totals, besides
/// its component-instance slot: core instances, linear memories and tables.
/// Read statically from the component's bytes by [`Footprint::of`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Core instances made (modules instantiated).
    pub core_instances: u32,
    /// Linear memories defined by those modules.
    pub memories: u32,
    /// Tables defined by those modules.
    pub tables: u32,
}

impl Footprint {
    /// The most a platform-admitted component can take: used when a
    /// component's own footprint cannot be read.
    pub fn most(limits: &AdmissionLimits) -> Footprint {
        Footprint {
            core_instances: limits.core_instances_per_component,
            memories: limits.memories_per_component,
            tables: limits.tables_per_component,
        }
    }

    /// `n` instances' worth.
    pub fn times(&self, n: u32) -> Footprint {
        Footprint {
            core_instances: self.core_instances.saturating_mul(n),
            memories: self.memories.saturating_mul(n),
            tables: self.tables.saturating_mul(n),
        }
    }

    /// Counts, at every nesting depth, the core instances a component
    /// instantiates and the memories and tables its modules define,
    /// capped by what `limits` admit per component. Every module is
    /// counted once, as components made by the usual tools instantiate each
    /// module once. Bytes that do not parse count as the most admitted.
    pub fn of(bytes: &[u8], limits: &AdmissionLimits) -> Footprint {
        let mut f = Footprint::default();
        let mut in_module = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else {
                return Footprint::most(limits);
            };
            match payload {
                Payload::Version {
                    encoding: Encoding::Module,
                    ..
                } => in_module += 1,
                Payload::MemorySection(r) if in_module > 0 => f.memories += r.count(),
                Payload::TableSection(r) if in_module > 0 => f.tables += r.count(),
                Payload::InstanceSection(r) => {
                    for instance in r {
                        if let Ok(wasmparser::Instance::Instantiate { .. }) = instance {
                            f.core_instances += 1;
                        }
                    }
                }
                Payload::End(_) if in_module > 0 => in_module -= 1,
                _ => {}
            }
        }
        let most = Footprint::most(limits);
        Footprint {
            core_instances: f.core_instances.min(most.core_instances),
            memories: f.memories.min(most.memories),
            tables: f.tables.min(most.tables),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component wrapping one core module, instantiated.
    fn component_with_module(module: &str) -> Vec<u8> {
        wat::parse_str(format!(
            "(component (core module $m {module}) (core instance (instantiate $m)))"
        ))
        .unwrap()
    }

    #[test]
    fn a_second_memory_names_the_limit() {
        let c = component_with_module("(memory 1) (memory 1)");
        let e = check_static(&c, &AdmissionLimits::PLATFORM).unwrap_err();
        assert_eq!(e.limit, "memories_per_module");
        assert!(e.to_string().contains("defines 2 linear memories"), "{e}");
        assert!(e.to_string().contains("admits 1 per module"), "{e}");
    }

    #[test]
    fn a_table_over_the_element_limit_names_the_limit() {
        let c = component_with_module("(table 100001 funcref)");
        let e = check_static(&c, &AdmissionLimits::PLATFORM).unwrap_err();
        assert_eq!(e.limit, "table_elements");
        assert!(e.to_string().contains("100001 elements"), "{e}");
        // Exactly at the limit is admitted.
        let c = component_with_module("(table 100000 funcref)");
        assert!(check_static(&c, &AdmissionLimits::PLATFORM).is_ok());
    }

    #[test]
    fn too_many_tables_and_too_big_a_memory_are_refused() {
        let nine = "(table 1 funcref)".repeat(9);
        let e =
            check_static(&component_with_module(&nine), &AdmissionLimits::PLATFORM).unwrap_err();
        assert_eq!(e.limit, "tables_per_module");
        let small = AdmissionLimits {
            memory_size: 1 << 20,
            ..AdmissionLimits::PLATFORM
        };
        let e = check_static(&component_with_module("(memory 17)"), &small).unwrap_err();
        assert_eq!(e.limit, "memory_size");
        assert!(check_static(&component_with_module("(memory 16)"), &small).is_ok());
    }

    #[test]
    fn footprint_counts_core_instances_memories_and_tables() {
        let c = wat::parse_str(
            "(component
               (core module $a (memory 1) (table 1 funcref))
               (core module $b (memory 1) (table 1 funcref) (table 1 funcref))
               (core instance (instantiate $a))
               (core instance (instantiate $b)))",
        )
        .unwrap();
        let f = Footprint::of(&c, &AdmissionLimits::PLATFORM);
        assert_eq!(
            f,
            Footprint {
                core_instances: 2,
                memories: 2,
                tables: 3
            }
        );
        let most = Footprint::most(&AdmissionLimits::PLATFORM);
        assert_eq!(Footprint::of(b"not wasm", &AdmissionLimits::PLATFORM), most);
    }

    #[test]
    fn counts_are_per_module_not_per_component() {
        // Two modules with one memory each: each fits its own limit (the
        // per-component total is the engine's to count).
        let c =
            wat::parse_str("(component (core module $a (memory 1)) (core module $b (memory 1)))")
                .unwrap();
        assert!(check_static(&c, &AdmissionLimits::PLATFORM).is_ok());
    }

    #[test]
    fn a_wider_pool_covers_the_platform_and_a_narrower_one_does_not() {
        let wider = AdmissionLimits {
            table_elements: 200_000,
            ..AdmissionLimits::PLATFORM
        };
        assert!(wider.covers(&AdmissionLimits::PLATFORM).is_ok());
        let narrower = AdmissionLimits {
            tables_per_module: 4,
            ..AdmissionLimits::PLATFORM
        };
        let e = narrower.covers(&AdmissionLimits::PLATFORM).unwrap_err();
        assert!(e.contains("tables_per_module is 4"), "{e}");
    }
}
