//! The traffic-split scenario: what a rollout's split costs per request.
//!
//! The same guest is served twice by one gateway in turn: once as a plain
//! app, once as an app with a canary at 50 % (the same component with
//! another environment, so both versions are warm and really used), split
//! by an `x-user` header that changes on every request (a wrk Lua script),
//! so both versions serve. Rounds alternate (plain, split, plain, split,
//! …) to spread the machine's noise over both; the medians are compared.
//!
//! Target: the split's throughput is within 5 % of the plain app's.

use crate::start_gateway_on;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Rounds of each configuration.
const ROUNDS: usize = 5;

/// The wrk script: a new `x-user` per request.
const SCRIPT: &str = r#"
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", {["Host"] = "bench.test", ["x-user"] = "user-" .. n})
end
"#;

fn routes(component: &Path, split: bool) -> String {
    let mut r = format!(
        "[[app]]\nid = \"bench\"\nhosts = [\"bench.test\"]\ncomponent = \"{}\"\naffinity = \"header:x-user\"\nenv = {{ GREETING = \"stable\" }}\n[app.limits]\nmax_inflight = 1000\ncpu_ms = 1000\n",
        component.display()
    );
    if split {
        r.push_str(&format!(
            "[app.canary]\ncomponent = \"{}\"\nweight = 50\nenv = {{ GREETING = \"canary\" }}\n[app.canary.limits]\nmax_inflight = 1000\ncpu_ms = 1000\n",
            component.display()
        ));
    }
    r
}

/// Requests per second under wrk with the script.
fn wrk(addr: SocketAddr, script: &Path, secs: u64, connections: u32) -> Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    if text.contains("Non-2xx") {
        bail!("non-2xx answers under load:\n{text}");
    }
    Ok(rps)
}

/// Of 400 users, how many the split gateway sends to the canary.
fn canary_share(addr: SocketAddr) -> Result<usize> {
    use std::io::{Read, Write};
    let mut canary = 0;
    for i in 0..400 {
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: bench.test\r\nx-user: probe-{i}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        if buf.contains("canary, world") {
            canary += 1;
        }
    }
    Ok(canary)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the scenario; false when the split costs more than 5 %.
pub fn run(
    bin_dir: &Path,
    root: &Path,
    secs: u64,
    warmup_secs: u64,
    connections: u32,
) -> Result<bool> {
    let component = root.join("examples/hello.wasm");
    if !component.is_file() {
        bail!(
            "{} missing: run `bash examples/build.sh`",
            component.display()
        );
    }
    let component = component.canonicalize()?;
    let work = std::env::temp_dir().join(format!("gannet-split-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    let script = work.join("users.lua");
    std::fs::write(&script, SCRIPT)?;
    let (mut plain, mut split) = (Vec::new(), Vec::new());
    let mut share = 0;
    for round in 0..ROUNDS {
        for with_canary in [false, true] {
            let (_server, addr) = start_gateway_on(
                bin_dir,
                &routes(&component, with_canary),
                &cache,
                &work,
                "split-gateway",
            )?;
            if warmup_secs > 0 {
                wrk(addr, &script, warmup_secs, connections)?;
            }
            let rps = wrk(addr, &script, secs, connections)?;
            let what = if with_canary {
                "50/50 split"
            } else {
                "no split"
            };
            eprintln!("  round {} {what:<12} {rps:>10.0} rps", round + 1);
            if with_canary {
                share = canary_share(addr)?;
                split.push(rps);
            } else {
                plain.push(rps);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let (plain, split) = (median(plain), median(split));
    let ratio = split / plain;
    println!("| configuration | rps (median of {ROUNDS}) |");
    println!("|---|---:|");
    println!("| one version | {plain:.0} |");
    println!("| stable + canary at 50 % (x-user affinity) | {split:.0} |");
    println!();
    println!(
        "split / plain: {ratio:.3} (target ≥ 0.95); canary share of 400 users: {share} ({:.1} %)",
        share as f64 / 4.0
    );
    let share_ok = (160..=240).contains(&share);
    if !share_ok {
        eprintln!("the split did not send about half the users to the canary");
    }
    Ok(ratio >= 0.95 && share_ok)
}
