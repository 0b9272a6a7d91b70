//! A real ACME server for tests: Let's Encrypt's Pebble, validating HTTP-01
//! challenges for real (no `PEBBLE_VA_ALWAYS_VALID`), and
//! `pebble-challtestsrv` as its DNS server only, so that every name a test
//! orders resolves to an address the test chose (127.0.0.1 unless told
//! otherwise with [`Pebble::add_a`]; no AAAA records).
//!
//! Pebble serves its ACME directory and its management interface over
//! HTTPS with a certificate from a [`TestCa`] made here (for `127.0.0.1`),
//! and validates HTTP-01 on the port it is told (the gateway's plain
//! port). Its issuing root is made anew on every start; tests fetch it
//! from the management interface ([`Pebble::issuing_root_pem`]).
//!
//! The ports are picked first ([`Pebble::prepare`]), so that the control
//! API can be configured with [`Pebble::directory_url`] before the gateway
//! whose port Pebble validates on exists; [`Pebble::start`] then runs both
//! processes. Both are killed on drop.
//!
//! Without `pebble` and `pebble-challtestsrv` on PATH (Debian package
//! `pebble`) the tests that need them are skipped, except under CI.

use crate::harness::{Http, Reply, empty_body};
use bytes::Bytes;
use gannet_control_api::testing::TestCa;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const PEBBLE: &str = "pebble";
const CHALLTESTSRV: &str = "pebble-challtestsrv";

/// How long each process may take to listen.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Whether an executable `program` is on PATH.
fn on_path(program: &str) -> bool {
    let Some(paths) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&paths).any(|dir| {
        dir.join(program)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A loopback port free for TCP and UDP (challtestsrv's DNS listens on
/// both), not in `taken`; recorded there.
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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Pebble and its DNS server: ports picked and Pebble's own certificate
/// written by [`Pebble::prepare`]; running after [`Pebble::start`].
pub struct Pebble {
    dir: tempfile::TempDir,
    /// The CA of Pebble's own HTTPS certificate.
    ca_file: PathBuf,
    ca_pem: String,
    /// ACME (HTTPS).
    acme_port: u16,
    /// Pebble's management interface (HTTPS).
    management_port: u16,
    /// challtestsrv's DNS (UDP and TCP).
    dns_port: u16,
    /// challtestsrv's management interface (HTTP).
    challtestsrv_port: u16,
    /// Where Pebble would validate TLS-ALPN-01 (nothing listens).
    tls_port: u16,
    /// challtestsrv, then Pebble.
    children: Vec<Child>,
}

impl Pebble {
    /// Whether `pebble` and `pebble-challtestsrv` are installed. Without
    /// them the caller skips its test (this prints why), except under CI
    /// (`CI` set), which must have them: this panics.
    pub fn installed() -> bool {
        let missing: Vec<&str> = [PEBBLE, CHALLTESTSRV]
            .into_iter()
            .filter(|p| !on_path(p))
            .collect();
        if missing.is_empty() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI must have {} on PATH for the ACME test (Debian package pebble; .ci/run \
                 installs it)",
                missing.join(" and ")
            );
        }
        eprintln!(
            "skipped: {} not on PATH (apt-get install pebble)",
            missing.join(" and ")
        );
        false
    }

    /// Picks the ports and writes Pebble's HTTPS certificate (for
    /// `127.0.0.1` and `localhost`, from a CA made here) and that CA;
    /// starts nothing.
    pub fn prepare() -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Pebble's HTTPS test CA");
        let ca_file = ca.write(dir.path(), "pebble-https-ca.pem");
        ca.issue(&["127.0.0.1", "localhost"])
            .write(dir.path(), "pebble-https");
        let mut taken = HashSet::new();
        Pebble {
            ca_pem: ca.cert_pem.clone(),
            ca_file,
            acme_port: free_port(&mut taken),
            management_port: free_port(&mut taken),
            dns_port: free_port(&mut taken),
            challtestsrv_port: free_port(&mut taken),
            tls_port: free_port(&mut taken),
            children: Vec::new(),
            dir,
        }
    }

    /// The ACME directory (HTTPS, verified with [`Pebble::ca_file`]).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The CA (PEM file) of Pebble's own HTTPS certificate: what an ACME
    /// client must trust to talk to it. Not the CA it issues from.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    fn log_path(&self, program: &str) -> PathBuf {
        self.dir.path().join(format!("{program}.log"))
    }

    /// What both processes printed so far.
    pub fn log_text(&self) -> String {
        [CHALLTESTSRV, PEBBLE]
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(self.log_path(p)).unwrap_or_default();
                format!("--- {p} ---\n{text}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs `program` with `args` (and `env`), its output to its log file.
    fn spawn(&mut self, program: &str, args: &[String], env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.log_path(program)).unwrap();
        let err = log.try_clone().unwrap();
        let child = Command::new(program)
            .args(args)
            // Validation is what the tests test: never skipped, and made
            // straight to the gateway, never through a proxy.
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.children.push(child);
    }

    /// Waits until the last process started accepts TCP connections on
    /// each of `ports`; panics with the logs if it exits or takes too long.
    async fn wait_listening(&mut self, program: &str, ports: &[u16]) {
        let deadline = Instant::now() + START_LIMIT;
        for &port in ports {
            loop {
                let connect = TcpStream::connect(loopback(port));
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                    break;
                }
                let child = self.children.last_mut().unwrap();
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "{program} exited ({status}) before listening on port {port}:\n{}",
                        self.log_text()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{program} did not listen on port {port} within {} s:\n{}",
                    START_LIMIT.as_secs(),
                    self.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Starts the DNS server, then Pebble validating HTTP-01 at port
    /// `http_port` of whatever address a name resolves to; returns once
    /// both listen.
    pub async fn start(&mut self, http_port: u16) {
        assert!(self.children.is_empty(), "Pebble is already running");
        // DNS only: every other listener off. A queries get 127.0.0.1
        // unless told otherwise; AAAA queries get nothing.
        let args = vec![
            "-dns01".to_string(),
            format!("127.0.0.1:{}", self.dns_port),
            "-management".to_string(),
            format!("127.0.0.1:{}", self.challtestsrv_port),
            "-http01".to_string(),
            String::new(),
            "-https01".to_string(),
            String::new(),
            "-tlsalpn01".to_string(),
            String::new(),
            "-defaultIPv4".to_string(),
            "127.0.0.1".to_string(),
            "-defaultIPv6".to_string(),
            String::new(),
        ];
        self.spawn(CHALLTESTSRV, &args, &[]);
        let ports = [self.challtestsrv_port, self.dns_port];
        self.wait_listening(CHALLTESTSRV, &ports).await;

        let config = json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", self.acme_port),
                "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
                "certificate": self.dir.path().join("pebble-https.crt"),
                "privateKey": self.dir.path().join("pebble-https.key"),
                "httpPort": http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = self.dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let args = vec![
            "-config".to_string(),
            config_path.to_str().unwrap().to_string(),
            "-dnsserver".to_string(),
            format!("127.0.0.1:{}", self.dns_port),
        ];
        self.spawn(
            PEBBLE,
            &args,
            &[
                // Validate at once, not after a random sleep of up to 15 s.
                ("PEBBLE_VA_NOSLEEP", "1"),
                // Never refuse a good nonce (the client retries, but the
                // test need not wait for it).
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                // Every order validates its challenge anew, renewals too.
                ("PEBBLE_AUTHZREUSE", "0"),
            ],
        );
        let ports = [self.management_port, self.acme_port];
        self.wait_listening(PEBBLE, &ports).await;
    }

    /// A client trusting only the CA of Pebble's own HTTPS certificate.
    fn https_client(&self) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = ClientConfig::builder_with_provider(crate::certs::provider())
            .with_protocol_versions(crate::certs::TLS12_13)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// GET `path` on Pebble's management interface, over verified HTTPS.
    async fn management_get(&self, path: &str) -> Result<Reply, String> {
        let addr = loopback(self.management_port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let name = ServerName::try_from("127.0.0.1".to_string()).map_err(|e| e.to_string())?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(self.https_client()).connect(name, tcp),
        )
        .await
        .map_err(|_| "no TLS handshake within 10 s".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", format!("127.0.0.1:{}", self.management_port))
            .body(empty_body())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        Reply::read(resp).await
    }

    /// The root Pebble issues certificates under (made anew at its start),
    /// PEM, from its management interface (`/roots/0`).
    pub async fn issuing_root_pem(&self) -> String {
        let reply = self
            .management_get("/roots/0")
            .await
            .unwrap_or_else(|e| panic!("Pebble's /roots/0: {e}\n{}", self.log_text()));
        let text = reply.text();
        assert_eq!(reply.status, 200, "Pebble's /roots/0: {text}");
        assert!(
            text.contains("-----BEGIN CERTIFICATE-----"),
            "Pebble's /roots/0 is not a PEM certificate: {text}"
        );
        text
    }

    /// Makes the DNS server answer A queries for `host` with `ip` (in
    /// place of the default 127.0.0.1).
    pub async fn add_a(&self, host: &str, ip: &str) {
        let fqdn = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        let body = json!({"host": fqdn, "addresses": [ip]}).to_string();
        let reply = Http::h1()
            .send(
                loopback(self.challtestsrv_port),
                "127.0.0.1",
                "POST",
                "/add-a",
                &[("content-type", "application/json")],
                Bytes::from(body),
            )
            .await
            .unwrap_or_else(|e| panic!("challtestsrv /add-a: {e}"));
        assert_eq!(
            reply.status,
            200,
            "challtestsrv /add-a: {}\n{}",
            reply.text(),
            self.log_text()
        );
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // Pebble first, then its DNS server.
        while let Some(mut child) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
