//! Enforcing an app's limits inside one store: memory (all linear memories
//! together) through a [`wasmtime::ResourceLimiter`], and CPU time through the
//! epoch deadline.
//!
//! CPU time is counted in epoch ticks that fire *while guest code runs*: the
//! deadline callback is only reached from guest code, so a guest that sleeps
//! or awaits an outbound response is not charged for that time. Each tick the
//! guest also yields to the executor, so a spinning guest cannot starve the
//! other requests on its thread.

use crate::fair::memory::MemoryAccount;
use std::time::Duration;
use wasmtime::ResourceLimiter;

/// Period of the process's epoch ticker: the granularity of CPU accounting.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Most elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// The error a store's deadline callback raises when its CPU budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("guest exceeded its CPU time limit")]
pub struct CpuLimitExceeded;

/// The error used when a request runs past its wall-clock limit.
#[derive(Debug, thiserror::Error)]
#[error("guest exceeded its wall-clock time limit")]
pub struct WallLimitExceeded;

/// Caps the total size of all linear memories of one instance, and charges
/// them to the gateway's shared memory budget when there is one.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    total: usize,
    exceeded: bool,
    account: Option<MemoryAccount>,
}

impl MemoryLimiter {
    /// A limiter allowing `limit` bytes of linear memory in total, charged
    /// to `account` as it grows.
    pub fn new(limit: u64, account: Option<MemoryAccount>) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            total: 0,
            exceeded: false,
            account,
        }
    }
    /// Whether a grow was refused because of the limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
    /// Bytes of linear memory currently held by the instance.
    pub fn in_use(&self) -> usize {
        self.total
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        if let Some(account) = &self.account {
            let more = desired.saturating_sub(current) as u64;
            if more > 0 && !account.charge(more) {
                // The guest sees the same failed grow as at its own limit.
                self.exceeded = true;
                return Ok(false);
            }
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            account.release(self.total as u64);
        }
    }
}

/// CPU budget of one store, in epoch ticks.
#[derive(Debug)]
pub struct CpuMeter {
    used_ticks: u64,
    budget_ticks: u64,
}

impl CpuMeter {
    /// A meter allowing `budget` of guest execution.
    pub fn new(budget: Duration) -> Self {
        let ticks = budget.as_micros() / EPOCH_TICK.as_micros().max(1);
        CpuMeter {
            used_ticks: 0,
            budget_ticks: u64::try_from(ticks).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Charges one tick; `Err` once the budget is spent.
    pub fn charge_tick(&mut self) -> Result<(), CpuLimitExceeded> {
        self.used_ticks += 1;
        if self.used_ticks > self.budget_ticks {
            Err(CpuLimitExceeded)
        } else {
            Ok(())
        }
    }

    /// CPU time charged so far.
    pub fn used(&self) -> Duration {
        EPOCH_TICK * u32::try_from(self.used_ticks).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_counts_all_memories() {
        let mut l = MemoryLimiter::new(100, None);
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(l.memory_growing(0, 30, None).unwrap()); // a second memory
        assert!(!l.memory_growing(30, 50, None).unwrap()); // 60 + 50 > 100
        assert!(l.exceeded());
        assert!(l.memory_growing(60, 70, None).unwrap()); // 70 + 30 = 100
        assert_eq!(l.in_use(), 100);
    }

    #[test]
    fn memory_is_charged_to_the_budget_and_given_back_on_drop() {
        use crate::fair::memory::MemoryBudget;
        let budget = MemoryBudget::new(150, 0);
        let account = MemoryAccount::new(budget.clone(), Default::default());
        let mut a = MemoryLimiter::new(100, Some(account.clone()));
        let mut b = MemoryLimiter::new(100, Some(account));
        assert!(a.memory_growing(0, 100, None).unwrap());
        assert!(!b.memory_growing(0, 60, None).unwrap(), "over the budget");
        assert!(b.exceeded());
        assert!(b.memory_growing(0, 50, None).unwrap());
        assert_eq!(budget.used(), 150);
        drop(a);
        assert_eq!(budget.used(), 50);
    }

    #[test]
    fn cpu_meter_runs_out() {
        let mut m = CpuMeter::new(EPOCH_TICK * 3);
        assert!(m.charge_tick().is_ok());
        assert!(m.charge_tick().is_ok());
        assert!(m.charge_tick().is_ok());
        assert!(m.charge_tick().is_err());
    }
}
