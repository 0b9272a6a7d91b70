//! HTTP/2 over TLS with h2load (nghttp2): `h2load -t1 -cC -mM -D SECS
//! --connect-to ADDR https://HOST/`, so the SNI name and `:authority` are
//! `HOST` while the connection goes to `ADDR`.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::process::Command;

/// One h2load run's figures.
#[derive(Debug)]
pub struct H2load {
    /// Requests per second over the run.
    pub rps: f64,
    /// Requests that got a response.
    pub succeeded: u64,
    /// Requests failed (h2load counts its errored ones, network errors
    /// and resets, and non-2xx/3xx answers among them).
    pub failed: u64,
    /// Responses other than 2xx.
    pub non_2xx: u64,
    /// Mean request time, milliseconds.
    pub mean_ms: f64,
    /// The protocol ALPN chose (`h2` expected).
    pub protocol: String,
}

/// Whether h2load is installed.
pub fn available() -> bool {
    Command::new("h2load").arg("--version").output().is_ok()
}

/// Runs h2load against `addr` for `secs` with `clients` connections of
/// `streams` concurrent streams each.
pub fn run(addr: SocketAddr, host: &str, clients: u32, streams: u32, secs: u64) -> Result<H2load> {
    let out = Command::new("h2load")
        .args(["-t1", &format!("-c{clients}"), &format!("-m{streams}")])
        .args(["-D", &format!("{secs}s")])
        .arg(format!("--connect-to={addr}"))
        .arg(format!("https://{host}/"))
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    parse(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("h2load stderr: {}", String::from_utf8_lossy(&out.stderr)))
}

fn parse(text: &str) -> Result<H2load> {
    let mut r = H2load {
        rps: 0.0,
        succeeded: 0,
        failed: 0,
        non_2xx: 0,
        mean_ms: f64::NAN,
        protocol: String::new(),
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in") {
            // ` 10.00s, 12345.67 req/s, 1.23MB/s`
            r.rps = rest
                .split(',')
                .nth(1)
                .and_then(|s| s.trim().strip_suffix("req/s"))
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("requests:") {
            r.succeeded = count(rest, "succeeded");
            r.failed = count(rest, "failed");
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            r.non_2xx = count(rest, "3xx") + count(rest, "4xx") + count(rest, "5xx");
        } else if let Some(rest) = t.strip_prefix("Application protocol:") {
            r.protocol = rest.trim().to_string();
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            r.mean_ms = rest
                .split_whitespace()
                .nth(2)
                .map_or(f64::NAN, crate::parse_latency);
        }
    }
    if r.rps == 0.0 && r.succeeded == 0 {
        bail!("h2load printed no result:\n{text}");
    }
    Ok(r)
}

/// The number before `label` in a list like `10 total, 9 succeeded, 1 failed`.
fn count(list: &str, label: &str) -> u64 {
    list.split(',')
        .find_map(|part| {
            let mut words = part.split_whitespace();
            let n = words.next()?;
            (words.next()? == label).then(|| n.parse::<u64>().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_h2load_output() {
        let text = "\
starting benchmark...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 10.00s, 45678.90 req/s, 2.34MB/s
requests: 456789 total, 456789 started, 456780 done, 456770 succeeded, 10 failed, 9 errored, 1 timeout
status codes: 456770 2xx, 0 3xx, 3 4xx, 2 5xx
traffic: 23.45MB (24589234) total, 1.23MB (1289234) headers (space savings 95.12%), 5.67MB (5945678) data
                     min         max         mean         sd        +/- sd
time for request:      144us     22.65ms      6.79ms      1.83ms    80.83%
";
        let r = parse(text).unwrap();
        assert!((r.rps - 45678.90).abs() < 1e-9);
        assert_eq!(r.succeeded, 456770);
        assert_eq!(r.failed, 10);
        assert_eq!(r.non_2xx, 5);
        assert_eq!(r.protocol, "h2");
        assert!((r.mean_ms - 6.79).abs() < 1e-9);
        assert!(parse("connect failed\n").is_err());
    }
}
