//! Tenants' own certificates: a gateway following the control API serves
//! each custom domain's certificate by SNI (an exact name, a wildcard),
//! the platform certificate to every other name, takes a rotation without
//! a restart or a failed request, keeps the keys 0600 in its state
//! directory, and boots from there with the control API gone. No private
//! key ever reaches its log.

use crate::certs::{self, CertFiles, NOT_AFTER_2040, arg, ca_pem, jan_first, leaf, leaf_until};
use crate::control::{POP, Platform};
use crate::harness::{Body, Gateway, Reply, component, empty_body, eventually, shared_cache};
use gannet_control_api::testing::OPERATOR_TOKEN;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde_json::json;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Tenant `acme`'s custom domain, for its app `shop`.
const SHOP: &str = "shop.example.com";
/// Tenant `beta`'s wildcard domain, for its app `blog`, and a name under it.
const BLOG_WILDCARD: &str = "*.beta.example.org";
const BLOG: &str = "x.beta.example.org";
/// The platform certificate's names (none of the tenants' domains).
const PLATFORM_NAMES: &[&str] = &["*.platform.test"];

/// An HTTP/1.1 connection over TLS to the gateway, and the leaf
/// certificate its handshake was shown (DER).
struct Conn {
    leaf: Vec<u8>,
    sender: http1::SendRequest<Body>,
}

impl Conn {
    /// Connects to `addr` and completes a handshake sending `sni`.
    async fn open(addr: SocketAddr, config: &Arc<ClientConfig>, sni: &str) -> Result<Conn, String> {
        let tls = certs::tls_connect(addr, config, sni).await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Conn { leaf, sender })
    }

    /// GET / of `host` on this connection; the whole reply.
    async fn get(&mut self, host: &str) -> Result<Reply, String> {
        let req = http::Request::get("/")
            .header("host", host)
            .body(empty_body())
            .map_err(|e| e.to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("not ready: {e}"))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        Reply::read(resp).await
    }
}

/// A new connection sending `sni`, and a GET of `sni` on it: the leaf it
/// was shown and the reply.
async fn fetch(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    sni: &str,
) -> Result<(Vec<u8>, Reply), String> {
    let mut conn = Conn::open(addr, config, sni).await?;
    let reply = conn.get(sni).await?;
    Ok((conn.leaf, reply))
}

/// A client that verifies against the test CA (so a handshake for a
/// tenant's domain succeeds only with that tenant's certificate) and never
/// resumes (so every handshake shows what is served now).
fn verifying() -> Arc<ClientConfig> {
    certs::fresh_client(&["http/1.1"])
}

/// Waits (30 s) until a new verified handshake for `sni` shows `leaf` and
/// the app behind it answers `body`.
async fn serves(addr: SocketAddr, sni: &str, leaf: &[u8], body: &str) -> bool {
    let config = verifying();
    eventually(Duration::from_secs(30), || {
        let config = config.clone();
        async move {
            matches!(
                fetch(addr, &config, sni).await,
                Ok((seen, r)) if seen == leaf && r.status == 200 && r.text() == body
            )
        }
    })
    .await
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

/// A full chain as a tenant uploads it: leaf, then the CA.
fn upload(pair: &(String, String)) -> serde_json::Value {
    json!({"cert_pem": format!("{}{}", pair.0, ca_pem()), "key_pem": pair.1})
}

/// Adds `hostname` to `app` with its certificate (again: a rotation).
async fn add_domain(p: &Platform, token: &str, app: &str, hostname: &str, pair: &(String, String)) {
    let (status, answer) = p
        .call(
            token,
            "POST",
            &format!("/v1/apps/{app}/domains"),
            Some(json!({"hostname": hostname, "certificate": upload(pair)})),
        )
        .await;
    assert!(
        (200..300).contains(&status),
        "adding {hostname} to {app}: {status} {answer}"
    );
    // It serves once control is proved: the operator vouches (the proofs
    // themselves are tested in ownership.rs).
    let (status, answer) = p
        .call(
            OPERATOR_TOKEN,
            "POST",
            &format!("/v1/admin/domains/{hostname}/verify"),
            None,
        )
        .await;
    assert_eq!(status, 204, "vouching for {hostname}: {answer}");
}

/// The control API with two tenants, each with an app on `hello` and a
/// custom domain carrying its own certificate; and the platform
/// certificate's files.
struct Tenants {
    p: Platform,
    /// Tenant acme's token (app `shop`, domain [`SHOP`]).
    acme: String,
    /// acme's certificate for [`SHOP`].
    shop: (String, String),
    /// beta's certificate for [`BLOG_WILDCARD`].
    blog: (String, String),
    platform: CertFiles,
    /// DER of the platform leaf.
    platform_leaf: Vec<u8>,
}

impl Tenants {
    async fn start() -> Tenants {
        let p = Platform::start().await;
        let acme = p.tenant("acme", json!({})).await;
        let beta = p.tenant("beta", json!({})).await;
        p.app(&acme, "shop").await;
        p.app(&beta, "blog").await;
        p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dshop")
            .await;
        p.deploy(&beta, "blog", example("hello"), "env=GREETING%3Dblog")
            .await;
        let shop = leaf(&[SHOP]);
        let blog = leaf(&[BLOG_WILDCARD]);
        add_domain(&p, &acme, "shop", SHOP, &shop).await;
        add_domain(&p, &beta, "blog", BLOG_WILDCARD, &blog).await;
        let platform_pair = leaf(PLATFORM_NAMES);
        Tenants {
            acme,
            shop,
            blog,
            platform: CertFiles::new(&platform_pair),
            platform_leaf: certs::der_of(&platform_pair.0),
            p,
        }
    }
}

/// A gateway following `api_url` with its state in `state` and an HTTPS
/// listener serving `platform` to names without their own certificate.
fn follow_with_tls(api_url: &str, node_token: &str, state: &Path, platform: &CertFiles) -> Gateway {
    let args = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        arg(&platform.cert),
        "--tls-key",
        arg(&platform.key),
    ];
    let gw = Gateway::follow(api_url, POP, node_token, state, &shared_cache(), &args);
    assert!(gw.tls.is_some(), "no https listener");
    gw
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_no_key_in(gw: &Gateway) {
    let logs = gw.log_text();
    assert!(!logs.contains("PRIVATE KEY"), "a key in the log:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_gets_its_own_certificate_by_sni_and_a_rotation_fails_no_request() {
    let t = Tenants::start().await;
    let state = tempfile::tempdir().unwrap();
    let gw = follow_with_tls(&t.p.url(), &t.p.node_token, state.path(), &t.platform);
    let tls = gw.tls.unwrap();
    let (shop_leaf, blog_leaf) = (certs::der_of(&t.shop.0), certs::der_of(&t.blog.0));

    // Each tenant's name: its own certificate (verified against the CA,
    // for that name) and its own app.
    assert!(
        serves(tls, SHOP, &shop_leaf, "shop, world\n").await,
        "{SHOP} is not served with acme's certificate:\n{}",
        gw.log_text()
    );
    assert!(
        serves(tls, BLOG, &blog_leaf, "blog, world\n").await,
        "{BLOG} is not served with beta's wildcard certificate:\n{}",
        gw.log_text()
    );

    // Any other name (a platform hostname, a name nobody has, two labels
    // under the wildcard) gets the platform certificate, and routes by Host.
    let anything = Arc::new(certs::trust_anything(&["http/1.1"]));
    for (sni, status) in [
        ("shop-acme.localhost", 200),
        ("nobody.example.net", 404),
        ("a.b.beta.example.org", 200),
    ] {
        let (seen, r) = fetch(tls, &anything, sni).await.unwrap();
        assert_eq!(seen, t.platform_leaf, "{sni}: not the platform certificate");
        assert_eq!(r.status, status, "{sni}");
    }
    // One expiry series per tenant hostname too.
    let expiry =
        |name: &str| format!("gannet_tls_cert_expiry_timestamp_seconds{{name=\"{name}\"}}");
    assert_eq!(gw.metric(&expiry(SHOP)).await, NOT_AFTER_2040 as f64);
    assert_eq!(
        gw.metric(&expiry(BLOG_WILDCARD)).await,
        NOT_AFTER_2040 as f64
    );

    // Load throughout the rotation: requests on one kept-alive connection
    // (made with the first certificate) and on new verified connections.
    // Every one must be answered 200 by the shop.
    let mut kept = Conn::open(tls, &verifying(), SHOP).await.unwrap();
    assert_eq!(kept.leaf, shop_leaf);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let fresh = verifying();
            let mut failures: Vec<String> = Vec::new();
            let mut kept_served = 0u32;
            let mut check = |what: &str, r: Result<Reply, String>| match r {
                Ok(r) if r.status == 200 && r.text() == "shop, world\n" => true,
                Ok(r) => {
                    failures.push(format!("{what}: {} {:?}", r.status, r.text()));
                    false
                }
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    false
                }
            };
            while !stop.load(Ordering::Relaxed) {
                if check("kept-alive connection", kept.get(SHOP).await) {
                    kept_served += 1;
                }
                let new = fetch(tls, &fresh, SHOP).await.map(|(_, r)| r);
                check("new connection", new);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (kept_served, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // `domains add` again with a new pair (new key, later expiry).
    let rotated = leaf_until(&[SHOP], 2041);
    let rotated_leaf = certs::der_of(&rotated.0);
    add_domain(&t.p, &t.acme, "shop", SHOP, &rotated).await;
    assert!(
        serves(tls, SHOP, &rotated_leaf, "shop, world\n").await,
        "new handshakes for {SHOP} never got the new certificate:\n{}",
        gw.log_text()
    );
    let until_2041 = jan_first(2041) as f64;
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric(&expiry(SHOP)).await == until_2041
        })
        .await,
        "the expiry gauge still shows the first certificate"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (kept_served, failures) = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("the load did not stop")
        .unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert!(
        kept_served >= 3,
        "the kept-alive connection served {kept_served} requests"
    );

    // The other tenant's certificate did not move.
    let (seen, r) = fetch(tls, &verifying(), BLOG).await.unwrap();
    assert_eq!((seen, r.status), (blog_leaf, 200));
    assert_no_key_in(&gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_cut_off_from_the_control_api_boots_with_the_tenants_certificates_kept_0600() {
    let t = Tenants::start().await;
    let state = tempfile::tempdir().unwrap();
    let (url, node_token) = (t.p.url(), t.p.node_token.clone());
    let (shop_leaf, blog_leaf) = (certs::der_of(&t.shop.0), certs::der_of(&t.blog.0));
    let gw = follow_with_tls(&url, &node_token, state.path(), &t.platform);
    let tls = gw.tls.unwrap();
    assert!(
        serves(tls, SHOP, &shop_leaf, "shop, world\n").await,
        "{}",
        gw.log_text()
    );
    assert!(serves(tls, BLOG, &blog_leaf, "blog, world\n").await);

    // The keys are on disk, readable by the gateway's user only.
    let snapshot = state.path().join("snapshot.json");
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert!(text.contains(SHOP) && text.contains("PRIVATE KEY"));
    assert_eq!(mode(&snapshot), 0o600);
    assert_no_key_in(&gw);
    drop(gw);

    // The control API goes away; the snapshot was left readable by others
    // (as a gateway from before certificates wrote it).
    let Tenants { p, platform, .. } = t;
    drop(p);
    std::fs::set_permissions(&snapshot, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Restarted on its state directory, it serves both tenants' names with
    // their certificates at once, and made the snapshot 0600 again.
    let gw = follow_with_tls(&url, &node_token, state.path(), &platform);
    let tls = gw.tls.unwrap();
    for (sni, leaf, body) in [
        (SHOP, &shop_leaf, "shop, world\n"),
        (BLOG, &blog_leaf, "blog, world\n"),
    ] {
        let (seen, r) = fetch(tls, &verifying(), sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", gw.log_text()));
        assert_eq!(&seen, leaf, "{sni}");
        assert_eq!((r.status, r.text().as_str()), (200, body), "{sni}");
    }
    assert_eq!(mode(&snapshot), 0o600);
    assert!(
        eventually(Duration::from_secs(30), || async {
            gw.log_text().contains("state poll failed")
        })
        .await,
        "the control API was still reachable:\n{}",
        gw.log_text()
    );
    assert_no_key_in(&gw);
}
