//! The managed-certificate rows (`managed_domains`, `acme_accounts`) and
//! their transitions. Every change a gateway must see (a challenge
//! published or withdrawn, a certificate issued) commits with its feed row.

use crate::certificate::CheckedCertificate;
use crate::master_key::MasterKey;
use crate::master_key::certificate_key_aad;
use crate::store::{CertificateKeyError, Store, WriteError, now_ms};
use sqlx::Row;

/// The associated data that binds sealed ACME account credentials to
/// their directory.
fn account_aad(directory_url: &str) -> Vec<u8> {
    format!("gannet acme account\0{directory_url}").into_bytes()
}

/// A managed hostname a worker has claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The hostname.
    pub hostname: String,
    /// Its app.
    pub app_id: i64,
    /// Its state before the claim (`pending`, `issued`, `failed`, `renewing`).
    pub state: String,
    /// The order to resume, if one was started.
    pub order_url: Option<String>,
    /// Consecutive failures so far.
    pub failures: i64,
    /// Whether a certificate is already served for it (a renewal).
    pub has_certificate: bool,
}

impl Store {
    /// Hostnames due for work (a first certificate, a renewal, a retry) at
    /// `now` whose lease is free, oldest first, at most `limit`.
    pub async fn due_managed(&self, now: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT hostname FROM managed_domains WHERE next_attempt_ms <= $1 AND lease_until_ms < $1 \
             ORDER BY next_attempt_ms, hostname LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get("hostname")).collect()
    }

    /// Claims `hostname` for `owner` until `until` (ms), if it is still due
    /// and its lease is free: one conditional update, so of several
    /// replicas exactly one wins. A renewal (an issued certificate) turns
    /// `renewing`.
    pub async fn claim_managed(
        &self,
        hostname: &str,
        owner: &str,
        until: i64,
    ) -> Result<Option<Claimed>, sqlx::Error> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE managed_domains SET lease_owner = $1, lease_until_ms = $2, \
             state = CASE WHEN state = 'issued' THEN 'renewing' ELSE state END, updated_ms = $3 \
             WHERE hostname = $4 AND next_attempt_ms <= $3 AND lease_until_ms < $3 \
             RETURNING state, order_url, failures",
        )
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(hostname)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let more = sqlx::query(
            "SELECT h.app_id, (SELECT COUNT(*) FROM certificates c WHERE c.hostname = h.hostname) AS certs \
             FROM hostnames h WHERE h.hostname = $1",
        )
        .bind(hostname)
        .fetch_optional(self.pool())
        .await?;
        let Some(more) = more else { return Ok(None) };
        Ok(Some(Claimed {
            hostname: hostname.to_string(),
            app_id: more.try_get("app_id")?,
            state: row.try_get("state")?,
            order_url: row.try_get("order_url")?,
            failures: row.try_get("failures")?,
            has_certificate: more.try_get::<i64, _>("certs")? > 0,
        }))
    }

    /// Extends `owner`'s lease on `hostname` to `until`; false if the lease
    /// was lost (taken over after it ran out, or the hostname removed).
    pub async fn extend_managed_lease(
        &self,
        hostname: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE managed_domains SET lease_until_ms = $1 WHERE hostname = $2 AND lease_owner = $3",
        )
        .bind(until)
        .bind(hostname)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the order being worked on (resumed after a restart).
    pub async fn set_managed_order(
        &self,
        hostname: &str,
        owner: &str,
        order_url: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE managed_domains SET order_url = $1, updated_ms = $2 WHERE hostname = $3 AND lease_owner = $4",
        )
        .bind(order_url)
        .bind(now_ms())
        .bind(hostname)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Publishes (or with `None`, withdraws) the HTTP-01 challenge of
    /// `hostname` for gateways: the revision that carries it, or `None`
    /// when the lease was lost or nothing changed.
    pub async fn set_managed_challenge(
        &self,
        app_id: i64,
        hostname: &str,
        owner: &str,
        challenge: Option<(&str, &str)>,
    ) -> Result<Option<i64>, WriteError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE managed_domains SET challenge_token = $1, challenge_key_authorization = $2, updated_ms = $3 \
             WHERE hostname = $4 AND lease_owner = $5",
        )
        .bind(challenge.map(|c| c.0))
        .bind(challenge.map(|c| c.1))
        .bind(now_ms())
        .bind(hostname)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let revision = self.append_change(&mut tx, app_id).await?;
        tx.commit().await?;
        Ok(Some(revision))
    }

    /// Stores the certificate issued for `hostname` (its key sealed with
    /// the master key), marks it issued, due again at `renew_at` (ms), with
    /// the challenge withdrawn and the lease released, in one transaction
    /// with its feed row. `None` when the hostname was removed meanwhile
    /// (or the lease lost).
    pub async fn store_managed_certificate(
        &self,
        app_id: i64,
        hostname: &str,
        owner: &str,
        certificate: &CheckedCertificate,
        renew_at: i64,
    ) -> Result<Option<i64>, WriteError> {
        let key = self.master_key().ok_or(WriteError::NoMasterKey)?;
        let key_sealed = key.seal(
            certificate.key_pem().as_bytes(),
            &certificate_key_aad(hostname),
        )?;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE managed_domains SET state = 'issued', error = NULL, order_url = NULL, challenge_token = NULL, \
             challenge_key_authorization = NULL, failures = 0, next_attempt_ms = $1, lease_owner = NULL, \
             lease_until_ms = 0, updated_ms = $2 WHERE hostname = $3 AND lease_owner = $4",
        )
        .bind(renew_at)
        .bind(now)
        .bind(hostname)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        crate::store::upsert_certificate(
            &mut tx,
            hostname,
            "managed",
            certificate,
            key_sealed,
            now,
        )
        .await?;
        // The CA's validation proved control of the hostname: it serves.
        sqlx::query(
            "UPDATE hostnames SET verified_ms = $1, verified_by = 'acme', check_error = NULL \
             WHERE hostname = $2 AND verified_ms IS NULL",
        )
        .bind(now)
        .bind(hostname)
        .execute(&mut *tx)
        .await?;
        let revision = self.append_change(&mut tx, app_id).await?;
        tx.commit().await?;
        Ok(Some(revision))
    }

    /// Records a failed attempt: `error` (the CA's reason), retried at
    /// `retry_at` (ms), the challenge withdrawn, the order forgotten when
    /// `forget_order`, the lease released. A certificate issued earlier is
    /// kept (and served). The revision that withdrew a published
    /// challenge, if one was.
    pub async fn fail_managed(
        &self,
        app_id: i64,
        hostname: &str,
        owner: &str,
        error: &str,
        retry_at: i64,
        forget_order: bool,
    ) -> Result<Option<i64>, WriteError> {
        let mut tx = self.pool().begin().await?;
        let published = sqlx::query(
            "SELECT challenge_token FROM managed_domains WHERE hostname = $1 AND lease_owner = $2",
        )
        .bind(hostname)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(published) = published else {
            return Ok(None);
        };
        let had_challenge = published
            .try_get::<Option<String>, _>("challenge_token")?
            .is_some();
        let forget = if forget_order {
            ", order_url = NULL"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE managed_domains SET state = 'failed', error = $1, challenge_token = NULL, \
             challenge_key_authorization = NULL, failures = failures + 1, next_attempt_ms = $2, \
             lease_owner = NULL, lease_until_ms = 0, updated_ms = $3{forget} WHERE hostname = $4 AND lease_owner = $5"
        );
        sqlx::query(&sql)
            .bind(error)
            .bind(retry_at)
            .bind(now_ms())
            .bind(hostname)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        let revision = if had_challenge {
            Some(self.append_change(&mut tx, app_id).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(revision)
    }

    /// Makes a managed hostname due now (an operator's "renew now"); false
    /// if it is not managed.
    pub async fn renew_managed_now(&self, hostname: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE managed_domains SET next_attempt_ms = $1, failures = 0 WHERE hostname = $2",
        )
        .bind(now_ms())
        .bind(hostname)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether every gateway seen since `seen_since` (ms) has applied
    /// `revision` (or a later one): (gateways seen, of which behind).
    pub async fn gateways_behind(
        &self,
        revision: i64,
        seen_since: i64,
    ) -> Result<(i64, i64), sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS seen, COALESCE(SUM(CASE WHEN applied_revision < $1 THEN 1 ELSE 0 END), 0) AS behind \
             FROM gateways WHERE revoked_ms IS NULL AND last_seen_ms >= $2",
        )
        .bind(revision)
        .bind(seen_since)
        .fetch_one(self.pool())
        .await?;
        Ok((row.try_get("seen")?, row.try_get("behind")?))
    }

    /// The platform's ACME account credentials (JSON) for `directory_url`,
    /// opened with the master key.
    pub async fn acme_account(&self, directory_url: &str) -> Result<Option<String>, AccountError> {
        let row =
            sqlx::query("SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1")
                .bind(directory_url)
                .fetch_optional(self.pool())
                .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Vec<u8> = row.try_get("credentials_sealed")?;
        let key = self.master_key().ok_or(AccountError::NoMasterKey)?;
        let plain = key
            .open(&sealed, &account_aad(directory_url))
            .map_err(|e| AccountError::Key(CertificateKeyError::Open(e)))?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| AccountError::Key(CertificateKeyError::NotText))
    }

    /// Stores the account credentials for `directory_url`, sealed; keeps
    /// the first one stored if another replica raced this one (and returns
    /// false).
    pub async fn store_acme_account(
        &self,
        directory_url: &str,
        credentials_json: &str,
    ) -> Result<bool, AccountError> {
        let key: &MasterKey = self.master_key().ok_or(AccountError::NoMasterKey)?;
        let sealed = key
            .seal(credentials_json.as_bytes(), &account_aad(directory_url))
            .map_err(|e| AccountError::Key(CertificateKeyError::Open(e)))?;
        let done = sqlx::query(
            "INSERT INTO acme_accounts (directory_url, credentials_sealed, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (directory_url) DO NOTHING",
        )
        .bind(directory_url)
        .bind(sealed)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Why the ACME account could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// There is no master key to seal or open it with.
    #[error("no master key to seal the ACME account key with")]
    NoMasterKey,
    /// The master key does not open it.
    #[error("the ACME account credentials: {0}")]
    Key(CertificateKeyError),
}
