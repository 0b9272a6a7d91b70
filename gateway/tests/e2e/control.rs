//! The real control API, served in-process on loopback over a fresh SQLite
//! database, with one PoP; gateways follow it as real processes. A small
//! JSON client over real sockets drives it as operators and tenants do.

use crate::harness::{Gateway, Http, component, eventually, shared_cache};
use bytes::Bytes;
use gannet_control_api::ApiConfig;
use gannet_control_api::desired_state::Scope;
use gannet_control_api::testing::{Backend, OPERATOR_TOKEN, TestApi, TestCa, TestCert, TestDb};
use gannet_model::Sha256Digest;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// The PoP every test gateway belongs to.
pub const POP: &str = "pop1";

pub struct Platform {
    pub api: TestApi,
    pub node_token: String,
    /// Its database (a fresh SQLite file under its data directory).
    pub db: TestDb,
}

impl Platform {
    /// The API on a fresh database, with PoP `pop1` and a node token for it.
    pub async fn start() -> Platform {
        let db = TestDb::new(Backend::Sqlite).await;
        let api = TestApi::start(&db).await;
        Self::with_pop(db, api).await
    }

    /// [`Platform::start`], the API also serving HTTPS with `cert` on
    /// `api.https_url()` (the test drives it over plain HTTP).
    pub async fn start_https(cert: &TestCert) -> Platform {
        let db = TestDb::new(Backend::Sqlite).await;
        let api = TestApi::start_tls(&db, cert).await;
        Self::with_pop(db, api).await
    }

    /// [`Platform::start`] after `tweak` adjusts the API's config (e.g.
    /// its ACME directory).
    pub async fn start_with(tweak: impl FnOnce(&mut ApiConfig)) -> Platform {
        let db = TestDb::new(Backend::Sqlite).await;
        let api = TestApi::start_with(&db, tweak).await;
        Self::with_pop(db, api).await
    }

    async fn with_pop(db: TestDb, api: TestApi) -> Platform {
        let mut p = Platform {
            api,
            node_token: String::new(),
            db,
        };
        let (status, _) = p
            .call(
                OPERATOR_TOKEN,
                "POST",
                "/v1/admin/pops",
                Some(json!({"name": POP})),
            )
            .await;
        assert_eq!(status, 201);
        let (status, node) = p
            .call(
                OPERATOR_TOKEN,
                "POST",
                &format!("/v1/admin/pops/{POP}/gateways"),
                None,
            )
            .await;
        assert_eq!(status, 201, "{node}");
        p.node_token = node["token"].as_str().unwrap().to_string();
        p
    }

    pub fn url(&self) -> String {
        self.api.url()
    }

    /// A gateway of `pop1` following this API.
    pub fn gateway(&self, state: &Path, cache: &Path) -> Gateway {
        Gateway::follow(&self.url(), POP, &self.node_token, state, cache, &[])
    }

    /// A JSON request with a bearer token; (status, JSON body or text).
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        self.send(token, method, path, "application/json", body)
            .await
    }

    async fn send(
        &self,
        token: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let reply = Http::h1()
            .send(
                self.api.addr,
                "api",
                method,
                path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", content_type),
                ],
                body,
            )
            .await
            .unwrap();
        let json =
            serde_json::from_slice(&reply.body).unwrap_or_else(|_| Value::String(reply.text()));
        (reply.status, json)
    }

    /// Creates a tenant with `quotas`; returns its token.
    pub async fn tenant(&self, name: &str, quotas: Value) -> String {
        let (status, t) = self
            .call(
                OPERATOR_TOKEN,
                "POST",
                "/v1/admin/tenants",
                Some(json!({"name": name, "quotas": quotas})),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        t["token"].as_str().unwrap().to_string()
    }

    /// Creates an app of the token's tenant.
    pub async fn app(&self, token: &str, name: &str) {
        let (status, a) = self
            .call(token, "POST", "/v1/apps", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "{a}");
    }

    /// Uploads `bytes` as a new version of `app` (`query`: the upload's query
    /// string, e.g. `env=GREETING%3Dv2`); (status, JSON).
    pub async fn upload(
        &self,
        token: &str,
        app: &str,
        bytes: Vec<u8>,
        query: &str,
    ) -> (u16, Value) {
        let path = format!("/v1/apps/{app}/versions?{query}");
        self.send(token, "POST", &path, "application/wasm", Bytes::from(bytes))
            .await
    }

    /// Uploads and asserts it was accepted.
    pub async fn deploy(&self, token: &str, app: &str, bytes: Vec<u8>, query: &str) -> Value {
        let (status, v) = self.upload(token, app, bytes, query).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Makes `bytes` the live version of `tenant`'s `app` without the
    /// upload's validation — as a validator bug, or a platform whose limits
    /// changed, would let through — and feeds the change to gateways.
    pub async fn force_version(&self, tenant: &str, app: &str, bytes: &[u8]) {
        let state = &self.api.state;
        let digest = Sha256Digest::of(bytes);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        state.blobs.put(&digest, file.path()).await.unwrap();
        let tenant_id = state.store.tenant_id(tenant).await.unwrap().unwrap();
        let app = state.store.app_row(tenant_id, app).await.unwrap().unwrap();
        let created = state
            .store
            .create_version(
                tenant_id,
                app.id,
                &digest,
                bytes.len() as u64,
                &Default::default(),
                &Default::default(),
                &[],
                true,
                state.blobs.as_ref(),
            )
            .await
            .unwrap();
        state
            .notifier
            .bump(created.revision.unwrap(), Scope::Everywhere);
    }

    /// The app's status as its tenant sees it.
    pub async fn status(&self, token: &str, app: &str) -> Value {
        let (status, s) = self
            .call(token, "GET", &format!("/v1/apps/{app}/status"), None)
            .await;
        assert_eq!(status, 200, "{s}");
        s
    }

    /// Waits until `check` holds for the app's status; returns it.
    pub async fn wait_status(
        &self,
        token: &str,
        app: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(token, app).await;
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "status never matched: {s:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every gateway applied the app's latest change.
pub fn live(status: &Value) -> bool {
    let gateways = status["gateways"].as_array().cloned().unwrap_or_default();
    !gateways.is_empty() && gateways.iter().all(|g| g["current"] == true)
}

/// The one gateway's entry in an app's status.
pub fn gateway0(status: &Value) -> &Value {
    &status["gateways"][0]
}

// ---------------------------------------------------------------------------
// The control-plane link over TLS: node tokens never cross plain HTTP, and
// a control API whose certificate does not verify is not followed, while
// the gateway keeps serving what it has.

fn example(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

async fn body(gw: &Gateway, host: &str) -> (u16, String) {
    let r = Http::h1().get(gw.addr, host, "/").await;
    (r.status, r.text())
}

/// Waits until `host` answers `want` on `gw`.
async fn serves(gw: &Gateway, host: &str, want: &str) -> bool {
    eventually(Duration::from_secs(30), || async {
        body(gw, host).await == (200, want.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_follows_an_https_control_api_with_its_ca_and_keeps_its_state_when_it_cannot_trust_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Gannet control-plane CA");
    let wrong = TestCa::new("Someone else's CA");
    let p = Platform::start_https(&ca.issue(&["localhost", "127.0.0.1"])).await;
    let ca_file = ca.write(dir.path(), "ca.pem");
    let wrong_file = wrong.write(dir.path(), "wrong-ca.pem");
    let (state, cache) = (dir.path().join("state"), shared_cache());
    let https = p.api.https_url();
    let host = "shop-acme.localhost";
    let acme = p.tenant("acme", json!({})).await;
    p.app(&acme, "shop").await;
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dv1")
        .await;
    let follow = |ca: &Path| {
        let ca = ca.to_str().unwrap().to_string();
        Gateway::follow(
            &https,
            POP,
            &p.node_token,
            &state,
            &cache,
            &["--control-api-ca", ca.as_str()],
        )
    };

    // Trusting the control API's CA: the state, the component download and
    // the ACK all cross TLS.
    let gw = follow(ca_file.as_path());
    assert!(serves(&gw, host, "v1, world\n").await, "{}", gw.log_text());
    p.wait_status(&acme, "shop", Duration::from_secs(30), live)
        .await;
    assert!(!gw.log_text().contains("not trusted"), "{}", gw.log_text());
    drop(gw);

    // Restarted on the same state directory trusting another CA, or only
    // the public roots: it serves its last state from disk, says why it
    // cannot sync, and takes no new version.
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dv2")
        .await;
    for trusted in [Some(wrong_file.as_path()), None] {
        let gw = match trusted {
            Some(ca) => follow(ca),
            None => Gateway::follow(&https, POP, &p.node_token, &state, &cache, &[]),
        };
        assert_eq!(body(&gw, host).await, (200, "v1, world\n".to_string()));
        assert!(
            // (The registration's failure may say so before the first
            // poll's does.)
            eventually(Duration::from_secs(30), || async {
                let logs = gw.log_text();
                logs.contains("control API certificate not trusted")
                    && logs.contains("keeping the current state")
            })
            .await,
            "{}",
            gw.log_text()
        );
        let logs = gw.log_text();
        assert!(
            logs.contains("UnknownIssuer") && logs.contains("--control-api-ca"),
            "{logs}"
        );
        assert!(logs.contains("keeping the current state"), "{logs}");
        // Polls keep failing; the last state keeps serving, and the gateway
        // stays ready.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(body(&gw, host).await, (200, "v1, world\n".to_string()));
        assert_eq!(gw.admin_get("/readyz").await.0, 200);
        assert_eq!(gw.metric("gannet_sync_downloads_total").await, 0.0);
        drop(gw);
    }
    let status = p.status(&acme, "shop").await;
    assert_eq!(gateway0(&status)["version"], 1, "{status:#}");

    // Trusting the right CA again, it catches up.
    let gw = follow(ca_file.as_path());
    assert!(serves(&gw, host, "v2, world\n").await, "{}", gw.log_text());
    p.wait_status(&acme, "shop", Duration::from_secs(30), live)
        .await;
}

#[test]
fn plain_http_to_a_remote_control_api_and_unusable_ca_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let ca = TestCa::new("Gannet control-plane CA").write(dir.path(), "ca.pem");
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("http://192.0.2.10:7070", vec![], "refusing control API URL"),
        ("http://api.example.com", vec![], "use https://"),
        ("http://0.0.0.0:7070", vec![], "refusing control API URL"),
        ("http://localhost.example.com:7070", vec![], "refusing"),
        ("ftp://127.0.0.1:1", vec![], "control API URL"),
        ("127.0.0.1:1", vec![], "control API URL"),
        (
            "https://127.0.0.1:7443",
            vec!["--control-api-ca".into(), garbage.display().to_string()],
            "holds no certificate",
        ),
        (
            "https://127.0.0.1:7443",
            vec!["--control-api-ca".into(), missing.display().to_string()],
            "reading the CA certificates",
        ),
    ];
    for (url, extra, want) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gannet-gateway"))
            .args(["--control-api", url, "--pop", POP, "--node-token", "gnt_x"])
            .args(&extra)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url} {extra:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{url}: wanted {want:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
    // A loopback http:// URL and a usable CA file pass the checks: the
    // gateway starts (and is stopped at once).
    for (url, extra) in [
        ("http://127.0.0.1:9", vec![]),
        ("http://[::1]:9", vec![]),
        (
            "https://127.0.0.1:9",
            vec!["--control-api-ca".to_string(), ca.display().to_string()],
        ),
    ] {
        let gw = Gateway::follow(
            url,
            POP,
            "gnt_x",
            &dir.path().join("state"),
            &dir.path().join("cache"),
            &extra.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(!gw.log_text().contains("refusing"), "{}", gw.log_text());
    }
}

// ---------------------------------------------------------------------------
// Registration: a gateway says what it runs and where it listens when it
// starts, and the operator sees it.

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_registers_and_the_operator_sees_what_it_runs_and_where_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start().await;
    let gw = p.gateway(&dir.path().join("state"), &shared_cache());
    let plain = gw.addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let g = loop {
        let (status, list) = p
            .call(OPERATOR_TOKEN, "GET", "/v1/admin/gateways", None)
            .await;
        assert_eq!(status, 200, "{list}");
        let g = list[0].clone();
        let listed = g["listen"]
            .as_array()
            .is_some_and(|l| l.iter().any(|a| a.as_str() == Some(plain.as_str())));
        if listed && g["lag"] == 0 {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never registered and caught up: {list:#}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(g["pop"], POP, "{g}");
    assert_eq!(g["arch"], std::env::consts::ARCH, "{g}");
    assert_eq!(g["gannet_version"], env!("CARGO_PKG_VERSION"), "{g}");
    assert_eq!(g["engine_compat"].as_str().map(str::len), Some(32), "{g}");
    assert_eq!(g["boot_id"].as_str().map(str::len), Some(16), "{g}");
    assert!(g["registered_ms"].as_i64().is_some(), "{g}");
    assert_eq!(g["silent"], false, "{g}");
    assert!(
        gw.log_text().contains("registered with the control API"),
        "{}",
        gw.log_text()
    );
}
