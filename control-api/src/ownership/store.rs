//! The ownership columns of `hostnames` and their transitions. Verifying
//! a hostname commits with its feed row: gateways start routing it.

use crate::store::{Store, WriteError, now_ms};
use sqlx::Row;

/// A custom hostname waiting for its owner's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// The hostname.
    pub hostname: String,
    /// Its app.
    pub app_id: i64,
    /// The token to find.
    pub token: String,
    /// The revision that delivered the token to gateways.
    pub token_revision: i64,
    /// Failed checks so far.
    pub failures: i64,
}

/// A custom hostname as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OperatorDomain {
    /// The hostname.
    pub hostname: String,
    /// Its tenant.
    pub tenant: String,
    /// Its app.
    pub app: String,
    /// How control was proved (`legacy`: claimed before proofs existed;
    /// `dns`, `http`, `acme`, `operator`), or none yet.
    pub verified_by: Option<String>,
    /// When, ms.
    pub verified_ms: Option<i64>,
    /// When it was added, ms.
    pub created_ms: i64,
}

fn unverified_from(r: &sqlx::any::AnyRow) -> Result<Unverified, sqlx::Error> {
    Ok(Unverified {
        hostname: r.try_get("hostname")?,
        app_id: r.try_get("app_id")?,
        token: r.try_get("verification_token")?,
        token_revision: r.try_get::<Option<i64>, _>("token_revision")?.unwrap_or(0),
        failures: r.try_get("check_failures")?,
    })
}

const UNVERIFIED_COLUMNS: &str =
    "hostname, app_id, verification_token, token_revision, check_failures";

/// How long a custom hostname may wait for its owner's proof: past it, the
/// claim is released (another tenant may take the name).
pub const UNPROVED_CLAIM_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

impl Store {
    /// Releases the custom hostnames added before `created_before` (ms)
    /// whose control was never proved (managed ones never issued
    /// included), each with its certificate and managed state, in one
    /// transaction with its feed row. Returns (app id, hostname) of each.
    pub async fn release_unproved(
        &self,
        created_before: i64,
    ) -> Result<Vec<(i64, String)>, WriteError> {
        let stale = sqlx::query(
            "SELECT app_id, hostname FROM hostnames WHERE kind = 'custom' AND verified_ms IS NULL AND created_ms < $1 \
             ORDER BY hostname LIMIT 100",
        )
        .bind(created_before)
        .fetch_all(self.pool())
        .await?;
        let mut released = Vec::new();
        for row in stale {
            let app_id: i64 = row.try_get("app_id")?;
            let hostname: String = row.try_get("hostname")?;
            let mut tx = self.pool().begin().await?;
            let done = sqlx::query(
                "DELETE FROM hostnames WHERE hostname = $1 AND verified_ms IS NULL AND created_ms < $2",
            )
            .bind(&hostname)
            .bind(created_before)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                continue; // proved or removed meanwhile
            }
            for table in ["certificates", "managed_domains"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE hostname = $1"))
                    .bind(&hostname)
                    .execute(&mut *tx)
                    .await?;
            }
            self.append_change(&mut tx, app_id).await?;
            tx.commit().await?;
            released.push((app_id, hostname));
        }
        Ok(released)
    }

    /// Hostnames due for a check at `now`, oldest first, at most `limit`.
    pub async fn due_unverified(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<Unverified>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {UNVERIFIED_COLUMNS} FROM hostnames WHERE verified_ms IS NULL \
             AND verification_token IS NOT NULL AND next_check_ms <= $1 ORDER BY next_check_ms, hostname LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(unverified_from).collect()
    }

    /// Claims the check of `hostname` due at `now`, pushing its next check
    /// to `until` (one replica checks it; a crash only delays the next
    /// check). False if another replica took it or it is not due.
    pub async fn claim_check(
        &self,
        hostname: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE hostnames SET next_check_ms = $1 WHERE hostname = $2 AND verified_ms IS NULL AND next_check_ms <= $3",
        )
        .bind(until)
        .bind(hostname)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// `app_id`'s custom hostname `hostname`, if it waits for a proof;
    /// `Ok(None)` when it is verified; `Err(RowNotFound)` when the app has
    /// no such custom hostname.
    pub async fn unverified(
        &self,
        app_id: i64,
        hostname: &str,
    ) -> Result<Option<Unverified>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {UNVERIFIED_COLUMNS}, verified_ms FROM hostnames WHERE app_id = $1 AND hostname = $2 AND kind = 'custom'"
        ))
        .bind(app_id)
        .bind(hostname)
        .fetch_optional(self.pool())
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
        if row.try_get::<Option<i64>, _>("verified_ms")?.is_some()
            || row
                .try_get::<Option<String>, _>("verification_token")?
                .is_none()
        {
            return Ok(None);
        }
        unverified_from(&row).map(Some)
    }

    /// Marks `hostname` verified by `how` (`dns`, `http`, `operator`), in
    /// one transaction with the feed row that makes gateways route it.
    /// `None` if it was verified already (or is gone).
    pub async fn mark_verified(
        &self,
        hostname: &str,
        how: &str,
    ) -> Result<Option<i64>, WriteError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "UPDATE hostnames SET verified_ms = $1, verified_by = $2, check_error = NULL \
             WHERE hostname = $3 AND verified_ms IS NULL RETURNING app_id",
        )
        .bind(now)
        .bind(how)
        .bind(hostname)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let app_id: i64 = row.try_get("app_id")?;
        let revision = self.append_change(&mut tx, app_id).await?;
        tx.commit().await?;
        Ok(Some(revision))
    }

    /// Records a failed check: `error` for the tenant, the next check at
    /// `next_check` (with `counted`, one more failure for the back-off).
    pub async fn record_check_failure(
        &self,
        hostname: &str,
        error: &str,
        next_check: i64,
        counted: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE hostnames SET check_error = $1, next_check_ms = $2, \
             check_failures = check_failures + $3 WHERE hostname = $4 AND verified_ms IS NULL",
        )
        .bind(error)
        .bind(next_check)
        .bind(i64::from(counted))
        .bind(hostname)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every tenant's custom hostnames (with `verified_by`, only those
    /// proved that way; `unverified`, only those waiting), by hostname.
    pub async fn operator_domains(
        &self,
        verified_by: Option<&str>,
        unverified: bool,
    ) -> Result<Vec<OperatorDomain>, sqlx::Error> {
        let mut sql = String::from(
            "SELECT h.hostname, t.name AS tenant, a.name AS app, h.verified_by, h.verified_ms, h.created_ms \
             FROM hostnames h JOIN apps a ON a.id = h.app_id JOIN tenants t ON t.id = a.tenant_id \
             WHERE h.kind = 'custom'",
        );
        if unverified {
            sql.push_str(" AND h.verified_ms IS NULL");
        }
        if verified_by.is_some() {
            sql.push_str(" AND h.verified_by = $1");
        }
        sql.push_str(" ORDER BY h.hostname");
        let mut query = sqlx::query(&sql);
        if let Some(how) = verified_by {
            query = query.bind(how);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(OperatorDomain {
                    hostname: r.try_get("hostname")?,
                    tenant: r.try_get("tenant")?,
                    app: r.try_get("app")?,
                    verified_by: r.try_get("verified_by")?,
                    verified_ms: r.try_get("verified_ms")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }
}
