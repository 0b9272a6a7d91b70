//! Control API tests over real sockets, each on SQLite and on Postgres.

mod bounds;
mod domains;
mod feed;
mod flows;
mod gateways;
mod hostile;
mod leadership;
mod managed;
mod openapi;
mod ownership;
mod platform;
mod settings;
mod tls;
mod uploads;

use gannet_control_api::ApiConfig;
use gannet_control_api::compile::CompileIsolation;
use gannet_control_api::compile_worker::WorkerLimits;
use gannet_control_api::testing::{OPERATOR_TOKEN, TestApi, TestDb};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Compiles in child processes of the `gannet-control-api` binary (a test
/// binary cannot be a compile worker), with the default bounds.
pub fn worker() -> WorkerLimits {
    WorkerLimits::new(env!("CARGO_BIN_EXE_gannet-control-api").into())
}

/// The API on `db`, compiling in bounded child processes as in production.
pub async fn start(db: &TestDb) -> TestApi {
    start_with(db, |_| {}).await
}

/// [`start`] after `tweak` adjusts the config.
pub async fn start_with(db: &TestDb, tweak: impl FnOnce(&mut ApiConfig)) -> TestApi {
    TestApi::start_with(db, |c| {
        c.compile.isolation = CompileIsolation::ChildProcess(worker());
        tweak(c);
    })
    .await
}

/// An example component's bytes.
pub fn example(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|_| panic!("{} missing: run `bash examples/build.sh`", p.display()))
}

/// A component that exports the handler name but imports Spin and Fastly
/// interfaces the platform does not provide.
pub fn foreign_imports_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (import "fermyon:spin/key-value@2.0.0" (instance))
            (import "fastly:api/http-req@0.1.0" (instance))
            (import "wasi:cli/environment@0.2.9" (instance))
            (instance $h)
            (export "wasi:http/incoming-handler@0.2.12" (instance $h))
        )"#,
    )
    .expect("valid WAT")
}

/// A caller with a token.
#[derive(Clone)]
pub struct Caller {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

/// A response: status and JSON (or text) body.
pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
    pub content_type: String,
    /// `Retry-After`, if sent.
    pub retry_after: Option<String>,
}

impl Caller {
    pub fn new(base: &str, token: &str) -> Self {
        Caller {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub fn operator(base: &str) -> Self {
        Self::new(base, OPERATOR_TOKEN)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::reply(req.send().await.expect("request")).await
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.expect("body");
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply {
            status,
            json,
            content_type,
            retry_after,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Uploads `bytes` as a new version of `app` with `query`.
    pub async fn deploy(&self, app: &str, bytes: Vec<u8>, query: &[(&str, &str)]) -> Reply {
        let resp = self
            .http
            .post(format!("{}/v1/apps/{app}/versions", self.base))
            .bearer_auth(&self.token)
            .query(query)
            .body(bytes)
            .send()
            .await
            .expect("upload");
        Self::reply(resp).await
    }

    /// Downloads a component.
    pub async fn download(&self, digest: &str) -> (StatusCode, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}/v1/components/{digest}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("download");
        (resp.status(), resp.bytes().await.expect("bytes").to_vec())
    }

    /// Creates tenant `name` (with quota overrides) and returns a caller for it.
    pub async fn create_tenant(&self, name: &str, quotas: Value) -> Caller {
        let r = self
            .post("/v1/admin/tenants", json!({"name": name, "quotas": quotas}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        Caller::new(&self.base, r.json["token"].as_str().expect("token"))
    }
}

/// Asserts a problem+json reply of `kind` with `status` whose detail contains `detail`.
pub fn assert_problem(r: &Reply, status: u16, kind: &str, detail: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.json);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.json);
    assert_eq!(
        r.json["type"],
        format!("https://gannet.dev/problems/{kind}"),
        "{}",
        r.json
    );
    let d = r.json["detail"].as_str().unwrap_or("");
    assert!(d.contains(detail), "detail {d:?} should contain {detail:?}");
}

/// Files directly under `dir` (none if it does not exist).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}
