//! The OpenAPI document: served, complete, and in step with the checked-in copy.

use gannet_control_api::testing::{Backend, TestDb};
use std::path::Path;

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_is_served_and_matches_the_checked_in_copy() {
    let generated = gannet_control_api::openapi::json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("GANNET_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "control-api/openapi.json is out of date: run `GANNET_UPDATE_OPENAPI=1 cargo test --release -p gannet-control-api --test api openapi` and commit it"
    );

    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start(&db).await;
    let served = reqwest::get(format!("{}/v1/openapi.json", api.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, generated);
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    for path in [
        "/v1/admin/tenants",
        "/v1/apps",
        "/v1/apps/{app}/versions",
        "/v1/apps/{app}/rollback",
        "/v1/apps/{app}/domains",
        "/v1/tokens/{id}",
        "/v1/audit",
        "/v1/components/{digest}",
        "/v1/admin/pops",
        "/v1/pops/{pop}/state",
        "/v1/pops/{pop}/ack",
        "/v1/apps/{app}/status",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
