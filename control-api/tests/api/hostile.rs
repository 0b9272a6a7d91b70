//! Hostile input to the control API, grouped by threat. Each test names the
//! attack; each checks that it changes nothing it must not, and that another
//! tenant (or the attacker's next honest request) still works.

use crate::{Caller, assert_problem, example, files_in};
use gannet_control_api::fault::{FaultPoint, Faults};
use gannet_control_api::store::Dialect;
use gannet_control_api::testing::{
    Backend, TestApi, TestDb, backends, push_leb, with_core_section_entry, with_custom_section,
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------
// Threat: a tenant uploads a component made to validate but not to load on
// gateways (whose pools admit one memory per module, tables of at most
// 100,000 elements at start, …). Refused at upload, naming the limit.

#[tokio::test(flavor = "multi_thread")]
async fn a_component_over_the_admission_limits_is_refused_at_upload_naming_the_limit() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start(&db).await;
    let op = Caller::operator(&api.url());
    let evil = op.create_tenant("evil", json!({})).await;
    let bystander = op.create_tenant("bystander", json!({})).await;
    for (t, app) in [(&evil, "app"), (&bystander, "shop")] {
        assert_eq!(
            t.post("/v1/apps", json!({"name": app})).await.status,
            StatusCode::CREATED
        );
    }
    let hello = example("hello");
    let mut table = vec![0x70, 0x00];
    push_leb(&mut table, 100_001);
    let cases = [
        (
            "a second memory",
            with_core_section_entry(&hello, 5, &[0x00, 0x01]),
            "memories_per_module",
            "defines 2 linear memories",
        ),
        (
            "a 100,001-element table",
            with_core_section_entry(&hello, 4, &table),
            "table_elements",
            "table of 100001 elements",
        ),
    ];
    for (what, bytes, limit, detail) in cases {
        let r = evil.deploy("app", bytes, &[]).await;
        assert_problem(&r, 422, "invalid-component", detail);
        assert_problem(
            &r,
            422,
            "invalid-component",
            &format!("admission limit `{limit}`"),
        );
        assert_eq!(
            evil.get("/v1/apps/app/versions").await.json,
            json!([]),
            "{what}"
        );
        assert!(
            files_in(&api.state.config.data_dir.join("blobs")).is_empty(),
            "{what}"
        );
    }
    // The attacker's honest upload, and the bystander's, go through.
    assert_eq!(
        evil.deploy("app", hello.clone(), &[]).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        bystander.deploy("shop", hello, &[]).await.status,
        StatusCode::CREATED
    );
}

// ---------------------------------------------------------------------------
// Threat: a tenant races its own quotas with parallel requests, hoping each
// sees room for one more.

#[tokio::test(flavor = "multi_thread")]
async fn ten_parallel_app_creations_at_19_of_20_end_at_20() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let t = Caller::operator(&api.url())
            .create_tenant("acme", json!({"max_apps": 20}))
            .await;
        for i in 0..19 {
            let r = t.post("/v1/apps", json!({"name": format!("app{i}")})).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        }
        let racing = (0..10).map(|i| {
            let t = t.clone();
            async move {
                t.post("/v1/apps", json!({"name": format!("race{i}")}))
                    .await
            }
        });
        let replies = futures::future::join_all(racing).await;
        let created = replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{backend:?}");
        for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_problem(r, 403, "quota-exceeded", "quota of 20 apps");
        }
        let apps = t.get("/v1/apps").await.json;
        assert_eq!(apps.as_array().unwrap().len(), 20, "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_uploads_cannot_pass_the_stored_bytes_quota() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        // Five uploads at once: this races the stored-bytes quota, not the
        // bound on a tenant's uploads in progress.
        let api = crate::start_with(&db, |c| c.compile.per_tenant = 5).await;
        let hello = example("hello");
        // Room for one more variant of hello (each ~hello + 1 KiB), not two.
        let quota = hello.len() * 3 / 2;
        let t = Caller::operator(&api.url())
            .create_tenant("acme", json!({"max_total_bytes": quota}))
            .await;
        for i in 0..5 {
            let r = t.post("/v1/apps", json!({"name": format!("app{i}")})).await;
            assert_eq!(r.status, StatusCode::CREATED);
        }
        let racing = (0..5).map(|i| {
            let t = t.clone();
            let bytes = with_custom_section(&hello, &format!("variant{i}"), 1024);
            async move { t.deploy(&format!("app{i}"), bytes, &[]).await }
        });
        let replies = futures::future::join_all(racing).await;
        let created = replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{backend:?}");
        for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_problem(r, 403, "quota-exceeded", "stored components");
        }
        let me = t.get("/v1/whoami").await.json;
        assert!(me["stored_bytes"].as_u64().unwrap() <= quota as u64, "{me}");
        // The refused uploads left no bytes behind.
        assert_eq!(blob_count(&api).await, 1, "{backend:?}");
    }
}

// ---------------------------------------------------------------------------
// Threat: a tenant uploads a component at the moment another tenant's
// deploy prunes the last version using it, so the collection of the old
// blob meets the upload that needs it.

/// A fault hook that, once armed, holds the next upload after its blob is
/// stored until released.
#[derive(Clone, Default)]
struct HoldUpload {
    armed: Arc<AtomicBool>,
    held: Arc<Notify>,
    release: Arc<Notify>,
}

impl HoldUpload {
    fn faults(&self) -> Faults {
        let me = self.clone();
        Faults::with_hook(Arc::new(move |point| {
            let me = me.clone();
            Box::pin(async move {
                if point == FaultPoint::UploadStored && me.armed.swap(false, Ordering::SeqCst) {
                    me.held.notify_one();
                    me.release.notified().await;
                }
            })
        }))
    }
}

async fn blob_count(api: &TestApi) -> usize {
    match api.state.store.dialect() {
        Dialect::Sqlite => files_in(&api.state.config.data_dir.join("blobs")).len(),
        Dialect::Postgres => sqlx::query("SELECT COUNT(DISTINCT digest) AS n FROM blob_chunks")
            .fetch_one(api.state.store.pool())
            .await
            .unwrap()
            .try_get::<i64, _>("n")
            .unwrap() as usize,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_racing_the_collection_of_the_same_component_keeps_its_blob() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let hold = HoldUpload::default();
        let api = crate::start_with(&db, |c| c.faults = hold.faults()).await;
        let op = Caller::operator(&api.url());
        let x = op
            .create_tenant("x", json!({"max_versions_per_app": 1}))
            .await;
        let y = op.create_tenant("y", json!({})).await;
        assert_eq!(
            x.post("/v1/apps", json!({"name": "a"})).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            y.post("/v1/apps", json!({"name": "b"})).await.status,
            StatusCode::CREATED
        );
        let shared = example("hello");
        let r = x.deploy("a", shared.clone(), &[]).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let digest = r.json["digest"].as_str().unwrap().to_string();

        // Y uploads the same bytes: the blob is there, so Y stores nothing
        // and is held before its version is created.
        hold.armed.store(true, Ordering::SeqCst);
        let held = hold.held.notified();
        let upload = tokio::spawn({
            let y = y.clone();
            let shared = shared.clone();
            async move { y.deploy("b", shared, &[]).await }
        });
        held.await;
        // Meanwhile X replaces its only version: the component is no longer
        // held by anyone, and is collected, blob and all.
        assert_eq!(
            x.deploy("a", example("echo"), &[]).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            blob_count(&api).await,
            1,
            "{backend:?}: only echo's blob left"
        );
        hold.release.notify_one();

        // Y's version exists, and its component's bytes with it.
        let r = upload.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        assert_eq!(r.json["digest"], digest.as_str());
        let (status, bytes) = y.download(&digest).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert_eq!(bytes, shared, "{backend:?}");
        assert_eq!(blob_count(&api).await, 2, "{backend:?}");
        // And a later prune of X does not take it away either.
        assert_eq!(
            x.deploy("a", example("env"), &[]).await.status,
            StatusCode::CREATED
        );
        assert_eq!(y.download(&digest).await.0, StatusCode::OK);
    }
}

// ---------------------------------------------------------------------------
// Threat: a tenant reads another tenant's failures through the status of
// its own app.

#[tokio::test(flavor = "multi_thread")]
async fn a_gateways_refusal_of_another_tenants_app_is_invisible_in_my_status() {
    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start(&db).await;
    let op = Caller::operator(&api.url());
    let a = op.create_tenant("tenant-a", json!({})).await;
    let b = op.create_tenant("tenant-b", json!({})).await;
    assert_eq!(
        a.post("/v1/apps", json!({"name": "shop"})).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        b.post("/v1/apps", json!({"name": "secret-plan"}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        a.deploy("shop", example("hello"), &[]).await.status,
        StatusCode::CREATED
    );
    // Revision 1 activates A's shop, revision 2 B's app.
    let r = b.deploy("secret-plan", example("hello"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        op.post("/v1/admin/pops", json!({"name": "fra1"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let node = op.post("/v1/admin/pops/fra1/gateways", json!({})).await;
    let gw = Caller::new(&api.url(), node.json["token"].as_str().unwrap());

    // The gateway applied A's change, refused B's app, and failed to apply
    // a later revision with an error that names B's app.
    let ack = json!({
        "applied_revision": 2,
        "failed_revision": 3,
        "error": "persisting the state: app `secret-plan-tenant-b`: disk full",
        "apps": [{"key": "tenant-a/shop", "version": 1, "requests": 5, "errors": 0}],
        "failed_apps": [{"key": "tenant-b/secret-plan", "version": 1, "error": "secret-plan: defined memories count of 2"}],
    });
    assert_eq!(
        gw.post("/v1/pops/fra1/ack", ack).await.status,
        StatusCode::NO_CONTENT
    );

    let mine = a.get("/v1/apps/shop/status").await.json;
    let text = mine.to_string();
    assert!(
        !text.contains("secret-plan") && !text.contains("tenant-b") && !text.contains("memories"),
        "{text}"
    );
    assert_eq!(mine["gateways"][0]["current"], true, "{mine}");
    assert!(mine["gateways"][0]["last_error"].is_null(), "{mine}");
    // B sees its own refusal; the operator sees everything.
    let theirs = b.get("/v1/apps/secret-plan/status").await.json;
    assert!(
        theirs["gateways"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("memories count of 2")
    );
    let all = op.get("/v1/admin/gateways").await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(
        all.json[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{}",
        all.json
    );
    // A tenant cannot read the operator's view.
    assert_problem(
        &a.get("/v1/admin/gateways").await,
        403,
        "forbidden",
        "operator token",
    );
}

// ---------------------------------------------------------------------------
// Threat: a client sends its request head a byte at a time (slowloris) to
// hold a connection. The header read timeout cuts it; others are served.

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_request_head_is_cut_by_the_header_read_timeout() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = TestDb::new(Backend::Sqlite).await;
    let api = crate::start_with(&db, |c| {
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let stream = tokio::net::TcpStream::connect(api.addr)
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    // 59 bytes: 12 s at one byte per 200 ms.
    let head = b"GET /healthz HTTP/1.1\r\nHost: api\r\nUser-Agent: slowloris\r\n\r\n";
    let started = Instant::now();
    let slowloris = tokio::spawn(async move {
        for byte in head {
            if write.write_all(&[*byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    });

    // Another client is served meanwhile.
    let other = Caller::operator(&api.url()).get("/healthz").await;
    assert_eq!(other.status, StatusCode::OK);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the slowloris connection is closed");
    let cut_after = started.elapsed();
    assert!(
        cut_after < Duration::from_secs(3),
        "cut only after {cut_after:?}"
    );
    assert!(
        answer.is_empty(),
        "the slow request was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    slowloris.abort();
    assert!(
        !matches!(slowloris.await, Ok(true)),
        "the whole head went through before the cut"
    );
}
