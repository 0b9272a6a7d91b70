//! Uploads and requests made to exhaust the control API, grouped by threat.
//! Each test checks the attacker is bounded, answered clearly (with
//! `Retry-After` where waiting helps), and that another tenant is not
//! slowed or refused.

use crate::{Caller, assert_problem, example, files_in, worker};
use gannet_control_api::ApiConfig;
use gannet_control_api::compile::CompileIsolation;
use gannet_control_api::compile_worker::WorkerLimits;
use gannet_control_api::store::now_ms;
use gannet_control_api::testing::{Backend, TestApi, TestDb, backends, with_custom_section};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

/// Live compile workers of `api`: child processes of this test process
/// started as `__compile-worker` on a file under its data directory (other
/// tests in this binary run their own).
fn live_workers(api: &TestApi) -> Vec<u32> {
    let me = std::process::id();
    let dir = api.state.config.data_dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            if ppid != me || state == "Z" {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            (cmdline.contains("__compile-worker") && cmdline.contains(&dir)).then_some(pid)
        })
        .collect()
}

/// Waits up to `limit` for `api` to have no live compile worker.
async fn no_workers_within(api: &TestApi, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if live_workers(api).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live_workers(api).is_empty()
}

async fn create_app(t: &Caller, app: &str) {
    let r = t.post("/v1/apps", json!({"name": app})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
}

// ---------------------------------------------------------------------------
// Threat: a tenant floods the API with uploads, each a compile, hoping to
// take every CPU and the API down for everyone.

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_uploads_at_once_are_bounded_and_a_bystander_is_not_slowed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| {
        c.compile.max_concurrent = 1;
        c.compile.max_queued = 1;
        c.compile.per_tenant = 4;
    })
    .await;
    let op = Caller::operator(&api.url());
    let flood = op.create_tenant("flood", json!({})).await;
    let bystander = op.create_tenant("bystander", json!({})).await;
    create_app(&flood, "app").await;
    create_app(&bystander, "shop").await;
    let hello = example("hello");
    // Distinct bytes: every upload needs its own compile.
    let uploads: Vec<_> = (0..100)
        .map(|i| {
            let t = flood.clone();
            let bytes = with_custom_section(&hello, &format!("flood{i}"), 64);
            tokio::spawn(async move { t.deploy("app", bytes, &[]).await })
        })
        .collect();

    // Throughout, the bystander's calls each answer within a second, and
    // never more than one compile runs.
    let mut calls = 0;
    loop {
        for path in ["/v1/whoami", "/v1/apps"] {
            let started = Instant::now();
            let r = bystander.get(path).await;
            let took = started.elapsed();
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.json);
            assert!(
                took < Duration::from_secs(1),
                "{path} took {took:?} during the flood"
            );
            calls += 1;
        }
        let running = live_workers(&api).len();
        assert!(running <= 1, "{running} compiles at once");
        if uploads.iter().all(|u| u.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(calls >= 2);

    let (mut created, mut refused) = (0, 0);
    for upload in uploads {
        let r = upload.await.unwrap();
        match r.status.as_u16() {
            201 => created += 1,
            429 => {
                assert_problem(&r, 429, "too-many-uploads", "4 uploads in progress");
                assert_eq!(r.retry_after.as_deref(), Some("2"), "{}", r.json);
                refused += 1;
            }
            503 => {
                assert_problem(&r, 503, "compiler-busy", "busy compiling");
                assert_eq!(r.retry_after.as_deref(), Some("5"), "{}", r.json);
                refused += 1;
            }
            _ => panic!("unexpected {}: {}", r.status, r.json),
        }
    }
    assert!(created >= 1, "no upload got through");
    assert!(refused >= 1, "nothing was refused");
    assert_eq!(created + refused, 100);
    // Every accepted upload is a version (the newest 10 are kept).
    let versions = flood.get("/v1/apps/app/versions").await.json;
    assert_eq!(versions.as_array().unwrap().len(), created.min(10));
    assert!(no_workers_within(&api, Duration::from_secs(5)).await);
    assert!(files_in(&api.state.config.data_dir.join("tmp")).is_empty());
    // Afterwards both tenants upload as usual.
    let r = bystander.deploy("shop", hello.clone(), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = flood.deploy("app", hello, &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
}

// ---------------------------------------------------------------------------
// Threat: a tenant uploads a component that takes long (or much CPU) to
// compile, hoping to hold a compile slot forever.

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_past_its_time_or_cpu_bound_is_killed_and_answered_clearly() {
    let cases = [
        (
            "wall clock",
            WorkerLimits {
                wall: Duration::from_millis(300),
                ..worker()
            },
            "took longer than the 0.3 s allowed",
        ),
        (
            "CPU time",
            WorkerLimits {
                cpu: Duration::from_secs(1),
                wall: Duration::from_secs(120),
                ..worker()
            },
            "more than the 1 s of CPU time allowed",
        ),
    ];
    for (what, limits, detail) in cases {
        let db = TestDb::new(Backend::Sqlite).await;
        let api = crate::start_with(&db, |c| {
            c.compile.isolation = CompileIsolation::ChildProcess(limits);
        })
        .await;
        let op = Caller::operator(&api.url());
        let t = op.create_tenant("acme", json!({})).await;
        create_app(&t, "big").await;
        // A 12 MB JavaScript runtime: seconds of Cranelift.
        let r = t.deploy("big", example("echo-js"), &[]).await;
        assert_problem(&r, 422, "compile-limit-exceeded", detail);
        assert!(
            live_workers(&api).is_empty(),
            "{what}: the worker is still running"
        );
        assert_eq!(
            t.get("/v1/apps/big/versions").await.json,
            json!([]),
            "{what}"
        );
        assert!(
            files_in(&api.state.config.data_dir.join("blobs")).is_empty(),
            "{what}: blob stored"
        );
        assert!(
            files_in(&api.state.config.data_dir.join("tmp")).is_empty(),
            "{what}: temp file left behind"
        );
    }
}

// ---------------------------------------------------------------------------
// Threat: a tenant starts uploads and hangs up, hoping the compiles run on.

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_upload_kills_its_compile() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start(&db).await;
    let op = Caller::operator(&api.url());
    let t = op.create_tenant("acme", json!({})).await;
    create_app(&t, "big").await;
    let upload = tokio::spawn({
        let t = t.clone();
        async move { t.deploy("big", example("echo-js"), &[]).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_workers(&api).is_empty() {
        assert!(!upload.is_finished(), "the upload ended before compiling");
        assert!(Instant::now() < deadline, "no compile worker started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The client hangs up mid-compile.
    upload.abort();
    assert!(
        no_workers_within(&api, Duration::from_secs(10)).await,
        "the compile of a dropped upload still runs"
    );
    assert_eq!(t.get("/v1/apps/big/versions").await.json, json!([]));
}

// ---------------------------------------------------------------------------
// Threat: a tenant spreads requests over many tokens and replicas to pass
// a per-token, per-replica rate limit.

fn limited(c: &mut ApiConfig) {
    c.tenant_rate_limit = 10;
    c.tenant_rate_window = Duration::from_secs(3600);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_rate_limit_holds_across_tokens_and_replicas() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        // Not within 10 s of a window's end: the test stays in one window.
        let window_ms = 3_600_000;
        let left = window_ms - now_ms().rem_euclid(window_ms);
        if left < 10_000 {
            tokio::time::sleep(Duration::from_millis(left as u64 + 100)).await;
        }
        let a = crate::start_with(&db, limited).await;
        let b = crate::start_with(&db, limited).await;
        let op = Caller::operator(&a.url());
        let flood = op.create_tenant("flood", json!({})).await;
        let bystander = op.create_tenant("bystander", json!({})).await;
        // Request 1: a second token, minted through the other replica.
        let minted = Caller::new(&b.url(), &flood.token)
            .post("/v1/tokens", json!({}))
            .await;
        assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.json);
        let on_a = Caller::new(&a.url(), &flood.token);
        let on_b = Caller::new(&b.url(), minted.json["token"].as_str().unwrap());
        // Requests 2–10 alternate tokens and replicas: all pass.
        for i in 0..9 {
            let c = if i % 2 == 0 { &on_a } else { &on_b };
            let r = c.get("/v1/whoami").await;
            assert_eq!(r.status, StatusCode::OK, "{backend:?} request {}", i + 2);
        }
        // The 11th and on are refused on either replica, with either token.
        for c in [&on_a, &on_b, &on_a] {
            let r = c.get("/v1/apps").await;
            assert_problem(&r, 429, "rate-limited", "at most 10 every 3600 s");
            let secs: u64 = r
                .retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            assert!((1..=3600).contains(&secs), "Retry-After: {secs}");
        }
        // The bystander is not affected, on either replica.
        for url in [a.url(), b.url()] {
            let r = Caller::new(&url, &bystander.token).get("/v1/whoami").await;
            assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        }
        // Operators are not tenant-limited.
        assert_eq!(
            Caller::operator(&b.url()).get("/v1/whoami").await.status,
            StatusCode::OK
        );
    }
}

// ---------------------------------------------------------------------------
// Threat: a tenant mints tokens without end (each a new per-token budget).

#[tokio::test(flavor = "multi_thread")]
async fn the_21st_token_is_refused_naming_the_quota() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let t = op.create_tenant("acme", json!({})).await;
        let bystander = op.create_tenant("bystander", json!({})).await;
        let me = t.get("/v1/whoami").await.json;
        assert_eq!(me["tenant"]["quotas"]["max_tokens"], 20, "{me}");
        // The initial token and 18 more: 19 of 20. Ten at once end at 20.
        for _ in 0..18 {
            let r = t.post("/v1/tokens", json!({})).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        }
        let racing = (0..10).map(|_| {
            let t = t.clone();
            async move { t.post("/v1/tokens", json!({})).await }
        });
        let replies = futures::future::join_all(racing).await;
        let created = replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{backend:?}");
        for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_problem(r, 403, "quota-exceeded", "quota of 20 tokens");
        }
        let r = t.post("/v1/tokens", json!({})).await;
        assert_problem(&r, 403, "quota-exceeded", "quota of 20 tokens");
        let tokens = t.get("/v1/tokens").await.json;
        assert_eq!(tokens.as_array().unwrap().len(), 20, "{backend:?}");
        // Revoking one makes room for one.
        let id = tokens[1]["id"].as_i64().unwrap();
        let r = t
            .call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(
            t.post("/v1/tokens", json!({})).await.status,
            StatusCode::CREATED
        );
        assert_problem(
            &t.post("/v1/tokens", json!({})).await,
            403,
            "quota-exceeded",
            "quota of 20 tokens",
        );
        // The bystander still mints.
        assert_eq!(
            bystander.post("/v1/tokens", json!({})).await.status,
            StatusCode::CREATED
        );
        // The quota is the operator's to set.
        let small = op.create_tenant("small", json!({"max_tokens": 1})).await;
        assert_problem(
            &small.post("/v1/tokens", json!({})).await,
            403,
            "quota-exceeded",
            "quota of 1 tokens",
        );
    }
}

// ---------------------------------------------------------------------------
// Threat: a tenant asks gateways to run more instances of its app at once
// than its quota allows.

#[tokio::test(flavor = "multi_thread")]
async fn max_inflight_above_the_tenants_ceiling_is_refused() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let t = op.create_tenant("acme", json!({"max_inflight": 10})).await;
        let other = op.create_tenant("other", json!({})).await;
        create_app(&t, "shop").await;
        create_app(&other, "shop").await;
        let hello = example("hello");
        let r = t
            .deploy("shop", hello.clone(), &[("max_inflight", "11")])
            .await;
        assert_problem(
            &r,
            403,
            "limit-above-quota",
            "max_inflight 11 is above the tenant's ceiling of 10",
        );
        assert_eq!(t.get("/v1/apps/shop/versions").await.json, json!([]));
        let r = t
            .deploy("shop", hello.clone(), &[("max_inflight", "10")])
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        assert_eq!(r.json["limits"]["max_inflight"], 10);
        // The default ceiling is 100.
        let r = other
            .deploy("shop", hello.clone(), &[("max_inflight", "101")])
            .await;
        assert_problem(&r, 403, "limit-above-quota", "ceiling of 100");
        let r = other
            .deploy("shop", hello, &[("max_inflight", "100")])
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    }
}
