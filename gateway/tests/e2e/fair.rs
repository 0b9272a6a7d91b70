//! Fair sharing between tenants: a tenant that fills the gateway's instance
//! slots leaves room for another, and its excess is answered `tenant-busy`
//! after the busy hold. (CPU sharing is tested in the runtime's
//! `fair::cpu` tests and measured by `gannet-loadtest --noisy`.)

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
