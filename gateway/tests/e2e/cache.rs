//! The disk cache: restarts load without compiling; corrupt artifacts are
//! recompiled, never run.

use crate::harness::{Gateway, Http, app};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn cwasm_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

async fn loads(gw: &Gateway, source: &str) -> f64 {
    gw.metric(&format!(
        "gannet_component_loads_total{{source=\"{source}\"}}"
    ))
    .await
}

async fn stop(mut gw: Gateway) {
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_loads_from_disk_and_corruption_is_recompiled_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let routes = app("hello", "hello", &["hello.test"], "");
    let http = Http::h1();

    // First start compiles and writes the artifact.
    let gw = Gateway::start_with(&routes, cache.path(), &[]);
    assert_eq!(loads(&gw, "compiled").await, 1.0);
    assert_eq!(loads(&gw, "disk").await, 0.0);
    assert_eq!(http.get(gw.addr, "hello.test", "/").await.status, 200);
    stop(gw).await;
    let files = cwasm_files(cache.path());
    assert_eq!(files.len(), 1, "one artifact expected: {files:?}");

    // A restart maps it from disk: no compilation.
    let gw = Gateway::start_with(&routes, cache.path(), &[]);
    assert_eq!(loads(&gw, "disk").await, 1.0);
    assert_eq!(loads(&gw, "compiled").await, 0.0);
    assert_eq!(
        gw.metric("gannet_compile_duration_seconds_count").await,
        0.0
    );
    assert_eq!(
        http.get(gw.addr, "hello.test", "/").await.text(),
        "hello, world\n"
    );
    stop(gw).await;

    // Flip bytes in the middle of the artifact: detected, recompiled.
    let artifact = &files[0];
    let mut bytes = std::fs::read(artifact).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(artifact, &bytes).unwrap();
    let gw = Gateway::start_with(&routes, cache.path(), &[]);
    assert_eq!(gw.metric("gannet_corrupt_artifacts_total").await, 1.0);
    assert_eq!(loads(&gw, "recompiled_corrupt").await, 1.0);
    assert_eq!(loads(&gw, "disk").await, 0.0);
    assert_eq!(
        http.get(gw.addr, "hello.test", "/").await.text(),
        "hello, world\n"
    );
    stop(gw).await;

    // Truncate it: same.
    let len = std::fs::metadata(artifact).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(artifact)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let gw = Gateway::start_with(&routes, cache.path(), &[]);
    assert_eq!(gw.metric("gannet_corrupt_artifacts_total").await, 1.0);
    assert_eq!(
        http.get(gw.addr, "hello.test", "/").await.text(),
        "hello, world\n"
    );
    stop(gw).await;

    // And the repaired artifact loads from disk again.
    let gw = Gateway::start_with(&routes, cache.path(), &[]);
    assert_eq!(loads(&gw, "disk").await, 1.0);
    assert_eq!(gw.metric("gannet_corrupt_artifacts_total").await, 0.0);
}
