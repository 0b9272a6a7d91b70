//! TLS settings for every gateway: the platform certificate the operator
//! sets (`PUT /v1/admin/platform-certificate`), and session-ticket keys
//! per PoP, made and rotated here ([`spawn`]) so that a ticket one gateway
//! of a PoP issues resumes at the others.
//!
//! Both travel in the PoP state ([`gannet_model::snapshot::PlatformTls`]);
//! a change is a feed row with app id [`PLATFORM_CHANGE`]. Keys are sealed
//! with the master key at rest; without a master key there are no shared
//! ticket keys (each gateway keeps its own) and no platform certificate.

use crate::AppState;
use crate::certificate::CheckedCertificate;
use crate::desired_state::{Scope, append_change};
use crate::store::{CertificateKeyError, Store, WriteError, now_ms};
use gannet_model::api::CertificateSummary;
use gannet_model::snapshot::{PemPair, PlatformTls, TicketKeyWire};
use sqlx::Row;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The app id of a platform change in the feed (no app has it).
pub const PLATFORM_CHANGE: i64 = 0;
/// A ticket key is made per PoP per slot of this length…
pub const TICKET_KEY_SLOT: Duration = Duration::from_secs(3600);
/// …and lives this long: tickets (6 h at gateways) made with the newest
/// key stay valid for their whole lifetime.
pub const TICKET_KEY_LIFETIME: Duration = Duration::from_secs(13 * 3600);
/// How often the rotation looks at every PoP.
const ROTATION_CHECK: Duration = Duration::from_secs(300);

fn certificate_aad() -> &'static [u8] {
    b"gannet platform certificate key"
}

fn ticket_key_aad(pop_id: i64, key_id: &str) -> Vec<u8> {
    format!("gannet ticket key\0{pop_id}\0{key_id}").into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Stores `certificate` as the platform certificate (replacing one set
    /// before), its key sealed, with a feed row for every PoP.
    pub async fn set_platform_certificate(
        &self,
        certificate: &CheckedCertificate,
    ) -> Result<i64, WriteError> {
        let key = self.master_key().ok_or(WriteError::NoMasterKey)?;
        let sealed = key.seal(certificate.key_pem().as_bytes(), certificate_aad())?;
        let info = certificate.info();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO platform_certificate (id, cert_pem, key_sealed, issuer, names_json, not_before, not_after, updated_ms) \
             VALUES (1, $1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET cert_pem = excluded.cert_pem, key_sealed = excluded.key_sealed, \
             issuer = excluded.issuer, names_json = excluded.names_json, not_before = excluded.not_before, \
             not_after = excluded.not_after, updated_ms = excluded.updated_ms",
        )
        .bind(certificate.cert_pem())
        .bind(sealed)
        .bind(info.issuer.as_str())
        .bind(serde_json::to_string(&info.names).unwrap_or_else(|_| "[]".into()))
        .bind(info.not_before)
        .bind(info.not_after)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let revision =
            append_change(&mut tx, self.dialect(), PLATFORM_CHANGE, Scope::Everywhere).await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// What the platform certificate says (never its key), if one is set.
    pub async fn platform_certificate(&self) -> Result<Option<CertificateSummary>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT issuer, names_json, not_before, not_after, updated_ms FROM platform_certificate WHERE id = 1",
        )
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(CertificateSummary {
            kind: "platform".into(),
            issuer: r.try_get("issuer")?,
            names: serde_json::from_str(&r.try_get::<String, _>("names_json")?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            not_before: r.try_get("not_before")?,
            not_after: r.try_get("not_after")?,
            updated_ms: r.try_get("updated_ms")?,
        }))
    }

    /// The TLS settings gateways of `pop_id` get: the platform certificate
    /// (key opened) and the PoP's current ticket keys. A key the master key
    /// does not open is logged and left out.
    pub async fn platform_tls(&self, pop_id: i64) -> Result<Option<PlatformTls>, sqlx::Error> {
        let mut tls = PlatformTls::default();
        if let Some(r) =
            sqlx::query("SELECT cert_pem, key_sealed FROM platform_certificate WHERE id = 1")
                .fetch_optional(self.pool())
                .await?
        {
            let sealed: Vec<u8> = r.try_get("key_sealed")?;
            match self.open_sealed_text(&sealed, certificate_aad()) {
                Ok(key_pem) => {
                    tls.certificate = Some(PemPair {
                        cert_pem: r.try_get("cert_pem")?,
                        key_pem,
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "the platform certificate's key does not open with the master key; gateways keep their own")
                }
            }
        }
        let rows = sqlx::query(
            "SELECT key_id, secret_sealed, not_after_ms FROM ticket_keys WHERE pop_id = $1 AND not_after_ms > $2 ORDER BY slot",
        )
        .bind(pop_id)
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?;
        for r in rows {
            let key_id: String = r.try_get("key_id")?;
            let sealed: Vec<u8> = r.try_get("secret_sealed")?;
            match self.open_sealed(&sealed, &ticket_key_aad(pop_id, &key_id)) {
                Ok(secret) => tls.ticket_keys.push(TicketKeyWire {
                    id: key_id,
                    secret: hex(&secret),
                    not_after_ms: r.try_get("not_after_ms")?,
                }),
                Err(e) => {
                    tracing::error!(pop_id, error = %e, "a ticket key does not open with the master key; left out")
                }
            }
        }
        if tls.certificate.is_none() && tls.ticket_keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(tls))
    }

    /// Makes the current slot's ticket key for every PoP that lacks one
    /// (a feed row for that PoP each), and deletes expired keys. Returns
    /// the revisions written, with their PoPs. Safe to run on every
    /// replica at once: the (PoP, slot) key settles who makes it.
    pub async fn rotate_ticket_keys(&self, now: i64) -> Result<Vec<(i64, i64)>, WriteError> {
        let Some(master) = self.master_key() else {
            return Ok(Vec::new());
        };
        let slot_ms = TICKET_KEY_SLOT.as_millis() as i64;
        let slot = now / slot_ms;
        let pops = sqlx::query(
            "SELECT id FROM pops p WHERE NOT EXISTS (SELECT 1 FROM ticket_keys k WHERE k.pop_id = p.id AND k.slot = $1)",
        )
        .bind(slot)
        .fetch_all(self.pool())
        .await?;
        let mut written = Vec::new();
        for row in pops {
            let pop_id: i64 = row.try_get("id")?;
            let id: [u8; 16] = rand::random();
            let secret: [u8; 32] = rand::random();
            let key_id = hex(&id);
            let sealed = master.seal(&secret, &ticket_key_aad(pop_id, &key_id))?;
            let mut tx = self.pool().begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO ticket_keys (pop_id, slot, key_id, secret_sealed, not_after_ms, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pop_id, slot) DO NOTHING",
            )
            .bind(pop_id)
            .bind(slot)
            .bind(&key_id)
            .bind(sealed)
            .bind(slot * slot_ms + TICKET_KEY_LIFETIME.as_millis() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                let revision =
                    append_change(&mut tx, self.dialect(), PLATFORM_CHANGE, Scope::Pop(pop_id))
                        .await?;
                tx.commit().await?;
                written.push((revision, pop_id));
            }
        }
        sqlx::query("DELETE FROM ticket_keys WHERE not_after_ms <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(written)
    }

    fn open_sealed(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CertificateKeyError> {
        let key = self.master_key().ok_or(CertificateKeyError::NoMasterKey)?;
        Ok(key.open(sealed, aad)?)
    }

    fn open_sealed_text(&self, sealed: &[u8], aad: &[u8]) -> Result<String, CertificateKeyError> {
        String::from_utf8(self.open_sealed(sealed, aad)?).map_err(|_| CertificateKeyError::NotText)
    }
}

/// Starts the ticket-key rotation (every few minutes, and at once), once
/// per process; it stops with `shutdown`.
pub fn spawn(state: AppState, shutdown: CancellationToken) {
    if state
        .platform_tls_started
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    tokio::spawn(async move {
        loop {
            match state.store.rotate_ticket_keys(now_ms()).await {
                Ok(written) => {
                    for (revision, pop_id) in written {
                        state.notifier.bump(revision, Scope::Pop(pop_id));
                        tracing::debug!(pop_id, revision, "ticket key made");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "rotating ticket keys failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ROTATION_CHECK) => {}
            }
        }
    });
}
