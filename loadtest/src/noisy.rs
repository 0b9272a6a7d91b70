//! The noisy-neighbour scenario: a quiet tenant's hello app measured alone,
//! then under two storms from another tenant, in the same run:
//!
//! - **sleep storm**: 12 apps holding 100 sleeping requests each (1,200 in
//!   flight), more than the pool's share for one tenant;
//! - **spin storm**: 100 concurrent CPU spinners of one app (`cpu_ms = 50`,
//!   each ends at its CPU limit), measured alone first so its share of
//!   throughput under the quiet load can be compared.
//!
//! With two or more cores the gateway is pinned to core 0 and every load
//! tool to core 1 (`taskset`), so what is measured is the gateway's own
//! sharing, not the OS scheduler's jitter between the gateway and wrk.
//!
//! Targets: under both storms the quiet app answers 100 % 200s with p99 at
//! most max(2 × solo p99, solo p99 + 2 ms), and the spinners keep at least
//! half their solo throughput.

use crate::{Server, free_port, wait_ready};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Sleeping apps of the noisy tenant, and requests each holds.
const SLEEPERS: usize = 12;
const PER_SLEEPER: u32 = 100;
/// Concurrent spinners.
const SPINNERS: u32 = 100;
/// The quiet app's load: `wrk -t1 -c8`.
const QUIET_CONNECTIONS: u32 = 8;

/// One wrk run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrk {
    /// Requests per second (all statuses).
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests answered.
    pub requests: u64,
    /// Non-2xx/3xx answers.
    pub non_2xx: u64,
    /// Socket errors (connect, read, write, timeout).
    pub socket_errors: u64,
}

/// How load tools and the gateway are placed on cores.
#[derive(Clone, Copy)]
struct Pinning {
    on: bool,
}

impl Pinning {
    fn command(&self, core: u32, program: &Path) -> Command {
        if self.on {
            let mut c = Command::new("taskset");
            c.args(["-c", &core.to_string()]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

fn wrk_command(
    pin: Pinning,
    addr: SocketAddr,
    host: &str,
    path: &str,
    connections: u32,
    secs: u64,
) -> Command {
    let mut c = pin.command(1, Path::new("wrk"));
    c.args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
        .args(["--timeout", "60s", "--latency", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// Reads the figures of wrk's `--latency` output (also used by the TLS
/// scenario).
pub(crate) fn parse(text: &str) -> Result<Wrk> {
    let mut w = Wrk {
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        ..Wrk::default()
    };
    let numbers = |t: &str| -> Vec<u64> {
        t.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect()
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            w.p50_ms = crate::parse_latency(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_ms = crate::parse_latency(v.trim());
        } else if t.contains("requests in") {
            w.requests = numbers(t).first().copied().unwrap_or(0);
        } else if t.starts_with("Non-2xx or 3xx responses:") {
            w.non_2xx = numbers(t).iter().sum();
        } else if t.starts_with("Socket errors:") {
            w.socket_errors = numbers(t).iter().sum();
        }
    }
    if w.requests == 0 && w.rps == 0.0 {
        bail!("wrk printed no result:\n{text}");
    }
    Ok(w)
}

fn finish(child: Child) -> Result<Wrk> {
    let out = child.wait_with_output().context("waiting for wrk")?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn run_wrk(
    pin: Pinning,
    addr: SocketAddr,
    host: &str,
    path: &str,
    connections: u32,
    secs: u64,
) -> Result<Wrk> {
    finish(
        wrk_command(pin, addr, host, path, connections, secs)
            .spawn()
            .context("running wrk (apt-get install wrk)")?,
    )
}

fn routes(examples: &Path) -> String {
    let mut r = format!(
        "[[app]]\nid = \"quiet\"\ntenant = \"quiet\"\nhosts = [\"quiet.test\"]\ncomponent = \"{}\"\n",
        examples.join("hello.wasm").display()
    );
    for i in 0..SLEEPERS {
        r.push_str(&format!(
            "\n[[app]]\nid = \"sleep{i}\"\ntenant = \"noisy\"\nhosts = [\"sleep{i}.test\"]\ncomponent = \"{}\"\n[app.limits]\nmax_inflight = {PER_SLEEPER}\nwall_ms = 60000\n",
            examples.join("sleep.wasm").display()
        ));
    }
    r.push_str(&format!(
        "\n[[app]]\nid = \"spin\"\ntenant = \"noisy\"\nhosts = [\"spin.test\"]\ncomponent = \"{}\"\n[app.limits]\nmax_inflight = {SPINNERS}\ncpu_ms = 50\n",
        examples.join("spin.wasm").display()
    ));
    r
}

fn start_gateway(
    pin: Pinning,
    bin_dir: &Path,
    dir: &Path,
    examples: &Path,
) -> Result<(Server, SocketAddr)> {
    let routes_path = dir.join("noisy-routes.toml");
    std::fs::write(&routes_path, routes(examples))?;
    let port = free_port()?;
    let admin = free_port()?;
    let mut child = pin
        .command(0, &bin_dir.join("gannet-gateway"))
        .arg("--routes")
        .arg(&routes_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("noisy-gateway.log"))?)
        .spawn()
        .context("starting gannet-gateway")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_ready(addr, "quiet.test", &mut child)?;
    Ok((Server(child), addr))
}

/// The figures of one storm.
struct Storm {
    name: &'static str,
    quiet: Wrk,
    noisy: Wrk,
}

/// Runs the scenario and prints its table. Returns whether every target
/// was met.
pub fn run(bin_dir: &Path, root: &Path, secs: u64) -> Result<bool> {
    let examples = root.join("examples").canonicalize()?;
    for guest in ["hello", "sleep", "spin"] {
        if !examples.join(format!("{guest}.wasm")).is_file() {
            bail!("examples/{guest}.wasm missing: run `bash examples/build.sh`");
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let has_taskset = Command::new("taskset").arg("-V").output().is_ok();
    let pin = Pinning {
        on: cores >= 2 && has_taskset,
    };
    eprintln!(
        "noisy neighbour: {} (gateway on core 0, load tools on core 1), {secs}s per measurement",
        if pin.on {
            "pinned"
        } else {
            "not pinned (needs 2 cores and taskset)"
        }
    );
    let work = std::env::temp_dir().join(format!("gannet-noisy-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = scenario(pin, bin_dir, &work, &examples, secs);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn scenario(pin: Pinning, bin_dir: &Path, work: &Path, examples: &Path, secs: u64) -> Result<bool> {
    let (_gateway, addr) = start_gateway(pin, bin_dir, work, examples)?;
    let quiet = |secs| run_wrk(pin, addr, "quiet.test", "/", QUIET_CONNECTIONS, secs);
    // Warm the quiet app, then measure it alone.
    quiet(2)?;
    let solo = quiet(secs)?;
    eprintln!(
        "  quiet alone: {:.0} rps, p50 {:.2} ms, p99 {:.2} ms",
        solo.rps, solo.p50_ms, solo.p99_ms
    );

    // The spinners alone: their throughput without the quiet load.
    let spin_solo = run_wrk(pin, addr, "spin.test", "/", SPINNERS, secs)?;
    eprintln!("  spinners alone: {:.1} rps", spin_solo.rps);

    let mut storms = Vec::new();
    // Sleep storm: 12 × 100 sleeping requests, then the quiet load.
    {
        let storm_secs = secs + 4;
        let sleepers: Vec<Child> = (0..SLEEPERS)
            .map(|i| {
                wrk_command(
                    pin,
                    addr,
                    &format!("sleep{i}.test"),
                    "/?ms=2000",
                    PER_SLEEPER,
                    storm_secs,
                )
                .spawn()
                .context("running wrk")
            })
            .collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_secs(2));
        let q = quiet(secs);
        let mut noisy = Wrk::default();
        for child in sleepers {
            let w = finish(child)?;
            noisy.rps += w.rps;
            noisy.requests += w.requests;
            noisy.non_2xx += w.non_2xx;
            noisy.socket_errors += w.socket_errors;
        }
        storms.push(Storm {
            name: "sleep storm (12 apps x 100 sleeping)",
            quiet: q?,
            noisy,
        });
    }
    // Spin storm: 100 spinners, then the quiet load.
    {
        let spinners = wrk_command(pin, addr, "spin.test", "/", SPINNERS, secs + 2)
            .spawn()
            .context("running wrk")?;
        std::thread::sleep(Duration::from_secs(1));
        let q = quiet(secs);
        let noisy = finish(spinners)?;
        storms.push(Storm {
            name: "spin storm (100 x cpu_ms 50)",
            quiet: q?,
            noisy,
        });
    }

    let bound = (2.0 * solo.p99_ms).max(solo.p99_ms + 2.0);
    println!(
        "| phase | quiet rps | quiet p50 ms | quiet p99 ms | quiet non-200 | noisy rps | noisy non-2xx | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| quiet alone | {:.0} | {:.2} | {:.2} | {} | - | - | p99 bound {bound:.2} ms |",
        solo.rps,
        solo.p50_ms,
        solo.p99_ms,
        solo.non_2xx + solo.socket_errors
    );
    println!(
        "| spinners alone | - | - | - | - | {:.1} | {} | - |",
        spin_solo.rps, spin_solo.non_2xx
    );
    let mut all_met = true;
    for s in &storms {
        let failures = s.quiet.non_2xx + s.quiet.socket_errors;
        let mut met = failures == 0 && s.quiet.p99_ms <= bound;
        let mut note = format!(
            "quiet p99 {:.2} <= {bound:.2}: {}",
            s.quiet.p99_ms,
            if s.quiet.p99_ms <= bound { "yes" } else { "NO" }
        );
        if s.name.starts_with("spin") {
            let share = s.noisy.rps / spin_solo.rps.max(f64::MIN_POSITIVE);
            met &= share >= 0.5;
            note.push_str(&format!("; spinners keep {:.0} % of solo", share * 100.0));
        }
        all_met &= met;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {} | {} ({note}) |",
            s.name,
            s.quiet.rps,
            s.quiet.p50_ms,
            s.quiet.p99_ms,
            failures,
            s.noisy.rps,
            s.noisy.non_2xx,
            if met { "met" } else { "MISSED" }
        );
    }
    Ok(all_met)
}
