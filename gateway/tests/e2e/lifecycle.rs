//! Start-up errors, probes and metrics, SIGHUP reloads, graceful drain.

use crate::harness::{Gateway, Http, app, component, eventually};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bad_routes_at_start_exit_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"this is not wasm").unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (
            "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"missing.wasm\"\n".to_string(),
            "does not exist",
        ),
        (
            "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"not.wasm\"\n".to_string(),
            "does not compile",
        ),
        (
            "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"core.wasm\"\n".to_string(),
            "does not compile",
        ),
        (
            "[[app]]\nid = \"a\"\nhost = [\"a.test\"]\n".to_string(),
            "missing field `hosts`",
        ),
    ];
    for (routes, want) in cases {
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, &routes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_gannet-gateway"))
            .arg("--routes")
            .arg(&file)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--pool-instances",
                "4",
            ])
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{routes}\n{stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in:\n{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[test]
fn a_missing_or_empty_node_token_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let cases = [
        (
            dir.path().join("no-such-file"),
            "reading the node token from",
        ),
        (empty, "holds no node token"),
    ];
    for (file, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_gannet-gateway"))
            .args(["--control-api", "http://127.0.0.1:9", "--pop", "fra1"])
            .arg("--node-token-file")
            .arg(&file)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in:\n{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_and_metrics() {
    let gw = Gateway::start(&app("hello", "hello", &["hello.test"], ""));
    assert_eq!(gw.admin_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(gw.admin_get("/readyz").await, (200, "ready\n".into()));
    assert_eq!(gw.admin_get("/nope").await.0, 404);
    let http = Http::h1();
    for _ in 0..5 {
        assert_eq!(http.get(gw.addr, "hello.test", "/").await.status, 200);
    }
    let (_, text) = gw.admin_get("/metrics").await;
    for name in [
        "gannet_requests_total",
        "gannet_request_duration_seconds_bucket",
        "gannet_instantiate_duration_seconds_bucket",
        "gannet_cache_hits_total",
        "gannet_inflight_instances",
        "gannet_routes_apps 1",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        crate::harness::metric_value(&text, "gannet_requests_total{app=\"hello\",status=\"200\"}"),
        5.0
    );
    assert_eq!(
        crate::harness::metric_value(
            &text,
            "gannet_request_duration_seconds_count{app=\"hello\"}"
        ),
        5.0
    );
    assert!(crate::harness::metric_value(&text, "gannet_cache_hits_total") >= 5.0);
    // The admin port does not serve apps, and the public port no metrics.
    let r = http.get(gw.addr, "hello.test", "/metrics").await;
    assert_eq!(r.text(), "hello, world\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_routes() {
    let gw = Gateway::start(&app("hello", "hello", &["a.test"], ""));
    let http = Http::h1();
    assert_eq!(
        http.get(gw.addr, "a.test", "/").await.text(),
        "hello, world\n"
    );
    assert_eq!(http.get(gw.addr, "b.test", "/").await.status, 404);

    // A new table: a.test moves to env, b.test appears.
    let next = [
        app("env", "env", &["a.test"], "env = { WHO = \"reloaded\" }"),
        app("hello", "hello", &["b.test"], ""),
    ]
    .concat();
    std::fs::write(gw.routes_path(), next).unwrap();
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.get(gw.addr, "b.test", "/").await.status == 200
        })
        .await
    );
    assert_eq!(
        http.get(gw.addr, "a.test", "/").await.text(),
        "WHO=reloaded\n"
    );

    // A broken file is refused; the table in service stays. (One signal at a
    // time: signals sent back to back may coalesce into one.)
    let bad_files = [
        "[[app]\nthis is not toml".to_string(),
        format!(
            "[[app]]\nid = \"x\"\nhosts = [\"c.test\"]\ncomponent = \"{}\"\n[app.limits]\nmemory = \"lots\"\n",
            component("hello").display()
        ),
    ];
    for (n, bad) in bad_files.into_iter().enumerate() {
        std::fs::write(gw.routes_path(), bad).unwrap();
        gw.signal("HUP");
        let want = (n + 1) as f64;
        assert!(
            eventually(Duration::from_secs(10), || async {
                gw.metric("gannet_routes_reloads_total{result=\"error\"}")
                    .await
                    == want
            })
            .await,
            "reload #{} was not refused",
            n + 1
        );
    }
    assert_eq!(http.get(gw.addr, "b.test", "/").await.status, 200);
    assert_eq!(
        http.get(gw.addr, "a.test", "/").await.text(),
        "WHO=reloaded\n"
    );
    assert_eq!(http.get(gw.addr, "c.test", "/").await.status, 404);
    assert!(gw.log_text().contains("routes reload failed"));
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let mut gw = Gateway::start(&app("sleep", "sleep", &["sleep.test"], ""));
    let http = Http::h1();
    let addr = gw.addr;
    let started = Instant::now();
    let in_flight = tokio::spawn(async move { http.get(addr, "sleep.test", "/?ms=2000").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("TERM");
    // New connections are refused once draining starts.
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "listener still accepting after SIGTERM"
    );
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 2000 ms\n"));
    assert!(started.elapsed() >= Duration::from_millis(2000));
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
