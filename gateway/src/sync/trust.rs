//! The link to the control API carries node tokens, so it is TLS unless it
//! never leaves the machine: an `https://` URL is verified against the
//! web's public roots (Mozilla's, built in) or against only the CAs given
//! with `--control-api-ca`; an `http://` URL is refused unless its host is
//! loopback ([`control_api_url`]). A failed handshake is told apart from an
//! unreachable API and says what to fix ([`tls_failure`]).
//!
//! The CLI uses the same checks for its own link to the control API.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::error::Error;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A control-API URL or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The CA file could not be read.
    #[error("reading the CA certificates in {path}: {source}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not PEM.
    #[error("the CA file {path} is not PEM: {reason}")]
    CaPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The CA file holds no certificate.
    #[error(
        "the CA file {path} holds no certificate: expected at least one PEM `CERTIFICATE` block"
    )]
    NoCa {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("certificate {index} of the CA file {path} cannot be trusted as a CA: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Which certificate, counting from 1.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// The URL does not parse, or is not one the link can use.
    #[error("control API URL `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A plain `http://` URL to a host that is not loopback.
    #[error(
        "refusing control API URL `{url}`: plain http:// would send tokens across the network in clear; use https:// (plain http:// is only for loopback: 127.0.0.0/8, ::1, localhost)"
    )]
    PlainHttp {
        /// The URL.
        url: String,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration: {0}")]
    Config(String),
}

/// Whether `host` (as in a URL: an IPv6 address may be in brackets) is this
/// machine: `localhost`, an address in 127.0.0.0/8, or `::1` (also as an
/// IPv4-mapped address). Other names, even ones that resolve to loopback,
/// are not: what they resolve to can change.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Checks a control-API base URL: `https://HOST[:PORT][/PREFIX]`, or
/// `http://` to a loopback host ([`is_loopback_host`]); no query string.
/// Returns it without a trailing `/`.
pub fn control_api_url(url: &str) -> Result<String, TrustError> {
    let bad = |reason: &str| TrustError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri = url.parse::<http::Uri>().map_err(|e| bad(&e.to_string()))?;
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(bad("expected https://HOST[:PORT]"));
    };
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(host) => {}
        Some("http") => {
            return Err(TrustError::PlainHttp {
                url: url.to_string(),
            });
        }
        Some(_) | None => {
            return Err(bad(
                "expected https://HOST[:PORT] (or http:// to a loopback address)",
            ));
        }
    }
    if uri.query().is_some() {
        return Err(bad("a base URL takes no query string"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Reads PEM CA certificates (one or more `CERTIFICATE` blocks; other
/// blocks are skipped) from `path`, checking that each can be a trust
/// anchor.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let pem = std::fs::read(path).map_err(|source| TrustError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::CaPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TrustError::NoCa {
            path: path.to_owned(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| TrustError::BadCa {
                path: path.to_owned(),
                index: i + 1,
                reason: e.to_string(),
            })?;
    }
    Ok(certs)
}

/// A TLS client configuration trusting only `trusted_cas`, or the web's
/// public roots when `None`: TLS 1.2 and 1.3, no client certificate, no
/// ALPN (the caller sets it).
pub fn client_config(
    trusted_cas: Option<&[CertificateDer<'static>]>,
) -> Result<rustls::ClientConfig, TrustError> {
    let mut roots = rustls::RootCertStore::empty();
    match trusted_cas {
        None => roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        Some(cas) => {
            for ca in cas {
                roots
                    .add(ca.clone())
                    .map_err(|e| TrustError::Config(e.to_string()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The rustls error somewhere in `err`'s chain. `std::io::Error`s are
/// looked into: their `source()` skips the error they wrap.
pub fn rustls_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(tls) = rustls_error(inner)
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// When `err` (a failed request to the control API) is a failed TLS
/// handshake, what went wrong and what to do about it: a certificate that
/// is not trusted (`ca_flag` names the option that adds a CA), or a server
/// that does not speak TLS.
pub fn tls_failure(err: &(dyn Error + 'static), ca_flag: &str) -> Option<String> {
    use rustls::CertificateError as Cert;
    let tls = rustls_error(err)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(cert) => {
            let hint = match cert {
                Cert::UnknownIssuer | Cert::BadSignature => {
                    format!(
                        "it is not signed by a trusted CA; give the control API's CA with {ca_flag}"
                    )
                }
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    "it does not name the host of the control API URL".to_string()
                }
                Cert::Expired | Cert::ExpiredContext { .. } => "it has expired".to_string(),
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                    "it is not valid yet (check this machine's clock)".to_string()
                }
                _ => String::new(),
            };
            if hint.is_empty() {
                format!("control API certificate not trusted: {cert}")
            } else {
                format!("control API certificate not trusted: {cert} ({hint})")
            }
        }
        rustls::Error::InvalidMessage(_) => format!(
            "TLS handshake with the control API failed: {tls} (does it serve https on that port?)"
        ),
        other => format!("TLS handshake with the control API failed: {other}"),
    })
}

/// `err` and its sources, `: `-separated, each message once.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "localhost.example.com",
            "api.localhost",
            "10.0.0.1",
            "128.0.0.1",
            "0.0.0.0",
            "[::]",
            "[2001:db8::1]",
            "[::ffff:10.0.0.1]",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn control_api_urls() {
        for (url, want) in [
            ("https://api.example.com", "https://api.example.com"),
            (
                "https://api.example.com:7443/",
                "https://api.example.com:7443",
            ),
            ("https://10.0.0.5/gannet/", "https://10.0.0.5/gannet"),
            ("http://127.0.0.1:7070", "http://127.0.0.1:7070"),
            ("http://localhost:7070/", "http://localhost:7070"),
            ("http://[::1]:7070", "http://[::1]:7070"),
        ] {
            assert_eq!(control_api_url(url).unwrap(), want, "{url}");
        }
        for url in [
            "http://api.example.com",
            "http://10.0.0.5:7070",
            "http://0.0.0.0:7070",
            "http://[2001:db8::1]:7070",
            "http://localhost.evil.example:7070",
        ] {
            let e = control_api_url(url).unwrap_err();
            assert!(matches!(e, TrustError::PlainHttp { .. }), "{url}: {e}");
            assert!(e.to_string().contains("use https://"), "{e}");
        }
        for url in [
            "",
            "api.example.com:7070",
            "ftp://api.example.com",
            "https://",
            "https://api.example.com/?x=1",
            "not a url",
        ] {
            let e = control_api_url(url).unwrap_err();
            assert!(matches!(e, TrustError::BadUrl { .. }), "{url:?}: {e}");
        }
    }

    #[test]
    fn ca_files_that_cannot_be_used_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            read_ca_file(&missing),
            Err(TrustError::ReadCa { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        assert!(matches!(read_ca_file(&empty), Err(TrustError::NoCa { .. })));
        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            read_ca_file(&key_only),
            Err(TrustError::NoCa { .. })
        ));
        let not_der = dir.path().join("not-der.pem");
        std::fs::write(
            &not_der,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca_file(&not_der).unwrap_err();
        assert!(matches!(e, TrustError::BadCa { index: 1, .. }), "{e}");
        let truncated = dir.path().join("truncated.pem");
        std::fs::write(
            &truncated,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n",
        )
        .unwrap();
        assert!(matches!(
            read_ca_file(&truncated),
            Err(TrustError::CaPem { .. })
        ));
    }

    #[test]
    fn a_certificate_error_inside_io_errors_is_found_and_explained() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        let message = tls_failure(&outer, "--control-api-ca").unwrap();
        assert!(
            message.starts_with("control API certificate not trusted: UnknownIssuer"),
            "{message}"
        );
        assert!(message.contains("--control-api-ca"), "{message}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&refused, "--control-api-ca"), None);
    }
}
