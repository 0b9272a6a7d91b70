//! Placement and progressive rollouts, end to end: the real control API
//! (its scheduler loop leading on SQLite) and three real gateway processes,
//! one per PoP, labelled
//!
//! | PoP  | labels                  |
//! |------|-------------------------|
//! | fra1 | region=eu, tier=canary  |
//! | ams1 | region=eu               |
//! | iad1 | region=us               |
//!
//! (the platform's own `pop1` has no gateway here). Gateways push their
//! counters every second and the scheduler analyses every second, so a
//! rollout's steps take seconds, not minutes.

use crate::control::Platform;
use crate::harness::{Gateway, Http, component, eventually, shared_cache};
use bytes::Bytes;
use gannet_control_api::testing::OPERATOR_TOKEN;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The three PoPs and one gateway at each.
struct Fleet {
    platform: Platform,
    gateways: BTreeMap<&'static str, Gateway>,
    /// Per PoP: its gateway's node token and state directory.
    nodes: BTreeMap<&'static str, (String, tempfile::TempDir)>,
}

const POPS: [(&str, &[(&str, &str)]); 3] = [
    ("fra1", &[("region", "eu"), ("tier", "canary")]),
    ("ams1", &[("region", "eu")]),
    ("iad1", &[("region", "us")]),
];

impl Fleet {
    async fn start() -> Fleet {
        let platform = Platform::start_with(|c| {
            c.rollouts.analysis_interval = Duration::from_secs(1);
            c.rollouts.tick = Duration::from_millis(200);
            c.rollouts.gates.min_requests = 20;
            c.rollouts.gateway_grace = Duration::from_secs(4);
        })
        .await;
        let gateways = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (pop, labels) in POPS {
            let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
            let (status, p) = platform
                .call(
                    OPERATOR_TOKEN,
                    "POST",
                    "/v1/admin/pops",
                    Some(json!({"name": pop, "region": labels.get("region"), "labels": labels})),
                )
                .await;
            assert_eq!(status, 201, "{p}");
            let (status, node) = platform
                .call(
                    OPERATOR_TOKEN,
                    "POST",
                    &format!("/v1/admin/pops/{pop}/gateways"),
                    None,
                )
                .await;
            assert_eq!(status, 201, "{node}");
            let state = tempfile::tempdir().unwrap();
            let token = node["token"].as_str().unwrap().to_string();
            nodes.insert(pop, (token, state));
        }
        let mut fleet = Fleet {
            platform,
            gateways,
            nodes,
        };
        for (pop, _) in POPS {
            fleet.start_gateway(pop);
        }
        fleet
    }

    /// (Re)starts `pop`'s gateway on its state directory.
    fn start_gateway(&mut self, pop: &'static str) {
        let (token, state) = &self.nodes[pop];
        let gateway = Gateway::follow(
            &self.platform.url(),
            pop,
            token,
            state.path(),
            &shared_cache(),
            &["--report-interval-secs", "1"],
        );
        self.gateways.insert(pop, gateway);
    }

    fn addr(&self, pop: &str) -> SocketAddr {
        self.gateways[pop].addr
    }

    /// GET `/` for `host` at `pop` with `headers`: (status, body).
    async fn get(&self, pop: &str, host: &str, headers: &[(&str, &str)]) -> (u16, String) {
        match Http::h1()
            .send(self.addr(pop), host, "GET", "/", headers, Bytes::new())
            .await
        {
            Ok(r) => (r.status, r.text()),
            Err(e) => (0, e),
        }
    }

    /// Waits until `host` answers `want` (a body prefix) at every PoP in
    /// `pops` (any user).
    async fn wait_serving(&self, host: &str, pops: &[&str], want: &str) {
        for pop in pops {
            let served = eventually(Duration::from_secs(60), || async {
                self.get(pop, host, &[]).await.1.starts_with(want)
            })
            .await;
            assert!(
                served,
                "{pop} never served `{want}` for {host}: {:?}",
                self.get(pop, host, &[]).await
            );
        }
    }

    async fn rollout(&self, token: &str, app: &str) -> Value {
        let (status, r) = self
            .platform
            .call(token, "GET", &format!("/v1/apps/{app}/rollout"), None)
            .await;
        assert_eq!(status, 200, "{r}");
        r
    }

    /// Waits until the app's rollout is in `phase`; returns it.
    async fn wait_phase(&self, token: &str, app: &str, phase: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.rollout(token, app).await;
            if r["phase"] == phase {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the rollout never became {phase}: {r:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hello() -> Vec<u8> {
    std::fs::read(component("hello")).unwrap()
}

/// Requests at every PoP from many users (`x-user: user-N`) until stopped:
/// the traffic the scheduler analyses. Counts answers by (pop, body).
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<(String, String), u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(targets: Vec<(&'static str, SocketAddr)>, host: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<HashMap<(String, String), u64>>> = Arc::default();
        let (s, seen2) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                for (pop, addr) in &targets {
                    for _ in 0..8 {
                        n += 1;
                        let user = format!("user-{n}");
                        let host = host.clone();
                        let (pop, addr) = (*pop, *addr);
                        batch.push(tokio::spawn(async move {
                            let r = Http::h1()
                                .send(addr, &host, "GET", "/", &[("x-user", &user)], Bytes::new())
                                .await;
                            let answer = match r {
                                Ok(r) if r.status == 200 => r.text(),
                                Ok(r) => format!("status {}", r.status),
                                Err(e) => format!("error {e}"),
                            };
                            (pop, answer)
                        }));
                    }
                }
                for t in batch {
                    if let Ok((pop, answer)) = t.await {
                        *seen2
                            .lock()
                            .unwrap()
                            .entry((pop.to_string(), answer))
                            .or_default() += 1;
                    }
                }
            }
        });
        Load { stop, seen, task }
    }

    fn take(&self) -> HashMap<(String, String), u64> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// The platform hostname of `app` of tenant `tenant`.
fn host(app: &str, tenant: &str) -> String {
    format!("{app}-{tenant}.localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_serves_an_app_only_at_the_pops_its_labels_select() {
    let fleet = Fleet::start().await;
    let p = &fleet.platform;
    let acme = p.tenant("acme", json!({})).await;
    // Bad selectors and selectors matching nothing are refused, and
    // create nothing.
    for (selector, want) in [("region==eu", 400), ("region=asia", 422)] {
        let (status, body) = p
            .call(
                &acme,
                "POST",
                "/v1/apps",
                Some(json!({"name": "shop", "placement": selector})),
            )
            .await;
        assert_eq!(status, want, "{selector}: {body}");
    }
    let (status, apps) = p.call(&acme, "GET", "/v1/apps", None).await;
    assert_eq!(status, 200);
    assert_eq!(apps.as_array().unwrap().len(), 0, "{apps}");

    let (status, app) = p
        .call(
            &acme,
            "POST",
            "/v1/apps",
            Some(json!({"name": "shop", "placement": "region=eu"})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["pops"], json!(["ams1", "fra1"]), "{app}");
    p.deploy(&acme, "shop", hello(), "env=GREETING%3Deu").await;
    // A bystander everywhere.
    let other = p.tenant("other", json!({})).await;
    p.app(&other, "blog").await;
    p.deploy(&other, "blog", hello(), "env=GREETING%3Dblog")
        .await;
    let shop = host("shop", "acme");
    let blog = host("blog", "other");
    fleet
        .wait_serving(&shop, &["fra1", "ams1"], "eu, world")
        .await;
    fleet
        .wait_serving(&blog, &["fra1", "ams1", "iad1"], "blog, world")
        .await;
    assert_eq!(fleet.get("iad1", &shop, &[]).await.0, 404);

    // Moved to the US: iad1 serves it, the EU PoPs drop it.
    let (status, app) = p
        .call(
            &acme,
            "PUT",
            "/v1/apps/shop/placement",
            Some(json!({"selector": "region=us"})),
        )
        .await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["pops"], json!(["iad1"]));
    fleet.wait_serving(&shop, &["iad1"], "eu, world").await;
    for pop in ["fra1", "ams1"] {
        let dropped = eventually(Duration::from_secs(30), || async {
            fleet.get(pop, &shop, &[]).await.0 == 404
        })
        .await;
        assert!(dropped, "{pop} still serves the app after it left");
    }
    // A placement that matches nothing changes nothing.
    let (status, body) = p
        .call(
            &acme,
            "PUT",
            "/v1/apps/shop/placement",
            Some(json!({"selector": "tier=gpu"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("/no-pop-matches"),
        "{body}"
    );
    assert_eq!(fleet.get("iad1", &shop, &[]).await.0, 200);
    // Another tenant cannot place it.
    let (status, _) = p
        .call(
            &other,
            "PUT",
            "/v1/apps/shop/placement",
            Some(json!({"selector": ""})),
        )
        .await;
    assert_eq!(status, 404);
    for pop in ["fra1", "ams1", "iad1"] {
        assert_eq!(
            fleet.get(pop, &blog, &[]).await.0,
            200,
            "bystander at {pop}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_rolled_back_automatically_and_users_get_stable_again() {
    let fleet = Fleet::start().await;
    let p = &fleet.platform;
    let acme = p.tenant("acme", json!({})).await;
    let (status, _) = p
        .call(
            &acme,
            "POST",
            "/v1/apps",
            Some(json!({"name": "shop", "affinity": "header:x-user"})),
        )
        .await;
    assert_eq!(status, 201);
    p.deploy(&acme, "shop", hello(), "env=GREETING%3Dstable")
        .await;
    let other = p.tenant("other", json!({})).await;
    p.app(&other, "blog").await;
    p.deploy(&other, "blog", hello(), "env=GREETING%3Dblog")
        .await;
    let shop = host("shop", "acme");
    fleet
        .wait_serving(&shop, &["fra1", "ams1", "iad1"], "stable, world")
        .await;
    fleet
        .wait_serving(
            &host("blog", "other"),
            &["fra1", "ams1", "iad1"],
            "blog, world",
        )
        .await;

    let targets: Vec<_> = POPS
        .iter()
        .map(|(pop, _)| (*pop, fleet.addr(pop)))
        .collect();
    let load = Load::start(targets.clone(), shop.clone());
    let bystander = Load::start(targets, host("blog", "other"));
    // The canary traps on every request (a 500 from the platform).
    let panic = std::fs::read(component("panic")).unwrap();
    let deployed_at = Instant::now();
    let (status, v) = p
        .upload(
            &acme,
            "shop",
            panic,
            "strategy=canary&steps=pops%3Dtier%3Acanary%2050%25%3B%20100%25&bake=30s",
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let canary = v["number"].as_u64().unwrap();

    let aborted = fleet
        .wait_phase(&acme, "shop", "aborted", Duration::from_secs(60))
        .await;
    let rolled_back_at = Instant::now();
    let reason = aborted["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("fra1"), "{aborted:#}");
    assert!(reason.contains("rate"), "{aborted:#}");
    assert!(
        !reason.contains("ams1"),
        "only fra1 had the canary: {reason}"
    );
    assert_eq!(aborted["canary"], json!(canary));

    // Within one analysis interval (plus a sync), users get stable only.
    let stable_only = eventually(Duration::from_secs(10), || async {
        let mut ok = true;
        for i in 0..40 {
            let user = format!("u-{i}");
            let (status, body) = fleet.get("fra1", &shop, &[("x-user", &user)]).await;
            ok &= status == 200 && body.starts_with("stable, world");
        }
        ok
    })
    .await;
    assert!(stable_only, "fra1 still sends users to the canary");
    let took = rolled_back_at.elapsed();
    println!(
        "failing canary: aborted {} ms after its deploy; stable-only at fra1 {} ms after the abort was visible",
        rolled_back_at.duration_since(deployed_at).as_millis(),
        took.as_millis()
    );
    load.take();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = load.take();
    let failed: u64 = after
        .iter()
        .filter(|((_, answer), _)| !answer.starts_with("stable, world"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        failed, 0,
        "answers other than stable after the rollback: {after:?}"
    );
    load.stop().await;
    let seen = bystander.take();
    bystander.stop().await;
    let bad: Vec<_> = seen
        .iter()
        .filter(|((_, answer), _)| !answer.starts_with("blog, world"))
        .collect();
    assert!(bad.is_empty(), "the bystander failed: {bad:?}");

    // The audit log says which gate failed.
    let (status, audit) = p.call(&acme, "GET", "/v1/audit", None).await;
    assert_eq!(status, 200);
    let text = audit.to_string();
    assert!(text.contains("rollout.aborted"), "{text}");
    // The stable version is still the app's.
    let (_, app) = p.call(&acme, "GET", "/v1/apps/shop", None).await;
    assert_eq!(app["active_version"], json!(canary - 1), "{app}");
    assert!(
        app.get("canary_version").is_none_or(Value::is_null),
        "{app}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_moves_through_its_waves_with_sticky_users_and_pins() {
    let fleet = Fleet::start().await;
    let p = &fleet.platform;
    let acme = p.tenant("acme", json!({})).await;
    let (status, _) = p
        .call(
            &acme,
            "POST",
            "/v1/apps",
            Some(json!({"name": "shop", "affinity": "header:x-user"})),
        )
        .await;
    assert_eq!(status, 201);
    p.deploy(&acme, "shop", hello(), "env=GREETING%3Dv1").await;
    let shop = host("shop", "acme");
    fleet
        .wait_serving(&shop, &["fra1", "ams1", "iad1"], "v1, world")
        .await;

    // Bad policies are refused before anything is stored.
    for (query, why) in [
        (
            "strategy=canary&steps=10%25%3B%205%25%3B%20100%25",
            "may only rise",
        ),
        ("strategy=canary&steps=10%25", "every PoP at 100 %"),
        ("strategy=canary&bake=soon", "bake `soon`"),
        ("strategy=sideways", "strategy `sideways`"),
    ] {
        let (status, body) = p.upload(&acme, "shop", hello(), query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(why), "{query}: {body}");
    }
    let (_, versions) = p.call(&acme, "GET", "/v1/apps/shop/versions", None).await;
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");

    let targets: Vec<_> = POPS
        .iter()
        .map(|(pop, _)| (*pop, fleet.addr(pop)))
        .collect();
    let load = Load::start(targets, shop.clone());
    let (status, v) = p
        .upload(
            &acme,
            "shop",
            hello(),
            "env=GREETING%3Dv2&strategy=canary&steps=pops%3Dtier%3Acanary%2030%25%3B%2060%25%3B%20100%25&bake=3s",
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let canary = v["number"].as_u64().unwrap() as u32;
    let stable = canary - 1;

    // Step 1: 30 % at fra1 only.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = fleet.rollout(&acme, "shop").await;
        if r["phase"] == "progressing" && r["weights"]["fra1"] == json!(30) {
            break;
        }
        assert!(Instant::now() < deadline, "step 1 never went live: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Gateways apply the step's revision: wait until fra1 splits.
    let split = eventually(Duration::from_secs(20), || async {
        let mut v2 = 0;
        for i in 0..50 {
            let user = format!("probe-{i}");
            if fleet
                .get("fra1", &shop, &[("x-user", &user)])
                .await
                .1
                .starts_with("v2")
            {
                v2 += 1;
            }
        }
        v2 > 0
    })
    .await;
    assert!(split, "fra1 never sent anyone to the canary");
    let users: Vec<String> = (0..200).map(|i| format!("sticky-{i}")).collect();
    let mut at_fra1 = HashMap::new();
    for u in &users {
        let (_, body) = fleet.get("fra1", &shop, &[("x-user", u)]).await;
        at_fra1.insert(u.clone(), body.starts_with("v2"));
    }
    let on_canary = at_fra1.values().filter(|c| **c).count();
    assert!(
        (30..=90).contains(&on_canary),
        "30 % of 200 users should be about 60 on the canary, got {on_canary}"
    );
    // The same key gets the same version, request after request.
    for u in users.iter().take(50) {
        let (_, body) = fleet.get("fra1", &shop, &[("x-user", u)]).await;
        assert_eq!(
            body.starts_with("v2"),
            at_fra1[u],
            "{u} moved at a fixed weight"
        );
    }
    // ams1 gives the canary 0 %, but a pin reaches it; a pin to a version
    // outside the deployment does not.
    for u in users.iter().take(20) {
        assert!(
            fleet
                .get("ams1", &shop, &[("x-user", u)])
                .await
                .1
                .starts_with("v1")
        );
    }
    let pin = canary.to_string();
    let (status, body) = fleet.get("ams1", &shop, &[("gannet-version", &pin)]).await;
    assert_eq!((status, body.starts_with("v2")), (200, true), "{body}");
    let old = stable.to_string();
    let (_, body) = fleet
        .get(
            "fra1",
            &shop,
            &[("gannet-version", &old), ("x-user", "sticky-0")],
        )
        .await;
    assert!(
        body.starts_with("v1"),
        "a pin to the stable version: {body}"
    );
    let (status, body) = fleet.get("ams1", &shop, &[("gannet-version", "999")]).await;
    assert_eq!((status, body.starts_with("v1")), (200, true), "{body}");

    // Step 2: 60 % everywhere; users on the canary at fra1 stay there.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = fleet.rollout(&acme, "shop").await;
        if r["weights"]["ams1"] == json!(60) {
            break;
        }
        assert!(
            r["phase"] == "progressing" || r["phase"] == "pending",
            "the rollout stopped: {r:#}"
        );
        assert!(Instant::now() < deadline, "step 2 never went live: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = eventually(Duration::from_secs(20), || async {
        let mut v2 = 0;
        for u in users.iter().take(40) {
            if fleet
                .get("ams1", &shop, &[("x-user", u)])
                .await
                .1
                .starts_with("v2")
            {
                v2 += 1;
            }
        }
        v2 > 0
    })
    .await;
    assert!(moved, "ams1 never split");
    for u in &users {
        if at_fra1[u] {
            let (_, body) = fleet.get("fra1", &shop, &[("x-user", u)]).await;
            assert!(
                body.starts_with("v2"),
                "{u} went back to stable as the weight rose"
            );
        }
    }

    // It finishes: v2 is the app's, everywhere.
    let done = fleet
        .wait_phase(&acme, "shop", "succeeded", Duration::from_secs(90))
        .await;
    assert_eq!(done["canary"], json!(canary));
    let history = done["history"].as_array().unwrap();
    assert!(history.len() >= 4, "{done:#}");
    load.stop().await;
    let (_, app) = p.call(&acme, "GET", "/v1/apps/shop", None).await;
    assert_eq!(app["active_version"], json!(canary), "{app}");
    fleet
        .wait_serving(&shop, &["fra1", "ams1", "iad1"], "v2, world")
        .await;
    for u in users.iter().take(20) {
        for pop in ["fra1", "ams1", "iad1"] {
            assert!(
                fleet
                    .get(pop, &shop, &[("x-user", u)])
                    .await
                    .1
                    .starts_with("v2")
            );
        }
    }

    // Rollback is immediate, and ends nothing live (there is none).
    let (status, app) = p
        .call(
            &acme,
            "POST",
            "/v1/apps/shop/rollback",
            Some(json!({"to": stable})),
        )
        .await;
    assert_eq!(status, 200, "{app}");
    fleet
        .wait_serving(&shop, &["fra1", "ams1", "iad1"], "v1, world")
        .await;
    // Actions on a finished rollout are refused.
    let (status, body) = p
        .call(&acme, "POST", "/v1/apps/shop/rollout/promote", None)
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_during_a_step_is_waited_for_only_its_grace_and_catches_up() {
    let mut fleet = Fleet::start().await;
    let acme = fleet.platform.tenant("acme", json!({})).await;
    let (status, _) = fleet
        .platform
        .call(
            &acme,
            "POST",
            "/v1/apps",
            Some(json!({"name": "shop", "affinity": "header:x-user"})),
        )
        .await;
    assert_eq!(status, 201);
    fleet
        .platform
        .deploy(&acme, "shop", hello(), "env=GREETING%3Dv1")
        .await;
    let shop = host("shop", "acme");
    fleet
        .wait_serving(&shop, &["fra1", "ams1", "iad1"], "v1, world")
        .await;
    let targets = vec![("fra1", fleet.addr("fra1")), ("iad1", fleet.addr("iad1"))];
    let load = Load::start(targets, shop.clone());
    let (status, v) = fleet
        .platform
        .upload(
            &acme,
            "shop",
            hello(),
            "env=GREETING%3Dv2&strategy=canary&steps=pops%3Dtier%3Acanary%2050%25%3B%20100%25&bake=2s",
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let canary = v["number"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = fleet.rollout(&acme, "shop").await;
        if r["weights"]["fra1"] == json!(50) {
            break;
        }
        assert!(Instant::now() < deadline, "step 1 never went live: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ams1's gateway dies before the step that gives it the canary.
    let mut dead = fleet.gateways.remove("ams1").unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let killed_at = Instant::now();

    // The rollout does not wait for it forever, and says so.
    let done = fleet
        .wait_phase(&acme, "shop", "succeeded", Duration::from_secs(90))
        .await;
    load.stop().await;
    let waited = killed_at.elapsed();
    let history = done["history"].to_string();
    assert!(
        history.contains("ams1") && history.contains("silent"),
        "the history does not name the silent gateway: {done:#}"
    );
    assert!(
        waited >= Duration::from_secs(3),
        "advanced {waited:?} after the kill, before the 4 s grace"
    );
    assert_eq!(done["canary"], json!(canary));
    fleet
        .wait_serving(&shop, &["fra1", "iad1"], "v2, world")
        .await;

    // Restarted on its state, it boots what it had, then catches up.
    fleet.start_gateway("ams1");
    fleet.wait_serving(&shop, &["ams1"], "v2, world").await;
}
