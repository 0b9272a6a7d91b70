//! Hostile input and faults, grouped by threat, for gateways that follow the
//! control API. Each test names the attack or fault; each has a bystander
//! tenant that must keep being served, and checks that what the control API
//! reports is what the gateway serves.

use crate::control::{Platform, gateway0, live};
use crate::harness::{Gateway, Http, component, eventually};
use gannet_control_api::testing::{push_leb, with_core_section_entry, with_custom_section};
use gannet_model::Sha256Digest;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn example(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

/// hello, with a second linear memory in its core module.
fn hello_with_two_memories() -> Vec<u8> {
    with_core_section_entry(&example("hello"), 5, &[0x00, 0x01])
}

/// hello, with a 100,001-element table in one of its core modules.
fn hello_with_a_huge_table() -> Vec<u8> {
    let mut table = vec![0x70, 0x00];
    push_leb(&mut table, 100_001);
    with_core_section_entry(&example("hello"), 4, &table)
}

/// Tenant `acme` (with `quotas`) and its app `shop`, at
/// `shop-acme.localhost`; tenant `other`, the bystander, and its app
/// `site`, at `site-other.localhost`. Returns their tokens.
async fn shop_and_bystander(p: &Platform, quotas: serde_json::Value) -> (String, String) {
    let acme = p.tenant("acme", quotas).await;
    let other = p.tenant("other", json!({})).await;
    p.app(&acme, "shop").await;
    p.app(&other, "site").await;
    (acme, other)
}

async fn body(gw: &Gateway, host: &str) -> (u16, String) {
    let r = Http::h1().get(gw.addr, host, "/").await;
    (r.status, r.text())
}

/// Waits until `host` answers `want` on `gw`.
async fn serves(gw: &Gateway, host: &str, want: &str) -> bool {
    eventually(Duration::from_secs(30), || async {
        body(gw, host).await == (200, want.to_string())
    })
    .await
}

fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Threat: a tenant's component validates but cannot load on a gateway (a
// validator bug, or limits that changed). It must be refused alone, keep its
// previous version, not be recompiled on every retry, and not show in any
// other tenant's status.

#[tokio::test(flavor = "multi_thread")]
async fn a_component_the_pool_cannot_load_is_refused_alone_and_keeps_its_previous_version() {
    let p = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, cache) = (dir.path().join("state"), dir.path().join("cache"));
    let evil = p.tenant("evil", json!({})).await;
    let good = p.tenant("good", json!({})).await;
    p.app(&evil, "app").await;
    p.app(&evil, "tables").await;
    p.app(&good, "shop").await;
    p.deploy(&evil, "app", example("hello"), "").await;
    p.deploy(&good, "shop", example("hello"), "env=GREETING%3Dv1")
        .await;
    let gw = p.gateway(&state, &cache);
    assert!(serves(&gw, "shop-good.localhost", "v1, world\n").await);
    assert!(serves(&gw, "app-evil.localhost", "hello, world\n").await);
    drop(gw);

    // While the gateway is down, three changes land: two components that
    // cannot load (forced past the upload's validation) and the bystander's
    // new version. The restarted gateway gets them in one revision.
    p.force_version("evil", "app", &hello_with_two_memories())
        .await;
    p.force_version("evil", "tables", &hello_with_a_huge_table())
        .await;
    p.deploy(&good, "shop", example("env"), "env=V%3D2").await;
    let gw = p.gateway(&state, &cache);

    // The bystander's version goes live; the bad ones are refused, each with
    // the limit it breaks, and `app` keeps serving its previous version.
    assert!(
        serves(&gw, "shop-good.localhost", "V=2\n").await,
        "{}",
        gw.log_text()
    );
    let shop = p
        .wait_status(&good, "shop", Duration::from_secs(30), live)
        .await;
    assert_eq!(gateway0(&shop)["version"], 2);
    assert!(gateway0(&shop)["last_error"].is_null(), "{shop:#}");
    let app = p
        .wait_status(&evil, "app", Duration::from_secs(30), |s| {
            gateway0(s)["last_error"].is_string()
        })
        .await;
    let why = gateway0(&app)["last_error"].as_str().unwrap();
    assert!(why.contains("memories count of 2"), "{why}");
    assert_eq!(gateway0(&app)["current"], false);
    assert_eq!(gateway0(&app)["version"], 1, "the previous version serves");
    assert_eq!(body(&gw, "app-evil.localhost").await.1, "hello, world\n");
    let tables = p
        .wait_status(&evil, "tables", Duration::from_secs(30), |s| {
            gateway0(s)["last_error"].is_string()
        })
        .await;
    let why = gateway0(&tables)["last_error"].as_str().unwrap();
    assert!(why.contains("100001") && why.contains("100000"), "{why}");
    assert_eq!(body(&gw, "tables-evil.localhost").await.0, 404);

    // Another tenant's refusals are invisible in the bystander's status.
    let text = shop.to_string();
    assert!(
        !text.contains("evil") && !text.contains("memories"),
        "{text}"
    );

    // Each refusal was computed once, whatever the revisions since.
    p.deploy(&good, "shop", example("env"), "env=V%3D3").await;
    assert!(serves(&gw, "shop-good.localhost", "V=3\n").await);
    let refused = "gannet_component_prepare_failures_total{kind=\"refused\"}";
    assert_eq!(gw.metric(refused).await, 2.0, "{}", gw.log_text());
    drop(gw);

    // Restarted, the gateway remembers the refusals on disk: a change of the
    // refused app's settings tries it again without compiling it.
    let gw = p.gateway(&state, &cache);
    assert!(serves(&gw, "app-evil.localhost", "hello, world\n").await);
    let (status, _) = p
        .call(
            &evil,
            "POST",
            "/v1/apps/app/domains",
            Some(json!({"hostname": "evil.example"})),
        )
        .await;
    assert_eq!(status, 201);
    let remembered = "gannet_component_prepare_failures_total{kind=\"remembered\"}";
    assert!(
        eventually(Duration::from_secs(30), || async {
            gw.metric(remembered).await >= 1.0
        })
        .await,
        "{}",
        gw.log_text()
    );
    assert_eq!(gw.metric(refused).await, 0.0, "not compiled again");
    assert_eq!(body(&gw, "app-evil.localhost").await.1, "hello, world\n");
    assert_eq!(body(&gw, "shop-good.localhost").await.1, "V=3\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_cannot_be_served_from_disk_does_not_stop_the_gateway_booting() {
    let p = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, cache) = (dir.path().join("state"), dir.path().join("cache"));
    let (acme, other) = shop_and_bystander(&p, json!({})).await;
    p.deploy(&acme, "shop", example("echo"), "").await;
    p.deploy(&other, "site", example("hello"), "").await;
    let gw = p.gateway(&state, &cache);
    assert!(serves(&gw, "site-other.localhost", "hello, world\n").await);
    assert_eq!(
        p.wait_status(&acme, "shop", Duration::from_secs(30), live)
            .await["gateways"][0]["version"],
        1
    );
    drop(gw);

    // Corrupt shop's component in the state directory and drop its compiled
    // artifact: it can be neither loaded nor recompiled from disk.
    let echo = Sha256Digest::of(&example("echo"));
    let wasm = state.join("artifacts").join(format!("{echo}.wasm"));
    let mut bytes = std::fs::read(&wasm).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&wasm, &bytes).unwrap();
    for f in files_named(&cache, &echo.to_string()) {
        std::fs::remove_file(f).unwrap();
    }

    // The gateway boots, serves the bystander from disk, and fetches shop's
    // component again instead of trusting the corrupted one.
    let gw = p.gateway(&state, &cache);
    assert_eq!(body(&gw, "site-other.localhost").await.1, "hello, world\n");
    assert!(
        eventually(Duration::from_secs(30), || async {
            body(&gw, "shop-acme.localhost").await.0 == 200
        })
        .await,
        "{}",
        gw.log_text()
    );
    assert!(gw.log_text().contains("cannot serve this app from disk"));
    assert_eq!(gw.metric("gannet_sync_downloads_total").await, 1.0);
    assert_eq!(std::fs::read(&wasm).unwrap(), example("echo"));
}

// ---------------------------------------------------------------------------
// Threat: the control API (or the path to it) sends more bytes than it
// declared. The gateway reads no more than the declared size.

#[tokio::test(flavor = "multi_thread")]
async fn a_download_longer_than_declared_is_cut_off_and_refused() {
    let p = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (acme, other) = shop_and_bystander(&p, json!({})).await;
    p.deploy(&other, "site", example("hello"), "").await;
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dv1")
        .await;
    let gw = p.gateway(&dir.path().join("state"), &dir.path().join("cache"));
    assert!(serves(&gw, "shop-acme.localhost", "v1, world\n").await);

    // Upload echo without activating it, then make its stored blob 8 MiB
    // longer than the size recorded for it.
    let echo = example("echo");
    p.deploy(&acme, "shop", echo.clone(), "activate=false")
        .await;
    let digest = Sha256Digest::of(&echo);
    let blob = p
        .api
        .state
        .config
        .data_dir
        .join("blobs")
        .join(digest.to_string());
    let mut longer = echo.clone();
    longer.resize(echo.len() + (8 << 20), 0x41);
    std::fs::write(&blob, &longer).unwrap();
    let (status, _) = p
        .call(
            &acme,
            "POST",
            "/v1/apps/shop/rollback",
            Some(json!({"to": 2})),
        )
        .await;
    assert_eq!(status, 200);

    let s = p
        .wait_status(&acme, "shop", Duration::from_secs(30), |s| {
            gateway0(s)["last_error"].is_string()
        })
        .await;
    let why = gateway0(&s)["last_error"].as_str().unwrap();
    assert!(why.contains("larger than the"), "{why}");
    assert_eq!(gateway0(&s)["version"], 1);
    assert_eq!(body(&gw, "shop-acme.localhost").await.1, "v1, world\n");
    assert_eq!(body(&gw, "site-other.localhost").await.1, "hello, world\n");
    assert_eq!(
        gw.metric("gannet_sync_download_bytes_total").await,
        example("hello").len() as f64
    );
}

// ---------------------------------------------------------------------------
// Fault: the gateway's disk fills up. The gateway must NACK and keep serving
// what it served — never crash, never report what it does not serve — and
// take the changes once there is room again. Components nothing needs any
// more are collected.

/// A small tmpfs mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one, if this process may (root); otherwise `None`.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes zeros into `filler` until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_makes_the_gateway_nack_and_keep_serving() {
    let Some(disk) = SmallDisk::mount("16m") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let p = Platform::start().await;
    let (state, cache) = (disk.path().join("state"), disk.path().join("cache"));
    let (acme, other) = shop_and_bystander(&p, json!({"max_versions_per_app": 1})).await;
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dshop1")
        .await;
    p.deploy(&other, "site", example("hello"), "env=GREETING%3Dsite1")
        .await;
    let gw = p.gateway(&state, &cache);
    assert!(serves(&gw, "shop-acme.localhost", "shop1, world\n").await);
    assert!(serves(&gw, "site-other.localhost", "site1, world\n").await);
    let pid = gw.child.id();

    // The disk fills up. A new component cannot be downloaded, and the state
    // cannot be persisted for a change of settings either.
    let filler = disk.fill();
    let big = with_custom_section(&example("hello"), "padding", 2 << 20);
    p.deploy(&acme, "shop", big.clone(), "env=GREETING%3Dshop2")
        .await;
    p.deploy(&other, "site", example("hello"), "env=GREETING%3Dsite2")
        .await;
    let shop = p
        .wait_status(&acme, "shop", Duration::from_secs(30), |s| {
            gateway0(s)["last_error"].is_string()
        })
        .await;
    // It says it does not serve them, and it does not.
    assert_eq!(gateway0(&shop)["current"], false, "{shop:#}");
    assert_eq!(gateway0(&shop)["version"], 1, "{shop:#}");
    let site = p.status(&other, "site").await;
    assert_eq!(gateway0(&site)["current"], false, "{site:#}");
    assert_eq!(gateway0(&site)["version"], 1, "{site:#}");
    for _ in 0..5 {
        assert_eq!(body(&gw, "shop-acme.localhost").await.1, "shop1, world\n");
        assert_eq!(body(&gw, "site-other.localhost").await.1, "site1, world\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gw.metric("gannet_sync_applies_total{result=\"nack\"}")
            .await
            >= 1.0
    );
    let log = gw.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    // The persisted state is whole, and still the one served.
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(snapshot["apps"]["acme/shop"]["version"], 1);

    // Room again: the retries take both changes.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        serves(&gw, "shop-acme.localhost", "shop2, world\n").await,
        "{}",
        gw.log_text()
    );
    assert!(serves(&gw, "site-other.localhost", "site2, world\n").await);
    p.wait_status(&acme, "shop", Duration::from_secs(30), live)
        .await;
    p.wait_status(&other, "site", Duration::from_secs(30), live)
        .await;
    assert_eq!(gw.child.id(), pid);

    // A version nothing retains any more is collected from the state and
    // cache directories; one another app serves is kept.
    let big_digest = Sha256Digest::of(&big).to_string();
    let hello_digest = Sha256Digest::of(&example("hello")).to_string();
    assert_eq!(files_named(&state.join("artifacts"), &big_digest).len(), 1);
    assert!(!files_named(&cache, &big_digest).is_empty());
    p.deploy(&acme, "shop", example("echo"), "").await;
    p.wait_status(&acme, "shop", Duration::from_secs(30), live)
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            files_named(&state.join("artifacts"), &big_digest).is_empty()
                && files_named(&cache, &big_digest).is_empty()
        })
        .await,
        "the unused component is still on disk"
    );
    assert!(gw.metric("gannet_sync_artifacts_collected_total").await >= 1.0);
    assert_eq!(
        files_named(&state.join("artifacts"), &hello_digest).len(),
        1
    );
    assert_eq!(body(&gw, "site-other.localhost").await.1, "site2, world\n");
}

// ---------------------------------------------------------------------------
// Threat: a tenant deploys over and over, growing every gateway's metrics
// (memory, and the operator's time series) without bound.

#[tokio::test(flavor = "multi_thread")]
async fn replaced_versions_leave_no_metric_series_behind() {
    let p = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (acme, other) = shop_and_bystander(&p, json!({})).await;
    p.deploy(&acme, "shop", example("hello"), "").await;
    p.deploy(&other, "site", example("hello"), "").await;
    let gw = p.gateway(&dir.path().join("state"), &dir.path().join("cache"));
    assert!(serves(&gw, "shop-acme.localhost", "hello, world\n").await);
    assert!(serves(&gw, "site-other.localhost", "hello, world\n").await);
    // Versions from the control API are labelled by their number.
    let series = |text: &str, app: &str, version: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.contains(&format!("app=\"{app}\""))
                    && l.contains(&format!("version=\"{version}\""))
            })
            .count()
    };
    let (_, text) = gw.admin_get("/metrics").await;
    assert!(series(&text, "shop-acme", "1") > 0, "{text}");

    for (i, name) in ["echo", "env", "print"].into_iter().enumerate() {
        p.deploy(&acme, "shop", example(name), "").await;
        p.wait_status(&acme, "shop", Duration::from_secs(30), |s| {
            live(s) && gateway0(s)["version"] == i + 2
        })
        .await;
        assert_eq!(body(&gw, "shop-acme.localhost").await.0, 200);
    }
    let (_, text) = gw.admin_get("/metrics").await;
    for old in ["1", "2", "3"] {
        assert_eq!(
            series(&text, "shop-acme", old),
            0,
            "version {old} left series:\n{text}"
        );
    }
    assert!(series(&text, "shop-acme", "4") > 0, "{text}");
    // The bystander's series, for the same component, stay.
    assert!(series(&text, "site-other", "1") > 0, "{text}");

    // A version that changes only the environment is a version of its own
    // (same component, another number).
    p.deploy(&acme, "shop", example("print"), "env=GREETING%3Dv5")
        .await;
    p.wait_status(&acme, "shop", Duration::from_secs(30), |s| {
        live(s) && gateway0(s)["version"] == 5
    })
    .await;
    assert_eq!(body(&gw, "shop-acme.localhost").await.0, 200);
    let (_, text) = gw.admin_get("/metrics").await;
    assert!(series(&text, "shop-acme", "5") > 0, "{text}");
    assert_eq!(series(&text, "shop-acme", "4"), 0, "{text}");
}
