//! Managed certificates over ACME (RFC 8555) with the HTTP-01 challenge.
//!
//! A background worker ([`spawn`]) in every control-API replica looks for
//! managed hostnames that are due (new, up for renewal, or retrying after
//! a failure), claims each with a lease in the database (one worker per
//! order across replicas; a lease whose replica died runs out and is
//! taken over, and the stored order URL is resumed), and for each:
//!
//! 1. creates (or resumes) an order for the hostname with the platform's
//!    account (made once per directory, its key sealed with the master key);
//! 2. publishes the HTTP-01 token in the app's desired state, so that every
//!    gateway answers `/.well-known/acme-challenge/<token>` for the
//!    hostname, and waits until the gateways seen recently have ACKed the
//!    revision carrying it (or [`AcmeConfig::ack_timeout`]);
//! 3. tells the CA the challenge is ready and polls the order;
//! 4. finalizes it with a fresh P-256 key, checks the certificate as a
//!    tenant's upload is checked, and stores it (key sealed) with the
//!    change that makes gateways serve it — the hostname's first
//!    certificate also makes it serve traffic (the CA's validation is the
//!    proof of control);
//! 5. on failure records the CA's reason and retries after a back-off, or
//!    after the CA's `Retry-After` when it sent one.
//!
//! Issued certificates are renewed [`AcmeConfig::renew_before`] their
//! expiry (or a third of their lifetime before, for short-lived ones).

pub mod client;
pub mod store;

use crate::AppState;
use crate::desired_state::Scope;
use crate::store::now_ms;
use client::{AcmeHttp, RetryAfter};
use gannet_model::api::CertificateUpload;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::Claimed;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// The operator's ACME settings.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The CA's directory URL (Let's Encrypt's, its staging one, a
    /// private CA's). HTTPS.
    pub directory_url: String,
    /// Contact URIs for the account (`mailto:ops@example.net`).
    pub contact: Vec<String>,
    /// Trust only these CA certificates (PEM) for the ACME server itself
    /// (a private CA); the web's public roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Renew this long before expiry (30 days).
    pub renew_before: Duration,
    /// How often to look for due work when nothing wakes the worker.
    pub check_interval: Duration,
    /// How long to wait for gateways to ACK a published challenge before
    /// asking the CA to validate anyway.
    pub ack_timeout: Duration,
    /// How long the CA may take to validate and to issue.
    pub validation_timeout: Duration,
    /// Gateways silent for longer than this are not waited for.
    pub gateway_silence: Duration,
    /// Orders worked on at once by one replica.
    pub concurrency: usize,
}

impl AcmeConfig {
    /// Settings for `directory_url` with the defaults.
    pub fn new(directory_url: impl Into<String>) -> AcmeConfig {
        AcmeConfig {
            directory_url: directory_url.into(),
            contact: Vec::new(),
            ca_file: None,
            renew_before: Duration::from_secs(30 * 24 * 3600),
            check_interval: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(60),
            validation_timeout: Duration::from_secs(90),
            gateway_silence: Duration::from_secs(120),
            concurrency: 4,
        }
    }
}

/// How long a claim holds: a replica that dies mid-order leaves it to
/// another after this long.
pub const LEASE: Duration = Duration::from_secs(300);
/// The longest one attempt may run (within [`LEASE`]).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(270);
/// The first retry after a failure; doubled per consecutive failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// When to renew a certificate valid from `not_before` to `not_after`
/// (unix seconds), in ms: `renew_before` its expiry, or a third of its
/// lifetime before it when that is shorter.
pub fn renewal_due_ms(not_before: i64, not_after: i64, renew_before: Duration) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let ahead = (renew_before.as_secs() as i64).min(lifetime / 3);
    (not_after - ahead).saturating_mul(1000)
}

/// When to retry after the `failures`-th consecutive failure (0 for the
/// first), in ms: an exponential back-off from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], or later if the CA said so.
pub fn retry_at_ms(now_ms: i64, failures: i64, ca_retry_after: Option<SystemTime>) -> i64 {
    let shift = failures.clamp(0, 16) as u32;
    let backoff = FIRST_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF);
    let ours = now_ms.saturating_add(backoff.as_millis() as i64);
    let ca = ca_retry_after
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    ca.map_or(ours, |ca| {
        ca.max(ours)
            .min(now_ms + MAX_BACKOFF.as_millis() as i64 * 7)
    })
}

/// Why an attempt failed, for the tenant (`failed: <reason>`).
#[derive(Debug)]
struct Failure {
    reason: String,
    /// Start a new order next time (this one is invalid or unusable).
    forget_order: bool,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            forget_order: true,
        }
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Failure {
        let reason = match &e {
            instant_acme::Error::Api(problem) => problem_text(problem),
            other => with_causes(other),
        };
        Failure {
            reason,
            // A transport error keeps the order for the next attempt.
            forget_order: matches!(e, instant_acme::Error::Api(_)),
        }
    }
}

/// An error and its causes, `: `-separated (a transport error's own text
/// rarely says what failed).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// The CA's words for a problem: its detail (and its subproblems'), else
/// its type.
fn problem_text(problem: &instant_acme::Problem) -> String {
    let mut text = problem
        .detail
        .clone()
        .or_else(|| problem.r#type.clone())
        .unwrap_or_else(|| "the CA gave no reason".into());
    for sub in &problem.subproblems {
        if let Some(detail) = &sub.detail {
            text.push_str("; ");
            text.push_str(detail);
        }
    }
    text
}

/// Starts the worker if `state.config.acme` is set; it stops with
/// `shutdown`.
pub fn spawn(state: AppState, shutdown: CancellationToken) {
    let Some(config) = state.config.acme.clone() else {
        return;
    };
    // One worker per process, however many listeners serve the state.
    if state
        .acme_started
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let retry_after = RetryAfter::default();
    let http = match AcmeHttp::new(config.ca_file.as_deref(), retry_after.clone()) {
        Ok(http) => Arc::new(http),
        Err(e) => {
            tracing::error!(error = %e, "managed certificates are off: the ACME client could not be set up");
            return;
        }
    };
    let worker = Arc::new(Worker {
        owner: format!("{:016x}", rand::random::<u64>()),
        slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
        config,
        state,
        http,
        retry_after,
        account: tokio::sync::Mutex::new(None),
    });
    tokio::spawn(async move { worker.run(shutdown).await });
}

struct Worker {
    state: AppState,
    config: AcmeConfig,
    /// This replica's name on its leases.
    owner: String,
    http: Arc<AcmeHttp>,
    retry_after: RetryAfter,
    account: tokio::sync::Mutex<Option<Account>>,
    slots: Arc<Semaphore>,
}

/// The client handed to instant-acme: the shared [`AcmeHttp`].
struct SharedHttp(Arc<AcmeHttp>);

impl instant_acme::HttpClient for SharedHttp {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        self.0.request(req)
    }
}

impl Worker {
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake: Arc<Notify> = self.state.acme_wake.clone();
        tracing::info!(directory = %self.config.directory_url, "managed certificates: ACME worker started");
        loop {
            self.clone().start_due_work().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.check_interval) => {}
                _ = wake.notified() => {}
            }
        }
    }

    /// Claims what is due (as many as there are free slots) and works on
    /// each in its own task.
    async fn start_due_work(self: Arc<Self>) {
        let free = self.slots.available_permits() as i64;
        if free == 0 {
            return;
        }
        let due = match self.state.store.due_managed(now_ms(), free).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "managed certificates: reading due work failed");
                return;
            }
        };
        for hostname in due {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let until = now_ms() + LEASE.as_millis() as i64;
            let claimed = match self
                .state
                .store
                .claim_managed(&hostname, &self.owner, until)
                .await
            {
                Ok(Some(claimed)) => claimed,
                Ok(None) => continue, // another replica took it
                Err(e) => {
                    tracing::warn!(%hostname, error = %e, "managed certificates: claiming failed");
                    continue;
                }
            };
            let worker = self.clone();
            tokio::spawn(async move {
                worker.attempt(claimed).await;
                drop(permit);
            });
        }
    }

    /// One attempt at `claimed`, recorded whatever its outcome.
    async fn attempt(&self, claimed: Claimed) {
        let hostname = claimed.hostname.clone();
        let kind = if claimed.has_certificate {
            "renewal"
        } else {
            "first certificate"
        };
        tracing::info!(%hostname, kind, "managed certificates: ordering");
        let outcome = match tokio::time::timeout(ATTEMPT_LIMIT, self.obtain(&claimed)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure {
                reason: format!(
                    "the CA did not finish within {} s; retrying later",
                    ATTEMPT_LIMIT.as_secs()
                ),
                forget_order: false,
            }),
        };
        let store = &self.state.store;
        match outcome {
            Ok(certificate) => {
                let info = certificate.info();
                let renew_at =
                    renewal_due_ms(info.not_before, info.not_after, self.config.renew_before);
                match store
                    .store_managed_certificate(
                        claimed.app_id,
                        &hostname,
                        &self.owner,
                        &certificate,
                        renew_at,
                    )
                    .await
                {
                    Ok(Some(revision)) => {
                        self.state.notifier.bump(revision, Scope::Everywhere);
                        self.state
                            .metrics
                            .acme_orders
                            .with_label_values(&["issued"])
                            .inc();
                        tracing::info!(%hostname, issuer = %info.issuer, not_after = info.not_after, "managed certificates: issued");
                    }
                    Ok(None) => {
                        tracing::info!(%hostname, "managed certificates: issued, but the hostname was removed meanwhile")
                    }
                    Err(e) => {
                        tracing::error!(%hostname, error = %e, "managed certificates: storing the issued certificate failed");
                        self.record_failure(
                            &claimed,
                            Failure::new(format!("storing the certificate failed: {e}")),
                        )
                        .await;
                    }
                }
            }
            Err(failure) => self.record_failure(&claimed, failure).await,
        }
    }

    async fn record_failure(&self, claimed: &Claimed, failure: Failure) {
        self.state
            .metrics
            .acme_orders
            .with_label_values(&["failed"])
            .inc();
        let retry_at = retry_at_ms(now_ms(), claimed.failures, self.retry_after.take());
        tracing::warn!(
            hostname = %claimed.hostname,
            reason = %failure.reason,
            retry_in_s = (retry_at - now_ms()) / 1000,
            "managed certificates: attempt failed"
        );
        match self
            .state
            .store
            .fail_managed(
                claimed.app_id,
                &claimed.hostname,
                &self.owner,
                &failure.reason,
                retry_at,
                failure.forget_order,
            )
            .await
        {
            Ok(Some(revision)) => self.state.notifier.bump(revision, Scope::Everywhere),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(hostname = %claimed.hostname, error = %e, "managed certificates: recording the failure failed")
            }
        }
    }

    /// The platform's account with the CA: loaded from the store, or
    /// created and stored (once per directory; a replica that loses the
    /// race uses the winner's).
    async fn account(&self) -> Result<Account, Failure> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let store = &self.state.store;
        let directory = &self.config.directory_url;
        let stored = store
            .acme_account(directory)
            .await
            .map_err(|e| Failure::new(format!("loading the ACME account: {e}")))?;
        let account = match stored {
            Some(json) => self.account_from(&json).await?,
            None => {
                let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
                let (account, credentials) =
                    Account::builder_with_http(Box::new(SharedHttp(self.http.clone())))
                        .create(
                            &NewAccount {
                                contact: &contact,
                                terms_of_service_agreed: true,
                                only_return_existing: false,
                            },
                            directory.clone(),
                            None,
                        )
                        .await?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| Failure::new(format!("serializing the ACME account: {e}")))?;
                let stored = store
                    .store_acme_account(directory, &json)
                    .await
                    .map_err(|e| Failure::new(format!("storing the ACME account: {e}")))?;
                if stored {
                    tracing::info!(%directory, "managed certificates: ACME account created");
                    account
                } else {
                    // Another replica stored one first: use it.
                    let json = store
                        .acme_account(directory)
                        .await
                        .map_err(|e| Failure::new(format!("loading the ACME account: {e}")))?
                        .ok_or_else(|| Failure::new("the ACME account vanished"))?;
                    self.account_from(&json).await?
                }
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    async fn account_from(&self, json: &str) -> Result<Account, Failure> {
        let credentials: AccountCredentials = serde_json::from_str(json)
            .map_err(|e| Failure::new(format!("the stored ACME account does not parse: {e}")))?;
        Ok(
            Account::builder_with_http(Box::new(SharedHttp(self.http.clone())))
                .from_credentials(credentials)
                .await?,
        )
    }

    /// Runs the order for `claimed` to a checked certificate.
    async fn obtain(
        &self,
        claimed: &Claimed,
    ) -> Result<crate::certificate::CheckedCertificate, Failure> {
        let store = &self.state.store;
        let hostname = &claimed.hostname;
        let account = self.account().await?;
        let mut order = self.resume_or_create(&account, claimed).await?;
        store
            .set_managed_order(hostname, &self.owner, Some(order.url()))
            .await
            .map_err(|e| Failure::new(format!("recording the order: {e}")))?;
        if order.state().status == OrderStatus::Pending {
            self.answer_challenges(&mut order, claimed).await?;
            let policy = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .backoff(1.5)
                .timeout(self.config.validation_timeout);
            let status = order.poll_ready(&policy).await?;
            if status != OrderStatus::Ready {
                return Err(Failure::new(invalid_reason(&mut order).await));
            }
        }
        match order.state().status {
            OrderStatus::Ready => {}
            other => {
                return Err(Failure::new(format!(
                    "the order is {other:?}, not ready to finalize"
                )));
            }
        }
        let key_pem = order.finalize().await?;
        let policy = RetryPolicy::new().timeout(self.config.validation_timeout);
        let chain = order.poll_certificate(&policy).await?;
        let upload = CertificateUpload {
            cert_pem: chain,
            key_pem,
        };
        let host = hostname.clone();
        tokio::task::spawn_blocking(move || {
            crate::certificate::check(&host, &upload, gannet_server::tls::unix_now())
        })
        .await
        .map_err(|e| Failure::new(e.to_string()))?
        .map_err(|e| Failure::new(format!("the CA's certificate cannot be served: {e}")))
    }

    /// The stored order when it can still be used (pending or ready),
    /// else a new one.
    async fn resume_or_create(
        &self,
        account: &Account,
        claimed: &Claimed,
    ) -> Result<Order, Failure> {
        if let Some(url) = &claimed.order_url
            && let Ok(mut order) = account.order(url.clone()).await
            && matches!(
                order.state().status,
                OrderStatus::Pending | OrderStatus::Ready
            )
        {
            tracing::info!(hostname = %claimed.hostname, "managed certificates: resuming the stored order");
            return Ok(order);
        }
        let identifiers = [Identifier::Dns(claimed.hostname.clone())];
        Ok(account.new_order(&NewOrder::new(&identifiers)).await?)
    }

    /// Publishes the HTTP-01 answer of each pending authorization, waits
    /// for the gateways to have it, and tells the CA to validate.
    async fn answer_challenges(&self, order: &mut Order, claimed: &Claimed) -> Result<(), Failure> {
        let store = &self.state.store;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Failure::new(format!("the CA's authorization is {other:?}")));
                }
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| Failure::new("the CA offers no HTTP-01 challenge for this name"))?;
            let key_authorization = challenge.key_authorization().as_str().to_owned();
            let token = challenge.token.clone();
            let revision = store
                .set_managed_challenge(
                    claimed.app_id,
                    &claimed.hostname,
                    &self.owner,
                    Some((&token, &key_authorization)),
                )
                .await
                .map_err(|e| Failure::new(format!("publishing the challenge: {e}")))?
                .ok_or_else(|| Failure::new("the hostname was removed"))?;
            self.state.notifier.bump(revision, Scope::Everywhere);
            self.wait_for_gateways(revision, &claimed.hostname).await;
            challenge.set_ready().await?;
        }
        Ok(())
    }

    /// Waits until every gateway seen recently has applied `revision`, or
    /// the ACK timeout passes (then the CA validates anyway: a gateway
    /// that is behind may answer 404 to it).
    async fn wait_for_gateways(&self, revision: i64, hostname: &str) {
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout;
        loop {
            let silence = self.config.gateway_silence.as_millis() as i64;
            match self
                .state
                .store
                .gateways_behind(revision, now_ms() - silence)
                .await
            {
                Ok((_, 0)) => return,
                Ok((seen, behind)) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(%hostname, revision, seen, behind, "managed certificates: not every gateway ACKed the challenge in time; asking the CA to validate anyway");
                    return;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(%hostname, error = %e, "managed certificates: could not read gateways' ACKs");
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Why an order became invalid: the CA's error on a challenge (what its
/// validator saw), else on the order.
async fn invalid_reason(order: &mut Order) -> String {
    if let Some(problem) = &order.state().error {
        return problem_text(problem);
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return problem_text(problem);
        }
    }
    "the CA refused the order without a reason".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_thirty_days_ahead_or_a_third_of_a_short_lifetime() {
        let day = 24 * 3600;
        let thirty = Duration::from_secs(30 * day as u64);
        // 90-day certificate: 30 days before expiry.
        assert_eq!(renewal_due_ms(0, 90 * day, thirty), 60 * day * 1000);
        // 6-day certificate: 2 days before expiry.
        assert_eq!(renewal_due_ms(0, 6 * day, thirty), 4 * day * 1000);
        // Nonsense validity: due at expiry, never before the epoch.
        assert_eq!(renewal_due_ms(10, 5, thirty), 5000);
    }

    #[test]
    fn retries_back_off_exponentially_and_follow_the_cas_retry_after() {
        let now = 1_000_000_000;
        assert_eq!(retry_at_ms(now, 0, None), now + 60_000);
        assert_eq!(retry_at_ms(now, 1, None), now + 120_000);
        assert_eq!(retry_at_ms(now, 3, None), now + 480_000);
        assert_eq!(retry_at_ms(now, 40, None), now + 24 * 3600 * 1000);
        let later = SystemTime::UNIX_EPOCH + Duration::from_millis((now + 3_600_000) as u64);
        assert_eq!(retry_at_ms(now, 0, Some(later)), now + 3_600_000);
        let sooner = SystemTime::UNIX_EPOCH + Duration::from_millis((now + 1_000) as u64);
        assert_eq!(retry_at_ms(now, 0, Some(sooner)), now + 60_000);
    }
}
