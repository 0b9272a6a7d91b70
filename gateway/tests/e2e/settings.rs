//! An app's secrets and config, end to end: set through the real control
//! API, read as environment variables by a real guest (`env`, which prints
//! its environment) at the gateways of two PoPs, changed without an upload,
//! never in a response, the audit log, a log line or the database in
//! plaintext, and served by a gateway restarted with no control API.

use crate::control::{POP, Platform};
use crate::harness::{Gateway, Http, component, eventually, shared_cache};
use gannet_control_api::testing::OPERATOR_TOKEN;
use serde_json::json;
use std::time::Duration;

const SECRET_1: &str = "sk_live_first_0f1e2d3c";
const SECRET_2: &str = "sk_live_second_9a8b7c6d";

fn env_guest() -> Vec<u8> {
    std::fs::read(component("env")).unwrap()
}

/// Everything a test might leak into: every file of the SQLite database.
fn database_bytes(p: &Platform) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(p.db.dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("gannet.db") {
            all.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_and_config_reach_every_pop_without_an_upload_and_leak_nowhere() {
    let p = Platform::start().await;
    let (status, _) = p
        .call(
            OPERATOR_TOKEN,
            "POST",
            "/v1/admin/pops",
            Some(json!({"name": "pop2"})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, node2) = p
        .call(OPERATOR_TOKEN, "POST", "/v1/admin/pops/pop2/gateways", None)
        .await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let gw1 = Gateway::follow(
        &p.url(),
        POP,
        &p.node_token,
        dirs[0].path(),
        &shared_cache(),
        &[],
    );
    let gw2 = Gateway::follow(
        &p.url(),
        "pop2",
        node2["token"].as_str().unwrap(),
        dirs[1].path(),
        &shared_cache(),
        &[],
    );

    let acme = p.tenant("acme", json!({})).await;
    p.app(&acme, "shop").await;
    p.deploy(
        &acme,
        "shop",
        env_guest(),
        "env=A%3Dversion&env=C%3Dversion",
    )
    .await;
    // A bystander tenant with the same guest.
    let other = p.tenant("other", json!({})).await;
    p.app(&other, "blog").await;
    p.deploy(&other, "blog", env_guest(), "").await;

    let put = |kind: &'static str, name: &'static str, value: String| {
        let token = acme.clone();
        let p = &p;
        async move {
            p.call(
                &token,
                "PUT",
                &format!("/v1/apps/shop/{kind}/{name}"),
                Some(json!({ "value": value })),
            )
            .await
        }
    };
    let mut responses = Vec::new();
    for (kind, name, value) in [
        ("config", "A", "config"),
        ("config", "B", "config"),
        ("secrets", "B", "secret-b"),
        ("secrets", "STRIPE_KEY", SECRET_1),
    ] {
        let (status, body) = put(kind, name, value.to_string()).await;
        assert_eq!(status, 200, "{kind}/{name}: {body}");
        responses.push(body.to_string());
    }

    let shop = "shop-acme.localhost";
    let serves = |gw: &Gateway, want: &'static str| {
        let addr = gw.addr;
        async move {
            eventually(Duration::from_secs(30), || async {
                Http::h1().get(addr, shop, "/").await.text().contains(want)
            })
            .await
        }
    };
    for gw in [&gw1, &gw2] {
        assert!(serves(gw, SECRET_1).await, "a PoP never served the secret");
        let text = Http::h1().get(gw.addr, shop, "/").await.text();
        // Precedence: version env < config < secrets.
        assert!(text.contains("A=config\n"), "{text}");
        assert!(text.contains("B=secret-b\n"), "{text}");
        assert!(text.contains("C=version\n"), "{text}");
    }
    // Changed: served everywhere, with no new version.
    let (status, body) = put("secrets", "STRIPE_KEY", SECRET_2.to_string()).await;
    assert_eq!(status, 200, "{body}");
    responses.push(body.to_string());
    for gw in [&gw1, &gw2] {
        assert!(
            serves(gw, SECRET_2).await,
            "a PoP never served the new secret"
        );
    }
    let (_, versions) = p.call(&acme, "GET", "/v1/apps/shop/versions", None).await;
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    // The bystander sees none of it.
    let blog = Http::h1()
        .get(gw1.addr, "blog-other.localhost", "/")
        .await
        .text();
    assert!(
        !blog.contains("STRIPE_KEY") && !blog.contains("A=config"),
        "{blog}"
    );

    // Lists: config with values, secrets by name only.
    let (_, secrets) = p.call(&acme, "GET", "/v1/apps/shop/secrets", None).await;
    let names: Vec<_> = secrets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["B", "STRIPE_KEY"]);
    responses.push(secrets.to_string());
    let (_, config) = p.call(&acme, "GET", "/v1/apps/shop/config", None).await;
    assert_eq!(config[0]["value"], "config", "{config}");
    let (_, audit) = p.call(&acme, "GET", "/v1/audit", None).await;
    let audit = audit.to_string();
    assert!(
        audit.contains("secret.set") && audit.contains("STRIPE_KEY"),
        "{audit}"
    );
    responses.push(audit);
    // The files read are the live database: the names are there.
    assert!(contains(&database_bytes(&p), "STRIPE_KEY"));
    for secret in [SECRET_1, SECRET_2, "secret-b"] {
        for r in &responses {
            assert!(!r.contains(secret), "a response holds a secret: {r}");
        }
        for gw in [&gw1, &gw2] {
            assert!(!gw.log_text().contains(secret), "a gateway logged a secret");
        }
        assert!(
            !contains(&database_bytes(&p), secret),
            "the database holds a secret in plaintext"
        );
    }

    // Bad input changes nothing.
    for (kind, name, value, want) in [
        ("secrets", "STRIPE_KEY", String::new(), 400),
        ("secrets", "STRIPE_KEY", "x".repeat(40 << 10), 413),
        ("secrets", "1BAD", "v".to_string(), 400),
        ("config", "A-B", "v".to_string(), 400),
    ] {
        let (status, body) = p
            .call(
                &acme,
                "PUT",
                &format!("/v1/apps/shop/{kind}/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert_eq!(status, want, "{kind}/{name}: {body}");
    }
    for (method, path) in [
        ("PUT", "/v1/apps/shop/secrets/STRIPE_KEY"),
        ("GET", "/v1/apps/shop/secrets"),
        ("DELETE", "/v1/apps/shop/secrets/STRIPE_KEY"),
    ] {
        let body = (method == "PUT").then(|| json!({"value": "stolen"}));
        let (status, _) = p.call(&other, method, path, body).await;
        assert_eq!(status, 404, "{method} {path} by another tenant");
    }
    let (status, _) = p
        .call(&acme, "DELETE", "/v1/apps/shop/secrets/NOPE", None)
        .await;
    assert_eq!(status, 404);
    assert!(serves(&gw1, SECRET_2).await);

    // Kept 0600 on disk; a gateway restarted with no control API serves it.
    let snapshot = dirs[1].path().join("snapshot.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&snapshot).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "snapshot.json is {mode:o}");
    drop(gw2);
    let offline = Gateway::follow(
        "http://127.0.0.1:1",
        "pop2",
        node2["token"].as_str().unwrap(),
        dirs[1].path(),
        &shared_cache(),
        &[],
    );
    assert!(
        serves(&offline, SECRET_2).await,
        "the offline gateway lost the secret"
    );

    // Deleted: gone everywhere.
    let (status, _) = p
        .call(&acme, "DELETE", "/v1/apps/shop/secrets/STRIPE_KEY", None)
        .await;
    assert_eq!(status, 204);
    let gone = eventually(Duration::from_secs(30), || async {
        !Http::h1()
            .get(gw1.addr, shop, "/")
            .await
            .text()
            .contains("STRIPE_KEY")
    })
    .await;
    assert!(gone, "the deleted secret is still served");
}
