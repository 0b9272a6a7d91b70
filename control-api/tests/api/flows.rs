//! Auth, isolation, quotas, revocation, rate limits, replicas.

use crate::{Caller, assert_problem, example};
use gannet_control_api::testing::{Backend, OPERATOR_TOKEN, TEST_MASTER_KEY, TestDb, backends};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_and_revocation_is_immediate() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let acme = op.create_tenant("acme", json!({})).await;

        let r = Caller::new(&api.url(), "gnt_wrong").get("/v1/apps").await;
        assert_problem(&r, 401, "unauthorized", "unknown token");
        let r = reqwest::get(format!("{}/v1/apps", api.url()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // A tenant token cannot use operator routes, nor an operator tenant ones.
        let r = acme.get("/v1/admin/tenants").await;
        assert_problem(&r, 403, "forbidden", "operator token");
        let r = op.get("/v1/apps").await;
        assert_problem(&r, 403, "forbidden", "tenant token");

        // A second token works, is listed, and stops working the moment it is revoked.
        let r = acme.post("/v1/tokens", json!({})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let second = Caller::new(&api.url(), r.json["token"].as_str().unwrap());
        let id = r.json["info"]["id"].as_i64().unwrap();
        assert_eq!(
            second.get("/v1/whoami").await.json["tenant"]["name"],
            "acme"
        );
        let r = acme
            .call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = second.get("/v1/whoami").await;
        assert_problem(&r, 401, "unauthorized", "revoked");
        let list = acme.get("/v1/tokens").await.json;
        let revoked = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap();
        assert!(revoked["revoked_ms"].is_i64());
        let first = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] != id)
            .unwrap();
        assert!(first["last_used_ms"].is_i64(), "last use is recorded");
        // The operator token from the environment works.
        assert_eq!(
            Caller::new(&api.url(), OPERATOR_TOKEN)
                .get("/v1/whoami")
                .await
                .json["role"],
            "operator"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_see_or_touch_each_others_resources() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let a = op.create_tenant("tenant-a", json!({})).await;
        let b = op.create_tenant("tenant-b", json!({})).await;

        assert_eq!(
            a.post("/v1/apps", json!({"name": "shop"})).await.status,
            StatusCode::CREATED
        );
        let v = a
            .deploy("shop", example("hello"), &[("env", "SECRET=a")])
            .await;
        assert_eq!(v.status, StatusCode::CREATED, "{}", v.json);
        let digest = v.json["digest"].as_str().unwrap().to_string();
        assert_eq!(
            a.post(
                "/v1/apps/shop/domains",
                json!({"hostname": "shop.a.example"})
            )
            .await
            .status,
            StatusCode::CREATED
        );

        // B sees none of it, and every attempt is a plain 404.
        assert_eq!(b.get("/v1/apps").await.json, json!([]));
        for (method, path, body) in [
            (Method::GET, "/v1/apps/shop", None),
            (Method::GET, "/v1/apps/shop/versions", None),
            (
                Method::POST,
                "/v1/apps/shop/rollback",
                Some(json!({"to": 1})),
            ),
            (
                Method::POST,
                "/v1/apps/shop/domains",
                Some(json!({"hostname": "evil.b.example"})),
            ),
            (Method::DELETE, "/v1/apps/shop/domains/shop.a.example", None),
        ] {
            let r = b.call(method.clone(), path, body).await;
            assert_problem(&r, 404, "not-found", "no app `shop`");
        }
        let r = b.deploy("shop", example("hello"), &[]).await;
        assert_problem(&r, 404, "not-found", "no app `shop`");
        let (status, _) = b.download(&digest).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, bytes) = a.download(&digest).await;
        assert_eq!((status, bytes), (StatusCode::OK, example("hello")));
        let a_tokens = a.get("/v1/tokens").await.json;
        let a_token_id = a_tokens[0]["id"].as_i64().unwrap();
        let r = b
            .call(Method::DELETE, &format!("/v1/tokens/{a_token_id}"), None)
            .await;
        assert_problem(&r, 404, "not-found", "no active token");
        assert_eq!(
            a.get("/v1/whoami").await.status,
            StatusCode::OK,
            "A's token still works"
        );
        let audit_b = b.get("/v1/audit").await.json.to_string();
        assert!(
            !audit_b.contains("shop"),
            "B's audit shows A's actions: {audit_b}"
        );
        let audit_a = a.get("/v1/audit").await.json.to_string();
        for action in ["app.create", "version.create", "domain.add"] {
            assert!(audit_a.contains(action), "{action} missing from {audit_a}");
        }

        // B may use the same app name (its own hostname), not A's custom hostname.
        let r = b.post("/v1/apps", json!({"name": "shop"})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.json["hostnames"], json!(["shop-tenant-b.localhost"]));
        b.deploy("shop", example("hello"), &[]).await;
        let r = b
            .post(
                "/v1/apps/shop/domains",
                json!({"hostname": "shop.a.example"}),
            )
            .await;
        assert_problem(&r, 409, "conflict", "already in use");
        // A's app is untouched.
        let app = a.get("/v1/apps/shop").await.json;
        assert_eq!(
            app["hostnames"],
            json!(["shop-tenant-a.localhost", "shop.a.example"])
        );
        assert_eq!(
            a.get("/v1/apps/shop/versions").await.json[0]["env"]["SECRET"],
            "a"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_hold_at_and_over_each_limit() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let hello = example("hello");
        let t = op
            .create_tenant(
                "small",
                json!({
                    "max_apps": 2,
                    "max_component_size": 100_000,
                    "max_total_bytes": 200_000,
                    "max_versions_per_app": 2,
                    "max_memory": 64 << 20,
                    "max_cpu_ms": 20
                }),
            )
            .await;
        // Apps: at the limit, then over.
        for name in ["one", "two"] {
            assert_eq!(
                t.post("/v1/apps", json!({"name": name})).await.status,
                StatusCode::CREATED
            );
        }
        let r = t.post("/v1/apps", json!({"name": "three"})).await;
        assert_problem(&r, 403, "quota-exceeded", "quota of 2 apps");
        // Limit ceilings: at the ceiling accepted, above refused.
        let r = t
            .deploy(
                "one",
                hello.clone(),
                &[("memory", "64MiB"), ("cpu_ms", "20")],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        let r = t.deploy("one", hello.clone(), &[("memory", "65MiB")]).await;
        assert_problem(
            &r,
            403,
            "limit-above-quota",
            "above the tenant's ceiling of 64MiB",
        );
        let r = t.deploy("one", hello.clone(), &[("cpu_ms", "21")]).await;
        assert_problem(&r, 403, "limit-above-quota", "cpu_ms 21");
        // Component size: over the limit is 413.
        let r = t.deploy("one", example("echo-js"), &[]).await;
        assert_problem(&r, 413, "payload-too-large", "larger than");
        // Versions kept: the third deploy prunes the oldest.
        for _ in 0..2 {
            assert_eq!(
                t.deploy("one", hello.clone(), &[]).await.status,
                StatusCode::CREATED
            );
        }
        let versions = t.get("/v1/apps/one/versions").await.json;
        let numbers: Vec<i64> = versions
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["number"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, vec![3, 2]);
        // Total bytes: hello + echo fit (< 200 KB), a third distinct component does not.
        let r = t.deploy("two", example("echo"), &[]).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        let r = t.deploy("two", example("env"), &[]).await;
        assert_problem(&r, 403, "quota-exceeded", "stored components");
        let me = t.get("/v1/whoami").await.json;
        assert_eq!(
            me["stored_bytes"].as_u64().unwrap(),
            (hello.len() + example("echo").len()) as u64
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| {
        c.rate_limit_per_sec = 1.0;
        c.rate_limit_burst = 3.0;
    })
    .await;
    let op = Caller::operator(&api.url());
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(op.get("/v1/whoami").await.status.as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_postgres_serve_each_others_uploads() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let start = |dir: &std::path::Path| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gannet-control-api"))
            .args(["--listen", "127.0.0.1:0", "--database-url", &db.url])
            .arg("--data-dir")
            .arg(dir)
            .env("GANNET_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let addr = loop {
            let line = lines.next().expect("control API exited").unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        (KillOnDrop(child), addr)
    };
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (_p1, url1) = start(d1.path());
    let (_p2, url2) = start(d2.path());
    let t1 = Caller::operator(&url1)
        .create_tenant("acme", json!({}))
        .await;
    let t2 = Caller::new(&url2, &t1.token);
    assert_eq!(
        t1.post("/v1/apps", json!({"name": "shop"})).await.status,
        StatusCode::CREATED
    );
    let v = t1.deploy("shop", example("hello"), &[]).await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.json);
    let digest = v.json["digest"].as_str().unwrap();
    // The other replica knows the version and serves the blob it never received.
    assert_eq!(
        t2.get("/v1/apps/shop/versions").await.json[0]["digest"],
        digest
    );
    let (status, bytes) = t2.download(digest).await;
    assert_eq!((status, bytes), (StatusCode::OK, example("hello")));
    // And the reverse.
    let v = t2.deploy("shop", example("echo"), &[]).await;
    let (status, bytes) = t1.download(v.json["digest"].as_str().unwrap()).await;
    assert_eq!((status, bytes), (StatusCode::OK, example("echo")));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the control API binary; returns it and its URL, draining stderr
/// lines into `lines`.
fn spawn_api(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    KillOnDrop,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gannet-control-api"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let url = loop {
        let line = lines.next().expect("control API exited").unwrap();
        seen.lock().unwrap().push(line.clone());
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (KillOnDrop(child), url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn first_start_prints_an_operator_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (p1, url, lines) = spawn_api(&["--data-dir", data], &[]);
    let token = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("operator token (shown once; keep it): ")
                .map(str::to_string)
        })
        .expect("bootstrap token printed");
    assert_eq!(
        Caller::new(&url, &token).get("/v1/whoami").await.json["role"],
        "operator"
    );
    drop(p1);
    // Restarted on the same SQLite database: no new token, the old one works.
    let (_p2, url, lines) = spawn_api(&["--data-dir", data], &[]);
    assert!(
        !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("operator token"))
    );
    assert_eq!(
        Caller::new(&url, &token).get("/v1/whoami").await.status,
        StatusCode::OK
    );
    assert!(
        dir.path().join("gannet.db").is_file(),
        "SQLite database under --data-dir"
    );
}
