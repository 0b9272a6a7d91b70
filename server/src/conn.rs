//! Per-connection activity ([`ConnState`]: requests in flight, when the last
//! one ended) and the registry of open connections the accept loop sheds
//! from at the cap. The registry is touched once per connection, never per
//! request; it is scanned only when shedding.

use crate::stats::ServerStats;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What one connection is doing, shared by its driver, its service wrapper
/// and the registry.
#[derive(Debug)]
pub struct ConnState {
    /// The server's clock origin: `last_active` counts from it.
    epoch: Instant,
    /// Requests whose response has not ended yet.
    in_flight: AtomicU32,
    /// Nanoseconds from `epoch` to when a request last ended (or the
    /// connection was accepted).
    last_active: AtomicU64,
    /// Set once the connection was asked to close (idle or shed), so it is
    /// not picked again.
    closing: AtomicBool,
    /// Wakes the driver when the accept loop sheds this connection.
    shed: Notify,
}

impl ConnState {
    /// A connection accepted now, with nothing in flight.
    pub fn new(epoch: Instant) -> Self {
        let state = ConnState {
            epoch,
            in_flight: AtomicU32::new(0),
            last_active: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            shed: Notify::new(),
        };
        state.stamp();
        state
    }

    fn stamp(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_active.store(nanos, Ordering::Relaxed);
    }

    fn last_active(&self) -> u64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// A request started.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's response ended (or the request was dropped).
    pub fn request_finished(&self) {
        // Stamp first: whoever sees the count drop sees the new time.
        self.stamp();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a request is in flight.
    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When the connection became idle, or `None` while a request is in
    /// flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.is_busy() {
            return None;
        }
        Some(self.epoch + Duration::from_nanos(self.last_active()))
    }

    /// When the connection should next be checked for the idle timeout:
    /// `idle` after it became idle, or `idle` from now while busy.
    pub fn idle_deadline(&self, idle: Duration) -> Instant {
        match self.idle_since() {
            Some(since) => since + idle,
            None => Instant::now() + idle,
        }
    }

    /// Marks the connection as closing; false if it already was.
    pub fn start_closing(&self) -> bool {
        !self.closing.swap(true, Ordering::AcqRel)
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves once the accept loop shed this connection (at once if it
    /// already did).
    pub async fn shed_requested(&self) {
        self.shed.notified().await;
    }
}

/// What [`Registry::admit`] decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Under the cap.
    Room,
    /// At the cap; the longest-idle connection was asked to close.
    ShedIdle,
    /// At the cap with nothing idle: refuse the new connection.
    Full,
}

/// The open connections of one server.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Entries>,
    stats: ServerStats,
}

#[derive(Debug, Default)]
struct Entries {
    next_id: u64,
    conns: HashMap<u64, Arc<ConnState>>,
}

impl Registry {
    /// An empty registry counting into `stats`.
    pub fn new(stats: ServerStats) -> Self {
        Registry {
            inner: Mutex::new(Entries::default()),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // The map stays consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether one more connection fits under `max`; at the cap, asks the
    /// connection idle the longest (not already closing) to close.
    pub fn admit(&self, max: usize) -> Admission {
        let entries = self.lock();
        if entries.conns.len() < max {
            return Admission::Room;
        }
        let oldest_idle = entries
            .conns
            .values()
            .filter(|c| !c.is_closing() && !c.is_busy())
            .min_by_key(|c| c.last_active());
        match oldest_idle {
            Some(conn) if conn.start_closing() => {
                conn.shed.notify_one();
                Admission::ShedIdle
            }
            _ => Admission::Full,
        }
    }

    /// Registers `conn`; it leaves the registry when the returned
    /// registration is dropped.
    pub fn insert(self: &Arc<Self>, conn: Arc<ConnState>) -> Registration {
        let id = {
            let mut entries = self.lock();
            let id = entries.next_id;
            entries.next_id += 1;
            entries.conns.insert(id, conn);
            id
        };
        self.stats.opened();
        Registration {
            registry: self.clone(),
            id,
        }
    }

    /// Connections registered now.
    pub fn count(&self) -> usize {
        self.lock().conns.len()
    }
}

/// A connection's place in the registry, released on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().conns.remove(&self.id);
        self.registry.stats.closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_idle_connection_is_shed_and_busy_ones_never_are() {
        let epoch = Instant::now();
        let registry = Arc::new(Registry::new(ServerStats::new()));
        let busy = Arc::new(ConnState::new(epoch));
        busy.request_started();
        let _busy = registry.insert(busy.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let older = Arc::new(ConnState::new(epoch));
        let _older = registry.insert(older.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newer = Arc::new(ConnState::new(epoch));
        let newer_reg = registry.insert(newer.clone());

        assert_eq!(registry.admit(4), Admission::Room);
        assert_eq!(registry.admit(3), Admission::ShedIdle);
        // The shed one's driver is woken at once.
        tokio::time::timeout(Duration::from_secs(1), older.shed_requested())
            .await
            .expect("the oldest idle connection was asked to close");
        assert_eq!(registry.admit(3), Admission::ShedIdle);
        assert!(!newer.start_closing(), "the newer one was shed second");
        // Only the busy one is left that is not closing.
        assert_eq!(registry.admit(3), Admission::Full);
        assert_eq!(registry.stats.open(), 3);
        drop(newer_reg);
        assert_eq!(registry.count(), 2);
        assert_eq!(registry.stats.open(), 2);
        assert!(busy.idle_since().is_none());
        busy.request_finished();
        assert!(busy.idle_since().is_some());
    }
}
