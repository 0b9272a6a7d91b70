//! Tenants' own certificates on custom hostnames: refused with what to
//! fix and nothing stored; listed with issuer, names and expiry; rotated
//! in place; sent to gateways with their keys, never to tenants; sealed
//! with the master key at rest (bound to their hostname); and out of reach
//! of another tenant.

use crate::{Caller, Reply, assert_problem, example};
use gannet_control_api::compile::{CompileConfig, CompileIsolation};
use gannet_control_api::master_key::{MasterKey, certificate_key_aad};
use gannet_control_api::testing::{
    Backend, OPERATOR_TOKEN, TEST_MASTER_KEY, TestApi, TestCa, TestCert, TestDb, backends,
    test_master_key,
};
use gannet_control_api::{ApiConfig, AppState};
use gannet_server::tls::{CertInfo, certified_key};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const HOST: &str = "shop.example.com";

/// `openssl genpkey -algorithm X25519`: a key type no TLS server signs with.
const X25519_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEIJhYVvk5WiIreXxZuM8GNtgjAvcsfT+F4W5wfoaA7RdB
-----END PRIVATE KEY-----
";

/// A tenant's caller that fails the test when a response it gets holds a
/// private key: a PEM key boundary (`…PRIVATE KEY-----`; refusals may name
/// the block types in words), or a line of a key it was told about.
struct Tenant {
    caller: Caller,
    secrets: std::sync::Mutex<Vec<String>>,
}

impl Tenant {
    fn new(caller: Caller) -> Tenant {
        Tenant {
            caller,
            secrets: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Responses must not show any line of `cert`'s key.
    fn forbid(&self, cert: &TestCert) {
        self.secrets
            .lock()
            .unwrap()
            .extend(secret_lines(&cert.key_pem));
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let r = self.caller.call(method, path, body).await;
        let text = r.json.to_string();
        assert!(
            !text.contains("PRIVATE KEY-----"),
            "{path}: a private key in a tenant's response: {text}"
        );
        for line in self.secrets.lock().unwrap().iter() {
            assert!(
                !text.contains(line.as_str()),
                "{path}: a line of a private key in a tenant's response"
            );
        }
        r
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates `app` and, with `deploy`, serves hello from it.
    async fn app(&self, app: &str, deploy: bool) {
        let r = self.post("/v1/apps", json!({"name": app})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        if deploy {
            let r = self.caller.deploy(app, example("hello"), &[]).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        }
    }
}

/// The base64 lines of a PEM key (what would show if it leaked).
fn secret_lines(key_pem: &str) -> Vec<String> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `POST /v1/apps/{app}/domains` with a certificate.
fn with_pem(hostname: &str, cert_pem: &str, key_pem: &str) -> Value {
    json!({"hostname": hostname, "certificate": {"cert_pem": cert_pem, "key_pem": key_pem}})
}

fn with_cert(hostname: &str, cert: &TestCert) -> Value {
    with_pem(hostname, &cert.cert_pem, &cert.key_pem)
}

/// What the leaf of `cert` says, as the API reads it.
fn info(cert: &TestCert) -> CertInfo {
    let key = certified_key(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    CertInfo::of(&key).unwrap()
}

/// The operator vouches for `host` (it serves).
pub(crate) async fn vouch(op: &Caller, host: &str) {
    let r = op
        .post(&format!("/v1/admin/domains/{host}/verify"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
}

/// PoP `pop` and a gateway's caller (node token) for it.
async fn gateway(op: &Caller, base: &str, pop: &str) -> Caller {
    let r = op.post("/v1/admin/pops", json!({"name": pop})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = op
        .post(&format!("/v1/admin/pops/{pop}/gateways"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    Caller::new(base, r.json["token"].as_str().expect("node token"))
}

/// The state update a gateway of `fra1` at `since` gets.
async fn state(node: &Caller, since: i64) -> Value {
    let r = node
        .get(&format!("/v1/pops/fra1/state?since={since}&wait_ms=0"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
}

/// `app` in a state update (snapshot or delta).
fn served<'a>(update: &'a Value, app: &str) -> &'a Value {
    let apps = if update["kind"] == "snapshot" {
        &update["apps"]
    } else {
        &update["upserts"]
    };
    apps.as_array()
        .and_then(|apps| apps.iter().find(|a| a["app"] == app))
        .unwrap_or_else(|| panic!("{app} not in {update}"))
}

/// An app's certificates in a state update (absent when none).
fn certificates(app: &Value) -> Vec<Value> {
    app["certificates"].as_array().cloned().unwrap_or_default()
}

async fn certificate_rows(api: &TestApi) -> usize {
    sqlx::query("SELECT hostname FROM certificates")
        .fetch_all(api.state.store.pool())
        .await
        .unwrap()
        .len()
}

/// No private key is in clear in the database: each sealed key is neither
/// PEM nor holds a line of one, and opens with the master key only as its
/// own hostname's; on SQLite the database files hold no key either.
async fn assert_sealed_at_rest(api: &TestApi, db: &TestDb, backend: Backend, keys: &[&TestCert]) {
    let rows = sqlx::query("SELECT hostname, key_sealed FROM certificates")
        .fetch_all(api.state.store.pool())
        .await
        .unwrap();
    let master = test_master_key();
    for r in rows {
        let hostname: String = r.try_get("hostname").unwrap();
        let sealed: Vec<u8> = r.try_get("key_sealed").unwrap();
        assert!(!contains(&sealed, b"PRIVATE KEY"), "{backend:?} {hostname}");
        for k in keys {
            assert_ne!(sealed, k.key_pem.as_bytes(), "{backend:?} {hostname}");
            for line in secret_lines(&k.key_pem) {
                assert!(
                    !contains(&sealed, line.as_bytes()),
                    "{backend:?} {hostname}"
                );
            }
        }
        let opened = master
            .open(&sealed, &certificate_key_aad(&hostname))
            .unwrap();
        assert!(
            keys.iter()
                .any(|k| k.key_pem.as_bytes() == opened.as_slice()),
            "{backend:?} {hostname}: the sealed key is none of the uploaded ones"
        );
        assert!(
            master
                .open(&sealed, &certificate_key_aad("other.example"))
                .is_err(),
            "{backend:?} {hostname}: opened as another hostname's"
        );
    }
    if backend == Backend::Sqlite {
        for file in ["gannet.db", "gannet.db-wal"] {
            let Ok(bytes) = std::fs::read(db.dir.path().join(file)) else {
                continue;
            };
            assert!(
                !contains(&bytes, b"PRIVATE KEY-----"),
                "{file} holds a private key in clear"
            );
            for k in keys {
                for line in secret_lines(&k.key_pem) {
                    assert!(!contains(&bytes, line.as_bytes()), "{file}: {line}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_certificate_says_what_to_fix_and_changes_nothing() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let t = Tenant::new(op.create_tenant("acme", json!({})).await);
        t.app("shop", true).await;
        let ca = TestCa::new("Acme Test CA");
        let good = ca.issue(&[HOST]);
        let other = ca.issue(&[HOST]);
        let wrong_name = ca.issue(&["other.example", "www.other.example"]);
        let expired = ca.issue_valid(&[HOST], (2019, 1, 1), (2020, 1, 1));
        let future = ca.issue_valid(&[HOST], (2090, 1, 1), (2091, 1, 1));
        for cert in [&good, &other, &wrong_name, &expired, &future] {
            t.forbid(cert);
        }
        let oversized = format!("{}{}", good.cert_pem, "#".repeat(40_000));
        let cases: [(&str, &str, &str, &str); 10] = [
            (
                "a key that is not the certificate's",
                &good.cert_pem,
                &other.key_pem,
                "the private key does not match the certificate",
            ),
            (
                "a certificate for other names",
                &wrong_name.cert_pem,
                &wrong_name.key_pem,
                "covers other.example, www.other.example, not shop.example.com",
            ),
            (
                "an expired certificate",
                &expired.cert_pem,
                &expired.key_pem,
                "the certificate expired",
            ),
            (
                "a certificate valid only from 2090",
                &future.cert_pem,
                &future.key_pem,
                "not valid before",
            ),
            (
                "no PEM at all",
                "hello",
                &good.key_pem,
                "no certificate found",
            ),
            (
                "PEM that does not decode",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                &good.key_pem,
                "does not parse",
            ),
            (
                "PEM that is not a certificate",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &good.key_pem,
                "does not parse",
            ),
            ("no key", &good.cert_pem, "", "no private key found"),
            (
                "an X25519 key",
                &good.cert_pem,
                X25519_KEY,
                "unsupported private key",
            ),
            (
                "a chain over the size bound",
                &oversized,
                &good.key_pem,
                "more than the 32768 allowed",
            ),
        ];
        let revision = api.state.store.revision().await.unwrap();
        for (what, cert_pem, key_pem, reason) in cases {
            let r = t
                .post("/v1/apps/shop/domains", with_pem(HOST, cert_pem, key_pem))
                .await;
            assert_problem(&r, 422, "invalid-certificate", reason);
            // Nothing changed: no hostname, no certificate, no revision.
            assert_eq!(
                t.get("/v1/apps/shop/domains").await.json,
                json!([]),
                "{backend:?} {what}"
            );
            assert_eq!(
                t.get("/v1/apps/shop").await.json["hostnames"],
                json!(["shop-acme.localhost"]),
                "{backend:?} {what}"
            );
            assert_eq!(
                api.state.store.revision().await.unwrap(),
                revision,
                "{backend:?} {what}"
            );
            assert_eq!(certificate_rows(&api).await, 0, "{backend:?} {what}");
        }
        // The tenant's honest request goes through.
        let r = t
            .post("/v1/apps/shop/domains", with_cert(HOST, &good))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend:?}: {}", r.json);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_is_listed_rotated_served_to_gateways_and_removed_and_its_key_never_shown() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let store = &api.state.store;
        let op = Caller::operator(&api.url());
        let node = gateway(&op, &api.url(), "fra1").await;
        let t = Tenant::new(op.create_tenant("acme", json!({})).await);
        t.app("shop", true).await;
        let ca = TestCa::new("Acme Test CA");
        let first = ca.issue_valid(&[HOST, "www.example.com"], (2024, 1, 1), (2090, 1, 1));
        let second = ca.issue(&[HOST]);
        let expired = ca.issue_valid(&[HOST], (2019, 1, 1), (2020, 1, 1));
        for cert in [&first, &second, &expired] {
            t.forbid(cert);
        }

        // Added: listed with issuer, names and expiry.
        let before = store.revision().await.unwrap();
        let r = t
            .post("/v1/apps/shop/domains", with_cert(HOST, &first))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend:?}: {}", r.json);
        assert_eq!(r.json["hostnames"], json!(["shop-acme.localhost", HOST]));
        // Unproved, it does not serve: gateways get its token, not its
        // certificate. The operator vouches for it (the proofs themselves
        // are tested in ownership.rs).
        let update = state(&node, -1).await;
        assert_eq!(certificates(served(&update, "shop")), Vec::<Value>::new());
        assert!(!served(&update, "shop")["hosts"].to_string().contains(HOST));
        vouch(&op, HOST).await;
        let added = store.revision().await.unwrap();
        assert!(added > before, "{backend:?}");
        let domains = t.get("/v1/apps/shop/domains").await.json;
        assert_eq!(domains.as_array().map(Vec::len), Some(1), "{domains}");
        let d = &domains[0];
        assert_eq!(d["hostname"], HOST);
        assert_eq!(d["app"], "shop");
        let c = &d["certificate"];
        assert_eq!(c["kind"], "custom", "{d}");
        assert!(
            c["issuer"].as_str().unwrap_or("").contains("Acme Test CA"),
            "{d}"
        );
        assert_eq!(c["names"], json!([HOST, "www.example.com"]));
        let first_info = info(&first);
        assert_eq!(c["not_after"], first_info.not_after, "{d}");
        assert_eq!(c["not_before"], first_info.not_before, "{d}");
        assert_eq!(t.get("/v1/domains").await.json, domains, "{backend:?}");

        // Gateways get it with its key.
        let update = state(&node, -1).await;
        assert_eq!(update["revision"], added);
        assert_eq!(
            certificates(served(&update, "shop")),
            vec![json!({"hostname": HOST, "cert_pem": first.cert_pem, "key_pem": first.key_pem})],
            "{backend:?}"
        );
        assert_sealed_at_rest(&api, &db, backend, &[&first]).await;

        // Rotated: replaced in place (200), a new revision, and gateways
        // get the new pair in a delta.
        let r = t
            .post("/v1/apps/shop/domains", with_cert(HOST, &second))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        assert_eq!(r.json["hostnames"], json!(["shop-acme.localhost", HOST]));
        let rotated = store.revision().await.unwrap();
        assert!(rotated > added, "{backend:?}");
        let domains = t.get("/v1/apps/shop/domains").await.json;
        let second_info = info(&second);
        assert_ne!(second_info.not_after, first_info.not_after);
        assert_eq!(
            domains[0]["certificate"]["not_after"], second_info.not_after,
            "{domains}"
        );
        assert_eq!(domains[0]["certificate"]["names"], json!([HOST]));
        let update = state(&node, added).await;
        assert_eq!(update["kind"], "delta", "{backend:?}");
        assert_eq!(
            certificates(served(&update, "shop")),
            vec![json!({"hostname": HOST, "cert_pem": second.cert_pem, "key_pem": second.key_pem})],
            "{backend:?}"
        );
        assert_eq!(certificate_rows(&api).await, 1);
        assert_sealed_at_rest(&api, &db, backend, &[&second]).await;

        // A refused rotation keeps the current certificate.
        let r = t
            .post("/v1/apps/shop/domains", with_cert(HOST, &expired))
            .await;
        assert_problem(&r, 422, "invalid-certificate", "expired");
        assert_eq!(t.get("/v1/apps/shop/domains").await.json, domains);
        assert_eq!(store.revision().await.unwrap(), rotated, "{backend:?}");

        // Added again without a certificate: a conflict that says what to do.
        let r = t
            .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
            .await;
        assert_problem(
            &r,
            409,
            "conflict",
            "already has hostname `shop.example.com`",
        );
        assert_eq!(t.get("/v1/apps/shop/domains").await.json, domains);
        assert_eq!(store.revision().await.unwrap(), rotated, "{backend:?}");

        // The audit log names the hostname and the certificate, not the key.
        let audit = t.get("/v1/audit").await.json;
        let actions: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert_eq!(
            actions
                .iter()
                .filter(|a| **a == "domain.certificate")
                .count(),
            2,
            "{audit}"
        );
        assert_eq!(
            actions.iter().filter(|a| **a == "domain.add").count(),
            1,
            "{audit}"
        );
        assert!(audit.to_string().contains(HOST), "{audit}");

        // Removed: the certificate goes with the hostname.
        let r = t.delete(&format!("/v1/apps/shop/domains/{HOST}")).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
        let update = state(&node, rotated).await;
        let shop = served(&update, "shop");
        assert_eq!(certificates(shop), Vec::<Value>::new(), "{backend:?}");
        assert!(!shop["hosts"].to_string().contains(HOST), "{shop}");
        assert_eq!(certificate_rows(&api).await, 0);
        assert_eq!(t.get("/v1/domains").await.json, json!([]));

        // Added back plainly: no certificate left over from before.
        let r = t
            .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        let domains = t.get("/v1/domains").await.json;
        assert_eq!(domains[0]["hostname"], HOST);
        assert_eq!(domains[0]["certificate"], Value::Null, "{domains}");
        let update = state(&node, -1).await;
        assert_eq!(certificates(served(&update, "shop")), Vec::<Value>::new());
        assert_sealed_at_rest(&api, &db, backend, &[&first, &second]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bystander_cannot_take_see_or_remove_another_tenants_domain() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let node = gateway(&op, &api.url(), "fra1").await;
        let a = Tenant::new(op.create_tenant("acme", json!({})).await);
        let b = Tenant::new(op.create_tenant("mallory", json!({})).await);
        a.app("shop", true).await;
        b.app("web", true).await;
        let cert = TestCa::new("Acme CA").issue(&[HOST]);
        // Mallory holds a valid certificate for the name, from its own CA.
        let evil = TestCa::new("Mallory CA").issue(&[HOST]);
        for t in [&a, &b] {
            t.forbid(&cert);
            t.forbid(&evil);
        }
        let r = a
            .post("/v1/apps/shop/domains", with_cert(HOST, &cert))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        vouch(&op, HOST).await;
        let listing = a.get("/v1/domains").await.json;
        let revision = api.state.store.revision().await.unwrap();

        // It cannot take the hostname, with or without a certificate…
        let r = b.post("/v1/apps/web/domains", with_cert(HOST, &evil)).await;
        assert_problem(
            &r,
            409,
            "conflict",
            "hostname `shop.example.com` is already in use",
        );
        let r = b
            .post("/v1/apps/web/domains", json!({"hostname": HOST}))
            .await;
        assert_problem(&r, 409, "conflict", "is already in use");
        // …nor see, replace or remove it: A's app is not there for it.
        assert_eq!(b.get("/v1/domains").await.json, json!([]));
        assert_eq!(b.get("/v1/apps/web/domains").await.json, json!([]));
        let r = b.get("/v1/apps/shop/domains").await;
        assert_problem(&r, 404, "not-found", "no app `shop`");
        let r = b
            .post("/v1/apps/shop/domains", with_cert(HOST, &evil))
            .await;
        assert_problem(&r, 404, "not-found", "no app `shop`");
        let r = b.delete(&format!("/v1/apps/shop/domains/{HOST}")).await;
        assert_problem(&r, 404, "not-found", "no app `shop`");
        let r = b.delete(&format!("/v1/apps/web/domains/{HOST}")).await;
        assert_problem(&r, 404, "not-found", "has no custom hostname");
        assert!(
            !b.get("/v1/audit").await.json.to_string().contains(HOST),
            "{backend:?}: B's audit log names A's hostname"
        );

        // Another app of the same tenant cannot take it either.
        a.app("blog", false).await;
        let r = a
            .post("/v1/apps/blog/domains", with_cert(HOST, &cert))
            .await;
        assert_problem(&r, 409, "conflict", "is already in use");

        // A's domain and certificate are untouched, and gateways serve A's.
        assert_eq!(a.get("/v1/domains").await.json, listing, "{backend:?}");
        assert_eq!(api.state.store.revision().await.unwrap(), revision);
        let update = state(&node, -1).await;
        assert_eq!(
            certificates(served(&update, "shop")),
            vec![json!({"hostname": HOST, "cert_pem": cert.cert_pem, "key_pem": cert.key_pem})]
        );
        assert_eq!(certificates(served(&update, "web")), Vec::<Value>::new());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_master_key_certificates_are_refused_and_plain_domains_still_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| c.master_key = None).await;
    let op = Caller::operator(&api.url());
    let t = Tenant::new(op.create_tenant("acme", json!({})).await);
    t.app("shop", false).await;
    let cert = TestCa::new("Acme CA").issue(&[HOST]);
    t.forbid(&cert);
    let r = t
        .post("/v1/apps/shop/domains", with_cert(HOST, &cert))
        .await;
    assert_problem(&r, 503, "certificates-unavailable", "no master key");
    assert_eq!(t.get("/v1/domains").await.json, json!([]));
    assert_eq!(certificate_rows(&api).await, 0);
    let r = t
        .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_tenant_takes_the_platform_apex_or_names_wholesale_with_a_wildcard() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| c.platform_domain = "apps.example.net".into()).await;
    let op = Caller::operator(&api.url());
    let t = Tenant::new(op.create_tenant("mallory", json!({})).await);
    t.app("web", false).await;
    let revision = api.state.store.revision().await.unwrap();
    for (host, says) in [
        ("apps.example.net", "assigned by the platform"),
        ("x.apps.example.net", "assigned by the platform"),
        ("*.apps.example.net", "assigned by the platform"),
        ("*.example.net", "would cover the platform's hostnames"),
        ("*.co.uk", "public suffix `co.uk`"),
        ("*.github.io", "public suffix `github.io`"),
        ("*.com", "is not a hostname"),
    ] {
        let r = t
            .post("/v1/apps/web/domains", json!({"hostname": host}))
            .await;
        assert_problem(&r, 400, "invalid-request", says);
    }
    assert_eq!(api.state.store.revision().await.unwrap(), revision);
    assert_eq!(t.get("/v1/domains").await.json, json!([]));
    // A wildcard of its own is fine.
    let r = t
        .post(
            "/v1/apps/web/domains",
            json!({"hostname": "*.mallory.example.org"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_holds_at_most_its_share_of_custom_hostnames() {
    // Every custom hostname (and its certificate) goes to every gateway.
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start(&db).await;
    let op = Caller::operator(&api.url());
    let t = Tenant::new(op.create_tenant("acme", json!({})).await);
    let bystander = Tenant::new(op.create_tenant("other", json!({})).await);
    t.app("shop", false).await;
    t.app("blog", false).await;
    bystander.app("web", false).await;
    let max = gannet_control_api::store::MAX_CUSTOM_HOSTNAMES_PER_TENANT;
    for n in 0..max {
        let app = if n % 2 == 0 { "shop" } else { "blog" };
        let r = t
            .post(
                &format!("/v1/apps/{app}/domains"),
                json!({"hostname": format!("h{n}.example.com")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{n}: {}", r.json);
    }
    let revision = api.state.store.revision().await.unwrap();
    let r = t
        .post(
            "/v1/apps/shop/domains",
            json!({"hostname": "one-more.example.com"}),
        )
        .await;
    assert_problem(&r, 403, "quota-exceeded", "at most 100 custom hostnames");
    assert_eq!(api.state.store.revision().await.unwrap(), revision);
    // Another tenant is not held to this one's count.
    let r = bystander
        .post(
            "/v1/apps/web/domains",
            json!({"hostname": "web.example.net"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_sealed_for_another_hostname_or_master_key_does_not_open_and_is_left_out() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let store = &api.state.store;
        let op = Caller::operator(&api.url());
        let t = Tenant::new(op.create_tenant("acme", json!({})).await);
        t.app("shop", true).await;
        let cert = TestCa::new("Acme CA").issue(&[HOST, "www.example.com"]);
        t.forbid(&cert);
        let r = t
            .post("/v1/apps/shop/domains", with_cert(HOST, &cert))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        vouch(&op, HOST).await;
        let shop_certificates = |apps: Vec<(i64, gannet_model::snapshot::DeployedApp)>| {
            apps.into_iter()
                .find(|(_, a)| a.app == "shop")
                .map(|(_, a)| a.certificates)
                .expect("shop is served")
        };

        // Another master key opens nothing: the certificate is left out.
        let wrong = MasterKey::parse(&"11".repeat(32)).unwrap();
        let other_store = store.clone().with_master_key(Some(wrong.clone()));
        assert!(
            shop_certificates(
                other_store
                    .deployed_apps(None, &Default::default())
                    .await
                    .unwrap()
            )
            .is_empty()
        );
        assert_eq!(
            other_store.check_certificate_keys().await.unwrap().failed,
            vec![HOST.to_string()]
        );
        let sent = shop_certificates(
            store
                .deployed_apps(None, &Default::default())
                .await
                .unwrap(),
        );
        assert_eq!(sent.len(), 1, "{backend:?}");
        assert_eq!(sent[0].key_pem, cert.key_pem);

        // A sealed key copied to another hostname's row does not open there.
        let r = t
            .post(
                "/v1/apps/shop/domains",
                json!({"hostname": "www.example.com"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        sqlx::query(
            "INSERT INTO certificates (hostname, kind, cert_pem, key_sealed, issuer, names_json, not_before, not_after, updated_ms) \
             SELECT 'www.example.com', kind, cert_pem, key_sealed, issuer, names_json, not_before, not_after, updated_ms \
             FROM certificates WHERE hostname = $1",
        )
        .bind(HOST)
        .execute(store.pool())
        .await
        .unwrap();
        let sent = shop_certificates(
            store
                .deployed_apps(None, &Default::default())
                .await
                .unwrap(),
        );
        let hosts: Vec<&str> = sent.iter().map(|c| c.hostname.as_str()).collect();
        assert_eq!(hosts, vec![HOST], "{backend:?}");
        let check = store.check_certificate_keys().await.unwrap();
        assert_eq!(check.opened, 1);
        assert_eq!(check.failed, vec!["www.example.com".to_string()]);
        sqlx::query("DELETE FROM certificates WHERE hostname = 'www.example.com'")
            .execute(store.pool())
            .await
            .unwrap();

        // A control API started with the wrong key refuses to start.
        let config = ApiConfig {
            database_url: db.url.clone(),
            data_dir: db.dir.path().join("data"),
            operator_token: Some(OPERATOR_TOKEN.into()),
            compile: CompileConfig {
                isolation: CompileIsolation::InProcess,
                ..CompileConfig::default()
            },
            master_key: Some(wrong),
            ..ApiConfig::default()
        };
        match AppState::build(config).await {
            Ok(_) => panic!("{backend:?}: started with a master key that opens no stored key"),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(
                    e.contains("the master key opens none of the 1 stored certificate keys"),
                    "{e}"
                );
            }
        }
    }
}

#[test]
fn the_binary_refuses_to_start_without_a_usable_master_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.key");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "abcd\n").unwrap();
    let cases: [(Option<&str>, Option<&std::path::Path>, &str); 5] = [
        (
            None,
            None,
            "a master key is required: --master-key-file or GANNET_MASTER_KEY (e.g. `head -c 32 /dev/urandom | base64 > master.key`)",
        ),
        (Some("abc"), None, "the master key is 3 hex characters"),
        (Some(""), None, "the master key is empty"),
        (None, Some(missing.as_path()), "reading the master key file"),
        (
            None,
            Some(short.as_path()),
            "the master key is 4 hex characters (2 bytes), not 32 bytes",
        ),
    ];
    let api = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gannet-control-api"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .env_remove("GANNET_MASTER_KEY")
            .env_remove("GANNET_MASTER_KEY_FILE")
            .env("GANNET_OPERATOR_TOKEN", OPERATOR_TOKEN);
        cmd
    };
    for (value, file, want) in cases {
        let mut cmd = api();
        if let Some(value) = value {
            cmd.env("GANNET_MASTER_KEY", value);
        }
        if let Some(file) = file {
            cmd.arg("--master-key-file").arg(file);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in:\n{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
        assert!(
            !data.exists(),
            "{want}: the data directory was made before the refusal"
        );
    }

    // A usable key file: it starts.
    let good = dir.path().join("master.key");
    std::fs::write(&good, format!("{TEST_MASTER_KEY}\n")).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = api()
        .arg("--master-key-file")
        .arg(&good)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let started = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("listening on "));
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "did not start with --master-key-file");
}

#[test]
fn the_openapi_document_describes_domains_and_certificates() {
    let doc: Value = serde_json::from_str(&gannet_control_api::openapi::json()).unwrap();
    for (path, method) in [
        ("/v1/apps/{app}/domains", "post"),
        ("/v1/apps/{app}/domains", "get"),
        ("/v1/domains", "get"),
        ("/v1/apps/{app}/domains/{hostname}", "delete"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    for schema in [
        "Domain",
        "CertificateSummary",
        "CertificateUpload",
        "HostCertificate",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}
