//! `gannet-loadtest`: requests per second and latency of the gateway against
//! `wasmtime serve` (the runtime users would otherwise pick) and a native
//! hyper hello (the ceiling), with the same load generator (wrk), in the same
//! run, on the same guests.
//!
//!     cargo build --release --workspace && bash examples/build.sh
//!     target/release/gannet-loadtest [--duration-secs 10] [--connections 32]
//!
//! `--noisy` runs the noisy-neighbour scenario instead ([`noisy`]): a quiet
//! tenant alone and under another tenant's sleep and spin storms.
//!
//! `--tls` runs the TLS scenario instead ([`tls`]): HTTPS keep-alive against
//! plain, new TLS connections per second (full and resumed) against a native
//! hyper + rustls hello, and HTTP/2 over TLS with h2load.
//!
//! `--split` runs the traffic-split scenario instead ([`split`]): one app
//! with and without a canary at 50 %, alternating rounds.
//!
//! Needs `wrk` (apt-get install wrk). `wasmtime` 48.0.8 is optional: without
//! it the comparison is skipped with a message (install it once with
//! `cargo install wasmtime-cli --version 48.0.8 --locked`).

mod noisy;
mod split;
mod tls;

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Compare gannet-gateway, `wasmtime serve` and native hyper under wrk.
#[derive(Parser, Debug)]
struct Args {
    /// Seconds of measured load per target.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of warm-up load before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Guests to measure (files examples/NAME.wasm).
    #[arg(long, value_delimiter = ',', default_value = "hello,hello-js,hello-py")]
    guests: Vec<String>,
    /// The wasmtime binary for the baseline.
    #[arg(long, default_value = "wasmtime")]
    wasmtime: String,
    /// Repository root (for examples/).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Run the noisy-neighbour scenario (fair sharing) instead; exits
    /// non-zero if a target is missed.
    #[arg(long)]
    noisy: bool,
    /// Run the TLS scenario (HTTPS keep-alive, new TLS connections per
    /// second, HTTP/2 over TLS) instead; exits non-zero if a target is
    /// missed. Needs h2load (apt-get install nghttp2-client).
    #[arg(long, conflicts_with = "noisy")]
    tls: bool,
    /// Run the traffic-split scenario (a canary at 50 % against one
    /// version) instead; exits non-zero if the split costs more than 5 %.
    #[arg(long, conflicts_with_all = ["noisy", "tls"])]
    split: bool,
}

struct Measured {
    target: String,
    guest: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// A server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` answers an HTTP request with `host` with a 200.
fn wait_ready(addr: SocketAddr, host: &str, child: &mut Child) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("server exited early: {status}");
        }
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                if buf.starts_with(b"HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("server at {addr} never answered 200")
}

fn wrk(args: &Args, addr: SocketAddr, host: &str, secs: u64) -> Result<(f64, f64, f64, u64)> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{secs}s"))
        .args(["--latency", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rps = 0.0;
    let (mut p50, mut p99) = (f64::NAN, f64::NAN);
    let mut errors = 0;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = parse_latency(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = parse_latency(v.trim());
        } else if t.starts_with("Non-2xx or 3xx responses:") || t.starts_with("Socket errors:") {
            errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if rps == 0.0 {
        bail!(
            "wrk printed no result:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((rps, p50, p99, errors))
}

fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn measure(
    args: &Args,
    target: &str,
    guest: &str,
    addr: SocketAddr,
    host: &str,
) -> Result<Measured> {
    if args.warmup_secs > 0 {
        wrk(args, addr, host, args.warmup_secs)?;
    }
    let (rps, p50_ms, p99_ms, errors) = wrk(args, addr, host, args.duration_secs)?;
    eprintln!(
        "  {target:<20} {guest:<10} {rps:>10.0} rps  p50 {p50_ms:>7.2} ms  p99 {p99_ms:>7.2} ms"
    );
    Ok(Measured {
        target: target.into(),
        guest: guest.into(),
        rps,
        p50_ms,
        p99_ms,
        errors,
    })
}

fn start_gateway(
    bin_dir: &Path,
    component: &Path,
    cache: &Path,
    dir: &Path,
) -> Result<(Server, SocketAddr)> {
    let routes = format!(
        "[[app]]\nid = \"bench\"\nhosts = [\"bench.test\"]\ncomponent = \"{}\"\n[app.limits]\nmax_inflight = 1000\ncpu_ms = 1000\n",
        component.display()
    );
    start_gateway_on(bin_dir, &routes, cache, dir, "gateway")
}

/// Starts the gateway on a routes file holding `routes` (written to
/// `dir/<name>-routes.toml`; its log goes to `dir/<name>.log`) and waits
/// until `bench.test` answers 200.
fn start_gateway_on(
    bin_dir: &Path,
    routes: &str,
    cache: &Path,
    dir: &Path,
    name: &str,
) -> Result<(Server, SocketAddr)> {
    let routes_path = dir.join(format!("{name}-routes.toml"));
    std::fs::write(&routes_path, routes)?;
    let port = free_port()?;
    let admin = free_port()?;
    let mut child = Command::new(bin_dir.join("gannet-gateway"))
        .arg("--routes")
        .arg(&routes_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--cache-dir")
        .arg(cache)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .spawn()
        .context("starting gannet-gateway (cargo build --release --workspace)")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_ready(addr, "bench.test", &mut child)?;
    Ok((Server(child), addr))
}

/// `wasmtime serve`'s options for the two baselines: its default pooling
/// allocator (the target the ratios are quoted against), and the same pool
/// with the memory-reset settings the gateway uses (64 MiB kept resident per
/// slot, `PAGEMAP_SCAN` resets), to show what tuning alone gives stock
/// wasmtime.
const WASMTIME_SERVE_DEFAULT: &[&str] = &["-O", "pooling-allocator"];
const WASMTIME_SERVE_TUNED: &[&str] = &[
    "-O",
    "pooling-allocator",
    "-O",
    "pooling-memory-keep-resident=67108864",
    "-O",
    "pooling-pagemap-scan=auto",
];

fn start_wasmtime(
    wasmtime: &str,
    options: &[&str],
    component: &Path,
) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let mut child = Command::new(wasmtime)
        .args(["serve", "-Scli"])
        .args(options)
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_ready(addr, "localhost", &mut child)?;
    Ok((Server(child), addr))
}

fn start_native(bin_dir: &Path) -> Result<(Server, SocketAddr)> {
    let mut child = Command::new(bin_dir.join("native-hello"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .context("native-hello did not print its address")?
        .parse()?;
    wait_ready(addr, "localhost", &mut child)?;
    Ok((Server(child), addr))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: apt-get install wrk");
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    if args.noisy {
        if !noisy::run(&bin_dir, &args.root, args.duration_secs)? {
            bail!("the noisy-neighbour targets were missed");
        }
        return Ok(());
    }
    if args.split {
        if !split::run(
            &bin_dir,
            &args.root,
            args.duration_secs,
            args.warmup_secs,
            args.connections,
        )? {
            bail!("the split target was missed");
        }
        return Ok(());
    }
    if args.tls {
        let load = tls::Load {
            secs: args.duration_secs,
            warmup_secs: args.warmup_secs,
            connections: args.connections,
            threads: args.threads,
        };
        if !tls::run(&bin_dir, &args.root, &load)? {
            bail!("the TLS targets were missed");
        }
        return Ok(());
    }
    let has_wasmtime = Command::new(&args.wasmtime)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .ok();
    match &has_wasmtime {
        Some(v) => eprintln!("baseline: {}", v.trim()),
        None => eprintln!(
            "baseline skipped: `{}` not found (cargo install wasmtime-cli --version 48.0.8 --locked)",
            args.wasmtime
        ),
    }
    let work = std::env::temp_dir().join(format!("gannet-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    eprintln!(
        "wrk -t{} -c{} -d{}s (after {}s warm-up), {} cores",
        args.threads,
        args.connections,
        args.duration_secs,
        args.warmup_secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut results = Vec::new();
    {
        let (_server, addr) = start_native(&bin_dir)?;
        results.push(measure(&args, "native-hyper", "-", addr, "localhost")?);
    }
    for guest in &args.guests {
        let component = args.root.join("examples").join(format!("{guest}.wasm"));
        if !component.is_file() {
            bail!(
                "{} missing: run `bash examples/build.sh`",
                component.display()
            );
        }
        let component = component.canonicalize()?;
        {
            let (_server, addr) = start_gateway(&bin_dir, &component, &cache, &work)?;
            results.push(measure(&args, "gannet-gateway", guest, addr, "bench.test")?);
        }
        if has_wasmtime.is_some() {
            for (target, options) in [
                ("wasmtime-serve", WASMTIME_SERVE_DEFAULT),
                ("wasmtime-serve-tuned", WASMTIME_SERVE_TUNED),
            ] {
                let (_server, addr) = start_wasmtime(&args.wasmtime, options, &component)?;
                results.push(measure(&args, target, guest, addr, "localhost")?);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "| target | guest | rps | p50 ms | p99 ms | errors | vs wasmtime serve | vs tuned serve |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let ratio = |m: &Measured, baseline: &str| {
        results
            .iter()
            .find(|b| b.target == baseline && b.guest == m.guest)
            .map(|b| format!("{:.2}x", m.rps / b.rps))
            .unwrap_or_else(|| "-".into())
    };
    for m in &results {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            m.target,
            m.guest,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.errors,
            ratio(m, "wasmtime-serve"),
            ratio(m, "wasmtime-serve-tuned"),
        );
    }
    Ok(())
}
