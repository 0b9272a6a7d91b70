//! Guest behaviours: panics, logs, outbound requests, JS and Python guests.

use crate::harness::{Gateway, Http, app, eventually, shared_cache};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_a_500_without_detail_and_the_next_request_works() {
    let gw = Gateway::start(&app("panic", "panic", &["panic.test"], ""));
    let http = Http::h1();
    for _ in 0..3 {
        let r = http.get(gw.addr, "panic.test", "/").await;
        assert_eq!(r.status, 500);
        assert_eq!(r.header("gannet-error"), Some("trap"));
        assert!(
            !r.text().contains("secret-detail-42"),
            "guest detail leaked: {}",
            r.text()
        );
        let ok = http.get(gw.addr, "panic.test", "/?ok=1").await;
        assert_eq!((ok.status, ok.text().as_str()), (200, "fine\n"));
    }
    assert_eq!(
        gw.metric("gannet_guest_failures_total{app=\"panic\",kind=\"trap\"}")
            .await,
        3.0
    );
    // The panic message reaches the gateway's log, tagged with the app.
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.log_text()
                .lines()
                .any(|l| l.contains("secret-detail-42") && l.contains("app=panic"))
        })
        .await,
        "panic message not logged:\n{}",
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_is_logged_with_labels_and_rate_limited() {
    let gw = Gateway::start_with(
        &app("print", "print", &["print.test"], ""),
        &shared_cache(),
        &["--guest-log-lines-per-second", "50"],
    );
    let http = Http::h1();
    let r = http.get(gw.addr, "print.test", "/?lines=2").await;
    assert_eq!(r.text(), "printed 2 lines\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let logs = gw.log_text();
            logs.lines().any(|l| {
                l.contains("stdout line 1 from the print guest")
                    && l.contains("app=print")
                    && l.contains("stream=\"stdout\"")
                    && l.contains("version=")
            }) && logs
                .lines()
                .any(|l| l.contains("stderr line 0 from the print guest"))
        })
        .await,
        "guest output not in logs:\n{}",
        gw.log_text()
    );
    // A flood: 2 x 5000 lines in one request; at most ~50/s get through.
    let r = http.get(gw.addr, "print.test", "/?lines=5000").await;
    assert_eq!(r.status, 200);
    let logged = gw
        .log_text()
        .lines()
        .filter(|l| l.contains("from the print guest"))
        .count();
    assert!(
        logged <= 150,
        "{logged} guest lines logged despite the rate limit"
    );
    let dropped = gw
        .metric("gannet_guest_log_lines_dropped_total{app=\"print\"}")
        .await;
    assert!(dropped >= 9_800.0, "dropped lines counted: {dropped}");
}

/// A tiny upstream HTTP server on loopback for outbound tests.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"from upstream"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_requests_follow_the_allowlist_and_the_private_ip_rule() {
    let up = upstream().await;
    let routes = [
        app(
            "allowed",
            "outbound",
            &["allowed.test"],
            "outbound = [\"127.0.0.1\", \"localhost\"]",
        ),
        app("denied", "outbound", &["denied.test"], ""),
    ]
    .concat();
    let url = format!("/?url=http://127.0.0.1:{}/x", up.port());
    let http = Http::h1();

    let open = Gateway::start_with(&routes, &shared_cache(), &["--allow-private-outbound"]);
    let r = http.get(open.addr, "allowed.test", &url).await;
    assert_eq!((r.status, r.text().as_str()), (200, "from upstream"));
    assert_eq!(r.header("x-upstream-status"), Some("200"));
    let r = http.get(open.addr, "denied.test", &url).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());
    // A name on the allowlist that resolves to loopback is still checked.
    let r = http
        .get(
            open.addr,
            "allowed.test",
            &format!("/?url=http://localhost:{}/", up.port()),
        )
        .await;
    assert_eq!(r.status, 200);

    // Without the operator's permission, loopback is refused even when listed.
    let closed = Gateway::start(&routes);
    let r = http.get(closed.addr, "allowed.test", &url).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("DestinationIpProhibited"), "{}", r.text());
    let r = http
        .get(
            closed.addr,
            "allowed.test",
            &format!("/?url=http://localhost:{}/", up.port()),
        )
        .await;
    assert!(r.text().contains("DestinationIpProhibited"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_and_python_guests_run_unchanged() {
    let routes = [
        app("hello-js", "hello-js", &["hello-js.test"], ""),
        app("echo-js", "echo-js", &["echo-js.test"], ""),
        app("hello-py", "hello-py", &["hello-py.test"], ""),
        app("echo-py", "echo-py", &["echo-py.test"], ""),
    ]
    .concat();
    let gw = Gateway::start(&routes);
    let http = Http::h1();
    for _ in 0..3 {
        let r = http.get(gw.addr, "hello-js.test", "/").await;
        assert_eq!((r.status, r.text().as_str()), (200, "hello from js\n"));
        let r = http.get(gw.addr, "hello-py.test", "/").await;
        assert_eq!((r.status, r.text().as_str()), (200, "hello from python\n"));
    }
    let payload = Bytes::from(
        (0..300_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    for host in ["echo-js.test", "echo-py.test"] {
        let r = http
            .send(gw.addr, host, "POST", "/p?q=1", &[], payload.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.header("x-echo-method"), Some("POST"), "{host}");
        assert_eq!(r.header("x-echo-path"), Some("/p?q=1"), "{host}");
        assert_eq!(r.body, payload, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_links_wasi_but_grants_nothing() {
    // A listener the guest would reach if sockets were granted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gw = Gateway::start(&app(
        "probe",
        "probe",
        &["probe.test"],
        "env = { ONLY = \"this\" }",
    ));
    let r = Http::h1()
        .get(
            gw.addr,
            "probe.test",
            &format!("/?connect=127.0.0.1:{port}"),
        )
        .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for attempt in [
        "read_dir /:",
        "read /etc/passwd:",
        "write /tmp/x:",
        "read_dir .:",
        "tcp connect",
        "tcp bind:",
        "udp bind:",
        "dns lookup:",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(attempt))
            .unwrap_or_else(|| panic!("no `{attempt}` line in:\n{text}"));
        assert!(line.contains(": denied"), "sandbox allowed {line}");
    }
    assert!(text.contains("stdin bytes: 0\n"), "{text}");
    assert!(text.contains("env keys: ONLY\n"), "{text}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the guest reached a loopback socket");
}
