//! A test certificate authority (made once per test run with rcgen), leaf
//! certificates it signs, and rustls client configurations that trust it
//! (or, for tests that must see what an unverified client gets, trust
//! anything).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, date_time_ymd,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// 2040-01-01T00:00:00Z, the notAfter of [`leaf`]'s certificates.
pub const NOT_AFTER_2040: i64 = 2_208_988_800;

/// Unix seconds of 1 January of `year`, 00:00 UTC (as rcgen writes
/// `date_time_ymd(year, 1, 1)`).
pub fn jan_first(year: i32) -> i64 {
    // Days from 1970-01-01 to {year}-01-01.
    let days: i64 = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    days * 86_400
}

struct Ca {
    cert_pem: String,
    key_pem: String,
}

/// The CA's parameters (its subject is what leaves name as their issuer).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Gannet test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2050, 1, 1);
    params.serial_number = Some(SerialNumber::from(1u64));
    params
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params().self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    })
}

/// The test CA's certificate, PEM.
pub fn ca_pem() -> String {
    ca().cert_pem.clone()
}

/// The test CA's certificate, DER.
pub fn ca_der() -> Vec<u8> {
    der_of(&ca().cert_pem)
}

/// A leaf certificate for `names` (DNS names, wildcards allowed) signed by
/// the test CA, valid from 2020 to 2040: (certificate PEM, private key PEM,
/// PKCS#8). Every call makes a new key and a new serial.
pub fn leaf(names: &[&str]) -> (String, String) {
    leaf_until(names, 2040)
}

/// [`leaf`], expiring on 1 January of `year`.
pub fn leaf_until(names: &[&str], year: i32) -> (String, String) {
    static SERIAL: AtomicU64 = AtomicU64::new(1000);
    let issuer = Issuer::new(ca_params(), KeyPair::from_pem(&ca().key_pem).unwrap());
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())
            .unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    params.serial_number = Some(SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)));
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(year, 1, 1);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

/// Certificate and key files the gateway reads, in a temporary directory
/// that lives as long as this.
pub struct CertFiles {
    _dir: tempfile::TempDir,
    /// The chain: leaf, then the CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA alone (for curl and openssl).
    pub ca: PathBuf,
}

impl CertFiles {
    /// Writes `leaf` (from [`leaf`]) as the served pair, and the CA.
    pub fn new(leaf: &(String, String)) -> CertFiles {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: dir.path().join("ca.pem"),
            _dir: dir,
        };
        std::fs::write(&files.ca, ca_pem()).unwrap();
        files.write(leaf);
        files
    }

    /// Overwrites the served pair with `leaf` (chain: leaf, then the CA).
    pub fn write(&self, leaf: &(String, String)) {
        std::fs::write(&self.cert, format!("{}{}", leaf.0, ca_pem())).unwrap();
        std::fs::write(&self.key, &leaf.1).unwrap();
    }
}

/// `p` as an argument (temporary paths are UTF-8).
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// The crypto provider of every test client (ring, as the gateway).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both TLS versions the gateway serves.
pub static TLS12_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
/// TLS 1.2 only.
pub static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
/// TLS 1.3 only.
pub static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A client that trusts the test CA only, offers `alpn` (in order) and
/// `versions`, and keeps sessions for resumption (rustls's default
/// in-memory store).
pub fn client_config(
    alpn: &[&str],
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der())).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// [`client_config`] that never resumes: every handshake is a full one and
/// shows the certificate the server serves now.
pub fn fresh_client(alpn: &[&str]) -> Arc<ClientConfig> {
    let mut config = client_config(alpn, TLS12_13);
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A client that accepts any certificate for any name (the handshake's
/// signatures are still checked), never resumes, and offers `alpn`. What
/// the server presented is in the connection's `peer_certificates()`.
pub fn trust_anything(alpn: &[&str]) -> ClientConfig {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(TLS12_13)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    config
}

#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A new TCP connection to `addr` and a TLS handshake sending `sni` with
/// `config`, within 10 s; the error says which step failed.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    config: &Arc<ClientConfig>,
    sni: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("{sni}: {e}"))?;
    let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
    tokio::time::timeout(std::time::Duration::from_secs(10), handshake)
        .await
        .map_err(|_| format!("{sni}: no TLS handshake within 10 s"))?
        .map_err(|e| format!("{sni}: TLS handshake: {e}"))
}
