//! Memory fair sharing: a bound on the linear memory all instances hold
//! together, charged as memory grows.
//!
//! Nothing is reserved at admission (a component's declared maximum is
//! usually far above what it uses). An instance is charged when a linear
//! memory is created (its initial size) and at every `memory.grow`, and
//! everything it held is given back when its store is dropped. A grow that
//! would pass the gateway's budget, or take one tenant past its part of it
//! (the budget less a reserve kept for the others), fails: the guest sees
//! `memory.grow` return -1, exactly as at its own memory limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What all instances of the gateway may hold together.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    per_tenant: u64,
    used: AtomicU64,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, of which one tenant may hold all but
    /// `reserve_percent`.
    pub fn new(limit: u64, reserve_percent: u8) -> Arc<MemoryBudget> {
        let pct = u64::from(reserve_percent.min(90));
        Arc::new(MemoryBudget {
            limit,
            per_tenant: limit - limit / 100 * pct,
            used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Bytes held by all instances.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Grows refused because of the budget.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Where one tenant's instances charge their memory.
#[derive(Clone, Debug)]
pub struct MemoryAccount {
    budget: Arc<MemoryBudget>,
    tenant: Arc<AtomicU64>,
}

impl MemoryAccount {
    /// `tenant`'s account in `budget`.
    pub fn new(budget: Arc<MemoryBudget>, tenant: Arc<AtomicU64>) -> MemoryAccount {
        MemoryAccount { budget, tenant }
    }

    /// Charges `bytes`, or refuses (charging nothing).
    pub fn charge(&self, bytes: u64) -> bool {
        let b = &self.budget;
        if !add_within(&self.tenant, bytes, b.per_tenant) {
            b.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !add_within(&b.used, bytes, b.limit) {
            self.tenant.fetch_sub(bytes, Ordering::Relaxed);
            b.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: u64) {
        self.tenant.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes the tenant holds.
    pub fn tenant_used(&self) -> u64 {
        self.tenant.load(Ordering::Relaxed)
    }
}

/// Adds `n` to `counter` unless that passes `limit`.
fn add_within(counter: &AtomicU64, n: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            v.checked_add(n).filter(|t| *t <= limit)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_cannot_take_the_reserve_and_nobody_passes_the_budget() {
        let budget = MemoryBudget::new(1000, 25);
        let a = MemoryAccount::new(budget.clone(), Arc::default());
        let b = MemoryAccount::new(budget.clone(), Arc::default());
        assert!(a.charge(750));
        assert!(!a.charge(1), "tenant a is at its part");
        assert!(b.charge(250));
        assert!(!b.charge(1), "the budget is spent");
        assert_eq!((budget.used(), budget.refused()), (1000, 2));
        a.release(750);
        assert!(b.charge(500));
        assert_eq!((a.tenant_used(), b.tenant_used()), (0, 750));
    }
}
