//! Health analysis of a canary: window counters and the gates a rollout step
//! must pass.
//!
//! Gateways push, per app version, [`Counters`] cumulative since their boot
//! every analysis interval. [`Windows`] turns those reports into the requests
//! of one window: the difference from the previous report of the same
//! (gateway, boot), so a lost report only moves requests into the next window
//! and a repeated one adds nothing. [`analyze`] then compares the canary's
//! window with the baseline's (the stable version at the same PoPs over the
//! same window, or at the PoPs outside the step when the step gives its PoPs
//! 100 % canary) against the step's [`Gates`]: first the failure rate (5xx
//! answers, traps and limit kills), then the p99 latency. Too little traffic
//! gives [`Verdict::Inconclusive`]: the rollout pauses and is never promoted
//! on it.
//!
//! Everything here is plain arithmetic on its inputs: no I/O, no clock.

use std::collections::BTreeMap;

/// Upper bounds (µs) of the latency histogram's buckets; a last, implicit bucket holds the rest.
///
/// A bound is inclusive: a request of exactly 250 µs falls in the first bucket.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// The number of buckets of [`Counters::latency`]: one per bound in
/// [`LATENCY_BOUNDS_US`] and the overflow bucket.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// How many boots [`Windows`] remembers per (gateway, version), so that a late
/// report of a boot that has since been replaced is diffed, not counted again.
const BOOTS_KEPT: usize = 4;

/// Requests of one version: counts and a latency histogram (cumulative since a gateway's boot in a report; a difference in a window).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Requests answered (or failed), whatever the outcome.
    pub requests: u64,
    /// Requests answered with a 5xx status by the guest.
    pub server_errors: u64,
    /// Requests whose guest trapped.
    pub traps: u64,
    /// Requests whose guest was killed for exceeding a limit (CPU time, memory, wall time).
    pub limit_kills: u64,
    /// Requests per latency bucket: bucket `i < 16` holds latencies up to
    /// `LATENCY_BOUNDS_US[i]` (and above the previous bound), the last one the rest.
    pub latency: [u64; LATENCY_BUCKETS],
}

/// How one request ended, for [`Counters::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with a status below 500.
    Ok,
    /// Answered with a 5xx status.
    ServerError,
    /// The guest trapped.
    Trap,
    /// The guest was killed for exceeding a limit.
    LimitKill,
}

/// The index of the latency bucket holding `latency_us`.
fn bucket_of(latency_us: u64) -> usize {
    // The first bound >= latency_us; LATENCY_BOUNDS_US.len() (the overflow
    // bucket) when there is none.
    LATENCY_BOUNDS_US.partition_point(|&bound| bound < latency_us)
}

impl Counters {
    /// Counts one request that took `latency_us` and ended with `outcome`.
    pub fn record(&mut self, latency_us: u64, outcome: Outcome) {
        self.requests = self.requests.saturating_add(1);
        match outcome {
            Outcome::Ok => {}
            Outcome::ServerError => self.server_errors = self.server_errors.saturating_add(1),
            Outcome::Trap => self.traps = self.traps.saturating_add(1),
            Outcome::LimitKill => self.limit_kills = self.limit_kills.saturating_add(1),
        }
        let bucket = &mut self.latency[bucket_of(latency_us)];
        *bucket = bucket.saturating_add(1);
    }

    /// Adds `other` to `self`, field by field, saturating at `u64::MAX`.
    pub fn add(&mut self, other: &Counters) {
        self.requests = self.requests.saturating_add(other.requests);
        self.server_errors = self.server_errors.saturating_add(other.server_errors);
        self.traps = self.traps.saturating_add(other.traps);
        self.limit_kills = self.limit_kills.saturating_add(other.limit_kills);
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The failed requests: 5xx answers, traps and limit kills (saturating).
    pub fn failures(&self) -> u64 {
        self.server_errors
            .saturating_add(self.traps)
            .saturating_add(self.limit_kills)
    }

    /// The share of failed requests (see [`Counters::failures`]), from 0 to 1;
    /// `None` without requests.
    pub fn failure_rate(&self) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        Some(self.failures() as f64 / self.requests as f64)
    }

    /// The upper bound (µs) of the bucket holding the 99th percentile of the
    /// latency histogram (`u64::MAX` when it is the overflow bucket); `None`
    /// when the histogram is empty.
    pub fn p99_us(&self) -> Option<u64> {
        let total: u128 = self.latency.iter().map(|&n| u128::from(n)).sum();
        if total == 0 {
            return None;
        }
        // The rank of the 99th percentile, 1-based: ceil(0.99 * total).
        let rank = (total * 99).div_ceil(100);
        let mut seen: u128 = 0;
        for (index, &n) in self.latency.iter().enumerate() {
            seen += u128::from(n);
            if seen >= rank {
                return Some(LATENCY_BOUNDS_US.get(index).copied().unwrap_or(u64::MAX));
            }
        }
        // Unreachable: `seen` ends at `total` >= `rank`.
        Some(u64::MAX)
    }

    /// `self - earlier` if `self` could have followed `earlier` (every field >=), else None (a reset).
    pub fn since(&self, earlier: &Counters) -> Option<Counters> {
        let mut latency = [0u64; LATENCY_BUCKETS];
        for (index, slot) in latency.iter_mut().enumerate() {
            *slot = self.latency[index].checked_sub(earlier.latency[index])?;
        }
        Some(Counters {
            requests: self.requests.checked_sub(earlier.requests)?,
            server_errors: self.server_errors.checked_sub(earlier.server_errors)?,
            traps: self.traps.checked_sub(earlier.traps)?,
            limit_kills: self.limit_kills.checked_sub(earlier.limit_kills)?,
            latency,
        })
    }
}

/// The last report of one boot of a gateway, for one version.
#[derive(Debug)]
struct BootReport {
    boot: String,
    cumulative: Counters,
}

/// Turns cumulative reports into window deltas.
///
/// It keeps the last cumulative report per (gateway, version) for the
/// gateway's latest boot and a few boots before it. Version numbers are an
/// app's, so one `Windows` serves one app.
#[derive(Default, Debug)]
pub struct Windows {
    /// Per gateway, per version: the last report of each remembered boot,
    /// the latest boot first.
    last: BTreeMap<String, BTreeMap<u32, Vec<BootReport>>>,
}

impl Windows {
    /// The requests of `version` at `gateway` since its previous report: the difference from the last report of the same boot; a new boot (or counters that went backwards) starts from zero (the report itself is the delta); a repeated report gives an empty delta. Never double counts.
    ///
    /// A late report of a boot the gateway has since left is diffed against
    /// that boot's last report (an empty delta if it is not newer), never
    /// taken for a new boot.
    pub fn observe(
        &mut self,
        gateway: &str,
        boot: &str,
        version: u32,
        cumulative: &Counters,
    ) -> Counters {
        let boots = self
            .last
            .entry(gateway.to_owned())
            .or_default()
            .entry(version)
            .or_default();
        match boots.iter().position(|report| report.boot == boot) {
            Some(0) => {
                let latest = &mut boots[0];
                // Counters that went backwards within a boot were reset (the
                // version left the gateway and came back): they start from zero.
                let delta = cumulative
                    .since(&latest.cumulative)
                    .unwrap_or_else(|| cumulative.clone());
                latest.cumulative = cumulative.clone();
                delta
            }
            Some(index) => {
                // A late report of an earlier boot: only what it adds counts.
                let earlier = &mut boots[index];
                match cumulative.since(&earlier.cumulative) {
                    Some(delta) => {
                        earlier.cumulative = cumulative.clone();
                        delta
                    }
                    None => Counters::default(),
                }
            }
            None => {
                boots.insert(
                    0,
                    BootReport {
                        boot: boot.to_owned(),
                        cumulative: cumulative.clone(),
                    },
                );
                boots.truncate(BOOTS_KEPT);
                cumulative.clone()
            }
        }
    }

    /// Forget a gateway (it was removed).
    pub fn forget(&mut self, gateway: &str) {
        self.last.remove(gateway);
    }

    /// Forget a version at every gateway (it left the app's deployment).
    pub fn forget_version(&mut self, version: u32) {
        for versions in self.last.values_mut() {
            versions.remove(&version);
        }
        self.last.retain(|_, versions| !versions.is_empty());
    }
}

/// Health gates of a rollout step.
///
/// Missing fields take their default when deserialized.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Gates {
    /// Requests needed in the window, from the canary and from the baseline
    /// (default 100): below it the result is inconclusive.
    pub min_requests: u64,
    /// How far the canary's failure rate may exceed the baseline's, as a
    /// fraction (default 0.01: one percentage point).
    pub max_failure_rate_increase: f64,
    /// How many times the baseline's failure rate the canary's may be
    /// (default 2.0). A failure needs both this and
    /// [`Gates::max_failure_rate_increase`] exceeded.
    pub max_failure_ratio: f64,
    /// How many times the baseline's p99 latency the canary's may be
    /// (default 1.5).
    pub max_p99_ratio: f64,
    /// A canary p99 within the baseline's p99 plus this many µs never fails
    /// (default 5,000).
    pub p99_slack_us: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_requests: 100,
            max_failure_rate_increase: 0.01,
            max_failure_ratio: 2.0,
            max_p99_ratio: 1.5,
            p99_slack_us: 5_000,
        }
    }
}

/// A health gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Gate {
    /// The share of 5xx answers, traps and limit kills.
    FailureRate,
    /// The 99th percentile of the latency.
    P99Latency,
}

/// The outcome of [`analyze`].
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every gate passed.
    Pass,
    /// Too little traffic to tell; the reason, for people.
    Inconclusive(String),
    /// A gate failed.
    Fail {
        /// The gate that failed.
        gate: Gate,
        /// The figures, for people: "5xx rate 31.2 % vs stable 0.1 % over 412 requests at fra1, ams1".
        detail: String,
    },
}

/// Compares the canary's window with the baseline's (stable at the same PoPs, or outside the step). `where_` names the PoPs for the message ("fra1, ams1").
///
/// With fewer than [`Gates::min_requests`] canary requests the result is
/// inconclusive. With fewer baseline requests, the canary's failure rate is
/// judged against a rate of 0 (a canary that fails even so fails), and any
/// other result is inconclusive. Then the failure-rate gate, then the p99 gate
/// (skipped when either histogram is empty).
pub fn analyze(canary: &Counters, baseline: &Counters, gates: &Gates, where_: &str) -> Verdict {
    let needed = gates.min_requests.max(1);
    if canary.requests < needed {
        return Verdict::Inconclusive(format!(
            "only {} canary requests at {where_} ({} needed)",
            thousands(canary.requests),
            thousands(needed)
        ));
    }
    let canary_rate = canary.failure_rate().unwrap_or(0.0);
    let baseline_known = baseline.requests >= needed;
    let baseline_rate = if baseline_known {
        baseline.failure_rate().unwrap_or(0.0)
    } else {
        0.0
    };

    if canary_rate > baseline_rate + gates.max_failure_rate_increase
        && canary_rate > baseline_rate * gates.max_failure_ratio
    {
        let kinds = failure_kinds(canary, baseline);
        let detail = if baseline_known {
            format!(
                "{kinds} rate {} vs stable {} over {} requests at {where_}",
                percent(canary_rate),
                percent(baseline_rate),
                thousands(canary.requests)
            )
        } else {
            format!(
                "{kinds} rate {} over {} requests at {where_}, against 0.0 % for stable \
                 (only {} stable requests to compare with)",
                percent(canary_rate),
                thousands(canary.requests),
                thousands(baseline.requests)
            )
        };
        return Verdict::Fail {
            gate: Gate::FailureRate,
            detail,
        };
    }

    if !baseline_known {
        return Verdict::Inconclusive(format!(
            "{} canary requests at {where_} but only {} stable requests to compare with ({} needed)",
            thousands(canary.requests),
            thousands(baseline.requests),
            thousands(needed)
        ));
    }

    let slower = canary
        .p99_us()
        .zip(baseline.p99_us())
        .filter(|&(canary_p99, baseline_p99)| {
            canary_p99 > baseline_p99.saturating_add(gates.p99_slack_us)
                && canary_p99 as f64 > baseline_p99 as f64 * gates.max_p99_ratio
        });
    match slower {
        Some((canary_p99, baseline_p99)) => Verdict::Fail {
            gate: Gate::P99Latency,
            detail: format!(
                "p99 {} vs stable {} over {} requests at {where_}",
                millis(canary_p99),
                millis(baseline_p99),
                thousands(canary.requests)
            ),
        },
        None => Verdict::Pass,
    }
}

/// The kinds of failure seen in either window, for the message: "5xx",
/// "5xx and trap", "5xx, trap and limit-kill".
fn failure_kinds(canary: &Counters, baseline: &Counters) -> String {
    let mut kinds: Vec<&str> = Vec::new();
    if canary.server_errors > 0 || baseline.server_errors > 0 {
        kinds.push("5xx");
    }
    if canary.traps > 0 || baseline.traps > 0 {
        kinds.push("trap");
    }
    if canary.limit_kills > 0 || baseline.limit_kills > 0 {
        kinds.push("limit-kill");
    }
    if kinds.is_empty() {
        kinds = vec!["5xx", "trap", "limit-kill"];
    }
    match kinds.as_slice() {
        [] => String::new(),
        [only] => only.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `n` with commas between thousands: "9,120".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A number of tenths as "1,234.5".
fn tenths(n: u64) -> String {
    format!("{}.{}", thousands(n / 10), n % 10)
}

/// A rate (0 to 1) as a percentage with one decimal: "31.2 %".
fn percent(rate: f64) -> String {
    // `as` saturates, and turns NaN into 0.
    let n = (rate * 1_000.0).round() as u64;
    format!("{} %", tenths(n))
}

/// A latency in µs as milliseconds with one decimal: "840.0 ms"; the
/// overflow bucket as "> 30,000.0 ms".
fn millis(us: u64) -> String {
    if us == u64::MAX {
        let last = LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1];
        return format!("> {} ms", tenths(last.div_ceil(100)));
    }
    format!("{} ms", tenths(us.saturating_add(50) / 100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `ok` successful requests and `errors` 5xx answers, all taking `latency_us`.
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

    #[test]
    fn record_fills_counts_and_buckets() {
        let mut c = Counters::default();
        c.record(250, Outcome::Ok);
        c.record(251, Outcome::ServerError);
        c.record(0, Outcome::Trap);
        c.record(30_000_001, Outcome::LimitKill);
        c.record(u64::MAX, Outcome::Ok);
        assert_eq!(c.requests, 5);
        assert_eq!(c.server_errors, 1);
        assert_eq!(c.traps, 1);
        assert_eq!(c.limit_kills, 1);
        assert_eq!(c.failures(), 3);
        assert_eq!(c.latency[0], 2, "250 µs and 0 µs are in the first bucket");
        assert_eq!(c.latency[1], 1, "251 µs is in the second");
        assert_eq!(c.latency[LATENCY_BUCKETS - 1], 2, "the rest overflow");
        assert_eq!(c.latency.iter().sum::<u64>(), 5);
        assert_eq!(c.failure_rate(), Some(0.6));
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_holding_it() {
        assert_eq!(Counters::default().p99_us(), None);
        assert_eq!(Counters::default().failure_rate(), None);

        // 99 fast requests and one slow: the 99th is fast.
        let mut c = traffic(99, 0, 300);
        c.record(40_000, Outcome::Ok);
        assert_eq!(c.p99_us(), Some(500));

        // Two slow ones out of 100: the 99th is slow.
        let mut c = traffic(98, 0, 300);
        c.record(40_000, Outcome::Ok);
        c.record(40_000, Outcome::Ok);
        assert_eq!(c.p99_us(), Some(50_000));

        assert_eq!(traffic(1, 0, 0).p99_us(), Some(250));
        assert_eq!(traffic(1_000, 0, 100_000).p99_us(), Some(100_000));
        assert_eq!(traffic(3, 0, 31_000_000).p99_us(), Some(u64::MAX));
    }

    #[test]
    fn add_saturates() {
        let mut c = Counters {
            requests: u64::MAX - 1,
            server_errors: u64::MAX,
            traps: u64::MAX,
            ..Counters::default()
        };
        assert_eq!(c.failures(), u64::MAX);
        c.add(&traffic(5, 5, 1_000));
        assert_eq!(c.requests, u64::MAX);
        assert_eq!(c.server_errors, u64::MAX);
        assert_eq!(c.latency[2], 10);
    }

    #[test]
    fn since_subtracts_or_detects_a_reset() {
        let earlier = traffic(10, 2, 1_000);
        let mut later = earlier.clone();
        later.add(&traffic(5, 1, 40_000));
        assert_eq!(later.since(&earlier), Some(traffic(5, 1, 40_000)));
        assert_eq!(later.since(&later), Some(Counters::default()));
        assert_eq!(earlier.since(&later), None, "counters went backwards");

        // One bucket lower is enough to be a reset.
        let mut odd = later.clone();
        odd.latency[2] = 0;
        assert_eq!(odd.since(&earlier), None);
    }

    #[test]
    fn a_lost_report_moves_its_requests_into_the_next_window() {
        let mut windows = Windows::default();
        let first = traffic(10, 0, 1_000);
        let mut second = first.clone();
        second.add(&traffic(20, 1, 1_000));
        let mut third = second.clone();
        third.add(&traffic(30, 2, 1_000));

        assert_eq!(windows.observe("gw1", "b1", 3, &first), first);
        // `second` is lost.
        let delta = windows.observe("gw1", "b1", 3, &third);
        assert_eq!(delta, third.since(&first).unwrap());
        let mut sum = first.clone();
        sum.add(&delta);
        assert_eq!(sum, third);
    }

    #[test]
    fn a_repeated_report_adds_nothing() {
        let mut windows = Windows::default();
        let report = traffic(10, 1, 1_000);
        assert_eq!(windows.observe("gw1", "b1", 3, &report), report);
        assert_eq!(
            windows.observe("gw1", "b1", 3, &report),
            Counters::default()
        );
        assert_eq!(
            windows.observe("gw1", "b1", 3, &report),
            Counters::default()
        );
    }

    #[test]
    fn a_reboot_starts_from_zero() {
        let mut windows = Windows::default();
        windows.observe("gw1", "b1", 3, &traffic(50, 1, 1_000));
        let after = traffic(5, 0, 1_000);
        assert_eq!(windows.observe("gw1", "b2", 3, &after), after);

        // Counters that went backwards within a boot were reset too.
        let reset = traffic(2, 0, 1_000);
        assert_eq!(windows.observe("gw1", "b2", 3, &reset), reset);
    }

    #[test]
    fn a_late_report_of_an_earlier_boot_is_not_counted_twice() {
        let mut windows = Windows::default();
        let old = traffic(10, 0, 1_000);
        windows.observe("gw1", "b1", 3, &old);
        windows.observe("gw1", "b2", 3, &traffic(5, 0, 1_000));
        // The old boot's report again: nothing new.
        assert_eq!(windows.observe("gw1", "b1", 3, &old), Counters::default());
        // The old boot's last report, late: only what it adds.
        let mut older_last = old.clone();
        older_last.add(&traffic(2, 0, 1_000));
        assert_eq!(
            windows.observe("gw1", "b1", 3, &older_last),
            traffic(2, 0, 1_000)
        );
        // The new boot carries on from where it was.
        let mut newer = traffic(5, 0, 1_000);
        newer.add(&traffic(1, 0, 1_000));
        assert_eq!(
            windows.observe("gw1", "b2", 3, &newer),
            traffic(1, 0, 1_000)
        );
    }

    #[test]
    fn gateways_and_versions_are_apart_and_can_be_forgotten() {
        let mut windows = Windows::default();
        let report = traffic(10, 0, 1_000);
        assert_eq!(windows.observe("gw1", "b1", 3, &report), report);
        assert_eq!(windows.observe("gw2", "b1", 3, &report), report);
        assert_eq!(windows.observe("gw1", "b1", 4, &report), report);
        assert_eq!(
            windows.observe("gw1", "b1", 3, &report),
            Counters::default()
        );

        windows.forget("gw1");
        assert_eq!(windows.observe("gw1", "b1", 3, &report), report);
        assert_eq!(
            windows.observe("gw2", "b1", 3, &report),
            Counters::default()
        );

        windows.forget_version(3);
        assert_eq!(windows.observe("gw2", "b1", 3, &report), report);
    }

    fn outcome(n: u8) -> Outcome {
        match n % 4 {
            0 => Outcome::Ok,
            1 => Outcome::ServerError,
            2 => Outcome::Trap,
            _ => Outcome::LimitKill,
        }
    }

    proptest! {
        /// Snapshots of one gateway, monotone within a boot, with reboots,
        /// lost reports and repeated ones: the deltas add up to the last
        /// report seen of each boot.
        #[test]
        fn deltas_add_up_to_each_boots_last_report(
            steps in prop::collection::vec(
                (
                    0u8..6,
                    any::<bool>(),
                    prop::collection::vec((0u64..40_000_000, 0u8..4), 0..6),
                ),
                0..60,
            )
        ) {
            let mut windows = Windows::default();
            let mut boot = 0usize;
            let mut cumulative = Counters::default();
            let mut last_seen = vec![Counters::default()];
            let mut total = Counters::default();
            for (reboot, lost, requests) in steps {
                if reboot == 0 {
                    boot += 1;
                    cumulative = Counters::default();
                    last_seen.push(Counters::default());
                }
                for (latency_us, kind) in requests {
                    cumulative.record(latency_us, outcome(kind));
                }
                if !lost {
                    let delta = windows.observe("gw1", &format!("boot-{boot}"), 7, &cumulative);
                    total.add(&delta);
                    last_seen[boot] = cumulative.clone();
                }
            }
            let mut expected = Counters::default();
            for report in &last_seen {
                expected.add(report);
            }
            prop_assert_eq!(total, expected);
        }
    }

    #[test]
    fn an_error_spike_fails_with_the_figures() {
        let canary = traffic(344, 156, 10_000);
        let stable = traffic(999, 1, 10_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1, ams1"),
            Verdict::Fail {
                gate: Gate::FailureRate,
                detail: "5xx rate 31.2 % vs stable 0.1 % over 500 requests at fra1, ams1"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn the_message_names_every_kind_of_failure() {
        let mut canary = traffic(9_000, 60, 10_000);
        for _ in 0..40 {
            canary.record(10_000, Outcome::Trap);
        }
        for _ in 0..20 {
            canary.record(10_000, Outcome::LimitKill);
        }
        let stable = traffic(10_000, 0, 10_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Fail {
                gate: Gate::FailureRate,
                detail: "5xx, trap and limit-kill rate 1.3 % vs stable 0.0 % over 9,120 requests at fra1"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn a_latency_regression_fails() {
        let canary = traffic(1_000, 0, 700_000);
        let stable = traffic(1_000, 0, 100_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Fail {
                gate: Gate::P99Latency,
                detail: "p99 1,000.0 ms vs stable 100.0 ms over 1,000 requests at fra1".to_owned(),
            }
        );
        // The overflow bucket.
        let canary = traffic(1_000, 0, 60_000_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Fail {
                gate: Gate::P99Latency,
                detail: "p99 > 30,000.0 ms vs stable 100.0 ms over 1,000 requests at fra1"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn a_slower_canary_within_the_slack_passes() {
        let canary = traffic(1_000, 0, 2_000);
        let stable = traffic(1_000, 0, 200);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Pass
        );
    }

    #[test]
    fn low_traffic_is_inconclusive() {
        // Even a failing canary: too few requests to tell.
        let canary = traffic(30, 7, 10_000);
        let stable = traffic(1_000, 0, 10_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Inconclusive("only 37 canary requests at fra1 (100 needed)".to_owned())
        );
    }

    #[test]
    fn a_small_baseline_is_inconclusive_unless_the_canary_fails_outright() {
        let healthy = traffic(500, 0, 10_000);
        let stable = traffic(12, 0, 10_000);
        assert_eq!(
            analyze(&healthy, &stable, &Gates::default(), "fra1"),
            Verdict::Inconclusive(
                "500 canary requests at fra1 but only 12 stable requests to compare with (100 needed)"
                    .to_owned()
            )
        );

        let failing = traffic(344, 156, 10_000);
        assert_eq!(
            analyze(&failing, &Counters::default(), &Gates::default(), "fra1"),
            Verdict::Fail {
                gate: Gate::FailureRate,
                detail: "5xx rate 31.2 % over 500 requests at fra1, against 0.0 % for stable \
                         (only 0 stable requests to compare with)"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn equal_traffic_passes() {
        let canary = traffic(990, 10, 10_000);
        let stable = traffic(990, 10, 10_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Pass
        );
    }

    #[test]
    fn a_canary_better_than_stable_passes() {
        let canary = traffic(1_000, 0, 5_000);
        let stable = traffic(950, 50, 50_000);
        assert_eq!(
            analyze(&canary, &stable, &Gates::default(), "fra1"),
            Verdict::Pass
        );
    }

    #[test]
    fn a_failure_needs_both_the_increase_and_the_ratio() {
        // +0.5 point, 1.5 times: passes.
        let stable = traffic(990, 10, 10_000);
        assert_eq!(
            analyze(
                &traffic(985, 15, 10_000),
                &stable,
                &Gates::default(),
                "fra1"
            ),
            Verdict::Pass
        );
        // +1.5 points but 1.6 times: passes.
        let stable = traffic(975, 25, 10_000);
        assert_eq!(
            analyze(
                &traffic(960, 40, 10_000),
                &stable,
                &Gates::default(),
                "fra1"
            ),
            Verdict::Pass
        );
        // +2 points and 3 times: fails.
        let stable = traffic(990, 10, 10_000);
        assert!(matches!(
            analyze(
                &traffic(970, 30, 10_000),
                &stable,
                &Gates::default(),
                "fra1"
            ),
            Verdict::Fail {
                gate: Gate::FailureRate,
                ..
            }
        ));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(9_120), "9,120");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(percent(0.312), "31.2 %");
        assert_eq!(percent(0.001), "0.1 %");
        assert_eq!(percent(0.0), "0.0 %");
        assert_eq!(millis(840_000), "840.0 ms");
        assert_eq!(millis(120_000), "120.0 ms");
        assert_eq!(millis(250), "0.3 ms");
    }

    #[test]
    fn gates_default() {
        let gates = Gates::default();
        assert_eq!(gates.min_requests, 100);
        assert_eq!(gates.max_failure_rate_increase, 0.01);
        assert_eq!(gates.max_failure_ratio, 2.0);
        assert_eq!(gates.max_p99_ratio, 1.5);
        assert_eq!(gates.p99_slack_us, 5_000);
    }
}
