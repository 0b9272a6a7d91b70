//! Fair sharing between tenants: a tenant that fills the gateway's instance
//! slots leaves room for another, and its excess is answered `tenant-busy`
//! after the busy hold; a tenant spinning on many requests gets half of a
//! guest thread, not all of it; a tenant growing memory leaves the reserve
//! of the shared memory budget to the others. (Latency under CPU storms is
//! measured by `gannet-loadtest --noisy`, not here.)

use crate::harness::{Gateway, Http, app, shared_cache};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_filling_the_slots_leaves_room_for_another() {
    // The harness's 64 slots, a quarter kept back: one tenant alone gets 48.
    let routes = [
        app(
            "sleepy",
            "sleep",
            &["sleepy.test"],
            "tenant = \"noisy\"\n[app.limits]\nmax_inflight = 100",
        ),
        app("site", "hello", &["site.test"], "tenant = \"quiet\""),
    ]
    .concat();
    let gw = Gateway::start_with(&routes, &shared_cache(), &[]);
    let http = Http::h1();
    // Warm both components (a cold compile would hold the first requests).
    assert_eq!(http.get(gw.addr, "site.test", "/").await.status, 200);
    assert_eq!(http.get(gw.addr, "sleepy.test", "/?ms=1").await.status, 200);

    let storm: Vec<_> = (0..60)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let start = Instant::now();
                let r = Http::h1().get(addr, "sleepy.test", "/?ms=3000").await;
                (r, start.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The bystander tenant is served while the noisy one holds its share.
    let quiet: Vec<_> = (0..5)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move { Http::h1().get(addr, "site.test", "/").await })
        })
        .collect();
    for q in quiet {
        let r = q.await.unwrap();
        assert_eq!(
            r.status,
            200,
            "bystander refused: {:?}",
            r.header("gannet-error")
        );
    }

    let (mut served, mut refused) = (0, 0);
    for s in storm {
        let (r, took) = s.await.unwrap();
        match r.status {
            200 => served += 1,
            503 => {
                refused += 1;
                assert_eq!(r.header("gannet-error"), Some("tenant-busy"));
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(
                    took >= Duration::from_millis(200),
                    "answered after {took:?}, not held"
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (40..=48).contains(&served),
        "the noisy tenant ran {served} of 60 at once on 64 slots"
    );
    assert_eq!(served + refused, 60);
    assert_eq!(
        gw.metric("gannet_rejections_total{kind=\"tenant-busy\"}")
            .await,
        refused as f64
    );
    // Its slots back, the noisy tenant is served again.
    assert_eq!(http.get(gw.addr, "sleepy.test", "/?ms=1").await.status, 200);
}

/// Sends `n` concurrent requests for `host` + `path`; each answers with its
/// status and how long it took.
fn storm(
    addr: std::net::SocketAddr,
    n: usize,
    host: &'static str,
    path: &'static str,
) -> Vec<tokio::task::JoinHandle<(crate::harness::Reply, Duration)>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let start = Instant::now();
                let r = Http::h1().get(addr, host, path).await;
                (r, start.elapsed())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_spinning_on_many_requests_gets_half_a_guest_thread_not_all_of_it() {
    // One guest thread, so every spinner competes for the same CPU turn.
    // Each spinner burns until its 300 ms CPU limit stops it.
    let routes = [
        app(
            "burn",
            "spin",
            &["burn.test"],
            "tenant = \"noisy\"\n[app.limits]\ncpu_ms = 300\nmax_inflight = 20",
        ),
        app(
            "probe",
            "spin",
            &["probe.test"],
            "tenant = \"quiet\"\n[app.limits]\ncpu_ms = 300",
        ),
    ]
    .concat();
    let gw = Gateway::start_with(&routes, &shared_cache(), &["--guest-threads", "1"]);
    let noisy = storm(gw.addr, 12, "burn.test", "/");
    tokio::time::sleep(Duration::from_millis(150)).await;

    // The quiet tenant's one spinner starts last. Sharing turns by tenant,
    // it gets every other turn and ends after about 2 × 300 ms; sharing
    // them by request (one of 13), it would end with the others, after
    // 13 × 300 ms. Compared with the noisy spinners of the same run, so a
    // slow machine stretches both.
    let quiet = storm(gw.addr, 1, "probe.test", "/")
        .remove(0)
        .await
        .unwrap();
    assert_eq!(quiet.0.status, 504, "{}", quiet.0.text());
    assert_eq!(quiet.0.header("gannet-error"), Some("cpu-limit"));

    let mut noisy_took = Vec::new();
    for s in noisy {
        let (r, took) = s.await.unwrap();
        // No starvation either way: every noisy spinner ran to its limit.
        assert_eq!(r.header("gannet-error"), Some("cpu-limit"), "{}", r.text());
        noisy_took.push(took);
    }
    noisy_took.sort();
    let median = noisy_took[noisy_took.len() / 2];
    assert!(
        quiet.1 * 3 < median,
        "the quiet tenant's spinner took {:?}, the noisy tenant's median {median:?}",
        quiet.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_growing_memory_leaves_the_reserve_of_the_budget_to_others() {
    // A 256 MiB budget with a quarter kept back: one tenant may hold 192 MiB.
    // (Touching 80 MiB can take more than the default 50 ms of CPU on a
    // slow machine; this test is about memory, so CPU limits are raised.)
    let routes = [
        app(
            "hog",
            "hog",
            &["hog.test"],
            "tenant = \"noisy\"\n[app.limits]\nmemory = \"128MiB\"\ncpu_ms = 1000",
        ),
        app(
            "small",
            "hog",
            &["small.test"],
            "tenant = \"quiet\"\n[app.limits]\nmemory = \"128MiB\"\ncpu_ms = 1000",
        ),
    ]
    .concat();
    let gw = Gateway::start_with(&routes, &shared_cache(), &["--memory-budget", "256MiB"]);
    assert_eq!(gw.metric("gannet_memory_budget_bytes").await, 268435456.0);

    // Three hogs of 80 MiB each, held for 3 s and started one after the
    // other: two fit the tenant's part, the third is refused its memory
    // (it traps, as at its own limit).
    let mut hogs = Vec::new();
    for n in 1..=2 {
        hogs.extend(storm(gw.addr, 1, "hog.test", "/?mb=80&hold_ms=3000"));
        wait_for_memory(&gw, (n * 80) << 20).await;
    }
    hogs.extend(storm(gw.addr, 1, "hog.test", "/?mb=80&hold_ms=3000"));
    let (third, _) = hogs.pop().unwrap().await.unwrap();
    assert_eq!(third.status, 500, "{}", third.text());
    assert_eq!(third.header("gannet-error"), Some("memory-limit"));

    // The bystander tenant gets its 40 MiB from the reserve meanwhile.
    let small = Http::h1().get(gw.addr, "small.test", "/?mb=40").await;
    assert_eq!(small.status, 200, "{:?}", small.header("gannet-error"));
    assert_eq!(small.text(), "allocated 40 MiB\n");

    for h in hogs {
        let (r, _) = h.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.header("gannet-error"));
        assert_eq!(r.text(), "allocated 80 MiB\n");
    }
    assert!(gw.metric("gannet_memory_budget_refusals_total").await >= 1.0);
    // Everything is given back when the instances are dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric("gannet_memory_used_bytes").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "memory still charged after the requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway's instances hold at least `bytes` of memory.
async fn wait_for_memory(gw: &Gateway, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.metric("gannet_memory_used_bytes").await < bytes as f64 {
        assert!(
            Instant::now() < deadline,
            "instances never held {bytes} bytes; the gateway logged:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
