//! The ACME client's HTTP: hyper over rustls (ring), trusting the web's
//! public roots or only the CA the operator names (a private ACME CA,
//! Pebble in tests), HTTPS only. It also remembers the last `Retry-After`
//! the CA sent with an error (instant-acme does not expose it), so that a
//! rate-limited attempt waits as long as the CA asked.

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Why the client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file does not read or holds no certificate.
    #[error("the ACME CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("configuring TLS for ACME: {0}")]
    Tls(#[from] rustls::Error),
}

/// The last `Retry-After` an error response carried.
#[derive(Clone, Default)]
pub struct RetryAfter(Arc<Mutex<Option<SystemTime>>>);

impl RetryAfter {
    /// Takes the remembered time, if any.
    pub fn take(&self) -> Option<SystemTime> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn set(&self, at: SystemTime) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(at);
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return now.checked_add(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(value).ok()
}

/// The HTTP client an [`instant_acme::Account`] uses.
pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetryAfter,
}

impl AcmeHttp {
    /// A client trusting the web's public roots, or only the certificates
    /// in `ca_file`; errors' `Retry-After` go to `retry_after`.
    pub fn new(ca_file: Option<&Path>, retry_after: RetryAfter) -> Result<AcmeHttp, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            None => roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            Some(path) => {
                let bad = |reason: String| ClientError::Ca {
                    path: path.display().to_string(),
                    reason,
                };
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no PEM certificate in it".into()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            retry_after,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let rsp = response
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = rsp.status();
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && let Some(at) = rsp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
            {
                retry_after.set(at);
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = AcmeHttp::new(Some(&path), RetryAfter::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
    }
}
