//! Progressive rollouts: the control API runs the scheduler's pure state
//! machine ([`gannet_scheduler::rollout::Rollout`]) against the database and
//! the gateways.
//!
//! - A canary deploy ([`Store::start_rollout`](crate::store::Store::start_rollout))
//!   ends the app's live rollout (superseded), inserts a pending one and
//!   publishes the canary at 0 % everywhere (warm, reachable only with the
//!   `gannet-version` header), in one transaction.
//! - One replica at a time leads: it holds the scheduler's lease
//!   ([`lease`]), renewed every few ticks, with an epoch that goes up each
//!   time the lease changes hands.
//! - The leader ([`leader`]) loops every [`RolloutSettings::tick`]: it loads
//!   the live rollouts, keeps a [`Rollout`](gannet_scheduler::rollout::Rollout)
//!   per rollout in memory (rebuilt with `restore` when another writer
//!   changed the row, or when it takes over), and feeds it the inputs:
//!   tenants' actions (`pending_action`), a tick, each gateway's ACK or NACK
//!   (from its last report of the state it applied), and every
//!   [`RolloutSettings::analysis_interval`] the windows of requests of the
//!   stable and canary versions per PoP (the gateways' cumulative counters,
//!   `POST /v1/pops/{pop}/report`, diffed per gateway and boot).
//! - What the machine decides is written in one fenced transaction
//!   ([`Store::save_rollout`](crate::store::Store::save_rollout)): the lease
//!   is checked first (on Postgres its row is locked, so a takeover waits
//!   for the write), then the row, guarded by its `row_version`; a step
//!   entered, a weight changed or an end appends a feed change (the new
//!   desired state: the canary's weight per PoP), and a success makes the
//!   canary the app's active version. A leader whose lease was taken steps
//!   down and forgets its rollouts; a row changed under it is reloaded.
//! - Tenants read `GET /v1/apps/{app}/rollout` and act with
//!   `POST /v1/apps/{app}/rollout/{promote|pause|resume|abort}`
//!   ([`crate::routes::rollouts`]); the leader applies the action within a
//!   tick.

pub mod leader;
pub mod lease;
pub mod store;

use crate::AppState;
use gannet_model::api::Figures;
use gannet_scheduler::analysis::{Counters, Gates, LATENCY_BOUNDS_US};
use gannet_scheduler::rollout::{
    DEFAULT_BAKE_MS, DEFAULT_GATEWAY_GRACE_MS, DEFAULT_PROGRESS_DEADLINE_MS, DEFAULT_STEPS, Policy,
    PolicyError,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How this control API runs rollouts, and the policy a canary deploy gets
/// unless it names its own steps and bake time.
#[derive(Clone, Debug)]
pub struct RolloutSettings {
    /// The time between two analysis windows (gateways report their
    /// counters this often); 10 s by default.
    pub analysis_interval: Duration,
    /// How often the leader looks at its rollouts (and a tenant's action
    /// waits at most); 500 ms by default.
    pub tick: Duration,
    /// How long the scheduler's lease lasts without renewal: a dead
    /// leader's rollouts are taken over after it; 10 s by default.
    pub lease_ttl: Duration,
    /// The steps of a canary deploy that names none, in
    /// [`Policy::parse_steps`]' syntax ([`DEFAULT_STEPS`] by default).
    pub default_steps: String,
    /// The bake time of each step of a canary deploy that names none
    /// ([`DEFAULT_BAKE_MS`] by default).
    pub default_bake: Duration,
    /// How long a step may take before the rollout is aborted
    /// ([`DEFAULT_PROGRESS_DEADLINE_MS`] by default).
    pub progress_deadline: Duration,
    /// How long a gateway may stay silent before a step stops waiting for
    /// it ([`DEFAULT_GATEWAY_GRACE_MS`] by default).
    pub gateway_grace: Duration,
    /// The health gates every step's analysis applies (their defaults: at
    /// least 100 requests, a failure rate at most 1 point and 2× above
    /// stable's, a p99 at most 1.5× stable's plus 5 ms).
    pub gates: Gates,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            analysis_interval: Duration::from_secs(10),
            tick: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            default_steps: DEFAULT_STEPS.to_owned(),
            default_bake: Duration::from_millis(DEFAULT_BAKE_MS),
            progress_deadline: Duration::from_millis(DEFAULT_PROGRESS_DEADLINE_MS),
            gateway_grace: Duration::from_millis(DEFAULT_GATEWAY_GRACE_MS),
            gates: Gates::default(),
        }
    }
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RolloutSettings {
    /// The validated policy of a canary deploy: `steps` (or
    /// [`RolloutSettings::default_steps`]) each baking `bake` (or
    /// [`RolloutSettings::default_bake`]), these settings' gates, and their
    /// settings' analysis interval, progress deadline and gateway grace.
    /// The error says what to fix in the steps.
    pub fn policy(
        &self,
        steps: Option<&str>,
        bake: Option<Duration>,
    ) -> Result<Policy, PolicyError> {
        let bake_ms = millis(bake.unwrap_or(self.default_bake));
        let steps = Policy::parse_steps(steps.unwrap_or(&self.default_steps), bake_ms)?;
        let policy = Policy {
            steps,
            gates: self.gates.clone(),
            analysis_interval_ms: millis(self.analysis_interval),
            progress_deadline_ms: millis(self.progress_deadline),
            gateway_grace_ms: millis(self.gateway_grace),
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// Starts the scheduler's leader loop (once per process, however many
/// listeners serve the state): every replica runs it, and the one holding
/// the lease drives the rollouts. It stops with `shutdown`, giving the
/// lease up so that another replica takes over at once.
pub fn spawn(state: AppState, shutdown: CancellationToken) {
    if state
        .rollouts_started
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let settings = state.config.rollouts.clone();
    tokio::spawn(leader::run(state, settings, shutdown));
}

/// The upper bound (µs) of the latency bucket holding the `percent`th
/// percentile of `counters`' histogram (`u64::MAX` for the overflow
/// bucket); `None` when the histogram is empty. The same rule as
/// [`Counters::p99_us`].
pub fn percentile_us(counters: &Counters, percent: u8) -> Option<u64> {
    let total: u128 = counters.latency.iter().map(|&n| u128::from(n)).sum();
    if total == 0 {
        return None;
    }
    // The rank of the percentile, 1-based: ceil(percent / 100 * total).
    let rank = (total * u128::from(percent.min(100))).div_ceil(100).max(1);
    let mut seen: u128 = 0;
    for (index, &n) in counters.latency.iter().enumerate() {
        seen += u128::from(n);
        if seen >= rank {
            return Some(LATENCY_BOUNDS_US.get(index).copied().unwrap_or(u64::MAX));
        }
    }
    Some(u64::MAX)
}

/// A window's counters as the API shows them: requests, failures, failure
/// rate (percent), p50 and p99 latency.
pub fn figures(counters: &Counters) -> Figures {
    Figures {
        requests: counters.requests,
        failures: counters.failures(),
        error_rate_percent: counters.failure_rate().map(|rate| rate * 100.0),
        p50_us: percentile_us(counters, 50),
        p99_us: counters.p99_us(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gannet_scheduler::analysis::Outcome;

    #[test]
    fn the_default_policy_validates_and_steps_can_be_named() {
        let settings = RolloutSettings::default();
        let policy = settings.policy(None, None).unwrap();
        assert_eq!(policy.steps.len(), 3);
        assert_eq!(policy.analysis_interval_ms, 10_000);
        assert!(policy.steps.iter().all(|s| s.bake_ms == DEFAULT_BAKE_MS));

        let policy = settings
            .policy(
                Some("pops=tier:canary 100%; 50%; 100%"),
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        assert_eq!(policy.steps.len(), 3);
        assert!(policy.steps.iter().all(|s| s.bake_ms == 5_000));

        assert!(settings.policy(Some("10%; 50%"), None).is_err());
        assert!(
            settings
                .policy(None, Some(Duration::from_secs(3600)))
                .is_err(),
            "a bake beyond the progress deadline is refused"
        );
    }

    #[test]
    fn figures_give_the_median_and_the_99th_percentile() {
        let mut counters = Counters::default();
        assert_eq!(figures(&counters).p50_us, None);
        assert_eq!(figures(&counters).error_rate_percent, None);
        for _ in 0..98 {
            counters.record(400, Outcome::Ok);
        }
        counters.record(40_000, Outcome::ServerError);
        counters.record(40_000, Outcome::Trap);
        let f = figures(&counters);
        assert_eq!(f.requests, 100);
        assert_eq!(f.failures, 2);
        assert!(f.error_rate_percent.is_some_and(|r| (r - 2.0).abs() < 1e-9));
        assert_eq!(f.p50_us, Some(500));
        assert_eq!(f.p99_us, Some(50_000));
        assert_eq!(percentile_us(&counters, 100), Some(50_000));
    }
}
