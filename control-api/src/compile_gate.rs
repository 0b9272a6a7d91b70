//! Admission to compiling: at most `max_concurrent` compiles at once, at
//! most `max_queued` more waiting (each for at most `queue_wait`), and at
//! most `per_tenant` uploads of one tenant in progress at once, so no one
//! tenant can fill the slots and the queue.
//!
//! A tenant's place ([`TenantSlot`]) is taken before its upload's body is
//! read and held until the upload is answered; a compile slot
//! ([`CompilePermit`]) only around the compile itself. Both are released on
//! drop, so a request that fails, times out or is dropped gives them back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why the gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// The tenant already has `per_tenant` uploads in progress.
    #[error("the tenant already has {0} uploads in progress")]
    Tenant(usize),
    /// Every compile slot is taken and the queue is full, or the wait for a
    /// slot ran out.
    #[error("every compile slot is taken and the queue is full")]
    Busy,
}

/// The gate's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Compiles running at once (at least 1).
    pub max_concurrent: usize,
    /// Compiles waiting for a slot at once (0: none wait).
    pub max_queued: usize,
    /// Longest wait for a slot.
    pub queue_wait: Duration,
    /// Uploads of one tenant in progress at once (0: no per-tenant bound).
    pub per_tenant: usize,
}

/// The gate. Cheap to share behind an `Arc`.
pub struct CompileGate {
    limits: GateLimits,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    tenants: Arc<Mutex<HashMap<i64, usize>>>,
}

/// One of a tenant's places; given back on drop.
pub struct TenantSlot {
    tenants: Arc<Mutex<HashMap<i64, usize>>>,
    tenant_id: i64,
}

/// A compile slot; given back on drop.
pub struct CompilePermit {
    _permit: OwnedSemaphorePermit,
}

impl CompileGate {
    /// A gate with `limits`.
    pub fn new(limits: GateLimits) -> CompileGate {
        let limits = GateLimits {
            max_concurrent: limits.max_concurrent.max(1),
            ..limits
        };
        CompileGate {
            slots: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            queued: AtomicUsize::new(0),
            tenants: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The gate's sizes.
    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    /// Takes one of `tenant_id`'s places, or refuses: the tenant has all of
    /// its places, or the gate is saturated (no slot free and the queue
    /// full), so the upload is refused before its body is read.
    pub fn enter(&self, tenant_id: i64) -> Result<TenantSlot, GateRefusal> {
        if self.saturated() {
            return Err(GateRefusal::Busy);
        }
        let per_tenant = self.limits.per_tenant;
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let held = tenants.entry(tenant_id).or_insert(0);
        if per_tenant > 0 && *held >= per_tenant {
            return Err(GateRefusal::Tenant(per_tenant));
        }
        *held += 1;
        Ok(TenantSlot {
            tenants: self.tenants.clone(),
            tenant_id,
        })
    }

    /// Whether no compile slot is free and the queue is full.
    pub fn saturated(&self) -> bool {
        self.slots.available_permits() == 0
            && self.queued.load(Ordering::SeqCst) >= self.limits.max_queued
    }

    /// A compile slot: at once if one is free, otherwise after waiting in
    /// the queue (first come, first served) for at most `queue_wait`.
    /// Refused when the queue is full or the wait runs out.
    pub async fn permit(&self) -> Result<CompilePermit, GateRefusal> {
        // Never jumps the queue: a tokio semaphore hands released permits to
        // waiters first, so a permit is free only when no one waits.
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(CompilePermit { _permit: permit });
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.limits.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(GateRefusal::Busy);
        }
        let _in_queue = Queued(&self.queued);
        match tokio::time::timeout(self.limits.queue_wait, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(CompilePermit { _permit: permit }),
            // Timed out (or the semaphore closed, which it never is).
            Ok(Err(_)) | Err(_) => Err(GateRefusal::Busy),
        }
    }
}

/// A place in the queue, left on drop (also when the waiting request is
/// dropped).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = tenants.get_mut(&self.tenant_id) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                tenants.remove(&self.tenant_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_concurrent: usize, max_queued: usize, per_tenant: usize) -> Arc<CompileGate> {
        Arc::new(CompileGate::new(GateLimits {
            max_concurrent,
            max_queued,
            queue_wait: Duration::from_secs(30),
            per_tenant,
        }))
    }

    #[test]
    fn a_tenant_gets_its_places_back_on_drop() {
        let g = gate(4, 4, 2);
        let a = g.enter(1).unwrap();
        let _b = g.enter(1).unwrap();
        assert_eq!(g.enter(1).err(), Some(GateRefusal::Tenant(2)));
        assert!(g.enter(2).is_ok(), "places are per tenant");
        drop(a);
        assert!(g.enter(1).is_ok());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_served_in_order() {
        let g = gate(1, 1, 0);
        let running = g.permit().await.unwrap();
        assert!(!g.saturated());
        let waiting = tokio::spawn({
            let g = g.clone();
            async move { g.permit().await.map(|_| ()) }
        });
        while g.queued.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(g.saturated());
        assert_eq!(g.enter(7).err(), Some(GateRefusal::Busy));
        assert_eq!(g.permit().await.err(), Some(GateRefusal::Busy));
        drop(running);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(g.queued.load(Ordering::SeqCst), 0);
        assert!(g.permit().await.is_ok());
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_is_refused_and_leaves_the_queue() {
        let g = CompileGate::new(GateLimits {
            max_concurrent: 1,
            max_queued: 4,
            queue_wait: Duration::from_millis(20),
            per_tenant: 0,
        });
        let _running = g.permit().await.unwrap();
        assert_eq!(g.permit().await.err(), Some(GateRefusal::Busy));
        assert_eq!(g.queued.load(Ordering::SeqCst), 0);
    }
}
