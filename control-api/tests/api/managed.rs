//! Managed certificates, the API and store side (the whole flow against a
//! real ACME server is `gateway/tests/e2e/acme.rs`, with Pebble): refusals
//! that change nothing; a managed hostname serves only its challenge until
//! its certificate is issued; one worker per order across replicas; a CA
//! that cannot be reached shows as `failed` with the reason.

use crate::{Caller, assert_problem, example};
use gannet_control_api::acme::AcmeConfig;
use gannet_control_api::certificate::check;
use gannet_control_api::testing::{Backend, TestApi, TestCa, TestDb, backends};
use gannet_model::api::CertificateUpload;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const HOST: &str = "shop.example.com";

/// ACME pointed at a port where nothing listens; the worker wakes only
/// when told (a domain added), never on its own within a test.
fn unreachable_ca() -> AcmeConfig {
    let mut config = AcmeConfig::new("https://127.0.0.1:9/directory");
    config.check_interval = Duration::from_secs(3600);
    config
}

async fn tenant_with_app(op: &Caller, tenant: &str, app: &str) -> Caller {
    let t = op.create_tenant(tenant, json!({})).await;
    let r = t.post("/v1/apps", json!({"name": app})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = t.deploy(app, example("hello"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    t
}

/// The app `app` in the whole state a gateway would get.
async fn deployed(api: &TestApi, app: &str) -> Value {
    let apps = api
        .state
        .store
        .deployed_apps(None, &Default::default())
        .await
        .unwrap();
    let (_, found) = apps
        .into_iter()
        .find(|(_, a)| a.app == app)
        .unwrap_or_else(|| panic!("{app} is not deployed"));
    serde_json::to_value(found).unwrap()
}

async fn domain(t: &Caller, app: &str, host: &str) -> Value {
    let r = t.get(&format!("/v1/apps/{app}/domains")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
        .as_array()
        .and_then(|l| l.iter().find(|d| d["hostname"] == host).cloned())
        .unwrap_or_else(|| panic!("{host} not listed: {}", r.json))
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_certificates_are_refused_with_a_reason_and_nothing_changes() {
    // Without an ACME directory: asked for, refused; not asked for, a
    // plain hostname as before.
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start(&db).await;
    let op = Caller::operator(&api.url());
    let t = tenant_with_app(&op, "acme", "shop").await;
    let revision = api.state.store.revision().await.unwrap();
    let r = t
        .post(
            "/v1/apps/shop/domains",
            json!({"hostname": HOST, "managed": true}),
        )
        .await;
    assert_problem(
        &r,
        503,
        "managed-certificates-unavailable",
        "--acme-directory",
    );
    let r = op
        .post(&format!("/v1/admin/domains/{HOST}/renew"), json!({}))
        .await;
    assert_problem(
        &r,
        503,
        "managed-certificates-unavailable",
        "--acme-directory",
    );
    assert_eq!(api.state.store.revision().await.unwrap(), revision);
    assert_eq!(t.get("/v1/domains").await.json, json!([]));
    let r = t
        .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert!(domain(&t, "shop", HOST).await.get("managed").is_none());
    drop(api);

    // With one: a wildcard (HTTP-01 cannot validate one), a certificate
    // and `managed` at once, and no master key are refused.
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| c.acme = Some(unreachable_ca())).await;
    let op = Caller::operator(&api.url());
    let t = tenant_with_app(&op, "acme", "shop").await;
    let revision = api.state.store.revision().await.unwrap();
    let r = t
        .post(
            "/v1/apps/shop/domains",
            json!({"hostname": "*.shop.example.com"}),
        )
        .await;
    assert_problem(&r, 400, "invalid-request", "HTTP-01");
    let cert = TestCa::new("Acme CA").issue(&[HOST]);
    let r = t
        .post(
            "/v1/apps/shop/domains",
            json!({"hostname": HOST, "managed": true,
                   "certificate": {"cert_pem": cert.cert_pem, "key_pem": cert.key_pem}}),
        )
        .await;
    assert_problem(&r, 400, "invalid-request", "not both");
    let r = op
        .post("/v1/admin/domains/nobody.example.com/renew", json!({}))
        .await;
    assert_problem(&r, 404, "not-found", "no managed certificate");
    let r = t
        .post(&format!("/v1/admin/domains/{HOST}/renew"), json!({}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a tenant renews: {}",
        r.json
    );
    assert_eq!(api.state.store.revision().await.unwrap(), revision);
    assert_eq!(t.get("/v1/domains").await.json, json!([]));
    drop(api);

    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| {
        c.acme = Some(unreachable_ca());
        c.master_key = None;
    })
    .await;
    let op = Caller::operator(&api.url());
    let t = tenant_with_app(&op, "acme", "shop").await;
    let r = t
        .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
        .await;
    assert_problem(&r, 503, "certificates-unavailable", "no master key");
    assert_eq!(t.get("/v1/domains").await.json, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_managed_hostname_serves_only_its_challenge_until_issued_and_one_worker_holds_an_order() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start_with(&db, |c| c.acme = Some(unreachable_ca())).await;
        let store = &api.state.store;
        let op = Caller::operator(&api.url());
        let t = tenant_with_app(&op, "acme", "shop").await;
        let bystander = tenant_with_app(&op, "beta", "blog").await;
        let r = bystander
            .post(
                "/v1/apps/blog/domains",
                json!({"hostname": "blog.example.org", "managed": false}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        // Opted out: a plain hostname, served once control is proved (the
        // operator vouches here).
        assert!(
            domain(&bystander, "blog", "blog.example.org")
                .await
                .get("managed")
                .is_none()
        );
        crate::domains::vouch(&op, "blog.example.org").await;

        // Managed by default (no certificate given, ACME configured).
        let r = t
            .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend:?}: {}", r.json);
        // The worker tried at once, could not reach the CA, and says so;
        // it retries after a back-off, not in a loop.
        let mut listed = Value::Null;
        for _ in 0..100 {
            listed = domain(&t, "shop", HOST).await;
            if listed["managed"]["state"] == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            listed["managed"]["state"], "failed",
            "{backend:?}: {listed}"
        );
        let error = listed["managed"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("onnect"),
            "{backend:?}: the reason does not say the CA could not be reached: {listed}"
        );
        let now = gannet_control_api::store::now_ms();
        assert!(
            listed["managed"]["next_attempt_ms"].as_i64().unwrap() > now + 30_000,
            "{backend:?}: retried too soon: {listed}"
        );
        assert!(listed["certificate"].is_null(), "{listed}");
        // Asking again does not reset the back-off (the CA's rate limits
        // are the platform account's, every tenant's).
        let r = t
            .post("/v1/apps/shop/domains", json!({"hostname": HOST}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        assert_eq!(
            domain(&t, "shop", HOST).await["managed"]["next_attempt_ms"],
            listed["managed"]["next_attempt_ms"]
        );

        // Not served yet: the hostname is not among the app's hosts.
        let shop = deployed(&api, "shop").await;
        assert!(
            !shop["hosts"].as_array().unwrap().iter().any(|h| h == HOST),
            "{backend:?}: a managed hostname serves before its certificate: {shop}"
        );
        // The bystander's hostname serves.
        let blog = deployed(&api, "blog").await;
        assert!(
            blog["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == "blog.example.org")
        );

        // Due again: of two replicas claiming it at once, one gets it.
        sqlx::query("UPDATE managed_domains SET next_attempt_ms = 0")
            .execute(store.pool())
            .await
            .unwrap();
        let until = now + 300_000;
        let (a, b) = tokio::join!(
            store.claim_managed(HOST, "replica-a", until),
            store.claim_managed(HOST, "replica-b", until)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.is_some() != b.is_some(),
            "{backend:?}: both or neither claimed: {a:?} {b:?}"
        );
        let (owner, loser, claimed) = match (a, b) {
            (Some(c), None) => ("replica-a", "replica-b", c),
            (None, Some(c)) => ("replica-b", "replica-a", c),
            _ => unreachable!(),
        };
        assert_eq!(claimed.hostname, HOST);
        assert!(!claimed.has_certificate);
        assert!(store.due_managed(now, 10).await.unwrap().is_empty());
        // The loser cannot publish or store anything under it.
        assert_eq!(
            store
                .set_managed_challenge(claimed.app_id, HOST, loser, Some(("tok", "tok.x")))
                .await
                .unwrap(),
            None
        );

        // The published challenge goes to gateways with the app, still
        // without the hostname.
        let published = store
            .set_managed_challenge(claimed.app_id, HOST, owner, Some(("tok-1", "tok-1.thumb")))
            .await
            .unwrap()
            .expect("published");
        assert_eq!(store.revision().await.unwrap(), published);
        // (With the hostname's ownership token: a TXT record could prove
        // it too.)
        let shop = deployed(&api, "shop").await;
        let challenges = shop["challenges"].as_array().unwrap();
        assert!(
            challenges.contains(
                &json!({"hostname": HOST, "token": "tok-1", "key_authorization": "tok-1.thumb"})
            ),
            "{backend:?}: {shop}"
        );
        assert_eq!(challenges.len(), 2, "{shop}");
        assert!(!shop["hosts"].as_array().unwrap().iter().any(|h| h == HOST));
        assert!(deployed(&api, "blog").await.get("challenges").is_none());

        // Issued: served with its certificate, the challenge withdrawn,
        // due again for renewal, listed as managed.
        let cert = TestCa::new("Test ACME CA").issue(&[HOST]);
        let checked = check(
            HOST,
            &CertificateUpload {
                cert_pem: cert.cert_pem.clone(),
                key_pem: cert.key_pem.clone(),
            },
            gannet_server::tls::unix_now(),
        )
        .unwrap();
        let renew_at = now + 1_000_000;
        assert_eq!(
            store
                .store_managed_certificate(claimed.app_id, HOST, loser, &checked, renew_at)
                .await
                .unwrap(),
            None,
            "{backend:?}: stored without the lease"
        );
        store
            .store_managed_certificate(claimed.app_id, HOST, owner, &checked, renew_at)
            .await
            .unwrap()
            .expect("stored");
        let shop = deployed(&api, "shop").await;
        assert!(
            shop["hosts"].as_array().unwrap().iter().any(|h| h == HOST),
            "{shop}"
        );
        assert!(shop.get("challenges").is_none(), "{backend:?}: {shop}");
        assert_eq!(shop["certificates"][0]["hostname"], HOST);
        assert_eq!(shop["certificates"][0]["key_pem"], cert.key_pem.as_str());
        let listed = domain(&t, "shop", HOST).await;
        assert_eq!(listed["managed"]["state"], "issued", "{listed}");
        assert_eq!(listed["managed"]["next_attempt_ms"], renew_at);
        assert!(listed["managed"].get("error").is_none(), "{listed}");
        assert_eq!(listed["certificate"]["kind"], "managed");
        assert!(!listed.to_string().contains("PRIVATE KEY"));
        // The key is sealed at rest, not stored in clear.
        let rows = sqlx::query("SELECT key_sealed FROM certificates")
            .fetch_all(store.pool())
            .await
            .unwrap();
        for row in rows {
            let sealed: Vec<u8> = sqlx::Row::try_get(&row, "key_sealed").unwrap();
            assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        }

        // A renewal claims it as `renewing`; a failure keeps serving the
        // issued certificate.
        sqlx::query("UPDATE managed_domains SET next_attempt_ms = 0")
            .execute(store.pool())
            .await
            .unwrap();
        let renewal = store
            .claim_managed(HOST, owner, now + 300_000)
            .await
            .unwrap()
            .expect("claimed");
        assert!(renewal.has_certificate);
        assert_eq!(
            domain(&t, "shop", HOST).await["managed"]["state"],
            "renewing"
        );
        store
            .fail_managed(
                renewal.app_id,
                HOST,
                owner,
                "rate limited",
                now + 3_600_000,
                false,
            )
            .await
            .unwrap();
        let listed = domain(&t, "shop", HOST).await;
        assert_eq!(listed["managed"]["state"], "failed");
        assert_eq!(listed["managed"]["error"], "rate limited");
        assert!(
            deployed(&api, "shop").await["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == HOST)
        );

        // Removed: gone with its certificate and its managed row.
        let r = t
            .call(
                Method::DELETE,
                &format!("/v1/apps/shop/domains/{HOST}"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
        let left: i64 = sqlx::Row::try_get(
            &sqlx::query("SELECT COUNT(*) AS n FROM managed_domains")
                .fetch_one(store.pool())
                .await
                .unwrap(),
            "n",
        )
        .unwrap();
        assert_eq!(left, 0, "{backend:?}");
        // The bystander never noticed.
        assert_eq!(
            bystander.get("/v1/domains").await.json[0]["hostname"],
            "blog.example.org"
        );
    }
}
