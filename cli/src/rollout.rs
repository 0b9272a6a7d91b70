//! Progressive rollouts and placement in the CLI: `gannet rollout …`, how
//! `gannet deploy --strategy canary` follows the rollout it started, and the
//! pure formatting and parsing behind them (tested below).

// Table headers are padded with the same widths as their rows.
#![allow(clippy::print_literal, clippy::write_literal)]

use crate::args::RolloutCommand;
use crate::client::Client;
use crate::commands::{civil_date, print_json};
use anyhow::{Result, bail};
use gannet_model::api::{App, Figures, PopProgress, RolloutStatus, RolloutTransition, Version};
use reqwest::Method;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

/// How often `deploy` asks how its rollout is going.
const DEPLOY_POLL: Duration = Duration::from_millis(500);

/// How often `rollout status --watch` redraws.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// How long `deploy --wait` waits for a rollout to end, by default.
const DEFAULT_WAIT_SECS: u64 = 1800;

/// How long `deploy` (without `--wait`) waits for the scheduler to start a
/// rollout, by default.
const DEFAULT_START_SECS: u64 = 60;

/// How many of the newest transitions `rollout status` shows.
const TRANSITIONS_SHOWN: usize = 8;

/// Clears a terminal and puts the cursor at its top left.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// Runs `gannet rollout …`.
pub async fn command(client: &Client, cmd: RolloutCommand, json: bool) -> Result<()> {
    match cmd {
        RolloutCommand::Status { app, watch: false } => {
            let status = fetch(client, &app).await?;
            if json {
                return print_json(&status);
            }
            print!("{}", render_status(&status, now_ms()));
            Ok(())
        }
        RolloutCommand::Status { app, watch: true } => watch(client, &app, json).await,
        RolloutCommand::Promote { app } => act(client, &app, "promote", json).await,
        RolloutCommand::Pause { app } => act(client, &app, "pause", json).await,
        RolloutCommand::Resume { app } => act(client, &app, "resume", json).await,
        RolloutCommand::Abort { app } => act(client, &app, "abort", json).await,
    }
}

/// The app's newest rollout.
async fn fetch(client: &Client, app: &str) -> Result<RolloutStatus> {
    Ok(client.get(&format!("/v1/apps/{app}/rollout")).await?)
}

/// Asks the scheduler to `action` (promote, pause, resume, abort) the app's
/// live rollout.
async fn act(client: &Client, app: &str, action: &str, json: bool) -> Result<()> {
    let req = client.request(Method::POST, &format!("/v1/apps/{app}/rollout/{action}"));
    let status: RolloutStatus = client.send(req).await?;
    if json {
        return print_json(&status);
    }
    println!(
        "asked the scheduler to {action} {app}'s rollout of version {}",
        status.canary
    );
    Ok(())
}

/// `rollout status --watch`: redraws every second on a terminal; otherwise
/// prints the status again (after a separator; one JSON line with `--json`)
/// only when it changed. Ends with the rollout, failing if it was aborted.
async fn watch(client: &Client, app: &str, json: bool) -> Result<()> {
    let tty = !json && std::io::stdout().is_terminal();
    let mut last: Option<RolloutStatus> = None;
    loop {
        let status = fetch(client, app).await?;
        let over = phase_is_final(&status.phase);
        if tty {
            print!("{CLEAR_SCREEN}{}", render_status(&status, now_ms()));
            if !over {
                println!("\nwatching every second; Ctrl-C to stop");
            }
        } else if last.as_ref() != Some(&status) {
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                if last.is_some() {
                    println!("{}", "-".repeat(72));
                }
                print!("{}", render_status(&status, now_ms()));
            }
        }
        std::io::stdout().flush()?;
        if over {
            if status.phase == "aborted" {
                return Err(aborted(&status));
            }
            return Ok(());
        }
        last = Some(status);
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// What `deploy` needs to follow the rollout its upload started.
pub struct Follow<'a> {
    /// The app.
    pub app: &'a str,
    /// The rollout's id (the `gannet-rollout` response header).
    pub id: i64,
    /// `--wait`: until the rollout ends.
    pub wait: bool,
    /// `--wait-secs`.
    pub wait_secs: Option<u64>,
    /// `--json`.
    pub json: bool,
}

/// After a canary upload: waits until the scheduler started the rollout and
/// says where it is; with `--wait`, follows it to its end, printing each
/// transition once, and fails unless it succeeded. With `--json` it prints
/// the version, or with `--wait` the final rollout status.
pub async fn follow_deploy(client: &Client, follow: &Follow<'_>, version: &Version) -> Result<()> {
    let app = follow.app;
    let json = follow.json;
    let secs = follow.wait_secs.unwrap_or(if follow.wait {
        DEFAULT_WAIT_SECS
    } else {
        DEFAULT_START_SECS
    });
    if secs == 0 {
        if json {
            return print_json(version);
        }
        println!("version {} rolls out as a canary", version.number);
        println!("watch it: gannet rollout status --app {app} --watch");
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut status = ours(client, follow).await?;
    while status.phase == "pending" && Instant::now() < deadline {
        tokio::time::sleep(DEPLOY_POLL).await;
        status = ours(client, follow).await?;
    }
    let over = phase_is_final(&status.phase);
    if !json && (!over || status.phase == "succeeded") {
        println!("{}", rolling_out_line(&status));
        if !follow.wait && !over {
            println!("watch it: gannet rollout status --app {app} --watch");
        }
    }
    if !follow.wait {
        outcome(&status)?;
        if json {
            return print_json(version);
        }
        return Ok(());
    }

    let mut printed = 0;
    let mut paused = false;
    loop {
        if !json {
            let now = now_ms();
            for t in status.history.iter().skip(printed) {
                println!("{}", transition_line(t, now));
            }
            printed = printed.max(status.history.len());
            let pausing = status.phase == "paused";
            if pausing && !paused {
                println!(
                    "the rollout is paused; waiting until it is resumed, promoted or aborted \
                     (gannet rollout resume --app {app})"
                );
            }
            paused = pausing;
        }
        if phase_is_final(&status.phase) {
            if json {
                print_json(&status)?;
            } else if status.phase == "succeeded" {
                println!("{}", rolling_out_line(&status));
            }
            return outcome(&status);
        }
        if Instant::now() >= deadline {
            if json {
                print_json(&status)?;
            }
            bail!(
                "{app}'s rollout of version {} is still {} after {secs} s; \
                 follow it with `gannet rollout status --app {app} --watch`",
                status.canary,
                phase_line(&status)
            );
        }
        tokio::time::sleep(DEPLOY_POLL).await;
        status = ours(client, follow).await?;
    }
}

/// The app's newest rollout, which must be the one `follow` started: a
/// newer one means a later deploy replaced it.
async fn ours(client: &Client, follow: &Follow<'_>) -> Result<RolloutStatus> {
    let status = fetch(client, follow.app).await?;
    if status.id != follow.id {
        bail!(
            "{}'s rollout {} was replaced by a newer deploy's (version {} over version {}): \
             see `gannet rollout status --app {}`",
            follow.app,
            follow.id,
            status.canary,
            status.stable,
            follow.app
        );
    }
    Ok(status)
}

/// Fails for a rollout that ended without its canary serving.
fn outcome(status: &RolloutStatus) -> Result<()> {
    match status.phase.as_str() {
        "aborted" => Err(aborted(status)),
        "superseded" => bail!(
            "{}'s rollout of version {} was superseded: {}",
            status.app,
            status.canary,
            reason(status)
        ),
        _ => Ok(()),
    }
}

/// The error for an aborted rollout: its reason names the gate, the PoPs
/// and the figures.
fn aborted(status: &RolloutStatus) -> anyhow::Error {
    anyhow::anyhow!(
        "{}'s rollout of version {} was aborted: {}; version {} serves",
        status.app,
        status.canary,
        reason(status),
        status.stable
    )
}

/// The status's reason, or a note that it has none.
fn reason(status: &RolloutStatus) -> &str {
    status
        .reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .unwrap_or("no reason given")
}

/// Whether a rollout in `phase` never changes again.
pub fn phase_is_final(phase: &str) -> bool {
    matches!(phase, "succeeded" | "aborted" | "superseded")
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The seconds of a `--bake` value: `90` (seconds), `60s`, `2m` or `1h`.
pub fn parse_bake(text: &str) -> Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "--bake `{text}` is not a duration: write seconds (`90`, `60s`), minutes (`2m`) or hours (`1h`)"
        )
    };
    let trimmed = text.trim();
    let (number, unit) = if let Some(n) = trimmed.strip_suffix('s') {
        (n, 1)
    } else if let Some(n) = trimmed.strip_suffix('m') {
        (n, 60)
    } else if let Some(n) = trimmed.strip_suffix('h') {
        (n, 3600)
    } else {
        (trimmed, 1)
    };
    let number = number.trim_end();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(unit).ok_or_else(bad)
}

/// A duration in ms for people: `500 ms`, `1.5 s`, `90 s`, `2 min`.
pub fn duration_ms(ms: u64) -> String {
    if ms == 0 {
        "0 s".to_string()
    } else if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1_000 && ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else if ms >= 1_000 {
        format!("{:.1} s", ms as f64 / 1_000.0)
    } else {
        format!("{ms} ms")
    }
}

/// A latency in µs as ms with one decimal; `-` without one. The histogram's
/// overflow bucket (above its last bound, 30 s) comes as `u64::MAX`.
pub fn latency(us: Option<u64>) -> String {
    match us {
        None => "-".to_string(),
        Some(u64::MAX) => "> 30 s".to_string(),
        Some(us) => format!("{:.1} ms", us as f64 / 1_000.0),
    }
}

/// `0.75 % (3 failed)`; `-` without requests.
pub fn error_rate(figures: &Figures) -> String {
    let percent = match figures.error_rate_percent {
        Some(percent) => percent,
        None if figures.requests == 0 => return "-".to_string(),
        None => figures.failures as f64 * 100.0 / figures.requests as f64,
    };
    format!("{percent:.2} % ({} failed)", figures.failures)
}

/// The canary's figures beside the stable version's.
pub fn figures_table(status: &RolloutStatus) -> String {
    let (canary, stable) = (&status.canary_figures, &status.stable_figures);
    let rows = [
        (
            "",
            format!("CANARY (v{})", status.canary),
            format!("STABLE (v{})", status.stable),
        ),
        (
            "requests",
            canary.requests.to_string(),
            stable.requests.to_string(),
        ),
        ("error rate", error_rate(canary), error_rate(stable)),
        ("p50", latency(canary.p50_us), latency(stable.p50_us)),
        ("p99", latency(canary.p99_us), latency(stable.p99_us)),
    ];
    let mut out = String::new();
    for (label, left, right) in rows {
        let _ = writeln!(out, "  {label:<12} {left:<22} {right}");
    }
    out
}

/// `fra1, ams1`, or `no PoP`.
fn pop_list(pops: &[String]) -> String {
    if pops.is_empty() {
        "no PoP".to_string()
    } else {
        pops.join(", ")
    }
}

/// Gateways, comma-separated; `-` for none.
fn gateway_list(gateways: &[String]) -> String {
    if gateways.is_empty() {
        "-".to_string()
    } else {
        gateways.join(",")
    }
}

/// `progressing at step 2 of 4`, `paused at step 2 of 4: <reason>`,
/// `aborted: <reason>`, `succeeded`.
pub fn phase_line(status: &RolloutStatus) -> String {
    let mut line = status.phase.clone();
    if let Some(step) = status.step {
        let _ = write!(line, " at step {step} of {}", status.steps.len());
    }
    if let Some(reason) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        let _ = write!(line, ": {reason}");
    }
    line
}

/// ` (10 % at fra1)`: the weight and PoPs of `step` (counted from 1).
fn step_where(status: &RolloutStatus, step: usize) -> String {
    match step.checked_sub(1).and_then(|i| status.steps.get(i)) {
        Some(s) => format!(" ({} % at {})", s.weight, pop_list(&s.pop_names)),
        None => String::new(),
    }
}

/// Where a rollout just started stands, in one line:
/// `version 13 is rolling out over version 12: step 1 of 3 live (10 % at fra1)`.
pub fn rolling_out_line(status: &RolloutStatus) -> String {
    let (canary, stable, steps) = (status.canary, status.stable, status.steps.len());
    match (status.phase.as_str(), status.step) {
        ("pending", _) => format!(
            "version {canary} is waiting to roll out over version {stable}: \
             the scheduler has not started it yet"
        ),
        ("progressing", Some(step)) => format!(
            "version {canary} is rolling out over version {stable}: step {step} of {steps} live{}",
            step_where(status, step)
        ),
        ("paused", Some(step)) => format!(
            "version {canary} is rolling out over version {stable}: paused at step {step} of \
             {steps}{}: {}",
            step_where(status, step),
            reason(status)
        ),
        ("succeeded", _) => format!(
            "version {canary} replaced version {stable} at every PoP: the rollout succeeded"
        ),
        _ => format!(
            "{}'s rollout of version {canary} over version {stable}: {}",
            status.app,
            phase_line(status)
        ),
    }
}

/// The head of a phase as the API writes it (`paused at step 2: <reason>`
/// gives `paused at step 2`): the reason is shown once, apart.
fn phase_head(phase: &str) -> &str {
    phase.split_once(": ").map_or(phase, |(head, _)| head)
}

/// `12:03:04  progressing (step 1) → progressing (step 2): <reason>`.
pub fn transition_line(t: &RolloutTransition, now_ms: i64) -> String {
    let at = i64::try_from(t.at_ms).unwrap_or(i64::MAX);
    let mut line = format!(
        "{}  {} → {}",
        clock(at, now_ms),
        phase_head(&t.from),
        phase_head(&t.to)
    );
    if !t.reason.is_empty() {
        let _ = write!(line, ": {}", t.reason);
    }
    line
}

/// The UTC time of `ms` (ms since the epoch): `HH:MM:SS` on the day of
/// `now_ms`, `YYYY-MM-DD HH:MM:SS` on another.
pub fn clock(ms: i64, now_ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let of_day = secs.rem_euclid(86_400);
    let time = format!(
        "{:02}:{:02}:{:02}",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    );
    if secs.div_euclid(86_400) == now_ms.div_euclid(1_000).div_euclid(86_400) {
        time
    } else {
        format!("{} {time}", civil_date(secs))
    }
}

/// The whole status, as `gannet rollout status` prints it: phase, steps,
/// PoPs, figures and the last transitions.
pub fn render_status(status: &RolloutStatus, now_ms: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: version {} over version {}: {}",
        status.app,
        status.canary,
        status.stable,
        phase_line(status)
    );
    if let Some(action) = &status.pending_action {
        let _ = writeln!(
            out,
            "asked to {action}: the scheduler applies it within a second"
        );
    }
    let _ = writeln!(
        out,
        "started {} UTC, last change {} UTC",
        clock(status.created_ms, now_ms),
        clock(status.updated_ms, now_ms)
    );

    out.push('\n');
    let _ = writeln!(
        out,
        "  {:<5} {:<24} {:<7} {:<8} {}",
        "STEP", "POPS", "WEIGHT", "BAKE", "AT"
    );
    for (i, step) in status.steps.iter().enumerate() {
        let number = i + 1;
        let mark = if status.step == Some(number) {
            '>'
        } else {
            ' '
        };
        let selector = if step.pops.is_empty() {
            "(every PoP)"
        } else {
            step.pops.as_str()
        };
        let weight = format!("{} %", step.weight);
        let bake = duration_ms(step.bake_ms);
        let at = pop_list(&step.pop_names);
        let _ = writeln!(
            out,
            "{mark} {number:<5} {selector:<24} {weight:<7} {bake:<8} {at}"
        );
    }

    // Every PoP of the app with its canary weight; the current step's with
    // their gateways' progress.
    let mut pops: BTreeMap<&str, (u8, Option<&PopProgress>)> = status
        .weights
        .iter()
        .map(|(pop, weight)| (pop.as_str(), (*weight, None)))
        .collect();
    for progress in &status.pops {
        let weight = status
            .weights
            .get(&progress.pop)
            .copied()
            .unwrap_or(progress.weight);
        pops.insert(progress.pop.as_str(), (weight, Some(progress)));
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "  {:<12} {:<7} {:<20} {:<20} {}",
        "POP", "CANARY", "READY", "WAITING", "SILENT"
    );
    for (pop, (weight, progress)) in &pops {
        let (ready, waiting, silent) = match progress {
            Some(p) => (
                gateway_list(&p.ready),
                gateway_list(&p.waiting),
                gateway_list(&p.silent),
            ),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let weight = format!("{weight} %");
        let _ = writeln!(
            out,
            "  {pop:<12} {weight:<7} {ready:<20} {waiting:<20} {silent}"
        );
    }

    out.push('\n');
    out.push_str(&figures_table(status));

    if !status.history.is_empty() {
        out.push('\n');
        let skipped = status.history.len().saturating_sub(TRANSITIONS_SHOWN);
        if skipped > 0 {
            let _ = writeln!(
                out,
                "last transitions ({skipped} earlier ones left out; --json has them all):"
            );
        } else {
            out.push_str("transitions:\n");
        }
        for t in &status.history[skipped..] {
            let _ = writeln!(out, "  {}", transition_line(t, now_ms));
        }
    }
    out
}

/// `placed at fra1, ams1 (region=eu)`: where an app is served.
pub fn placement_line(app: &App) -> String {
    match (app.placement.is_empty(), app.pops.is_empty()) {
        (true, false) => format!("placed at {} (every PoP)", app.pops.join(", ")),
        (true, true) => "placed at every PoP (none is registered yet)".to_string(),
        (false, false) => format!("placed at {} ({})", app.pops.join(", "), app.placement),
        (false, true) => format!("placed nowhere: no PoP matches {}", app.placement),
    }
}

/// An affinity key with what it means.
pub fn affinity_line(affinity: &str) -> String {
    if let Some(header) = affinity.strip_prefix("header:") {
        format!("{affinity} (requests with the same {header} header stay on one version)")
    } else if let Some(cookie) = affinity.strip_prefix("cookie:") {
        format!("{affinity} (requests with the same {cookie} cookie stay on one version)")
    } else if affinity.is_empty() || affinity == "client" {
        "client (requests from the same client address stay on one version)".to_string()
    } else {
        affinity.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gannet_model::api::RolloutStep;

    fn sample() -> RolloutStatus {
        RolloutStatus {
            id: 7,
            app: "shop".into(),
            stable: 12,
            canary: 13,
            phase: "progressing".into(),
            reason: None,
            step: Some(1),
            steps: vec![
                RolloutStep {
                    pops: "tier=canary".into(),
                    pop_names: vec!["fra1".into()],
                    weight: 10,
                    bake_ms: 60_000,
                },
                RolloutStep {
                    pops: String::new(),
                    pop_names: vec!["fra1".into(), "ams1".into()],
                    weight: 100,
                    bake_ms: 90_000,
                },
            ],
            weights: BTreeMap::from([("fra1".to_string(), 10), ("ams1".to_string(), 0)]),
            pops: vec![PopProgress {
                pop: "fra1".into(),
                weight: 10,
                ready: vec!["1".into()],
                waiting: vec!["2".into()],
                silent: Vec::new(),
            }],
            canary_figures: Figures {
                requests: 400,
                failures: 3,
                error_rate_percent: Some(0.75),
                p50_us: Some(3_240),
                p99_us: Some(48_000),
            },
            stable_figures: Figures::default(),
            history: vec![RolloutTransition {
                at_ms: 3_723_000,
                from: "pending".into(),
                to: "progressing (step 1)".into(),
                reason: "rollout of version 13 over version 12 started (2 steps)".into(),
            }],
            analysis_interval_ms: 10_000,
            created_ms: 3_723_000,
            updated_ms: 3_723_000,
            pending_action: None,
        }
    }

    fn app(placement: &str, pops: &[&str]) -> App {
        App {
            name: "shop".into(),
            hostnames: vec!["shop-acme.example.dev".into()],
            active_version: Some(1),
            created_ms: 0,
            placement: placement.into(),
            pops: pops.iter().map(|p| (*p).to_string()).collect(),
            affinity: "client".into(),
            canary_version: None,
            rollout_policy: None,
        }
    }

    #[test]
    fn bake_times() {
        assert_eq!(parse_bake("60s").unwrap(), 60);
        assert_eq!(parse_bake("2m").unwrap(), 120);
        assert_eq!(parse_bake("90").unwrap(), 90);
        assert_eq!(parse_bake(" 1h ").unwrap(), 3600);
        assert_eq!(parse_bake("0").unwrap(), 0);
        for bad in [
            "",
            "s",
            "1.5m",
            "-1",
            "10ms",
            "abc",
            "2 d",
            "99999999999999999999h",
        ] {
            let error = parse_bake(bad).unwrap_err().to_string();
            assert!(error.contains("is not a duration"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(0), "0 s");
        assert_eq!(duration_ms(500), "500 ms");
        assert_eq!(duration_ms(1_500), "1.5 s");
        assert_eq!(duration_ms(60_000), "1 min");
        assert_eq!(duration_ms(90_000), "90 s");
        assert_eq!(duration_ms(120_000), "2 min");
    }

    #[test]
    fn figures() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(3_240)), "3.2 ms");
        assert_eq!(latency(Some(48_000)), "48.0 ms");
        assert_eq!(latency(Some(1_000_000)), "1000.0 ms");
        assert_eq!(latency(Some(u64::MAX)), "> 30 s");

        let mut f = Figures::default();
        assert_eq!(error_rate(&f), "-");
        f.requests = 200;
        f.failures = 1;
        assert_eq!(error_rate(&f), "0.50 % (1 failed)");
        f.error_rate_percent = Some(0.75);
        assert_eq!(error_rate(&f), "0.75 % (1 failed)");

        let table = figures_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(
            lines[0].contains("CANARY (v13)") && lines[0].contains("STABLE (v12)"),
            "{table}"
        );
        assert!(
            lines[1].contains("400") && lines[1].ends_with(" 0"),
            "{table}"
        );
        assert!(lines[2].contains("0.75 % (3 failed)") && lines[2].ends_with(" -"));
        assert!(lines[3].contains("3.2 ms"), "{table}");
        assert!(lines[4].contains("48.0 ms"), "{table}");
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(3_723_000, 0), "01:02:03");
        assert_eq!(clock(86_400_000 + 5_000, 0), "1970-01-02 00:00:05");
        assert_eq!(clock(86_400_000 + 5_000, 86_400_000), "00:00:05");
    }

    #[test]
    fn lines() {
        let mut status = sample();
        assert_eq!(
            rolling_out_line(&status),
            "version 13 is rolling out over version 12: step 1 of 2 live (10 % at fra1)"
        );
        assert_eq!(phase_line(&status), "progressing at step 1 of 2");
        assert_eq!(
            transition_line(&status.history[0], 0),
            "01:02:03  pending → progressing (step 1): \
             rollout of version 13 over version 12 started (2 steps)"
        );

        status.phase = "paused".into();
        status.reason = Some("no traffic to compare".into());
        assert_eq!(
            rolling_out_line(&status),
            "version 13 is rolling out over version 12: paused at step 1 of 2 (10 % at fra1): \
             no traffic to compare"
        );

        let aborted = RolloutTransition {
            at_ms: 3_723_000,
            from: "paused at step 1: no traffic to compare".into(),
            to: "aborted: error rate 5.00 % at fra1".into(),
            reason: "error rate 5.00 % at fra1".into(),
        };
        assert_eq!(
            transition_line(&aborted, 0),
            "01:02:03  paused at step 1 → aborted: error rate 5.00 % at fra1"
        );

        status.phase = "aborted".into();
        status.step = None;
        status.reason = Some("error rate 5.00 % at fra1 (gate: 1.00 %)".into());
        let error = outcome(&status).unwrap_err().to_string();
        assert!(
            error.contains("was aborted: error rate 5.00 % at fra1 (gate: 1.00 %)"),
            "{error}"
        );
        status.phase = "superseded".into();
        assert!(outcome(&status).is_err());
        status.phase = "succeeded".into();
        assert!(outcome(&status).is_ok());
        assert!(phase_is_final("succeeded") && !phase_is_final("paused"));
    }

    #[test]
    fn whole_status() {
        let text = render_status(&sample(), 0);
        for part in [
            "shop: version 13 over version 12: progressing at step 1 of 2",
            "started 01:02:03 UTC",
            "> 1     tier=canary",
            "(every PoP)",
            "90 s",
            "fra1, ams1",
            "0.75 % (3 failed)",
            "pending → progressing (step 1)",
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
        let fra1 = text
            .lines()
            .find(|l| l.trim_start().starts_with("fra1 "))
            .unwrap();
        assert!(fra1.contains("10 %") && fra1.contains(" 1 ") && fra1.contains(" 2 "));
        let ams1 = text
            .lines()
            .find(|l| l.trim_start().starts_with("ams1 "))
            .unwrap();
        assert!(ams1.contains("0 %") && ams1.ends_with(" -"), "{ams1}");
    }

    #[test]
    fn placements() {
        assert_eq!(
            placement_line(&app("region=eu", &["fra1", "ams1"])),
            "placed at fra1, ams1 (region=eu)"
        );
        assert_eq!(
            placement_line(&app("", &["fra1"])),
            "placed at fra1 (every PoP)"
        );
        assert_eq!(
            placement_line(&app("", &[])),
            "placed at every PoP (none is registered yet)"
        );
        assert_eq!(
            placement_line(&app("gpu", &[])),
            "placed nowhere: no PoP matches gpu"
        );
        assert!(affinity_line("cookie:session").starts_with("cookie:session (requests"));
        assert!(affinity_line("").starts_with("client ("));
    }
}
