//! TLS settings the control API gives every gateway: the platform
//! certificate the operator sets wins over a gateway's `--tls-cert` file
//! (within the sync time, and after an offline restart from the state
//! directory), and session tickets sealed with a PoP's shared keys resume
//! at any gateway of that PoP — and at no gateway of another.

use crate::certs::{self, CertFiles, TLS12_13, TLS13, arg, leaf};
use crate::control::{POP, Platform};
use crate::harness::{Body, Gateway, Http, Reply, component, empty_body, eventually, shared_cache};
use bytes::Bytes;
use gannet_control_api::desired_state::Scope;
use gannet_control_api::store::now_ms;
use gannet_control_api::testing::{OPERATOR_TOKEN, TestCa, TestCert};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tenant `acme`'s app `shop`, under the platform domain (`localhost`).
const SHOP: &str = "shop-acme.localhost";
/// Tenant `beta`'s app `blog`: the bystander.
const BLOG: &str = "blog-beta.localhost";
/// The names of both platform certificates: the wildcard the control API
/// asks for, and the shop's own name (rustls, like browsers, accepts no
/// wildcard with a single label after it, so a verifying client checks the
/// exact name).
const PLATFORM_NAMES: &[&str] = &["*.localhost", SHOP];
/// A second PoP, with ticket keys of its own.
const OTHER_POP: &str = "pop2";
const RESUMED: &str = "gannet_tls_resumed_total";

fn example(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

/// What one HTTPS GET saw: the leaf the server presented (DER; empty on a
/// resumed handshake if the client kept none), the kind of handshake, the
/// TLS version, and the reply.
struct Seen {
    leaf: Vec<u8>,
    kind: Option<HandshakeKind>,
    version: Option<ProtocolVersion>,
    reply: Reply,
}

/// A new TLS connection to `addr` sending `sni`, and a GET / of `sni` on it
/// over HTTP/1.1, read whole (so a TLS 1.3 ticket sent after the handshake
/// has reached the client's session store when this returns).
async fn fetch(addr: SocketAddr, config: &Arc<ClientConfig>, sni: &str) -> Result<Seen, String> {
    let tls = certs::tls_connect(addr, config, sni).await?;
    let (leaf, kind, version) = {
        let conn = tls.get_ref().1;
        let leaf = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        (leaf, conn.handshake_kind(), conn.protocol_version())
    };
    let (mut sender, connection) = http1::handshake::<_, Body>(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(connection);
    let req = http::Request::get("/")
        .header("host", sni)
        .body(empty_body())
        .map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("not ready: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    let reply = Reply::read(resp).await?;
    Ok(Seen {
        leaf,
        kind,
        version,
        reply,
    })
}

/// A client that trusts `ca` only and never resumes (every handshake shows
/// the certificate served now).
fn trusting(ca: &TestCa) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(certs::der_of(&ca.cert_pem)))
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(certs::provider())
        .with_protocol_versions(TLS12_13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Waits (30 s) until a new handshake with `config` for `sni` succeeds and
/// the app behind it answers `body`.
async fn serves(addr: SocketAddr, config: &Arc<ClientConfig>, sni: &str, body: &str) -> bool {
    eventually(Duration::from_secs(30), || {
        let config = config.clone();
        async move {
            matches!(
                fetch(addr, &config, sni).await,
                Ok(seen) if seen.reply.status == 200 && seen.reply.text() == body
            )
        }
    })
    .await
}

/// Waits up to `timeout` until a new handshake for `sni` is shown `leaf`.
async fn presents(addr: SocketAddr, sni: &str, leaf: &[u8], timeout: Duration) -> bool {
    let anything = Arc::new(certs::trust_anything(&["http/1.1"]));
    eventually(timeout, || {
        let anything = anything.clone();
        async move { matches!(fetch(addr, &anything, sni).await, Ok(seen) if seen.leaf == leaf) }
    })
    .await
}

/// The leaf a new full handshake for `sni` is shown now.
async fn served_leaf(addr: SocketAddr, sni: &str) -> Vec<u8> {
    let anything = Arc::new(certs::trust_anything(&["http/1.1"]));
    fetch(addr, &anything, sni)
        .await
        .unwrap_or_else(|e| panic!("a handshake for {sni} failed: {e}"))
        .leaf
}

/// Writes `cert` (chain: leaf, then `ca`) and its key under `dir`.
fn write_pair(dir: &Path, stem: &str, cert: &TestCert, ca: &TestCa) -> (PathBuf, PathBuf) {
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, format!("{}{}", cert.cert_pem, ca.cert_pem)).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    (cert_path, key_path)
}

/// An upload of `cert` with `key_pem` (chain: leaf, then `ca`).
fn upload(cert: &TestCert, key_pem: &str, ca: &TestCa) -> Value {
    json!({"cert_pem": format!("{}{}", cert.cert_pem, ca.cert_pem), "key_pem": key_pem})
}

/// A gateway of `pop` following `api_url` with its state in `state` and
/// an HTTPS listener serving `cert`/`key` as its platform certificate.
fn follow_with_tls(
    api_url: &str,
    pop: &str,
    node_token: &str,
    state: &Path,
    cert: &Path,
    key: &Path,
) -> Gateway {
    let args = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        arg(cert),
        "--tls-key",
        arg(key),
    ];
    let gw = Gateway::follow(api_url, pop, node_token, state, &shared_cache(), &args);
    assert!(gw.tls.is_some(), "no https listener");
    gw
}

/// A new node token for a gateway of `pop`.
async fn node_token(p: &Platform, pop: &str) -> String {
    let (status, node) = p
        .call(
            OPERATOR_TOKEN,
            "POST",
            &format!("/v1/admin/pops/{pop}/gateways"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{node}");
    node["token"].as_str().unwrap().to_string()
}

/// The persisted state of the gateway whose state directory is `state`.
fn snapshot(state: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(state.join("snapshot.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The ticket keys (id, secret) the gateway has applied: those of its
/// persisted state, once the revision that brought them is in service
/// (the snapshot is written first, `gannet_sync_revision` set after).
async fn applied_ticket_keys(gw: &Gateway, state: &Path) -> Option<Vec<(String, String)>> {
    let snap = snapshot(state)?;
    let keys: Vec<(String, String)> = snap["platform"]["ticket_keys"]
        .as_array()?
        .iter()
        .filter_map(|k| {
            Some((
                k["id"].as_str()?.to_string(),
                k["secret"].as_str()?.to_string(),
            ))
        })
        .collect();
    if keys.is_empty() {
        return None;
    }
    let revision = snap["revision"].as_i64()?;
    (gw.metric("gannet_sync_revision").await >= revision as f64).then_some(keys)
}

/// Waits (30 s) for the gateway to apply ticket keys; returns them.
async fn wait_ticket_keys(gw: &Gateway, state: &Path) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(keys) = applied_ticket_keys(gw, state).await {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "no ticket keys applied within 30 s:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_key_in(what: &str, text: &str) {
    assert!(!text.contains("PRIVATE KEY"), "a key in {what}:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_apis_platform_certificate_wins_over_the_file_and_survives_an_offline_restart()
{
    let p = Platform::start().await;
    let acme = p.tenant("acme", json!({})).await;
    let beta = p.tenant("beta", json!({})).await;
    p.app(&acme, "shop").await;
    p.app(&beta, "blog").await;
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dshop")
        .await;
    p.deploy(&beta, "blog", example("hello"), "env=GREETING%3Dblog")
        .await;

    // The gateway's own platform certificate, from the file, by "File CA".
    let file_ca = TestCa::new("File CA");
    let api_ca = TestCa::new("Platform CA");
    let file_cert = file_ca.issue(PLATFORM_NAMES);
    let file_leaf = certs::der_of(&file_cert.cert_pem);
    let files = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(files.path(), "file", &file_cert, &file_ca);
    let state = tempfile::tempdir().unwrap();
    let (url, node_token) = (p.url(), p.node_token.clone());
    let gw = follow_with_tls(&url, POP, &node_token, state.path(), &cert_path, &key_path);
    let tls = gw.tls.unwrap();

    // Before the operator sets one: the file's certificate, verified
    // against its CA, and the shop behind it; the other CA is not trusted.
    assert!(
        serves(tls, &trusting(&file_ca), SHOP, "shop, world\n").await,
        "{SHOP} is not served with the file's certificate:\n{}",
        gw.log_text()
    );
    assert_eq!(served_leaf(tls, SHOP).await, file_leaf);
    assert!(fetch(tls, &trusting(&api_ca), SHOP).await.is_err());
    let bystander = Http::h1().get(gw.addr, BLOG, "/").await;
    assert_eq!(
        (bystander.status, bystander.text().as_str()),
        (200, "blog, world\n")
    );
    let mut responses: Vec<String> = Vec::new();
    let (status, none) = p
        .call(
            OPERATOR_TOKEN,
            "GET",
            "/v1/admin/platform-certificate",
            None,
        )
        .await;
    assert_eq!(status, 404, "{none}");

    // The bystander tenant's site, over plain HTTP, throughout the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let plain = gw.addr;
        tokio::spawn(async move {
            let mut failures: Vec<String> = Vec::new();
            let mut served = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match Http::h1()
                    .send(plain, BLOG, "GET", "/", &[], Bytes::new())
                    .await
                {
                    Ok(r) if r.status == 200 && r.text() == "blog, world\n" => served += 1,
                    Ok(r) => failures.push(format!("{} {:?}", r.status, r.text())),
                    Err(e) => failures.push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, failures)
        })
    };

    // Refused: a certificate for another domain, a key that is not the
    // certificate's, a tenant's token.
    let path = "/v1/admin/platform-certificate";
    let api_cert = api_ca.issue(PLATFORM_NAMES);
    let api_leaf = certs::der_of(&api_cert.cert_pem);
    assert_ne!(api_leaf, file_leaf);
    let elsewhere = api_ca.issue(&["*.example.com"]);
    let (status, refused) = p
        .call(
            OPERATOR_TOKEN,
            "PUT",
            path,
            Some(upload(&elsewhere, &elsewhere.key_pem, &api_ca)),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("invalid-certificate")),
        "{refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("*.localhost")),
        "{refused}"
    );
    responses.push(refused.to_string());
    let stranger = api_ca.issue(PLATFORM_NAMES);
    let (status, refused) = p
        .call(
            OPERATOR_TOKEN,
            "PUT",
            path,
            Some(upload(&api_cert, &stranger.key_pem, &api_ca)),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("invalid-certificate")),
        "{refused}"
    );
    responses.push(refused.to_string());
    let (status, refused) = p
        .call(
            &acme,
            "PUT",
            path,
            Some(upload(&api_cert, &api_cert.key_pem, &api_ca)),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    responses.push(refused.to_string());
    // None of them changed what is served.
    assert_eq!(served_leaf(tls, SHOP).await, file_leaf);

    // The operator sets it.
    let (status, summary) = p
        .call(
            OPERATOR_TOKEN,
            "PUT",
            path,
            Some(upload(&api_cert, &api_cert.key_pem, &api_ca)),
        )
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["kind"], "platform", "{summary}");
    let names: Vec<&str> = summary["names"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(names.contains(&"*.localhost"), "{summary}");
    assert!(
        summary["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Platform CA")),
        "{summary}"
    );
    responses.push(summary.to_string());
    let (status, got) = p.call(OPERATOR_TOKEN, "GET", path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, summary);
    responses.push(got.to_string());

    // New handshakes get it within the sync time, and the shop answers a
    // client that trusts only the new CA; the file's CA no longer verifies.
    assert!(
        presents(tls, SHOP, &api_leaf, Duration::from_secs(10)).await,
        "new handshakes still get the file's certificate:\n{}",
        gw.log_text()
    );
    let seen = fetch(tls, &trusting(&api_ca), SHOP)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert_eq!(seen.leaf, api_leaf);
    assert_eq!(
        (seen.reply.status, seen.reply.text().as_str()),
        (200, "shop, world\n")
    );
    assert!(fetch(tls, &trusting(&file_ca), SHOP).await.is_err());
    // Any other name gets it too.
    assert_eq!(served_leaf(tls, BLOG).await, api_leaf);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.log_text()
                .contains("serving the control API's platform certificate")
        })
        .await,
        "{}",
        gw.log_text()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (served, failures) = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("the load did not stop")
        .unwrap();
    assert!(failures.is_empty(), "the bystander failed: {failures:#?}");
    assert!(served >= 3, "the bystander answered {served} requests");

    // Kept in the state directory, 0600.
    let snapshot_path = state.path().join("snapshot.json");
    let snap = snapshot(state.path()).expect("a readable snapshot");
    assert!(
        snap["platform"]["certificate"]["cert_pem"]
            .as_str()
            .is_some_and(|c| c.contains(api_cert.cert_pem.trim())),
        "the persisted state has not the control API's certificate"
    );
    assert_eq!(
        std::fs::metadata(&snapshot_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    for r in &responses {
        assert_no_key_in("a response", r);
    }
    assert_no_key_in("the gateway's log", &gw.log_text());

    // The control API goes away; the gateway restarts on its state
    // directory with the same file: the control API's certificate, at once.
    drop(gw);
    drop(p);
    let gw = follow_with_tls(&url, POP, &node_token, state.path(), &cert_path, &key_path);
    let tls = gw.tls.unwrap();
    assert_eq!(
        served_leaf(tls, SHOP).await,
        api_leaf,
        "after a restart without the control API, not its certificate:\n{}",
        gw.log_text()
    );
    let seen = fetch(tls, &trusting(&api_ca), SHOP)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert_eq!(
        (seen.reply.status, seen.reply.text().as_str()),
        (200, "shop, world\n")
    );
    assert!(fetch(tls, &trusting(&file_ca), SHOP).await.is_err());
    let bystander = Http::h1().get(gw.addr, BLOG, "/").await;
    assert_eq!(
        (bystander.status, bystander.text().as_str()),
        (200, "blog, world\n")
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            gw.log_text().contains("state poll failed")
        })
        .await,
        "the control API was still reachable:\n{}",
        gw.log_text()
    );
    assert_eq!(served_leaf(tls, SHOP).await, api_leaf);
    assert_no_key_in("the restarted gateway's log", &gw.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ticket_from_one_gateway_of_a_pop_resumes_at_another() {
    let p = Platform::start().await;
    let acme = p.tenant("acme", json!({})).await;
    p.app(&acme, "shop").await;
    p.deploy(&acme, "shop", example("hello"), "env=GREETING%3Dshop")
        .await;
    let (status, pop) = p
        .call(
            OPERATOR_TOKEN,
            "POST",
            "/v1/admin/pops",
            Some(json!({"name": OTHER_POP})),
        )
        .await;
    assert_eq!(status, 201, "{pop}");
    let second_token = node_token(&p, POP).await;
    let other_token = node_token(&p, OTHER_POP).await;

    // Two gateways of pop1, one of pop2, all with the same file
    // certificate (so only the ticket keys tell them apart).
    let files = CertFiles::new(&leaf(&[SHOP]));
    let url = p.url();
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = follow_with_tls(
        &url,
        POP,
        &p.node_token,
        states[0].path(),
        &files.cert,
        &files.key,
    );
    let b = follow_with_tls(
        &url,
        POP,
        &second_token,
        states[1].path(),
        &files.cert,
        &files.key,
    );
    let c = follow_with_tls(
        &url,
        OTHER_POP,
        &other_token,
        states[2].path(),
        &files.cert,
        &files.key,
    );
    let (a_tls, b_tls, c_tls) = (a.tls.unwrap(), b.tls.unwrap(), c.tls.unwrap());

    // This hour's key for every PoP that lacks one (pop2 was made after the
    // API's rotation ran), delivered at once.
    let state = &p.api.state;
    let written = state.store.rotate_ticket_keys(now_ms()).await.unwrap();
    for (revision, pop_id) in written {
        state.notifier.bump(revision, Scope::Pop(pop_id));
    }
    let keys_a = wait_ticket_keys(&a, states[0].path()).await;
    let keys_b = wait_ticket_keys(&b, states[1].path()).await;
    let keys_c = wait_ticket_keys(&c, states[2].path()).await;
    assert_eq!(keys_a, keys_b, "the gateways of {POP} hold different keys");
    assert!(
        keys_c
            .iter()
            .all(|k| !keys_a.iter().any(|x| x.0 == k.0 || x.1 == k.1)),
        "{OTHER_POP} shares a key with {POP}"
    );

    let fresh = certs::fresh_client(&["http/1.1"]);
    for (gw, addr) in [(&a, a_tls), (&b, b_tls), (&c, c_tls)] {
        assert!(
            serves(addr, &fresh, SHOP, "shop, world\n").await,
            "{SHOP} is not served:\n{}",
            gw.log_text()
        );
    }

    // TLS 1.3 only, one session store: a full handshake at A (its ticket
    // arrives before the reply), then B resumes it.
    let resuming = || {
        let mut config = certs::client_config(&["http/1.1"], TLS13);
        config.resumption = Resumption::in_memory_sessions(64);
        Arc::new(config)
    };
    let config = resuming();
    let first = fetch(a_tls, &config, SHOP).await.unwrap();
    assert_eq!(first.version, Some(ProtocolVersion::TLSv1_3));
    assert_ne!(first.kind, Some(HandshakeKind::Resumed));
    assert_eq!(
        (first.reply.status, first.reply.text().as_str()),
        (200, "shop, world\n")
    );
    let resumed_before = b.metric(RESUMED).await;
    let second = fetch(b_tls, &config, SHOP).await.unwrap();
    assert_eq!(
        second.kind,
        Some(HandshakeKind::Resumed),
        "a ticket of A did not resume at B:\n{}",
        b.log_text()
    );
    assert_eq!(second.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        (second.reply.status, second.reply.text().as_str()),
        (200, "shop, world\n")
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.metric(RESUMED).await > resumed_before
        })
        .await,
        "B counted no resumption"
    );

    // The control, with a store of its own: a ticket of A resumes at A
    // (so the store holds a good ticket of A's), then the next does not
    // resume at the gateway of another PoP.
    let config = resuming();
    let first = fetch(a_tls, &config, SHOP).await.unwrap();
    assert_ne!(first.kind, Some(HandshakeKind::Resumed));
    let again = fetch(a_tls, &config, SHOP).await.unwrap();
    assert_eq!(
        again.kind,
        Some(HandshakeKind::Resumed),
        "A did not resume its own ticket"
    );
    let other = fetch(c_tls, &config, SHOP).await.unwrap();
    assert_ne!(
        other.kind,
        Some(HandshakeKind::Resumed),
        "a ticket of {POP} resumed at a gateway of {OTHER_POP}"
    );
    assert_eq!(
        (other.reply.status, other.reply.text().as_str()),
        (200, "shop, world\n")
    );
    assert_eq!(c.metric(RESUMED).await, 0.0);

    // No secret reaches a log.
    for gw in [&a, &b, &c] {
        let logs = gw.log_text();
        for (_, secret) in keys_a.iter().chain(&keys_c) {
            assert!(
                !logs.contains(secret.as_str()),
                "a ticket key in the log:\n{logs}"
            );
        }
        assert_no_key_in("a gateway's log", &logs);
    }
}
