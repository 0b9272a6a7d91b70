//! Fair sharing of a gateway between tenants: CPU, pool slots and memory.
//!
//! The definition the gateway enforces:
//!
//! - **CPU** ([`cpu`]): tenants with runnable guests get equal shares of the
//!   guest threads, then a tenant's apps get equal shares of the tenant's,
//!   charged by CPU used (deficit round-robin at every epoch tick).
//! - **Slots** ([`slots`]): the pool's instances, core instances, memories
//!   and tables, counted per component, are first come first served down
//!   to a reserve that only tenants holding little may use.
//! - **Memory** ([`memory`]): all instances together stay under a budget,
//!   charged as memory grows; one tenant may hold all but a reserve of it.
//!
//! A tenant is named by its tenant name (routes-file apps without a
//! `tenant` share the tenant `local`). [`Shares`] hands out the per-app
//! handles.

pub mod cpu;
pub mod memory;
pub mod slots;

use crate::admission::Footprint;
use cpu::{CpuAccount, CpuScheduler, ShareKey};
use memory::{MemoryAccount, MemoryBudget};
use slots::SlotShares;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How a gateway is shared.
#[derive(Clone, Debug)]
pub struct ShareConfig {
    /// CPU turns: the guest worker threads.
    pub cpu_turns: usize,
    /// CPU credit per tenant and app per round.
    pub quantum: Duration,
    /// Component instances the pool holds.
    pub instances: u32,
    /// The pool's core instances, memories and tables.
    pub pool: Footprint,
    /// Percent of slots and memory kept back from any one tenant.
    pub reserve_percent: u8,
    /// Bytes of linear memory all instances may hold together.
    pub memory_budget: u64,
}

/// One tenant's handles.
#[derive(Debug)]
pub struct TenantShare {
    /// Its number in this gateway.
    pub id: u64,
    cpu: Arc<CpuAccount>,
    memory: Arc<AtomicU64>,
}

/// One app's handles: where its guests' CPU, slots and memory are charged.
#[derive(Clone, Debug)]
pub struct AppShare {
    /// The app's tenant.
    pub tenant: Arc<TenantShare>,
    /// Its CPU accounts.
    pub cpu: ShareKey,
    /// Its tenant's memory account.
    pub memory: MemoryAccount,
}

/// The gateway's shares: the CPU scheduler, the slot shares and the memory
/// budget, and the tenants seen so far.
pub struct Shares {
    /// CPU turns.
    pub cpu: Arc<CpuScheduler>,
    /// Pool slots.
    pub slots: Arc<SlotShares>,
    /// Linear memory.
    pub memory: Arc<MemoryBudget>,
    tenants: Mutex<HashMap<String, Weak<TenantShare>>>,
    next_id: AtomicU64,
}

impl Shares {
    /// Shares as `config` says.
    pub fn new(config: &ShareConfig) -> Shares {
        Shares {
            cpu: Arc::new(CpuScheduler::new(config.cpu_turns, config.quantum)),
            slots: SlotShares::new(config.pool, config.instances, config.reserve_percent),
            memory: MemoryBudget::new(config.memory_budget, config.reserve_percent),
            tenants: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Handles for a new app of `tenant` (one per app version: its CPU
    /// account is its own, its tenant's accounts are shared).
    pub fn app(&self, tenant: &str) -> AppShare {
        let tenant = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            match tenants.get(tenant).and_then(Weak::upgrade) {
                Some(t) => t,
                None => {
                    // Forget tenants no app refers to any more.
                    tenants.retain(|_, t| t.strong_count() > 0);
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let t = Arc::new(TenantShare {
                        id,
                        cpu: CpuAccount::new(id),
                        memory: Arc::default(),
                    });
                    tenants.insert(tenant.to_string(), Arc::downgrade(&t));
                    t
                }
            }
        };
        AppShare {
            cpu: ShareKey {
                tenant: tenant.cpu.clone(),
                app: CpuAccount::new(self.next_id.fetch_add(1, Ordering::Relaxed)),
            },
            memory: MemoryAccount::new(self.memory.clone(), tenant.memory.clone()),
            tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_of_one_tenant_share_its_accounts() {
        let shares = Shares::new(&ShareConfig {
            cpu_turns: 1,
            quantum: Duration::from_millis(1),
            instances: 10,
            pool: Footprint::default().times(10),
            reserve_percent: 25,
            memory_budget: 1 << 20,
        });
        let a = shares.app("acme");
        let b = shares.app("acme");
        let c = shares.app("other");
        assert_eq!(a.tenant.id, b.tenant.id);
        assert_ne!(a.tenant.id, c.tenant.id);
        assert!(a.memory.charge(100));
        assert_eq!(b.memory.tenant_used(), 100);
        assert_eq!(c.memory.tenant_used(), 0);
        let id = a.tenant.id;
        drop((a, b));
        assert_ne!(
            shares.app("acme").tenant.id,
            id,
            "a forgotten tenant starts afresh"
        );
    }
}
