//! The change feed seen by gateways of different PoPs: one global sequence,
//! filtered per PoP.

use crate::{Caller, example};
use gannet_control_api::desired_state::{Scope, append_change};
use gannet_control_api::testing::{TestDb, backends};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_change_for_one_pop_reaches_only_that_pop() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        // No master key: no PoP ticket keys, whose feed rows would shift
        // the revisions this test counts.
        let api = crate::start_with(&db, |c| c.master_key = None).await;
        let op = Caller::operator(&api.url());
        let mut nodes = Vec::new();
        for pop in ["fra1", "ams1"] {
            assert_eq!(
                op.post("/v1/admin/pops", json!({"name": pop})).await.status,
                StatusCode::CREATED
            );
            let n = op
                .post(&format!("/v1/admin/pops/{pop}/gateways"), json!({}))
                .await;
            nodes.push(Caller::new(&api.url(), n.json["token"].as_str().unwrap()));
        }
        let (fra, ams) = (&nodes[0], &nodes[1]);
        let t = op.create_tenant("acme", json!({})).await;
        assert_eq!(
            t.post("/v1/apps", json!({"name": "shop"})).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            t.deploy("shop", example("hello"), &[]).await.status,
            StatusCode::CREATED
        );
        for (pop, node) in [("fra1", fra), ("ams1", ams)] {
            let r = node
                .get(&format!("/v1/pops/{pop}/state?since=-1&wait_ms=0"))
                .await;
            assert_eq!(r.json["revision"], 1, "{backend:?} {pop}: {}", r.json);
        }

        // ams1 waits for a change; one for fra1 alone is appended.
        let waiting = tokio::spawn({
            let ams = ams.clone();
            async move {
                let started = Instant::now();
                let r = ams.get("/v1/pops/ams1/state?since=1&wait_ms=2000").await;
                (r.status, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let store = &api.state.store;
        let fra1 = store.pop_id("fra1").await.unwrap().unwrap();
        let tenant = store.tenant_id("acme").await.unwrap().unwrap();
        let app = store.app_row(tenant, "shop").await.unwrap().unwrap();
        let mut tx = store.pool().begin().await.unwrap();
        let revision = append_change(&mut tx, store.dialect(), app.id, Scope::Pop(fra1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        api.state.notifier.bump(revision, Scope::Pop(fra1));
        assert_eq!(revision, 2);

        // fra1 gets it at once; ams1 is not answered until its wait ends,
        // and then with nothing.
        let r = fra.get("/v1/pops/fra1/state?since=1&wait_ms=0").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json["kind"], "delta", "{}", r.json);
        assert_eq!(r.json["revision"], 2);
        assert_eq!(r.json["upserts"][0]["app"], "shop");
        let (status, waited) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{backend:?}");
        assert!(
            waited >= Duration::from_millis(1900),
            "{backend:?}: {waited:?}"
        );
        let r = ams.get("/v1/pops/ams1/state?since=1&wait_ms=0").await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);

        // A change for every PoP reaches ams1 too, past the one it skipped.
        assert_eq!(
            t.deploy("shop", example("echo"), &[]).await.status,
            StatusCode::CREATED
        );
        let r = ams.get("/v1/pops/ams1/state?since=1&wait_ms=0").await;
        assert_eq!(r.json["revision"], 3, "{}", r.json);
        assert_eq!(r.json["upserts"][0]["version"], 2);
    }
}
