//! The TLS scenario (`--tls`): what HTTPS costs on the gateway, in the same
//! run, on the same component (examples/hello.wasm), with a throwaway CA and
//! a leaf for `bench.test` ([`certs`]):
//!
//! - **keep-alive**: wrk over plain HTTP and over HTTPS against the gateway
//!   (target: HTTPS at least 85 % of plain), and the same pair against
//!   native hyper for context (wrk sends no ALPN: HTTP/1.1 on both);
//! - **new connections per second**: a rustls client ([`handshakes`])
//!   opening one connection per request, full handshakes and resumptions,
//!   against the gateway's TLS listener and a native hyper + rustls hello
//!   with the gateway's own rustls settings (`native-hello --tls-cert`), the
//!   ceiling (target: the gateway at least 70 % of it, for each kind; the
//!   resumed runs must resume at least 90 % of their handshakes to count);
//! - **HTTP/2 over TLS**: h2load against both ([`h2load`]), reported.
//!
//! Nothing is pinned, as in the main comparison: servers and load tools
//! share the machine's cores. Beside every rate is the server's CPU time
//! per request or connection ([`cpu`]), which does not depend on how much
//! of the machine the load tool takes.
//!
//! Needs wrk (built with TLS, as Debian's) and h2load
//! (apt-get install nghttp2-client).

mod certs;
mod cpu;
mod h2load;
mod handshakes;

use crate::noisy::Wrk;
use crate::{Server, free_port, wait_ready};
use anyhow::{Context, Result, bail};
use certs::BenchCerts;
use handshakes::{Mode, Rate};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The app's host name (the certificate is for it and `*.bench.test`).
const HOST: &str = "bench.test";
/// HTTPS keep-alive rps as a fraction of plain, at least.
const KEEP_ALIVE_TARGET: f64 = 0.85;
/// The gateway's new TLS connections per second as a fraction of native's,
/// at least.
const HANDSHAKE_TARGET: f64 = 0.70;
/// Fraction of resumed-mode handshakes that must have resumed.
const RESUMED_AT_LEAST: f64 = 0.90;
/// h2load's concurrent streams per connection.
const H2_STREAMS: u32 = 10;

/// How hard and how long to load each target.
pub struct Load {
    /// Seconds of measured load per target.
    pub secs: u64,
    /// Seconds of warm-up load before each measurement.
    pub warmup_secs: u64,
    /// Concurrent connections (wrk, h2load) and connection loops (the
    /// handshake client).
    pub connections: u32,
    /// wrk threads.
    pub threads: u32,
}

/// Runs the scenario and prints its table. Returns whether every target
/// was met.
pub fn run(bin_dir: &Path, root: &Path, load: &Load) -> Result<bool> {
    if !h2load::available() {
        bail!("h2load is not installed: apt-get install nghttp2-client");
    }
    let component = root.join("examples").join("hello.wasm");
    if !component.is_file() {
        bail!(
            "{} missing: run `bash examples/build.sh`",
            component.display()
        );
    }
    let component = component.canonicalize()?;
    eprintln!(
        "TLS: not pinned (servers and load tools share {} cores, as in the main comparison); \
         {}s per measurement after {}s warm-up, {} connections",
        cores(),
        load.secs,
        load.warmup_secs,
        load.connections
    );
    let work = std::env::temp_dir().join(format!("gannet-tls-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = scenario(bin_dir, &work, &component, load);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The gateway, serving plain HTTP and HTTPS.
struct Gateway {
    server: Server,
    plain: SocketAddr,
    tls: SocketAddr,
}

fn start_gateway(
    bin_dir: &Path,
    dir: &Path,
    component: &Path,
    certs: &BenchCerts,
) -> Result<Gateway> {
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[[app]]\nid = \"bench\"\nhosts = [\"{HOST}\"]\ncomponent = \"{}\"\n[app.limits]\nmax_inflight = 1000\ncpu_ms = 1000\n",
            component.display()
        ),
    )?;
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let child = Command::new(bin_dir.join("gannet-gateway"))
        .arg("--routes")
        .arg(&routes)
        .args(["--listen", &plain.to_string()])
        .args(["--tls-listen", &tls.to_string()])
        .arg("--tls-cert")
        .arg(&certs.chain)
        .arg("--tls-key")
        .arg(&certs.key)
        .args(["--admin-listen", &admin.to_string()])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log"))?)
        .spawn()
        .context("starting gannet-gateway (cargo build --release --workspace)")?;
    let mut server = Server(child);
    wait_ready(plain, HOST, &mut server.0)?;
    Ok(Gateway { server, plain, tls })
}

/// `native-hello` serving HTTPS with the same certificate.
fn start_native_tls(bin_dir: &Path, certs: &BenchCerts) -> Result<(Server, SocketAddr)> {
    let child = Command::new(bin_dir.join("native-hello"))
        .arg("127.0.0.1:0")
        .arg("--tls-cert")
        .arg(&certs.chain)
        .arg("--tls-key")
        .arg(&certs.key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting native-hello")?;
    let mut server = Server(child);
    let stderr = server.0.stderr.take().context("native-hello's stderr")?;
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on https://")
        .with_context(|| format!("native-hello did not print its address: `{}`", line.trim()))?
        .parse()?;
    Ok((server, addr))
}

/// One keep-alive measurement: wrk's figures and the server's CPU.
struct KeepAlive {
    wrk: Wrk,
    cpu_secs: f64,
}

impl KeepAlive {
    fn errors(&self) -> u64 {
        self.wrk.non_2xx + self.wrk.socket_errors
    }

    fn cpu_us(&self) -> f64 {
        self.cpu_secs * 1e6 / self.wrk.requests.max(1) as f64
    }
}

fn wrk(url: &str, load: &Load, secs: u64) -> Result<Wrk> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{secs}s"))
        .args(["--latency", "-H"])
        .arg(format!("Host: {HOST}"))
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    crate::noisy::parse(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("wrk {url}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn keep_alive(server: &Server, url: &str, load: &Load) -> Result<KeepAlive> {
    if load.warmup_secs > 0 {
        wrk(url, load, load.warmup_secs)?;
    }
    let before = cpu::process_cpu_secs(server.0.id())?;
    let wrk = wrk(url, load, load.secs)?;
    let cpu_secs = cpu::process_cpu_secs(server.0.id())? - before;
    eprintln!(
        "  {url:<30} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
        wrk.rps, wrk.p50_ms, wrk.p99_ms
    );
    Ok(KeepAlive { wrk, cpu_secs })
}

/// One h2load measurement and the server's CPU.
struct H2 {
    run: h2load::H2load,
    cpu_secs: f64,
}

impl H2 {
    fn errors(&self) -> u64 {
        self.run.failed + self.run.non_2xx
    }

    fn cpu_us(&self) -> f64 {
        self.cpu_secs * 1e6 / self.run.succeeded.max(1) as f64
    }
}

fn http2(server: &Server, addr: SocketAddr, load: &Load) -> Result<H2> {
    let h2 = |secs| h2load::run(addr, HOST, load.connections, H2_STREAMS, secs);
    if load.warmup_secs > 0 {
        h2(load.warmup_secs)?;
    }
    let before = cpu::process_cpu_secs(server.0.id())?;
    let run = h2(load.secs)?;
    let cpu_secs = cpu::process_cpu_secs(server.0.id())? - before;
    eprintln!(
        "  h2load https://{addr}/ {:>9.0} req/s  ({}, mean {:.2} ms)",
        run.rps, run.protocol, run.mean_ms
    );
    Ok(H2 { run, cpu_secs })
}

fn connection_rate(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    addr: SocketAddr,
    mode: Mode,
    load: &Load,
) -> Result<Rate> {
    let rate = rt.block_on(handshakes::measure(
        addr,
        HOST,
        mode,
        load.connections,
        Duration::from_secs(load.warmup_secs),
        Duration::from_secs(load.secs),
        server.0.id(),
    ))?;
    eprintln!(
        "  {mode:?} handshakes at {addr}: {:>8.0} conn/s, {:.0} % resumed, {} failed{}",
        rate.per_sec(),
        rate.resumed_fraction() * 100.0,
        rate.failed,
        rate.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(rate)
}

/// One line of the results table.
struct Row {
    measurement: String,
    server: &'static str,
    rate: String,
    cpu_us: f64,
    errors: u64,
    notes: String,
    target: String,
}

fn percent(fraction: f64) -> String {
    format!("{:.0} %", fraction * 100.0)
}

/// The servers under test, all serving the same hello.
struct Servers {
    gateway: Gateway,
    native_plain: (Server, SocketAddr),
    native_tls: (Server, SocketAddr),
}

/// Rows of the results table, and whether their targets were met.
struct Results {
    rows: Vec<Row>,
    all_met: bool,
}

impl Results {
    fn target(&mut self, met: bool) -> &'static str {
        self.all_met &= met;
        if met { "met" } else { "MISSED" }
    }
}

fn scenario(bin_dir: &Path, work: &Path, component: &Path, load: &Load) -> Result<bool> {
    let certs = certs::write(work, &[HOST, "*.bench.test"])?;
    let servers = Servers {
        gateway: start_gateway(bin_dir, work, component, &certs)?,
        native_tls: start_native_tls(bin_dir, &certs)?,
        native_plain: crate::start_native(bin_dir)?,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(handshakes::check(servers.gateway.tls, HOST, &certs.ca))
        .context("the gateway's TLS listener")?;
    rt.block_on(handshakes::check(servers.native_tls.1, HOST, &certs.ca))
        .context("native-hello's TLS listener")?;

    let mut results = Results {
        rows: Vec::new(),
        all_met: true,
    };
    keep_alive_rows(&servers, load, &mut results)?;
    connection_rows(&rt, &servers, load, &mut results)?;
    http2_rows(&servers, load, &mut results)?;

    println!("| measurement | server | rate | server CPU us/op | errors | notes | target |");
    println!("|---|---|---:|---:|---:|---|---|");
    for r in &results.rows {
        println!(
            "| {} | {} | {} | {:.1} | {} | {} | {} |",
            r.measurement, r.server, r.rate, r.cpu_us, r.errors, r.notes, r.target
        );
    }
    println!(
        "\nNot pinned ({} cores shared by servers and load tools); {}s per measurement after {}s warm-up; \
         certificate ECDSA P-256 (chain of 2); the handshake client checks signatures, not the chain.",
        cores(),
        load.secs,
        load.warmup_secs
    );
    Ok(results.all_met)
}

/// a. Keep-alive: plain vs HTTPS, on the gateway (the target) and on
/// native hyper (context).
fn keep_alive_rows(servers: &Servers, load: &Load, results: &mut Results) -> Result<()> {
    eprintln!(
        "keep-alive (wrk -t{} -c{}):",
        load.threads, load.connections
    );
    let (native_plain, native_plain_addr) = &servers.native_plain;
    let (native_tls, native_tls_addr) = &servers.native_tls;
    let gateway = &servers.gateway;
    let gateway_plain = keep_alive(&gateway.server, &format!("http://{}/", gateway.plain), load)?;
    let gateway_https = keep_alive(&gateway.server, &format!("https://{}/", gateway.tls), load)?;
    let native_plain = keep_alive(native_plain, &format!("http://{native_plain_addr}/"), load)?;
    let native_https = keep_alive(native_tls, &format!("https://{native_tls_addr}/"), load)?;
    let label = format!("keep-alive HTTP/1.1 (wrk -c{})", load.connections);
    for (server, plain, https, has_target) in [
        ("gannet-gateway", &gateway_plain, &gateway_https, true),
        ("native-hyper", &native_plain, &native_https, false),
    ] {
        let ratio = https.wrk.rps / plain.wrk.rps.max(f64::MIN_POSITIVE);
        let target = if has_target {
            let met = ratio >= KEEP_ALIVE_TARGET && plain.errors() == 0 && https.errors() == 0;
            format!(
                "{} of plain, target >= {}: {}",
                percent(ratio),
                percent(KEEP_ALIVE_TARGET),
                results.target(met)
            )
        } else {
            format!("{} of plain (context)", percent(ratio))
        };
        for (scheme, m, target) in [("http", plain, "-".to_string()), ("https", https, target)] {
            results.rows.push(Row {
                measurement: format!("{label}, {scheme}"),
                server,
                rate: format!("{:.0} req/s", m.wrk.rps),
                cpu_us: m.cpu_us(),
                errors: m.errors(),
                notes: format!("p50 {:.2} ms, p99 {:.2} ms", m.wrk.p50_ms, m.wrk.p99_ms),
                target,
            });
        }
    }
    Ok(())
}

/// b. New TLS connections per second, full and resumed, gateway against
/// native.
fn connection_rows(
    rt: &tokio::runtime::Runtime,
    servers: &Servers,
    load: &Load,
    results: &mut Results,
) -> Result<()> {
    eprintln!(
        "new TLS connections ({} loops, one GET per connection):",
        load.connections
    );
    let (native_tls, native_tls_addr) = &servers.native_tls;
    let gateway = &servers.gateway;
    for mode in [Mode::Full, Mode::Resumed] {
        let gw = connection_rate(rt, &gateway.server, gateway.tls, mode, load)?;
        let native = connection_rate(rt, native_tls, *native_tls_addr, mode, load)?;
        let ratio = gw.per_sec() / native.per_sec().max(f64::MIN_POSITIVE);
        let resumed_ok = |r: &Rate| match mode {
            Mode::Full => true,
            Mode::Resumed => r.resumed_fraction() >= RESUMED_AT_LEAST,
        };
        let met =
            ratio >= HANDSHAKE_TARGET && gw.failed == 0 && resumed_ok(&gw) && resumed_ok(&native);
        let label = match mode {
            Mode::Full => "new TLS connections, full handshake",
            Mode::Resumed => "new TLS connections, resumed",
        };
        let notes = |r: &Rate| {
            let mut n = format!(
                "TLS 1.3 {}, resumed {}",
                percent(r.tls13_fraction()),
                percent(r.resumed_fraction())
            );
            if mode == Mode::Resumed {
                n.push_str(&format!(
                    " (>= {}: {})",
                    percent(RESUMED_AT_LEAST),
                    if resumed_ok(r) { "yes" } else { "NO" }
                ));
            }
            n
        };
        let target = format!(
            "{} of native, target >= {}: {}",
            percent(ratio),
            percent(HANDSHAKE_TARGET),
            results.target(met)
        );
        for (server, r, target) in [
            ("gannet-gateway", &gw, target),
            ("native-hyper-rustls", &native, "ceiling".to_string()),
        ] {
            results.rows.push(Row {
                measurement: label.to_string(),
                server,
                rate: format!("{:.0} conn/s", r.per_sec()),
                cpu_us: r.server_cpu_us(),
                errors: r.failed,
                notes: notes(r),
                target,
            });
        }
    }
    Ok(())
}

/// c. HTTP/2 over TLS with h2load, gateway against native (no rate
/// target; h2 must be negotiated and the gateway answer without errors).
fn http2_rows(servers: &Servers, load: &Load, results: &mut Results) -> Result<()> {
    eprintln!(
        "HTTP/2 over TLS (h2load -c{} -m{H2_STREAMS}):",
        load.connections
    );
    let (native_tls, native_tls_addr) = &servers.native_tls;
    let gateway = &servers.gateway;
    let gw = http2(&gateway.server, gateway.tls, load)?;
    let native = http2(native_tls, *native_tls_addr, load)?;
    let ratio = gw.run.rps / native.run.rps.max(f64::MIN_POSITIVE);
    let met = gw.run.protocol == "h2" && native.run.protocol == "h2" && gw.errors() == 0;
    let target = format!(
        "{} of native (no target); h2, no errors: {}",
        percent(ratio),
        results.target(met)
    );
    let label = format!(
        "HTTP/2 over TLS (h2load -c{} -m{H2_STREAMS})",
        load.connections
    );
    for (server, m, target) in [
        ("gannet-gateway", &gw, target),
        ("native-hyper-rustls", &native, "ceiling".to_string()),
    ] {
        results.rows.push(Row {
            measurement: label.clone(),
            server,
            rate: format!("{:.0} req/s", m.run.rps),
            cpu_us: m.cpu_us(),
            errors: m.errors(),
            notes: format!("ALPN {}, mean {:.2} ms", m.run.protocol, m.run.mean_ms),
            target,
        });
    }
    Ok(())
}
