//! Outbound storms: a guest firing 20,000 requests is held to its caps, the
//! gateway's open files stay bounded, the refusals are counted, and another
//! tenant keeps being served throughout.

use crate::harness::{Gateway, Http, app, shared_cache};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const MAX_CONCURRENT: usize = 16;
const MAX_PER_REQUEST: usize = 256;
const FIRED: usize = 20_000;

/// What an upstream saw: requests being answered now, the most at once,
/// and all of them.
#[derive(Default)]
struct Load {
    now: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

/// An upstream on loopback: `/slow` answers after 2 s, anything else at once.
async fn upstream() -> (SocketAddr, Arc<Load>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let load = Arc::new(Load::default());
    let seen = load.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let load = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let load = load.clone();
                    async move {
                        let now = load.now.fetch_add(1, Ordering::SeqCst) + 1;
                        load.peak.fetch_max(now, Ordering::SeqCst);
                        load.total.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        load.now.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"up"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, load)
}

/// Files the gateway process has open.
fn open_fds(gw: &Gateway) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// The outbound guest's `fire` report.
struct Report {
    ok: usize,
    failed: usize,
    text: String,
}

fn report(text: String) -> Report {
    let first = text.lines().next().unwrap_or_default();
    let field = |name: &str| {
        first
            .split_whitespace()
            .find_map(|kv| {
                kv.strip_prefix(name)?
                    .strip_prefix('=')?
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no `{name}` in the report:\n{text}"))
    };
    Report {
        ok: field("ok"),
        failed: field("failed"),
        text: text.clone(),
    }
}

/// Has the storm app fire `FIRED` requests at `url`, while the bystander is
/// asked again and again (every answer must be 200) and the gateway's open
/// files are counted. Returns the guest's report and the most files seen.
async fn storm(gw: &Gateway, url: &str) -> (Report, usize) {
    let path = format!("/?fire={FIRED}&url={url}");
    let addr = gw.addr;
    let fire = tokio::spawn(async move { Http::h1().get(addr, "storm.test", &path).await });
    let http = Http::h1();
    let mut peak_fds = 0;
    while !fire.is_finished() {
        peak_fds = peak_fds.max(open_fds(gw));
        let r = http.get(gw.addr, "site.test", "/").await;
        assert_eq!(r.status, 200, "the bystander must keep answering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = fire.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    (report(reply.text()), peak_fds)
}

fn refused(reason: &str) -> String {
    format!("gannet_outbound_refused_total{{reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_storm_is_held_to_the_caps_and_spares_other_tenants() {
    let (up, load) = upstream().await;
    let port = up.port();
    let routes = [
        app("site", "hello", &["site.test"], "tenant = \"other\""),
        app(
            "storm",
            "outbound",
            &["storm.test"],
            &format!(
                "tenant = \"acme\"\noutbound = [\"http://127.0.0.1:{port}\"]\n[app.limits]\ncpu_ms = 20000\nwall_ms = 60000"
            ),
        ),
    ]
    .concat();
    let gw = Gateway::start_with(
        &routes,
        &shared_cache(),
        &[
            "--allow-private-outbound",
            "--outbound-max-concurrent",
            &MAX_CONCURRENT.to_string(),
            "--outbound-max-per-request",
            &MAX_PER_REQUEST.to_string(),
            "--outbound-timeout-secs",
            "30",
        ],
    );
    let http = Http::h1();

    // The entry allows that scheme and port only.
    let r = http
        .get(
            gw.addr,
            "storm.test",
            &format!("/?url=http://127.0.0.1:{port}/"),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "up"));
    let r = http
        .get(
            gw.addr,
            "storm.test",
            &format!("/?url=https://127.0.0.1:{port}/"),
        )
        .await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());
    assert_eq!(http.get(gw.addr, "site.test", "/").await.status, 200);
    assert!(gw.metric(&refused("denied-host")).await >= 1.0);
    let baseline = open_fds(&gw);

    // A slow upstream: the concurrency cap refuses all but a few waves.
    let conc_before = gw.metric(&refused("concurrency-cap")).await;
    let (slow, peak_fds) = storm(&gw, &format!("http://127.0.0.1:{port}/slow")).await;
    assert_eq!(slow.ok + slow.failed, FIRED, "{}", slow.text);
    assert!(
        (1..=MAX_PER_REQUEST).contains(&slow.ok),
        "succeeded past the cap: {}",
        slow.text
    );
    assert!(slow.failed >= FIRED - MAX_PER_REQUEST, "{}", slow.text);
    assert!(
        slow.text.contains("ConnectionLimitReached"),
        "{}",
        slow.text
    );
    let peak = load.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX_CONCURRENT,
        "the upstream saw {peak} requests at once"
    );
    assert!(
        peak_fds <= baseline + 100,
        "open files rose from {baseline} to {peak_fds}"
    );
    assert!(gw.metric(&refused("concurrency-cap")).await > conc_before);

    // A fast upstream: permits come back as bodies end, until the total cap.
    let total_before = gw.metric(&refused("total-cap")).await;
    let seen_before = load.total.load(Ordering::SeqCst);
    let (fast, peak_fds) = storm(&gw, &format!("http://127.0.0.1:{port}/fast")).await;
    assert_eq!(fast.ok + fast.failed, FIRED, "{}", fast.text);
    assert!(fast.ok <= MAX_PER_REQUEST, "{}", fast.text);
    assert!(
        fast.ok > MAX_CONCURRENT,
        "permits were not released: {}",
        fast.text
    );
    let seen = load.total.load(Ordering::SeqCst) - seen_before;
    assert!(seen <= MAX_PER_REQUEST, "the upstream saw {seen} requests");
    let peak = load.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX_CONCURRENT,
        "the upstream saw {peak} requests at once"
    );
    assert!(
        peak_fds <= baseline + 100,
        "open files rose from {baseline} to {peak_fds}"
    );
    assert!(gw.metric(&refused("total-cap")).await > total_before);
    assert_eq!(http.get(gw.addr, "site.test", "/").await.status, 200);
}
