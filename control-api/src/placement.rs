//! Where apps are served: each app's placement selector over the PoPs'
//! labels ([`gannet_scheduler::placement`]), and its affinity key.
//!
//! Placement is applied where the desired state is computed
//! ([`Store::deployed_apps`] for one PoP): an app whose selector does not
//! match a PoP's labels is not in that PoP's state, so a placement change
//! removes it from the gateways of PoPs that left the set at their next
//! poll. A selector that matches no PoP is refused, and the placement of an
//! app with a live rollout cannot change (its steps were matched against
//! the PoPs it had).

use crate::desired_state::{DbResult, Scope, append_change};
use crate::error::ApiError;
use crate::store::{Store, WriteError};
use gannet_model::snapshot::Affinity;
use gannet_scheduler::placement::{PopLabels, place};
use gannet_scheduler::selector::Selector;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

/// Phases of a rollout that is still live, as an SQL list.
pub use crate::rollouts::store::LIVE as LIVE_ROLLOUT;

/// Parses a placement selector (empty: every PoP), refusing one that is
/// not valid (400) or that matches none of `pops` (422 `no-pop-matches`).
/// Returns its canonical spelling and the PoPs it places the app at.
pub fn check(selector: &str, pops: &[PopLabels]) -> Result<(String, BTreeSet<String>), ApiError> {
    let parsed =
        Selector::parse(selector).map_err(|e| ApiError::Invalid(format!("placement: {e}")))?;
    if parsed.is_everything() {
        let all = pops.iter().map(|p| p.name.clone()).collect();
        return Ok((String::new(), all));
    }
    let placed = place(&parsed, pops).map_err(|e| ApiError::NoPopMatches(e.to_string()))?;
    Ok((parsed.to_string(), placed))
}

/// The PoPs `placement` (canonical, possibly empty) places an app at.
pub fn placed_pops(placement: &str, pops: &[PopLabels]) -> Vec<String> {
    match Selector::parse(placement) {
        Ok(s) => pops
            .iter()
            .filter(|p| s.matches(&p.labels))
            .map(|p| p.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Parses an affinity setting (400 when it is not one).
pub fn check_affinity(s: &str) -> Result<Affinity, ApiError> {
    Affinity::parse(s).map_err(|e| ApiError::Invalid(e.to_string()))
}

/// The stored spelling of an affinity: `''` for the client address.
pub fn stored_affinity(a: &Affinity) -> String {
    match a {
        Affinity::Client => String::new(),
        other => other.to_string(),
    }
}

impl Store {
    /// Every PoP with its labels, by name.
    pub async fn pop_labels(&self) -> DbResult<Vec<PopLabels>> {
        Ok(self
            .list_pops()
            .await?
            .into_iter()
            .map(|(name, _region, labels)| PopLabels { name, labels })
            .collect())
    }

    /// One PoP's labels, by id.
    pub async fn pop_labels_of(&self, pop_id: i64) -> DbResult<Option<PopLabels>> {
        let row = sqlx::query("SELECT name, labels_json FROM pops WHERE id = $1")
            .bind(pop_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(PopLabels {
                name: r.try_get("name")?,
                labels: serde_json::from_str::<BTreeMap<String, String>>(
                    &r.try_get::<String, _>("labels_json")?,
                )
                .unwrap_or_default(),
            })
        })
        .transpose()
    }

    /// The PoPs an app is placed at now, with their labels.
    pub async fn placed_pops_of(
        &self,
        app_id: i64,
    ) -> DbResult<BTreeMap<String, BTreeMap<String, String>>> {
        let row = sqlx::query("SELECT placement FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_one(self.pool())
            .await?;
        let placement: String = row.try_get("placement")?;
        let Ok(selector) = Selector::parse(&placement) else {
            return Ok(BTreeMap::new());
        };
        Ok(self
            .pop_labels()
            .await?
            .into_iter()
            .filter(|p| selector.matches(&p.labels))
            .map(|p| (p.name, p.labels))
            .collect())
    }

    /// Sets an app's placement (canonical selector) and feeds the change to
    /// every PoP (those that left the set drop the app). Refused with
    /// [`WriteError::Conflict`] while the app has a live rollout.
    pub async fn set_placement(&self, app_id: i64, placement: &str) -> Result<i64, WriteError> {
        let mut tx = self.pool().begin().await?;
        let live = sqlx::query(&format!(
            "SELECT canary_version FROM rollouts WHERE app_id = $1 AND phase IN {LIVE_ROLLOUT}"
        ))
        .bind(app_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = live {
            let canary: i64 = r.try_get("canary_version")?;
            return Err(WriteError::RolloutInProgress(format!(
                "version {canary} is rolling out: promote, abort or wait for it before changing the app's placement"
            )));
        }
        sqlx::query("UPDATE apps SET placement = $1 WHERE id = $2")
            .bind(placement)
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        let revision = append_change(&mut tx, self.dialect(), app_id, Scope::Everywhere).await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// Sets (or, with `None`s, clears) an app's own rollout policy.
    pub async fn set_rollout_policy(
        &self,
        app_id: i64,
        steps: Option<&str>,
        bake_ms: Option<u64>,
    ) -> DbResult<()> {
        sqlx::query("UPDATE apps SET rollout_steps = $1, rollout_bake_ms = $2 WHERE id = $3")
            .bind(steps.map(str::to_string))
            .bind(bake_ms.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
            .bind(app_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// An app's own rollout policy: (steps, bake ms), each unset when the
    /// platform's applies.
    pub async fn rollout_policy_of(&self, app_id: i64) -> DbResult<(Option<String>, Option<u64>)> {
        let row = sqlx::query("SELECT rollout_steps, rollout_bake_ms FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_one(self.pool())
            .await?;
        let bake: Option<i64> = row.try_get("rollout_bake_ms")?;
        Ok((row.try_get("rollout_steps")?, bake.map(|b| b.max(0) as u64)))
    }

    /// Sets an app's affinity key (stored spelling) and feeds the change.
    pub async fn set_affinity(&self, app_id: i64, affinity: &str) -> DbResult<i64> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE apps SET affinity = $1 WHERE id = $2")
            .bind(affinity)
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        let revision = append_change(&mut tx, self.dialect(), app_id, Scope::Everywhere).await?;
        tx.commit().await?;
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pops() -> Vec<PopLabels> {
        let pop = |name: &str, labels: &[(&str, &str)]| PopLabels {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        vec![
            pop("fra1", &[("region", "eu"), ("tier", "canary")]),
            pop("ams1", &[("region", "eu")]),
            pop("iad1", &[("region", "us")]),
        ]
    }

    #[test]
    fn selectors_place_apps_and_refuse_what_matches_nothing() {
        let (canonical, placed) = check("region=eu", &pops()).unwrap();
        assert_eq!(canonical, "region=eu");
        assert_eq!(placed, BTreeSet::from(["ams1".into(), "fra1".into()]));
        let (canonical, placed) = check("", &pops()).unwrap();
        assert_eq!(canonical, "");
        assert_eq!(placed.len(), 3);
        let (_, placed) = check("region=eu,tier!=canary", &pops()).unwrap();
        assert_eq!(placed, BTreeSet::from(["ams1".into()]));
        assert!(matches!(
            check("region=asia", &pops()),
            Err(ApiError::NoPopMatches(_))
        ));
        assert!(matches!(
            check("region==", &pops()),
            Err(ApiError::Invalid(_))
        ));
        assert_eq!(placed_pops("region=us", &pops()), ["iad1"]);
        assert_eq!(placed_pops("", &pops()).len(), 3);
    }

    #[test]
    fn affinity_round_trips_through_its_stored_spelling() {
        for s in ["", "header:x-user", "cookie:session"] {
            let a = check_affinity(s).unwrap();
            assert_eq!(stored_affinity(&a), s);
            assert_eq!(check_affinity(&stored_affinity(&a)).unwrap(), a);
        }
        assert_eq!(
            check_affinity("header:X-User").unwrap(),
            Affinity::Header("x-user".into())
        );
        for bad in ["header:", "cookie:a b", "ip", "header:x;y"] {
            assert!(check_affinity(bad).is_err(), "{bad}");
        }
    }
}
