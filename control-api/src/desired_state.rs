//! Desired state for PoPs: the change feed, snapshots and deltas, PoPs and
//! their gateways (node tokens), acknowledgements and reports.
//!
//! The feed's design, for everything that rides on it (versions, hostnames,
//! and later the scheduler's per-PoP state, config and secrets):
//! - A change and its feed row commit in **one transaction**
//!   ([`append_change`] runs inside the transaction that makes the change):
//!   a crash loses both or neither.
//! - **Commit order is revision order**: the next revision is taken from the
//!   one-row `feed_head` counter, under its row lock, as the transaction's
//!   last write. A second writer waits for the first to commit, so a poller
//!   that has seen revision N has seen every revision below it.
//! - **One global sequence, filtered per PoP**: a feed row is for every PoP
//!   (`pop_id` NULL) or for one. A PoP's poll reads the rows for it, and a
//!   change for one PoP does not wake the pollers of another
//!   ([`Notifier`]). Placement is applied when a PoP's state is computed
//!   ([`Store::deployed_apps`]): a change to an app is fed to every PoP, and
//!   a PoP the app is not placed at sees it as a removal (a no-op for a
//!   gateway that never had it).
//! - The feed keeps the last [`RETAINED_CHANGES`] rows; a poller older than
//!   that (or newer than the database: a reset) gets a full snapshot.
//!
//! Pollers wait on [`Notifier`]: in one process, watch channels; with
//! Postgres, each change also queues `NOTIFY gannet_state` in its
//! transaction (delivered at commit) and every replica's listener wakes its
//! own pollers.

use crate::placement::LIVE_ROLLOUT;
use crate::platform_tls::PLATFORM_CHANGE;
use crate::store::{Dialect, Store, now_ms};
use gannet_model::snapshot::{
    AcmeChallenge, Affinity, AppReport, CanaryVersion, DeployedApp, FailedApp, GatewayAck,
    GatewayRegistration, HostCertificate, Secrets, StateUpdate,
};
use gannet_scheduler::placement::PopLabels;
use gannet_scheduler::selector::Selector;
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How many changes the feed retains; a poller older than that gets a
/// full snapshot.
pub const RETAINED_CHANGES: i64 = 10_000;

/// Which PoPs a change is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every PoP.
    Everywhere,
    /// One PoP, by id.
    Pop(i64),
}

impl Scope {
    fn pop_id(self) -> Option<i64> {
        match self {
            Scope::Everywhere => None,
            Scope::Pop(id) => Some(id),
        }
    }

    /// The NOTIFY payload: `REV` or `REV:POP`.
    fn payload(self, revision: i64) -> String {
        match self {
            Scope::Everywhere => revision.to_string(),
            Scope::Pop(id) => format!("{revision}:{id}"),
        }
    }

    fn parse(payload: &str) -> Option<(i64, Scope)> {
        match payload.split_once(':') {
            None => Some((payload.parse().ok()?, Scope::Everywhere)),
            Some((rev, pop)) => Some((rev.parse().ok()?, Scope::Pop(pop.parse().ok()?))),
        }
    }
}

/// Appends a change of `app_id` for `scope` to the feed, inside the
/// transaction `conn` that makes the change, and returns its revision.
///
/// Call it as the transaction's last write: it takes the next revision
/// under the feed head's row lock (held until commit, so revisions commit
/// in order), writes the feed row, prunes rows older than the retained
/// window, and on Postgres queues a NOTIFY that is delivered only if the
/// transaction commits.
pub async fn append_change(
    conn: &mut AnyConnection,
    dialect: Dialect,
    app_id: i64,
    scope: Scope,
) -> DbResult<i64> {
    let revision: i64 =
        sqlx::query("UPDATE feed_head SET revision = revision + 1 WHERE id = 1 RETURNING revision")
            .fetch_one(&mut *conn)
            .await?
            .try_get("revision")?;
    sqlx::query(
        "INSERT INTO state_changes (revision, app_id, pop_id, at_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(revision)
    .bind(app_id)
    .bind(scope.pop_id())
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    let prune = revision - RETAINED_CHANGES;
    if prune > 0 {
        sqlx::query("DELETE FROM state_changes WHERE revision <= $1")
            .bind(prune)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE feed_head SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1",
        )
        .bind(prune)
        .execute(&mut *conn)
        .await?;
    }
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT pg_notify('gannet_state', $1)")
            .bind(scope.payload(revision))
            .execute(&mut *conn)
            .await?;
    }
    Ok(revision)
}

/// Wakes the long-polls of the PoPs a change is for.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<NotifierInner>,
}

struct NotifierInner {
    everywhere: watch::Sender<i64>,
    pops: Mutex<HashMap<i64, watch::Sender<i64>>>,
}

/// What one poller waits on: changes for every PoP, and for its own.
pub struct Wakeups {
    everywhere: watch::Receiver<i64>,
    pop: watch::Receiver<i64>,
}

impl Wakeups {
    /// Waits for the next change for this PoP; false when the notifier is gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.everywhere.changed() => r.is_ok(),
            r = self.pop.changed() => r.is_ok(),
        }
    }
}

fn bump_to(tx: &watch::Sender<i64>, revision: i64) {
    tx.send_if_modified(|r| {
        if revision > *r {
            *r = revision;
            true
        } else {
            false
        }
    });
}

impl Notifier {
    /// A notifier at `revision`.
    pub fn new(revision: i64) -> Self {
        Notifier {
            inner: Arc::new(NotifierInner {
                everywhere: watch::Sender::new(revision),
                pops: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn pop_sender(&self, pop_id: i64) -> watch::Sender<i64> {
        let mut pops = self
            .inner
            .pops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pops.entry(pop_id)
            .or_insert_with(|| watch::Sender::new(0))
            .clone()
    }

    /// Records that `revision` exists for `scope`, waking its pollers.
    pub fn bump(&self, revision: i64, scope: Scope) {
        match scope {
            Scope::Everywhere => bump_to(&self.inner.everywhere, revision),
            Scope::Pop(id) => bump_to(&self.pop_sender(id), revision),
        }
    }

    /// What a poller of `pop_id` waits on.
    pub fn subscribe(&self, pop_id: i64) -> Wakeups {
        Wakeups {
            everywhere: self.inner.everywhere.subscribe(),
            pop: self.pop_sender(pop_id).subscribe(),
        }
    }
}

/// Starts a Postgres `LISTEN gannet_state` that wakes this replica's
/// pollers for every change committed by any replica. Reconnects on
/// failure; after each (re)connection it wakes every poller once, since
/// changes may have been missed meanwhile.
pub fn listen_postgres(url: String, store: Store, notifier: Notifier) {
    tokio::spawn(async move {
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => {
                    if listener.listen("gannet_state").await.is_ok() {
                        if let Ok(head) = store.revision().await {
                            notifier.bump(head, Scope::Everywhere);
                        }
                        while let Ok(n) = listener.recv().await {
                            if let Some((rev, scope)) = Scope::parse(n.payload()) {
                                notifier.bump(rev, scope);
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

/// A PoP's gateway, as the operator sees it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GatewayState {
    /// Gateway id.
    pub id: i64,
    /// Its PoP.
    pub pop: String,
    /// Revision it applied last.
    pub applied_revision: i64,
    /// Why it could not apply its last revision at all, if it could not
    /// (for the operator: the text may name any tenant's app).
    pub last_error: Option<String>,
    /// Last contact, ms.
    pub last_seen_ms: Option<i64>,
    /// What it served.
    pub apps: Vec<AppReport>,
    /// Apps it refused.
    pub failed_apps: Vec<FailedApp>,
    /// CPU architecture it registered with (`None` until it registers).
    #[serde(default)]
    pub arch: Option<String>,
    /// Its engine's compatibility hash: gateways with the same one can run
    /// each other's precompiled components.
    #[serde(default)]
    pub engine_compat: Option<String>,
    /// Its Gannet version.
    #[serde(default)]
    pub gannet_version: Option<String>,
    /// The addresses its public listeners are bound to.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Its process's random id: a new one means it restarted.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// When it last registered (started), ms.
    #[serde(default)]
    pub registered_ms: Option<i64>,
    /// How many revisions for its PoP it is behind (0: up to date).
    #[serde(default)]
    pub lag: i64,
    /// Whether it has stopped reporting: never seen, or not for
    /// [`SILENT_AFTER_MS`].
    #[serde(default)]
    pub silent: bool,
}

/// A gateway not heard from for this long is silent. A live gateway is
/// heard from every 30 s at most (each state poll waits at most its 30 s
/// `wait_ms`, and it polls again, or heartbeats, at once), so this is three
/// heartbeats missed.
pub const SILENT_AFTER_MS: i64 = 90_000;

/// Whether hostname `h` serves traffic: once its owner proved control
/// (platform hostnames always; a managed one when its certificate is
/// issued; see [`crate::ownership`]).
const SERVES_TRAFFIC: &str = "h.verified_ms IS NOT NULL";

/// Whether this process has not yet reported `hostname`'s unopenable key
/// (each is logged as an error once, not at every poll).
fn first_report(hostname: &str) -> bool {
    static REPORTED: Mutex<Option<std::collections::HashSet<String>>> = Mutex::new(None);
    let mut reported = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
    reported
        .get_or_insert_with(Default::default)
        .insert(hostname.to_string())
}

/// A store result.
pub type DbResult<T> = Result<T, sqlx::Error>;

/// A gateway as its node token names it.
#[derive(Clone, Debug)]
pub struct NodeRow {
    /// Gateway id.
    pub gateway_id: i64,
    /// Its PoP's id.
    pub pop_id: i64,
    /// Its PoP's name.
    pub pop: String,
    /// Whether the token was revoked.
    pub revoked: bool,
}

/// The feed's head: its newest revision and how far it has been pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedHead {
    /// The newest revision (0 when nothing has changed yet).
    pub revision: i64,
    /// Rows up to this revision are gone.
    pub pruned_through: i64,
}

/// Binds each of `ids` in order.
fn bind_ids<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ids: &[i64],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for id in ids {
        q = q.bind(*id);
    }
    q
}

/// `$1, $2, …` for `n` values starting at `$from`.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The newest revision (0 when nothing has changed yet).
    pub async fn revision(&self) -> DbResult<i64> {
        Ok(self.feed_head().await?.revision)
    }

    /// The feed's head.
    pub async fn feed_head(&self) -> DbResult<FeedHead> {
        let row = sqlx::query("SELECT revision, pruned_through FROM feed_head WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        Ok(FeedHead {
            revision: row.try_get("revision")?,
            pruned_through: row.try_get("pruned_through")?,
        })
    }

    /// Every app with an active version placed at `pop`, as its gateways
    /// serve it (with its live rollout's canary and this PoP's weight); or
    /// only those with ids in `only`. Nine queries, however many apps.
    ///
    /// Certificates come with their private keys opened with the master
    /// key: this is for gateways only. A key the master key does not open
    /// (a wrong master key) is logged with its hostname and left out: the
    /// gateways then serve the platform's certificate for that hostname.
    pub async fn deployed_apps(
        &self,
        only: Option<&[i64]>,
        pop: &PopLabels,
    ) -> DbResult<Vec<(i64, DeployedApp)>> {
        let filter = |column: &str| match only {
            Some(ids) => format!(" WHERE {column} IN ({})", placeholders(1, ids.len())),
            None => String::new(),
        };
        if only.is_some_and(|ids| ids.is_empty()) {
            return Ok(Vec::new());
        }
        let ids = only.unwrap_or_default();
        let apps_sql = format!(
            "SELECT a.id AS app_id, a.name AS app, t.name AS tenant, a.placement, a.affinity, v.number, v.digest, c.size_bytes, \
             v.env_json, v.limits_json, v.outbound_json \
             FROM apps a JOIN tenants t ON t.id = a.tenant_id JOIN versions v ON v.id = a.active_version_id \
             JOIN components c ON c.digest = v.digest{} ORDER BY a.id",
            filter("a.id")
        );
        // A managed hostname without a certificate yet serves nothing but
        // its challenge (the CA's validation is its owner's proof).
        let hosts_sql = format!(
            "SELECT h.app_id, h.hostname FROM hostnames h{} ORDER BY h.app_id, h.kind DESC, h.hostname",
            match only {
                Some(ids) => format!(
                    " WHERE h.app_id IN ({}) AND {SERVES_TRAFFIC}",
                    placeholders(1, ids.len())
                ),
                None => format!(" WHERE {SERVES_TRAFFIC}"),
            }
        );
        let challenges_sql = format!(
            "SELECT h.app_id, m.hostname, m.challenge_token, m.challenge_key_authorization FROM managed_domains m \
             JOIN hostnames h ON h.hostname = m.hostname WHERE m.challenge_token IS NOT NULL{} ORDER BY h.app_id, m.hostname",
            match only {
                Some(ids) => format!(" AND h.app_id IN ({})", placeholders(1, ids.len())),
                None => String::new(),
            }
        );
        // The canary of each live rollout, with its weight per PoP.
        let canaries_sql = format!(
            "SELECT r.app_id, r.weights_json, v.number, v.digest, c.size_bytes, v.env_json, v.limits_json, v.outbound_json \
             FROM rollouts r JOIN versions v ON v.app_id = r.app_id AND v.number = r.canary_version \
             JOIN components c ON c.digest = v.digest WHERE r.phase IN {LIVE_ROLLOUT}{}",
            match only {
                Some(ids) => format!(" AND r.app_id IN ({})", placeholders(1, ids.len())),
                None => String::new(),
            }
        );
        let versions_sql = format!(
            "SELECT DISTINCT app_id, digest FROM versions{} ORDER BY app_id, digest",
            filter("app_id")
        );
        // Only for hostnames that serve: a certificate does not prove
        // control of its name.
        let certificates_sql = format!(
            "SELECT h.app_id, c.hostname, c.cert_pem, c.key_sealed FROM certificates c \
             JOIN hostnames h ON h.hostname = c.hostname WHERE {SERVES_TRAFFIC}{} ORDER BY h.app_id, c.hostname",
            match only {
                Some(ids) => format!(" AND h.app_id IN ({})", placeholders(1, ids.len())),
                None => String::new(),
            }
        );
        let ownership_sql = format!(
            "SELECT h.app_id, h.hostname, h.verification_token FROM hostnames h \
             WHERE h.verified_ms IS NULL AND h.verification_token IS NOT NULL{} ORDER BY h.app_id, h.hostname",
            match only {
                Some(ids) => format!(" AND h.app_id IN ({})", placeholders(1, ids.len())),
                None => String::new(),
            }
        );
        let rows = bind_ids(sqlx::query(&apps_sql), ids)
            .fetch_all(self.pool())
            .await?;
        let mut hosts: HashMap<i64, Vec<String>> = HashMap::new();
        for r in bind_ids(sqlx::query(&hosts_sql), ids)
            .fetch_all(self.pool())
            .await?
        {
            hosts
                .entry(r.try_get("app_id")?)
                .or_default()
                .push(r.try_get("hostname")?);
        }
        let mut retained: HashMap<i64, Vec<String>> = HashMap::new();
        for r in bind_ids(sqlx::query(&versions_sql), ids)
            .fetch_all(self.pool())
            .await?
        {
            retained
                .entry(r.try_get("app_id")?)
                .or_default()
                .push(r.try_get("digest")?);
        }
        let mut certificates: HashMap<i64, Vec<HostCertificate>> = HashMap::new();
        for r in bind_ids(sqlx::query(&certificates_sql), ids)
            .fetch_all(self.pool())
            .await?
        {
            let hostname: String = r.try_get("hostname")?;
            let sealed: Vec<u8> = r.try_get("key_sealed")?;
            let key_pem = match self.open_certificate_key(&hostname, &sealed) {
                Ok(key_pem) => key_pem,
                Err(e) if !first_report(&hostname) => {
                    tracing::debug!(%hostname, error = %e, "certificate key still does not open; left out");
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        %hostname,
                        error = %e,
                        "the private key of this hostname's certificate does not open with the master key; \
                         leaving the certificate out (gateways serve the platform's for it): \
                         start the control API with the master key it was stored with, or upload the certificate again"
                    );
                    continue;
                }
            };
            certificates
                .entry(r.try_get("app_id")?)
                .or_default()
                .push(HostCertificate {
                    hostname,
                    cert_pem: r.try_get("cert_pem")?,
                    key_pem,
                });
        }
        let mut challenges: HashMap<i64, Vec<AcmeChallenge>> = HashMap::new();
        for r in bind_ids(sqlx::query(&challenges_sql), ids)
            .fetch_all(self.pool())
            .await?
        {
            challenges
                .entry(r.try_get("app_id")?)
                .or_default()
                .push(AcmeChallenge {
                    hostname: r.try_get("hostname")?,
                    token: r.try_get("challenge_token")?,
                    key_authorization: r.try_get("challenge_key_authorization")?,
                });
        }
        // A hostname waiting for its owner's proof: its token, answered by
        // every gateway at /.well-known/gannet-challenge/<token>.
        for r in bind_ids(sqlx::query(&ownership_sql), ids)
            .fetch_all(self.pool())
            .await?
        {
            let token: String = r.try_get("verification_token")?;
            challenges
                .entry(r.try_get("app_id")?)
                .or_default()
                .push(AcmeChallenge {
                    hostname: r.try_get("hostname")?,
                    key_authorization: token.clone(),
                    token,
                });
        }
        let bad = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        let digest = |d: &str| {
            d.parse::<gannet_model::Sha256Digest>()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        let mut canaries: HashMap<i64, CanaryVersion> = HashMap::new();
        for r in bind_ids(sqlx::query(&canaries_sql), ids)
            .fetch_all(self.pool())
            .await?
        {
            let weights: BTreeMap<String, u8> =
                serde_json::from_str(&r.try_get::<String, _>("weights_json")?).unwrap_or_default();
            canaries.insert(
                r.try_get("app_id")?,
                CanaryVersion {
                    version: r.try_get::<i64, _>("number")? as u32,
                    digest: digest(&r.try_get::<String, _>("digest")?)?,
                    size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
                    env: serde_json::from_str(&r.try_get::<String, _>("env_json")?).map_err(bad)?,
                    limits: serde_json::from_str(&r.try_get::<String, _>("limits_json")?)
                        .map_err(bad)?,
                    outbound: serde_json::from_str(&r.try_get::<String, _>("outbound_json")?)
                        .map_err(bad)?,
                    weight: weights.get(&pop.name).copied().unwrap_or(0).min(100),
                },
            );
        }
        let mut settings = self.settings_for(only).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let app_id: i64 = r.try_get("app_id")?;
            // Placed elsewhere: not in this PoP's state (an unreadable
            // selector places nowhere).
            let placement: String = r.try_get("placement")?;
            if !Selector::parse(&placement).is_ok_and(|s| s.matches(&pop.labels)) {
                continue;
            }
            let affinity =
                Affinity::parse(&r.try_get::<String, _>("affinity")?).unwrap_or_default();
            let (config, secrets) = settings.remove(&app_id).unwrap_or_default();
            let active = digest(&r.try_get::<String, _>("digest")?)?;
            let retain = retained
                .remove(&app_id)
                .unwrap_or_default()
                .iter()
                .map(|d| digest(d))
                .filter(|d| d.as_ref().map_or(true, |d| *d != active))
                .collect::<Result<_, _>>()?;
            out.push((
                app_id,
                DeployedApp {
                    tenant: r.try_get("tenant")?,
                    app: r.try_get("app")?,
                    version: r.try_get::<i64, _>("number")? as u32,
                    digest: active,
                    size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
                    hosts: hosts.remove(&app_id).unwrap_or_default(),
                    env: serde_json::from_str::<BTreeMap<String, String>>(
                        &r.try_get::<String, _>("env_json")?,
                    )
                    .map_err(bad)?,
                    limits: serde_json::from_str(&r.try_get::<String, _>("limits_json")?)
                        .map_err(bad)?,
                    outbound: serde_json::from_str(&r.try_get::<String, _>("outbound_json")?)
                        .map_err(bad)?,
                    retain,
                    certificates: certificates.remove(&app_id).unwrap_or_default(),
                    challenges: challenges.remove(&app_id).unwrap_or_default(),
                    canary: canaries.remove(&app_id),
                    affinity,
                    config,
                    secrets: Secrets(secrets),
                },
            ));
        }
        Ok(out)
    }

    /// Whether some app serves `digest`, as its active version or as the
    /// canary of a live rollout (a gateway may download it).
    pub async fn is_served(&self, digest: &gannet_model::Sha256Digest) -> DbResult<bool> {
        let row = sqlx::query(&format!(
            "SELECT (SELECT COUNT(*) FROM apps a JOIN versions v ON v.id = a.active_version_id WHERE v.digest = $1) \
             + (SELECT COUNT(*) FROM rollouts r JOIN versions v ON v.app_id = r.app_id AND v.number = r.canary_version \
                WHERE v.digest = $1 AND r.phase IN {LIVE_ROLLOUT}) AS n"
        ))
        .bind(digest.to_string())
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The update that brings a gateway of `pop_id` at `since` to the
    /// current revision, or `None` when nothing for its PoP changed since.
    /// `since` is -1 for a gateway that has applied nothing.
    pub async fn state_since(&self, since: i64, pop_id: i64) -> DbResult<Option<StateUpdate>> {
        let head = self.feed_head().await?;
        if since == head.revision {
            return Ok(None);
        }
        // Nothing applied yet (-1), ahead of us (a reset database), or older
        // than the retained feed: the whole state.
        let pop = self.pop_labels_of(pop_id).await?.unwrap_or_default();
        if since < 0 || since > head.revision || since < head.pruned_through {
            let apps = self
                .deployed_apps(None, &pop)
                .await?
                .into_iter()
                .map(|(_, a)| a)
                .collect();
            return Ok(Some(StateUpdate::Snapshot {
                revision: head.revision,
                apps,
                platform: self.platform_tls(pop_id).await?,
            }));
        }
        let rows = sqlx::query(
            "SELECT DISTINCT app_id FROM state_changes \
             WHERE revision > $1 AND revision <= $2 AND (pop_id IS NULL OR pop_id = $3)",
        )
        .bind(since)
        .bind(head.revision)
        .bind(pop_id)
        .fetch_all(self.pool())
        .await?;
        let mut changed: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get("app_id"))
            .collect::<Result<_, _>>()?;
        if changed.is_empty() {
            return Ok(None);
        }
        // The PoP's TLS settings, whole, when they changed.
        let platform = if changed.contains(&PLATFORM_CHANGE) {
            changed.retain(|id| *id != PLATFORM_CHANGE);
            Some(self.platform_tls(pop_id).await?.unwrap_or_default())
        } else {
            None
        };
        let live = self.deployed_apps(Some(&changed), &pop).await?;
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
            revision: head.revision,
            upserts: live.into_iter().map(|(_, a)| a).collect(),
            removals,
            platform,
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

    /// The gateway holding a node token.
    pub async fn gateway_by_token(&self, token_hash: &str) -> DbResult<Option<NodeRow>> {
        let row = sqlx::query(
            "SELECT g.id, g.pop_id, p.name, g.revoked_ms FROM gateways g JOIN pops p ON p.id = g.pop_id WHERE g.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(NodeRow {
                gateway_id: r.try_get("id")?,
                pop_id: r.try_get("pop_id")?,
                pop: r.try_get("name")?,
                revoked: r.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
            })
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

    /// Stores what a gateway said about itself at its start (replacing
    /// what it said before), and marks it seen.
    pub async fn register_gateway(
        &self,
        gateway_id: i64,
        registration: &GatewayRegistration,
    ) -> DbResult<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE gateways SET arch = $1, engine_compat = $2, gannet_version = $3, listen_json = $4, \
             boot_id = $5, registered_ms = $6, last_seen_ms = $7 WHERE id = $8",
        )
        .bind(registration.arch.clone())
        .bind(registration.engine_compat.clone())
        .bind(registration.gannet_version.clone())
        .bind(serde_json::to_string(&registration.listen).unwrap_or_else(|_| "[]".into()))
        .bind(registration.boot_id.clone())
        .bind(now)
        .bind(now)
        .bind(gateway_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every active gateway with its state, its registration, its lag and
    /// whether it is silent.
    ///
    /// The lag is counted against the newest revision *for its PoP* (a
    /// change for another PoP does not move a gateway's applied revision);
    /// a gateway older than the retained feed is behind the head itself.
    pub async fn gateway_states(&self) -> DbResult<Vec<GatewayState>> {
        let head = self.feed_head().await?;
        // The newest retained revision for every PoP (`None`) and for each.
        let mut heads: HashMap<Option<i64>, i64> = HashMap::new();
        for r in sqlx::query(
            "SELECT pop_id, CAST(MAX(revision) AS BIGINT) AS head FROM state_changes GROUP BY pop_id",
        )
        .fetch_all(self.pool())
        .await?
        {
            heads.insert(r.try_get("pop_id")?, r.try_get("head")?);
        }
        let everywhere = heads.get(&None).copied().unwrap_or(0);
        let rows = sqlx::query(
            "SELECT g.id, g.pop_id, p.name AS pop, g.applied_revision, g.last_error, g.last_seen_ms, g.report_json, g.failed_json, \
             g.arch, g.engine_compat, g.gannet_version, g.listen_json, g.boot_id, g.registered_ms \
             FROM gateways g JOIN pops p ON p.id = g.pop_id WHERE g.revoked_ms IS NULL ORDER BY p.name, g.id",
        )
        .fetch_all(self.pool())
        .await?;
        let now = now_ms();
        rows.iter()
            .map(|r| {
                let applied_revision: i64 = r.try_get("applied_revision")?;
                let last_seen_ms: Option<i64> = r.try_get("last_seen_ms")?;
                let pop_id: i64 = r.try_get("pop_id")?;
                let pop_head = if applied_revision < head.pruned_through {
                    head.revision
                } else {
                    everywhere.max(heads.get(&Some(pop_id)).copied().unwrap_or(0))
                };
                Ok(GatewayState {
                    id: r.try_get("id")?,
                    pop: r.try_get("pop")?,
                    applied_revision,
                    last_error: r.try_get("last_error")?,
                    last_seen_ms,
                    apps: serde_json::from_str(&r.try_get::<String, _>("report_json")?)
                        .unwrap_or_default(),
                    failed_apps: serde_json::from_str(&r.try_get::<String, _>("failed_json")?)
                        .unwrap_or_default(),
                    arch: r.try_get("arch")?,
                    engine_compat: r.try_get("engine_compat")?,
                    gannet_version: r.try_get("gannet_version")?,
                    listen: r
                        .try_get::<Option<String>, _>("listen_json")?
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or_default(),
                    boot_id: r.try_get("boot_id")?,
                    registered_ms: r.try_get("registered_ms")?,
                    lag: (pop_head - applied_revision).max(0),
                    silent: last_seen_ms.is_none_or(|seen| now - seen > SILENT_AFTER_MS),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(w: &mut Wakeups) -> bool {
        tokio::time::timeout(Duration::from_millis(100), w.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_pollers_it_is_for() {
        let n = Notifier::new(0);
        let mut fra = n.subscribe(1);
        let mut ams = n.subscribe(2);
        n.bump(1, Scope::Pop(1));
        assert!(woken(&mut fra).await);
        assert!(!woken(&mut ams).await, "a change for another PoP woke it");
        n.bump(2, Scope::Everywhere);
        assert!(woken(&mut ams).await);
        assert!(woken(&mut fra).await);
        // An older revision wakes nobody.
        n.bump(1, Scope::Everywhere);
        assert!(!woken(&mut fra).await);
    }

    #[test]
    fn notify_payloads_round_trip() {
        for (rev, scope) in [(7, Scope::Everywhere), (9, Scope::Pop(3))] {
            assert_eq!(Scope::parse(&scope.payload(rev)), Some((rev, scope)));
        }
        assert_eq!(Scope::parse("x"), None);
    }
}
