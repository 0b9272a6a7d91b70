//! Checks unverified hostnames in the background, with a back-off, and
//! verifies them when their owner's proof shows up.

use super::check::{CheckConfig, Checker};
use super::store::Unverified;
use crate::AppState;
use crate::desired_state::Scope;
use crate::store::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The operator's ownership settings.
#[derive(Clone, Debug)]
pub struct OwnershipConfig {
    /// Where and how proofs are checked.
    pub check: CheckConfig,
    /// How often to look for due checks when nothing wakes the worker.
    pub check_interval: Duration,
    /// The first re-check after a failed one; doubled per failure up to
    /// [`MAX_BACKOFF`].
    pub first_backoff: Duration,
    /// Gateways silent for longer than this are not waited for (the HTTP
    /// check waits until the others have the token).
    pub gateway_silence: Duration,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        OwnershipConfig {
            check: CheckConfig::default(),
            check_interval: Duration::from_secs(15),
            first_backoff: Duration::from_secs(30),
            gateway_silence: Duration::from_secs(120),
        }
    }
}

/// The longest wait between background checks.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a replica holds a check it started.
const CLAIM: Duration = Duration::from_secs(60);
/// Checks at once per replica.
const BATCH: i64 = 8;

/// The next check after `failures` failed ones (0 for the first), ms.
pub fn next_check_ms(now: i64, failures: i64, first: Duration) -> i64 {
    let shift = failures.clamp(0, 20) as u32;
    let wait = first.saturating_mul(1u32 << shift.min(16)).min(MAX_BACKOFF);
    now.saturating_add(wait.as_millis() as i64)
}

/// Whether every gateway seen recently has the revision carrying the
/// token (the HTTP check is fair only then).
pub async fn gateways_have(state: &AppState, revision: i64) -> bool {
    let silence = state.config.ownership.gateway_silence.as_millis() as i64;
    matches!(
        state
            .store
            .gateways_behind(revision, now_ms() - silence)
            .await,
        Ok((_, 0))
    )
}

/// Checks `host` now: verifies it (and wakes gateways) on success; on
/// failure returns the reasons. The caller records failures.
pub async fn check_now(
    state: &AppState,
    checker: &Checker,
    host: &Unverified,
) -> Result<&'static str, String> {
    let try_http = gateways_have(state, host.token_revision).await;
    let checked = checker.check(&host.hostname, &host.token, try_http).await;
    let result = if checked.is_ok() {
        "verified"
    } else {
        "not_proved"
    };
    state
        .metrics
        .ownership_checks
        .with_label_values(&[result])
        .inc();
    let proof = checked?;
    match state
        .store
        .mark_verified(&host.hostname, proof.as_str())
        .await
    {
        Ok(Some(revision)) => {
            state.notifier.bump(revision, Scope::Everywhere);
            tracing::info!(hostname = %host.hostname, proof = proof.as_str(), "hostname verified");
        }
        Ok(None) => {}
        Err(e) => return Err(format!("recording the proof failed: {e}")),
    }
    Ok(proof.as_str())
}

/// Starts the background checks, once per process; they stop with
/// `shutdown`.
pub fn spawn(state: AppState, shutdown: CancellationToken) {
    if state
        .ownership_started
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let checker = match Checker::new(state.config.ownership.check.clone()) {
        Ok(checker) => Arc::new(checker),
        Err(e) => {
            tracing::error!(error = %e, "hostname ownership checks are off: the checker could not be set up");
            return;
        }
    };
    tokio::spawn(async move {
        let config = state.config.ownership.clone();
        loop {
            run_due(&state, &checker, &config).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(config.check_interval) => {}
                _ = state.ownership_wake.notified() => {}
            }
        }
    });
}

async fn run_due(state: &AppState, checker: &Arc<Checker>, config: &OwnershipConfig) {
    let now = now_ms();
    // Claims never proved are released: no tenant holds a name it does not
    // control for longer than this.
    let lifetime = super::store::UNPROVED_CLAIM_LIFETIME.as_millis() as i64;
    match state.store.release_unproved(now - lifetime).await {
        Ok(released) => {
            for (_, hostname) in &released {
                tracing::info!(%hostname, "hostname released: its control was never proved");
            }
            if let Ok(head) = state.store.revision().await
                && !released.is_empty()
            {
                state.notifier.bump(head, Scope::Everywhere);
            }
        }
        Err(e) => tracing::warn!(error = %e, "releasing unproved hostnames failed"),
    }
    let due = match state.store.due_unverified(now, BATCH).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "reading hostnames to verify failed");
            return;
        }
    };
    let mut checks = tokio::task::JoinSet::new();
    for host in due {
        let claim_until = now + CLAIM.as_millis() as i64;
        match state
            .store
            .claim_check(&host.hostname, now, claim_until)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(hostname = %host.hostname, error = %e, "claiming a check failed");
                continue;
            }
        }
        let (state, checker, first) = (state.clone(), checker.clone(), config.first_backoff);
        checks.spawn(async move {
            if let Err(reasons) = check_now(&state, &checker, &host).await {
                let next = next_check_ms(now_ms(), host.failures, first);
                if let Err(e) = state
                    .store
                    .record_check_failure(&host.hostname, &reasons, next, true)
                    .await
                {
                    tracing::warn!(hostname = %host.hostname, error = %e, "recording a failed check failed");
                }
            }
        });
    }
    while checks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_back_off_from_the_first_wait_up_to_an_hour() {
        let first = Duration::from_secs(30);
        assert_eq!(next_check_ms(0, 0, first), 30_000);
        assert_eq!(next_check_ms(0, 1, first), 60_000);
        assert_eq!(next_check_ms(0, 3, first), 240_000);
        assert_eq!(next_check_ms(0, 50, first), 3_600_000);
    }
}
