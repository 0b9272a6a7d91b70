//! Tenants' own certificates: the checks an upload passes before anything
//! is stored, with the same parser the gateways serve it with
//! ([`gannet_server::tls::certified_key`]), so a pair the API accepts is a
//! pair every gateway can serve.
//!
//! Refused, each with a reason that says what to fix: PEM that does not
//! parse, no certificate, no key, an unsupported key type, a key that is
//! not the certificate's, a chain certificate that does not parse, an
//! expired or not yet valid certificate, one that does not cover the
//! hostname, and PEM or chains over the size bounds.

use gannet_model::api::CertificateUpload;
use gannet_server::tls::{CertError, CertInfo, certified_key};

/// Most bytes of certificate-chain PEM accepted (a leaf and a few
/// intermediates take a few KiB).
pub const MAX_CERT_PEM_BYTES: usize = 32 * 1024;
/// Most bytes of private-key PEM accepted (an RSA-4096 key takes ~3.3 KiB).
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;
/// Most certificates in a chain.
pub const MAX_CHAIN_LEN: usize = 8;
/// How far in the future a certificate's validity may start (clock skew
/// between its issuer and the control plane).
pub const NOT_BEFORE_TOLERANCE_SECS: i64 = 3600;

/// Why an uploaded certificate is refused.
#[derive(Debug, thiserror::Error)]
pub enum CertificateRefused {
    /// The certificate PEM is over [`MAX_CERT_PEM_BYTES`].
    #[error(
        "the certificate chain is {0} bytes of PEM, more than the {max} allowed: upload the leaf and its intermediates only",
        max = MAX_CERT_PEM_BYTES
    )]
    ChainTooLarge(usize),
    /// The key PEM is over [`MAX_KEY_PEM_BYTES`].
    #[error(
        "the private key is {0} bytes of PEM, more than the {max} allowed: upload the key alone",
        max = MAX_KEY_PEM_BYTES
    )]
    KeyTooLarge(usize),
    /// The chain has more than [`MAX_CHAIN_LEN`] certificates.
    #[error(
        "the chain has {0} certificates, more than the {max} allowed: upload the leaf and its intermediates only",
        max = MAX_CHAIN_LEN
    )]
    ChainTooLong(usize),
    /// The pair cannot be served (PEM, key type, mismatch, expiry…).
    #[error(transparent)]
    Unusable(#[from] CertError),
    /// A certificate after the leaf does not parse.
    #[error("certificate {position} of the chain does not parse: {reason}")]
    BadChain {
        /// Its position, 1 being the leaf.
        position: usize,
        /// Why.
        reason: String,
    },
    /// The validity starts later than now (beyond the tolerance).
    #[error(
        "the certificate is not valid before {not_before} (unix seconds); upload it once it is"
    )]
    NotYetValid {
        /// Its notBefore, unix seconds.
        not_before: i64,
    },
    /// None of its names covers the hostname.
    #[error("the certificate covers {names}, not {hostname}: use one issued for {hostname}")]
    WrongName {
        /// Its names, comma-separated (or a phrase when it has none).
        names: String,
        /// The hostname it was uploaded for.
        hostname: String,
    },
}

/// A certificate and key that passed [`check`]: what to store. Its `Debug`
/// shows no key material.
pub struct CheckedCertificate {
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
}

impl std::fmt::Debug for CheckedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCertificate")
            .field("info", &self.info)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CheckedCertificate {
    /// The chain, PEM, as uploaded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM, as uploaded (seal it before storing it).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What the leaf says: names, issuer, validity.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

/// Checks `upload` for `hostname` (lowercase) at `now` (unix seconds): it
/// parses as gateways parse it, the key is the leaf's, every certificate
/// of the chain parses, the leaf is valid now and covers `hostname`.
pub fn check(
    hostname: &str,
    upload: &CertificateUpload,
    now: i64,
) -> Result<CheckedCertificate, CertificateRefused> {
    if upload.cert_pem.len() > MAX_CERT_PEM_BYTES {
        return Err(CertificateRefused::ChainTooLarge(upload.cert_pem.len()));
    }
    if upload.key_pem.len() > MAX_KEY_PEM_BYTES {
        return Err(CertificateRefused::KeyTooLarge(upload.key_pem.len()));
    }
    let certified = certified_key(upload.cert_pem.as_bytes(), upload.key_pem.as_bytes())?;
    if certified.cert.len() > MAX_CHAIN_LEN {
        return Err(CertificateRefused::ChainTooLong(certified.cert.len()));
    }
    let info = CertInfo::of(&certified)?;
    for (i, der) in certified.cert.iter().enumerate().skip(1) {
        CertInfo::parse(der).map_err(|e| CertificateRefused::BadChain {
            position: i + 1,
            reason: match e {
                CertError::BadCertificate(reason) => reason,
                other => other.to_string(),
            },
        })?;
    }
    info.check_current(now)?;
    if info.not_before > now.saturating_add(NOT_BEFORE_TOLERANCE_SECS) {
        return Err(CertificateRefused::NotYetValid {
            not_before: info.not_before,
        });
    }
    if !info.covers(hostname) {
        return Err(CertificateRefused::WrongName {
            names: if info.names.is_empty() {
                "no DNS names".to_string()
            } else {
                info.names.join(", ")
            },
            hostname: hostname.to_string(),
        });
    }
    Ok(CheckedCertificate {
        cert_pem: upload.cert_pem.clone(),
        key_pem: upload.key_pem.clone(),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCa;
    use gannet_server::tls::unix_now;

    fn upload(cert: &crate::testing::TestCert) -> CertificateUpload {
        CertificateUpload {
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        }
    }

    #[test]
    fn a_wildcard_covers_one_label_below_it() {
        let cert = TestCa::new("Test CA").issue(&["*.example.com"]);
        let checked = check("shop.example.com", &upload(&cert), unix_now()).unwrap();
        assert_eq!(checked.info().names, vec!["*.example.com".to_string()]);
        for host in ["example.com", "a.shop.example.com"] {
            let err = check(host, &upload(&cert), unix_now()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "the certificate covers *.example.com, not {host}: use one issued for {host}"
                )
            );
        }
    }

    #[test]
    fn a_chain_with_more_than_the_bound_is_refused() {
        let ca = TestCa::new("Test CA");
        let cert = ca.issue(&["shop.example.com"]);
        let mut long = upload(&cert);
        for _ in 0..MAX_CHAIN_LEN {
            long.cert_pem.push_str(&ca.cert_pem);
        }
        let err = check("shop.example.com", &long, unix_now()).unwrap_err();
        assert!(
            matches!(err, CertificateRefused::ChainTooLong(n) if n == MAX_CHAIN_LEN + 1),
            "{err}"
        );
        // The leaf and its CA: accepted.
        let mut chain = upload(&cert);
        chain.cert_pem.push_str(&ca.cert_pem);
        assert!(check("shop.example.com", &chain, unix_now()).is_ok());
    }

    #[test]
    fn debug_shows_no_key() {
        let cert = TestCa::new("Test CA").issue(&["shop.example.com"]);
        let checked = check("shop.example.com", &upload(&cert), unix_now()).unwrap();
        let shown = format!("{checked:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
