//! Proof of control of a custom hostname, end to end: the control API
//! asks a real DNS server (pebble-challtestsrv) for the name's TXT record
//! and its address, and fetches the token over HTTP from a real gateway
//! following it — which answers the token, for that hostname only, once it
//! applied the revision carrying it, and serves the app there only once
//! the proof is in. Another tenant can neither verify nor take the name,
//! nor see its token; a bystander's app answers throughout.
//!
//! The gateway's plain port is picked first: the API is configured to
//! fetch HTTP proofs there before the gateway (which follows the API)
//! exists. Until the test points a name at the platform, challtestsrv
//! resolves it to 127.0.0.2, where nothing listens: the HTTP proof cannot
//! succeed before the test has seen the pending state, and `dns.test` can
//! only be proved by its TXT record.
//!
//! Without `pebble-challtestsrv` on PATH (Debian package `pebble`) the
//! test is skipped, except under CI.

use crate::control::{POP, Platform};
use crate::harness::{Gateway, Http, Reply, component, eventually, shared_cache};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Tenant acme's hostname proved over HTTP, for its app `shop`.
const SHOP: &str = "shop.test";
/// Tenant acme's hostname proved by DNS, for the same app.
const DNS_HOST: &str = "dns.test";
/// The shop's platform hostname (serves without any proof).
const SHOP_PLATFORM: &str = "shop-acme.localhost";
/// Tenant beta's app `blog` at its platform hostname: the bystander.
const BLOG: &str = "blog-beta.localhost";
/// What both apps (the `hello` example, no env) answer.
const HELLO: &str = "hello, world\n";
/// Where a name not yet pointed at the platform resolves: loopback, but
/// not the address the gateway listens on (nothing answers there).
const NOWHERE: &str = "127.0.0.2";
/// How long anything the test waits for may take.
const LIMIT: Duration = Duration::from_secs(30);

fn example(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

/// A loopback port free for TCP and UDP (the DNS server takes both), not
/// in `taken`; recorded there.
fn free_port(taken: &mut HashSet<u16>) -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if taken.contains(&port) {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
}

fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    }
}

/// pebble-challtestsrv as a DNS server only (A queries: 127.0.0.1 unless
/// told otherwise; AAAA: nothing), with its management API to set records.
/// Killed on drop.
struct Dns {
    child: Child,
    /// DNS, UDP and TCP.
    dns: SocketAddr,
    /// The management API (plain HTTP).
    management: SocketAddr,
    /// Holds its log.
    dir: tempfile::TempDir,
}

impl Dns {
    /// Starts it and waits until it listens; None (the test is skipped)
    /// when it is not installed, except under CI, where this panics.
    async fn start(taken: &mut HashSet<u16>) -> Option<Dns> {
        let installed = Command::new("pebble-challtestsrv")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI must have pebble-challtestsrv (Debian package pebble; .ci/run installs it)"
                );
            }
            eprintln!("skipped: pebble-challtestsrv is not installed (apt-get install pebble)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("challtestsrv.log")).unwrap();
        let err = log.try_clone().unwrap();
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port(taken)));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port(taken)));
        let (dns_arg, management_arg) = (dns.to_string(), management.to_string());
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", dns_arg.as_str()])
            .args(["-management", management_arg.as_str()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("starting pebble-challtestsrv");
        let mut d = Dns {
            child,
            dns,
            management,
            dir,
        };
        let deadline = Instant::now() + LIMIT;
        for addr in [management, dns] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if let Some(status) = d.child.try_wait().unwrap() {
                    panic!(
                        "pebble-challtestsrv exited ({status}) before listening on {addr}:\n{}",
                        d.log_text()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "pebble-challtestsrv did not listen on {addr}:\n{}",
                    d.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(d)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("challtestsrv.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// POSTs `body` to the management API's `path`; asserts a 200.
    async fn manage(&self, path: &str, body: Value) {
        let reply = Http::h1()
            .send(
                self.management,
                "127.0.0.1",
                "POST",
                path,
                &[("content-type", "application/json")],
                Bytes::from(body.to_string()),
            )
            .await
            .unwrap_or_else(|e| panic!("challtestsrv {path}: {e}"));
        assert_eq!(
            reply.status,
            200,
            "challtestsrv {path}: {}\n{}",
            reply.text(),
            self.log_text()
        );
    }

    /// A TXT record at `name` holding `value`.
    async fn set_txt(&self, name: &str, value: &str) {
        self.manage("/set-txt", json!({"host": fqdn(name), "value": value}))
            .await;
    }

    /// A queries for `host` answer `ip` (in place of 127.0.0.1).
    async fn add_a(&self, host: &str, ip: &str) {
        self.manage("/add-a", json!({"host": fqdn(host), "addresses": [ip]}))
            .await;
    }

    /// A queries for `host` answer the default (127.0.0.1) again.
    async fn clear_a(&self, host: &str) {
        self.manage("/clear-a", json!({"host": fqdn(host)})).await;
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` of `host` on the gateway's plain port.
async fn get(gw: &Gateway, host: &str, path: &str) -> Reply {
    Http::h1().get(gw.addr, host, path).await
}

/// Waits until `host` answers 200 [`HELLO`] on the gateway.
async fn serves(gw: &Gateway, host: &str) -> bool {
    eventually(LIMIT, || async {
        let r = get(gw, host, "/").await;
        r.status == 200 && r.text() == HELLO
    })
    .await
}

/// `host` as `GET /v1/apps/shop/domains` lists it to `token`.
async fn domain(p: &Platform, token: &str, host: &str) -> Value {
    let (status, list) = p.call(token, "GET", "/v1/apps/shop/domains", None).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .and_then(|l| l.iter().find(|d| d["hostname"] == host))
        .cloned()
        .unwrap_or_else(|| panic!("{host} is not listed: {list:#}"))
}

/// Asks (as `token`) to verify the shop's `host` until the answer
/// satisfies `done`; returns it, or panics with the last one and `diag()`.
async fn verify_until(
    p: &Platform,
    token: &str,
    host: &str,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
    diag: &dyn Fn() -> String,
) -> Value {
    let path = format!("/v1/apps/shop/domains/{host}/verify");
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, v) = p.call(token, "POST", &path, Some(json!({}))).await;
        if done(status, &v) {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "verifying {host}: never {what} within {} s; last answer {status} {v:#}\n{}",
                LIMIT.as_secs(),
                diag()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Another tenant calling the API, every answer it got kept (to look for
/// tokens in).
struct Other<'a> {
    p: &'a Platform,
    token: String,
    seen: Vec<String>,
}

impl Other<'_> {
    async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, v) = self.p.call(&self.token, method, path, body).await;
        self.seen.push(v.to_string());
        (status, v)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_pending_proof_answers_only_its_token_at_the_gateway_and_serves_once_proved_over_http()
 {
    let mut taken = HashSet::new();
    let Some(dns) = Dns::start(&mut taken).await else {
        return;
    };
    // The gateway's plain port, picked before the API is configured to
    // fetch HTTP proofs there.
    let http_port = free_port(&mut taken);
    let dns_server = dns.dns;
    let p = Platform::start_with(move |c| {
        c.ownership.check.dns_server = Some(dns_server);
        c.ownership.check.http_port = http_port;
        c.ownership.check.allow_private_addresses = true;
        c.ownership.check.timeout = Duration::from_secs(2);
        c.ownership.check_interval = Duration::from_millis(200);
        c.ownership.first_backoff = Duration::from_millis(300);
    })
    .await;
    let acme = p.tenant("acme", json!({})).await;
    let beta = p.tenant("beta", json!({})).await;
    p.app(&acme, "shop").await;
    p.app(&beta, "blog").await;
    p.deploy(&acme, "shop", example("hello"), "").await;
    p.deploy(&beta, "blog", example("hello"), "").await;

    // Neither custom hostname points at the platform yet.
    dns.add_a(SHOP, NOWHERE).await;
    dns.add_a(DNS_HOST, NOWHERE).await;

    // One gateway of pop1 following the API, on the port picked.
    let state = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{http_port}");
    let gw = Gateway::follow(
        &p.url(),
        POP,
        &p.node_token,
        state.path(),
        &shared_cache(),
        &["--listen", listen.as_str()],
    );
    assert_eq!(gw.addr.port(), http_port);
    let diag = || {
        format!(
            "gateway log:\n{}\n--- pebble-challtestsrv ---\n{}",
            gw.log_text(),
            dns.log_text()
        )
    };
    assert!(serves(&gw, BLOG).await, "{}", diag());
    assert!(serves(&gw, SHOP_PLATFORM).await, "{}", diag());

    // acme adds its hostname: no certificate, and not managed (no ACME
    // here). Pending, with a token.
    let (status, added) = p
        .call(
            &acme,
            "POST",
            "/v1/apps/shop/domains",
            Some(json!({"hostname": SHOP})),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let pending = domain(&p, &acme, SHOP).await;
    assert_eq!(pending["ownership"]["verified"], false, "{pending:#}");
    assert!(pending["managed"].is_null(), "{pending:#}");
    assert!(pending["certificate"].is_null(), "{pending:#}");
    let token = pending["ownership"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert!(!token.is_empty());
    let token_path = format!("/.well-known/gannet-challenge/{token}");

    // The gateway answers the token at the name once it has the revision
    // carrying it — also with the port in the Host, as the API's check
    // sends it — and serves nothing else there.
    let answered = eventually(LIMIT, || async {
        let r = get(&gw, SHOP, &token_path).await;
        r.status == 200 && r.text() == token
    })
    .await;
    assert!(answered, "{SHOP}'s token never answered:\n{}", diag());
    let with_port = format!("{SHOP}:{http_port}");
    let r = get(&gw, &with_port, &token_path).await;
    assert_eq!((r.status, r.text()), (200, token.clone()));
    let r = get(&gw, SHOP, "/").await;
    assert_eq!(
        r.status,
        404,
        "{SHOP} served before its proof: {}",
        r.text()
    );
    assert_ne!(r.text(), HELLO);
    // Only for its hostname, and only that token.
    let r = get(&gw, "other.test", &token_path).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!r.text().contains(&token), "{}", r.text());
    let r = get(&gw, BLOG, &token_path).await;
    assert_ne!(r.text(), token, "another app's hostname answered the token");
    let wrong: String = token.chars().rev().collect();
    let wrong = if wrong == token {
        "0".repeat(token.len() + 1)
    } else {
        wrong
    };
    let r = get(&gw, SHOP, &format!("/.well-known/gannet-challenge/{wrong}")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!r.text().contains(&token), "{}", r.text());
    assert!(
        gw.metric("gannet_acme_challenges_answered_total").await >= 2.0,
        "{}",
        diag()
    );

    // Asked to verify while the name points elsewhere: refused, once the
    // gateway has the token with what the HTTP check found too (no TXT
    // record either).
    let refused = verify_until(
        &p,
        &acme,
        SHOP,
        "refused after an HTTP check",
        |s, v| {
            s == 409
                && v["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("DNS: ") && d.contains("HTTP: "))
        },
        &diag,
    )
    .await;
    assert!(
        refused["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("ownership-not-proved")),
        "{refused:#}"
    );
    // The HTTP check went where the name points, and found no one there.
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(NOWHERE), "{refused:#}");
    let still = domain(&p, &acme, SHOP).await;
    assert_eq!(still["ownership"]["verified"], false, "{still:#}");
    assert!(!still["ownership"]["error"].is_null(), "{still:#}");
    let r = get(&gw, SHOP, "/").await;
    assert_eq!(
        r.status,
        404,
        "{SHOP} served before its proof: {}",
        r.text()
    );

    // Another tenant can neither verify it, see it, nor take it.
    let mut other = Other {
        p: &p,
        token: beta.clone(),
        seen: Vec::new(),
    };
    let verify_shop = format!("/v1/apps/shop/domains/{SHOP}/verify");
    let (status, v) = other.call("POST", &verify_shop, Some(json!({}))).await;
    assert_eq!(status, 404, "{v}");
    let verify_in_blog = format!("/v1/apps/blog/domains/{SHOP}/verify");
    let (status, v) = other.call("POST", &verify_in_blog, Some(json!({}))).await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = other.call("GET", "/v1/apps/shop/domains", None).await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = other
        .call(
            "POST",
            "/v1/apps/blog/domains",
            Some(json!({"hostname": SHOP})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already in use")),
        "{v}"
    );
    assert!(serves(&gw, BLOG).await, "{}", diag());

    // acme points the name at the platform: the API fetches the token
    // from the gateway (asked here, or in the background) and the
    // hostname serves.
    dns.clear_a(SHOP).await;
    let verified = verify_until(&p, &acme, SHOP, "verified", |s, _| s == 200, &diag).await;
    assert_eq!(verified["ownership"]["verified"], true, "{verified:#}");
    assert_eq!(
        verified["ownership"]["verified_by"], "http",
        "DNS cannot have proved it (no TXT record): {verified:#}"
    );
    assert!(verified["ownership"]["token"].is_null(), "{verified:#}");
    let listed = domain(&p, &acme, SHOP).await;
    assert_eq!(listed["ownership"]["verified_by"], "http", "{listed:#}");
    assert!(serves(&gw, SHOP).await, "{SHOP} never served:\n{}", diag());
    // Proved: its token is no longer answered (the path is the app's now).
    let r = get(&gw, SHOP, &token_path).await;
    assert_ne!(r.text(), token, "the token is still answered once proved");

    // A second hostname, proved by DNS (its address points elsewhere, so
    // HTTP cannot prove it).
    let (status, added) = p
        .call(
            &acme,
            "POST",
            "/v1/apps/shop/domains",
            Some(json!({"hostname": DNS_HOST})),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let pending = domain(&p, &acme, DNS_HOST).await;
    assert_eq!(pending["ownership"]["verified"], false, "{pending:#}");
    let dns_token = pending["ownership"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert_ne!(dns_token, token);
    let r = get(&gw, DNS_HOST, "/").await;
    assert_eq!(
        r.status,
        404,
        "{DNS_HOST} served before its proof: {}",
        r.text()
    );
    dns.set_txt(&format!("_gannet-challenge.{DNS_HOST}"), &dns_token)
        .await;
    let verified = verify_until(&p, &acme, DNS_HOST, "verified", |s, _| s == 200, &diag).await;
    assert_eq!(verified["ownership"]["verified"], true, "{verified:#}");
    assert_eq!(verified["ownership"]["verified_by"], "dns", "{verified:#}");
    assert!(
        serves(&gw, DNS_HOST).await,
        "{DNS_HOST} never served:\n{}",
        diag()
    );

    // The owner's list of all its hostnames says how each was proved.
    let (status, all) = p.call(&acme, "GET", "/v1/domains", None).await;
    assert_eq!(status, 200, "{all}");
    for (host, by) in [(SHOP, "http"), (DNS_HOST, "dns")] {
        let d = all
            .as_array()
            .and_then(|l| l.iter().find(|d| d["hostname"] == host))
            .unwrap_or_else(|| panic!("{host} is not listed: {all:#}"));
        assert_eq!(d["ownership"]["verified_by"], by, "{all:#}");
    }

    // Still not another tenant's to take or verify; beta's own list holds
    // none of acme's hostnames, and nothing beta was told holds a token.
    let (status, v) = other.call("POST", &verify_shop, Some(json!({}))).await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = other
        .call(
            "POST",
            "/v1/apps/blog/domains",
            Some(json!({"hostname": SHOP})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let (status, theirs) = other.call("GET", "/v1/domains", None).await;
    assert_eq!(status, 200, "{theirs}");
    let text = theirs.to_string();
    assert!(
        !text.contains(SHOP) && !text.contains(DNS_HOST),
        "beta sees acme's hostnames: {theirs:#}"
    );
    let seen = other.seen.join("\n");
    assert!(
        !seen.contains(&token) && !seen.contains(&dns_token),
        "a token reached another tenant:\n{seen}"
    );

    // The bystander answered throughout, and still does.
    assert!(serves(&gw, BLOG).await, "{}", diag());

    drop(other);
    drop(gw);
    drop(p);
    drop(dns);
}
