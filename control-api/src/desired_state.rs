//! Desired state for PoPs: the change feed, snapshots and deltas, PoPs and
//! their gateways (node tokens), acknowledgements and reports.
//!
//! Every change to what gateways serve (a version activated, a rollback, a
//! hostname added or removed) appends a row to `state_changes`; its id is the
//! new revision. Placement is not implemented yet: every PoP serves every app
//! that has an active version, so all PoPs share one revision sequence.
//!
//! Pollers wait on [`Notifier`]: in one process a watch channel; with
//! Postgres, changes committed through any replica are also announced with
//! `NOTIFY gannet_state` and every replica's listener bumps its channel.

use crate::store::{Dialect, Store, now_ms};
use gannet_model::snapshot::{AppReport, DeployedApp, FailedApp, GatewayAck, StateUpdate};
use sqlx::Row;
use std::collections::BTreeMap;
use tokio::sync::watch;

/// How many changes the feed retains; a poller older than that gets a
/// full snapshot.
pub const RETAINED_CHANGES: i64 = 10_000;

/// Wakes long-polls when the revision moves.
#[derive(Clone)]
pub struct Notifier {
    tx: watch::Sender<i64>,
}

impl Notifier {
    /// A notifier at `revision`.
    pub fn new(revision: i64) -> Self {
        Notifier {
            tx: watch::Sender::new(revision),
        }
    }
    /// Records that `revision` exists.
    pub fn bump(&self, revision: i64) {
        self.tx.send_if_modified(|r| {
            if revision > *r {
                *r = revision;
                true
            } else {
                false
            }
        });
    }
    /// A receiver of revisions.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.tx.subscribe()
    }
}

/// Starts a Postgres `LISTEN gannet_state` that bumps `notifier` on every
/// change committed by any replica. Reconnects on failure.
pub fn listen_postgres(url: String, notifier: Notifier) {
    tokio::spawn(async move {
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => {
                    if listener.listen("gannet_state").await.is_ok() {
                        while let Ok(n) = listener.recv().await {
                            if let Ok(rev) = n.payload().parse::<i64>() {
                                notifier.bump(rev);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "LISTEN gannet_state failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

/// A PoP's gateway as `gannet status` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct GatewayState {
    /// Gateway id.
    pub id: i64,
    /// Its PoP.
    pub pop: String,
    /// Revision it applied last.
    pub applied_revision: i64,
    /// Its last NACK reason, if the last apply failed.
    pub last_error: Option<String>,
    /// Last contact, ms.
    pub last_seen_ms: Option<i64>,
    /// What it served.
    pub apps: Vec<AppReport>,
    /// Apps it refused.
    pub failed_apps: Vec<FailedApp>,
}

/// A store result.
pub type DbResult<T> = Result<T, sqlx::Error>;

impl Store {
    /// The newest revision (0 when nothing has changed yet).
    pub async fn revision(&self) -> DbResult<i64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(MAX(revision), 0) AS BIGINT) AS r FROM state_changes",
        )
        .fetch_one(self.pool())
        .await?;
        row.try_get("r")
    }

    /// Appends a change for `app_id`; returns the new revision. Announces it
    /// to other replicas on Postgres.
    pub async fn record_change(&self, app_id: i64) -> DbResult<i64> {
        let row = sqlx::query(
            "INSERT INTO state_changes (app_id, at_ms) VALUES ($1, $2) RETURNING revision",
        )
        .bind(app_id)
        .bind(now_ms())
        .fetch_one(self.pool())
        .await?;
        let revision: i64 = row.try_get("revision")?;
        if self.dialect() == Dialect::Postgres {
            sqlx::query("SELECT pg_notify('gannet_state', $1)")
                .bind(revision.to_string())
                .execute(self.pool())
                .await?;
        }
        sqlx::query("DELETE FROM state_changes WHERE revision <= $1")
            .bind(revision - RETAINED_CHANGES)
            .execute(self.pool())
            .await?;
        Ok(revision)
    }

    /// Every app with an active version, as gateways serve it; or only those
    /// with ids in `only`.
    pub async fn deployed_apps(&self, only: Option<&[i64]>) -> DbResult<Vec<(i64, DeployedApp)>> {
        let rows = sqlx::query(
            "SELECT a.id AS app_id, a.name AS app, t.name AS tenant, v.number, v.digest, c.size_bytes, \
             v.env_json, v.limits_json, v.outbound_json \
             FROM apps a JOIN tenants t ON t.id = a.tenant_id JOIN versions v ON v.id = a.active_version_id \
             JOIN components c ON c.digest = v.digest ORDER BY a.id",
        )
        .fetch_all(self.pool())
        .await?;
        let bad = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        let mut out = Vec::new();
        for r in rows {
            let app_id: i64 = r.try_get("app_id")?;
            if only.is_some_and(|ids| !ids.contains(&app_id)) {
                continue;
            }
            let digest: String = r.try_get("digest")?;
            out.push((
                app_id,
                DeployedApp {
                    tenant: r.try_get("tenant")?,
                    app: r.try_get("app")?,
                    version: r.try_get::<i64, _>("number")? as u32,
                    digest: digest
                        .parse()
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
                    hosts: self.hostnames(app_id).await?,
                    env: serde_json::from_str::<BTreeMap<String, String>>(
                        &r.try_get::<String, _>("env_json")?,
                    )
                    .map_err(bad)?,
                    limits: serde_json::from_str(&r.try_get::<String, _>("limits_json")?)
                        .map_err(bad)?,
                    outbound: serde_json::from_str(&r.try_get::<String, _>("outbound_json")?)
                        .map_err(bad)?,
                },
            ));
        }
        Ok(out)
    }

    /// The update that brings a gateway at `since` to the current revision,
    /// or `None` when it is current. `since` is -1 for a gateway that has
    /// applied nothing.
    pub async fn state_since(&self, since: i64) -> DbResult<Option<StateUpdate>> {
        let revision = self.revision().await?;
        if since == revision {
            return Ok(None);
        }
        let oldest = sqlx::query(
            "SELECT CAST(COALESCE(MIN(revision), 0) AS BIGINT) AS r FROM state_changes",
        )
        .fetch_one(self.pool())
        .await?
        .try_get::<i64, _>("r")?;
        // Nothing applied yet (-1), ahead of us (a reset database), or older
        // than the retained feed: the whole state.
        if since < 0 || since > revision || (since < oldest - 1) {
            let apps = self
                .deployed_apps(None)
                .await?
                .into_iter()
                .map(|(_, a)| a)
                .collect();
            return Ok(Some(StateUpdate::Snapshot { revision, apps }));
        }
        let rows = sqlx::query(
            "SELECT DISTINCT app_id FROM state_changes WHERE revision > $1 AND revision <= $2",
        )
        .bind(since)
        .bind(revision)
        .fetch_all(self.pool())
        .await?;
        let changed: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get("app_id"))
            .collect::<Result<_, _>>()?;
        let live = self.deployed_apps(Some(&changed)).await?;
        let mut removals = Vec::new();
        for id in &changed {
            if !live.iter().any(|(a, _)| a == id) {
                let row = sqlx::query("SELECT a.name, t.name AS tenant FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = $1")
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?;
                if let Some(r) = row {
                    removals.push(format!(
                        "{}/{}",
                        r.try_get::<String, _>("tenant")?,
                        r.try_get::<String, _>("name")?
                    ));
                }
            }
        }
        Ok(Some(StateUpdate::Delta {
            revision,
            upserts: live.into_iter().map(|(_, a)| a).collect(),
            removals,
        }))
    }

    // ------------------------------------------------------- pops, gateways

    /// Creates a PoP.
    pub async fn create_pop(
        &self,
        name: &str,
        region: &str,
        labels: &BTreeMap<String, String>,
    ) -> DbResult<i64> {
        let row = sqlx::query("INSERT INTO pops (name, region, labels_json, created_ms) VALUES ($1, $2, $3, $4) RETURNING id")
            .bind(name)
            .bind(region)
            .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
            .bind(now_ms())
            .fetch_one(self.pool())
            .await?;
        row.try_get("id")
    }

    /// All PoPs: (name, region, labels).
    pub async fn list_pops(&self) -> DbResult<Vec<(String, String, BTreeMap<String, String>)>> {
        let rows = sqlx::query("SELECT name, region, labels_json FROM pops ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    r.try_get("region")?,
                    serde_json::from_str(&r.try_get::<String, _>("labels_json")?)
                        .unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// A PoP's id by name.
    pub async fn pop_id(&self, name: &str) -> DbResult<Option<i64>> {
        let row = sqlx::query("SELECT id FROM pops WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get("id")).transpose()
    }

    /// Registers a gateway of `pop_id` with a node token hash; returns its id.
    pub async fn create_gateway(&self, pop_id: i64, token_hash: &str) -> DbResult<i64> {
        let row = sqlx::query("INSERT INTO gateways (pop_id, token_hash, created_ms) VALUES ($1, $2, $3) RETURNING id")
            .bind(pop_id)
            .bind(token_hash)
            .bind(now_ms())
            .fetch_one(self.pool())
            .await?;
        row.try_get("id")
    }

    /// Revokes a gateway's node token.
    pub async fn revoke_gateway(&self, id: i64) -> DbResult<bool> {
        let done =
            sqlx::query("UPDATE gateways SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The gateway holding a node token: (gateway id, PoP name, revoked).
    pub async fn gateway_by_token(
        &self,
        token_hash: &str,
    ) -> DbResult<Option<(i64, String, bool)>> {
        let row = sqlx::query(
            "SELECT g.id, p.name, g.revoked_ms FROM gateways g JOIN pops p ON p.id = g.pop_id WHERE g.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get("name")?,
                r.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
            ))
        })
        .transpose()
    }

    /// Records a gateway's ACK or NACK and its report.
    pub async fn record_ack(&self, gateway_id: i64, ack: &GatewayAck) -> DbResult<()> {
        sqlx::query(
            "UPDATE gateways SET applied_revision = $1, last_error = $2, last_seen_ms = $3, report_json = $4, failed_json = $5 WHERE id = $6",
        )
        .bind(ack.applied_revision)
        .bind(ack.error.clone())
        .bind(now_ms())
        .bind(serde_json::to_string(&ack.apps).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&ack.failed_apps).unwrap_or_else(|_| "[]".into()))
        .bind(gateway_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a gateway as seen (on every poll).
    pub async fn touch_gateway(&self, gateway_id: i64) -> DbResult<()> {
        sqlx::query("UPDATE gateways SET last_seen_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(gateway_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every active gateway with its state.
    pub async fn gateway_states(&self) -> DbResult<Vec<GatewayState>> {
        let rows = sqlx::query(
            "SELECT g.id, p.name AS pop, g.applied_revision, g.last_error, g.last_seen_ms, g.report_json, g.failed_json \
             FROM gateways g JOIN pops p ON p.id = g.pop_id WHERE g.revoked_ms IS NULL ORDER BY p.name, g.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GatewayState {
                    id: r.try_get("id")?,
                    pop: r.try_get("pop")?,
                    applied_revision: r.try_get("applied_revision")?,
                    last_error: r.try_get("last_error")?,
                    last_seen_ms: r.try_get("last_seen_ms")?,
                    apps: serde_json::from_str(&r.try_get::<String, _>("report_json")?)
                        .unwrap_or_default(),
                    failed_apps: serde_json::from_str(&r.try_get::<String, _>("failed_json")?)
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The newest revision that changed `app_id` (0 if none).
    pub async fn app_revision(&self, app_id: i64) -> DbResult<i64> {
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(revision), 0) AS BIGINT) AS r FROM state_changes WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(self.pool())
            .await?;
        row.try_get("r")
    }
}
