//! Bad uploads leave nothing behind; the same upload twice stores one blob.

use crate::{Caller, assert_problem, example, files_in, foreign_imports_component};
use gannet_control_api::store::Dialect;
use gannet_control_api::testing::{TestApi, TestDb, backends};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

async fn blob_count(api: &TestApi) -> usize {
    match api.state.store.dialect() {
        Dialect::Sqlite => files_in(&api.state.config.data_dir.join("blobs")).len(),
        Dialect::Postgres => {
            let row = sqlx::query("SELECT COUNT(DISTINCT digest) AS n FROM blob_chunks")
                .fetch_one(api.state.store.pool())
                .await
                .unwrap();
            row.try_get::<i64, _>("n").unwrap() as usize
        }
    }
}

async fn component_rows(api: &TestApi) -> i64 {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM components")
        .fetch_one(api.state.store.pool())
        .await
        .unwrap();
    row.try_get("n").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_clearly_and_leave_nothing() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let t = Caller::operator(&api.url())
            .create_tenant("acme", json!({"max_component_size": 1_000_000}))
            .await;
        assert_eq!(
            t.post("/v1/apps", json!({"name": "shop"})).await.status,
            StatusCode::CREATED
        );
        let hello = example("hello");
        let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
            (
                "not wasm",
                b"#!/bin/sh\necho hi\n".to_vec(),
                422,
                "invalid-component",
                "not a WebAssembly file",
            ),
            (
                "core module",
                b"\0asm\x01\0\0\0".to_vec(),
                422,
                "invalid-component",
                "core WebAssembly module",
            ),
            (
                "truncated",
                hello[..hello.len() / 2].to_vec(),
                422,
                "invalid-component",
                "malformed component",
            ),
            (
                "no handler",
                b"\0asm\x0d\0\x01\0".to_vec(),
                422,
                "invalid-component",
                "does not export wasi:http/incoming-handler",
            ),
            (
                "over size",
                example("echo-js"),
                413,
                "payload-too-large",
                "larger than the",
            ),
            (
                "foreign imports",
                foreign_imports_component(),
                422,
                "unsupported-imports",
                "fermyon:spin/key-value@2.0.0",
            ),
        ];
        for (what, bytes, status, kind, detail) in cases {
            let r = t.deploy("shop", bytes, &[]).await;
            assert_problem(&r, status, kind, detail);
            if kind == "unsupported-imports" {
                assert_eq!(
                    r.json["refused_imports"],
                    json!(["fermyon:spin/key-value@2.0.0", "fastly:api/http-req@0.1.0"]),
                    "{what}: every refused import is named, granted ones are not"
                );
            }
            assert_eq!(blob_count(&api).await, 0, "{what}: blob left behind");
            assert_eq!(component_rows(&api).await, 0, "{what}: row left behind");
            assert_eq!(
                t.get("/v1/apps/shop/versions").await.json,
                json!([]),
                "{what}"
            );
            assert!(
                files_in(&api.state.config.data_dir.join("tmp")).is_empty(),
                "{what}: temp file left behind"
            );
        }
        // Bad query parameters are refused before the body is read.
        let r = t.deploy("shop", hello.clone(), &[("memory", "lots")]).await;
        assert_problem(&r, 400, "invalid-request", "memory=lots");
        let r = t
            .deploy("shop", hello.clone(), &[("env", "NOEQUALS")])
            .await;
        assert_problem(&r, 400, "invalid-request", "KEY=VALUE");
        // A good one still goes through afterwards.
        let r = t.deploy("shop", hello, &[]).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        assert_eq!(blob_count(&api).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_component_uploaded_twice_at_once_is_stored_once() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = crate::start(&db).await;
        let t = Caller::operator(&api.url())
            .create_tenant("acme", json!({}))
            .await;
        for app in ["one", "two"] {
            assert_eq!(
                t.post("/v1/apps", json!({"name": app})).await.status,
                StatusCode::CREATED
            );
        }
        let bytes = example("echo-js");
        let (r1, r2) = tokio::join!(
            t.deploy("one", bytes.clone(), &[]),
            t.deploy("two", bytes.clone(), &[])
        );
        assert_eq!(
            (r1.status, r2.status),
            (StatusCode::CREATED, StatusCode::CREATED),
            "{} {}",
            r1.json,
            r2.json
        );
        assert_eq!(r1.json["digest"], r2.json["digest"]);
        assert_eq!(blob_count(&api).await, 1);
        assert_eq!(component_rows(&api).await, 1);
        // Stored bytes count the component once.
        let me = t.get("/v1/whoami").await.json;
        assert_eq!(me["stored_bytes"].as_u64().unwrap(), bytes.len() as u64);
        let (status, got) = t.download(r1.json["digest"].as_str().unwrap()).await;
        assert_eq!((status, got.len()), (StatusCode::OK, bytes.len()));
    }
}
