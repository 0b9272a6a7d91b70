//! The scheduler's leader loop (see the [module docs](super)): every tick,
//! hold the lease, then drive each live rollout's state machine with what
//! changed since the last tick, and write what it decided (fenced).
//!
//! Per live rollout the leader keeps, in memory only:
//! - its [`Rollout`], built from the row (`Rollout::new`, then `restore`
//!   and `published` for the current step) when the leader first sees it,
//!   takes the lease over, or finds the row changed by another writer;
//! - the [`Windows`] that diff the gateways' cumulative counters (primed
//!   with the reports already stored, so that a gateway's history since its
//!   boot is not taken for one window);
//! - per gateway, the last contact it fed, so that each ACK or NACK is fed
//!   once per contact.
//!
//! Everything else is in the row, so a new leader carries on where the
//! last one stopped: the current step restarts (its timers and windows),
//! and its gateways' ACKs count again.

use super::lease::Lease;
use super::store::{Analysis, LiveRollout, RolloutWrite, Saved};
use super::{RolloutSettings, figures, millis};
use crate::AppState;
use crate::desired_state::{DbResult, GatewayState, Scope};
use crate::store::now_ms;
use gannet_model::api::PopProgress;
use gannet_scheduler::analysis::{Counters, Windows};
use gannet_scheduler::rollout::{Input, Phase, Rollout, Transition};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The shortest tick (a zero tick would spin).
const MIN_TICK: Duration = Duration::from_millis(10);

/// A gateway's name in a rollout (its transitions and its status): `gw-<id>`.
pub fn gateway_name(id: i64) -> String {
    format!("gw-{id}")
}

/// Milliseconds as the state machine counts them (never negative).
fn machine_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// A duration of a policy, in the database's milliseconds.
fn as_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The input a tenant's action (`pending_action`) makes.
fn action_input(action: &str) -> Option<Input> {
    match action {
        "promote" => Some(Input::Promote),
        "pause" => Some(Input::Pause),
        "resume" => Some(Input::Resume),
        "abort" => Some(Input::Abort),
        _ => None,
    }
}

/// The canary's weight at every placed PoP, in percent.
fn weights_of(rollout: &Rollout) -> BTreeMap<String, u8> {
    rollout
        .all_weights()
        .into_iter()
        .map(|(pop, weight)| (pop, weight.percent()))
        .collect()
}

/// What the leader keeps of one live rollout between ticks.
struct Entry {
    /// The state machine.
    rollout: Rollout,
    /// The row's version as last loaded or written by this leader.
    row_version: i64,
    /// Cumulative reports → windows, per gateway and boot.
    windows: Windows,
    /// Per gateway id: the last contact (`last_seen_ms`) fed as an ACK or NACK.
    fed: HashMap<i64, i64>,
    /// When the windows were last read.
    last_analysis_ms: i64,
    /// The status figures last written.
    analysis_json: String,
    /// The current step has no published revision (a leader died between
    /// entering it and publishing): publish at the next write.
    needs_publish: bool,
}

/// What driving one rollout led to.
enum Outcome {
    /// Go on with the next one.
    Continue,
    /// The lease is gone: stop and step down.
    NotLeader,
}

/// The scheduler's leader loop: its lease and the live rollouts it drives.
/// [`super::spawn`] runs one per process; tests may drive one tick by tick.
pub struct Leader {
    state: AppState,
    settings: RolloutSettings,
    lease: Lease,
    /// The lease's epoch while this replica leads.
    epoch: Option<i64>,
    /// When the lease was last taken or renewed (tick time).
    renewed_ms: i64,
    /// Per rollout id.
    entries: HashMap<i64, Entry>,
    /// Live rollouts that cannot be read, already logged.
    reported_bad: HashSet<i64>,
}

impl Leader {
    /// A leader loop over `state`'s store with `settings`, claiming the
    /// lease as `lease`; it leads nothing until its first tick.
    pub fn new(state: AppState, settings: RolloutSettings, lease: Lease) -> Leader {
        Leader {
            state,
            settings,
            lease,
            epoch: None,
            renewed_ms: 0,
            entries: HashMap::new(),
            reported_bad: HashSet::new(),
        }
    }

    /// The lease's epoch while this replica leads.
    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    /// The claim this loop holds the lease under.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// One tick at `now` (ms since the Unix epoch, the wall clock's: the
    /// gateways' last contacts are compared with it): take or renew the
    /// lease, then, if this replica leads, drive every live rollout and
    /// write what changed. Errors are logged; the next tick retries.
    pub async fn tick(&mut self, now: i64) {
        let started = Instant::now();
        let Some(epoch) = self.hold_lease(now).await else {
            return;
        };
        match self.drive(now, started, epoch).await {
            Ok(Outcome::Continue) => {}
            Ok(Outcome::NotLeader) => {
                tracing::warn!(
                    holder = %self.lease.holder(),
                    epoch,
                    "rollouts: the scheduler's lease is no longer ours (a write was fenced off); stepping down"
                );
                self.step_down();
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollouts: reading the live rollouts failed; retrying at the next tick")
            }
        }
    }

    /// Gives the lease up (if held) and forgets every rollout: another
    /// replica takes over at its next tick.
    pub async fn resign(&mut self) {
        if self.epoch.is_some() {
            match self.lease.release(&self.state.store).await {
                Ok(()) => {
                    tracing::info!(holder = %self.lease.holder(), "rollouts: gave the scheduler's lease up")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rollouts: giving the scheduler's lease up failed; it runs out instead")
                }
            }
        }
        self.step_down();
    }

    /// Forgets the lease and every rollout.
    fn step_down(&mut self) {
        self.epoch = None;
        self.entries.clear();
    }

    /// Takes or renews the lease (renewing every quarter of its time to
    /// live); the epoch if this replica leads.
    async fn hold_lease(&mut self, now: i64) -> Option<i64> {
        let ttl = as_i64(millis(self.settings.lease_ttl)).max(1);
        if let Some(epoch) = self.epoch
            && now.saturating_sub(self.renewed_ms) < ttl / 4
        {
            return Some(epoch);
        }
        match self
            .lease
            .acquire_or_renew(&self.state.store, now, ttl)
            .await
        {
            Ok(Some(epoch)) => {
                if self.epoch != Some(epoch) {
                    tracing::info!(
                        holder = %self.lease.holder(),
                        epoch,
                        "rollouts: this replica leads the scheduler"
                    );
                    self.entries.clear();
                }
                self.epoch = Some(epoch);
                self.renewed_ms = now;
                Some(epoch)
            }
            Ok(None) => {
                if self.epoch.is_some() {
                    tracing::warn!(
                        holder = %self.lease.holder(),
                        "rollouts: another replica holds the scheduler's lease; stepping down"
                    );
                }
                self.step_down();
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollouts: taking or renewing the scheduler's lease failed");
                // Every write is fenced anyway: go on while the lease may
                // still be ours.
                match self.epoch {
                    Some(epoch) if now.saturating_sub(self.renewed_ms) < ttl => Some(epoch),
                    _ => None,
                }
            }
        }
    }

    /// Drives every live rollout once.
    async fn drive(&mut self, now: i64, started: Instant, epoch: i64) -> DbResult<Outcome> {
        let rows = self.state.store.live_rollouts().await?;
        let live: HashSet<i64> = rows
            .iter()
            .map(|row| match row {
                Ok(row) => row.id,
                Err(bad) => bad.id,
            })
            .collect();
        // Ended by someone else (a rollback, a newer deploy): forgotten.
        self.entries.retain(|id, _| live.contains(id));
        self.reported_bad.retain(|id| live.contains(id));
        if rows.is_empty() {
            return Ok(Outcome::Continue);
        }
        let gateways = self.state.store.gateway_states().await?;
        for row in rows {
            let row = match row {
                Ok(row) => row,
                Err(bad) => {
                    if self.reported_bad.insert(bad.id) {
                        tracing::error!(
                            rollout = bad.id,
                            why = %bad.why,
                            "rollouts: a live rollout cannot be read; it is left as it is"
                        );
                    }
                    continue;
                }
            };
            if matches!(
                self.drive_one(row, &gateways, now, started, epoch).await,
                Outcome::NotLeader
            ) {
                return Ok(Outcome::NotLeader);
            }
        }
        Ok(Outcome::Continue)
    }

    /// Feeds one rollout what changed, and writes what it decided.
    async fn drive_one(
        &mut self,
        row: LiveRollout,
        gateways: &[GatewayState],
        now: i64,
        started: Instant,
        epoch: i64,
    ) -> Outcome {
        let key = row.key();
        let machine_now = machine_ms(now);
        let (mut entry, phase_before, weights_before) = match self.entries.remove(&row.id) {
            Some(entry) if entry.row_version == row.row_version => {
                let phase = entry.rollout.phase().clone();
                let weights = weights_of(&entry.rollout);
                (entry, phase, weights)
            }
            _ => match self.build(&row, &key, gateways, now).await {
                Ok(entry) => (entry, row.phase.clone(), row.weights.clone()),
                Err(e) => {
                    tracing::warn!(app = %key, rollout = row.id, error = %e, "rollouts: loading a rollout failed; retrying at the next tick");
                    return Outcome::Continue;
                }
            },
        };

        let mut transitions: Vec<Transition> = Vec::new();
        let consumed = row.pending_action.clone();
        if let Some(action) = &consumed {
            match action_input(action) {
                Some(input) => transitions.extend(entry.rollout.handle(machine_now, input)),
                None => {
                    tracing::warn!(app = %key, action = %action, "rollouts: an unknown action is dropped")
                }
            }
        }
        feed_gateways(&mut entry, &key, gateways, now, &mut transitions);
        let interval = as_i64(entry.rollout.policy().analysis_interval_ms);
        let analysis_due = now.saturating_sub(entry.last_analysis_ms) >= interval;
        if analysis_due {
            entry.last_analysis_ms = now;
            match self.state.store.version_reports(&key).await {
                Ok(reports) => feed_windows(&mut entry, reports, machine_now, &mut transitions),
                Err(e) => {
                    tracing::warn!(app = %key, error = %e, "rollouts: reading the version reports failed; this window is skipped")
                }
            }
        }
        transitions.extend(entry.rollout.handle(machine_now, Input::Tick));

        let phase_after = entry.rollout.phase().clone();
        let weights_after = weights_of(&entry.rollout);
        let step_entered =
            phase_after.step().is_some() && phase_after.step() != phase_before.step();
        let ended = phase_after.is_terminal();
        let publish =
            entry.needs_publish || weights_after != weights_before || step_entered || ended;
        let analysis_json = if analysis_due || publish || !transitions.is_empty() {
            serde_json::to_string(&analysis_of(&entry.rollout, &key, gateways, now))
                .unwrap_or_else(|_| "{}".into())
        } else {
            entry.analysis_json.clone()
        };
        let save = publish
            || !transitions.is_empty()
            || consumed.is_some()
            || analysis_json != entry.analysis_json;
        if !save {
            self.entries.insert(row.id, entry);
            return Outcome::Continue;
        }

        let mut published = row.published.clone();
        for step in 0..entry.rollout.policy().steps.len() {
            if let Some(revision) = entry.rollout.published_revision(step) {
                published.insert(step, revision);
            }
        }
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let write = RolloutWrite {
            id: row.id,
            app_id: row.app_id,
            tenant_id: row.tenant_id,
            app: row.app.clone(),
            canary: row.canary,
            expected_row_version: entry.row_version,
            phase: phase_after.clone(),
            history: entry.rollout.history().to_vec(),
            weights: weights_after,
            published,
            analysis_json: analysis_json.clone(),
            consumed_action: consumed,
            publish,
            activate_canary: phase_after == Phase::Succeeded,
            transitions: transitions.clone(),
            now_ms: now.saturating_add(elapsed),
        };
        match self
            .state
            .store
            .save_rollout((self.lease.holder(), epoch), &write)
            .await
        {
            Ok(Saved::Ok {
                revision,
                row_version,
            }) => {
                for t in &transitions {
                    tracing::info!(
                        app = %key,
                        canary = row.canary,
                        from = %t.from,
                        to = %t.to,
                        reason = %t.reason,
                        "rollout transition"
                    );
                }
                entry.row_version = row_version;
                entry.analysis_json = analysis_json;
                if let Some(revision) = revision {
                    entry.needs_publish = false;
                    if let Some(step) = phase_after.step() {
                        entry.rollout.published(step, revision);
                    }
                    self.state.notifier.bump(revision, Scope::Everywhere);
                }
                if !ended {
                    self.entries.insert(row.id, entry);
                }
                Outcome::Continue
            }
            Ok(Saved::Conflict) => {
                tracing::info!(app = %key, rollout = row.id, "rollouts: the rollout changed under the leader; reloading it");
                Outcome::Continue
            }
            Ok(Saved::NotLeader) => Outcome::NotLeader,
            Err(e) => {
                tracing::warn!(app = %key, rollout = row.id, error = %e, "rollouts: writing a rollout failed; reloading it at the next tick");
                Outcome::Continue
            }
        }
    }

    /// The leader's entry for a rollout it has not seen (or whose row
    /// another writer changed): the state machine restored from the row,
    /// and the windows primed with the reports already stored.
    async fn build(
        &self,
        row: &LiveRollout,
        key: &str,
        gateways: &[GatewayState],
        now: i64,
    ) -> DbResult<Entry> {
        let machine_now = machine_ms(now);
        // Gateways known to be gone are left out; any other shows up with
        // its next contact.
        let members: BTreeMap<String, String> = gateways
            .iter()
            .filter(|g| !g.silent && row.placed.contains_key(&g.pop))
            .map(|g| (gateway_name(g.id), g.pop.clone()))
            .collect();
        let mut rollout = Rollout::new(
            key.to_owned(),
            row.stable,
            row.canary,
            row.policy.clone(),
            row.placed.clone(),
            members,
            machine_now,
        );
        let mut needs_publish = false;
        if row.phase != Phase::Pending {
            rollout.restore(row.phase.clone(), row.history.clone(), machine_now);
            if let Some(step) = rollout.current_step() {
                match row.published.get(&step) {
                    Some(revision) => rollout.published(step, *revision),
                    None => needs_publish = true,
                }
            }
        }
        let mut windows = Windows::default();
        for (gateway_id, _pop, boot, version, cumulative) in
            self.state.store.version_reports(key).await?
        {
            if version == row.stable || version == row.canary {
                windows.observe(&gateway_name(gateway_id), &boot, version, &cumulative);
            }
        }
        Ok(Entry {
            rollout,
            row_version: row.row_version,
            windows,
            fed: HashMap::new(),
            last_analysis_ms: now,
            analysis_json: row.analysis_json.clone(),
            needs_publish,
        })
    }
}

/// Feeds the ACK or NACK of every gateway of a placed PoP heard from since
/// it was last fed (and recently enough to count as alive): a NACK when
/// its last report refuses the canary, else an ACK of the revision it
/// applied, warm when it serves the canary.
fn feed_gateways(
    entry: &mut Entry,
    key: &str,
    gateways: &[GatewayState],
    now: i64,
    transitions: &mut Vec<Transition>,
) {
    let canary = entry.rollout.canary();
    let grace = as_i64(entry.rollout.policy().gateway_grace_ms);
    let machine_now = machine_ms(now);
    for g in gateways {
        if !entry.rollout.placed().contains_key(&g.pop) {
            continue;
        }
        let Some(seen) = g.last_seen_ms else {
            continue;
        };
        if entry.fed.get(&g.id).is_some_and(|fed| *fed >= seen) {
            continue;
        }
        entry.fed.insert(g.id, seen);
        // An old contact is no sign of life now.
        if now.saturating_sub(seen) >= grace {
            continue;
        }
        let gateway = gateway_name(g.id);
        let input = match g
            .failed_apps
            .iter()
            .find(|f| f.key == key && f.version == canary)
        {
            Some(failed) => Input::Nack {
                pop: g.pop.clone(),
                gateway,
                revision: g.applied_revision,
                reason: failed.error.clone(),
            },
            None => Input::Ack {
                pop: g.pop.clone(),
                gateway,
                revision: g.applied_revision,
                warm: g.apps.iter().any(|a| a.key == key && a.version == canary),
            },
        };
        transitions.extend(entry.rollout.handle(machine_now, input));
    }
}

/// Turns the stored cumulative reports into this window's requests of the
/// stable and canary versions, summed per PoP, and feeds each.
fn feed_windows(
    entry: &mut Entry,
    reports: Vec<(i64, String, String, u32, Counters)>,
    machine_now: u64,
    transitions: &mut Vec<Transition>,
) {
    let (stable, canary) = (entry.rollout.stable(), entry.rollout.canary());
    let mut sums: BTreeMap<(String, u32), Counters> = BTreeMap::new();
    for (gateway_id, pop, boot, version, cumulative) in reports {
        if version != stable && version != canary {
            continue;
        }
        let delta = entry
            .windows
            .observe(&gateway_name(gateway_id), &boot, version, &cumulative);
        sums.entry((pop, version)).or_default().add(&delta);
    }
    for ((pop, version), counters) in sums {
        if counters.requests == 0 {
            continue;
        }
        transitions.extend(entry.rollout.handle(
            machine_now,
            Input::Window {
                pop,
                version,
                counters,
            },
        ));
    }
}

/// The status figures: per placed PoP its weight and its gateways (ready:
/// ACKed the current step's revision with the canary warm; silent: not
/// heard from for the grace, or for the operator's silence), and the
/// current step's canary and baseline figures.
fn analysis_of(rollout: &Rollout, key: &str, gateways: &[GatewayState], now: i64) -> Analysis {
    let canary = rollout.canary();
    let step = rollout.current_step();
    let published = step.and_then(|step| rollout.published_revision(step));
    let silent: BTreeSet<String> = rollout
        .silent_gateways(machine_ms(now))
        .into_iter()
        .collect();
    let pops = rollout
        .placed()
        .keys()
        .map(|pop| {
            let mut progress = PopProgress {
                pop: pop.clone(),
                weight: rollout.weights(pop).percent(),
                ready: Vec::new(),
                waiting: Vec::new(),
                silent: Vec::new(),
            };
            for g in gateways.iter().filter(|g| &g.pop == pop) {
                let name = gateway_name(g.id);
                let ready = published.is_some_and(|revision| g.applied_revision >= revision)
                    && g.apps.iter().any(|a| a.key == key && a.version == canary)
                    && !g
                        .failed_apps
                        .iter()
                        .any(|f| f.key == key && f.version == canary);
                if g.silent || silent.contains(&format!("{pop}/{name}")) {
                    progress.silent.push(name);
                } else if ready {
                    progress.ready.push(name);
                } else if step.is_some() {
                    progress.waiting.push(name);
                }
            }
            progress
        })
        .collect();
    Analysis {
        pops,
        canary: figures(rollout.canary_counters()),
        stable: figures(rollout.baseline_counters()),
    }
}

/// The leader loop of this process: a tick every [`RolloutSettings::tick`]
/// until `shutdown`, then the lease is given up.
pub(crate) async fn run(state: AppState, settings: RolloutSettings, shutdown: CancellationToken) {
    let tick = settings.tick.max(MIN_TICK);
    let mut leader = Leader::new(state, settings, Lease::new());
    tracing::info!(holder = %leader.lease.holder(), "rollouts: the scheduler's leader loop started");
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        leader.tick(now_ms()).await;
    }
    leader.resign().await;
}
