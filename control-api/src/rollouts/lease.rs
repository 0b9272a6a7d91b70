//! The scheduler's leader lease: one row (`scheduler_lease`, id 1) that
//! names the replica running rollouts, until when, and an epoch that goes
//! up each time the lease changes hands.
//!
//! A replica takes the lease when it is free (expired) or its own, in one
//! conditional `UPDATE … RETURNING` (SQLite ≥ 3.35 and Postgres), so of
//! several replicas exactly one wins. The epoch is a fencing token: every
//! write the leader makes runs in a transaction that first calls
//! [`check_fence`] — its holder and epoch still hold the lease, unexpired —
//! and rolls back otherwise. On Postgres the check locks the lease's row,
//! so a takeover waits for a write in progress and a write never commits
//! after the lease changed hands.

use crate::desired_state::DbResult;
use crate::store::{Dialect, Store};
use sqlx::{AnyConnection, Row};

/// This replica's claim on the scheduler's lease.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The name this replica holds the lease under: random per process.
    holder: String,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// A claim under a random name (16 hex characters).
    pub fn new() -> Lease {
        Lease {
            holder: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// A claim under `holder` (tests name their replicas).
    pub fn with_holder(holder: impl Into<String>) -> Lease {
        Lease {
            holder: holder.into(),
        }
    }

    /// The name the lease is held under.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease if it is free at `now_ms` (its expiry passed), or
    /// renews it if it is this replica's, until `now_ms + ttl_ms`. Returns
    /// the epoch it is held with, or `None` when another replica holds it.
    /// The epoch goes up by one when the lease changes hands; a renewal
    /// keeps it.
    pub async fn acquire_or_renew(
        &self,
        store: &Store,
        now_ms: i64,
        ttl_ms: i64,
    ) -> DbResult<Option<i64>> {
        let row = sqlx::query(
            "UPDATE scheduler_lease SET holder = $1, \
             epoch = epoch + (CASE WHEN holder = $1 THEN 0 ELSE 1 END), expires_ms = $2 \
             WHERE id = 1 AND (holder = $1 OR expires_ms < $3) RETURNING epoch",
        )
        .bind(self.holder.as_str())
        .bind(now_ms.saturating_add(ttl_ms.max(0)))
        .bind(now_ms)
        .fetch_optional(store.pool())
        .await?;
        row.map(|r| r.try_get::<i64, _>("epoch")).transpose()
    }

    /// Gives the lease up, if this replica holds it, so that another one
    /// takes it over at its next attempt (its epoch then goes up).
    pub async fn release(&self, store: &Store) -> DbResult<()> {
        sqlx::query("UPDATE scheduler_lease SET expires_ms = 0 WHERE id = 1 AND holder = $1")
            .bind(self.holder.as_str())
            .execute(store.pool())
            .await?;
        Ok(())
    }
}

/// Whether `holder` still holds the lease with `epoch` at `now_ms`, checked
/// inside the caller's transaction `conn` before its writes: the caller
/// rolls back when it does not. On Postgres the lease's row stays locked
/// until the transaction ends, so no other replica takes the lease over
/// meanwhile.
pub async fn check_fence(
    conn: &mut AnyConnection,
    dialect: Dialect,
    holder: &str,
    epoch: i64,
    now_ms: i64,
) -> DbResult<bool> {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let row = sqlx::query(&format!(
        "SELECT epoch FROM scheduler_lease \
         WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_ms > $3{lock}"
    ))
    .bind(holder)
    .bind(epoch)
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    async fn fenced(store: &Store, holder: &str, epoch: i64, now: i64) -> bool {
        let mut tx = store.pool().begin().await.unwrap();
        let held = check_fence(&mut tx, store.dialect(), holder, epoch, now)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        held
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_takeover_only_after_expiry() {
        for backend in crate::testing::backends() {
            let db = TestDb::new(backend).await;
            let store = Store::connect(&db.url).await.unwrap();
            let a = Lease::with_holder("replica-a");
            let b = Lease::with_holder("replica-b");
            let ttl = 10_000;

            // A takes the free lease: the first hand-over, epoch 1.
            assert_eq!(
                a.acquire_or_renew(&store, 1_000, ttl).await.unwrap(),
                Some(1),
                "{backend:?}"
            );
            // B cannot while A's lease runs (it runs until 11 000).
            assert_eq!(b.acquire_or_renew(&store, 2_000, ttl).await.unwrap(), None);
            assert_eq!(b.acquire_or_renew(&store, 11_000, ttl).await.unwrap(), None);
            // A renews: same epoch, later expiry (15 000).
            assert_eq!(
                a.acquire_or_renew(&store, 5_000, ttl).await.unwrap(),
                Some(1)
            );
            assert!(fenced(&store, "replica-a", 1, 14_999).await);
            assert!(!fenced(&store, "replica-a", 1, 15_000).await, "expired");
            assert_eq!(b.acquire_or_renew(&store, 14_000, ttl).await.unwrap(), None);

            // A died: B takes over after the expiry, with the next epoch.
            assert_eq!(
                b.acquire_or_renew(&store, 15_001, ttl).await.unwrap(),
                Some(2)
            );
            assert_eq!(a.acquire_or_renew(&store, 15_002, ttl).await.unwrap(), None);
            // A's stale epoch no longer passes the fence, whatever the time.
            assert!(!fenced(&store, "replica-a", 1, 15_002).await);
            assert!(!fenced(&store, "replica-b", 1, 15_002).await);
            assert!(fenced(&store, "replica-b", 2, 15_002).await);

            // B gives the lease up: A takes it at once, epoch 3.
            b.release(&store).await.unwrap();
            assert!(!fenced(&store, "replica-b", 2, 15_003).await);
            assert_eq!(
                a.acquire_or_renew(&store, 15_003, ttl).await.unwrap(),
                Some(3)
            );
            assert!(fenced(&store, "replica-a", 3, 15_004).await);
        }
    }

    #[test]
    fn holders_are_random_and_16_hex_characters() {
        let (a, b) = (Lease::new(), Lease::new());
        assert_ne!(a.holder(), b.holder());
        assert_eq!(a.holder().len(), 16);
        assert!(a.holder().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
