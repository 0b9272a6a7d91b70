//! Secrets at rest on both backends: the value is sealed, never stored in
//! plaintext, and never returned.

use crate::{Caller, start};
use gannet_control_api::testing::{TestDb, backends};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

const SECRET: &str = "pg_and_sqlite_secret_7f3a";

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_sealed_at_rest_and_never_returned_on_every_backend() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = start(&db).await;
        let acme = Caller::operator(&api.url())
            .create_tenant("acme", json!({}))
            .await;
        assert_eq!(
            acme.post("/v1/apps", json!({"name": "shop"})).await.status,
            StatusCode::CREATED
        );
        let r = acme
            .put("/v1/apps/shop/secrets/API_KEY", json!({"value": SECRET}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        assert!(!r.json.to_string().contains(SECRET));
        let r = acme.get("/v1/apps/shop/secrets").await;
        assert_eq!(r.json[0]["name"], "API_KEY");
        assert!(!r.json.to_string().contains(SECRET), "{}", r.json);

        let rows = sqlx::query("SELECT value, value_sealed FROM app_settings")
            .fetch_all(api.state.store.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let value: Option<String> = rows[0].get("value");
        let sealed: Vec<u8> = rows[0].get("value_sealed");
        assert_eq!(value, None, "{backend:?}: a secret's value column is set");
        assert!(
            !sealed.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{backend:?}: the sealed value holds the plaintext"
        );
        // What gateways get opens it.
        let settings = api.state.store.settings_for(None).await.unwrap();
        let (_, secrets) = settings.values().next().expect("the app's settings");
        assert_eq!(secrets["API_KEY"], SECRET, "{backend:?}");
    }
}
