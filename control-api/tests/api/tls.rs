//! The control API over HTTPS: real TLS handshakes on loopback with
//! certificates made by CAs created in the test. A client trusting the CA
//! is served; one trusting another CA, or only the public roots, fails the
//! handshake; plain HTTP to the TLS port gets nothing. The binary serves
//! HTTPS with `--tls-cert`/`--tls-key`, refuses a pair it cannot serve at
//! start, and on SIGHUP takes a new pair or keeps the current one when the
//! new one is unusable.

use gannet_control_api::testing::{
    OPERATOR_TOKEN, TEST_MASTER_KEY, TestApi, TestCa, TestDb, backends,
};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The names a test server certificate carries: what clients dial.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A client that trusts `ca` and nothing else, with no pooled connections
/// (every request makes its own handshake).
fn trusting(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `err` and its sources, `: `-separated (what went wrong in the handshake
/// is a few levels down).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        parts.push(e.to_string());
        next = e.source();
    }
    parts.join(": ")
}

/// GET `url` with the operator token: the status, or why there was none.
async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let resp = client
        .get(url)
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| chain(&e))?;
    Ok((status, body))
}

/// Asserts that `url` fails with a certificate its client does not trust.
async fn untrusted(client: &reqwest::Client, url: &str) {
    match get(client, url).await {
        Ok(r) => panic!("{url} answered {r:?} to a client that must not trust it"),
        Err(why) => assert!(why.contains("UnknownIssuer"), "{url}: {why}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_clients_that_trust_its_ca_and_fails_the_handshake_for_others() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let ca = TestCa::new("Gannet test CA");
        let other = TestCa::new("Some other CA");
        let api = TestApi::start_tls(&db, &ca.issue(&SERVER_NAMES)).await;
        let https = api.https_url();
        let tls_port = api.tls_addr.unwrap().port();

        // Trusting the CA: served, by IP address and by DNS name.
        let client = trusting(&ca);
        assert_eq!(
            get(&client, &format!("{https}/healthz")).await.unwrap(),
            (200, "ok\n".to_string())
        );
        let (status, whoami) = get(&client, &format!("{https}/v1/whoami")).await.unwrap();
        assert_eq!(status, 200, "{whoami}");
        assert!(whoami.contains("operator"), "{whoami}");
        let by_name = format!("https://localhost:{tls_port}/healthz");
        assert_eq!(get(&client, &by_name).await.unwrap().0, 200);

        // Trusting another CA, or only the public roots: the handshake fails
        // on the certificate, and the request is never sent.
        untrusted(&trusting(&other), &format!("{https}/v1/whoami")).await;
        let public_roots = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        untrusted(&public_roots, &format!("{https}/v1/whoami")).await;

        // Plain HTTP to the TLS port gets no HTTP answer; TLS to the plain
        // port gets no handshake.
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = get(&plain, &format!("http://127.0.0.1:{tls_port}/healthz")).await;
        assert!(r.is_err(), "plain HTTP to the TLS port answered {r:?}");
        let r = get(
            &client,
            &format!("https://127.0.0.1:{}/healthz", api.addr.port()),
        )
        .await;
        assert!(r.is_err(), "TLS to the plain port answered {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_refused() {
    let db = TestDb::new(gannet_control_api::testing::Backend::Sqlite).await;
    let ca = TestCa::new("Gannet test CA");
    let api = TestApi::start_tls(&db, &ca.issue(&["api.example.com"])).await;
    match get(&trusting(&ca), &format!("{}/healthz", api.https_url())).await {
        Ok(r) => panic!("a certificate for api.example.com was accepted for 127.0.0.1: {r:?}"),
        Err(why) => assert!(
            why.contains("NotValidForName") || why.contains("not valid for name"),
            "{why}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_certificate_serves_from_the_next_handshake() {
    let db = TestDb::new(gannet_control_api::testing::Backend::Sqlite).await;
    let (first, second) = (TestCa::new("First CA"), TestCa::new("Second CA"));
    let api = TestApi::start_tls(&db, &first.issue(&SERVER_NAMES)).await;
    let url = format!("{}/healthz", api.https_url());
    assert_eq!(get(&trusting(&first), &url).await.unwrap().0, 200);
    untrusted(&trusting(&second), &url).await;

    let next = second.issue(&SERVER_NAMES);
    let key = gannet_server::tls::certified_key(next.cert_pem.as_bytes(), next.key_pem.as_bytes())
        .unwrap();
    api.tls_cert.as_ref().unwrap().replace(key);
    assert_eq!(get(&trusting(&second), &url).await.unwrap().0, 200);
    untrusted(&trusting(&first), &url).await;
}

// ---------------------------------------------------------------------------
// The binary.

/// A control API process, killed on drop, whose stderr is kept.
struct ApiProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ApiProcess {
    /// Starts `gannet-control-api` with `args` on loopback port 0 and
    /// waits for its `listening on` line; returns it and the URL printed.
    fn spawn(data: &Path, args: &[&OsStr]) -> (ApiProcess, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gannet-control-api"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .env("GANNET_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
            .env("RUST_LOG", "info")
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
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let api = ApiProcess { child, logs };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => (api, url),
            Err(_) => panic!("the control API did not start:\n{}", api.log_text()),
        }
    }

    fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until a log line contains `text`, and returns it.
    fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` with `client` until it answers 200.
async fn eventually_served(client: &reqwest::Client, url: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(get(client, url).await, Ok((200, _))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_https_and_sighup_reloads_the_pair_or_keeps_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (TestCa::new("First CA"), TestCa::new("Second CA"));
    let (cert, key) = first.issue(&SERVER_NAMES).write(dir.path(), "server");
    let (api, url) = ApiProcess::spawn(
        &dir.path().join("data"),
        &[
            OsStr::new("--tls-cert"),
            cert.as_os_str(),
            OsStr::new("--tls-key"),
            key.as_os_str(),
        ],
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let whoami = format!("{url}/v1/whoami");
    let (status, body) = get(&trusting(&first), &whoami).await.unwrap();
    assert_eq!(status, 200, "{body}");
    untrusted(&trusting(&second), &whoami).await;

    // A new pair, then SIGHUP: served from the next handshake on.
    second.issue(&SERVER_NAMES).write(dir.path(), "server");
    api.hangup();
    assert!(
        eventually_served(&trusting(&second), &whoami).await,
        "{}",
        api.log_text()
    );
    untrusted(&trusting(&first), &whoami).await;
    api.wait_for_log("TLS certificate reloaded");

    // Pairs that cannot be served: each is logged with its reason and the
    // current certificate keeps serving.
    let mismatched = first.issue(&SERVER_NAMES);
    let other_key = first.issue(&SERVER_NAMES).key_pem;
    let cases = [
        (mismatched.cert_pem.clone(), other_key, "does not match"),
        (
            "not a certificate\n".to_string(),
            mismatched.key_pem.clone(),
            "no certificate found",
        ),
        (
            mismatched.cert_pem.clone(),
            String::new(),
            "no private key found",
        ),
    ];
    for (i, (cert_pem, key_pem, reason)) in cases.into_iter().enumerate() {
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        api.hangup();
        let line = api.wait_for_log(reason);
        assert!(
            line.contains("keeping the current certificate"),
            "case {i}: {line}"
        );
        assert_eq!(
            get(&trusting(&second), &whoami).await.unwrap().0,
            200,
            "case {i}: {}",
            api.log_text()
        );
        untrusted(&trusting(&first), &whoami).await;
    }
    // Gone files too.
    std::fs::remove_file(&key).unwrap();
    api.hangup();
    let line = api.wait_for_log("No such file or directory");
    assert!(line.contains("keeping the current certificate"), "{line}");
    assert_eq!(get(&trusting(&second), &whoami).await.unwrap().0, 200);
}

#[test]
fn a_pair_that_cannot_be_served_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Gannet test CA");
    let (cert, key) = ca.issue(&SERVER_NAMES).write(dir.path(), "good");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.issue(&SERVER_NAMES).key_pem).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(&Path, &Path, &str); 4] = [
        (&cert, &other_key, "does not match"),
        (&garbage, &key, "no certificate found"),
        (&cert, &garbage, "no private key found"),
        (&missing, &key, "reading"),
    ];
    for (cert, key, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_gannet-control-api"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("GANNET_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in:\n{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
    // Half a pair is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_gannet-control-api"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}
