//! Each limit triggers with its status while another app keeps answering.

use crate::harness::{Gateway, Http, app};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

/// Awaits `fut` while a bystander app (`hello.test`) is asked again and
/// again; every bystander request must answer 200, during and after.
async fn with_bystander<F: std::future::Future>(gw: &Gateway, fut: F) -> F::Output {
    let http = Http::h1();
    let mut fut = std::pin::pin!(fut);
    let out = loop {
        tokio::select! {
            out = &mut fut => break out,
            r = http.get(gw.addr, "hello.test", "/") => {
                assert_eq!(r.status, 200, "the bystander app must keep answering");
            }
        }
    };
    assert_eq!(http.get(gw.addr, "hello.test", "/").await.status, 200);
    out
}

fn routes(extra_app: String) -> String {
    [app("hello", "hello", &["hello.test"], ""), extra_app].concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_limit_is_504_and_does_not_stall_other_apps() {
    let gw = Gateway::start(&routes(app(
        "spin",
        "spin",
        &["spin.test"],
        "[app.limits]\ncpu_ms = 50",
    )));
    let http = Http::h1();
    let r = with_bystander(
        &gw,
        http.send(gw.addr, "spin.test", "GET", "/", &[], Bytes::new()),
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("gannet-error"), Some("cpu-limit"));
    assert_eq!(
        gw.metric("gannet_guest_failures_total{app=\"spin\",kind=\"cpu-limit\"}")
            .await,
        1.0
    );
    // Once the response has started, the limit cuts the body instead.
    let resp = http
        .request(
            gw.addr,
            "spin.test",
            "GET",
            "/?after_head=1",
            &[],
            crate::harness::empty_body(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await;
    assert!(
        body.is_err(),
        "a body cut by the CPU limit must not end cleanly"
    );
    assert_eq!(
        gw.metric("gannet_guest_failures_total{app=\"spin\",kind=\"cpu-limit\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sleeping_is_not_cpu_time_but_wall_time_is_limited() {
    let routes = [
        app("hello", "hello", &["hello.test"], ""),
        app(
            "sleepy",
            "sleep",
            &["sleepy.test"],
            "[app.limits]\ncpu_ms = 50\nwall_ms = 30000",
        ),
        app(
            "hasty",
            "sleep",
            &["hasty.test"],
            "[app.limits]\ncpu_ms = 50\nwall_ms = 500",
        ),
    ]
    .concat();
    let gw = Gateway::start(&routes);
    let http = Http::h1();
    let t = Instant::now();
    let (slept, timed_out) = tokio::join!(
        http.get(gw.addr, "sleepy.test", "/?ms=5000"),
        http.get(gw.addr, "hasty.test", "/?ms=5000"),
    );
    assert_eq!(
        (slept.status, slept.text().as_str()),
        (200, "slept 5000 ms\n")
    );
    assert!(t.elapsed() >= Duration::from_millis(5000));
    assert_eq!(timed_out.status, 504);
    assert_eq!(timed_out.header("gannet-error"), Some("wall-limit"));
    let r = http.get(gw.addr, "hello.test", "/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_fails_the_guest_not_the_gateway() {
    let gw = Gateway::start(&routes(app(
        "hog",
        "hog",
        &["hog.test"],
        // CPU raised: touching 32 MiB may take more than 50 ms of CPU on
        // a slow machine, and this test is about memory.
        "[app.limits]\nmemory = \"32MiB\"\ncpu_ms = 1000",
    )));
    let http = Http::h1();
    let r = with_bystander(
        &gw,
        http.send(gw.addr, "hog.test", "GET", "/?mb=64", &[], Bytes::new()),
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(r.header("gannet-error"), Some("memory-limit"));
    // Within the limit the same guest works.
    let r = http.get(gw.addr, "hog.test", "/?mb=4").await;
    assert_eq!((r.status, r.text().as_str()), (200, "allocated 4 MiB\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn body_and_header_limits_are_413_and_431() {
    let gw = Gateway::start(&routes(app(
        "echo",
        "echo",
        &["echo.test"],
        "[app.limits]\nmax_request_body = \"1MiB\"\nmax_request_headers = \"1KiB\"",
    )));
    let http = Http::h1();
    // Refused on the declared length, before any of the body is read (a
    // client using `Expect: 100-continue` never has to send it).
    let head = crate::harness::raw_head(
        gw.addr,
        "POST / HTTP/1.1\r\nhost: echo.test\r\ncontent-length: 2097152\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("gannet-error: body-too-large"), "{head}");
    // At the limit it is accepted.
    let r = http
        .send(
            gw.addr,
            "echo.test",
            "POST",
            "/",
            &[],
            Bytes::from(vec![b'x'; 1 << 20]),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 1 << 20));
    let big = "v".repeat(2048);
    let r = http
        .send(
            gw.addr,
            "echo.test",
            "GET",
            "/",
            &[("x-big", &big)],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.header("gannet-error"), Some("headers-too-large"));
    let r = http.get(gw.addr, "hello.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.metric("gannet_rejections_total{kind=\"body-too-large\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("gannet_rejections_total{kind=\"headers-too-large\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_is_503_with_retry_after() {
    let gw = Gateway::start(&routes(app(
        "slow",
        "sleep",
        &["slow.test"],
        "[app.limits]\nmax_inflight = 2",
    )));
    let http = Http::h1();
    let first = {
        let addr = gw.addr;
        tokio::spawn(async move { http.get(addr, "slow.test", "/?ms=1500").await })
    };
    let second = {
        let addr = gw.addr;
        tokio::spawn(async move { http.get(addr, "slow.test", "/?ms=1500").await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = http.get(gw.addr, "slow.test", "/?ms=10").await;
    assert_eq!(third.status, 503);
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(third.header("gannet-error"), Some("app-busy"));
    // Other apps are unaffected, and the two running requests finish.
    assert_eq!(http.get(gw.addr, "hello.test", "/").await.status, 200);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    // With the permits back, the app answers again.
    assert_eq!(http.get(gw.addr, "slow.test", "/?ms=10").await.status, 200);
}
