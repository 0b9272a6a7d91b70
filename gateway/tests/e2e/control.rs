//! The real control API, served in-process on loopback over a fresh SQLite
//! database, with one PoP; gateways follow it as real processes. A small
//! JSON client over real sockets drives it as operators and tenants do.

use crate::harness::{Gateway, Http};
use bytes::Bytes;
use gannet_control_api::desired_state::Scope;
use gannet_control_api::testing::{Backend, OPERATOR_TOKEN, TestApi, TestDb};
use gannet_model::Sha256Digest;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// The PoP every test gateway belongs to.
pub const POP: &str = "pop1";

pub struct Platform {
    pub api: TestApi,
    pub node_token: String,
    _db: TestDb,
}

impl Platform {
    /// The API on a fresh database, with PoP `pop1` and a node token for it.
    pub async fn start() -> Platform {
        let db = TestDb::new(Backend::Sqlite).await;
        let api = TestApi::start(&db).await;
        let mut p = Platform {
            api,
            node_token: String::new(),
            _db: db,
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
