//! Managed certificates against a real ACME server: the control API orders
//! from Pebble ([`crate::pebble`]), which validates HTTP-01 by fetching the
//! challenge from a real gateway's plain port (the name resolved by
//! Pebble's own DNS server), and the gateway then serves the issued
//! certificate by SNI — verified against Pebble's issuing root and nothing
//! else. A name whose validation cannot succeed fails with Pebble's
//! reason; a renewal an operator asks for switches the gateway to a new
//! certificate without a restart or a failed request; another tenant's
//! app answers throughout; no private key reaches an API response or the
//! gateway's log.

use crate::certs::{self, CertFiles, arg};
use crate::control::{POP, Platform};
use crate::harness::{Gateway, Http, Reply, component, empty_body, eventually, shared_cache};
use crate::pebble::Pebble;
use bytes::Bytes;
use gannet_control_api::acme::AcmeConfig;
use gannet_control_api::testing::OPERATOR_TOKEN;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tenant acme's managed hostname, for its app `shop`.
const SHOP: &str = "shop.test";
const SHOP_BODY: &str = "shop, world\n";
/// A managed hostname of the same app whose validation cannot succeed:
/// Pebble's DNS sends it to 127.0.0.2, where nothing listens.
const FAIL: &str = "fail.test";
/// Tenant beta's app `blog` at its platform hostname: the bystander.
const BLOG: &str = "blog-beta.localhost";
const BLOG_BODY: &str = "blog, world\n";
/// The gateway's platform certificate's names (none of the above).
const PLATFORM_NAMES: &[&str] = &["*.platform.test"];

/// How long an order may take, from the hostname's addition (or the
/// renewal's request) to the state the test waits for.
const ORDER_LIMIT: Duration = Duration::from_secs(60);

fn example(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The control API as the test drives it for domains, keeping every
/// response it gave (to look for private keys in them).
struct Api<'a> {
    p: &'a Platform,
    seen: Mutex<Vec<String>>,
}

impl Api<'_> {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, v) = self.p.call(token, method, path, body).await;
        self.seen.lock().unwrap().push(v.to_string());
        (status, v)
    }

    /// `host` as `GET /v1/apps/shop/domains` lists it (null if absent).
    async fn domain(&self, token: &str, host: &str) -> Value {
        let (status, list) = self.call(token, "GET", "/v1/apps/shop/domains", None).await;
        assert_eq!(status, 200, "{list}");
        list.as_array()
            .and_then(|l| l.iter().find(|d| d["hostname"] == host))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Polls `host`'s listing until `check` holds; on timeout panics with
    /// the listing and `diag()` (the processes' logs).
    async fn wait_domain(
        &self,
        token: &str,
        host: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
        diag: &dyn Fn() -> String,
    ) -> Value {
        let deadline = Instant::now() + ORDER_LIMIT;
        loop {
            let d = self.domain(token, host).await;
            if check(&d) {
                return d;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{host} was not {what} within {} s: {d:#}\n{}",
                    ORDER_LIMIT.as_secs(),
                    diag()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every response so far, and the gateway's log, hold no private key.
    fn assert_no_key(&self, gw: &Gateway) {
        let seen = self.seen.lock().unwrap().join("\n");
        assert!(
            !seen.contains("PRIVATE KEY"),
            "a key in an API response:\n{seen}"
        );
        let logs = gw.log_text();
        assert!(!logs.contains("PRIVATE KEY"), "a key in the log:\n{logs}");
    }
}

/// A client that trusts only `root_pem` (Pebble's issuing root), offers
/// HTTP/1.1 and never resumes: every handshake shows what is served now.
fn trusting_only(root_pem: &str) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(certs::provider())
        .with_protocol_versions(certs::TLS12_13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A new TLS connection to `addr` sending `sni`, and a GET / of `sni` on
/// it: the leaf the handshake showed (DER) and the reply.
async fn fetch(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    sni: &str,
) -> Result<(Vec<u8>, Reply), String> {
    let tls = certs::tls_connect(addr, config, sni).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", sni)
        .body(empty_body())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    Ok((leaf, Reply::read(resp).await?))
}

/// Waits (30 s) until a verified handshake for [`SHOP`] shows a leaf other
/// than `not` and the shop answers behind it; that leaf, or the last
/// reason it was not.
async fn shop_served(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    not: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let why = match fetch(addr, config, SHOP).await {
            Ok((leaf, r)) if r.status == 200 && r.text() == SHOP_BODY => {
                if not.is_none_or(|old| old != leaf.as_slice()) {
                    return Ok(leaf);
                }
                "still the previous certificate".to_string()
            }
            Ok((_, r)) => format!("{} {:?}", r.status, r.text()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET / of `host` on the gateway's plain port.
async fn plain(gw_addr: SocketAddr, host: &str) -> Result<Reply, String> {
    Http::h1()
        .send(gw_addr, host, "GET", "/", &[], Bytes::new())
        .await
}

/// Waits (30 s) until `host` answers 200 `body` over plain HTTP.
async fn serves_plain(gw: &Gateway, host: &str, body: &str) -> bool {
    eventually(Duration::from_secs(30), || async {
        matches!(plain(gw.addr, host).await, Ok(r) if r.status == 200 && r.text() == body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_managed_hostname_gets_a_certificate_from_pebble_validated_over_http01_at_the_gateway() {
    if !Pebble::installed() {
        return;
    }
    // Pebble's ports first: the API is configured with its directory
    // before the gateway whose port Pebble validates on exists.
    let mut pebble = Pebble::prepare();
    let mut acme_config = AcmeConfig::new(pebble.directory_url());
    acme_config.ca_file = Some(pebble.ca_file().to_path_buf());
    acme_config.check_interval = Duration::from_millis(200);
    acme_config.ack_timeout = Duration::from_secs(20);
    acme_config.validation_timeout = Duration::from_secs(30);
    let p = Platform::start_with(move |c| c.acme = Some(acme_config)).await;
    let api = Api {
        p: &p,
        seen: Mutex::new(Vec::new()),
    };
    let acme = p.tenant("acme", json!({})).await;
    let beta = p.tenant("beta", json!({})).await;
    p.app(&acme, "shop").await;
    p.app(&beta, "blog").await;
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dshop")
        .await;
    p.deploy(&beta, "blog", example("hello"), "env=GREETING%3Dblog")
        .await;

    // One gateway following the API, with HTTPS and a platform
    // certificate for names without their own.
    let platform_pair = certs::leaf(PLATFORM_NAMES);
    let platform = CertFiles::new(&platform_pair);
    let platform_leaf = certs::der_of(&platform_pair.0);
    let state = tempfile::tempdir().unwrap();
    let args = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        arg(&platform.cert),
        "--tls-key",
        arg(&platform.key),
    ];
    let gw = Gateway::follow(
        &p.url(),
        POP,
        &p.node_token,
        state.path(),
        &shared_cache(),
        &args,
    );
    let tls = gw.tls.expect("no https listener");

    // Pebble validates HTTP-01 on the gateway's plain port.
    pebble.start(gw.addr.port()).await;
    let diag = || format!("gateway log:\n{}\n{}", gw.log_text(), pebble.log_text());
    assert!(serves_plain(&gw, BLOG, BLOG_BODY).await, "{}", diag());
    assert!(
        serves_plain(&gw, "shop-acme.localhost", SHOP_BODY).await,
        "{}",
        diag()
    );

    // The tenant adds its hostname, managed.
    let (status, added) = api
        .call(
            &acme,
            "POST",
            "/v1/apps/shop/domains",
            Some(json!({"hostname": SHOP, "managed": true})),
        )
        .await;
    assert_eq!(status, 201, "{added}");

    // Until its certificate is issued it serves no app traffic: a 404 over
    // HTTP, and over HTTPS the platform certificate and a 404. (Checked
    // while the listing, read after, still says pending.)
    let over_http = plain(gw.addr, SHOP).await.unwrap();
    let anything = Arc::new(certs::trust_anything(&["http/1.1"]));
    let (seen, over_https) = fetch(tls, &anything, SHOP).await.unwrap();
    let pending = api.domain(&acme, SHOP).await;
    assert_eq!(pending["managed"]["state"], "pending", "{pending:#}");
    assert!(pending["certificate"].is_null(), "{pending:#}");
    assert_eq!(over_http.status, 404, "{}", over_http.text());
    assert_ne!(over_http.text(), SHOP_BODY);
    assert_eq!(seen, platform_leaf, "not the platform certificate");
    assert_eq!(over_https.status, 404, "{}", over_https.text());

    // Pebble validates at the gateway and issues.
    let issued = api
        .wait_domain(
            &acme,
            SHOP,
            "issued",
            |d| d["managed"]["state"] == "issued" && d["certificate"]["kind"] == "managed",
            &diag,
        )
        .await;
    eprintln!("issued: {issued:#}");
    assert_eq!(issued["certificate"]["names"], json!([SHOP]), "{issued:#}");
    let issuer = issued["certificate"]["issuer"].as_str().unwrap_or_default();
    assert!(issuer.contains("Pebble"), "{issued:#}");
    assert!(issued["managed"]["error"].is_null(), "{issued:#}");
    assert!(
        gw.metric("gannet_acme_challenges_answered_total").await >= 1.0,
        "the gateway answered no challenge:\n{}",
        diag()
    );

    // The gateway serves it by SNI: a handshake verified against Pebble's
    // issuing root alone, and the shop behind it.
    let root = pebble.issuing_root_pem().await;
    let verified = trusting_only(&root);
    let first_leaf = shop_served(tls, &verified, None)
        .await
        .unwrap_or_else(|e| panic!("{SHOP} is not served with its certificate: {e}\n{}", diag()));
    assert_ne!(first_leaf, platform_leaf);
    let r = plain(gw.addr, SHOP).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, SHOP_BODY));
    assert!(serves_plain(&gw, BLOG, BLOG_BODY).await, "{}", diag());

    // A hostname whose validation cannot succeed (the default is managed:
    // no `managed`, no certificate): failed, with Pebble's reason.
    pebble.add_a(FAIL, "127.0.0.2").await;
    let added_ms = now_ms();
    let (status, added) = api
        .call(
            &acme,
            "POST",
            "/v1/apps/shop/domains",
            Some(json!({"hostname": FAIL})),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let failed = api
        .wait_domain(
            &acme,
            FAIL,
            "failed",
            |d| d["managed"]["state"] == "failed",
            &diag,
        )
        .await;
    let error = failed["managed"]["error"].as_str().unwrap_or_default();
    eprintln!("Pebble's reason for {FAIL}: {error}");
    assert!(
        !error.is_empty() && (error.contains(FAIL) || error.contains("connection")),
        "{failed:#}"
    );
    assert!(failed["certificate"].is_null(), "{failed:#}");
    let retry = failed["managed"]["next_attempt_ms"].as_i64().unwrap_or(0);
    assert!(retry > added_ms + 30_000, "retried too soon: {failed:#}");
    let r = plain(gw.addr, FAIL).await.unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    // The first hostname is untouched.
    let shop = api.domain(&acme, SHOP).await;
    assert_eq!(shop["managed"]["state"], "issued", "{shop:#}");

    // Renewal on an operator's request, under load: new verified
    // connections to the shop and plain requests to the bystander, none
    // of which may fail.
    let before = shop["certificate"]["updated_ms"].as_i64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, verified, plain_addr) = (stop.clone(), verified.clone(), gw.addr);
        tokio::spawn(async move {
            let mut failures: Vec<String> = Vec::new();
            let mut leaves: Vec<Vec<u8>> = Vec::new();
            let mut served = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match fetch(tls, &verified, SHOP).await {
                    Ok((leaf, r)) if r.status == 200 && r.text() == SHOP_BODY => {
                        served += 1;
                        if !leaves.contains(&leaf) {
                            leaves.push(leaf);
                        }
                    }
                    Ok((_, r)) => failures.push(format!("{SHOP}: {} {:?}", r.status, r.text())),
                    Err(e) => failures.push(format!("{SHOP}: {e}")),
                }
                match plain(plain_addr, BLOG).await {
                    Ok(r) if r.status == 200 && r.text() == BLOG_BODY => {}
                    Ok(r) => failures.push(format!("{BLOG}: {} {:?}", r.status, r.text())),
                    Err(e) => failures.push(format!("{BLOG}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, leaves, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answer) = api
        .call(
            OPERATOR_TOKEN,
            "POST",
            &format!("/v1/admin/domains/{SHOP}/renew"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let renewed = api
        .wait_domain(
            &acme,
            SHOP,
            "renewed",
            |d| {
                d["managed"]["state"] == "issued"
                    && d["certificate"]["updated_ms"]
                        .as_i64()
                        .is_some_and(|u| u > before)
            },
            &diag,
        )
        .await;
    eprintln!("renewed: {renewed:#}");
    assert_eq!(renewed["certificate"]["kind"], "managed", "{renewed:#}");
    assert_eq!(
        renewed["certificate"]["names"],
        json!([SHOP]),
        "{renewed:#}"
    );
    let second_leaf = shop_served(tls, &verified, Some(&first_leaf))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "new handshakes for {SHOP} never got the renewed certificate: {e}\n{}",
                diag()
            )
        });
    assert_ne!(second_leaf, first_leaf);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (served, leaves, failures) = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("the load did not stop")
        .unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert!(served >= 3, "only {served} requests to {SHOP} were served");
    assert!(
        leaves.contains(&first_leaf) && leaves.contains(&second_leaf),
        "the load did not see both certificates ({} seen)",
        leaves.len()
    );
    assert!(serves_plain(&gw, BLOG, BLOG_BODY).await, "{}", diag());

    // The tenant's list of all its hostnames tells the same story.
    let (status, all) = api.call(&acme, "GET", "/v1/domains", None).await;
    assert_eq!(status, 200, "{all}");
    let states: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["hostname"].as_str().unwrap_or_default().to_string(),
                d["managed"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    for (host, state) in [(SHOP, "issued"), (FAIL, "failed")] {
        assert!(
            states.contains(&(host.to_string(), state.to_string())),
            "{all:#}"
        );
    }
    api.assert_no_key(&gw);

    // The operator's metrics count the orders by result.
    let (status, metrics) = p
        .call(
            gannet_control_api::testing::OPERATOR_TOKEN,
            "GET",
            "/metrics",
            None,
        )
        .await;
    assert_eq!(status, 200, "{metrics}");
    let text = metrics.as_str().unwrap_or_default();
    let count = |result: &str| {
        let prefix = format!("gannet_acme_orders_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("issued") >= 2.0, "first and renewal: {text}");
    assert!(count("failed") >= 1.0, "{text}");
    let (status, _) = p.call(&acme, "GET", "/metrics", None).await;
    assert_eq!(status, 403, "a tenant reads the platform's metrics");

    drop(gw);
    drop(pebble);
}
