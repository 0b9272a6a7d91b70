//! TLS on the same loop as plain HTTP: a rustls server configuration for an
//! edge listener ([`server_config`]: TLS 1.2 and 1.3 only, ALPN `h2` then
//! `http/1.1`, resumption by tickets and by session IDs), certificates
//! read from PEM with a reason a user can act on ([`certified_key`]), a
//! resolver for one certificate that can be replaced while serving
//! ([`ReloadableCert`]), and the handshake itself under a timer and a cap on
//! handshakes in flight ([`Handshaker`]).

use crate::stats::ServerStats;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

/// ALPN protocol IDs the listener offers, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Sessions remembered for resumption by session ID (TLS 1.2 clients
/// without tickets). About 200 bytes each.
const SESSION_CACHE: usize = 4096;

/// A certificate and key pair that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate PEM does not parse.
    #[error("the certificate PEM does not parse: {0}")]
    CertPem(String),
    /// The certificate PEM holds no `CERTIFICATE` block.
    #[error("no certificate found: expected at least one PEM `CERTIFICATE` block")]
    NoCertificate,
    /// The key PEM does not parse, or holds no private key.
    #[error(
        "no private key found: expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block ({0})"
    )]
    NoKey(String),
    /// The key is of a type the platform does not serve.
    #[error("unsupported private key: {0} (use an ECDSA P-256/P-384, Ed25519 or RSA key)")]
    UnsupportedKey(String),
    /// The first certificate is not one rustls can parse.
    #[error("the certificate does not parse: {0}")]
    BadCertificate(String),
    /// The key is not the certificate's.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// The certificate's validity has ended.
    #[error("the certificate expired at {not_after} (unix seconds); renew it")]
    Expired {
        /// Its notAfter, in seconds since the epoch.
        not_after: i64,
    },
}

/// What a served certificate says about itself: for metrics, listings and
/// checks against the names it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Its DNS names (subject alternative names; the subject's common name
    /// when it has none), lowercased, wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// Its issuer's distinguished name.
    pub issuer: String,
    /// Start of validity, seconds since the epoch.
    pub not_before: i64,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Reads the leaf of `key`'s chain.
    pub fn of(key: &CertifiedKey) -> Result<CertInfo, CertError> {
        let leaf = key.cert.first().ok_or(CertError::NoCertificate)?;
        CertInfo::parse(leaf)
    }

    /// Reads one DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            for cn in cert.subject().iter_common_name() {
                if let Ok(cn) = cn.as_str() {
                    names.push(cn.to_ascii_lowercase());
                }
            }
        }
        Ok(CertInfo {
            names,
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whether the certificate covers `host` (lowercase): one of its names
    /// exactly, or a wildcard one label above it.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }

    /// [`CertError::Expired`] when its validity has ended at `now` (unix
    /// seconds).
    pub fn check_current(&self, now: i64) -> Result<(), CertError> {
        if self.not_after <= now {
            return Err(CertError::Expired {
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The crypto provider every listener uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its private key into a
/// key rustls can serve, checking that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::CertPem(pem_problem(&e)))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey(pem_problem(&e)))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertError::KeyMismatch)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(CertError::BadCertificate(e.to_string())),
    }
}

/// What is wrong with a PEM file, without quoting it: the parser's own
/// messages carry the offending line, which for a key is key material.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => {
            "a BEGIN line has no matching END line (are the line breaks intact?)".into()
        }
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        E::Base64Decode(_) => "the base64 between BEGIN and END does not decode".into(),
        E::NoItemsFound => "no PEM block found".into(),
        _ => "it is not well-formed PEM".into(),
    }
}

/// [`certified_key`] from two files.
pub fn read_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    certified_key(&read(cert)?, &read(key)?)
}

/// A server configuration for `resolver`'s certificates: TLS 1.3 and 1.2
/// (nothing older), no client certificates, ALPN `h2` then `http/1.1`,
/// stateless resumption tickets (keys made and rotated by this process)
/// and a session-ID cache.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_config_with_tickets(resolver, rustls::crypto::ring::Ticketer::new()?)
}

/// [`server_config`] with resumption tickets sealed and opened by
/// `ticketer` (a [`crate::tickets::SharedTicketer`] for keys shared by the
/// gateways of a PoP) instead of keys of this process alone.
pub fn server_config_with_tickets(
    resolver: Arc<dyn ResolvesServerCert>,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = ticketer;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// One certificate for every name, replaceable while serving (the control
/// API's own certificate; SIGHUP reloads it).
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Serves `key`.
    pub fn new(key: CertifiedKey) -> Arc<ReloadableCert> {
        Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// How a listener does TLS.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The rustls configuration (see [`server_config`]).
    pub config: Arc<ServerConfig>,
    /// How long a client has from connecting to finishing its handshake
    /// (waiting for a handshake slot included).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; a connection beyond them waits for a
    /// slot within its handshake timeout.
    pub max_handshakes: usize,
}

impl TlsSettings {
    /// `config` with the default timeout (10 s) and cap (1,024).
    pub fn new(config: Arc<ServerConfig>) -> TlsSettings {
        TlsSettings {
            config,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
        }
    }
}

/// The TLS flags both servers take (the gateway adds `--tls-listen`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) to serve over TLS; SIGHUP
    /// reloads it.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a client has to finish its TLS handshake.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_secs: u64,
    /// TLS handshakes in progress at once; more wait for a slot.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_max_handshakes: u64,
}

impl TlsArgs {
    /// The certificate and key files, when both are given.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// Settings for `config` with these flags' timeout and cap.
    pub fn settings(&self, config: Arc<ServerConfig>) -> TlsSettings {
        TlsSettings {
            config,
            handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs),
            max_handshakes: usize::try_from(self.tls_max_handshakes).unwrap_or(usize::MAX),
        }
    }
}

/// What a connection's TLS handshake came to.
pub(crate) enum Handshake {
    /// Done; `h2` when the client chose HTTP/2 by ALPN.
    Done {
        stream: Box<TlsStream<TcpStream>>,
        h2: bool,
    },
    /// Not finished within the handshake timeout.
    TimedOut,
    /// The client failed it (bad protocol version, no shared cipher,
    /// closed…).
    Failed,
}

/// Does the handshakes of one listener, counting them into its stats.
pub(crate) struct Handshaker {
    config: Arc<ServerConfig>,
    timeout: Duration,
    slots: Semaphore,
}

impl Handshaker {
    pub(crate) fn new(settings: TlsSettings) -> Handshaker {
        Handshaker {
            config: settings.config,
            timeout: settings.handshake_timeout,
            slots: Semaphore::new(settings.max_handshakes.max(1)),
        }
    }

    /// Runs the server side of the handshake on `stream`. Its ClientHello
    /// is read before it takes a handshake slot: a client that connects and
    /// sends nothing (or dribbles) holds only its connection, bounded by
    /// the connection cap and the handshake timeout, never one of the slots
    /// that the CPU-heavy part of handshakes is capped by.
    pub(crate) async fn handshake(&self, stream: TcpStream, stats: &ServerStats) -> Handshake {
        let attempt = async {
            let hello =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let _slot = self.slots.acquire().await;
            hello.into_stream(self.config.clone()).await
        };
        let stream = match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => {
                stats.count_tls_handshake_timeout();
                return Handshake::TimedOut;
            }
            Ok(Err(e)) => {
                stats.count_tls_handshake_failed();
                tracing::debug!(error = %e, "TLS handshake failed");
                return Handshake::Failed;
            }
            Ok(Ok(stream)) => stream,
        };
        let (_, session) = stream.get_ref();
        let tls13 = session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let resumed = matches!(
            session.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let alpn = match session.alpn_protocol() {
            None => crate::stats::Alpn::None,
            Some(_) if h2 => crate::stats::Alpn::H2,
            Some(_) => crate::stats::Alpn::Http1,
        };
        stats.count_tls_handshake(tls13, resumed, alpn);
        Handshake::Done {
            stream: Box::new(stream),
            h2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pasted on one line (spaces for line breaks, as from an
    /// environment variable) must not come back in the error: the PEM
    /// parser's own message quotes the offending line.
    #[test]
    fn a_malformed_key_is_not_quoted_in_the_error() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key_pem = key.serialize_pem();
        let body: Vec<&str> = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for broken in [key_pem.replace('\n', " "), key_pem.replace('\n', "\\n")] {
            let err = certified_key(cert.pem().as_bytes(), broken.as_bytes()).expect_err("refused");
            let text = format!("{err} {err:?}");
            for line in &body {
                assert!(!text.contains(&line[..16]), "the key leaked: {text}");
            }
            assert!(text.contains("no private key found"), "{text}");
        }
        // The good pair loads.
        assert!(certified_key(cert.pem().as_bytes(), key_pem.as_bytes()).is_ok());
    }
}
