//! The store: every query the API makes, over one `sqlx::AnyPool` so the
//! same code runs on SQLite (the embedded default) and Postgres. Queries use
//! `$N` placeholders, which both drivers accept. Every tenant-facing method
//! takes the tenant id first and filters by it. Unique violations surface as
//! `sqlx::Error::Database` for the caller to map to 409.
//!
//! Every write that has a rule to keep is one transaction that keeps it:
//! - a quota (apps, stored bytes, tokens) is checked inside the transaction that
//!   would pass it, after locking the tenant's row, so parallel requests
//!   cannot each see room for one more;
//! - a change to what gateways serve appends its feed row in the same
//!   transaction ([`crate::desired_state::append_change`]);
//! - a version is created only if its component's bytes are still stored,
//!   checked after the component's row is referenced (on Postgres, locked
//!   by the foreign key), and blobs are deleted only in the transaction that
//!   deletes their unreferenced row ([`Store::collect_components`]), so a
//!   blob is never deleted under a version that uses it.
//!
//! SQLite runs one connection, so its transactions never interleave.
//!
//! Private keys of tenants' certificates are stored sealed with the
//! operator's master key ([`crate::master_key`]), bound to their hostname;
//! the store seals them on the way in and opens them only for gateways
//! ([`Store::deployed_apps`]).

use crate::blob::{BlobError, BlobStore};
use crate::certificate::CheckedCertificate;
use crate::desired_state::{Scope, append_change};
use crate::fault::{FaultPoint, Faults};
use crate::master_key::{CryptoError, MasterKey, certificate_key_aad};
use gannet_model::api::{
    App, AuditEntry, CertificateSummary, Domain, ManagedCertificate, Ownership, Quotas,
    RolloutPolicy, Tenant, TokenInfo, Version,
};
use gannet_model::{ByteSize, Limits, Sha256Digest};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::BTreeMap;

/// SQLite schema.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
/// Postgres schema.
pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (embedded, one process).
    Sqlite,
    /// Postgres (shared by replicas).
    Postgres,
}

/// A connected, migrated store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    faults: Faults,
    master_key: Option<MasterKey>,
}

/// Most custom hostnames (with or without certificates) one tenant may
/// have: each goes, with its certificate, to every gateway.
pub const MAX_CUSTOM_HOSTNAMES_PER_TENANT: i64 = 100;

/// Why a write was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database failed (a unique violation: the name is taken).
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A quota would be passed.
    #[error("{0}")]
    Quota(String),
    /// The component's bytes were deleted meanwhile (store them again and
    /// retry).
    #[error("the component's bytes are no longer stored")]
    BlobMissing,
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The hostname is another app's (or the platform's), or this app's
    /// already and no certificate came to replace its own (what to do, for
    /// the caller).
    #[error("{0}")]
    HostnameTaken(String),
    /// A certificate came, but there is no master key to seal its key with.
    #[error("no master key to seal the private key with")]
    NoMasterKey,
    /// Sealing the private key failed.
    #[error("sealing the private key: {0}")]
    Seal(#[from] CryptoError),
    /// A live rollout stands in the way (what to do, for the caller).
    #[error("{0}")]
    RolloutInProgress(String),
}

fn hostname_taken(hostname: &str, own: bool) -> String {
    if own {
        format!(
            "the app already has hostname `{hostname}`: add it with a certificate to replace its certificate, or remove it first"
        )
    } else {
        format!("hostname `{hostname}` is already in use")
    }
}

/// Why a stored private key could not be opened (the key itself is never
/// in the message).
#[derive(Debug, thiserror::Error)]
pub enum CertificateKeyError {
    /// The store has no master key.
    #[error("no master key is configured")]
    NoMasterKey,
    /// The master key does not open it.
    #[error(transparent)]
    Open(#[from] CryptoError),
    /// It opened, but is not text.
    #[error("the opened private key is not text")]
    NotText,
}

/// What [`Store::check_certificate_keys`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCheck {
    /// Stored private keys the master key opens.
    pub opened: usize,
    /// Hostnames whose private key it does not open.
    pub failed: Vec<String>,
}

/// The certificate [`Store::add_domain`] gives a hostname.
#[derive(Debug, Clone, Copy)]
pub enum DomainCertificate<'a> {
    /// None: HTTPS clients get the platform's.
    None,
    /// The tenant's own, checked.
    Own(&'a CheckedCertificate),
    /// One the platform obtains over ACME (see [`crate::acme`]).
    Managed,
}

/// What [`Store::add_domain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainWritten {
    /// The revision that serves it.
    pub revision: i64,
    /// Whether the hostname is new to the app (false: its certificate was
    /// replaced).
    pub added: bool,
}

impl WriteError {
    /// Whether storing the component again and retrying may succeed: its
    /// blob or its row was collected under this write.
    pub fn component_collected(&self) -> bool {
        match self {
            WriteError::BlobMissing => true,
            WriteError::Db(sqlx::Error::Database(db)) => db.is_foreign_key_violation(),
            _ => false,
        }
    }
}

/// A version just created.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion {
    /// Its number.
    pub number: u32,
    /// The revision that made it live, if it was activated.
    pub revision: Option<i64>,
}

/// A token as the auth layer needs it.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Token id.
    pub id: i64,
    /// Its tenant (none for operators).
    pub tenant_id: Option<i64>,
    /// `operator` or `tenant`.
    pub role: String,
    /// Revocation time.
    pub revoked_ms: Option<i64>,
}

/// A tenant's request window, as [`Store::count_tenant_request`] left it.
#[derive(Debug, Clone, Copy)]
pub struct RateWindow {
    /// When the window started, ms since the Unix epoch.
    pub start_ms: i64,
    /// Requests counted in it, this one included.
    pub requests: i64,
}

/// An app row.
#[derive(Debug, Clone)]
pub struct AppRow {
    /// App id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Active version id.
    pub active_version_id: Option<i64>,
}

fn tenant_from(row: &AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        name: row.try_get("name")?,
        created_ms: row.try_get("created_ms")?,
        quotas: Quotas {
            max_apps: row.try_get::<i64, _>("max_apps")? as u32,
            max_component_size: ByteSize(row.try_get::<i64, _>("max_component_bytes")? as u64),
            max_total_bytes: ByteSize(row.try_get::<i64, _>("max_total_bytes")? as u64),
            max_versions_per_app: row.try_get::<i64, _>("max_versions_per_app")? as u32,
            max_memory: ByteSize(row.try_get::<i64, _>("max_memory_bytes")? as u64),
            max_cpu_ms: row.try_get::<i64, _>("max_cpu_ms")? as u64,
            max_wall_ms: row.try_get::<i64, _>("max_wall_ms")? as u64,
            max_tokens: row.try_get::<i64, _>("max_tokens")? as u32,
            max_inflight: row.try_get::<i64, _>("max_inflight")? as u32,
        },
    })
}

const TENANT_COLUMNS: &str = "name, created_ms, max_apps, max_component_bytes, max_total_bytes, max_versions_per_app, max_memory_bytes, max_cpu_ms, max_wall_ms, max_tokens, max_inflight";

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and migrates.
    pub async fn connect(url: &str) -> Result<Store, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database url `{url}`: use sqlite://PATH or postgres://…")
                    .into(),
            ));
        };
        let url =
            if dialect == Dialect::Sqlite && !url.contains("mode=") && !url.contains(":memory:") {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            } else {
                url.to_string()
            };
        let max = if dialect == Dialect::Sqlite { 1 } else { 10 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url)
            .await?;
        if dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let migrator = match dialect {
            Dialect::Sqlite => &SQLITE_MIGRATOR,
            Dialect::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&pool).await?;
        Ok(Store {
            pool,
            dialect,
            faults: Faults::default(),
            master_key: None,
        })
    }

    /// The same store, sealing and opening private keys with `key` (none:
    /// certificates cannot be added, and stored ones are not sent).
    pub fn with_master_key(mut self, key: Option<MasterKey>) -> Store {
        self.master_key = key;
        self
    }

    /// The master key, if the store has one.
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.master_key.as_ref()
    }

    /// The fault points armed for this store (none outside tests).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The same store, running `faults` at its fault points (tests).
    pub fn with_faults(mut self, faults: Faults) -> Store {
        self.faults = faults;
        self
    }

    /// The database kind.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool (for blob storage in the database).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The newest migration this binary knows for its database.
    pub fn newest_migration(&self) -> i64 {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATOR,
            Dialect::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Whether this replica can serve (`GET /readyz`): the database
    /// answers, and its applied migrations reach the newest this binary
    /// knows. `Err` says why not (without the database's own error text,
    /// which is logged: the probe is unauthenticated).
    pub async fn readiness(&self) -> Result<(), String> {
        if let Err(e) = sqlx::query("SELECT 1").execute(&self.pool).await {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            return Err("the database does not answer".into());
        }
        let applied = sqlx::query(
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) AS v FROM _sqlx_migrations WHERE success = TRUE",
        )
        .fetch_one(&self.pool)
        .await
        .and_then(|r| r.try_get::<i64, _>("v"));
        let applied = match applied {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: the applied migrations cannot be read");
                return Err("the database's applied migrations cannot be read".into());
            }
        };
        let known = self.newest_migration();
        if applied < known {
            return Err(format!(
                "the database's schema is at migration {applied}; this binary needs migration {known}"
            ));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- tokens

    /// Stores a token hash; returns its id.
    pub async fn insert_token(
        &self,
        tenant_id: Option<i64>,
        role: &str,
        hash: &str,
        label: &str,
    ) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(
            "INSERT INTO tokens (tenant_id, role, hash, label, created_ms) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(tenant_id)
        .bind(role)
        .bind(hash)
        .bind(label)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        row.try_get("id")
    }

    /// Stores a token the tenant issued itself, in one transaction that
    /// checks its `max_tokens` quota (active tokens only) under the tenant's
    /// row lock, so parallel requests cannot each see room for one more.
    /// Returns its id.
    pub async fn insert_tenant_token(
        &self,
        tenant_id: i64,
        hash: &str,
        label: &str,
    ) -> Result<i64, WriteError> {
        let mut tx = self.pool.begin().await?;
        let quotas = lock_tenant(&mut tx, tenant_id).await?.quotas;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM tokens WHERE tenant_id = $1 AND revoked_ms IS NULL",
        )
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if row.try_get::<i64, _>("n")? >= i64::from(quotas.max_tokens) {
            return Err(WriteError::Quota(format!(
                "the tenant already has its quota of {} tokens; revoke one (`gannet tokens revoke ID`) or ask the operator for more",
                quotas.max_tokens
            )));
        }
        let row = sqlx::query(
            "INSERT INTO tokens (tenant_id, role, hash, label, created_ms) VALUES ($1, 'tenant', $2, $3, $4) RETURNING id",
        )
        .bind(tenant_id)
        .bind(hash)
        .bind(label)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    /// Counts one request of the tenant in the fixed window of `window_ms`
    /// containing `at_ms`, in one statement shared by every replica: a
    /// newer window restarts the count, an older one (a replica whose clock
    /// is behind) counts in the newest. Returns the window and its count.
    pub async fn count_tenant_request(
        &self,
        tenant_id: i64,
        at_ms: i64,
        window_ms: i64,
    ) -> Result<RateWindow, sqlx::Error> {
        let window_ms = window_ms.max(1);
        let start = at_ms - at_ms.rem_euclid(window_ms);
        let row = sqlx::query(
            "INSERT INTO tenant_rate (tenant_id, window_start, requests) VALUES ($1, $2, 1) \
             ON CONFLICT (tenant_id) DO UPDATE SET \
             requests = CASE WHEN excluded.window_start > tenant_rate.window_start THEN 1 ELSE tenant_rate.requests + 1 END, \
             window_start = CASE WHEN excluded.window_start > tenant_rate.window_start THEN excluded.window_start ELSE tenant_rate.window_start END \
             RETURNING window_start, requests",
        )
        .bind(tenant_id)
        .bind(start)
        .fetch_one(&self.pool)
        .await?;
        Ok(RateWindow {
            start_ms: row.try_get("window_start")?,
            requests: row.try_get("requests")?,
        })
    }

    /// Whether any operator token exists.
    pub async fn has_operator_token(&self) -> Result<bool, sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM tokens WHERE role = 'operator' AND revoked_ms IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Looks a token up by hash and records its use.
    pub async fn find_token(&self, hash: &str) -> Result<Option<TokenRow>, sqlx::Error> {
        let row = sqlx::query("SELECT id, tenant_id, role, revoked_ms FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let token = TokenRow {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            role: row.try_get("role")?,
            revoked_ms: row.try_get("revoked_ms")?,
        };
        if token.revoked_ms.is_none() {
            sqlx::query("UPDATE tokens SET last_used_ms = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(token.id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(token))
    }

    /// The tenant's tokens.
    pub async fn list_tokens(&self, tenant_id: i64) -> Result<Vec<TokenInfo>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, label, created_ms, last_used_ms, revoked_ms FROM tokens WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id")?,
                    label: r.try_get("label")?,
                    created_ms: r.try_get("created_ms")?,
                    last_used_ms: r.try_get("last_used_ms")?,
                    revoked_ms: r.try_get("revoked_ms")?,
                })
            })
            .collect()
    }

    /// Revokes one of the tenant's tokens; false if it has none with `id`.
    pub async fn revoke_token(&self, tenant_id: i64, id: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_ms = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(tenant_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // --------------------------------------------------------------- tenants

    /// Creates a tenant; returns its id.
    pub async fn create_tenant(
        &self,
        name: &str,
        q: &Quotas,
    ) -> Result<(i64, Tenant), sqlx::Error> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO tenants (name, max_apps, max_component_bytes, max_total_bytes, max_versions_per_app, max_memory_bytes, max_cpu_ms, max_wall_ms, max_tokens, max_inflight, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(name)
        .bind(q.max_apps as i64)
        .bind(q.max_component_size.bytes() as i64)
        .bind(q.max_total_bytes.bytes() as i64)
        .bind(q.max_versions_per_app as i64)
        .bind(q.max_memory.bytes() as i64)
        .bind(q.max_cpu_ms as i64)
        .bind(q.max_wall_ms as i64)
        .bind(i64::from(q.max_tokens))
        .bind(i64::from(q.max_inflight))
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok((
            row.try_get("id")?,
            Tenant {
                name: name.to_string(),
                quotas: q.clone(),
                created_ms: now,
            },
        ))
    }

    /// A tenant by id.
    pub async fn tenant(&self, id: i64) -> Result<Tenant, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        tenant_from(&row)
    }

    /// A tenant's id by name.
    pub async fn tenant_id(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query("SELECT id FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("id")).transpose()
    }

    /// All tenants.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from).collect()
    }

    /// Bytes of components the tenant holds.
    pub async fn stored_bytes(&self, tenant_id: i64) -> Result<u64, sqlx::Error> {
        stored_bytes(&mut *self.pool.acquire().await?, tenant_id).await
    }

    /// Whether the tenant already holds `digest`.
    pub async fn tenant_has_component(
        &self,
        tenant_id: i64,
        digest: &Sha256Digest,
    ) -> Result<bool, sqlx::Error> {
        holds(&mut *self.pool.acquire().await?, tenant_id, digest).await
    }

    // ------------------------------------------------------------------ apps

    /// Number of apps the tenant has.
    pub async fn count_apps(&self, tenant_id: i64) -> Result<u32, sqlx::Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM apps WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? as u32)
    }

    /// Creates an app with its platform hostname, in one transaction that
    /// also checks the tenant's app quota (under the tenant's row lock).
    pub async fn create_app(
        &self,
        tenant_id: i64,
        name: &str,
        hostname: &str,
        placement: &str,
        affinity: &str,
    ) -> Result<App, WriteError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let quotas = lock_tenant(&mut tx, tenant_id).await?.quotas;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM apps WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&mut *tx)
            .await?;
        if row.try_get::<i64, _>("n")? >= i64::from(quotas.max_apps) {
            return Err(WriteError::Quota(format!(
                "the tenant already has its quota of {} apps; delete one or ask the operator for more",
                quotas.max_apps
            )));
        }
        let row = sqlx::query(
            "INSERT INTO apps (tenant_id, name, created_ms, placement, affinity) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(tenant_id)
        .bind(name)
        .bind(now)
        .bind(placement)
        .bind(affinity)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        sqlx::query("INSERT INTO hostnames (hostname, app_id, kind, created_ms, verified_ms, verified_by) VALUES ($1, $2, 'platform', $3, $3, 'platform')")
            .bind(hostname)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let pops = crate::placement::placed_pops(placement, &self.pop_labels().await?);
        Ok(App {
            name: name.to_string(),
            hostnames: vec![hostname.to_string()],
            active_version: None,
            created_ms: now,
            placement: placement.to_string(),
            pops,
            affinity: crate::placement::check_affinity(affinity)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            canary_version: None,
            rollout_policy: None,
        })
    }

    /// One of the tenant's apps, by name.
    pub async fn app_row(&self, tenant_id: i64, name: &str) -> Result<Option<AppRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id, name, active_version_id FROM apps WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(AppRow {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                active_version_id: r.try_get("active_version_id")?,
            })
        })
        .transpose()
    }

    /// The tenant's apps with hostnames and active version numbers.
    pub async fn list_apps(&self, tenant_id: i64) -> Result<Vec<App>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT a.id, a.name, a.created_ms, a.placement, a.affinity, a.rollout_steps, a.rollout_bake_ms, v.number AS active, \
             (SELECT MAX(r.canary_version) FROM rollouts r WHERE r.app_id = a.id AND r.phase IN {}) AS canary \
             FROM apps a LEFT JOIN versions v ON v.id = a.active_version_id \
             WHERE a.tenant_id = $1 ORDER BY a.name",
            crate::placement::LIVE_ROLLOUT
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        let pops = self.pop_labels().await?;
        let mut apps = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let placement: String = r.try_get("placement")?;
            let affinity: String = r.try_get("affinity")?;
            apps.push(App {
                name: r.try_get("name")?,
                hostnames: self.hostnames(id).await?,
                active_version: r.try_get::<Option<i64>, _>("active")?.map(|n| n as u32),
                created_ms: r.try_get("created_ms")?,
                pops: crate::placement::placed_pops(&placement, &pops),
                placement,
                affinity: crate::placement::check_affinity(&affinity)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                canary_version: r.try_get::<Option<i64>, _>("canary")?.map(|n| n as u32),
                rollout_policy: {
                    let steps: Option<String> = r.try_get("rollout_steps")?;
                    let bake_ms: Option<i64> = r.try_get("rollout_bake_ms")?;
                    (steps.is_some() || bake_ms.is_some()).then(|| RolloutPolicy {
                        steps,
                        bake_ms: bake_ms.map(|b| b.max(0) as u64),
                    })
                },
            });
        }
        Ok(apps)
    }

    /// An app's hostnames, platform one first.
    pub async fn hostnames(&self, app_id: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT hostname FROM hostnames WHERE app_id = $1 ORDER BY kind DESC, hostname",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get("hostname")).collect()
    }

    /// Adds custom hostname `hostname` to an app, with the tenant's own
    /// certificate if one is given, in one transaction with its feed row.
    /// A hostname the app already has takes a new certificate (a rotation:
    /// the certificate is replaced, and the change goes to the feed); without
    /// one it is [`WriteError::HostnameTaken`], as is any other app's or the
    /// platform's hostname. The private key is sealed with the master key,
    /// bound to the hostname, before the transaction starts.
    pub async fn add_domain(
        &self,
        app_id: i64,
        hostname: &str,
        wanted: DomainCertificate<'_>,
    ) -> Result<DomainWritten, WriteError> {
        let certificate = match wanted {
            DomainCertificate::Own(c) => Some(c),
            _ => None,
        };
        let managed = matches!(wanted, DomainCertificate::Managed);
        let sealed = match certificate {
            Some(c) => {
                let key = self.master_key.as_ref().ok_or(WriteError::NoMasterKey)?;
                Some((
                    c,
                    key.seal(c.key_pem().as_bytes(), &certificate_key_aad(hostname))?,
                ))
            }
            None => None,
        };
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Locks the hostname's row, if there is one, until commit (a no-op
        // update: portable), so a removal cannot interleave with a rotation.
        let existing = sqlx::query(
            "UPDATE hostnames SET created_ms = created_ms WHERE hostname = $1 RETURNING app_id, kind",
        )
        .bind(hostname)
        .fetch_optional(&mut *tx)
        .await?;
        let added = match existing {
            None => {
                // Every hostname (and its certificate) goes to every
                // gateway: a tenant's count is bounded, under the tenant's
                // row lock (two adds at once cannot both take the last
                // place).
                let tenant_id: i64 = sqlx::query("SELECT tenant_id FROM apps WHERE id = $1")
                    .bind(app_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("tenant_id")?;
                lock_tenant(&mut tx, tenant_id).await?;
                let held: i64 = sqlx::query(
                    "SELECT COUNT(*) AS n FROM hostnames h JOIN apps a ON a.id = h.app_id \
                     WHERE h.kind = 'custom' AND a.tenant_id = (SELECT tenant_id FROM apps WHERE id = $1)",
                )
                .bind(app_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
                if held >= MAX_CUSTOM_HOSTNAMES_PER_TENANT {
                    return Err(WriteError::Quota(format!(
                        "a tenant may have at most {MAX_CUSTOM_HOSTNAMES_PER_TENANT} custom hostnames; remove one first"
                    )));
                }
                // A unique violation here: added by someone else meanwhile.
                // It serves once its owner proves control (see
                // crate::ownership): checked from now on.
                sqlx::query(
                    "INSERT INTO hostnames (hostname, app_id, kind, created_ms, verification_token, next_check_ms) \
                     VALUES ($1, $2, 'custom', $3, $4, $3)",
                )
                .bind(hostname)
                .bind(app_id)
                .bind(now)
                .bind(crate::ownership::new_token())
                .execute(&mut *tx)
                .await?;
                true
            }
            Some(row) => {
                let owner: i64 = row.try_get("app_id")?;
                let kind: String = row.try_get("kind")?;
                let own = owner == app_id && kind == "custom";
                if !own || (sealed.is_none() && !managed) {
                    return Err(WriteError::HostnameTaken(hostname_taken(hostname, own)));
                }
                false
            }
        };
        if let Some((c, key_sealed)) = sealed {
            upsert_certificate(&mut tx, hostname, "custom", c, key_sealed, now).await?;
            // The tenant's own certificate replaces a managed one: the
            // platform stops obtaining it.
            sqlx::query("DELETE FROM managed_domains WHERE hostname = $1")
                .bind(hostname)
                .execute(&mut *tx)
                .await?;
        }
        if managed {
            // Due now; a certificate the hostname already has (the
            // tenant's own) is served until the managed one is issued.
            // Asking again for one already managed changes nothing: it
            // does not reset the back-off (the CA's rate limits are the
            // platform account's, shared by every tenant).
            sqlx::query(
                "INSERT INTO managed_domains (hostname, state, next_attempt_ms, updated_ms) VALUES ($1, 'pending', $2, $2) \
                 ON CONFLICT (hostname) DO NOTHING",
            )
            .bind(hostname)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let revision = self.append_change(&mut tx, app_id).await?;
        if added {
            // The revision that carries its token to gateways.
            sqlx::query("UPDATE hostnames SET token_revision = $1 WHERE hostname = $2")
                .bind(revision)
                .bind(hostname)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(DomainWritten { revision, added })
    }

    /// Removes a custom hostname and its certificate; the revision that
    /// stops serving it, or `None` if the app has no such one.
    pub async fn remove_hostname(
        &self,
        app_id: i64,
        hostname: &str,
    ) -> Result<Option<i64>, WriteError> {
        let mut tx = self.pool.begin().await?;
        // The hostname's row first, then its certificate's: the order
        // `add_domain` locks them in (so the two cannot deadlock). Its
        // foreign key cascades the certificate where foreign keys are
        // enforced; the explicit delete covers the rest.
        let done = sqlx::query(
            "DELETE FROM hostnames WHERE app_id = $1 AND hostname = $2 AND kind = 'custom'",
        )
        .bind(app_id)
        .bind(hostname)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query("DELETE FROM certificates WHERE hostname = $1")
            .bind(hostname)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM managed_domains WHERE hostname = $1")
            .bind(hostname)
            .execute(&mut *tx)
            .await?;
        let revision = self.append_change(&mut tx, app_id).await?;
        tx.commit().await?;
        Ok(Some(revision))
    }

    /// The tenant's custom hostnames (of one app, with `app_id`), by app
    /// and hostname, each with what its certificate says (never its key).
    pub async fn list_domains(
        &self,
        tenant_id: i64,
        app_id: Option<i64>,
    ) -> Result<Vec<Domain>, sqlx::Error> {
        let one_app = if app_id.is_some() {
            " AND a.id = $2"
        } else {
            ""
        };
        let sql = format!(
            "SELECT h.hostname, a.name AS app, h.created_ms, c.kind AS cert_kind, c.issuer, c.names_json, \
             c.not_before, c.not_after, c.updated_ms, m.state AS managed_state, m.error AS managed_error, m.next_attempt_ms, \
             h.verified_by, h.verified_ms, h.verification_token, h.check_error, h.next_check_ms \
             FROM hostnames h JOIN apps a ON a.id = h.app_id LEFT JOIN certificates c ON c.hostname = h.hostname \
             LEFT JOIN managed_domains m ON m.hostname = h.hostname \
             WHERE a.tenant_id = $1 AND h.kind = 'custom'{one_app} ORDER BY a.name, h.hostname"
        );
        let mut query = sqlx::query(&sql).bind(tenant_id);
        if let Some(id) = app_id {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let certificate = match r.try_get::<Option<String>, _>("cert_kind")? {
                    None => None,
                    Some(kind) => Some(CertificateSummary {
                        kind,
                        issuer: r
                            .try_get::<Option<String>, _>("issuer")?
                            .unwrap_or_default(),
                        names: serde_json::from_str(
                            &r.try_get::<Option<String>, _>("names_json")?
                                .unwrap_or_default(),
                        )
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                        not_before: r.try_get::<Option<i64>, _>("not_before")?.unwrap_or(0),
                        not_after: r.try_get::<Option<i64>, _>("not_after")?.unwrap_or(0),
                        updated_ms: r.try_get::<Option<i64>, _>("updated_ms")?.unwrap_or(0),
                    }),
                };
                let managed = match r.try_get::<Option<String>, _>("managed_state")? {
                    None => None,
                    Some(state) => Some(ManagedCertificate {
                        state,
                        error: r.try_get("managed_error")?,
                        next_attempt_ms: r
                            .try_get::<Option<i64>, _>("next_attempt_ms")?
                            .unwrap_or(0),
                    }),
                };
                let hostname: String = r.try_get("hostname")?;
                let verified = r.try_get::<Option<i64>, _>("verified_ms")?.is_some();
                let token: Option<String> = if verified {
                    None
                } else {
                    r.try_get("verification_token")?
                };
                let ownership = Some(Ownership {
                    verified,
                    verified_by: r.try_get("verified_by")?,
                    dns_record: token.as_ref().map(|t| {
                        format!(
                            "{} TXT \"{t}\"",
                            crate::ownership::check::dns_record_name(&hostname)
                        )
                    }),
                    http_url: token.as_ref().map(|t| {
                        format!("http://{hostname}{}", crate::ownership::check::http_path(t))
                    }),
                    error: if verified {
                        None
                    } else {
                        r.try_get("check_error")?
                    },
                    next_check_ms: if verified {
                        None
                    } else {
                        r.try_get("next_check_ms")?
                    },
                    expires_ms: if verified {
                        None
                    } else {
                        Some(r.try_get::<i64, _>("created_ms")?.saturating_add(
                            crate::ownership::store::UNPROVED_CLAIM_LIFETIME.as_millis() as i64,
                        ))
                    },
                    token,
                });
                Ok(Domain {
                    hostname,
                    app: r.try_get("app")?,
                    certificate,
                    managed,
                    ownership,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Opens the sealed private key of `hostname`'s certificate with the
    /// master key, as PEM.
    pub fn open_certificate_key(
        &self,
        hostname: &str,
        sealed: &[u8],
    ) -> Result<String, CertificateKeyError> {
        let key = self
            .master_key
            .as_ref()
            .ok_or(CertificateKeyError::NoMasterKey)?;
        let plain = key.open(sealed, &certificate_key_aad(hostname))?;
        String::from_utf8(plain).map_err(|_| CertificateKeyError::NotText)
    }

    /// Tries the master key on every stored private key (at start: a wrong
    /// key is found before gateways lose their certificates). Without a
    /// master key, every stored key fails.
    pub async fn check_certificate_keys(&self) -> Result<KeyCheck, sqlx::Error> {
        let rows = sqlx::query("SELECT hostname, key_sealed FROM certificates ORDER BY hostname")
            .fetch_all(&self.pool)
            .await?;
        let mut check = KeyCheck::default();
        for r in rows {
            let hostname: String = r.try_get("hostname")?;
            let sealed: Vec<u8> = r.try_get("key_sealed")?;
            match self.open_certificate_key(&hostname, &sealed) {
                Ok(_) => check.opened += 1,
                Err(_) => check.failed.push(hostname),
            }
        }
        Ok(check)
    }

    /// Appends the change of `app_id` just written in `tx` to the feed, with
    /// the fault points around it.
    pub(crate) async fn append_change(
        &self,
        tx: &mut AnyConnection,
        app_id: i64,
    ) -> Result<i64, WriteError> {
        self.faults.at(FaultPoint::ChangeWritten).await;
        let revision = append_change(tx, self.dialect, app_id, Scope::Everywhere).await?;
        self.faults.at(FaultPoint::FeedWritten).await;
        Ok(revision)
    }

    // -------------------------------------------------------------- versions

    /// Creates the next version of `app` from a stored component, in one
    /// transaction: checks the tenant's stored-bytes quota (under the
    /// tenant's row lock), records the component and the tenant's hold on
    /// it, checks its bytes are still stored, activates the version if asked
    /// (appending the change to the feed), and prunes the oldest inactive
    /// versions over the tenant's `max_versions_per_app`. Components no one
    /// holds any more are left for [`Store::collect_components`].
    #[allow(clippy::too_many_arguments)]
    pub async fn create_version(
        &self,
        tenant_id: i64,
        app_id: i64,
        digest: &Sha256Digest,
        size_bytes: u64,
        env: &BTreeMap<String, String>,
        limits: &Limits,
        outbound: &[String],
        activate: bool,
        blobs: &dyn BlobStore,
    ) -> Result<NewVersion, WriteError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let quotas = lock_tenant(&mut tx, tenant_id).await?.quotas;
        if !holds(&mut tx, tenant_id, digest).await? {
            let stored = stored_bytes(&mut tx, tenant_id).await?;
            if stored + size_bytes > quotas.max_total_bytes.bytes() {
                return Err(WriteError::Quota(format!(
                    "storing {} more would pass the tenant's {} of stored components ({} in use); roll back and let old versions be pruned, or ask the operator for more",
                    ByteSize(size_bytes),
                    quotas.max_total_bytes,
                    ByteSize(stored)
                )));
            }
        }
        let digest_text = digest.to_string();
        sqlx::query("INSERT INTO components (digest, size_bytes, created_ms) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(&digest_text)
            .bind(size_bytes as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO tenant_components (tenant_id, digest, created_ms) VALUES ($1, $2, $3) ON CONFLICT (tenant_id, digest) DO NOTHING")
            .bind(tenant_id)
            .bind(&digest_text)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Locks the app's row until commit: versions of one app are numbered
        // and pruned one transaction at a time.
        let row = sqlx::query(
            "UPDATE apps SET next_version = next_version + 1 WHERE id = $1 RETURNING next_version, active_version_id",
        )
        .bind(app_id)
        .fetch_one(&mut *tx)
        .await?;
        let number: i64 = row.try_get::<i64, _>("next_version")? - 1;
        let was_active: Option<i64> = row.try_get("active_version_id")?;
        // The foreign key to `components` holds the component's row (on
        // Postgres, a key-share lock) until commit: from here on it cannot
        // be collected, so checking its bytes now is checking them for good.
        let row = sqlx::query(
            "INSERT INTO versions (app_id, number, digest, env_json, limits_json, outbound_json, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(app_id)
        .bind(number)
        .bind(&digest_text)
        .bind(to_json(env))
        .bind(to_json(limits))
        .bind(to_json(&outbound))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let version_id: i64 = row.try_get("id")?;
        if !blobs.present_in(&mut tx, digest).await? {
            return Err(WriteError::BlobMissing);
        }
        // Prune: keep the newest `keep` versions and the active one.
        let active = if activate {
            Some(version_id)
        } else {
            was_active
        };
        let rows = sqlx::query("SELECT id FROM versions WHERE app_id = $1 ORDER BY number DESC")
            .bind(app_id)
            .fetch_all(&mut *tx)
            .await?;
        // The active version always stays and uses one of the `keep` places.
        let mut budget = quotas
            .max_versions_per_app
            .saturating_sub(u32::from(active.is_some()));
        for r in rows {
            let id: i64 = r.try_get("id")?;
            if Some(id) == active {
                continue;
            }
            if budget > 0 {
                budget -= 1;
                continue;
            }
            sqlx::query("DELETE FROM versions WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        // The tenant's hold ends on components none of its versions use.
        sqlx::query(
            "DELETE FROM tenant_components WHERE tenant_id = $1 AND digest NOT IN \
             (SELECT v.digest FROM versions v JOIN apps a ON a.id = v.app_id WHERE a.tenant_id = $1)",
        )
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        // Last: the change and its feed row, so the feed head's lock is held
        // only for the commit.
        let mut revision = None;
        if activate {
            sqlx::query("UPDATE apps SET active_version_id = $1 WHERE id = $2")
                .bind(version_id)
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            // An immediate deploy replaces a live rollout at once.
            let by = number as u32;
            crate::rollouts::store::end_live_rollouts(
                &mut tx,
                app_id,
                &gannet_scheduler::rollout::Phase::Superseded { by },
                &format!("version {by} was deployed immediately"),
                now,
            )
            .await?;
            revision = Some(self.append_change(&mut tx, app_id).await?);
        }
        tx.commit().await?;
        Ok(NewVersion {
            number: number as u32,
            revision,
        })
    }

    /// Deletes `digest`'s bytes if no component row claims them: what an
    /// upload refused after storing its blob (a quota passed meanwhile)
    /// leaves behind. An upload of the same bytes that is storing them at
    /// this moment finds them gone when it creates its version, and stores
    /// them again.
    pub async fn discard_unclaimed_blob(&self, blobs: &dyn BlobStore, digest: &Sha256Digest) {
        let attempt = async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query("SELECT COUNT(*) AS n FROM components WHERE digest = $1")
                .bind(digest.to_string())
                .fetch_one(&mut *tx)
                .await?;
            if row.try_get::<i64, _>("n")? == 0 {
                blobs.delete_in(&mut tx, digest).await?;
            }
            tx.commit().await?;
            Ok::<_, WriteError>(())
        };
        if let Err(e) = attempt.await {
            tracing::warn!(%digest, error = %e, "unclaimed blob not deleted");
        }
    }

    /// Deletes every component no tenant holds and no version uses, row and
    /// bytes together, one transaction per component: the row is deleted
    /// only while still unreferenced (a version created meanwhile keeps it —
    /// on Postgres its foreign key makes the delete fail), and its bytes are
    /// deleted before that transaction commits. Returns the digests deleted.
    pub async fn collect_components(&self, blobs: &dyn BlobStore) -> Vec<String> {
        const UNREFERENCED: &str = "NOT EXISTS (SELECT 1 FROM tenant_components t WHERE t.digest = c.digest) \
             AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.digest = c.digest)";
        let candidates = match sqlx::query(&format!(
            "SELECT digest FROM components c WHERE {UNREFERENCED}"
        ))
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| r.try_get::<String, _>("digest").ok())
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "listing unreferenced components failed");
                return Vec::new();
            }
        };
        let mut deleted = Vec::new();
        for text in candidates {
            let Ok(digest) = text.parse::<Sha256Digest>() else {
                continue;
            };
            let attempt = async {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(&format!(
                    "DELETE FROM components AS c WHERE c.digest = $1 AND {UNREFERENCED}"
                ))
                .bind(&text)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok::<_, WriteError>(false);
                }
                blobs.delete_in(&mut tx, &digest).await?;
                tx.commit().await?;
                Ok(true)
            }
            .await;
            match attempt {
                Ok(true) => deleted.push(text),
                Ok(false) => {}
                // Referenced meanwhile (a foreign key stopped the delete).
                Err(e) => tracing::debug!(%digest, error = %e, "component not collected"),
            }
        }
        deleted
    }

    /// The app's versions, newest first.
    pub async fn list_versions(&self, app: &AppRow) -> Result<Vec<Version>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT v.id, v.number, v.digest, c.size_bytes, v.env_json, v.limits_json, v.outbound_json, v.created_ms \
             FROM versions v JOIN components c ON c.digest = v.digest WHERE v.app_id = $1 ORDER BY v.number DESC",
        )
        .bind(app.id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let decode = |col: &str| -> Result<String, sqlx::Error> { r.try_get(col) };
                let bad = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
                Ok(Version {
                    number: r.try_get::<i64, _>("number")? as u32,
                    digest: decode("digest")?
                        .parse()
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
                    env: serde_json::from_str(&decode("env_json")?).map_err(bad)?,
                    limits: serde_json::from_str(&decode("limits_json")?).map_err(bad)?,
                    outbound: serde_json::from_str(&decode("outbound_json")?).map_err(bad)?,
                    active: app.active_version_id == Some(r.try_get("id")?),
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Makes version `number` the app's active one; the revision that
    /// serves it, or `None` if the app has no such version.
    pub async fn activate(&self, app: &AppRow, number: u32) -> Result<Option<i64>, WriteError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE apps SET active_version_id = (SELECT id FROM versions WHERE app_id = $1 AND number = $2) \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM versions WHERE app_id = $1 AND number = $2)",
        )
        .bind(app.id)
        .bind(number as i64)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        // A rollback is immediate: a live rollout ends with it, its canary
        // off every PoP in the same revision.
        let reason = format!("rolled back to version {number}");
        crate::rollouts::store::end_live_rollouts(
            &mut tx,
            app.id,
            &gannet_scheduler::rollout::Phase::Aborted {
                reason: reason.clone(),
            },
            &reason,
            now_ms(),
        )
        .await?;
        let revision = self.append_change(&mut tx, app.id).await?;
        tx.commit().await?;
        Ok(Some(revision))
    }

    // ----------------------------------------------------------------- audit

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        tenant_id: Option<i64>,
        token_id: i64,
        action: &str,
        target: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO audit (tenant_id, token_id, action, target, at_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(tenant_id)
            .bind(token_id)
            .bind(action)
            .bind(target)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The tenant's audit log, newest first.
    pub async fn list_audit(
        &self,
        tenant_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, action, target, token_id, at_ms FROM audit WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(tenant_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    token_id: r.try_get("token_id")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect()
    }
}

/// Locks the tenant's row until the transaction ends (a no-op update:
/// portable, and on SQLite the transaction is the only writer anyway) and
/// reads it: quota checks made after this see every committed change and
/// no concurrent one.
/// Stores `certificate` for `hostname` as `kind` (`custom`, `managed`),
/// its key already sealed, replacing the one it had.
pub(crate) async fn upsert_certificate(
    conn: &mut AnyConnection,
    hostname: &str,
    kind: &str,
    certificate: &CheckedCertificate,
    key_sealed: Vec<u8>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let info = certificate.info();
    sqlx::query(
        "INSERT INTO certificates (hostname, kind, cert_pem, key_sealed, issuer, names_json, not_before, not_after, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (hostname) DO UPDATE SET kind = excluded.kind, cert_pem = excluded.cert_pem, \
         key_sealed = excluded.key_sealed, issuer = excluded.issuer, names_json = excluded.names_json, \
         not_before = excluded.not_before, not_after = excluded.not_after, updated_ms = excluded.updated_ms",
    )
    .bind(hostname)
    .bind(kind)
    .bind(certificate.cert_pem())
    .bind(key_sealed)
    .bind(info.issuer.as_str())
    .bind(to_json(&info.names))
    .bind(info.not_before)
    .bind(info.not_after)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn lock_tenant(conn: &mut AnyConnection, tenant_id: i64) -> Result<Tenant, sqlx::Error> {
    sqlx::query("UPDATE tenants SET max_apps = max_apps WHERE id = $1")
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
    ))
    .bind(tenant_id)
    .fetch_one(&mut *conn)
    .await?;
    tenant_from(&row)
}

async fn stored_bytes(conn: &mut AnyConnection, tenant_id: i64) -> Result<u64, sqlx::Error> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(c.size_bytes), 0) AS BIGINT) AS n FROM tenant_components t JOIN components c ON c.digest = t.digest WHERE t.tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
}

async fn holds(
    conn: &mut AnyConnection,
    tenant_id: i64,
    digest: &Sha256Digest,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM tenant_components WHERE tenant_id = $1 AND digest = $2",
    )
    .bind(tenant_id)
    .bind(digest.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

/// A value as JSON text for a column.
fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}
