//! Edge sync across real processes on loopback: one control API, PoPs with
//! one and two gateways, the CLI driving it.

use crate::{Cli, example};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPERATOR: &str = "gnt_sync_test_operator_0123456789abcdef";
/// The master key every control API process of these tests runs with.
const TEST_MASTER_KEY: &str = gannet_control_api::testing::TEST_MASTER_KEY;

fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_gannet")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} missing: build the workspace (cargo test --workspace)",
        p.display()
    );
    p
}

/// A child process, killed on drop, whose stderr is kept.
struct Proc {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns and waits for each `listening on` line it prints (in order).
    fn spawn(mut cmd: Command, listening: usize) -> (Proc, Vec<String>) {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut addrs = Vec::new();
        for _ in 0..listening {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(a) => addrs.push(a),
                Err(_) => panic!(
                    "process did not start:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            }
        }
        (Proc { child, logs }, addrs)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn control_api(data: &Path, listen: &str) -> (Proc, String) {
    control_api_with(data, listen, None, None)
}

/// The control API on `database` (default: SQLite under `data`), with a
/// fault point armed (`GANNET_TEST_FAULT`) if `fault` is given.
fn control_api_with(
    data: &Path,
    listen: &str,
    database: Option<&str>,
    fault: Option<&str>,
) -> (Proc, String) {
    let mut cmd = Command::new(bin("gannet-control-api"));
    cmd.args(["--listen", listen, "--rate-limit", "0"])
        .arg("--data-dir")
        .arg(data)
        .env("GANNET_OPERATOR_TOKEN", OPERATOR)
        .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
        .env("RUST_LOG", "warn");
    if let Some(url) = database {
        cmd.args(["--database-url", url]);
    }
    if let Some(fault) = fault {
        cmd.env("GANNET_TEST_FAULT", fault);
    }
    let (p, addrs) = Proc::spawn(cmd, 1);
    (p, addrs[0].clone())
}

struct Gw {
    proc: Proc,
    url: String,
    admin: String,
}

fn gateway(api: &str, pop: &str, token: &str, state: &Path, cache: &Path) -> Gw {
    let mut cmd = Command::new(bin("gannet-gateway"));
    cmd.args(["--control-api", api, "--pop", pop, "--node-token", token])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--pool-instances",
            "32",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--cache-dir")
        .arg(cache)
        .env("RUST_LOG", "info");
    let (proc, addrs) = Proc::spawn(cmd, 2);
    Gw {
        proc,
        url: addrs[0].clone(),
        admin: addrs[1].clone(),
    }
}

/// Registers PoP `fra1` as the operator `op` and starts one gateway of it,
/// following the control API at `follow`, with its state under `dir`.
async fn fra1_gateway(cli: &Cli, op: &[(&str, &str)], follow: &str, dir: &Path) -> Gw {
    cli.ok(&["admin", "pops", "create", "fra1"], op).await;
    let node = cli
        .json(&["admin", "gateways", "token", "--pop", "fra1"], op)
        .await;
    gateway(
        follow,
        "fra1",
        node["token"].as_str().unwrap(),
        &dir.join("gw"),
        &dir.join("cache"),
    )
}

/// GET with a Host header over a new connection; (status, body).
async fn get(url: &str, host: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(format!("{url}/"))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

async fn eventually<F: AsyncFnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn metric(admin: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_follow_the_control_api_and_keep_serving_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("api");
    let (api, api_url) = control_api(&data, "127.0.0.1:0");
    let api_addr = api_url.trim_start_matches("http://").to_string();
    let cli = Cli::new();
    let op = [
        ("GANNET_ENDPOINT", api_url.as_str()),
        ("GANNET_TOKEN", OPERATOR),
    ];

    // Operator: a tenant, two PoPs, three node tokens.
    let tenant = cli
        .json(
            &[
                "admin",
                "tenants",
                "create",
                "acme",
                "--max-apps",
                "200",
                "--max-total-bytes",
                "1GiB",
            ],
            &op,
        )
        .await;
    let token = tenant["token"].as_str().unwrap().to_string();
    cli.ok(
        &[
            "admin",
            "pops",
            "create",
            "fra1",
            "--region",
            "eu",
            "--labels",
            "tier=canary",
        ],
        &op,
    )
    .await;
    cli.ok(&["admin", "pops", "create", "ams1", "--region", "eu"], &op)
        .await;
    let pops = cli.json(&["admin", "pops", "list"], &op).await;
    assert_eq!(pops[1]["labels"]["tier"], "canary", "{pops}");
    let mut gws = Vec::new();
    for (i, pop) in ["fra1", "ams1", "ams1"].into_iter().enumerate() {
        let t = cli
            .json(&["admin", "gateways", "token", "--pop", pop], &op)
            .await;
        let state = dir.path().join(format!("gw{i}"));
        let g = gateway(
            &api_url,
            pop,
            t["token"].as_str().unwrap(),
            &state,
            &dir.path().join("cache"),
        );
        gws.push((pop, t["token"].as_str().unwrap().to_string(), state, g));
    }
    // A node token reads only its own PoP.
    let r = reqwest::Client::new()
        .get(format!("{api_url}/v1/pops/ams1/state?since=-1&wait_ms=0"))
        .bearer_auth(&gws[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Tenant: deploy; the CLI returns only when every PoP serves it.
    let me = [
        ("GANNET_ENDPOINT", api_url.as_str()),
        ("GANNET_TOKEN", token.as_str()),
    ];
    cli.ok(&["apps", "create", "shop"], &me).await;
    let out = cli
        .run(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "shop",
                "--env",
                "GREETING=v1",
            ],
            &me,
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("active at 2/2 PoPs"), "{stderr}");
    for (_, _, _, g) in &gws {
        assert_eq!(
            get(&g.url, "shop-acme.localhost").await,
            Some((200, "v1, world\n".into()))
        );
    }
    let status = cli.json(&["status", "--app", "shop"], &me).await;
    assert_eq!(status["gateways"].as_array().unwrap().len(), 3, "{status}");

    // The control API goes away: gateways keep serving, new connections too.
    api.kill();
    for (_, _, _, g) in &gws {
        for _ in 0..3 {
            assert_eq!(
                get(&g.url, "shop-acme.localhost").await,
                Some((200, "v1, world\n".into()))
            );
        }
    }
    // A gateway restarted while the control API is down serves its last state.
    let (pop, node_token, state, g) = gws.remove(2);
    g.proc.kill();
    let g = gateway(
        &api_url,
        pop,
        &node_token,
        &state,
        &dir.path().join("cache"),
    );
    assert_eq!(
        get(&g.url, "shop-acme.localhost").await,
        Some((200, "v1, world\n".into()))
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", g.admin))
            .await
            .unwrap()
            .status(),
        200
    );
    gws.push((pop, node_token, state, g));

    // The control API returns on the same address: gateways resume from
    // their revision and download only what they lack.
    let (_api, _) = control_api(&data, &api_addr);
    let out = cli
        .run(
            &["deploy", &example("env"), "--app", "shop", "--env", "V=2"],
            &me,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (_, _, _, g) in &gws {
        assert_eq!(
            get(&g.url, "shop-acme.localhost").await,
            Some((200, "V=2\n".into()))
        );
    }
    assert_eq!(
        metric(&gws[0].3.admin, "gannet_sync_downloads_total").await,
        2.0,
        "hello + env, once each"
    );
    assert_eq!(
        metric(&gws[2].3.admin, "gannet_sync_downloads_total").await,
        1.0,
        "the restarted gateway had hello on disk"
    );

    // A tampered artifact: the blob on the API side no longer matches its
    // digest. Gateways refuse it, keep serving the old version, and the CLI
    // names the PoPs that refused it.
    let echo = std::fs::read(example("echo")).unwrap();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&echo)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    cli.ok(
        &["deploy", &example("echo"), "--app", "shop", "--no-activate"],
        &me,
    )
    .await;
    std::fs::write(
        data.join("blobs").join(&digest),
        b"\0asm\x0d\0\x01\0tampered",
    )
    .unwrap();
    let out = cli
        .run(
            &[
                "deploy",
                &example("echo"),
                "--app",
                "shop",
                "--wait-secs",
                "20",
            ],
            &me,
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let st = cli.json(&["status", "--app", "shop"], &me).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{st:#}");
    assert!(
        stderr.contains("PoP fra1") && stderr.contains("refused it") && stderr.contains("hash to"),
        "{stderr}"
    );
    for (_, _, _, g) in &gws {
        assert_eq!(
            get(&g.url, "shop-acme.localhost").await,
            Some((200, "V=2\n".into()))
        );
        assert!(metric(&g.admin, "gannet_sync_applies_total{result=\"nack\"}").await >= 1.0);
    }
    let status = cli.json(&["status", "--app", "shop"], &me).await;
    assert!(
        status["gateways"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("hash to"),
        "{status}"
    );
    // The operator sees every gateway's refusals; a tenant may not.
    let listed = cli.ok(&["admin", "gateways", "list"], &op).await;
    assert!(
        listed.contains("refused acme/shop@") && listed.contains("hash to"),
        "{listed}"
    );
    cli.fails(&["admin", "gateways", "list"], &me, 1, "operator token")
        .await;

    // 100 apps deployed in a burst converge on every gateway.
    for i in 0..100 {
        cli.ok(&["apps", "create", &format!("burst{i}")], &me).await;
        cli.ok(
            &[
                "deploy",
                &example("hello"),
                "--app",
                &format!("burst{i}"),
                "--env",
                &format!("GREETING=b{i}"),
                "--wait-secs",
                "0",
            ],
            &me,
        )
        .await;
    }
    for (_, _, _, g) in &gws {
        let admin = g.admin.clone();
        assert!(
            eventually(Duration::from_secs(60), async || metric(
                &admin,
                "gannet_routes_apps"
            )
            .await
                == 101.0)
            .await,
            "gateway did not converge:\n{}",
            g.proc.logs.lock().unwrap().join("\n")
        );
        for i in (0..100).step_by(9) {
            assert_eq!(
                get(&g.url, &format!("burst{i}-acme.localhost")).await,
                Some((200, format!("b{i}, world\n")))
            );
        }
    }

    // Status: every gateway reports its traffic for the version it serves,
    // counted across the revisions that did not change it.
    let status = cli.json(&["status", "--app", "shop"], &me).await;
    for g in status["gateways"].as_array().unwrap() {
        assert_eq!(g["version"], 2, "{status:#}");
        assert!(g["requests"].as_u64().unwrap() >= 2, "{status:#}");
        assert!(g["mean_latency_us"].as_u64().unwrap() > 0, "{status:#}");
    }
    let table = cli.ok(&["status", "--app", "shop"], &me).await;
    assert!(
        table.contains("fra1") && table.contains("ams1") && table.contains("MEAN MS"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gannet_dev_runs_the_readme_command() {
    // The README's command, `gannet dev examples/hello.wasm`, run where
    // `examples/hello.wasm` exists — on port 0 for each listener, so a
    // quickstart running on this machine does not collide with it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    let wasm = dir.path().join("examples/hello.wasm");
    std::fs::copy(example("hello"), &wasm).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gannet"))
        .args(["dev", "examples/hello.wasm"])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let serving = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("serving examples/hello.wasm at ") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("gannet dev did not start");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".gannet/dev.json")).unwrap())
            .unwrap();
    let gateway = info["gateway_url"].as_str().unwrap().to_string();
    let api = info["api_url"].as_str().unwrap().to_string();
    let port = gateway.rsplit(':').next().unwrap();
    assert_ne!(port, "0");
    assert_eq!(
        serving,
        format!("serving examples/hello.wasm at http://hello-dev.localhost:{port}/")
    );
    assert_eq!(
        get(&gateway, "hello-dev.localhost").await,
        Some((200, "hello, world\n".into()))
    );
    let token = info["token"].as_str().unwrap().to_string();
    let cli = Cli::new();
    let env = [
        ("GANNET_ENDPOINT", api.as_str()),
        ("GANNET_TOKEN", token.as_str()),
    ];
    let apps = cli.json(&["apps", "list"], &env).await;
    assert_eq!(apps[0]["hostnames"][0], "hello-dev.localhost");
    let admin = info["admin_url"].as_str().unwrap();
    assert!(metric(admin, "gannet_routes_apps").await >= 1.0);

    // Changing the file redeploys it.
    std::fs::copy(example("env"), &wasm).unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || get(
            &gateway,
            "hello-dev.localhost"
        )
        .await
            == Some((200, String::new())))
        .await,
        "the changed component was not redeployed"
    );
    let versions = cli.json(&["versions", "--app", "hello"], &env).await;
    assert_eq!(versions[0]["number"], 2);

    let pid = child.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_through_one_replica_wakes_pollers_on_another() {
    let Ok(admin) = std::env::var("GANNET_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs GANNET_TEST_POSTGRES_URL"
        );
        return;
    };
    let db =
        gannet_control_api::testing::TestDb::new(gannet_control_api::testing::Backend::Postgres)
            .await;
    let _ = admin;
    let dir = tempfile::tempdir().unwrap();
    let replica = |n: &str| {
        let mut cmd = Command::new(bin("gannet-control-api"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--database-url",
            &db.url,
        ])
        .arg("--data-dir")
        .arg(dir.path().join(n))
        .env("GANNET_OPERATOR_TOKEN", OPERATOR)
        .env("GANNET_MASTER_KEY", TEST_MASTER_KEY);
        let (p, a) = Proc::spawn(cmd, 1);
        (p, a[0].clone())
    };
    let (_r1, url1) = replica("r1");
    let (_r2, url2) = replica("r2");
    let cli = Cli::new();
    let op1 = [
        ("GANNET_ENDPOINT", url1.as_str()),
        ("GANNET_TOKEN", OPERATOR),
    ];
    let tenant = cli
        .json(&["admin", "tenants", "create", "acme"], &op1)
        .await;
    // The gateway follows replica 2; the tenant deploys through replica 1.
    let g = fra1_gateway(&cli, &op1, &url2, dir.path()).await;
    let me = [
        ("GANNET_ENDPOINT", url1.as_str()),
        ("GANNET_TOKEN", tenant["token"].as_str().unwrap()),
    ];
    cli.ok(&["apps", "create", "shop"], &me).await;
    // Let the gateway settle into its long poll on replica 2 first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let out = cli
        .run(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "shop",
                "--wait-secs",
                "20",
            ],
            &me,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Well inside the 30 s poll: replica 2 was woken by NOTIFY.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        get(&g.url, "shop-acme.localhost").await,
        Some((200, "hello, world\n".into()))
    );
}

/// The control API, crashed between a change and its feed row, loses
/// nothing: the change and its feed row are one transaction, so after the
/// restart what the API says is live is what every gateway serves, and the
/// change can be made again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_a_change_and_its_feed_row_loses_nothing() {
    let mut backends = vec![None];
    let pg = match std::env::var("GANNET_TEST_POSTGRES_URL") {
        Ok(_) => Some(
            gannet_control_api::testing::TestDb::new(
                gannet_control_api::testing::Backend::Postgres,
            )
            .await,
        ),
        Err(_) => None,
    };
    if let Some(db) = &pg {
        backends.push(Some(db.url.clone()));
    }
    for database in backends {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("api");
        // The second change to what gateways serve aborts the process after
        // the change is written and before its feed row is.
        let (api, url) = control_api_with(
            &data,
            "127.0.0.1:0",
            database.as_deref(),
            Some("abort:change-written:2"),
        );
        let addr = url.trim_start_matches("http://").to_string();
        let cli = Cli::new();
        let op = [
            ("GANNET_ENDPOINT", url.as_str()),
            ("GANNET_TOKEN", OPERATOR),
        ];
        let tenant = cli.json(&["admin", "tenants", "create", "acme"], &op).await;
        let bystander = cli
            .json(&["admin", "tenants", "create", "other"], &op)
            .await;
        let g = fra1_gateway(&cli, &op, &url, dir.path()).await;
        let me = [
            ("GANNET_ENDPOINT", url.as_str()),
            ("GANNET_TOKEN", tenant["token"].as_str().unwrap()),
        ];
        let them = [
            ("GANNET_ENDPOINT", url.as_str()),
            ("GANNET_TOKEN", bystander["token"].as_str().unwrap()),
        ];
        cli.ok(&["apps", "create", "shop"], &me).await;
        cli.ok(&["apps", "create", "site"], &them).await;
        cli.ok(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "site",
                "--env",
                "GREETING=site",
            ],
            &them,
        )
        .await;
        // This one crashes the API mid-transaction.
        let out = cli
            .run(
                &[
                    "deploy",
                    &example("hello"),
                    "--app",
                    "shop",
                    "--env",
                    "GREETING=v1",
                ],
                &me,
            )
            .await;
        assert!(
            !out.status.success(),
            "{database:?}: the API should have crashed"
        );
        let mut api = api;
        let exited = api.child.wait().unwrap();
        assert!(!exited.success(), "{database:?}: {exited:?}");

        // Restarted: the half-made change is gone entirely, and the gateway
        // agrees with the API about what is live.
        let (_api, _) = control_api_with(&data, &addr, database.as_deref(), None);
        let versions = cli.json(&["versions", "--app", "shop"], &me).await;
        assert_eq!(versions, serde_json::json!([]), "{database:?}");
        assert_eq!(
            get(&g.url, "shop-acme.localhost").await.map(|r| r.0),
            Some(404)
        );
        assert_eq!(
            get(&g.url, "site-other.localhost").await,
            Some((200, "site, world\n".into()))
        );
        // Made again, it reaches the gateway.
        cli.ok(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "shop",
                "--env",
                "GREETING=v1",
            ],
            &me,
        )
        .await;
        assert_eq!(
            get(&g.url, "shop-acme.localhost").await,
            Some((200, "v1, world\n".into())),
            "{database:?}"
        );
        let status = cli.json(&["status", "--app", "shop"], &me).await;
        assert_eq!(status["gateways"][0]["version"], 1, "{status:#}");
        assert_eq!(status["gateways"][0]["current"], true, "{status:#}");
    }
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Revisions commit in order across replicas: a change whose transaction
/// is held open on one replica is not overtaken by one committed through
/// another, so a gateway that has seen the later revision has seen the
/// earlier one, and applies both.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_held_open_on_one_replica_is_not_overtaken_by_another() {
    use gannet_control_api::fault::{FaultPoint, Faults};
    use gannet_control_api::testing::{Backend, TestApi, TestDb};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;
    if std::env::var("GANNET_TEST_POSTGRES_URL").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs GANNET_TEST_POSTGRES_URL"
        );
        eprintln!("skipped: two replicas need Postgres");
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let armed = Arc::new(AtomicBool::new(false));
    let held = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let hook = {
        let (armed, held, release) = (armed.clone(), held.clone(), release.clone());
        Faults::with_hook(Arc::new(move |point| {
            let (armed, held, release) = (armed.clone(), held.clone(), release.clone());
            Box::pin(async move {
                if point == FaultPoint::FeedWritten && armed.swap(false, Ordering::SeqCst) {
                    held.notify_one();
                    release.notified().await;
                }
            })
        }))
    };
    let r1 = TestApi::start_with(&db, |c| {
        c.operator_token = Some(OPERATOR.into());
        c.faults = hook;
    })
    .await;
    let r2 = TestApi::start_with(&db, |c| c.operator_token = Some(OPERATOR.into())).await;
    let cli = Cli::new();
    let op = [
        ("GANNET_ENDPOINT", r2.url()),
        ("GANNET_TOKEN", OPERATOR.to_string()),
    ];
    let op: Vec<(&str, &str)> = op.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = cli
        .json(&["admin", "tenants", "create", "tenant-a"], &op)
        .await;
    let b = cli
        .json(&["admin", "tenants", "create", "tenant-b"], &op)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let g = fra1_gateway(&cli, &op, &r2.url(), dir.path()).await;
    let (r1_url, r2_url) = (r1.url(), r2.url());
    let a_env = vec![
        ("GANNET_ENDPOINT".to_string(), r1_url.clone()),
        (
            "GANNET_TOKEN".to_string(),
            a["token"].as_str().unwrap().to_string(),
        ),
    ];
    let b_env = vec![
        ("GANNET_ENDPOINT".to_string(), r2_url.clone()),
        (
            "GANNET_TOKEN".to_string(),
            b["token"].as_str().unwrap().to_string(),
        ),
    ];
    cli.ok(&["apps", "create", "one"], &as_refs(&a_env)).await;
    cli.ok(&["apps", "create", "two"], &as_refs(&b_env)).await;

    // A's deploy through replica 1 is held with its revision taken and its
    // transaction open; B's deploy through replica 2 waits behind it.
    armed.store(true, Ordering::SeqCst);
    let first = held.notified();
    let deploy = |env: Vec<(String, String)>, app: &'static str, greeting: &'static str| {
        tokio::spawn(async move {
            let cli = Cli::new();
            cli.run(
                &[
                    "deploy",
                    &example("hello"),
                    "--app",
                    app,
                    "--env",
                    &format!("GREETING={greeting}"),
                    "--wait-secs",
                    "0",
                ],
                &as_refs(&env),
            )
            .await
        })
    };
    let held_deploy = deploy(a_env.clone(), "one", "a");
    first.await;
    let racing_deploy = deploy(b_env.clone(), "two", "b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !racing_deploy.is_finished(),
        "a later revision committed while an earlier one was still open"
    );
    release.notify_one();
    for d in [held_deploy, racing_deploy] {
        let out = d.await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The gateway, following replica 2, applies both.
    for (host, want) in [
        ("one-tenant-a.localhost", "a, world\n"),
        ("two-tenant-b.localhost", "b, world\n"),
    ] {
        assert!(
            eventually(Duration::from_secs(20), async || get(&g.url, host).await
                == Some((200, want.to_string())))
            .await,
            "{host} was not applied:\n{}",
            g.proc.logs.lock().unwrap().join("\n")
        );
    }
    for (env, app) in [(&a_env, "one"), (&b_env, "two")] {
        let status = cli.json(&["status", "--app", app], &as_refs(env)).await;
        assert_eq!(status["gateways"][0]["current"], true, "{status:#}");
    }
}

/// Requests to `url` for `host` from many users (`x-user: u-N`) until the
/// returned flag is set: the traffic a rollout's analysis needs.
fn load(
    url: String,
    host: String,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut n = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let mut batch = Vec::new();
            for _ in 0..8 {
                n += 1;
                batch.push(
                    client
                        .get(format!("{url}/"))
                        .header("host", &host)
                        .header("x-user", format!("u-{n}"))
                        .timeout(Duration::from_secs(10))
                        .send(),
                );
            }
            for r in batch {
                let _ = r.await;
            }
        }
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_canary_deploys_secrets_and_config_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("gannet-control-api"));
    cmd.args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
        .args([
            "--analysis-interval-secs",
            "1",
            "--rollout-min-requests",
            "10",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("api"))
        .env("GANNET_OPERATOR_TOKEN", OPERATOR)
        .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
        .env("RUST_LOG", "warn");
    let (_api, addrs) = Proc::spawn(cmd, 1);
    let api_url = addrs[0].clone();
    let cli = Cli::new();
    let op = [
        ("GANNET_ENDPOINT", api_url.as_str()),
        ("GANNET_TOKEN", OPERATOR),
    ];
    cli.ok(
        &[
            "admin",
            "pops",
            "create",
            "fra1",
            "--labels",
            "region=eu,tier=canary",
        ],
        &op,
    )
    .await;
    cli.ok(
        &["admin", "pops", "create", "iad1", "--labels", "region=us"],
        &op,
    )
    .await;
    let node = cli
        .json(&["admin", "gateways", "token", "--pop", "fra1"], &op)
        .await;
    let mut gw = Command::new(bin("gannet-gateway"));
    gw.args(["--control-api", &api_url, "--pop", "fra1"])
        .args(["--node-token", node["token"].as_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--pool-instances", "32", "--report-interval-secs", "1"])
        .arg("--state-dir")
        .arg(dir.path().join("gw"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("RUST_LOG", "warn");
    let (_gw, gw_addrs) = Proc::spawn(gw, 2);
    let gw_url = gw_addrs[0].clone();

    let created = cli.json(&["admin", "tenants", "create", "acme"], &op).await;
    let t = [
        ("GANNET_ENDPOINT", api_url.as_str()),
        ("GANNET_TOKEN", created["token"].as_str().unwrap()),
    ];
    // A selector nothing matches, or that does not parse, creates nothing.
    cli.fails(
        &["apps", "create", "shop", "--place", "region=mars"],
        &t,
        1,
        "no PoP matches",
    )
    .await;
    cli.fails(
        &["apps", "create", "shop", "--place", "region=="],
        &t,
        1,
        "placement",
    )
    .await;
    let out = cli
        .ok(
            &[
                "apps",
                "create",
                "shop",
                "--place",
                "region=eu",
                "--affinity",
                "header:x-user",
            ],
            &t,
        )
        .await;
    assert!(out.contains("fra1") && !out.contains("iad1"), "{out}");
    cli.ok(&["deploy", &example("hello"), "--app", "shop"], &t)
        .await;
    let host = "shop-acme.localhost";
    assert!(
        eventually(Duration::from_secs(60), async || {
            get(&gw_url, host).await.is_some_and(|(s, _)| s == 200)
        })
        .await
    );

    // A canary that traps is rolled back, and `deploy --wait` fails saying why.
    let (stop, task) = load(gw_url.clone(), host.to_string());
    let out = cli
        .run(
            &[
                "deploy",
                &example("panic"),
                "--app",
                "shop",
                "--strategy",
                "canary",
                "--steps",
                "100%",
                "--bake",
                "1s",
                "--wait",
                "--wait-secs",
                "60",
            ],
            &t,
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed canary exited 0: {stderr}");
    assert!(
        stderr.contains("rate") && stderr.contains("fra1"),
        "{stderr}"
    );
    let status = cli.json(&["rollout", "status", "--app", "shop"], &t).await;
    assert_eq!(status["phase"], "aborted", "{status:#}");
    let human = cli.ok(&["rollout", "status", "--app", "shop"], &t).await;
    assert!(human.contains("aborted"), "{human}");
    cli.fails(&["rollout", "promote", "--app", "shop"], &t, 1, "ended")
        .await;

    // The app's own policy: refused when it is not one, used by a canary
    // deploy that names no steps.
    cli.fails(
        &["apps", "policy", "shop", "--steps", "10%"],
        &t,
        1,
        "100 %",
    )
    .await;
    let out = cli
        .ok(
            &[
                "apps",
                "policy",
                "shop",
                "--steps",
                "50%; 100%",
                "--bake",
                "1s",
            ],
            &t,
        )
        .await;
    assert!(out.contains("50%; 100%"), "{out}");
    // A healthy one goes through its steps; `--wait` returns 0.
    let out = cli
        .ok(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "shop",
                "--env",
                "GREETING=v3",
                "--strategy",
                "canary",
                "--wait",
                "--wait-secs",
                "90",
            ],
            &t,
        )
        .await;
    assert!(out.contains("succeeded"), "{out}");
    let status = cli.json(&["rollout", "status", "--app", "shop"], &t).await;
    assert_eq!(
        status["steps"].as_array().map(Vec::len),
        Some(2),
        "{status:#}"
    );
    assert_eq!(status["steps"][0]["bake_ms"], 1000, "{status:#}");
    let out = cli.ok(&["apps", "policy", "shop", "--reset"], &t).await;
    assert!(out.contains("platform's"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = task.await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            get(&gw_url, host)
                .await
                .is_some_and(|(_, body)| body.starts_with("v3, world"))
        })
        .await
    );
    let apps = cli.json(&["apps", "list"], &t).await;
    assert_eq!(apps[0]["active_version"], 3, "{apps:#}");
    assert_eq!(apps[0]["pops"], serde_json::json!(["fra1"]), "{apps:#}");

    // Config over the version's env, a secret over both (from stdin, never
    // the command line); no upload needed.
    let serving = |want: &'static str| {
        let gw_url = gw_url.clone();
        async move {
            eventually(Duration::from_secs(30), async || {
                get(&gw_url, host)
                    .await
                    .is_some_and(|(_, body)| body.starts_with(want))
            })
            .await
        }
    };
    cli.ok(
        &["config", "set", "--app", "shop", "GREETING=from-config"],
        &t,
    )
    .await;
    assert!(serving("from-config, world").await);
    let secret = "s3cr3t-greeting";
    let out = cli
        .run_stdin(
            &["secrets", "set", "GREETING", "--app", "shop"],
            &t,
            &format!("{secret}\n"),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    assert!(serving("s3cr3t-greeting, world").await);
    let listed = cli.ok(&["secrets", "list", "--app", "shop"], &t).await;
    assert!(
        listed.contains("GREETING") && !listed.contains(secret),
        "{listed}"
    );
    let empty = cli
        .run_stdin(&["secrets", "set", "EMPTY", "--app", "shop"], &t, "")
        .await;
    assert!(!empty.status.success());
    cli.ok(&["secrets", "delete", "GREETING", "--app", "shop"], &t)
        .await;
    assert!(serving("from-config, world").await);
    let config = cli.json(&["config", "list", "--app", "shop"], &t).await;
    assert_eq!(config[0]["value"], "from-config", "{config:#}");
}
