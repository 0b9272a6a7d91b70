//! The rollout rows (`rollouts`), the gateways' version reports
//! (`version_reports`) and their transitions.
//!
//! Lock order, for every transaction that writes a rollout: the app's row
//! first ([`lock_app`], or any `UPDATE apps … WHERE id = …`), then its
//! rollout rows, then the feed head ([`append_change`], last). The leader's
//! writes ([`Store::save_rollout`]) check the scheduler's lease before all
//! of that ([`check_fence`]), and each is guarded by the row's
//! `row_version`: a tenant's write that ends a rollout
//! ([`end_live_rollouts`], [`Store::start_rollout`]) bumps it, and the
//! leader's next write of that row finds it changed ([`Saved::Conflict`]).

use super::lease::check_fence;
use crate::desired_state::{DbResult, Scope, append_change};
use crate::store::{Store, now_ms};
use gannet_model::api::{Figures, PopProgress, RolloutStatus, RolloutStep, RolloutTransition};
use gannet_model::snapshot::{GatewayReport, VersionCounters};
use gannet_scheduler::analysis::{Counters, LATENCY_BUCKETS};
use gannet_scheduler::rollout::{Phase, Policy, Transition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashMap};

/// A version's last report older than this (its gateway reported since,
/// without it) is deleted: 10 minutes.
pub const STALE_REPORT_MS: i64 = 10 * 60_000;

/// The phases of a live rollout, as an SQL list: `phase IN {LIVE}`.
pub const LIVE: &str = "('pending', 'progressing', 'paused')";

/// An app's PoPs and their labels.
pub type Placed = BTreeMap<String, BTreeMap<String, String>>;

/// What the leader writes in `analysis_json` for the status: per placed
/// PoP its gateways' progress, and the current step's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Analysis {
    /// Per placed PoP.
    pub(crate) pops: Vec<PopProgress>,
    /// The canary at the step's PoPs since the step started.
    pub(crate) canary: Figures,
    /// Its baseline (the stable version).
    pub(crate) stable: Figures,
}

/// A live rollout as the leader loads it.
#[derive(Clone, Debug)]
pub struct LiveRollout {
    /// The rollout's id.
    pub id: i64,
    /// Its app.
    pub app_id: i64,
    /// The app's tenant.
    pub tenant_id: i64,
    /// The tenant's name.
    pub tenant: String,
    /// The app's name.
    pub app: String,
    /// The stable version.
    pub stable: u32,
    /// The canary version.
    pub canary: u32,
    /// Its policy.
    pub policy: Policy,
    /// The app's PoPs and their labels when the rollout was made.
    pub placed: Placed,
    /// Its phase.
    pub phase: Phase,
    /// Its transitions, oldest first.
    pub history: Vec<Transition>,
    /// The canary's weight per placed PoP, as last published.
    pub weights: BTreeMap<String, u8>,
    /// Per step (from 0): the revision it was published in.
    pub published: BTreeMap<usize, i64>,
    /// The status figures last written (JSON).
    pub analysis_json: String,
    /// A tenant's action not yet applied.
    pub pending_action: Option<String>,
    /// The row's version: bumped by every write.
    pub row_version: i64,
}

impl LiveRollout {
    /// `tenant/app`, as gateways name the app.
    pub fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.app)
    }
}

/// A live rollout row that cannot be read (its JSON does not parse).
#[derive(Clone, Debug)]
pub struct BadRollout {
    /// The rollout's id.
    pub id: i64,
    /// What does not parse.
    pub why: String,
}

/// What the leader writes for one rollout ([`Store::save_rollout`]).
#[derive(Clone, Debug)]
pub struct RolloutWrite {
    /// The rollout's id.
    pub id: i64,
    /// Its app.
    pub app_id: i64,
    /// The app's tenant (for the audit log).
    pub tenant_id: i64,
    /// The app's name (for the audit log).
    pub app: String,
    /// The canary version.
    pub canary: u32,
    /// The row's version the leader loaded or last wrote: the write
    /// happens only if the row still has it.
    pub expected_row_version: i64,
    /// The phase now.
    pub phase: Phase,
    /// Every transition, oldest first.
    pub history: Vec<Transition>,
    /// The canary's weight per placed PoP now.
    pub weights: BTreeMap<String, u8>,
    /// Per step (from 0): the revision it was published in (the write adds
    /// the current step's when it publishes).
    pub published: BTreeMap<usize, i64>,
    /// The status figures (PoPs, canary and baseline) as JSON.
    pub analysis_json: String,
    /// The tenant's action applied: cleared unless another replaced it
    /// meanwhile.
    pub consumed_action: Option<String>,
    /// Whether gateways must get a new desired state (a step entered, a
    /// weight changed, the rollout ended): appends a feed change for the app.
    pub publish: bool,
    /// Whether the canary becomes the app's active version (it succeeded).
    pub activate_canary: bool,
    /// The transitions this write records, for the audit log.
    pub transitions: Vec<Transition>,
    /// The time of the write, ms (the lease must be valid then).
    pub now_ms: i64,
}

/// How a leader's write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Written.
    Ok {
        /// The feed revision that publishes it, when it published.
        revision: Option<i64>,
        /// The row's new version.
        row_version: i64,
    },
    /// The row changed since it was loaded (a tenant ended the rollout, or
    /// another leader wrote it): nothing was written; reload it.
    Conflict,
    /// The lease is no longer this leader's: nothing was written; step down.
    NotLeader,
}

/// A value as JSON text for a column.
fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// A JSON column's value, or a decode error naming the column.
fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> DbResult<T> {
    serde_json::from_str(text)
        .map_err(|e| sqlx::Error::Decode(format!("rollouts.{column}: {e}").into()))
}

/// The same, with the error as text.
fn parse_json<T: DeserializeOwned>(column: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{column}: {e}"))
}

/// A JSON column of `r`: a database error fails, JSON that does not parse
/// is the inner error (as text).
fn json_column<T: DeserializeOwned>(r: &AnyRow, column: &str) -> DbResult<Result<T, String>> {
    let text: String = r.try_get(column)?;
    Ok(parse_json(column, &text))
}

/// A row of [`Store::live_rollouts`]' query: a database error fails the
/// load, a JSON column that does not parse makes the inner error.
fn live_rollout(r: &AnyRow) -> DbResult<Result<LiveRollout, String>> {
    let policy: Policy = match json_column(r, "policy_json")? {
        Ok(value) => value,
        Err(why) => return Ok(Err(why)),
    };
    let placed: Placed = match json_column(r, "placed_json")? {
        Ok(value) => value,
        Err(why) => return Ok(Err(why)),
    };
    let phase: Phase = match json_column(r, "phase_json")? {
        Ok(value) => value,
        Err(why) => return Ok(Err(why)),
    };
    let history: Vec<Transition> = match json_column(r, "history_json")? {
        Ok(value) => value,
        Err(why) => return Ok(Err(why)),
    };
    let weights: BTreeMap<String, u8> = match json_column(r, "weights_json")? {
        Ok(value) => value,
        Err(why) => return Ok(Err(why)),
    };
    let published: BTreeMap<usize, i64> = match json_column(r, "published_json")? {
        Ok(value) => value,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(LiveRollout {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        tenant_id: r.try_get("tenant_id")?,
        tenant: r.try_get("tenant")?,
        app: r.try_get("app")?,
        stable: r.try_get::<i64, _>("stable_version")? as u32,
        canary: r.try_get::<i64, _>("canary_version")? as u32,
        policy,
        placed,
        phase,
        history,
        weights,
        published,
        analysis_json: r.try_get("analysis_json")?,
        pending_action: r.try_get("pending_action")?,
        row_version: r.try_get("row_version")?,
    }))
}

/// Scheduler counters from a gateway's report of one version (missing
/// latency buckets count 0, extra ones are ignored).
fn counters_of(v: &VersionCounters) -> Counters {
    let mut latency = [0u64; LATENCY_BUCKETS];
    for (slot, n) in latency.iter_mut().zip(&v.latency) {
        *slot = *n;
    }
    Counters {
        requests: v.requests,
        server_errors: v.server_errors,
        traps: v.traps,
        limit_kills: v.limit_kills,
        latency,
    }
}

/// Why a phase ended or paused, for the status.
fn phase_reason(phase: &Phase) -> Option<String> {
    match phase {
        Phase::Paused { reason, .. } | Phase::Aborted { reason } => Some(reason.clone()),
        Phase::Superseded { by } => Some(format!("superseded by version {by}")),
        Phase::Pending | Phase::Progressing { .. } | Phase::Succeeded => None,
    }
}

/// Locks the app's row until the transaction ends (a no-op update,
/// portable): the first lock of every transaction that writes the app's
/// rollouts.
pub async fn lock_app(conn: &mut AnyConnection, app_id: i64) -> DbResult<()> {
    sqlx::query("UPDATE apps SET placement = placement WHERE id = $1")
        .bind(app_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Appends to the audit log a scheduler's entry (no token).
async fn insert_audit(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    action: &str,
    target: &str,
    at_ms: i64,
) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO audit (tenant_id, token_id, action, target, at_ms) VALUES ($1, NULL, $2, $3, $4)",
    )
    .bind(tenant_id)
    .bind(action)
    .bind(target)
    .bind(at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends every live rollout of `app_id` as `to` (a terminal phase:
/// `Phase::Aborted { reason }` for a rollback or an immediate deploy,
/// `Phase::Superseded { by }` for a newer canary) with `reason`, inside the
/// caller's transaction `conn`: each gets the transition in its history,
/// weights of 0 (100 for `Succeeded`), no pending action and a new
/// `row_version` (so the leader's next write of it conflicts), and an
/// audit entry `rollout.<phase>` (no token). Returns how many ended. Lock
/// the app's row first ([`lock_app`], or the caller's own `UPDATE apps`);
/// the caller appends the feed change and bumps the notifier.
pub async fn end_live_rollouts(
    conn: &mut AnyConnection,
    app_id: i64,
    to: &Phase,
    reason: &str,
    now_ms: i64,
) -> DbResult<u64> {
    if !to.is_terminal() {
        return Err(sqlx::Error::Configuration(
            format!(
                "a live rollout can only end (succeed, abort or be superseded), not become {to}"
            )
            .into(),
        ));
    }
    // Locks the live rows (Postgres), so that what is read next stays so.
    sqlx::query(&format!(
        "UPDATE rollouts SET row_version = row_version WHERE app_id = $1 AND phase IN {LIVE}"
    ))
    .bind(app_id)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT id, canary_version, phase_json, history_json, weights_json FROM rollouts \
         WHERE app_id = $1 AND phase IN {LIVE} ORDER BY id"
    ))
    .bind(app_id)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let app = sqlx::query("SELECT tenant_id, name FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_optional(&mut *conn)
        .await?;
    let (tenant_id, app_name): (Option<i64>, String) = match &app {
        Some(r) => (Some(r.try_get("tenant_id")?), r.try_get("name")?),
        None => (None, format!("app {app_id}")),
    };
    let at_ms = u64::try_from(now_ms).unwrap_or(0);
    let weight = if *to == Phase::Succeeded { 100u8 } else { 0 };
    let mut ended = 0;
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let canary: i64 = r.try_get("canary_version")?;
        let from = match serde_json::from_str::<Phase>(&r.try_get::<String, _>("phase_json")?) {
            Ok(phase) => phase,
            Err(e) => {
                tracing::warn!(rollout = id, error = %e, "ending a rollout whose phase does not parse");
                Phase::Pending
            }
        };
        let mut history: Vec<Transition> =
            serde_json::from_str(&r.try_get::<String, _>("history_json")?).unwrap_or_default();
        history.push(Transition {
            from,
            to: to.clone(),
            at_ms,
            reason: reason.to_owned(),
        });
        let weights: BTreeMap<String, u8> =
            serde_json::from_str::<BTreeMap<String, u8>>(&r.try_get::<String, _>("weights_json")?)
                .unwrap_or_default()
                .into_keys()
                .map(|pop| (pop, weight))
                .collect();
        let done = sqlx::query(&format!(
            "UPDATE rollouts SET phase = $1, phase_json = $2, history_json = $3, weights_json = $4, \
             pending_action = NULL, row_version = row_version + 1, updated_ms = $5 \
             WHERE id = $6 AND phase IN {LIVE}"
        ))
        .bind(to.name())
        .bind(to_json(to))
        .bind(to_json(&history))
        .bind(to_json(&weights))
        .bind(now_ms)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            ended += 1;
            insert_audit(
                conn,
                tenant_id,
                &format!("rollout.{}", to.name()),
                &format!("{app_name}@{canary}: {reason}"),
                now_ms,
            )
            .await?;
        }
    }
    Ok(ended)
}

impl Store {
    /// Starts a rollout of `canary` over `stable` for `app_id` with
    /// `policy` over the app's `placed` PoPs (and their labels), in one
    /// transaction: every live rollout of the app ends, superseded by
    /// `canary`; the new one is inserted pending with the canary at 0 % at
    /// every placed PoP; and a feed change publishes it (the canary
    /// deployed, warm, reachable only with the `gannet-version` header).
    /// Returns the rollout's id and that revision; the caller bumps the
    /// notifier.
    pub async fn start_rollout(
        &self,
        app_id: i64,
        stable: u32,
        canary: u32,
        policy: &Policy,
        placed: &Placed,
    ) -> DbResult<(i64, i64)> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        lock_app(&mut tx, app_id).await?;
        end_live_rollouts(
            &mut tx,
            app_id,
            &Phase::Superseded { by: canary },
            &format!("superseded by version {canary}"),
            now,
        )
        .await?;
        let weights: BTreeMap<&str, u8> = placed.keys().map(|pop| (pop.as_str(), 0u8)).collect();
        let row = sqlx::query(
            "INSERT INTO rollouts (app_id, stable_version, canary_version, policy_json, placed_json, \
             phase_json, phase, history_json, weights_json, published_json, analysis_json, \
             row_version, leader_epoch, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, '[]', $8, '{}', '{}', 0, 0, $9, $9) RETURNING id",
        )
        .bind(app_id)
        .bind(i64::from(stable))
        .bind(i64::from(canary))
        .bind(to_json(policy))
        .bind(to_json(placed))
        .bind(to_json(&Phase::Pending))
        .bind(Phase::Pending.name())
        .bind(to_json(&weights))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        let revision = append_change(&mut tx, self.dialect(), app_id, Scope::Everywhere).await?;
        tx.commit().await?;
        Ok((id, revision))
    }

    /// Asks the leader to apply `action` (`promote`, `pause`, `resume`,
    /// `abort`) to the app's newest rollout, if it is live (replacing an
    /// action not applied yet). Returns the rollout's id, or `None` when
    /// the app has no live rollout.
    pub async fn request_rollout_action(&self, app_id: i64, action: &str) -> DbResult<Option<i64>> {
        let row = sqlx::query(&format!(
            "UPDATE rollouts SET pending_action = $1, updated_ms = $2 \
             WHERE id = (SELECT MAX(id) FROM rollouts WHERE app_id = $3) AND phase IN {LIVE} \
             RETURNING id"
        ))
        .bind(action)
        .bind(now_ms())
        .bind(app_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| r.try_get::<i64, _>("id")).transpose()
    }

    /// The app's newest rollout (live or not) as `GET
    /// /v1/apps/{app}/rollout` shows it, or `None` if it never had one.
    pub async fn rollout_status(
        &self,
        app_name: &str,
        app_id: i64,
    ) -> DbResult<Option<RolloutStatus>> {
        let row = sqlx::query(
            "SELECT id, stable_version, canary_version, policy_json, placed_json, phase_json, \
             history_json, weights_json, analysis_json, pending_action, created_ms, updated_ms \
             FROM rollouts WHERE app_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let policy: Policy = from_json("policy_json", &r.try_get::<String, _>("policy_json")?)?;
        let placed: Placed = from_json("placed_json", &r.try_get::<String, _>("placed_json")?)?;
        let phase: Phase = from_json("phase_json", &r.try_get::<String, _>("phase_json")?)?;
        let history: Vec<Transition> =
            from_json("history_json", &r.try_get::<String, _>("history_json")?)?;
        let weights: BTreeMap<String, u8> =
            from_json("weights_json", &r.try_get::<String, _>("weights_json")?)?;
        // The figures only inform: a status without them beats none.
        let analysis: Analysis =
            serde_json::from_str(&r.try_get::<String, _>("analysis_json")?).unwrap_or_default();
        let steps = policy
            .steps
            .iter()
            .map(|step| RolloutStep {
                pops: if step.pops.is_everything() {
                    String::new()
                } else {
                    step.pops.to_string()
                },
                pop_names: placed
                    .iter()
                    .filter(|(_, labels)| step.pops.matches(labels))
                    .map(|(pop, _)| pop.clone())
                    .collect(),
                weight: step.weight.percent(),
                bake_ms: step.bake_ms,
            })
            .collect();
        let pops = placed
            .keys()
            .map(|pop| {
                let mut progress = analysis
                    .pops
                    .iter()
                    .find(|p| &p.pop == pop)
                    .cloned()
                    .unwrap_or_else(|| PopProgress {
                        pop: pop.clone(),
                        weight: 0,
                        ready: Vec::new(),
                        waiting: Vec::new(),
                        silent: Vec::new(),
                    });
                progress.weight = weights.get(pop).copied().unwrap_or(0);
                progress
            })
            .collect();
        Ok(Some(RolloutStatus {
            id: r.try_get("id")?,
            app: app_name.to_owned(),
            stable: r.try_get::<i64, _>("stable_version")? as u32,
            canary: r.try_get::<i64, _>("canary_version")? as u32,
            phase: phase.name().to_owned(),
            reason: phase_reason(&phase),
            step: phase.step().map(|step| step + 1),
            steps,
            weights,
            pops,
            canary_figures: analysis.canary,
            stable_figures: analysis.stable,
            history: history
                .iter()
                .map(|t| RolloutTransition {
                    at_ms: t.at_ms,
                    from: t.from.to_string(),
                    to: t.to.to_string(),
                    reason: t.reason.clone(),
                })
                .collect(),
            analysis_interval_ms: policy.analysis_interval_ms,
            created_ms: r.try_get("created_ms")?,
            updated_ms: r.try_get("updated_ms")?,
            pending_action: r.try_get("pending_action")?,
        }))
    }

    /// Per app with a live rollout: its canary version and the canary's
    /// weight per placed PoP (what gateways must serve).
    pub async fn live_canaries(&self) -> DbResult<HashMap<i64, (u32, BTreeMap<String, u8>)>> {
        let rows = sqlx::query(&format!(
            "SELECT app_id, canary_version, weights_json FROM rollouts WHERE phase IN {LIVE} ORDER BY id"
        ))
        .fetch_all(self.pool())
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let app_id: i64 = r.try_get("app_id")?;
            let canary = r.try_get::<i64, _>("canary_version")? as u32;
            let weights: BTreeMap<String, u8> =
                from_json("weights_json", &r.try_get::<String, _>("weights_json")?)?;
            out.insert(app_id, (canary, weights));
        }
        Ok(out)
    }

    /// Every live rollout with its app's and tenant's names, oldest first;
    /// a row whose JSON does not parse comes as a [`BadRollout`].
    pub async fn live_rollouts(&self) -> DbResult<Vec<Result<LiveRollout, BadRollout>>> {
        let rows = sqlx::query(&format!(
            "SELECT r.id, r.app_id, a.tenant_id, t.name AS tenant, a.name AS app, r.stable_version, \
             r.canary_version, r.policy_json, r.placed_json, r.phase_json, r.history_json, \
             r.weights_json, r.published_json, r.analysis_json, r.pending_action, r.row_version \
             FROM rollouts r JOIN apps a ON a.id = r.app_id JOIN tenants t ON t.id = a.tenant_id \
             WHERE r.phase IN {LIVE} ORDER BY r.id"
        ))
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            out.push(live_rollout(r)?.map_err(|why| BadRollout { id, why }));
        }
        Ok(out)
    }

    /// Writes what the leader decided for one rollout, in one transaction,
    /// if `lease` (holder, epoch) still holds the scheduler's lease at
    /// `row.now_ms` ([`check_fence`]) and the row still has
    /// `row.expected_row_version`: its phase, history, weights, published
    /// revisions and figures, the consumed action cleared, the canary made
    /// active if it succeeded, an audit entry `rollout.<phase>` per
    /// transition, and, when `row.publish`, a feed change for the app (its
    /// revision recorded as the current step's). The caller bumps the
    /// notifier with the revision after this returns.
    pub async fn save_rollout(&self, lease: (&str, i64), row: &RolloutWrite) -> DbResult<Saved> {
        let (holder, epoch) = lease;
        let mut tx = self.pool().begin().await?;
        if !check_fence(&mut tx, self.dialect(), holder, epoch, row.now_ms).await? {
            tx.rollback().await?;
            return Ok(Saved::NotLeader);
        }
        lock_app(&mut tx, row.app_id).await?;
        let done = sqlx::query(
            "UPDATE rollouts SET phase = $1, phase_json = $2, history_json = $3, weights_json = $4, \
             published_json = $5, analysis_json = $6, \
             pending_action = CASE WHEN pending_action = $7 THEN NULL ELSE pending_action END, \
             row_version = row_version + 1, leader_epoch = $8, updated_ms = $9 \
             WHERE id = $10 AND row_version = $11",
        )
        .bind(row.phase.name())
        .bind(to_json(&row.phase))
        .bind(to_json(&row.history))
        .bind(to_json(&row.weights))
        .bind(to_json(&row.published))
        .bind(row.analysis_json.as_str())
        .bind(row.consumed_action.clone())
        .bind(epoch)
        .bind(row.now_ms)
        .bind(row.id)
        .bind(row.expected_row_version)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Saved::Conflict);
        }
        if row.activate_canary {
            sqlx::query(
                "UPDATE apps SET active_version_id = (SELECT id FROM versions WHERE app_id = $1 AND number = $2) \
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM versions WHERE app_id = $1 AND number = $2)",
            )
            .bind(row.app_id)
            .bind(i64::from(row.canary))
            .execute(&mut *tx)
            .await?;
        }
        for transition in &row.transitions {
            insert_audit(
                &mut tx,
                Some(row.tenant_id),
                &format!("rollout.{}", transition.to.name()),
                &format!("{}@{}: {}", row.app, row.canary, transition.reason),
                row.now_ms,
            )
            .await?;
        }
        let mut revision = None;
        if row.publish {
            let published_in =
                append_change(&mut tx, self.dialect(), row.app_id, Scope::Everywhere).await?;
            // The revision is known only now: recorded as the current
            // step's in the same transaction (under the feed head's lock,
            // which is held until the commit anyway).
            if let Some(step) = row.phase.step() {
                let mut published = row.published.clone();
                published.insert(step, published_in);
                sqlx::query("UPDATE rollouts SET published_json = $1 WHERE id = $2")
                    .bind(to_json(&published))
                    .bind(row.id)
                    .execute(&mut *tx)
                    .await?;
            }
            revision = Some(published_in);
        }
        tx.commit().await?;
        Ok(Saved::Ok {
            revision,
            row_version: row.expected_row_version + 1,
        })
    }

    /// Stores a gateway's report: per app version, its counters since the
    /// gateway's boot, replacing the previous report of the same (gateway,
    /// app, version). One transaction.
    pub async fn record_report(&self, gateway_id: i64, report: &GatewayReport) -> DbResult<()> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        for version in &report.versions {
            sqlx::query(
                "INSERT INTO version_reports (gateway_id, app_key, version, boot_id, counters_json, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (gateway_id, app_key, version) DO UPDATE SET boot_id = excluded.boot_id, \
                 counters_json = excluded.counters_json, at_ms = excluded.at_ms",
            )
            .bind(gateway_id)
            .bind(version.key.as_str())
            .bind(i64::from(version.version))
            .bind(report.boot_id.as_str())
            .bind(to_json(&counters_of(version)))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Versions this gateway stopped reporting (it no longer serves
        // them) leave with their last report, so the table holds what is
        // served, not every version ever served.
        sqlx::query("DELETE FROM version_reports WHERE gateway_id = $1 AND at_ms < $2")
            .bind(gateway_id)
            .bind(now.saturating_sub(STALE_REPORT_MS))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest report of every active gateway for the app `app_key`
    /// (`tenant/app`), per version: (gateway id, its PoP, its boot id, the
    /// version, the counters since that boot). A row whose counters do not
    /// parse is skipped (and logged).
    pub async fn version_reports(
        &self,
        app_key: &str,
    ) -> DbResult<Vec<(i64, String, String, u32, Counters)>> {
        let rows = sqlx::query(
            "SELECT r.gateway_id, p.name AS pop, r.boot_id, r.version, r.counters_json \
             FROM version_reports r JOIN gateways g ON g.id = r.gateway_id JOIN pops p ON p.id = g.pop_id \
             WHERE r.app_key = $1 AND g.revoked_ms IS NULL ORDER BY r.gateway_id, r.version",
        )
        .bind(app_key)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let gateway_id: i64 = r.try_get("gateway_id")?;
            let pop: String = r.try_get("pop")?;
            let boot_id: String = r.try_get("boot_id")?;
            let version = r.try_get::<i64, _>("version")? as u32;
            let counters: Counters = match serde_json::from_str(
                &r.try_get::<String, _>("counters_json")?,
            ) {
                Ok(counters) => counters,
                Err(e) => {
                    tracing::warn!(gateway = gateway_id, app = %app_key, version, error = %e, "a stored version report does not parse; skipped");
                    continue;
                }
            };
            out.push((gateway_id, pop, boot_id, version, counters));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollouts::RolloutSettings;
    use crate::rollouts::lease::Lease;
    use crate::testing::TestDb;
    use gannet_model::api::Quotas;

    fn placed() -> Placed {
        let mut placed = Placed::new();
        placed.insert(
            "fra1".to_owned(),
            BTreeMap::from([("tier".to_owned(), "canary".to_owned())]),
        );
        placed.insert("iad1".to_owned(), BTreeMap::new());
        placed
    }

    /// A store with tenant `acme`, its app `shop` and versions 1 to 3.
    async fn fixture(db: &TestDb) -> (Store, i64, i64) {
        let store = Store::connect(&db.url).await.unwrap();
        let (tenant_id, _) = store
            .create_tenant("acme", &Quotas::default())
            .await
            .unwrap();
        let now = now_ms();
        let app_id: i64 = sqlx::query(
            "INSERT INTO apps (tenant_id, name, created_ms) VALUES ($1, 'shop', $2) RETURNING id",
        )
        .bind(tenant_id)
        .bind(now)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get("id")
        .unwrap();
        let digest = "0".repeat(64);
        sqlx::query("INSERT INTO components (digest, size_bytes, created_ms) VALUES ($1, 1, $2)")
            .bind(digest.as_str())
            .bind(now)
            .execute(store.pool())
            .await
            .unwrap();
        for number in 1..=3i64 {
            sqlx::query(
                "INSERT INTO versions (app_id, number, digest, env_json, limits_json, outbound_json, created_ms) \
                 VALUES ($1, $2, $3, '{}', '{}', '[]', $4)",
            )
            .bind(app_id)
            .bind(number)
            .bind(digest.as_str())
            .bind(now)
            .execute(store.pool())
            .await
            .unwrap();
        }
        (store, tenant_id, app_id)
    }

    fn policy() -> Policy {
        RolloutSettings::default()
            .policy(Some("pops=tier:canary 100%; 50%; 100%"), None)
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_rollout_supersedes_the_live_one() {
        for backend in crate::testing::backends() {
            let db = TestDb::new(backend).await;
            let (store, tenant_id, app_id) = fixture(&db).await;
            assert!(
                store
                    .rollout_status("shop", app_id)
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(store.live_canaries().await.unwrap().is_empty());

            let (first, rev1) = store
                .start_rollout(app_id, 1, 2, &policy(), &placed())
                .await
                .unwrap();
            let canaries = store.live_canaries().await.unwrap();
            assert_eq!(canaries[&app_id].0, 2, "{backend:?}");
            assert_eq!(
                canaries[&app_id].1,
                BTreeMap::from([("fra1".to_owned(), 0), ("iad1".to_owned(), 0)])
            );
            let status = store.rollout_status("shop", app_id).await.unwrap().unwrap();
            assert_eq!(status.id, first);
            assert_eq!(status.phase, "pending");
            assert_eq!(status.step, None);
            assert_eq!((status.stable, status.canary), (1, 2));
            assert_eq!(status.steps.len(), 3);
            assert_eq!(status.steps[0].pops, "tier=canary");
            assert_eq!(status.steps[0].pop_names, vec!["fra1".to_owned()]);
            assert_eq!(status.steps[1].pops, "");
            assert_eq!(status.steps[1].pop_names.len(), 2);
            assert_eq!(status.pops.len(), 2);
            assert_eq!(status.analysis_interval_ms, 10_000);

            let (second, rev2) = store
                .start_rollout(app_id, 1, 3, &policy(), &placed())
                .await
                .unwrap();
            assert!(rev2 > rev1 && second > first);
            assert_eq!(store.live_canaries().await.unwrap()[&app_id].0, 3);
            let live = store.live_rollouts().await.unwrap();
            assert_eq!(live.len(), 1);
            let live = live[0].as_ref().unwrap();
            assert_eq!(live.id, second);
            assert_eq!(live.key(), "acme/shop");
            assert_eq!(live.phase, Phase::Pending);
            assert_eq!(live.row_version, 0);

            // The first one ended, with its transition and an audit entry.
            let row =
                sqlx::query("SELECT phase, history_json, row_version FROM rollouts WHERE id = $1")
                    .bind(first)
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert_eq!(row.try_get::<String, _>("phase").unwrap(), "superseded");
            assert_eq!(row.try_get::<i64, _>("row_version").unwrap(), 1);
            let history: Vec<Transition> =
                serde_json::from_str(&row.try_get::<String, _>("history_json").unwrap()).unwrap();
            assert_eq!(history.len(), 1);
            assert_eq!(history[0].from, Phase::Pending);
            assert_eq!(history[0].to, Phase::Superseded { by: 3 });
            let audit = store.list_audit(tenant_id, 10).await.unwrap();
            assert!(
                audit
                    .iter()
                    .any(|a| a.action == "rollout.superseded" && a.target.starts_with("shop@2: ")),
                "{audit:?}"
            );
        }
    }

    #[tokio::test]
    async fn actions_apply_to_a_live_rollout_only() {
        for backend in crate::testing::backends() {
            let db = TestDb::new(backend).await;
            let (store, _, app_id) = fixture(&db).await;
            assert_eq!(
                store.request_rollout_action(app_id, "pause").await.unwrap(),
                None,
                "{backend:?}"
            );
            let (id, _) = store
                .start_rollout(app_id, 1, 2, &policy(), &placed())
                .await
                .unwrap();
            assert_eq!(
                store.request_rollout_action(app_id, "pause").await.unwrap(),
                Some(id)
            );
            let status = store.rollout_status("shop", app_id).await.unwrap().unwrap();
            assert_eq!(status.pending_action.as_deref(), Some("pause"));

            let mut tx = store.pool().begin().await.unwrap();
            let ended = end_live_rollouts(
                &mut tx,
                app_id,
                &Phase::Aborted {
                    reason: "rolled back to version 1".to_owned(),
                },
                "rolled back to version 1",
                now_ms(),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(ended, 1);
            let status = store.rollout_status("shop", app_id).await.unwrap().unwrap();
            assert_eq!(status.phase, "aborted");
            assert_eq!(status.reason.as_deref(), Some("rolled back to version 1"));
            assert_eq!(status.pending_action, None);
            assert_eq!(status.history.len(), 1);
            assert_eq!(status.history[0].from, "pending");
            assert_eq!(status.history[0].to, "aborted: rolled back to version 1");
            assert_eq!(
                store
                    .request_rollout_action(app_id, "promote")
                    .await
                    .unwrap(),
                None
            );
            assert!(store.live_canaries().await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn the_leader_writes_only_with_the_lease_and_the_row_it_loaded() {
        for backend in crate::testing::backends() {
            let db = TestDb::new(backend).await;
            let (store, tenant_id, app_id) = fixture(&db).await;
            let (id, start_revision) = store
                .start_rollout(app_id, 1, 2, &policy(), &placed())
                .await
                .unwrap();
            store.request_rollout_action(app_id, "pause").await.unwrap();
            let lease = Lease::with_holder("leader");
            let now = now_ms();
            let epoch = lease
                .acquire_or_renew(&store, now, 60_000)
                .await
                .unwrap()
                .unwrap();
            let started = Transition {
                from: Phase::Pending,
                to: Phase::Progressing { step: 0 },
                at_ms: now as u64,
                reason: "started".to_owned(),
            };
            let mut write = RolloutWrite {
                id,
                app_id,
                tenant_id,
                app: "shop".to_owned(),
                canary: 2,
                expected_row_version: 0,
                phase: Phase::Progressing { step: 0 },
                history: vec![started.clone()],
                weights: BTreeMap::from([("fra1".to_owned(), 100), ("iad1".to_owned(), 0)]),
                published: BTreeMap::new(),
                analysis_json: "{}".to_owned(),
                consumed_action: Some("pause".to_owned()),
                publish: true,
                activate_canary: false,
                transitions: vec![started],
                now_ms: now,
            };

            // Another holder, or a stale epoch: nothing is written.
            assert_eq!(
                store.save_rollout(("other", epoch), &write).await.unwrap(),
                Saved::NotLeader,
                "{backend:?}"
            );
            assert_eq!(
                store
                    .save_rollout(("leader", epoch + 1), &write)
                    .await
                    .unwrap(),
                Saved::NotLeader
            );
            let saved = store.save_rollout(("leader", epoch), &write).await.unwrap();
            let Saved::Ok {
                revision: Some(revision),
                row_version: 1,
            } = saved
            else {
                panic!("{saved:?}");
            };
            assert!(revision > start_revision);
            let live = store.live_rollouts().await.unwrap();
            let live = live[0].as_ref().unwrap();
            assert_eq!(live.phase, Phase::Progressing { step: 0 });
            assert_eq!(live.published, BTreeMap::from([(0, revision)]));
            assert_eq!(live.pending_action, None, "the consumed action is cleared");
            assert_eq!(live.row_version, 1);
            assert_eq!(store.live_canaries().await.unwrap()[&app_id].1["fra1"], 100);

            // Written against the row version it had: a conflict.
            assert_eq!(
                store.save_rollout(("leader", epoch), &write).await.unwrap(),
                Saved::Conflict
            );

            // A newer action survives the clearing of an older one.
            store.request_rollout_action(app_id, "abort").await.unwrap();
            write.expected_row_version = 1;
            write.publish = false;
            write.transitions.clear();
            assert_eq!(
                store.save_rollout(("leader", epoch), &write).await.unwrap(),
                Saved::Ok {
                    revision: None,
                    row_version: 2
                }
            );
            let status = store.rollout_status("shop", app_id).await.unwrap().unwrap();
            assert_eq!(status.pending_action.as_deref(), Some("abort"));

            // Success makes the canary the active version.
            let succeeded = Transition {
                from: Phase::Progressing { step: 0 },
                to: Phase::Succeeded,
                at_ms: now as u64,
                reason: "promoted by the operator".to_owned(),
            };
            write.expected_row_version = 2;
            write.phase = Phase::Succeeded;
            write.history.push(succeeded.clone());
            write.transitions = vec![succeeded];
            write.consumed_action = Some("abort".to_owned());
            write.publish = true;
            write.activate_canary = true;
            assert!(matches!(
                store.save_rollout(("leader", epoch), &write).await.unwrap(),
                Saved::Ok {
                    revision: Some(_),
                    row_version: 3
                }
            ));
            let active: i64 = sqlx::query(
                "SELECT v.number FROM apps a JOIN versions v ON v.id = a.active_version_id WHERE a.id = $1",
            )
            .bind(app_id)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get("number")
            .unwrap();
            assert_eq!(active, 2);
            assert!(store.live_rollouts().await.unwrap().is_empty());
            let status = store.rollout_status("shop", app_id).await.unwrap().unwrap();
            assert_eq!(status.phase, "succeeded");
            assert_eq!(status.history.len(), 2);
            let audit = store.list_audit(tenant_id, 10).await.unwrap();
            for action in ["rollout.progressing", "rollout.succeeded"] {
                assert!(audit.iter().any(|a| a.action == action), "{audit:?}");
            }
        }
    }

    #[tokio::test]
    async fn reports_are_upserted_per_gateway_and_version() {
        for backend in crate::testing::backends() {
            let db = TestDb::new(backend).await;
            let (store, _, _) = fixture(&db).await;
            let pop_id = store
                .create_pop("fra1", "eu", &BTreeMap::new())
                .await
                .unwrap();
            let gw1 = store.create_gateway(pop_id, "hash-1").await.unwrap();
            let gw2 = store.create_gateway(pop_id, "hash-2").await.unwrap();
            let counters = |requests: u64| VersionCounters {
                key: "acme/shop".to_owned(),
                version: 2,
                requests,
                server_errors: 1,
                traps: 0,
                limit_kills: 0,
                latency: {
                    let mut latency = vec![0; LATENCY_BUCKETS];
                    latency[3] = requests;
                    latency
                },
            };
            let report = |boot: &str, requests: u64| GatewayReport {
                boot_id: boot.to_owned(),
                versions: vec![counters(requests)],
            };
            store
                .record_report(gw1, &report("boot-a", 10))
                .await
                .unwrap();
            store
                .record_report(gw1, &report("boot-a", 25))
                .await
                .unwrap();
            store
                .record_report(gw2, &report("boot-b", 7))
                .await
                .unwrap();
            let reports = store.version_reports("acme/shop").await.unwrap();
            assert_eq!(reports.len(), 2, "{backend:?}");
            let (gateway, pop, boot, version, latest) = &reports[0];
            assert_eq!(
                (*gateway, pop.as_str(), boot.as_str(), *version),
                (gw1, "fra1", "boot-a", 2)
            );
            assert_eq!(latest.requests, 25);
            assert_eq!(latest.server_errors, 1);
            assert_eq!(latest.latency[3], 25);
            assert!(
                store
                    .version_reports("acme/other")
                    .await
                    .unwrap()
                    .is_empty()
            );

            store.revoke_gateway(gw2).await.unwrap();
            let reports = store.version_reports("acme/shop").await.unwrap();
            assert_eq!(reports.len(), 1);
            assert_eq!(reports[0].0, gw1);
        }
    }
}
