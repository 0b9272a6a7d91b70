//! The platform certificate and PoPs' ticket keys: set by the operator
//! only, checked like a tenant's certificate, sealed at rest, sent to
//! gateways (keys included) and never to anyone else; ticket keys made
//! once per PoP per slot whatever the replicas, different per PoP.

use crate::{Caller, assert_problem};
use gannet_control_api::platform_tls::{TICKET_KEY_LIFETIME, TICKET_KEY_SLOT};
use gannet_control_api::testing::{Backend, TestCa, TestDb, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

fn upload(cert_pem: &str, key_pem: &str) -> Value {
    json!({"cert_pem": cert_pem, "key_pem": key_pem})
}

async fn node(op: &Caller, base: &str, pop: &str) -> Caller {
    let r = op.post("/v1/admin/pops", json!({"name": pop})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = op
        .post(&format!("/v1/admin/pops/{pop}/gateways"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    Caller::new(base, r.json["token"].as_str().expect("node token"))
}

async fn state(node: &Caller, pop: &str, since: i64) -> Value {
    let r = node
        .get(&format!("/v1/pops/{pop}/state?since={since}&wait_ms=0"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platform_certificate_is_the_operators_checked_sealed_and_sent_only_to_gateways() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let gw = node(&op, &api.url(), "fra1").await;
        let tenant = op.create_tenant("acme", json!({})).await;
        let ca = TestCa::new("Platform CA");
        let good = ca.issue(&["*.localhost"]);
        let other = ca.issue(&["*.localhost"]);
        let r = op.get("/v1/admin/platform-certificate").await;
        assert_problem(&r, 404, "not-found", "--tls-cert");
        let revision = api.state.store.revision().await.unwrap();

        // Refused, saying why; nothing changes.
        let wrong = ca.issue(&["*.example.com"]);
        let r = op
            .put(
                "/v1/admin/platform-certificate",
                upload(&wrong.cert_pem, &wrong.key_pem),
            )
            .await;
        assert_problem(&r, 422, "invalid-certificate", "not *.localhost");
        let r = op
            .put(
                "/v1/admin/platform-certificate",
                upload(&good.cert_pem, &other.key_pem),
            )
            .await;
        assert_problem(&r, 422, "invalid-certificate", "does not match");
        let r = tenant
            .put(
                "/v1/admin/platform-certificate",
                upload(&good.cert_pem, &good.key_pem),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{backend:?}: {}", r.json);
        assert_eq!(api.state.store.revision().await.unwrap(), revision);
        assert!(state(&gw, "fra1", -1).await["platform"]["certificate"].is_null());

        // Set: listed without its key, sent to gateways with it, in a
        // delta too.
        let r = op
            .put(
                "/v1/admin/platform-certificate",
                upload(&good.cert_pem, &good.key_pem),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        assert_eq!(r.json["names"], json!(["*.localhost"]));
        assert_eq!(r.json["kind"], "platform");
        assert!(!r.json.to_string().contains("PRIVATE KEY"));
        let snapshot = state(&gw, "fra1", -1).await;
        assert_eq!(
            snapshot["platform"]["certificate"]["key_pem"],
            good.key_pem.as_str()
        );
        let delta = state(&gw, "fra1", revision).await;
        assert_eq!(delta["kind"], "delta", "{delta}");
        assert_eq!(
            delta["platform"]["certificate"]["cert_pem"],
            good.cert_pem.as_str()
        );
        // Sealed at rest.
        let row = sqlx::query("SELECT key_sealed FROM platform_certificate")
            .fetch_one(api.state.store.pool())
            .await
            .unwrap();
        let sealed: Vec<u8> = row.try_get("key_sealed").unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        // A tenant sees none of it.
        let r = tenant.get("/v1/admin/platform-certificate").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let audit = op.get("/v1/audit").await.json.to_string();
        assert!(!audit.contains("PRIVATE KEY"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ticket_keys_are_made_once_per_pop_and_slot_and_each_pop_has_its_own() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let store = &api.state.store;
        let op = Caller::operator(&api.url());
        let fra = node(&op, &api.url(), "fra1").await;
        let ams = node(&op, &api.url(), "ams1").await;
        let slot = TICKET_KEY_SLOT.as_millis() as i64;
        // A PoP gets its first key when it is created.
        let fra_keys = state(&fra, "fra1", -1).await["platform"]["ticket_keys"].clone();
        assert_eq!(
            fra_keys.as_array().map(Vec::len),
            Some(1),
            "{backend:?}: {fra_keys}"
        );
        let t0 = (gannet_control_api::store::now_ms() / slot + 1) * slot + 1000;

        // Two "replicas" rotating at once into the next slot: one key per
        // PoP.
        let (a, b) = tokio::join!(store.rotate_ticket_keys(t0), store.rotate_ticket_keys(t0));
        let made = a.unwrap().len() + b.unwrap().len();
        assert_eq!(made, 2, "{backend:?}: one key per PoP");
        assert!(store.rotate_ticket_keys(t0 + 10).await.unwrap().is_empty());
        let fra_keys = state(&fra, "fra1", -1).await["platform"]["ticket_keys"].clone();
        let ams_keys = state(&ams, "ams1", -1).await["platform"]["ticket_keys"].clone();
        assert_eq!(fra_keys.as_array().map(Vec::len), Some(2), "{fra_keys}");
        assert_eq!(ams_keys.as_array().map(Vec::len), Some(2), "{ams_keys}");
        assert_ne!(fra_keys[0]["id"], ams_keys[0]["id"]);
        assert_ne!(fra_keys[0]["secret"], ams_keys[0]["secret"]);
        assert_eq!(fra_keys[0]["secret"].as_str().unwrap().len(), 64);
        // The secret is sealed at rest.
        let secret = fra_keys[0]["secret"].as_str().unwrap().to_string();
        for row in sqlx::query("SELECT secret_sealed FROM ticket_keys")
            .fetch_all(store.pool())
            .await
            .unwrap()
        {
            let sealed: Vec<u8> = row.try_get("secret_sealed").unwrap();
            let as_hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!as_hex.contains(&secret));
        }

        // The next slot adds one per PoP; fra1's gateway at the previous
        // revision gets both in a delta, and ams1's change does not wake
        // fra1's own state.
        let before = store.revision().await.unwrap();
        let made = store.rotate_ticket_keys(t0 + slot).await.unwrap();
        assert_eq!(made.len(), 2);
        let delta = state(&fra, "fra1", before).await;
        assert_eq!(delta["kind"], "delta");
        assert_eq!(
            delta["platform"]["ticket_keys"].as_array().map(Vec::len),
            Some(3)
        );
        // Expired keys go.
        let lifetime = TICKET_KEY_LIFETIME.as_millis() as i64;
        store
            .rotate_ticket_keys(t0 + lifetime + slot)
            .await
            .unwrap();
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ticket_keys")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(left, 2, "{backend:?}: only the newest slot's keys remain");
    }
    // Without a master key there are no shared keys (each gateway keeps
    // its own).
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| c.master_key = None).await;
    let op = Caller::operator(&api.url());
    let fra = node(&op, &api.url(), "fra1").await;
    assert!(
        api.state
            .store
            .rotate_ticket_keys(gannet_control_api::store::now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(state(&fra, "fra1", -1).await.get("platform").is_none());
}
