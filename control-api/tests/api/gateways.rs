//! Gateway registration and liveness: what a gateway says about itself when
//! it starts, checked and stored; the operator's listing with it, each
//! gateway's lag and whether it is silent; and the API's own `/readyz`.

use crate::{Caller, assert_problem, example};
use gannet_control_api::desired_state::{Scope, append_change};
use gannet_control_api::store::now_ms;
use gannet_control_api::testing::{TestDb, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ENGINE: &str = "5f0c2a9e7b1d3c4e5f0c2a9e7b1d3c4e";
const BOOT: &str = "0123456789abcdef";

/// Creates PoP `pop` and a node token for a gateway of it: a caller with
/// the token, and the gateway's id.
async fn node(op: &Caller, base: &str, pop: &str) -> (Caller, i64) {
    let r = op.post("/v1/admin/pops", json!({"name": pop})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = op
        .post(&format!("/v1/admin/pops/{pop}/gateways"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    (
        Caller::new(base, r.json["token"].as_str().expect("node token")),
        r.json["gateway_id"].as_i64().expect("gateway id"),
    )
}

fn registration(arch: &str, listen: &[&str]) -> Value {
    json!({
        "arch": arch,
        "engine_compat": ENGINE,
        "gannet_version": "0.1.0",
        "listen": listen,
        "boot_id": BOOT,
    })
}

/// Gateway `id` in the operator's listing.
async fn listed(op: &Caller, id: i64) -> Value {
    let r = op.get("/v1/admin/gateways").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
        .as_array()
        .and_then(|all| all.iter().find(|g| g["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("gateway {id} is not listed: {}", r.json))
}

/// Nothing of a registration is stored for `g`, and it was never seen.
fn unregistered(g: &Value) {
    for field in [
        "arch",
        "engine_compat",
        "gannet_version",
        "boot_id",
        "registered_ms",
        "last_seen_ms",
    ] {
        assert!(g[field].is_null(), "{field}: {g}");
    }
    assert_eq!(g["listen"], json!([]), "{g}");
    assert_eq!(g["silent"], true, "{g}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_gateway_is_listed_with_what_it_runs_its_lag_and_whether_it_is_silent() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        // No master key: no PoP ticket keys, whose feed rows would shift
        // the revisions this test counts.
        let api = crate::start_with(&db, |c| c.master_key = None).await;
        let store = &api.state.store;
        let op = Caller::operator(&api.url());
        let (fra, fra_id) = node(&op, &api.url(), "fra1").await;
        let (_ams, ams_id) = node(&op, &api.url(), "ams1").await;
        unregistered(&listed(&op, fra_id).await);

        let r = fra
            .post(
                "/v1/pops/fra1/register",
                registration("x86_64", &["127.0.0.1:18480", "[::1]:18443"]),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{backend:?}: {}", r.json);
        let g = listed(&op, fra_id).await;
        assert_eq!(g["pop"], "fra1", "{g}");
        assert_eq!(g["arch"], "x86_64", "{backend:?}: {g}");
        assert_eq!(g["engine_compat"], ENGINE, "{g}");
        assert_eq!(g["gannet_version"], "0.1.0", "{g}");
        assert_eq!(
            g["listen"],
            json!(["127.0.0.1:18480", "[::1]:18443"]),
            "{g}"
        );
        assert_eq!(g["boot_id"], BOOT, "{g}");
        assert!(g["registered_ms"].as_i64().is_some_and(|t| t > 0), "{g}");
        assert!(g["last_seen_ms"].as_i64().is_some(), "{g}");
        assert_eq!(g["silent"], false, "{g}");
        assert_eq!(g["lag"], 0, "{g}");
        // The other PoP's gateway has said nothing.
        unregistered(&listed(&op, ams_id).await);

        // A restart registers again: the new boot id replaces the old one.
        let mut again = registration("x86_64", &["127.0.0.1:18480"]);
        again["boot_id"] = json!("fedcba9876543210");
        let r = fra.post("/v1/pops/fra1/register", again).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
        let g = listed(&op, fra_id).await;
        assert_eq!(g["boot_id"], "fedcba9876543210", "{g}");
        assert_eq!(g["listen"], json!(["127.0.0.1:18480"]), "{g}");

        // A change for every PoP: both gateways are one revision behind.
        let t = op.create_tenant("acme", json!({})).await;
        assert_eq!(
            t.post("/v1/apps", json!({"name": "shop"})).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            t.deploy("shop", example("hello"), &[]).await.status,
            StatusCode::CREATED
        );
        assert_eq!(store.revision().await.unwrap(), 1, "{backend:?}");
        assert_eq!(listed(&op, fra_id).await["lag"], 1, "{backend:?}");
        assert_eq!(listed(&op, ams_id).await["lag"], 1, "{backend:?}");

        // A change for ams1 alone: fra1's lag stays (its gateway will
        // never see that revision), ams1's grows.
        let ams1 = store.pop_id("ams1").await.unwrap().unwrap();
        let tenant = store.tenant_id("acme").await.unwrap().unwrap();
        let app = store.app_row(tenant, "shop").await.unwrap().unwrap();
        let mut tx = store.pool().begin().await.unwrap();
        let revision = append_change(&mut tx, store.dialect(), app.id, Scope::Pop(ams1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(revision, 2);
        assert_eq!(listed(&op, fra_id).await["lag"], 1, "{backend:?}");
        assert_eq!(listed(&op, ams_id).await["lag"], 2, "{backend:?}");

        // fra1 ACKs revision 1: up to date.
        let r = fra
            .post("/v1/pops/fra1/ack", json!({"applied_revision": 1}))
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
        let g = listed(&op, fra_id).await;
        assert_eq!(g["applied_revision"], 1, "{g}");
        assert_eq!(g["lag"], 0, "{backend:?}: {g}");

        // Not heard from for two minutes: silent.
        sqlx::query("UPDATE gateways SET last_seen_ms = $1 WHERE id = $2")
            .bind(now_ms() - 2 * 60_000)
            .bind(fra_id)
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(listed(&op, fra_id).await["silent"], true, "{backend:?}");
        // A poll is contact again.
        let r = fra.get("/v1/pops/fra1/state?since=1&wait_ms=0").await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.json);
        assert_eq!(listed(&op, fra_id).await["silent"], false, "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_registration_is_refused_saying_which_field_and_nothing_is_stored() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let op = Caller::operator(&api.url());
        let (fra, fra_id) = node(&op, &api.url(), "fra1").await;
        let (_ams, ams_id) = node(&op, &api.url(), "ams1").await;

        let long = "a".repeat(200);
        let nine: Vec<String> = (0..9).map(|i| format!("127.0.0.1:{}", 8000 + i)).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        let mut long_boot = registration("x86_64", &[]);
        long_boot["boot_id"] = json!(long.as_str());
        let cases = [
            (registration(&long, &["127.0.0.1:18480"]), "`arch`"),
            (registration("x86_64\n", &[]), "`arch`"),
            (long_boot, "`boot_id`"),
            (
                registration("x86_64", &["127.0.0.1:18480", "not-an-address"]),
                "`listen[1]`",
            ),
            (registration("x86_64", &["localhost:8080"]), "`listen[0]`"),
            (registration("x86_64", &nine), "`listen`"),
        ];
        for (body, field) in cases {
            let r = fra.post("/v1/pops/fra1/register", body).await;
            assert_problem(&r, 400, "invalid-request", field);
        }
        // Not a registration at all.
        let r = fra
            .post("/v1/pops/fra1/register", json!({"arch": "x86_64"}))
            .await;
        assert_problem(&r, 400, "invalid-request", "");
        unregistered(&listed(&op, fra_id).await);

        // fra1's token at ams1's URL: refused as a state poll there is.
        let poll = fra.get("/v1/pops/ams1/state?since=-1&wait_ms=0").await;
        assert_eq!(
            poll.status,
            StatusCode::FORBIDDEN,
            "{backend:?}: {}",
            poll.json
        );
        let r = fra
            .post("/v1/pops/ams1/register", registration("x86_64", &[]))
            .await;
        assert_problem(&r, 403, "forbidden", "its own PoP");
        // The operator's token is no node token.
        let r = op
            .post("/v1/pops/fra1/register", registration("x86_64", &[]))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
        unregistered(&listed(&op, fra_id).await);
        unregistered(&listed(&op, ams_id).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_answers_ready_only_while_every_migration_is_applied() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let anyone = Caller::new(&api.url(), "");
        let r = anyone.get("/readyz").await;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        assert_eq!(r.json, "ready\n");

        sqlx::query(
            "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
        )
        .execute(api.state.store.pool())
        .await
        .unwrap();
        let r = anyone.get("/readyz").await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{backend:?}: {}",
            r.json
        );
        let text = r.json.as_str().unwrap_or("");
        let newest = api.state.store.newest_migration();
        assert!(
            text.contains(&format!("this binary needs migration {newest}")),
            "{backend:?}: {text}"
        );
        // Alive all the same.
        assert_eq!(anyone.get("/healthz").await.status, StatusCode::OK);
    }
}
