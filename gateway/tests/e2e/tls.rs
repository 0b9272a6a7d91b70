//! HTTPS: the TLS listener with the platform certificate, HTTP/2 and
//! HTTP/1.1 by ALPN, TLS 1.2 and 1.3 only, resumption, SIGHUP certificate
//! reloads under load, the handshake timeout, the plain listener's
//! redirect to https, and refusals at start-up. Real handshakes over
//! loopback, with rustls (under hyper), curl and openssl as clients.

use crate::certs::{
    self, CertFiles, NOT_AFTER_2040, TLS12, TLS12_13, TLS13, arg, client_config, jan_first, leaf,
    leaf_until,
};
use crate::harness::{Body, Gateway, Http, Reply, app, empty_body, eventually, shared_cache};
use bytes::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The names of the platform certificate the tests start with.
const PLATFORM_NAMES: &[&str] = &["*.apps.test", "apps.test"];

const HANDSHAKES_FAILED: &str = "gannet_tls_handshakes_total{result=\"failed\"}";
const HANDSHAKES_TIMED_OUT: &str = "gannet_tls_handshakes_total{result=\"timeout\"}";

/// hello and echo under the platform's wildcard, and a site of another
/// tenant (asked over plain HTTP as a bystander).
fn routes() -> String {
    [
        app("hello", "hello", &["hello.apps.test"], ""),
        app("echo", "echo", &["echo.apps.test"], ""),
        app("site", "hello", &["site.other.test"], "tenant = \"other\""),
    ]
    .concat()
}

/// A gateway with an HTTPS listener serving a leaf of the test CA for
/// [`PLATFORM_NAMES`].
struct Front {
    gw: Gateway,
    /// The HTTPS listener.
    tls: SocketAddr,
    files: CertFiles,
    /// DER of the leaf served at start.
    leaf: Vec<u8>,
}

impl Front {
    fn start(extra: &[&str]) -> Front {
        let pair = leaf(PLATFORM_NAMES);
        let files = CertFiles::new(&pair);
        let mut args = tls_args(&files.cert, &files.key);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let gw = Gateway::start_with(&routes(), &shared_cache(), &args);
        let tls = gw.tls.expect("the gateway announced no https listener");
        Front {
            gw,
            tls,
            files,
            leaf: certs::der_of(&pair.0),
        }
    }

    /// The value of one `/metrics` sample.
    async fn metric(&self, name_and_labels: &str) -> f64 {
        self.gw.metric(name_and_labels).await
    }

    /// The value of the expiry gauge of the platform certificate's `name`.
    async fn expiry(&self, name: &str) -> f64 {
        self.metric(&format!(
            "gannet_tls_cert_expiry_timestamp_seconds{{name=\"{name}\"}}"
        ))
        .await
    }
}

fn tls_args(cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        arg(cert).into(),
        "--tls-key".into(),
        arg(key).into(),
    ]
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A TLS connection to the gateway with HTTP on top, the version chosen by
/// ALPN (h2 → HTTP/2, anything else → HTTP/1.1), and what the handshake
/// came to.
struct TlsConn {
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    kind: Option<HandshakeKind>,
    /// The certificates the server presented (DER), leaf first.
    chain: Vec<Vec<u8>>,
    sender: Sender,
}

impl TlsConn {
    /// Connects to `addr` and completes a TLS handshake sending `sni`.
    async fn open(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        sni: &str,
    ) -> Result<TlsConn, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("{sni}: {e}"))?;
        let handshake = TlsConnector::from(config.clone()).connect(name, tcp);
        let tls = tokio::time::timeout(Duration::from_secs(10), handshake)
            .await
            .map_err(|_| "TLS handshake: no answer within 10 s".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let version = session.protocol_version();
        let alpn = session.alpn_protocol().map(|p| p.to_vec());
        let kind = session.handshake_kind();
        let chain: Vec<Vec<u8>> = session
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2".as_slice()) {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn {
            version,
            alpn,
            kind,
            chain,
            sender,
        })
    }

    /// GET `path` of `host` on this connection; reads the whole reply.
    async fn get(&mut self, host: &str, path: &str) -> Result<Reply, String> {
        let h2 = matches!(self.sender, Sender::H2(_));
        let req = if h2 {
            http::Request::get(format!("https://{host}{path}"))
        } else {
            http::Request::get(path).header("host", host)
        };
        let req = req.body(empty_body()).map_err(|e| e.to_string())?;
        let sent = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                s.send_request(req).await
            }
        };
        let resp = sent.map_err(|e| format!("request: {e:?}"))?;
        Reply::read(resp).await
    }

    /// The leaf certificate the server presented (DER; empty if none).
    fn leaf(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }
}

/// One GET on a new TLS connection: the connection and the reply.
async fn tls_get(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<(TlsConn, Reply), String> {
    let mut conn = TlsConn::open(addr, config, sni).await?;
    let reply = conn.get(host, path).await?;
    Ok((conn, reply))
}

/// The leaf a new full handshake for `sni` gets now.
async fn served_leaf(addr: SocketAddr, sni: &str) -> Vec<u8> {
    let conn = TlsConn::open(addr, &certs::fresh_client(&["http/1.1"]), sni)
        .await
        .unwrap_or_else(|e| panic!("a handshake for {sni} failed: {e}"));
    conn.leaf().to_vec()
}

/// Runs `program` with `args` to its end (killed after 30 s).
async fn run(program: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = cmd.output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within 30 s"))
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_http2_and_http1_by_alpn_with_the_platform_certificate() {
    let f = Front::start(&[]);

    // HTTP/2 by ALPN, and the whole chain is the platform's: leaf, then CA.
    let config = Arc::new(client_config(&["h2", "http/1.1"], TLS12_13));
    let (conn, r) = tls_get(f.tls, &config, "hello.apps.test", "hello.apps.test", "/")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello, world\n"));
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(conn.alpn.as_deref(), Some(b"h2".as_slice()));
    assert_eq!(conn.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.leaf(), f.leaf.as_slice(), "not the platform leaf");
    assert_eq!(conn.chain.len(), 2, "the chain file holds leaf and CA");
    assert_eq!(conn.chain[1], certs::ca_der());

    // HTTP/1.1 when the client offers only http/1.1, or no ALPN at all.
    let cases: [(&[&str], Option<&[u8]>); 2] =
        [(&["http/1.1"], Some(b"http/1.1".as_slice())), (&[], None)];
    for (alpn, chosen) in cases {
        let config = Arc::new(client_config(alpn, TLS12_13));
        let (conn, r) = tls_get(f.tls, &config, "hello.apps.test", "hello.apps.test", "/")
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello, world\n"));
        assert_eq!(r.version, http::Version::HTTP_11, "ALPN {alpn:?}");
        assert_eq!(conn.alpn.as_deref(), chosen);
        assert_eq!(conn.leaf(), f.leaf.as_slice());
    }

    // curl (OpenSSL, nghttp2) verifying against the CA gets HTTP/2.
    let port = f.tls.port();
    let resolve = format!("hello.apps.test:{port}:127.0.0.1");
    let url = format!("https://hello.apps.test:{port}/");
    let out = run(
        "curl",
        &[
            "-sS",
            "--http2",
            "--cacert",
            arg(&f.files.ca),
            "--resolve",
            resolve.as_str(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            url.as_str(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");

    // The other tenant is served over plain HTTP meanwhile; so is hello.
    let http = Http::h1();
    assert_eq!(
        http.get(f.gw.addr, "site.other.test", "/").await.status,
        200
    );
    assert_eq!(
        http.get(f.gw.addr, "hello.apps.test", "/").await.status,
        200
    );

    // Four handshakes, all TLS 1.3: h2 (hyper, curl), http/1.1, no ALPN.
    assert_eq!(
        f.metric("gannet_tls_alpn_total{protocol=\"h2\"}").await,
        2.0
    );
    assert_eq!(
        f.metric("gannet_tls_alpn_total{protocol=\"http/1.1\"}")
            .await,
        1.0
    );
    assert_eq!(
        f.metric("gannet_tls_alpn_total{protocol=\"none\"}").await,
        1.0
    );
    assert_eq!(
        f.metric("gannet_tls_handshakes_total{result=\"ok\",version=\"1.3\"}")
            .await,
        4.0
    );
    assert_eq!(
        f.metric("gannet_tls_handshakes_total{result=\"ok\",version=\"1.2\"}")
            .await,
        0.0
    );
    assert_eq!(f.metric(HANDSHAKES_FAILED).await, 0.0);
    assert_eq!(f.metric("gannet_tls_resumed_total").await, 0.0);
    // One expiry series per name of the platform certificate.
    assert_eq!(jan_first(2040), NOT_AFTER_2040);
    for name in PLATFORM_NAMES {
        assert_eq!(f.expiry(name).await, NOT_AFTER_2040 as f64, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_sees_https_over_tls_and_http_over_plain() {
    let f = Front::start(&[]);
    for alpn in ["h2", "http/1.1"] {
        let config = Arc::new(client_config(&[alpn], TLS12_13));
        let (_, r) = tls_get(f.tls, &config, "echo.apps.test", "echo.apps.test", "/s?x=1")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-echo-scheme"), Some("https"), "over TLS, {alpn}");
        assert_eq!(r.header("x-echo-path"), Some("/s?x=1"));
    }
    for http in [Http::h1(), Http::h2()] {
        let r = http.get(f.gw.addr, "echo.apps.test", "/s?x=1").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-echo-scheme"), Some("http"), "over plain HTTP");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_missing_sni_gets_the_platform_certificate_and_a_404_by_host() {
    let f = Front::start(&[]);
    // A client that checks nothing, to see what an unknown name gets.
    let anything = Arc::new(certs::trust_anything(&["h2", "http/1.1"]));
    for name in ["nobody.example", "a.b.apps.test"] {
        let (conn, r) = tls_get(f.tls, &anything, name, name, "/").await.unwrap();
        assert_eq!(
            conn.leaf(),
            f.leaf.as_slice(),
            "{name}: not the platform leaf"
        );
        assert_eq!(r.status, 404, "{name}");
        assert_eq!(r.header("gannet-error"), Some("unknown-host"), "{name}");
    }

    // No SNI at all: the platform certificate, and routing by Host.
    let mut no_sni = certs::trust_anything(&["http/1.1"]);
    no_sni.enable_sni = false;
    let no_sni = Arc::new(no_sni);
    let (conn, r) = tls_get(f.tls, &no_sni, "hello.apps.test", "hello.apps.test", "/")
        .await
        .unwrap();
    assert_eq!(conn.leaf(), f.leaf.as_slice());
    assert_eq!((r.status, r.text().as_str()), (200, "hello, world\n"));
    let (_, r) = tls_get(f.tls, &no_sni, "hello.apps.test", "nobody.example", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // A verifying client refuses it for a name it does not cover.
    let strict = Arc::new(client_config(&["http/1.1"], TLS12_13));
    assert!(
        TlsConn::open(f.tls, &strict, "nobody.example")
            .await
            .is_err()
    );
    assert!(
        TlsConn::open(f.tls, &strict, "hello.apps.test")
            .await
            .is_ok()
    );
}

/// `openssl s_client` to the TLS listener with `version` (`-tls1_2`…).
async fn s_client(f: &Front, version: &str) -> Output {
    let connect = f.tls.to_string();
    run(
        "openssl",
        &[
            "s_client",
            "-connect",
            connect.as_str(),
            "-servername",
            "hello.apps.test",
            "-CAfile",
            arg(&f.files.ca),
            version,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ],
    )
    .await
}

/// Whether this openssl's s_client takes `flag`.
async fn s_client_has(flag: &str) -> bool {
    let help = run("openssl", &["s_client", "-help"]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    );
    text.lines()
        .any(|l| l.split_whitespace().next() == Some(flag))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_served() {
    let f = Front::start(&[]);
    // Controls: the same client, the same ciphers, a version the gateway
    // serves: the handshake completes.
    for (flag, want) in [
        ("-tls1_2", "New, TLSv1.2, Cipher is"),
        ("-tls1_3", "New, TLSv1.3, Cipher is"),
    ] {
        let out = s_client(&f, flag).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(want),
            "openssl {flag} was not served:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ok_12 = f
        .metric("gannet_tls_handshakes_total{result=\"ok\",version=\"1.2\"}")
        .await;
    assert!(ok_12 >= 1.0, "the TLS 1.2 handshake was not counted");

    let failed_before = f.metric(HANDSHAKES_FAILED).await;
    let mut old = vec!["-tls1_1"];
    if s_client_has("-tls1").await {
        old.push("-tls1");
    }
    for flag in &old {
        let out = s_client(&f, flag).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "openssl {flag} succeeded:\n{stdout}\n{stderr}"
        );
        assert!(
            !stdout
                .lines()
                .any(|l| l.contains("Cipher is") && !l.contains("(NONE)")),
            "openssl {flag} negotiated a cipher:\n{stdout}"
        );
        // Refused by the server with a TLS alert, not by anything else.
        assert!(
            stderr.contains("alert"),
            "openssl {flag} got no alert from the server:\n{stderr}"
        );
    }
    let want = failed_before + old.len() as f64;
    assert!(
        eventually(Duration::from_secs(5), || async {
            f.metric(HANDSHAKES_FAILED).await >= want
        })
        .await,
        "refused handshakes not counted as failed"
    );

    // The listener serves on.
    let config = Arc::new(client_config(&["h2"], TLS12_13));
    let (_, r) = tls_get(f.tls, &config, "hello.apps.test", "hello.apps.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn resumes_sessions_by_ticket_and_by_session_id() {
    let f = Front::start(&[]);
    let mut session_id_only = client_config(&["http/1.1"], TLS12);
    session_id_only.resumption =
        Resumption::in_memory_sessions(64).tls12_resumption(Tls12Resumption::SessionIdOnly);
    let cases = [
        (
            "TLS 1.3 ticket",
            client_config(&["h2", "http/1.1"], TLS13),
            ProtocolVersion::TLSv1_3,
        ),
        (
            "TLS 1.2 ticket",
            client_config(&["h2", "http/1.1"], TLS12),
            ProtocolVersion::TLSv1_2,
        ),
        (
            "TLS 1.2 session ID",
            session_id_only,
            ProtocolVersion::TLSv1_2,
        ),
    ];
    for (what, config, version) in cases {
        // One config, so one session store, for both connections.
        let config = Arc::new(config);
        // The first connection asks once (a TLS 1.3 ticket arrives after
        // the handshake, before the reply), then closes.
        let (first, r) = tls_get(f.tls, &config, "hello.apps.test", "hello.apps.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(first.version, Some(version), "{what}");
        assert_ne!(first.kind, Some(HandshakeKind::Resumed), "{what}");
        drop(first);
        let (second, r) = tls_get(f.tls, &config, "hello.apps.test", "hello.apps.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{what}: on the resumed connection");
        assert_eq!(second.version, Some(version), "{what}");
        assert_eq!(
            second.kind,
            Some(HandshakeKind::Resumed),
            "{what}: the second handshake was not resumed"
        );
    }
    assert_eq!(f.metric("gannet_tls_resumed_total").await, 3.0);
    assert_eq!(
        f.metric("gannet_tls_handshakes_total{result=\"ok\",version=\"1.3\"}")
            .await,
        2.0
    );
    assert_eq!(
        f.metric("gannet_tls_handshakes_total{result=\"ok\",version=\"1.2\"}")
            .await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_certificate_under_load_and_a_bad_pair_keeps_the_old() {
    let f = Front::start(&[]);
    let (tls, plain) = (f.tls, f.gw.addr);
    assert_eq!(served_leaf(tls, "hello.apps.test").await, f.leaf);

    // Load throughout: requests on one kept-alive TLS connection, requests
    // on new TLS connections (full handshakes), and the other tenant's site
    // over plain HTTP. Every one must be answered 200.
    let mut kept = TlsConn::open(
        tls,
        &Arc::new(client_config(&["h2", "http/1.1"], TLS12_13)),
        "hello.apps.test",
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let fresh = certs::fresh_client(&["http/1.1"]);
            let mut failures: Vec<String> = Vec::new();
            let mut kept_served = 0u32;
            let mut note = |what: &str, r: Result<Reply, String>| match r {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    failures.push(format!("{what}: status {}", r.status));
                    false
                }
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    false
                }
            };
            while !stop.load(Ordering::Relaxed) {
                if note(
                    "kept-alive connection",
                    kept.get("hello.apps.test", "/").await,
                ) {
                    kept_served += 1;
                }
                let new = tls_get(tls, &fresh, "hello.apps.test", "hello.apps.test", "/").await;
                note("new connection", new.map(|(_, r)| r));
                let other = Http::h1()
                    .send(plain, "site.other.test", "GET", "/", &[], Bytes::new())
                    .await;
                note("other tenant over http", other);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (kept_served, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new pair (another key, another serial, later expiry): new
    // handshakes get it.
    let second = leaf_until(&["*.apps.test", "apps.test", "hello.apps.test"], 2041);
    let second_der = certs::der_of(&second.0);
    assert_ne!(second_der, f.leaf);
    f.files.write(&second);
    f.gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            served_leaf(tls, "hello.apps.test").await == second_der
        })
        .await,
        "new handshakes still get the first certificate:\n{}",
        f.gw.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            f.gw.log_text().contains("TLS certificate reloaded")
        })
        .await
    );
    // The expiry gauge follows the certificate in service.
    let until_2041 = jan_first(2041) as f64;
    assert!(
        eventually(Duration::from_secs(5), || async {
            f.expiry("*.apps.test").await == until_2041
        })
        .await,
        "the expiry gauge still shows the first certificate"
    );
    assert_eq!(f.expiry("hello.apps.test").await, until_2041);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A broken key: refused, logged, and the second pair stays in service.
    std::fs::write(&f.files.key, "this is not a key\n").unwrap();
    f.gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            f.gw.log_text().contains("TLS reload failed")
        })
        .await,
        "no `TLS reload failed` in the log:\n{}",
        f.gw.log_text()
    );
    for _ in 0..3 {
        assert_eq!(served_leaf(tls, "hello.apps.test").await, second_der);
    }
    assert_eq!(f.expiry("*.apps.test").await, until_2041);
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
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_http_sends_plain_requests_to_https_except_acme_challenges() {
    let cases: [(&[&str], Option<u16>); 3] = [
        (&["--redirect-http", "--https-port", "8443"], Some(8443)),
        (&["--redirect-http"], None),
        (&["--redirect-http", "--https-port", "443"], Some(443)),
    ];
    for (extra, https_port) in cases {
        let f = Front::start(extra);
        // Without --https-port, the TLS listener's own port; 443 unsaid.
        let authority = match https_port.unwrap_or(f.tls.port()) {
            443 => "hello.apps.test".to_string(),
            port => format!("hello.apps.test:{port}"),
        };
        let want = format!("https://{authority}/a/b?c=1");
        // The Host's own port is not the https one.
        for host in ["hello.apps.test", "hello.apps.test:8080"] {
            let r = Http::h1().get(f.gw.addr, host, "/a/b?c=1").await;
            assert_eq!(r.status, 308, "{extra:?} Host {host}");
            assert_eq!(
                r.header("location"),
                Some(want.as_str()),
                "{extra:?} Host {host}"
            );
        }
        let r = Http::h2()
            .get(f.gw.addr, "hello.apps.test", "/a/b?c=1")
            .await;
        assert_eq!(r.status, 308, "{extra:?} over HTTP/2");
        assert_eq!(r.header("location"), Some(want.as_str()));
        // Only the ACME challenge path is exempt.
        let r = Http::h1()
            .get(f.gw.addr, "hello.apps.test", "/.well-known/other")
            .await;
        assert_eq!(r.status, 308, "{extra:?}");

        // ACME HTTP-01 challenges are served as before: by the app of the
        // Host, or 404 for a host nobody serves.
        let challenge = "/.well-known/acme-challenge/tok";
        let r = Http::h1()
            .get(f.gw.addr, "hello.apps.test", challenge)
            .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello, world\n"),
            "{extra:?}"
        );
        assert_eq!(r.header("location"), None);
        let r = Http::h1().get(f.gw.addr, "nobody.example", challenge).await;
        assert_eq!(r.status, 404, "{extra:?}");
        assert_eq!(r.header("location"), None);

        // The HTTPS listener serves, not redirects.
        let config = Arc::new(client_config(&["h2", "http/1.1"], TLS12_13));
        let (_, r) = tls_get(
            f.tls,
            &config,
            "hello.apps.test",
            "hello.apps.test",
            "/a/b?c=1",
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello, world\n"));
    }
}

/// Connects to `addr`, sends `first`, then nothing: how long until the
/// server closes the connection (an error past `limit`).
async fn closed_after(addr: SocketAddr, first: &[u8], limit: Duration) -> Result<Duration, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(first)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {limit:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            // An alert, say: read on to the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_finish_its_handshake_is_cut_at_the_timeout() {
    let f = Front::start(&["--tls-handshake-timeout-secs", "1"]);
    let tls = f.tls;
    // One sends nothing; one stops inside its ClientHello record (a header
    // announcing 512 bytes, then silence). The default timeout (10 s) would
    // outlast the 5 s allowed here.
    let limit = Duration::from_secs(5);
    let silent = tokio::spawn(closed_after(tls, b"", limit));
    let stalled = tokio::spawn(closed_after(tls, b"\x16\x03\x01\x02\x00", limit));

    // Others are served meanwhile, over TLS and plain HTTP.
    let config = certs::fresh_client(&["h2", "http/1.1"]);
    for _ in 0..3 {
        let (_, r) = tls_get(tls, &config, "hello.apps.test", "hello.apps.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let r = Http::h1().get(f.gw.addr, "site.other.test", "/").await;
        assert_eq!(r.status, 200);
    }

    for (what, task) in [("silent", silent), ("stalled", stalled)] {
        if let Err(e) = task.await.unwrap() {
            panic!("the {what} client was not cut: {e}");
        }
    }
    let counted = eventually(Duration::from_secs(5), || async {
        f.metric(HANDSHAKES_TIMED_OUT).await >= 2.0
    })
    .await;
    let timed_out = f.metric(HANDSHAKES_TIMED_OUT).await;
    assert!(counted, "timed-out handshakes counted: {timed_out}, not 2");
    // And served on after.
    let (_, r) = tls_get(tls, &config, "hello.apps.test", "hello.apps.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// Runs the gateway on `routes` with `args` and waits (up to `limit`) for
/// it to exit; a gateway that starts anyway is killed and fails the test.
fn run_to_exit(routes: &Path, args: &[String], limit: Duration) -> Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gannet-gateway"))
        .arg("--routes")
        .arg(routes)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--pool-instances", "4"])
        .arg("--cache-dir")
        .arg(shared_cache())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the gateway did not exit within {limit:?}: {args:?}");
        }
    }
}

#[test]
fn unusable_certificates_or_flags_stop_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let routes_text = app("hello", "hello", &["hello.apps.test"], "");
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, &routes_text).unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert_a, key_a) = leaf(PLATFORM_NAMES);
    let (_, key_b) = leaf(PLATFORM_NAMES);
    let good_cert = write("cert.pem", &cert_a);
    let good_key = write("key.pem", &key_a);
    let other_key = write("other-key.pem", &key_b);
    let bad_base64 = write(
        "bad-base64.pem",
        "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    );
    let no_pem = write("no-pem.pem", "this is not a certificate\n");
    let not_a_key = write("not-a-key.pem", "this is not a key\n");
    let missing = dir.path().join("missing-cert.pem");

    let cases: [(Vec<String>, &[&str]); 6] = [
        (
            tls_args(&good_cert, &other_key),
            &["the private key does not match the certificate"],
        ),
        (tls_args(&bad_base64, &good_key), &["does not parse"]),
        (tls_args(&no_pem, &good_key), &["no certificate found"]),
        (tls_args(&good_cert, &not_a_key), &["no private key found"]),
        (
            tls_args(&missing, &good_key),
            &["missing-cert.pem", "No such file"],
        ),
        (
            vec!["--tls-listen".into(), "127.0.0.1:0".into()],
            &["--tls-cert"],
        ),
    ];
    for (args, wants) in cases {
        let out = run_to_exit(&routes, &args, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started:\n{stderr}");
        for &want in wants {
            assert!(
                stderr.contains(want),
                "{args:?}: wanted {want:?} in:\n{stderr}"
            );
        }
        assert!(!stderr.contains("listening on"), "{args:?}:\n{stderr}");
    }

    // The control: the good pair starts (so the refusals are the files').
    let args = tls_args(&good_cert, &good_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start_with(&routes_text, &shared_cache(), &args);
    assert!(gw.tls.is_some());
}
