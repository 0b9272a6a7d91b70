//! Test support shared by this crate's tests and the CLI's: a fresh database
//! per test (SQLite in a temporary directory, or a Postgres database created
//! and dropped by the test), the API served in-process on loopback (also
//! over HTTPS), and certificate authorities made for one test.
//!
//! Postgres tests need `GANNET_TEST_POSTGRES_URL` (an admin connection, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); `.ci/run` sets it. Without it
//! they are skipped with a message — except under `CI=true`, where a missing
//! Postgres is an error.

use crate::{ApiConfig, AppState};
use gannet_server::tls::ReloadableCert;
use sqlx::Connection;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The operator token the test APIs accept.
pub const OPERATOR_TOKEN: &str = "gnt_test_operator_token_0123456789";

/// The master key test APIs run with (64 hex characters): in-process ones
/// get it in their config, and tests that start the `gannet-control-api`
/// binary pass it as `GANNET_MASTER_KEY`.
pub const TEST_MASTER_KEY: &str =
    "67616e6e65742d746573742d6d61737465722d6b65792d33322d627974657321";

/// [`TEST_MASTER_KEY`], parsed.
pub fn test_master_key() -> crate::master_key::MasterKey {
    crate::master_key::MasterKey::parse(TEST_MASTER_KEY).expect("TEST_MASTER_KEY parses")
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in a temporary directory.
    Sqlite,
    /// A fresh Postgres database.
    Postgres,
}

/// The backends to run each test on: SQLite always, Postgres when configured.
pub fn backends() -> Vec<Backend> {
    match std::env::var("GANNET_TEST_POSTGRES_URL") {
        Ok(_) => vec![Backend::Sqlite, Backend::Postgres],
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but GANNET_TEST_POSTGRES_URL is not set: Postgres tests must run in CI")
        }
        Err(_) => {
            eprintln!("GANNET_TEST_POSTGRES_URL not set: running on SQLite only");
            vec![Backend::Sqlite]
        }
    }
}

/// A database for one test; a Postgres one is dropped with it.
pub struct TestDb {
    /// URL to give the API.
    pub url: String,
    /// Data directory (blobs for SQLite, temporary uploads).
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// Creates a fresh database on `backend`.
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("gannet.db").display()),
                dir,
                pg: None,
            },
            Backend::Postgres => {
                let admin =
                    std::env::var("GANNET_TEST_POSTGRES_URL").expect("GANNET_TEST_POSTGRES_URL");
                let name = format!("gannet_t_{:016x}", rand::random::<u64>());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to Postgres");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                TestDb {
                    url: format!("{base}/{name}"),
                    dir,
                    pg: Some((admin, name)),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Dropped from sync code: use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// The API served in-process on `127.0.0.1:0`; stops on drop.
pub struct TestApi {
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    /// Where it also serves HTTPS, when started with [`TestApi::start_tls`].
    pub tls_addr: Option<SocketAddr>,
    /// The certificate the HTTPS listener serves; replace it to test reloads.
    pub tls_cert: Option<Arc<ReloadableCert>>,
    /// Its state (store, blobs).
    pub state: AppState,
    shutdown: CancellationToken,
}

impl TestApi {
    /// Serves the API on `db` with the test operator token.
    pub async fn start(db: &TestDb) -> TestApi {
        Self::start_with(db, |_| {}).await
    }

    /// Serves the API on `db` after `tweak` adjusts its config.
    ///
    /// Compiles run in-process unless `tweak` says otherwise: a test
    /// binary cannot be started as a compile worker. This crate's own tests
    /// set [`crate::compile::CompileIsolation::ChildProcess`] with the
    /// `gannet-control-api` binary (`CARGO_BIN_EXE_gannet-control-api`).
    /// Rate limits are off unless `tweak` sets them. The master key is
    /// [`TEST_MASTER_KEY`] unless `tweak` changes it.
    pub async fn start_with(db: &TestDb, tweak: impl FnOnce(&mut ApiConfig)) -> TestApi {
        Self::start_inner(db, None, tweak).await
    }

    /// Serves the API on `db` as [`TestApi::start`] does, and the same API
    /// (one state: one notifier, one rate limiter) over HTTPS with `cert`
    /// on a second loopback port, [`TestApi::tls_addr`]. Tests drive it
    /// over plain HTTP and point what they test at [`TestApi::https_url`].
    pub async fn start_tls(db: &TestDb, cert: &TestCert) -> TestApi {
        Self::start_inner(db, Some(cert), |_| {}).await
    }

    async fn start_inner(
        db: &TestDb,
        tls: Option<&TestCert>,
        tweak: impl FnOnce(&mut ApiConfig),
    ) -> TestApi {
        // Errors the API logs show up in the failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .try_init();
        let mut config = ApiConfig {
            database_url: db.url.clone(),
            data_dir: db.dir.path().join("data"),
            operator_token: Some(OPERATOR_TOKEN.into()),
            rate_limit_per_sec: 0.0,
            tenant_rate_limit: 0,
            compile: crate::compile::CompileConfig {
                isolation: crate::compile::CompileIsolation::InProcess,
                ..crate::compile::CompileConfig::default()
            },
            master_key: Some(test_master_key()),
            ..ApiConfig::default()
        };
        tweak(&mut config);
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let built = AppState::build(config).await.expect("build API");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let state = built.state.clone();
        let (tls_addr, tls_cert) = match tls {
            Some(cert) => {
                let resolver = cert.reloadable();
                let config =
                    gannet_server::tls::server_config(resolver.clone()).expect("TLS config");
                let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind TLS");
                let tls_addr = tls_listener.local_addr().expect("TLS addr");
                tokio::spawn(crate::serve_tls(
                    tls_listener,
                    gannet_server::TlsSettings::new(config),
                    built.state.clone(),
                    shutdown.clone(),
                ));
                (Some(tls_addr), Some(resolver))
            }
            None => (None, None),
        };
        tokio::spawn(crate::serve(listener, built.state, shutdown.clone()));
        TestApi {
            addr,
            tls_addr,
            tls_cert,
            state,
            shutdown,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT` of the HTTPS listener. Panics unless
    /// started with [`TestApi::start_tls`].
    pub fn https_url(&self) -> String {
        format!(
            "https://{}",
            self.tls_addr
                .expect("the API was started with TestApi::start_tls")
        )
    }
}

/// A certificate authority made for one test (rcgen, ECDSA P-256): it
/// issues server certificates; clients that should trust them trust
/// [`TestCa::cert_pem`].
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's own certificate, PEM.
    pub cert_pem: String,
}

impl TestCa {
    /// A new CA whose certificate's common name is `name` (give two CAs of
    /// one test different names).
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses, e.g.
    /// `["localhost", "127.0.0.1"]`), signed by this CA, with a fresh key.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        self.issue_with(names, |_| {})
    }

    /// [`TestCa::issue`], valid from `not_before` to `not_after` (UTC
    /// dates, `(year, month, day)`): a past `not_after` makes an expired
    /// certificate.
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> TestCert {
        self.issue_with(names, |params| {
            params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
            params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        })
    }

    fn issue_with(
        &self,
        names: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gannet test server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        tweak(&mut params);
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/file`; returns the path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.cert_pem).expect("write CA certificate");
        path
    }
}

/// A server certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct TestCert {
    /// The certificate (leaf only), PEM.
    pub cert_pem: String,
    /// Its PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl TestCert {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// A resolver serving this certificate, replaceable while serving.
    pub fn reloadable(&self) -> Arc<ReloadableCert> {
        ReloadableCert::new(
            gannet_server::tls::certified_key(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
                .expect("a usable test certificate"),
        )
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `component` with `entry` appended to section `section_id` of the first of
/// its top-level core modules that has such a section: a real component
/// made to break one admission limit, for tests. A second memory is
/// `(5, &[0x00, 0x01])` (no maximum, one page); a table of `n` funcrefs is
/// `(4, &[0x70, 0x00, LEB128(n)…])`. Panics if no core module has the section.
pub fn with_core_section_entry(component: &[u8], section_id: u8, entry: &[u8]) -> Vec<u8> {
    const CORE_MODULE: u8 = 1;
    let mut out = component[..8].to_vec();
    let mut done = false;
    for (id, content) in raw_sections(&component[8..]) {
        let content = if id == CORE_MODULE && !done {
            match with_entry(content, section_id, entry) {
                Some(module) => {
                    done = true;
                    module
                }
                None => content.to_vec(),
            }
        } else {
            content.to_vec()
        };
        push_section(&mut out, id, &content);
    }
    assert!(done, "no core module has section {section_id}");
    out
}

/// `module` with `entry` appended to its section `section_id`, if it has one.
fn with_entry(module: &[u8], section_id: u8, entry: &[u8]) -> Option<Vec<u8>> {
    let mut out = module[..8].to_vec();
    let mut found = false;
    for (id, content) in raw_sections(&module[8..]) {
        if id == section_id {
            let (count, len) = read_leb(content);
            let mut grown = Vec::new();
            push_leb(&mut grown, count + 1);
            grown.extend_from_slice(&content[len..]);
            grown.extend_from_slice(entry);
            push_section(&mut out, id, &grown);
            found = true;
        } else {
            push_section(&mut out, id, content);
        }
    }
    found.then_some(out)
}

/// `(id, content)` of each section in `bytes` (after the 8-byte preamble).
fn raw_sections(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut sections = Vec::new();
    while !bytes.is_empty() {
        let id = bytes[0];
        let (size, len) = read_leb(&bytes[1..]);
        let start = 1 + len;
        let end = start + size as usize;
        sections.push((id, &bytes[start..end]));
        bytes = &bytes[end..];
    }
    sections
}

fn push_section(out: &mut Vec<u8>, id: u8, content: &[u8]) {
    out.push(id);
    push_leb(out, content.len() as u64);
    out.extend_from_slice(content);
}

/// An unsigned LEB128 value and how many bytes it took.
fn read_leb(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("truncated LEB128")
}

/// Appends `value` as unsigned LEB128.
pub fn push_leb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// `component` with a custom section of `padding` bytes appended: the same
/// program under another digest and size.
pub fn with_custom_section(component: &[u8], name: &str, padding: usize) -> Vec<u8> {
    let mut content = Vec::new();
    push_leb(&mut content, name.len() as u64);
    content.extend_from_slice(name.as_bytes());
    content.resize(content.len() + padding, 0);
    let mut out = component.to_vec();
    push_section(&mut out, 0, &content);
    out
}
