//! Progressive rollouts: how a canary version reaches an app's PoPs, step by
//! step, and when it is rolled back.
//!
//! A [`Rollout`] is a pure, deterministic state machine. It does no I/O and
//! never reads a clock: every call that needs the time is given `now_ms` by
//! the caller (the control API's scheduler loop, or a test's simulated clock),
//! and the same inputs at the same times always give the same transitions.
//!
//! # Phases
//!
//! ```text
//! Pending ──▶ Progressing(0) ──▶ Progressing(1) ──▶ … ──▶ Succeeded
//!                  │  ▲                │  ▲
//!                  ▼  │                ▼  │
//!               Paused(0)           Paused(1)        (any live phase) ──▶ Aborted | Superseded
//! ```
//!
//! [`Phase::can_become`] states the legal transitions exactly; terminal
//! phases ([`Phase::Succeeded`], [`Phase::Aborted`], [`Phase::Superseded`])
//! never change.
//!
//! # Steps
//!
//! A [`Policy`] is a list of [`Step`]s: a PoP selector, the canary's weight at
//! those PoPs and a bake time. The step's PoPs are the app's placed PoPs its
//! selector matches (fixed when the rollout is created). A PoP's canary weight
//! ([`Rollout::weights`]) is the highest weight any step so far gave it (with
//! weights that only rise, as [`Policy::validate`] demands, that is the weight
//! of the latest step matching it): a PoP never goes back towards stable while
//! the rollout moves, so an affinity key that reached the canary stays there.
//!
//! A step advances when all of this holds at once:
//!
//! - the step's desired state was published ([`Rollout::published`]) and
//!   every *live* gateway of the step's PoPs has ACKed that revision (or a
//!   later one) with the canary warm, and at least one did. A gateway not
//!   seen (no ACK, NACK or [`Input::Seen`]) for [`Policy::gateway_grace_ms`]
//!   is not waited for, never counts as healthy, and is named in the
//!   transition's reason ("advanced without fra1/gw-2 (silent 75 s)");
//! - the step's bake time has passed since it started;
//! - the analysis ([`crate::analysis::analyze`]) of the windows received since
//!   the step started passes. The canary's figures are the sum of its windows
//!   at the step's PoPs; the baseline is the stable version at the same PoPs
//!   or, for a step giving 100 %, at the placed PoPs outside the step. A step
//!   giving 100 % to every placed PoP has no stable traffic to compare with:
//!   its baseline is the stable traffic of the step before it.
//!
//! An inconclusive analysis (too little traffic) never promotes: the step
//! waits, and if the analysis is still inconclusive
//! [`INCONCLUSIVE_INTERVALS`] analysis intervals after the step could
//! otherwise have advanced, the rollout pauses with the reason. A failed gate
//! aborts at once, within the [`Input::Window`] that showed it (also while
//! paused, since a paused canary still serves). A NACK of the current step's
//! revision aborts. A step not complete [`Policy::progress_deadline_ms`] after
//! it started aborts. A step whose selector matches none of the app's PoPs is
//! skipped.
//!
//! Operators act at once: [`Input::Promote`] moves to the next step (or
//! succeeds from the last) without the gates, [`Input::Pause`] and
//! [`Input::Resume`] stop and restart the step (its timers and its analysis
//! windows start again), [`Input::Abort`] rolls back.
//!
//! Reasons are written for people and number steps from 1 ("step 2 did not
//! complete within 30 min"), while [`Phase`] counts them from 0.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::analysis::{Counters, Gate, Gates, Verdict, analyze};
use crate::selector::Selector;
use crate::split::Weight;

/// The default time between two analysis windows (10 s).
pub const DEFAULT_ANALYSIS_INTERVAL_MS: u64 = 10_000;

/// The default time a step may take before the rollout is aborted (30 min).
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 30 * 60_000;

/// The default time after which a gateway that has not reported is no longer
/// waited for (60 s).
pub const DEFAULT_GATEWAY_GRACE_MS: u64 = 60_000;

/// The default bake time of a step (60 s).
pub const DEFAULT_BAKE_MS: u64 = 60_000;

/// The platform's default steps, in [`Policy::parse_steps`]' syntax: the
/// steps of [`Policy::default`].
pub const DEFAULT_STEPS: &str = "10%; 50%; 100%";

/// How many analysis intervals a step that could otherwise advance may stay
/// inconclusive before the rollout pauses.
pub const INCONCLUSIVE_INTERVALS: u64 = 3;

/// One step of a rollout policy.
///
/// Serialized as `{"pops": "tier=canary", "weight": 10, "bake_ms": 60000}`
/// (`bake_ms` defaults to [`DEFAULT_BAKE_MS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The PoPs the step gives the canary to (among the app's placed PoPs);
    /// [`Selector::default`] for every placed PoP.
    pub pops: Selector,
    /// The canary's share of the requests at those PoPs.
    pub weight: Weight,
    /// How long the step runs, at least, before it may advance.
    #[serde(default = "default_bake_ms")]
    pub bake_ms: u64,
}

/// How a canary reaches the PoPs: its steps, its health gates and its timers.
///
/// Serializable (an app's stored policy); every field but `steps` may be
/// left out and takes its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The steps, in order; the last gives every PoP 100 %.
    pub steps: Vec<Step>,
    /// The health gates every step must pass.
    #[serde(default)]
    pub gates: Gates,
    /// The time between two analysis windows (gateways report every
    /// interval); [`DEFAULT_ANALYSIS_INTERVAL_MS`] by default.
    #[serde(default = "default_analysis_interval_ms")]
    pub analysis_interval_ms: u64,
    /// How long a step may take, from its start, before the rollout is
    /// aborted; [`DEFAULT_PROGRESS_DEADLINE_MS`] by default.
    #[serde(default = "default_progress_deadline_ms")]
    pub progress_deadline_ms: u64,
    /// How long a gateway may stay silent before a step stops waiting for it;
    /// [`DEFAULT_GATEWAY_GRACE_MS`] by default.
    #[serde(default = "default_gateway_grace_ms")]
    pub gateway_grace_ms: u64,
}

fn default_bake_ms() -> u64 {
    DEFAULT_BAKE_MS
}

fn default_analysis_interval_ms() -> u64 {
    DEFAULT_ANALYSIS_INTERVAL_MS
}

fn default_progress_deadline_ms() -> u64 {
    DEFAULT_PROGRESS_DEADLINE_MS
}

fn default_gateway_grace_ms() -> u64 {
    DEFAULT_GATEWAY_GRACE_MS
}

/// Why a rollout policy, or its steps as written, cannot be used. Each message
/// says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy has no step.
    #[error(
        "a rollout policy needs at least one step; end the steps with `100%` (every PoP at 100 %)"
    )]
    NoSteps,
    /// The last step does not give every PoP 100 %.
    #[error(
        "the last step gives {weight} % at `{pops}`, but a rollout must end with every PoP at 100 %: \
         add a last step `100%`"
    )]
    LastStepNotEverywhere {
        /// The last step's selector.
        pops: String,
        /// The last step's weight.
        weight: u8,
    },
    /// A step gives the canary nothing.
    #[error("step {step} gives the canary 0 %: give it at least 1 % or remove the step")]
    ZeroWeight {
        /// The step, counted from 1.
        step: usize,
    },
    /// A step gives less than an earlier step at the same PoPs.
    #[error(
        "step {step} gives {weight} %, less than the {earlier_weight} % step {earlier} gave the same PoPs; \
         a canary's weight may only rise: give step {step} at least {earlier_weight} %"
    )]
    WeightDecreases {
        /// The step, counted from 1.
        step: usize,
        /// Its weight.
        weight: u8,
        /// The earlier step, counted from 1.
        earlier: usize,
        /// The earlier step's weight.
        earlier_weight: u8,
    },
    /// A step's bake time does not fit in the progress deadline.
    #[error(
        "step {step} bakes for {bake}, which leaves no time within the progress deadline of {deadline}: \
         raise the deadline or shorten the bake"
    )]
    BakeBeyondDeadline {
        /// The step, counted from 1.
        step: usize,
        /// Its bake time, for people.
        bake: String,
        /// The progress deadline, for people.
        deadline: String,
    },
    /// A timer of the policy is zero.
    #[error("the {what} must be longer than 0")]
    Zero {
        /// Which timer.
        what: &'static str,
    },
    /// A step of `--steps` does not parse.
    #[error(
        "step {step} (`{text}`): {why}; a step is `[pops=<key>:<value>,…] <n>%`, \
         as in `pops=tier:canary 100%; 10%; 50%; 100%`"
    )]
    BadStep {
        /// The step, counted from 1.
        step: usize,
        /// The step as written.
        text: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A weight from a percentage known to be valid (0 to 100).
fn weight(percent: u8) -> Weight {
    match Weight::new(percent.min(100)) {
        Ok(weight) => weight,
        Err(_) => unreachable!("every weight from 0 to 100 is valid"),
    }
}

impl Policy {
    /// A policy with `steps`, the default gates and the default timers.
    pub fn new(steps: Vec<Step>) -> Policy {
        Policy {
            steps,
            gates: Gates::default(),
            analysis_interval_ms: DEFAULT_ANALYSIS_INTERVAL_MS,
            progress_deadline_ms: DEFAULT_PROGRESS_DEADLINE_MS,
            gateway_grace_ms: DEFAULT_GATEWAY_GRACE_MS,
        }
    }

    /// Checks that the policy can be used: at least one step, every step
    /// gives the canary more than 0 %, weights never fall (a step gives at
    /// least what an earlier step with the same selector, or an earlier step
    /// at every PoP, gave), every bake fits in the progress deadline, the
    /// timers are not zero, and the last step gives every PoP (`*`) 100 %.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let Some(last) = self.steps.last() else {
            return Err(PolicyError::NoSteps);
        };
        for (what, value) in [
            ("analysis interval", self.analysis_interval_ms),
            ("progress deadline", self.progress_deadline_ms),
            ("gateway grace", self.gateway_grace_ms),
        ] {
            if value == 0 {
                return Err(PolicyError::Zero { what });
            }
        }
        for (index, step) in self.steps.iter().enumerate() {
            if step.weight.percent() == 0 {
                return Err(PolicyError::ZeroWeight { step: index + 1 });
            }
            if step.bake_ms >= self.progress_deadline_ms {
                return Err(PolicyError::BakeBeyondDeadline {
                    step: index + 1,
                    bake: human_ms(step.bake_ms),
                    deadline: human_ms(self.progress_deadline_ms),
                });
            }
            for (earlier_index, earlier) in self.steps[..index].iter().enumerate() {
                let same_pops = earlier.pops == step.pops || earlier.pops.is_everything();
                if same_pops && step.weight.percent() < earlier.weight.percent() {
                    return Err(PolicyError::WeightDecreases {
                        step: index + 1,
                        weight: step.weight.percent(),
                        earlier: earlier_index + 1,
                        earlier_weight: earlier.weight.percent(),
                    });
                }
            }
        }
        if !last.pops.is_everything() || last.weight.percent() != 100 {
            return Err(PolicyError::LastStepNotEverywhere {
                pops: last.pops.to_string(),
                weight: last.weight.percent(),
            });
        }
        Ok(())
    }

    /// Parses the CLI's `--steps`: steps separated by `;`, each
    /// `[pops=<selector>] <n>%`, every step baking for `bake_ms`.
    ///
    /// Inside a step the selector writes `key:value` where a selector
    /// ([`Selector::parse`]) writes `key=value` (`pops=tier:canary`,
    /// `pops=region:eu,tier!:canary`; `key=value` and `key!=value` are
    /// accepted too): every `:` is read as `=`, so label values cannot hold
    /// `:` here. A step without `pops=` applies to every PoP the app is
    /// placed at. `n` is a whole number from 0 to 100; a trailing `;` is
    /// allowed. Example: `pops=tier:canary 100%; 10%; 50%; 100%`.
    ///
    /// The steps are not validated as a policy: see [`Policy::validate`].
    pub fn parse_steps(s: &str, bake_ms: u64) -> Result<Vec<Step>, PolicyError> {
        if s.trim().is_empty() {
            return Err(PolicyError::NoSteps);
        }
        let mut parts: Vec<&str> = s.split(';').map(str::trim).collect();
        if parts.len() > 1 && parts.last() == Some(&"") {
            parts.pop();
        }
        let mut steps = Vec::with_capacity(parts.len());
        for (index, text) in parts.iter().enumerate() {
            match parse_step(text, bake_ms) {
                Ok(step) => steps.push(step),
                Err(why) => {
                    return Err(PolicyError::BadStep {
                        step: index + 1,
                        text: (*text).to_owned(),
                        why,
                    });
                }
            }
        }
        Ok(steps)
    }
}

impl Default for Policy {
    /// The platform's default policy: [`DEFAULT_STEPS`] (10 %, 50 %, 100 % at
    /// every PoP), each baking [`DEFAULT_BAKE_MS`], default gates and timers.
    fn default() -> Policy {
        let steps = [10u8, 50, 100]
            .into_iter()
            .map(|percent| Step {
                pops: Selector::default(),
                weight: weight(percent),
                bake_ms: DEFAULT_BAKE_MS,
            })
            .collect();
        Policy::new(steps)
    }
}

/// One step of `--steps`, trimmed; the error says what is wrong.
fn parse_step(text: &str, bake_ms: u64) -> Result<Step, String> {
    if text.is_empty() {
        return Err("the step is empty".to_owned());
    }
    let Some(body) = text.strip_suffix('%') else {
        return Err("a step ends with the canary's weight, like `10%`".to_owned());
    };
    let body = body.trim_end();
    let (head, number) = match body.rsplit_once(char::is_whitespace) {
        Some((head, number)) => (head.trim(), number),
        None => ("", body),
    };
    let percent = match number.parse::<u8>() {
        Ok(percent) if percent <= 100 => percent,
        _ => {
            return Err(format!(
                "`{number}%` is not a weight: write a whole number from 0 to 100 followed by `%`"
            ));
        }
    };
    let pops = if head.is_empty() {
        Selector::default()
    } else {
        let Some(selector) = head.strip_prefix("pops=") else {
            return Err(format!(
                "`{head}` is not `pops=<selector>` (write `pops=tier:canary 10%`, or only `10%` for every PoP)"
            ));
        };
        let selector = selector.trim();
        if selector.is_empty() {
            return Err("`pops=` needs a selector, like `pops=tier:canary`".to_owned());
        }
        match Selector::parse(&selector.replace(':', "=")) {
            Ok(parsed) => parsed,
            Err(error) => return Err(format!("bad PoP selector `{selector}`: {error}")),
        }
    };
    Ok(Step {
        pops,
        weight: weight(percent),
        bake_ms,
    })
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// Created, not started: the canary serves nowhere yet.
    Pending,
    /// Running a step (counted from 0).
    Progressing {
        /// The current step, counted from 0.
        step: usize,
    },
    /// Stopped at a step (counted from 0) by an operator or by an analysis
    /// that stayed inconclusive; the canary keeps its weights.
    Paused {
        /// The step, counted from 0.
        step: usize,
        /// Why, for people.
        reason: String,
    },
    /// The canary serves 100 % everywhere: it is the new stable version.
    Succeeded,
    /// Rolled back: the canary serves nowhere.
    Aborted {
        /// Why, for people.
        reason: String,
    },
    /// A newer deploy replaced this rollout: its canary serves nowhere.
    Superseded {
        /// The newer version.
        by: u32,
    },
}

impl Phase {
    /// Whether the phase never changes again.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Aborted { .. } | Phase::Superseded { .. }
        )
    }

    /// The step of [`Phase::Progressing`] or [`Phase::Paused`], counted from 0.
    pub fn step(&self) -> Option<usize> {
        match self {
            Phase::Progressing { step } | Phase::Paused { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// The phase's name: `pending`, `progressing`, `paused`, `succeeded`,
    /// `aborted` or `superseded` (as in its serialized form).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Progressing { .. } => "progressing",
            Phase::Paused { .. } => "paused",
            Phase::Succeeded => "succeeded",
            Phase::Aborted { .. } => "aborted",
            Phase::Superseded { .. } => "superseded",
        }
    }

    /// Whether a rollout with `steps` steps may go from `self` to `to`:
    ///
    /// - Pending → Progressing(0), Aborted, Superseded;
    /// - Progressing(i) → Progressing(i + 1), Paused(i), Succeeded (from the
    ///   last step), Aborted, Superseded;
    /// - Paused(i) → Progressing(i) (resume), Progressing(i + 1) or Succeeded
    ///   from the last step (promote), Aborted, Superseded;
    /// - nothing from a terminal phase.
    pub fn can_become(&self, to: &Phase, steps: usize) -> bool {
        match (self, to) {
            (Phase::Pending, Phase::Progressing { step }) => *step == 0 && steps > 0,
            (Phase::Progressing { step: from }, Phase::Progressing { step: next }) => {
                *next == *from + 1 && *next < steps
            }
            (Phase::Progressing { step: from }, Phase::Paused { step: next, .. }) => *next == *from,
            (Phase::Paused { step: from, .. }, Phase::Progressing { step: next }) => {
                (*next == *from || *next == *from + 1) && *next < steps
            }
            (Phase::Progressing { step } | Phase::Paused { step, .. }, Phase::Succeeded) => {
                *step + 1 == steps
            }
            (
                Phase::Pending | Phase::Progressing { .. } | Phase::Paused { .. },
                Phase::Aborted { .. } | Phase::Superseded { .. },
            ) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Pending => f.write_str("pending"),
            Phase::Progressing { step } => write!(f, "progressing (step {})", step + 1),
            Phase::Paused { step, reason } => write!(f, "paused at step {}: {reason}", step + 1),
            Phase::Succeeded => f.write_str("succeeded"),
            Phase::Aborted { reason } => write!(f, "aborted: {reason}"),
            Phase::Superseded { by } => write!(f, "superseded by version {by}"),
        }
    }
}

/// A change of phase, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
    /// When (the `now_ms` of the input that caused it).
    pub at_ms: u64,
    /// Why, for people.
    pub reason: String,
}

/// What a rollout is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time passed: check bake times, silences and deadlines. The first tick
    /// starts a pending rollout.
    Tick,
    /// A gateway applied a revision.
    Ack {
        /// The gateway's PoP.
        pop: String,
        /// The gateway.
        gateway: String,
        /// The revision it applied.
        revision: i64,
        /// Whether the canary's artifact is warm (compiled, ready to serve).
        warm: bool,
    },
    /// A gateway could not take the canary at a revision.
    Nack {
        /// The gateway's PoP.
        pop: String,
        /// The gateway.
        gateway: String,
        /// The revision it could not apply.
        revision: i64,
        /// Why, as the gateway says it.
        reason: String,
    },
    /// A gateway is alive (a report or a heartbeat).
    Seen {
        /// The gateway's PoP.
        pop: String,
        /// The gateway.
        gateway: String,
    },
    /// The requests of one version at one PoP during the latest analysis
    /// window (already the difference between cumulative reports).
    Window {
        /// The PoP.
        pop: String,
        /// The app's version.
        version: u32,
        /// The window's requests.
        counters: Counters,
    },
    /// The operator moves to the next step (or finishes) without the gates.
    Promote,
    /// The operator stops the rollout at its step.
    Pause,
    /// The operator restarts a paused step (its timers start again).
    Resume,
    /// The operator rolls the canary back.
    Abort,
    /// A newer deploy replaces this rollout.
    Supersede {
        /// The newer version.
        by: u32,
    },
}

/// What a rollout knows of one gateway.
#[derive(Clone, Debug)]
struct GatewayState {
    /// Its last ACK, NACK or heartbeat (or the rollout's creation).
    last_seen_ms: u64,
    /// The newest revision it ACKed with the canary warm.
    warm_revision: Option<i64>,
}

/// Where the gateways of a step stand.
struct AckStatus {
    /// The revision the step was published in.
    published: Option<i64>,
    /// Live gateways that ACKed it warm.
    warm: usize,
    /// Live gateways that did not yet, as `pop/gateway`.
    waiting: Vec<String>,
    /// Silent gateways, as `pop/gateway (silent 75 s)`.
    silent: Vec<String>,
}

impl AckStatus {
    /// Whether the step's gateways let it advance.
    fn ready(&self) -> bool {
        self.published.is_some() && self.waiting.is_empty() && self.warm > 0
    }

    /// Why they do not, for people.
    fn blocker(&self, canary: u32) -> String {
        let mut why = match self.published {
            None => "its desired state was not published".to_owned(),
            Some(revision) if !self.waiting.is_empty() => format!(
                "waiting for {} to ACK revision {revision} with version {canary} warm",
                self.waiting.join(", ")
            ),
            Some(revision) => {
                format!("no live gateway ACKed revision {revision} with version {canary} warm")
            }
        };
        if !self.silent.is_empty() {
            why.push_str(&format!("; silent: {}", self.silent.join(", ")));
        }
        why
    }
}

/// One app's rollout of a canary version over its stable version.
#[derive(Clone, Debug)]
pub struct Rollout {
    app: String,
    stable: u32,
    canary: u32,
    policy: Policy,
    /// The app's PoPs and their labels.
    placed: BTreeMap<String, BTreeMap<String, String>>,
    /// Per step: the placed PoPs its selector matches.
    step_pops: Vec<BTreeSet<String>>,
    /// Per step: the PoPs whose stable traffic is its baseline (empty: the
    /// previous step's baseline is carried).
    baseline_pops: Vec<BTreeSet<String>>,
    /// Per (pop, gateway).
    gateways: BTreeMap<(String, String), GatewayState>,
    /// Per step: the revision its desired state was published in.
    published: BTreeMap<usize, i64>,
    phase: Phase,
    /// The latest `now_ms` seen (time never goes back).
    now_ms: u64,
    /// When the current step started (or restarted).
    step_started_ms: u64,
    /// Since when the current step could advance but for its analysis.
    ready_since_ms: Option<u64>,
    /// The canary's windows at the step's PoPs since the step started.
    canary_sum: Counters,
    /// The stable version's windows at the step's baseline PoPs since it started.
    baseline_sum: Counters,
    /// The baseline of the last step that had one.
    carried_baseline: Counters,
    history: Vec<Transition>,
}

impl Rollout {
    /// A pending rollout of `canary` over `stable` for `app`.
    ///
    /// `placed` maps the app's PoPs to their labels (the steps' selectors are
    /// matched against them, once, here); `gateways` maps each gateway to its
    /// PoP (a gateway that shows up later in an input for a placed PoP is
    /// added then). Every gateway counts as seen at `now_ms`: leave out
    /// gateways known to be gone. The policy should have passed
    /// [`Policy::validate`]; a policy without steps aborts on the first tick.
    pub fn new(
        app: String,
        stable: u32,
        canary: u32,
        policy: Policy,
        placed: BTreeMap<String, BTreeMap<String, String>>,
        gateways: BTreeMap<String, String>,
        now_ms: u64,
    ) -> Rollout {
        let step_pops: Vec<BTreeSet<String>> = policy
            .steps
            .iter()
            .map(|step| {
                placed
                    .iter()
                    .filter(|(_, labels)| step.pops.matches(labels))
                    .map(|(pop, _)| pop.clone())
                    .collect()
            })
            .collect();
        let baseline_pops: Vec<BTreeSet<String>> = policy
            .steps
            .iter()
            .zip(&step_pops)
            .map(|(step, pops)| {
                if step.weight.percent() >= 100 {
                    placed
                        .keys()
                        .filter(|pop| !pops.contains(*pop))
                        .cloned()
                        .collect()
                } else {
                    pops.clone()
                }
            })
            .collect();
        let gateways = gateways
            .into_iter()
            .map(|(gateway, pop)| {
                (
                    (pop, gateway),
                    GatewayState {
                        last_seen_ms: now_ms,
                        warm_revision: None,
                    },
                )
            })
            .collect();
        Rollout {
            app,
            stable,
            canary,
            policy,
            placed,
            step_pops,
            baseline_pops,
            gateways,
            published: BTreeMap::new(),
            phase: Phase::Pending,
            now_ms,
            step_started_ms: now_ms,
            ready_since_ms: None,
            canary_sum: Counters::default(),
            baseline_sum: Counters::default(),
            carried_baseline: Counters::default(),
            history: Vec::new(),
        }
    }

    /// Takes up a rollout another scheduler left (a new leader): its phase
    /// and its history. The current step's timers and analysis windows start
    /// again at `now_ms`, and its gateways must ACK again: call
    /// [`Rollout::published`] for the current step. A step beyond the policy
    /// gives an aborted rollout.
    pub fn restore(&mut self, phase: Phase, history: Vec<Transition>, now_ms: u64) {
        let steps = self.policy.steps.len();
        self.phase = match phase {
            Phase::Progressing { step } | Phase::Paused { step, .. } if step >= steps => {
                Phase::Aborted {
                    reason: format!(
                        "restored at step {} of a policy with {steps} steps",
                        step + 1
                    ),
                }
            }
            other => other,
        };
        self.history = history;
        self.now_ms = self.now_ms.max(now_ms);
        self.enter_step(None, self.now_ms);
    }

    /// The app.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The stable version.
    pub fn stable(&self) -> u32 {
        self.stable
    }

    /// The canary version.
    pub fn canary(&self) -> u32 {
        self.canary
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The app's PoPs and their labels.
    pub fn placed(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.placed
    }

    /// The placed PoPs step `step` (from 0) applies to; `None` past the last step.
    pub fn step_pops(&self, step: usize) -> Option<&BTreeSet<String>> {
        self.step_pops.get(step)
    }

    /// The phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The current step (from 0) while progressing or paused.
    pub fn current_step(&self) -> Option<usize> {
        self.phase.step()
    }

    /// When the current step started (or was resumed).
    pub fn step_started_ms(&self) -> u64 {
        self.step_started_ms
    }

    /// Every transition so far, oldest first.
    pub fn history(&self) -> &[Transition] {
        &self.history
    }

    /// The canary's requests at the current step's PoPs since it started.
    pub fn canary_counters(&self) -> &Counters {
        &self.canary_sum
    }

    /// The baseline the current step's canary is compared with: the stable
    /// version's requests since the step started (or the previous step's,
    /// for a step at 100 % everywhere).
    pub fn baseline_counters(&self) -> &Counters {
        match self.phase.step() {
            Some(step) if self.carries_baseline(step) => &self.carried_baseline,
            _ => &self.baseline_sum,
        }
    }

    /// Records that step `step`'s desired state (from 0) was published in
    /// `revision`: from now on, ACKs of that revision or a later one count
    /// for the step (none counts before). Call it after publishing each
    /// step's desired state; a later call for the same step replaces the
    /// revision.
    pub fn published(&mut self, step: usize, revision: i64) {
        self.published.insert(step, revision);
    }

    /// The revision step `step` was published in.
    pub fn published_revision(&self, step: usize) -> Option<i64> {
        self.published.get(&step).copied()
    }

    /// The canary's weight at `pop` now: the highest weight any step up to
    /// the current one gave it (0 if none matched it); 0 everywhere while
    /// pending, aborted or superseded; 100 at every placed PoP once
    /// succeeded; always 0 at a PoP the app is not placed at. The stable
    /// version gets the rest ([`Weight::stable_percent`]).
    pub fn weights(&self, pop: &str) -> Weight {
        if !self.placed.contains_key(pop) {
            return weight(0);
        }
        match &self.phase {
            Phase::Pending | Phase::Aborted { .. } | Phase::Superseded { .. } => weight(0),
            Phase::Succeeded => weight(100),
            Phase::Progressing { step } | Phase::Paused { step, .. } => {
                let percent = self
                    .policy
                    .steps
                    .iter()
                    .zip(&self.step_pops)
                    .take(*step + 1)
                    .filter(|(_, pops)| pops.contains(pop))
                    .map(|(step, _)| step.weight.percent())
                    .max()
                    .unwrap_or(0);
                weight(percent)
            }
        }
    }

    /// [`Rollout::weights`] at every placed PoP.
    pub fn all_weights(&self) -> BTreeMap<String, Weight> {
        self.placed
            .keys()
            .map(|pop| (pop.clone(), self.weights(pop)))
            .collect()
    }

    /// Whether the stable version must stay deployed (and warm): always,
    /// unless the rollout succeeded. The stable version is never removed
    /// while a canary is live.
    pub fn stable_live(&self) -> bool {
        !matches!(self.phase, Phase::Succeeded)
    }

    /// The gateways at placed PoPs silent for the grace or longer at
    /// `now_ms`, as `pop/gateway`.
    pub fn silent_gateways(&self, now_ms: u64) -> Vec<String> {
        self.gateways
            .iter()
            .filter(|((pop, _), state)| {
                self.placed.contains_key(pop)
                    && now_ms.saturating_sub(state.last_seen_ms) >= self.policy.gateway_grace_ms
            })
            .map(|((pop, gateway), _)| format!("{pop}/{gateway}"))
            .collect()
    }

    /// Feeds one input at `now_ms` and returns the transitions it caused, in
    /// order (often none). Time never goes back: an earlier `now_ms` than
    /// one already seen counts as that one. A terminal rollout ignores
    /// everything; operator actions that do not apply (resume while
    /// progressing, pause while paused, promote while pending) do nothing.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Transition> {
        let now = now_ms.max(self.now_ms);
        self.now_ms = now;
        let mut out = Vec::new();
        if self.phase.is_terminal() {
            return out;
        }
        match input {
            Input::Tick => {
                if self.phase == Phase::Pending {
                    self.start(now, &mut out);
                }
            }
            Input::Seen { pop, gateway } => {
                self.touch(pop, gateway, now);
            }
            Input::Ack {
                pop,
                gateway,
                revision,
                warm,
            } => {
                if let Some(state) = self.touch(pop, gateway, now)
                    && warm
                    && state.warm_revision.is_none_or(|known| known < revision)
                {
                    state.warm_revision = Some(revision);
                }
            }
            Input::Nack {
                pop,
                gateway,
                revision,
                reason,
            } => {
                let placed = self.placed.contains_key(&pop);
                let current = match &self.phase {
                    Phase::Pending => self.published.get(&0).copied(),
                    phase => phase
                        .step()
                        .and_then(|step| self.published.get(&step).copied()),
                };
                if placed && current.is_some_and(|published| revision >= published) {
                    let reason = format!(
                        "{pop}/{gateway} could not take version {}: {reason}",
                        self.canary
                    );
                    self.touch(pop, gateway, now);
                    self.abort(now, reason, &mut out);
                } else {
                    self.touch(pop, gateway, now);
                }
            }
            Input::Window {
                pop,
                version,
                counters,
            } => {
                if let Some(step) = self.phase.step() {
                    self.record_window(step, &pop, version, &counters);
                    if let Verdict::Fail { gate, detail } = self.verdict(step) {
                        self.abort(now, gate_reason(gate, &detail), &mut out);
                    }
                }
            }
            Input::Promote => {
                if let Some(step) = self.phase.step() {
                    self.advance(step, now, "promoted by the operator".to_owned(), &mut out);
                }
            }
            Input::Pause => {
                if let Phase::Progressing { step } = self.phase {
                    let reason = "paused by the operator".to_owned();
                    self.go(
                        now,
                        Phase::Paused {
                            step,
                            reason: reason.clone(),
                        },
                        reason,
                        &mut out,
                    );
                }
            }
            Input::Resume => {
                if let Phase::Paused { step, .. } = self.phase {
                    self.go(
                        now,
                        Phase::Progressing { step },
                        "resumed by the operator".to_owned(),
                        &mut out,
                    );
                }
            }
            Input::Abort => self.abort(now, "aborted by the operator".to_owned(), &mut out),
            Input::Supersede { by } => {
                self.go(
                    now,
                    Phase::Superseded { by },
                    format!("superseded by version {by}"),
                    &mut out,
                );
            }
        }
        if matches!(self.phase, Phase::Progressing { .. }) {
            self.evaluate(now, &mut out);
        }
        out
    }

    /// Pending → Progressing(0) (or Aborted without steps).
    fn start(&mut self, now: u64, out: &mut Vec<Transition>) {
        let steps = self.policy.steps.len();
        if steps == 0 {
            self.abort(now, "the rollout policy has no steps".to_owned(), out);
            return;
        }
        let reason = format!(
            "rollout of version {} over version {} started ({} step{})",
            self.canary,
            self.stable,
            steps,
            if steps == 1 { "" } else { "s" }
        );
        self.go(now, Phase::Progressing { step: 0 }, reason, out);
    }

    /// Marks a gateway of a placed PoP alive at `now` (adding it if new) and
    /// returns its state; `None` for a PoP the app is not placed at.
    fn touch(&mut self, pop: String, gateway: String, now: u64) -> Option<&mut GatewayState> {
        if !self.placed.contains_key(&pop) {
            return None;
        }
        let state = self.gateways.entry((pop, gateway)).or_insert(GatewayState {
            last_seen_ms: now,
            warm_revision: None,
        });
        state.last_seen_ms = state.last_seen_ms.max(now);
        Some(state)
    }

    /// Adds a window to the current step's sums when it is the canary at the
    /// step's PoPs or the stable version at its baseline PoPs.
    fn record_window(&mut self, step: usize, pop: &str, version: u32, counters: &Counters) {
        if version == self.canary
            && self
                .step_pops
                .get(step)
                .is_some_and(|pops| pops.contains(pop))
        {
            self.canary_sum.add(counters);
        }
        if version == self.stable
            && self
                .baseline_pops
                .get(step)
                .is_some_and(|pops| pops.contains(pop))
        {
            self.baseline_sum.add(counters);
        }
    }

    /// Whether step `step` has no baseline PoPs and uses the carried baseline.
    fn carries_baseline(&self, step: usize) -> bool {
        self.baseline_pops
            .get(step)
            .is_none_or(|pops| pops.is_empty())
    }

    /// The analysis of the current step's windows.
    fn verdict(&self, step: usize) -> Verdict {
        let baseline = if self.carries_baseline(step) {
            &self.carried_baseline
        } else {
            &self.baseline_sum
        };
        let where_ = match self.step_pops.get(step) {
            Some(pops) => pops
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        };
        analyze(&self.canary_sum, baseline, &self.policy.gates, &where_)
    }

    /// Where the gateways of step `step` stand at `now`.
    fn ack_status(&self, step: usize, now: u64) -> AckStatus {
        let published = self.published.get(&step).copied();
        let mut status = AckStatus {
            published,
            warm: 0,
            waiting: Vec::new(),
            silent: Vec::new(),
        };
        let Some(pops) = self.step_pops.get(step) else {
            return status;
        };
        for ((pop, gateway), state) in &self.gateways {
            if !pops.contains(pop) {
                continue;
            }
            let silence = now.saturating_sub(state.last_seen_ms);
            if silence >= self.policy.gateway_grace_ms {
                status
                    .silent
                    .push(format!("{pop}/{gateway} (silent {})", human_ms(silence)));
            } else if published
                .is_some_and(|revision| state.warm_revision.is_some_and(|warm| warm >= revision))
            {
                status.warm += 1;
            } else {
                status.waiting.push(format!("{pop}/{gateway}"));
            }
        }
        status
    }

    /// Advances, pauses or aborts the current step if its time has come.
    fn evaluate(&mut self, now: u64, out: &mut Vec<Transition>) {
        // Each pass moves to the next step or returns: at most one pass per
        // step, and one more.
        for _ in 0..=self.policy.steps.len() {
            let Phase::Progressing { step } = self.phase else {
                return;
            };
            let Some(bake_ms) = self.policy.steps.get(step).map(|s| s.bake_ms) else {
                return;
            };
            if self.step_pops.get(step).is_none_or(|pops| pops.is_empty()) {
                let reason = format!("step {} matches none of the app's PoPs: skipped", step + 1);
                self.advance(step, now, reason, out);
                continue;
            }
            let acks = self.ack_status(step, now);
            let elapsed = now.saturating_sub(self.step_started_ms);
            let stalled;
            if acks.ready() && elapsed >= bake_ms {
                let since = *self.ready_since_ms.get_or_insert(now);
                match self.verdict(step) {
                    Verdict::Pass => {
                        let mut reason = format!(
                            "step {} passed its gates: {} warm, baked {}, analysis passed",
                            step + 1,
                            count(acks.warm, "gateway"),
                            human_ms(bake_ms)
                        );
                        if !acks.silent.is_empty() {
                            reason.push_str(&format!(
                                "; advanced without {}",
                                acks.silent.join(", ")
                            ));
                        }
                        self.advance(step, now, reason, out);
                        continue;
                    }
                    Verdict::Fail { gate, detail } => {
                        self.abort(now, gate_reason(gate, &detail), out);
                        return;
                    }
                    Verdict::Inconclusive(why) => {
                        let waited = now.saturating_sub(since);
                        let limit =
                            INCONCLUSIVE_INTERVALS.saturating_mul(self.policy.analysis_interval_ms);
                        if waited >= limit {
                            let reason = format!(
                                "step {} stayed inconclusive {} after it could have advanced: {why} \
                                 (resume to keep waiting, promote to skip the gates)",
                                step + 1,
                                human_ms(waited)
                            );
                            self.go(
                                now,
                                Phase::Paused {
                                    step,
                                    reason: reason.clone(),
                                },
                                reason,
                                out,
                            );
                            return;
                        }
                        stalled = format!("analysis inconclusive: {why}");
                    }
                }
            } else {
                self.ready_since_ms = None;
                stalled = if acks.ready() {
                    "still baking".to_owned()
                } else {
                    acks.blocker(self.canary)
                };
            }
            if elapsed >= self.policy.progress_deadline_ms {
                let reason = format!(
                    "step {} did not complete within {} ({stalled})",
                    step + 1,
                    human_ms(self.policy.progress_deadline_ms)
                );
                self.abort(now, reason, out);
            }
            return;
        }
    }

    /// From step `step`: to the next step, or Succeeded from the last.
    fn advance(&mut self, step: usize, now: u64, reason: String, out: &mut Vec<Transition>) {
        let next = if step + 1 < self.policy.steps.len() {
            Phase::Progressing { step: step + 1 }
        } else {
            Phase::Succeeded
        };
        self.go(now, next, reason, out);
    }

    /// To Aborted, with `reason`.
    fn abort(&mut self, now: u64, reason: String, out: &mut Vec<Transition>) {
        self.go(
            now,
            Phase::Aborted {
                reason: reason.clone(),
            },
            reason,
            out,
        );
    }

    /// Changes phase, restarting the step when entering Progressing, and
    /// records the transition.
    fn go(&mut self, now: u64, to: Phase, reason: String, out: &mut Vec<Transition>) {
        debug_assert!(
            self.phase.can_become(&to, self.policy.steps.len()),
            "illegal transition {:?} -> {:?}",
            self.phase,
            to
        );
        if matches!(to, Phase::Progressing { .. }) {
            let leaving = self.phase.step();
            self.enter_step(leaving, now);
        }
        let from = std::mem::replace(&mut self.phase, to.clone());
        let transition = Transition {
            from,
            to,
            at_ms: now,
            reason,
        };
        self.history.push(transition.clone());
        out.push(transition);
    }

    /// Starts (or restarts) a step at `now`: its timers and its analysis
    /// windows start again; the step left keeps its baseline for a later
    /// step without one.
    fn enter_step(&mut self, leaving: Option<usize>, now: u64) {
        if let Some(left) = leaving
            && !self.carries_baseline(left)
            && self.baseline_sum.requests > 0
        {
            self.carried_baseline = std::mem::take(&mut self.baseline_sum);
        }
        self.step_started_ms = now;
        self.ready_since_ms = None;
        self.canary_sum = Counters::default();
        self.baseline_sum = Counters::default();
    }
}

/// A failed gate's verdict as a reason: "failure-rate gate: 5xx rate …".
fn gate_reason(gate: Gate, detail: &str) -> String {
    let name = match gate {
        Gate::FailureRate => "failure-rate",
        Gate::P99Latency => "p99-latency",
    };
    format!("{name} gate: {detail}")
}

/// "1 gateway", "3 gateways".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A duration for people: "30 min", "75 s", "250 ms".
fn human_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1_000 {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Counters, LATENCY_BUCKETS, Outcome};
    use proptest::prelude::*;

    const STABLE: u32 = 12;
    const CANARY: u32 = 13;
    const PLACED: [&str; 3] = ["fra1", "ams1", "iad1"];

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// fra1 (eu, canary tier), ams1 (eu), iad1 (us).
    fn placed() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut placed = BTreeMap::new();
        placed.insert(
            "fra1".to_owned(),
            labels(&[("region", "eu"), ("tier", "canary")]),
        );
        placed.insert("ams1".to_owned(), labels(&[("region", "eu")]));
        placed.insert("iad1".to_owned(), labels(&[("region", "us")]));
        placed
    }

    /// Two gateways at fra1, one at ams1 and one at iad1.
    fn gateways() -> Vec<(&'static str, &'static str)> {
        vec![
            ("gw-1", "fra1"),
            ("gw-2", "fra1"),
            ("gw-3", "ams1"),
            ("gw-4", "iad1"),
        ]
    }

    fn gateway_map() -> BTreeMap<String, String> {
        gateways()
            .into_iter()
            .map(|(gateway, pop)| (gateway.to_owned(), pop.to_owned()))
            .collect()
    }

    /// `ok` good requests and `errors` 5xx answers, all taking `latency_us`.
    fn traffic(ok: u64, errors: u64, latency_us: u64) -> Counters {
        let mut counters = Counters::default();
        for _ in 0..ok {
            counters.record(latency_us, Outcome::Ok);
        }
        for _ in 0..errors {
            counters.record(latency_us, Outcome::ServerError);
        }
        counters
    }

    fn healthy(n: u64) -> Counters {
        traffic(n, 0, 10_000)
    }

    fn spiking(n: u64) -> Counters {
        traffic(n / 2, n - n / 2, 10_000)
    }

    fn slow(n: u64) -> Counters {
        traffic(n, 0, 700_000)
    }

    fn policy(steps: &str, bake_ms: u64) -> Policy {
        let policy = Policy::new(Policy::parse_steps(steps, bake_ms).unwrap());
        policy.validate().unwrap();
        policy
    }

    /// A rollout under a simulated clock, with gateways that report every
    /// analysis interval.
    struct Sim {
        rollout: Rollout,
        now: u64,
        revision: i64,
        /// Gateways that never report.
        silent: Vec<&'static str>,
        /// Requests per PoP per interval, split by the weights.
        per_pop: u64,
    }

    impl Sim {
        fn new(policy: Policy) -> Sim {
            let rollout = Rollout::new(
                "acme/shop".to_owned(),
                STABLE,
                CANARY,
                policy,
                placed(),
                gateway_map(),
                1_000,
            );
            Sim {
                rollout,
                now: 1_000,
                revision: 100,
                silent: Vec::new(),
                per_pop: 1_000,
            }
        }

        fn send(&mut self, input: Input) -> Vec<Transition> {
            let out = self.rollout.handle(self.now, input);
            for transition in &out {
                assert!(
                    transition
                        .from
                        .can_become(&transition.to, self.rollout.policy().steps.len()),
                    "illegal {transition:?}"
                );
            }
            out
        }

        fn start(&mut self) {
            let out = self.send(Input::Tick);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].from, Phase::Pending);
            assert_eq!(out[0].to, Phase::Progressing { step: 0 });
        }

        fn phase(&self) -> Phase {
            self.rollout.phase().clone()
        }

        fn weight(&self, pop: &str) -> u8 {
            self.rollout.weights(pop).percent()
        }

        /// Publishes the current step and has every gateway but the silent
        /// ones and `except` ACK it with the canary warm; returns the
        /// transitions the ACKs caused.
        fn publish(&mut self, except: &[&str]) -> Vec<Transition> {
            let step = self.rollout.current_step().expect("a current step");
            self.revision += 1;
            self.rollout.published(step, self.revision);
            let mut out = Vec::new();
            for (gateway, pop) in gateways() {
                if except.contains(&gateway) || self.silent.contains(&gateway) {
                    continue;
                }
                out.extend(self.send(Input::Ack {
                    pop: pop.to_owned(),
                    gateway: gateway.to_owned(),
                    revision: self.revision,
                    warm: true,
                }));
            }
            out
        }

        /// One analysis interval: 10 s pass, the live gateways heartbeat,
        /// every PoP reports a window per version (the canary's shaped by
        /// `canary`), then a tick.
        fn interval(&mut self, canary: fn(u64) -> Counters) -> Vec<Transition> {
            self.now += DEFAULT_ANALYSIS_INTERVAL_MS;
            let mut out = Vec::new();
            for (gateway, pop) in gateways() {
                if self.silent.contains(&gateway) {
                    continue;
                }
                out.extend(self.send(Input::Seen {
                    pop: pop.to_owned(),
                    gateway: gateway.to_owned(),
                }));
            }
            for pop in PLACED {
                let canary_requests = self.per_pop * u64::from(self.weight(pop)) / 100;
                let stable_requests = self.per_pop - canary_requests;
                if canary_requests > 0 {
                    out.extend(self.send(Input::Window {
                        pop: pop.to_owned(),
                        version: CANARY,
                        counters: canary(canary_requests),
                    }));
                }
                if stable_requests > 0 {
                    out.extend(self.send(Input::Window {
                        pop: pop.to_owned(),
                        version: STABLE,
                        counters: healthy(stable_requests),
                    }));
                }
            }
            out.extend(self.send(Input::Tick));
            out
        }

        /// Healthy intervals until a transition, at most `max`; returns how
        /// many intervals passed and the transitions.
        fn until_transition(&mut self, max: usize) -> (usize, Vec<Transition>) {
            for n in 1..=max {
                let out = self.interval(healthy);
                if !out.is_empty() {
                    return (n, out);
                }
            }
            panic!(
                "no transition in {max} intervals: {:?}",
                self.rollout.phase()
            );
        }
    }

    #[test]
    fn a_healthy_canary_goes_through_its_steps_to_success() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        assert_eq!(sim.phase(), Phase::Pending);
        assert_eq!(sim.weight("fra1"), 0);
        // Nothing but a tick starts it.
        assert!(sim.send(Input::Promote).is_empty());
        assert!(sim.send(Input::Resume).is_empty());
        assert_eq!(sim.phase(), Phase::Pending);
        sim.start();
        assert_eq!(
            (sim.weight("fra1"), sim.weight("ams1"), sim.weight("iad1")),
            (100, 0, 0)
        );

        // Step 1: fra1 at 100 %, compared with stable at ams1 and iad1.
        assert!(sim.publish(&[]).is_empty(), "not baked yet");
        let started = sim.now;
        let (intervals, out) = sim.until_transition(20);
        assert_eq!(intervals, 6, "advances once the 60 s bake is over");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, Phase::Progressing { step: 1 });
        assert_eq!(out[0].at_ms, started + 60_000);
        assert!(
            out[0]
                .reason
                .starts_with("step 1 passed its gates: 2 gateways warm"),
            "{}",
            out[0].reason
        );
        // fra1 keeps 100 %: a PoP never goes back towards stable.
        assert_eq!(
            (sim.weight("fra1"), sim.weight("ams1"), sim.weight("iad1")),
            (100, 50, 50)
        );
        assert_eq!(sim.rollout.step_started_ms(), sim.now);

        // Step 2: 50 % everywhere.
        assert!(sim.publish(&[]).is_empty());
        let (intervals, out) = sim.until_transition(20);
        assert_eq!(intervals, 6);
        assert_eq!(out[0].to, Phase::Progressing { step: 2 });
        assert!(sim.rollout.stable_live());
        for pop in PLACED {
            assert_eq!(sim.weight(pop), 100);
            assert_eq!(sim.rollout.weights(pop).stable_percent(), 0);
        }

        // Step 3: 100 % everywhere, compared with step 2's stable traffic.
        sim.publish(&[]);
        assert!(sim.rollout.baseline_counters().requests > 0);
        let (intervals, out) = sim.until_transition(20);
        assert_eq!(intervals, 6);
        assert_eq!(out[0].to, Phase::Succeeded);
        assert!(!sim.rollout.stable_live());
        for pop in PLACED {
            assert_eq!(sim.weight(pop), 100);
        }
        assert_eq!(sim.weight("syd1"), 0, "not placed there");

        let phases: Vec<Phase> = sim.rollout.history().iter().map(|t| t.to.clone()).collect();
        assert_eq!(
            phases,
            vec![
                Phase::Progressing { step: 0 },
                Phase::Progressing { step: 1 },
                Phase::Progressing { step: 2 },
                Phase::Succeeded,
            ]
        );
        // Terminal: nothing changes it.
        assert!(sim.send(Input::Abort).is_empty());
        assert!(sim.interval(spiking).is_empty());
        assert_eq!(sim.phase(), Phase::Succeeded);
    }

    #[test]
    fn only_warm_acks_of_the_published_revision_count() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 100%", 60_000));
        sim.start();
        // Baked and healthy, but the step was never published: it waits.
        for _ in 0..7 {
            assert!(sim.interval(healthy).is_empty());
        }
        assert_eq!(sim.phase(), Phase::Progressing { step: 0 });
        sim.rollout.published(0, 101);
        assert_eq!(sim.rollout.published_revision(0), Some(101));
        let ack = |gateway: &str, revision: i64, warm: bool| Input::Ack {
            pop: "fra1".to_owned(),
            gateway: gateway.to_owned(),
            revision,
            warm,
        };
        // An older revision does not count, nor a cold ACK.
        assert!(sim.send(ack("gw-1", 100, true)).is_empty());
        assert!(sim.send(ack("gw-2", 100, true)).is_empty());
        assert!(sim.send(ack("gw-1", 101, false)).is_empty());
        assert!(
            sim.send(ack("gw-2", 102, true)).is_empty(),
            "gw-1 is still cold"
        );
        let out = sim.send(ack("gw-1", 101, true));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].to, Phase::Progressing { step: 1 });
    }

    #[test]
    fn an_error_spike_aborts_within_the_window_that_shows_it() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.publish(&[]);
        for _ in 0..2 {
            assert!(sim.interval(healthy).is_empty());
        }
        // The stable windows of this interval first, then the canary's.
        for pop in ["ams1", "iad1"] {
            assert!(
                sim.send(Input::Window {
                    pop: pop.to_owned(),
                    version: STABLE,
                    counters: healthy(1_000),
                })
                .is_empty()
            );
        }
        let out = sim.send(Input::Window {
            pop: "fra1".to_owned(),
            version: CANARY,
            counters: spiking(1_000),
        });
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].from, Phase::Progressing { step: 0 });
        assert!(
            out[0]
                .reason
                .starts_with("failure-rate gate: 5xx rate 16.7 % vs stable 0.0 %"),
            "{}",
            out[0].reason
        );
        assert!(out[0].reason.ends_with("at fra1"), "{}", out[0].reason);
        assert!(matches!(sim.phase(), Phase::Aborted { .. }));
        for pop in PLACED {
            assert_eq!(sim.weight(pop), 0);
            assert_eq!(sim.rollout.weights(pop).stable_percent(), 100);
        }
        assert!(sim.rollout.stable_live());
        assert!(sim.interval(healthy).is_empty());
    }

    #[test]
    fn an_error_spike_in_a_later_step_aborts_too() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.publish(&[]);
        sim.until_transition(20);
        sim.publish(&[]);
        let out = sim.interval(spiking);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].from, Phase::Progressing { step: 1 });
        assert!(
            out[0].reason.starts_with("failure-rate gate: "),
            "{}",
            out[0].reason
        );
        assert!(matches!(sim.phase(), Phase::Aborted { .. }));
        assert_eq!(sim.weight("fra1"), 0);
    }

    #[test]
    fn a_latency_regression_aborts() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.publish(&[]);
        let out = sim.interval(slow);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0]
                .reason
                .starts_with("p99-latency gate: p99 1,000.0 ms vs stable 10.0 ms"),
            "{}",
            out[0].reason
        );
        assert!(matches!(sim.phase(), Phase::Aborted { .. }));
        assert_eq!(sim.weight("fra1"), 0);
    }

    #[test]
    fn low_traffic_pauses_and_never_promotes() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.per_pop = 5;
        sim.start();
        sim.publish(&[]);
        let started = sim.now;
        let (_, out) = sim.until_transition(30);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].from, Phase::Progressing { step: 0 });
        assert!(matches!(out[0].to, Phase::Paused { step: 0, .. }));
        // The bake, then three analysis intervals.
        assert_eq!(
            out[0].at_ms,
            started + 60_000 + 3 * DEFAULT_ANALYSIS_INTERVAL_MS
        );
        assert!(out[0].reason.contains("inconclusive"), "{}", out[0].reason);
        assert!(
            out[0].reason.contains("canary requests at fra1"),
            "{}",
            out[0].reason
        );
        // Paused stays paused, even when traffic picks up.
        sim.per_pop = 1_000;
        for _ in 0..20 {
            assert!(sim.interval(healthy).is_empty());
        }
        assert!(matches!(sim.phase(), Phase::Paused { step: 0, .. }));
        assert_eq!(sim.weight("ams1"), 0);
        assert!(
            sim.rollout
                .history()
                .iter()
                .all(|t| t.to != Phase::Progressing { step: 1 })
        );
    }

    #[test]
    fn inconclusive_traffic_waits_before_pausing() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.per_pop = 5;
        sim.start();
        sim.publish(&[]);
        // Bake (6 intervals) and two more: still progressing, not promoted.
        for _ in 0..8 {
            assert!(sim.interval(healthy).is_empty());
        }
        assert_eq!(sim.phase(), Phase::Progressing { step: 0 });
    }

    #[test]
    fn a_newer_deploy_supersedes() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.publish(&[]);
        sim.interval(healthy);
        let out = sim.send(Input::Supersede { by: 14 });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, Phase::Superseded { by: 14 });
        assert_eq!(out[0].reason, "superseded by version 14");
        for pop in PLACED {
            assert_eq!(sim.weight(pop), 0);
        }
        assert!(sim.rollout.stable_live());
        for input in [Input::Promote, Input::Resume, Input::Abort, Input::Tick] {
            assert!(sim.send(input).is_empty());
        }
        assert_eq!(sim.phase(), Phase::Superseded { by: 14 });
    }

    #[test]
    fn a_pending_rollout_can_be_superseded_or_aborted() {
        let mut sim = Sim::new(policy("100%", 60_000));
        let out = sim.send(Input::Supersede { by: 14 });
        assert_eq!(out[0].from, Phase::Pending);
        assert_eq!(out[0].to, Phase::Superseded { by: 14 });

        let mut sim = Sim::new(policy("100%", 60_000));
        let out = sim.send(Input::Abort);
        assert_eq!(
            out[0].to,
            Phase::Aborted {
                reason: "aborted by the operator".to_owned()
            }
        );
    }

    #[test]
    fn a_nack_aborts() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.publish(&["gw-2"]);
        // A NACK of an older revision is not this step's.
        let stale = sim.send(Input::Nack {
            pop: "fra1".to_owned(),
            gateway: "gw-2".to_owned(),
            revision: sim.revision - 1,
            reason: "old".to_owned(),
        });
        assert!(stale.is_empty());
        // Nor one from a PoP the app is not placed at.
        let elsewhere = sim.send(Input::Nack {
            pop: "syd1".to_owned(),
            gateway: "gw-9".to_owned(),
            revision: sim.revision,
            reason: "elsewhere".to_owned(),
        });
        assert!(elsewhere.is_empty());
        let out = sim.send(Input::Nack {
            pop: "fra1".to_owned(),
            gateway: "gw-2".to_owned(),
            revision: sim.revision,
            reason: "the artifact does not compile for aarch64".to_owned(),
        });
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].to,
            Phase::Aborted {
                reason:
                    "fra1/gw-2 could not take version 13: the artifact does not compile for aarch64"
                        .to_owned()
            }
        );
        assert_eq!(sim.weight("fra1"), 0);
    }

    #[test]
    fn operators_promote_pause_resume_and_abort() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.publish(&[]);
        assert!(sim.send(Input::Resume).is_empty(), "not paused");

        let out = sim.send(Input::Pause);
        assert_eq!(
            out[0].to,
            Phase::Paused {
                step: 0,
                reason: "paused by the operator".to_owned()
            }
        );
        assert!(sim.send(Input::Pause).is_empty(), "already paused");
        // Paused past the bake with healthy traffic: stays paused.
        for _ in 0..10 {
            assert!(sim.interval(healthy).is_empty());
        }
        assert_eq!(sim.weight("fra1"), 100, "the canary keeps its weights");

        let out = sim.send(Input::Resume);
        assert_eq!(out[0].to, Phase::Progressing { step: 0 });
        assert_eq!(out[0].reason, "resumed by the operator");
        assert_eq!(sim.rollout.step_started_ms(), sim.now, "the step restarts");
        assert_eq!(sim.rollout.canary_counters().requests, 0);
        // The bake starts again: not done after two intervals.
        for _ in 0..2 {
            assert!(sim.interval(healthy).is_empty());
        }

        let out = sim.send(Input::Promote);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, Phase::Progressing { step: 1 });
        assert_eq!(out[0].reason, "promoted by the operator");
        assert_eq!(sim.weight("ams1"), 50);

        sim.send(Input::Pause);
        let out = sim.send(Input::Promote);
        assert_eq!(out[0].from.name(), "paused");
        assert_eq!(out[0].to, Phase::Progressing { step: 2 });

        let out = sim.send(Input::Abort);
        assert_eq!(
            out[0].to,
            Phase::Aborted {
                reason: "aborted by the operator".to_owned()
            }
        );
        for pop in PLACED {
            assert_eq!(sim.weight(pop), 0);
        }
    }

    #[test]
    fn promoting_the_last_step_succeeds() {
        let mut sim = Sim::new(policy("50%; 100%", 60_000));
        sim.start();
        sim.send(Input::Promote);
        sim.send(Input::Pause);
        let out = sim.send(Input::Promote);
        assert_eq!(out[0].from.step(), Some(1));
        assert_eq!(out[0].to, Phase::Succeeded);
        assert!(!sim.rollout.stable_live());
    }

    #[test]
    fn a_step_that_does_not_complete_in_time_aborts() {
        let mut sim = Sim::new(policy("10%; 100%", 60_000));
        sim.start();
        // gw-4 heartbeats but never ACKs.
        sim.publish(&["gw-4"]);
        let started = sim.now;
        let (intervals, out) = sim.until_transition(200);
        assert_eq!(intervals, 180, "30 min of 10 s intervals");
        assert_eq!(out[0].at_ms, started + DEFAULT_PROGRESS_DEADLINE_MS);
        let Phase::Aborted { reason } = &out[0].to else {
            panic!("{out:?}");
        };
        assert!(
            reason.starts_with("step 1 did not complete within 30 min"),
            "{reason}"
        );
        assert!(reason.contains("iad1/gw-4"), "{reason}");
    }

    #[test]
    fn a_silent_gateway_stops_blocking_after_the_grace_and_is_named() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 100%", 30_000));
        sim.silent = vec!["gw-2"];
        sim.start();
        sim.publish(&[]);
        // Baked after 3 intervals, but gw-2 is only silent for the grace
        // (60 s since it was last seen, at creation) after 6.
        for _ in 0..5 {
            assert!(sim.interval(healthy).is_empty());
        }
        assert!(sim.rollout.silent_gateways(sim.now).is_empty());
        let out = sim.interval(healthy);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].to, Phase::Progressing { step: 1 });
        assert!(
            out[0]
                .reason
                .contains("advanced without fra1/gw-2 (silent 1 min)"),
            "{}",
            out[0].reason
        );
        assert!(
            out[0].reason.contains("1 gateway warm"),
            "{}",
            out[0].reason
        );
        assert_eq!(
            sim.rollout.silent_gateways(sim.now),
            vec!["fra1/gw-2".to_owned()]
        );
    }

    #[test]
    fn silent_gateways_never_count_as_healthy() {
        // Baked only after the grace: by then both fra1 gateways are silent.
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 100%", 90_000));
        sim.silent = vec!["gw-1", "gw-2"];
        sim.start();
        // They ACKed once, then went silent.
        sim.silent.clear();
        sim.publish(&[]);
        sim.silent = vec!["gw-1", "gw-2"];
        for _ in 0..30 {
            assert!(sim.interval(healthy).is_empty());
        }
        assert_eq!(sim.phase(), Phase::Progressing { step: 0 });
    }

    #[test]
    fn a_step_matching_no_pop_is_skipped() {
        let mut sim = Sim::new(policy("pops=tier:edge 100%; 100%", 60_000));
        let out = sim.send(Input::Tick);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].from, Phase::Progressing { step: 0 });
        assert_eq!(out[1].to, Phase::Progressing { step: 1 });
        assert!(out[1].reason.contains("matches none"), "{}", out[1].reason);
        assert_eq!(sim.weight("fra1"), 100);
    }

    #[test]
    fn restoring_takes_up_the_phase_and_restarts_the_step() {
        let mut sim = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        sim.start();
        sim.send(Input::Promote);
        let phase = sim.phase();
        let history = sim.rollout.history().to_vec();

        let mut other = Sim::new(policy("pops=tier:canary 100%; 50%; 100%", 60_000));
        other.now = sim.now + 5_000;
        other
            .rollout
            .restore(phase.clone(), history.clone(), other.now);
        assert_eq!(other.phase(), phase);
        assert_eq!(other.rollout.history(), &history[..]);
        assert_eq!(other.rollout.step_started_ms(), other.now);
        assert_eq!(other.weight("ams1"), 50);
        other.publish(&[]);
        let (intervals, out) = other.until_transition(20);
        assert_eq!(intervals, 6);
        assert_eq!(out[0].to, Phase::Progressing { step: 2 });

        let mut broken = Sim::new(policy("100%", 60_000));
        broken
            .rollout
            .restore(Phase::Progressing { step: 4 }, Vec::new(), 2_000);
        assert!(matches!(broken.phase(), Phase::Aborted { .. }));
    }

    #[test]
    fn steps_parse() {
        let steps = Policy::parse_steps("pops=tier:canary 100%; 10%; 50%; 100%", 60_000).unwrap();
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[0].pops, Selector::parse("tier=canary").unwrap());
        assert_eq!(steps[0].weight.percent(), 100);
        assert!(steps[1].pops.is_everything());
        assert_eq!(steps[1].weight.percent(), 10);
        assert_eq!(steps[3].weight.percent(), 100);
        assert!(steps.iter().all(|step| step.bake_ms == 60_000));
        Policy::new(steps).validate().unwrap();

        let steps =
            Policy::parse_steps(" pops=region:eu,tier!=canary 20 % ; 100%;", 5_000).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[0].pops,
            Selector::parse("region=eu,tier!=canary").unwrap()
        );
        assert_eq!(steps[0].weight.percent(), 20);
        assert_eq!(steps[0].bake_ms, 5_000);

        let steps = Policy::parse_steps("pops=* 30%; pops=region:eu 100%", 0).unwrap();
        assert!(steps[0].pops.is_everything());

        assert_eq!(
            Policy::parse_steps(DEFAULT_STEPS, DEFAULT_BAKE_MS).unwrap(),
            Policy::default().steps
        );
        Policy::default().validate().unwrap();
    }

    #[test]
    fn bad_steps_say_what_is_wrong() {
        assert_eq!(Policy::parse_steps("  ", 0), Err(PolicyError::NoSteps));
        for (text, step, needle) in [
            ("10", 1, "ends with the canary's weight"),
            ("10%; 101%", 2, "not a weight"),
            ("ten%", 1, "not a weight"),
            ("10%;; 100%", 2, "empty"),
            ("pops= 10%", 1, "needs a selector"),
            ("tier:canary 10%", 1, "is not `pops=<selector>`"),
            ("pops=tier:Canary! 10%", 1, "bad PoP selector"),
        ] {
            match Policy::parse_steps(text, 0) {
                Err(PolicyError::BadStep { step: at, why, .. }) => {
                    assert_eq!(at, step, "{text}");
                    assert!(why.contains(needle), "{text}: {why}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let error = Policy::parse_steps("10", 0).unwrap_err().to_string();
        assert!(
            error.contains("pops=tier:canary 100%; 10%; 50%; 100%"),
            "{error}"
        );
    }

    #[test]
    fn policies_are_validated() {
        let check =
            |steps: &str| Policy::new(Policy::parse_steps(steps, 60_000).unwrap()).validate();
        assert_eq!(
            Policy::new(Vec::new()).validate(),
            Err(PolicyError::NoSteps)
        );
        assert!(matches!(
            check("10%; 50%"),
            Err(PolicyError::LastStepNotEverywhere { weight: 50, .. })
        ));
        assert!(matches!(
            check("10%; pops=region:eu 100%"),
            Err(PolicyError::LastStepNotEverywhere { weight: 100, .. })
        ));
        assert_eq!(
            check("50%; 10%; 100%"),
            Err(PolicyError::WeightDecreases {
                step: 2,
                weight: 10,
                earlier: 1,
                earlier_weight: 50
            })
        );
        assert!(matches!(
            check("pops=region:eu 50%; pops=region:eu 20%; 100%"),
            Err(PolicyError::WeightDecreases { step: 2, .. })
        ));
        assert_eq!(check("0%; 100%"), Err(PolicyError::ZeroWeight { step: 1 }));
        // A canary tier at 100 % first, then every PoP from 10 %: fine.
        assert_eq!(check("pops=tier:canary 100%; 10%; 50%; 100%"), Ok(()));

        let mut policy = Policy {
            progress_deadline_ms: 60_000,
            ..Policy::default()
        };
        assert!(matches!(
            policy.validate(),
            Err(PolicyError::BakeBeyondDeadline { step: 1, .. })
        ));
        policy.progress_deadline_ms = 0;
        assert_eq!(
            policy.validate(),
            Err(PolicyError::Zero {
                what: "progress deadline"
            })
        );
        let message = check("50%; 10%; 100%").unwrap_err().to_string();
        assert!(message.contains("give step 2 at least 50 %"), "{message}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ms(30 * 60_000), "30 min");
        assert_eq!(human_ms(75_400), "75 s");
        assert_eq!(human_ms(60_000), "1 min");
        assert_eq!(human_ms(250), "250 ms");
    }

    #[test]
    fn phases_display() {
        assert_eq!(
            Phase::Progressing { step: 1 }.to_string(),
            "progressing (step 2)"
        );
        assert_eq!(
            Phase::Superseded { by: 14 }.to_string(),
            "superseded by version 14"
        );
        assert!(Phase::Succeeded.is_terminal());
        assert!(
            !Phase::Paused {
                step: 0,
                reason: String::new()
            }
            .is_terminal()
        );
    }

    // ---- Property tests ------------------------------------------------

    /// Every PoP the tests know: the placed ones and syd1, which is not.
    const POPS: [&str; 4] = ["fra1", "ams1", "iad1", "syd1"];
    /// Gateways, with one at the unplaced syd1.
    const GATEWAYS: [(&str, &str); 5] = [
        ("gw-1", "fra1"),
        ("gw-2", "fra1"),
        ("gw-3", "ams1"),
        ("gw-4", "iad1"),
        ("gw-5", "syd1"),
    ];

    #[derive(Clone, Debug)]
    enum Op {
        Tick(u64),
        Ack {
            gateway: usize,
            behind: i64,
            warm: bool,
        },
        Nack {
            gateway: usize,
            behind: i64,
        },
        Seen(usize),
        Window {
            pop: usize,
            canary: bool,
            requests: u64,
            failures: u64,
            bucket: usize,
        },
        Publish,
        Promote,
        Pause,
        Resume,
        Abort,
        Supersede(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..15_000).prop_map(Op::Tick),
            4 => (0usize..GATEWAYS.len(), 0i64..3, any::<bool>())
                .prop_map(|(gateway, behind, warm)| Op::Ack { gateway, behind, warm }),
            1 => (0usize..GATEWAYS.len(), 0i64..3)
                .prop_map(|(gateway, behind)| Op::Nack { gateway, behind }),
            2 => (0usize..GATEWAYS.len()).prop_map(Op::Seen),
            6 => (0usize..POPS.len(), any::<bool>(), 0u64..400, 0u64..60, 0usize..LATENCY_BUCKETS)
                .prop_map(|(pop, canary, requests, failures, bucket)| Op::Window {
                    pop,
                    canary,
                    requests,
                    failures,
                    bucket,
                }),
            3 => Just(Op::Publish),
            3 => prop_oneof![Just(Op::Promote), Just(Op::Pause), Just(Op::Resume)],
            1 => Just(Op::Abort),
            1 => (14u32..20).prop_map(Op::Supersede),
        ]
    }

    /// The legal transitions, written apart from [`Phase::can_become`].
    fn legal(from: &Phase, to: &Phase, steps: usize) -> bool {
        use Phase::*;
        match from {
            Pending => {
                matches!(
                    to,
                    Progressing { step: 0 } | Aborted { .. } | Superseded { .. }
                )
            }
            Progressing { step: i } => match to {
                Progressing { step: j } => *j == i + 1 && *j < steps,
                Paused { step: j, .. } => j == i,
                Succeeded => i + 1 == steps,
                Aborted { .. } | Superseded { .. } => true,
                Pending => false,
            },
            Paused { step: i, .. } => match to {
                Progressing { step: j } => (j == i || *j == i + 1) && *j < steps,
                Succeeded => i + 1 == steps,
                Aborted { .. } | Superseded { .. } => true,
                Pending | Paused { .. } => false,
            },
            Succeeded | Aborted { .. } | Superseded { .. } => false,
        }
    }

    fn run(everywhere: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let steps = if everywhere {
            "30%; 60%; 100%"
        } else {
            "pops=tier:canary 100%; pops=region:eu 30%; 60%; 100%"
        };
        let mut policy = Policy::new(Policy::parse_steps(steps, 5_000).unwrap());
        policy.analysis_interval_ms = 2_000;
        policy.progress_deadline_ms = 120_000;
        policy.gateway_grace_ms = 20_000;
        policy.validate().unwrap();
        let steps = policy.steps.len();
        let gateways: BTreeMap<String, String> = GATEWAYS
            .iter()
            .map(|(gateway, pop)| ((*gateway).to_owned(), (*pop).to_owned()))
            .collect();
        let mut rollout = Rollout::new(
            "acme/shop".to_owned(),
            STABLE,
            CANARY,
            policy,
            placed(),
            gateways,
            0,
        );
        let mut now = 0u64;
        let mut revision = 0i64;
        let mut transitions = 0usize;
        let mut last_weights: BTreeMap<&str, u8> = POPS.iter().map(|pop| (*pop, 0)).collect();
        for op in ops {
            let before = rollout.phase().clone();
            let input = match op {
                Op::Tick(ms) => {
                    now += ms;
                    Some(Input::Tick)
                }
                Op::Ack {
                    gateway,
                    behind,
                    warm,
                } => Some(Input::Ack {
                    pop: GATEWAYS[gateway].1.to_owned(),
                    gateway: GATEWAYS[gateway].0.to_owned(),
                    revision: revision - behind,
                    warm,
                }),
                Op::Nack { gateway, behind } => Some(Input::Nack {
                    pop: GATEWAYS[gateway].1.to_owned(),
                    gateway: GATEWAYS[gateway].0.to_owned(),
                    revision: revision - behind,
                    reason: "no".to_owned(),
                }),
                Op::Seen(gateway) => Some(Input::Seen {
                    pop: GATEWAYS[gateway].1.to_owned(),
                    gateway: GATEWAYS[gateway].0.to_owned(),
                }),
                Op::Window {
                    pop,
                    canary,
                    requests,
                    failures,
                    bucket,
                } => {
                    let mut counters = Counters {
                        requests,
                        server_errors: failures.min(requests),
                        ..Counters::default()
                    };
                    counters.latency[bucket] = requests;
                    Some(Input::Window {
                        pop: POPS[pop].to_owned(),
                        version: if canary { CANARY } else { STABLE },
                        counters,
                    })
                }
                Op::Publish => {
                    if let Some(step) = rollout.current_step() {
                        revision += 1;
                        rollout.published(step, revision);
                    }
                    None
                }
                Op::Promote => Some(Input::Promote),
                Op::Pause => Some(Input::Pause),
                Op::Resume => Some(Input::Resume),
                Op::Abort => Some(Input::Abort),
                Op::Supersede(by) => Some(Input::Supersede { by }),
            };
            let out = match input {
                Some(input) => rollout.handle(now, input),
                None => Vec::new(),
            };
            transitions += out.len();

            // Only legal transitions, chained from the phase before to the
            // phase after, at the input's time.
            if before.is_terminal() {
                prop_assert!(out.is_empty(), "a terminal phase changed: {:?}", out);
            }
            let mut expected_from = before;
            for transition in &out {
                prop_assert_eq!(&transition.from, &expected_from);
                prop_assert!(
                    legal(&transition.from, &transition.to, steps),
                    "illegal transition {:?} -> {:?}",
                    transition.from,
                    transition.to
                );
                prop_assert!(transition.from.can_become(&transition.to, steps));
                prop_assert_eq!(transition.at_ms, now);
                expected_from = transition.to.clone();
            }
            prop_assert_eq!(&expected_from, rollout.phase());

            // Weights in [0, 100], the two summing to 100, never outside the
            // placement, never falling while the rollout is live.
            let phase = rollout.phase().clone();
            for pop in POPS {
                let weight = rollout.weights(pop);
                prop_assert!(weight.percent() <= 100);
                prop_assert_eq!(
                    u16::from(weight.percent()) + u16::from(weight.stable_percent()),
                    100
                );
                if !PLACED.contains(&pop) {
                    prop_assert_eq!(weight.percent(), 0, "{} is not placed", pop);
                    continue;
                }
                match &phase {
                    Phase::Aborted { .. } | Phase::Superseded { .. } | Phase::Pending => {
                        prop_assert_eq!(weight.percent(), 0)
                    }
                    Phase::Succeeded => prop_assert_eq!(weight.percent(), 100),
                    Phase::Progressing { .. } | Phase::Paused { .. } => {
                        let last = last_weights[pop];
                        prop_assert!(
                            weight.percent() >= last,
                            "{} fell from {} to {} %",
                            pop,
                            last,
                            weight.percent()
                        );
                    }
                }
                last_weights.insert(pop, weight.percent());
            }
            // The stable version stays while a canary may be live.
            prop_assert_eq!(rollout.stable_live(), phase != Phase::Succeeded);
        }
        prop_assert_eq!(rollout.history().len(), transitions);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random ticks, ACKs, NACKs, heartbeats, windows and operator
        /// actions keep every invariant.
        #[test]
        fn random_inputs_keep_the_invariants(
            everywhere in any::<bool>(),
            ops in prop::collection::vec(op(), 0..200)
        ) {
            run(everywhere, ops)?;
        }
    }
}
