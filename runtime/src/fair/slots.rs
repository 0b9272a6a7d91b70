//! Slot fair sharing: which tenant may start one more instance.
//!
//! The pooling allocator has fixed totals: component instances (one per
//! request in flight), core instances, linear memories and tables. Each
//! instance of a component takes its [`Footprint`] of each. A request takes
//! its footprint here before it instantiates, and gives it back when its
//! instance is dropped, so the pool itself is never the one to run out.
//!
//! Slots cannot be taken back from a running instance, so fairness here
//! means keeping room for tenants that hold little. The rule, per resource,
//! with `free` what is left, `reserve` a part kept back (a quarter by
//! default) and `others` the number of other tenants holding anything:
//!
//! - while taking would leave at least `reserve` free, any tenant may take;
//! - the last `reserve` is for tenants that hold little: there a tenant may
//!   take only while it would hold at most `reserve / (others + 2)`.
//!
//! So one tenant alone stops at `capacity - reserve`; a second finds a
//! third of the reserve, a third a quarter, and so on: a tenant arriving
//! while others have filled the pool still finds room, and no number of
//! busy tenants closes the gateway to another. As instances end, the freed
//! slots above the reserve go to whoever asks first. A refusal says which:
//! the pool is full ([`SlotRefusal::Full`]), or this tenant has its share
//! while the rest is kept for others ([`SlotRefusal::OverShare`]).

use crate::admission::Footprint;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

const RESOURCES: usize = 4;

/// The pool's totals, as [`Footprint`] counts.
type Counts = [u64; RESOURCES];

fn counts(f: &Footprint) -> Counts {
    [
        1,
        f.core_instances.into(),
        f.memories.into(),
        f.tables.into(),
    ]
}

/// Why a request gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The pool has no room for this instance.
    Full,
    /// The tenant holds its share and the rest is kept for other tenants.
    OverShare,
}

/// Shares the pool's slots between tenants.
pub struct SlotShares {
    capacity: Counts,
    reserve: Counts,
    state: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: Counts,
    by_tenant: HashMap<u64, Counts>,
}

impl SlotShares {
    /// Shares for a pool of `capacity` (instances, core instances, memories,
    /// tables), keeping `reserve_percent` of each back once it runs low.
    pub fn new(capacity: Footprint, instances: u32, reserve_percent: u8) -> Arc<SlotShares> {
        let mut cap = counts(&capacity);
        cap[0] = instances.into();
        let pct = u64::from(reserve_percent.min(90));
        Arc::new(SlotShares {
            capacity: cap,
            reserve: cap.map(|c| c * pct / 100),
            state: Mutex::new(Held::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `footprint` for `tenant`, or says why not.
    pub fn try_take(
        self: &Arc<Self>,
        tenant: u64,
        footprint: &Footprint,
    ) -> Result<Slot, SlotRefusal> {
        let need = counts(footprint);
        let mut held = self.lock();
        let mine = held.by_tenant.get(&tenant).copied().unwrap_or_default();
        let others = held.by_tenant.len() - usize::from(held.by_tenant.contains_key(&tenant));
        let mut over_share = false;
        for r in 0..RESOURCES {
            let free = self.capacity[r].saturating_sub(held.total[r]);
            if need[r] > free {
                return Err(SlotRefusal::Full);
            }
            if free - need[r] < self.reserve[r] {
                let share = self.reserve[r] / (others as u64 + 2);
                if mine[r] + need[r] > share {
                    over_share = true;
                }
            }
        }
        if over_share {
            return Err(SlotRefusal::OverShare);
        }
        let entry = held.by_tenant.entry(tenant).or_default();
        for (mine, n) in entry.iter_mut().zip(need) {
            *mine += n;
        }
        for (total, n) in held.total.iter_mut().zip(need) {
            *total += n;
        }
        Ok(Slot {
            shares: self.clone(),
            tenant,
            need,
        })
    }

    /// Instances in use, in all and by `tenant`.
    pub fn in_use(&self, tenant: u64) -> (u64, u64) {
        let held = self.lock();
        (
            held.total[0],
            held.by_tenant.get(&tenant).map_or(0, |c| c[0]),
        )
    }

    /// Component instances the pool holds.
    pub fn instances(&self) -> u64 {
        self.capacity[0]
    }

    fn give_back(&self, tenant: u64, need: &Counts) {
        let mut held = self.lock();
        for (total, n) in held.total.iter_mut().zip(need) {
            *total = total.saturating_sub(*n);
        }
        if let Some(mine) = held.by_tenant.get_mut(&tenant) {
            for (m, n) in mine.iter_mut().zip(need) {
                *m = m.saturating_sub(*n);
            }
            if mine[0] == 0 {
                held.by_tenant.remove(&tenant);
            }
        }
    }
}

/// One instance's share of the pool, given back on drop.
pub struct Slot {
    shares: Arc<SlotShares>,
    tenant: u64,
    need: Counts,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shares.give_back(self.tenant, &self.need);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(instances: u32) -> Arc<SlotShares> {
        let per = Footprint {
            core_instances: 10,
            memories: 2,
            tables: 4,
        };
        SlotShares::new(per.times(instances), instances, 25)
    }

    const SMALL: Footprint = Footprint {
        core_instances: 2,
        memories: 1,
        tables: 1,
    };

    fn fill(p: &Arc<SlotShares>, tenant: u64, f: &Footprint) -> (Vec<Slot>, SlotRefusal) {
        let mut held = Vec::new();
        loop {
            match p.try_take(tenant, f) {
                Ok(s) => held.push(s),
                Err(e) => return (held, e),
            }
        }
    }

    #[test]
    fn one_tenant_alone_stops_at_the_reserve() {
        let p = pool(100);
        let (held, why) = fill(&p, 1, &SMALL);
        assert_eq!(held.len(), 75);
        assert_eq!(why, SlotRefusal::OverShare);
        // A second tenant finds a third of the reserve, a third a quarter.
        let (second, why) = fill(&p, 2, &SMALL);
        assert_eq!((second.len(), why), (8, SlotRefusal::OverShare));
        let (third, _) = fill(&p, 3, &SMALL);
        assert_eq!(third.len(), 6);
        drop(held);
        assert_eq!(p.in_use(2), (14, 8));
        // Freed slots above the reserve go to whoever asks.
        let (more, _) = fill(&p, 2, &SMALL);
        assert_eq!(more.len(), 100 - 14 - 25, "up to the reserve, then no more");
    }

    #[test]
    fn busy_tenants_leave_room_for_one_more() {
        let p = pool(120);
        let mut all = Vec::new();
        for t in 1..=3 {
            all.push(fill(&p, t, &SMALL).0);
        }
        let lens: Vec<usize> = all.iter().map(Vec::len).collect();
        assert_eq!(lens, [90, 10, 7]);
        let (late, why) = fill(&p, 9, &SMALL);
        assert_eq!((late.len(), why), (6, SlotRefusal::OverShare));
    }

    #[test]
    fn large_footprints_count_against_core_instances() {
        // 10 instances' worth of core instances, each request needing 25.
        let p = SlotShares::new(
            Footprint {
                core_instances: 100,
                memories: 100,
                tables: 100,
            },
            100,
            25,
        );
        let big = Footprint {
            core_instances: 25,
            memories: 1,
            tables: 1,
        };
        let (held, why) = fill(&p, 1, &big);
        assert_eq!(held.len(), 3, "75 core instances, then the reserve");
        assert_eq!(why, SlotRefusal::OverShare);
        assert!(p.try_take(2, &SMALL).is_ok(), "a small tenant still fits");
    }
}
