//! Which certificate a TLS handshake gets: [`CertStore`], a rustls
//! `ResolvesServerCert` over an immutable [`CertTable`] behind an atomic
//! pointer (the routing table's pattern). By the SNI name (rustls has
//! lowercased it): an exact name, then a wildcard one label up, then the
//! platform certificate; a client sending no SNI, or a name nobody has,
//! gets the platform certificate (and its request then 404s by Host).
//! Per handshake: one atomic load and at most two hash lookups, no lock and
//! no allocation beyond the `Arc` clone rustls takes.
//!
//! The platform certificate comes from `--tls-cert/--tls-key`, re-read on
//! SIGHUP ([`CertStore::load_platform`]): a pair that does not parse, does
//! not match or has expired is refused with its reason and the one in
//! service stays.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use gannet_server::tls::{CertError, CertInfo, read_certified_key, unix_now};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate in service, with what it says about itself.
#[derive(Clone, Debug)]
pub struct ServedCert {
    /// The chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// Its names and validity.
    pub info: CertInfo,
}

impl ServedCert {
    /// Reads `cert` and `key` (PEM), refusing a pair that does not parse,
    /// does not match, or has expired.
    pub fn read(cert: &Path, key: &Path) -> Result<ServedCert, CertError> {
        let key = read_certified_key(cert, key)?;
        let info = CertInfo::of(&key)?;
        info.check_current(unix_now())?;
        Ok(ServedCert {
            key: Arc::new(key),
            info,
        })
    }
}

/// The certificates in service at one moment. Built whole and swapped in.
#[derive(Debug, Default)]
pub struct CertTable {
    /// Certificates by exact (lowercase) name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Certificates for `*.{key}`, by the parent name.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// What everything else gets.
    platform: Option<ServedCert>,
}

impl CertTable {
    /// The certificate for the SNI name `sni` (lowercase), if any.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.wildcard.get(parent)
            {
                return Some(key.clone());
            }
        }
        self.platform.as_ref().map(|p| p.key.clone())
    }

    /// Every certificate in service (for metrics).
    fn served(&self) -> impl Iterator<Item = &ServedCert> {
        self.platform.iter()
    }
}

/// The gateway's certificates, resolved per handshake.
pub struct CertStore {
    table: ArcSwap<CertTable>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("table", &self.table.load())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// No certificate yet: handshakes fail until one is set.
    pub fn new(metrics: Arc<Metrics>) -> Arc<CertStore> {
        Arc::new(CertStore {
            table: ArcSwap::from_pointee(CertTable::default()),
            metrics,
        })
    }

    /// Serves `cert` as the platform certificate from the next handshake
    /// on (handshakes and connections under way keep theirs).
    pub fn set_platform(&self, cert: ServedCert) {
        let old = self.table.load();
        let table = CertTable {
            exact: old.exact.clone(),
            wildcard: old.wildcard.clone(),
            platform: Some(cert),
        };
        self.install(table);
    }

    /// Reads the platform certificate from `files` and serves it; on any
    /// error the one in service stays and the error says why.
    pub fn load_platform(&self, files: &PlatformFiles) -> Result<CertInfo, CertError> {
        let cert = ServedCert::read(&files.cert, &files.key)?;
        let info = cert.info.clone();
        self.set_platform(cert);
        Ok(info)
    }

    fn install(&self, table: CertTable) {
        self.metrics.set_cert_expiry(
            table
                .served()
                .flat_map(|c| c.info.names.iter().map(|n| (n.as_str(), c.info.not_after))),
        );
        self.table.store(Arc::new(table));
    }

    /// Whether any certificate is in service.
    pub fn has_platform(&self) -> bool {
        self.table.load().platform.is_some()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().lookup(hello.server_name())
    }
}

/// Where the operator's platform certificate is read from.
#[derive(Clone, Debug)]
pub struct PlatformFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        // Any signing key will do: the table never looks inside.
        let pair = rcgen::KeyPair::generate().unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
        let signing = gannet_server::tls::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Arc::new(CertifiedKey::new(Vec::new(), signing))
    }

    #[test]
    fn exact_then_wildcard_then_platform() {
        let (shop, apps, platform) = (key(), key(), key());
        let table = CertTable {
            exact: HashMap::from([("shop.example.com".to_string(), shop.clone())]),
            wildcard: HashMap::from([("apps.test".to_string(), apps.clone())]),
            platform: Some(ServedCert {
                key: platform.clone(),
                info: CertInfo {
                    names: vec!["*.platform.test".into()],
                    issuer: String::new(),
                    not_before: 0,
                    not_after: 1,
                },
            }),
        };
        let is = |sni, want: &Arc<CertifiedKey>| {
            assert!(Arc::ptr_eq(&table.lookup(sni).unwrap(), want), "{sni:?}");
        };
        is(Some("shop.example.com"), &shop);
        is(Some("a.apps.test"), &apps);
        // A wildcard covers one label only.
        is(Some("a.b.apps.test"), &platform);
        is(Some("apps.test"), &platform);
        is(Some("other.example.com"), &platform);
        is(None, &platform);
        assert!(
            CertTable::default()
                .lookup(Some("shop.example.com"))
                .is_none()
        );
    }
}
