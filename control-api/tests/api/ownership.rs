//! Proof that a tenant controls a custom hostname before it serves: a DNS
//! TXT record (a real DNS server: pebble-challtestsrv) or the token over
//! HTTP at the name (a real HTTP server standing in for the gateways);
//! checked on demand and in the background; refused with what each check
//! found; legacy hostnames listed for operators, who may vouch.

use crate::{Caller, assert_problem, example};
use gannet_control_api::ownership::store::UNPROVED_CLAIM_LIFETIME;
use gannet_control_api::testing::{TestApi, TestDb, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// pebble-challtestsrv as a DNS server (every A query: 127.0.0.1), with
/// its management API to set TXT records. Killed on drop.
struct Dns {
    child: Child,
    dns: SocketAddr,
    management: SocketAddr,
}

fn free_port() -> u16 {
    // Free for TCP and UDP both (the DNS server takes both).
    loop {
        let tcp = StdListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Dns {
    /// None (the test is skipped) without the binary, except under CI.
    fn start() -> Option<Dns> {
        if Command::new("pebble-challtestsrv")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI must have pebble-challtestsrv (Debian package pebble; .ci/run installs it)"
                );
            }
            eprintln!("skipped: pebble-challtestsrv is not installed");
            return None;
        }
        let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns.to_string(),
                "-management",
                &management.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pebble-challtestsrv");
        let d = Dns {
            child,
            dns,
            management,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(management).is_ok()
                && std::net::TcpStream::connect(dns).is_ok()
            {
                return Some(d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pebble-challtestsrv did not start");
    }

    async fn set_txt(&self, host: &str, value: &str) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/set-txt", self.management))
            .json(&json!({"host": format!("{host}."), "value": value}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "set-txt: {}", r.status());
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for the gateways' port 80: answers what `body` holds to
/// every request for `host`, 404 otherwise. Returns its port; it runs
/// until the test's runtime ends.
async fn token_server(host: &'static str, body: Arc<Mutex<String>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let reply = if head.contains(&format!("host: {host}")) && !body.is_empty() {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

async fn start(db: &TestDb, dns: &Dns, http_port: u16) -> TestApi {
    let dns_server = dns.dns;
    crate::start_with(db, move |c| {
        c.ownership.check.dns_server = Some(dns_server);
        c.ownership.check.http_port = http_port;
        c.ownership.check.allow_private_addresses = true;
        c.ownership.check.timeout = Duration::from_secs(2);
        c.ownership.check_interval = Duration::from_millis(200);
        c.ownership.first_backoff = Duration::from_millis(300);
    })
    .await
}

async fn listed(t: &Caller, host: &str) -> Value {
    let r = t.get("/v1/domains").await;
    r.json
        .as_array()
        .and_then(|l| l.iter().find(|d| d["hostname"] == host).cloned())
        .unwrap_or_else(|| panic!("{host} not listed: {}", r.json))
}

async fn hosts_served(api: &TestApi, app: &str) -> Vec<String> {
    let apps = api
        .state
        .store
        .deployed_apps(None, &Default::default())
        .await
        .unwrap();
    apps.into_iter()
        .find(|(_, a)| a.app == app)
        .map(|(_, a)| a.hosts)
        .unwrap_or_default()
}

async fn tenant(op: &Caller, name: &str, app: &str) -> Caller {
    let t = op.create_tenant(name, json!({})).await;
    let r = t.post("/v1/apps", json!({"name": app})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = t.deploy(app, example("hello"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_hostname_serves_only_once_its_owner_proves_control_by_dns_or_http() {
    let Some(dns) = Dns::start() else { return };
    for backend in backends() {
        let db = TestDb::new(backend).await;
        // The gateways' stand-in answers only web.test, once told its token.
        let web_token = Arc::new(Mutex::new(String::new()));
        let port = token_server("web.test", web_token.clone()).await;
        let api = start(&db, &dns, port).await;
        let op = Caller::operator(&api.url());
        let a = tenant(&op, "acme", "shop").await;
        let b = tenant(&op, "beta", "web").await;

        // Added: not served; its token goes to gateways; the listing says
        // how to prove control.
        let r = a
            .post("/v1/apps/shop/domains", json!({"hostname": "shop.test"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend:?}: {}", r.json);
        let d = listed(&a, "shop.test").await;
        let o = &d["ownership"];
        assert_eq!(o["verified"], false, "{d}");
        let token = o["token"].as_str().expect("a token").to_string();
        assert_eq!(token.len(), 32);
        assert_eq!(
            o["dns_record"],
            format!("_gannet-challenge.shop.test TXT \"{token}\"")
        );
        assert_eq!(
            o["http_url"],
            format!("http://shop.test/.well-known/gannet-challenge/{token}")
        );
        assert!(
            !hosts_served(&api, "shop")
                .await
                .contains(&"shop.test".to_string())
        );
        let apps = api
            .state
            .store
            .deployed_apps(None, &Default::default())
            .await
            .unwrap();
        let shop = &apps.iter().find(|(_, a)| a.app == "shop").unwrap().1;
        assert!(
            shop.challenges.iter().any(|c| c.hostname == "shop.test"
                && c.token == token
                && c.key_authorization == token),
            "{backend:?}: {:?}",
            shop.challenges
        );

        // Nothing proves it yet: refused with what each check found.
        let r = a
            .post("/v1/apps/shop/domains/shop.test/verify", json!({}))
            .await;
        assert_problem(&r, 409, "ownership-not-proved", "DNS: ");
        let detail = r.json["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("_gannet-challenge.shop.test"), "{detail}");
        assert!(detail.contains("HTTP: "), "{detail}");
        assert!(!listed(&a, "shop.test").await["ownership"]["error"].is_null());
        // A wrong TXT value proves nothing.
        dns.set_txt("_gannet-challenge.shop.test", "not-the-token")
            .await;
        let r = a
            .post("/v1/apps/shop/domains/shop.test/verify", json!({}))
            .await;
        assert_problem(&r, 409, "ownership-not-proved", "DNS: ");
        // Another tenant cannot verify (or see) it.
        let r = b
            .post("/v1/apps/shop/domains/shop.test/verify", json!({}))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);

        // The TXT record: verified on demand, served.
        dns.set_txt("_gannet-challenge.shop.test", &token).await;
        let r = a
            .post("/v1/apps/shop/domains/shop.test/verify", json!({}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}: {}", r.json);
        assert_eq!(r.json["ownership"]["verified"], true);
        assert_eq!(r.json["ownership"]["verified_by"], "dns");
        assert!(r.json["ownership"]["token"].is_null(), "{}", r.json);
        assert!(
            hosts_served(&api, "shop")
                .await
                .contains(&"shop.test".to_string())
        );

        // HTTP: B's hostname is checked in the background and verified
        // once its token answers at the name.
        let r = b
            .post("/v1/apps/web/domains", json!({"hostname": "web.test"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        assert!(
            !hosts_served(&api, "web")
                .await
                .contains(&"web.test".to_string())
        );
        *web_token.lock().unwrap() = listed(&b, "web.test").await["ownership"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        let mut d = Value::Null;
        for _ in 0..100 {
            d = listed(&b, "web.test").await;
            if d["ownership"]["verified"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(d["ownership"]["verified_by"], "http", "{backend:?}: {d}");
        assert!(
            hosts_served(&api, "web")
                .await
                .contains(&"web.test".to_string())
        );

        // Operators see every tenant's hostnames with their proofs, and
        // the legacy ones (claimed before proofs: simulated here) apart.
        let r = a
            .post("/v1/apps/shop/domains", json!({"hostname": "old.test"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        sqlx::query("UPDATE hostnames SET verified_ms = created_ms, verified_by = 'legacy' WHERE hostname = 'old.test'")
            .execute(api.state.store.pool())
            .await
            .unwrap();
        let r = a
            .post("/v1/apps/shop/domains", json!({"hostname": "new.test"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let op = Caller::operator(&api.url());
        let all = op.get("/v1/admin/domains").await.json;
        let hosts: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["hostname"].as_str().unwrap())
            .collect();
        assert_eq!(
            hosts,
            ["new.test", "old.test", "shop.test", "web.test"],
            "{all}"
        );
        let legacy = op.get("/v1/admin/domains?verified_by=legacy").await.json;
        assert_eq!(legacy.as_array().map(Vec::len), Some(1), "{legacy}");
        assert_eq!(legacy[0]["tenant"], "acme");
        let waiting = op.get("/v1/admin/domains?unverified=true").await.json;
        assert_eq!(waiting[0]["hostname"], "new.test", "{waiting}");
        // A tenant cannot list them or vouch.
        assert_eq!(
            a.get("/v1/admin/domains").await.status,
            StatusCode::FORBIDDEN
        );
        let r = a.post("/v1/admin/domains/new.test/verify", json!({})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // The operator vouches: served.
        let r = op
            .post("/v1/admin/domains/new.test/verify", json!({}))
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
        assert!(
            hosts_served(&api, "shop")
                .await
                .contains(&"new.test".to_string())
        );
        let r = op
            .post("/v1/admin/domains/nobody.test/verify", json!({}))
            .await;
        assert_problem(&r, 404, "not-found", "no tenant has");

        // A claim never proved is released after its lifetime (the listing
        // says when); proved ones stay, and another tenant may then take
        // the name.
        let r = a
            .post("/v1/apps/shop/domains", json!({"hostname": "stale.test"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let stale = listed(&a, "stale.test").await;
        let lifetime = UNPROVED_CLAIM_LIFETIME.as_millis() as i64;
        assert!(
            stale["ownership"]["expires_ms"].as_i64().unwrap()
                >= gannet_control_api::store::now_ms() + lifetime - 60_000,
            "{stale}"
        );
        sqlx::query("UPDATE hostnames SET created_ms = created_ms - $1 WHERE hostname IN ('stale.test', 'shop.test')")
            .bind(lifetime + 1000)
            .execute(api.state.store.pool())
            .await
            .unwrap();
        let released = api
            .state
            .store
            .release_unproved(gannet_control_api::store::now_ms() - lifetime)
            .await
            .unwrap();
        assert_eq!(
            released.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>(),
            ["stale.test"],
            "{backend:?}"
        );
        let hosts: Vec<String> = a
            .get("/v1/domains")
            .await
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["hostname"].as_str().unwrap().to_string())
            .collect();
        assert!(!hosts.contains(&"stale.test".to_string()), "{hosts:?}");
        assert!(hosts.contains(&"shop.test".to_string()), "{hosts:?}");
        let r = b
            .post("/v1/apps/web/domains", json!({"hostname": "stale.test"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    }
}
