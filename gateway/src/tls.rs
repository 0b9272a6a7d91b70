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
//!
//! Tenants' own certificates come with their apps from the control API
//! ([`HostCertificate`]). A new pair is checked before its app's version is
//! taken ([`CertStore::check_app`]: it parses, its key matches, it names
//! its hostname, which is one of the app's, and it has not expired); the
//! whole set is then replaced with the routing table
//! ([`CertStore::serve_tenants`], [`CertStore::set_hosts`]). Each distinct
//! pair is parsed once and kept while it is served. Private keys never
//! appear in an error, a log line or a `Debug` output.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use gannet_model::snapshot::HostCertificate;
use gannet_server::tls::{CertError, CertInfo, certified_key, read_certified_key, unix_now};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
        let served = ServedCert::of(read_certified_key(cert, key)?)?;
        served.info.check_current(unix_now())?;
        Ok(served)
    }

    /// Parses a PEM chain (leaf first) and its PEM private key, refusing a
    /// pair that does not parse or does not match. Expiry is not checked
    /// ([`CertInfo::check_current`] does).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServedCert, CertError> {
        ServedCert::of(certified_key(cert_pem, key_pem)?)
    }

    fn of(key: CertifiedKey) -> Result<ServedCert, CertError> {
        let info = CertInfo::of(&key)?;
        Ok(ServedCert {
            key: Arc::new(key),
            info,
        })
    }
}

/// Why a tenant's certificate for one of its app's hostnames is refused.
/// The message names the hostname and the fix, never the key.
#[derive(Debug, thiserror::Error)]
pub enum HostCertError {
    /// The pair does not parse, its key does not match, or it has expired.
    #[error("certificate for {hostname}: {source}")]
    Unusable {
        /// The hostname it is for.
        hostname: String,
        /// Why.
        #[source]
        source: CertError,
    },
    /// The certificate is for a hostname the app does not serve.
    #[error("certificate for {hostname}: {hostname} is not one of the app's hostnames")]
    NotAHost {
        /// The hostname it is for.
        hostname: String,
    },
    /// The certificate does not name the hostname it is for.
    #[error("certificate for {hostname}: it is for {names}, not {hostname}")]
    DoesNotCover {
        /// The hostname it is for.
        hostname: String,
        /// The names it has, comma-separated.
        names: String,
    },
    /// Two certificates for one hostname.
    #[error("certificate for {hostname}: given twice")]
    Duplicate {
        /// The hostname.
        hostname: String,
    },
}

/// A hostname as tables key it: lowercase, no trailing dot.
fn normalized(hostname: &str) -> String {
    hostname.trim_end_matches('.').to_ascii_lowercase()
}

/// Identifies a PEM pair without keeping it (the key is hashed, not held).
fn fingerprint(cert: &HostCertificate) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert.cert_pem.len() as u64).to_le_bytes());
    hash.update(cert.cert_pem.as_bytes());
    hash.update(cert.key_pem.as_bytes());
    hash.finalize().into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The certificates in service at one moment. Built whole and swapped in.
#[derive(Debug, Default)]
pub struct CertTable {
    /// Certificates by exact (lowercase) name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Certificates for `*.{key}`, by the parent name, with the app whose
    /// they are.
    wildcard: HashMap<String, (Arc<str>, Arc<CertifiedKey>)>,
    /// Exact hostnames routed to an app but without a certificate of their
    /// own, with that app: a wildcard certificate of another app never
    /// serves them (they get the platform certificate), so no tenant's
    /// wildcard is presented for another tenant's name.
    routed: HashMap<String, Arc<str>>,
    /// What everything else gets.
    platform: Option<ServedCert>,
    /// Tenants' certificates by hostname (`*.example.com` for a wildcard),
    /// with their app: what `exact` and `wildcard` are made of.
    hosts: Vec<(String, ServedCert)>,
    /// Which app each tenant certificate belongs to (parallel to `hosts`).
    owners: Vec<Arc<str>>,
    /// Every exact hostname routed, with its app.
    routes: Vec<(String, Arc<str>)>,
}

impl CertTable {
    /// The table serving `platform` to everyone and `hosts` (lowercase
    /// hostnames, `*.example.com` for one label under `example.com`, each
    /// with its app) by SNI; `routes` are the exact hostnames routed, with
    /// their apps.
    fn new(
        platform: Option<ServedCert>,
        hosts: Vec<(String, ServedCert)>,
        owners: Vec<Arc<str>>,
        routes: Vec<(String, Arc<str>)>,
    ) -> CertTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for ((hostname, cert), owner) in hosts.iter().zip(&owners) {
            match hostname.strip_prefix("*.") {
                Some(parent) if !parent.is_empty() => {
                    wildcard.insert(parent.to_string(), (owner.clone(), cert.key.clone()));
                }
                Some(_) => {}
                None => {
                    exact.insert(hostname.clone(), cert.key.clone());
                }
            }
        }
        let routed = routes
            .iter()
            .filter(|(host, _)| !exact.contains_key(host))
            .cloned()
            .collect();
        CertTable {
            exact,
            wildcard,
            routed,
            platform,
            hosts,
            owners,
            routes,
        }
    }

    /// The certificate for the SNI name `sni` (lowercase; a trailing dot is
    /// ignored), if any.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.strip_suffix('.').unwrap_or(name);
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some((owner, key)) = self.wildcard.get(parent)
                && self.routed.get(name).is_none_or(|app| app == owner)
            {
                return Some(key.clone());
            }
        }
        self.platform.as_ref().map(|p| p.key.clone())
    }

    /// Every name served and when its certificate expires (for metrics):
    /// the platform certificate's names, and each tenant hostname.
    fn expiries(&self) -> impl Iterator<Item = (&str, i64)> {
        let platform = self.platform.iter().flat_map(|c| {
            c.info
                .names
                .iter()
                .map(move |n| (n.as_str(), c.info.not_after))
        });
        let tenants = self
            .hosts
            .iter()
            .map(|(hostname, c)| (hostname.as_str(), c.info.not_after));
        platform.chain(tenants)
    }
}

/// The gateway's certificates, resolved per handshake.
pub struct CertStore {
    table: ArcSwap<CertTable>,
    metrics: Arc<Metrics>,
    /// Tenants' pairs parsed already, by [`fingerprint`]: a pair is parsed
    /// when first seen, not at every revision. Holds what is served (and
    /// what was checked since the last [`CertStore::serve_tenants`]).
    parsed: Mutex<HashMap<[u8; 32], ServedCert>>,
    /// Serializes writers (the platform certificate's SIGHUP, the tenants'
    /// sync), so that neither loses the other's change.
    writing: Mutex<()>,
    /// The platform certificate from the `--tls-cert` files, and the one
    /// from the control API, which wins when set.
    platform_sources: Mutex<PlatformSources>,
}

/// Where the platform certificate may come from.
#[derive(Default)]
struct PlatformSources {
    file: Option<ServedCert>,
    control: Option<ServedCert>,
}

impl PlatformSources {
    fn served(&self) -> Option<ServedCert> {
        self.control.clone().or_else(|| self.file.clone())
    }
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
            parsed: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
            platform_sources: Mutex::new(PlatformSources::default()),
        })
    }

    /// Serves `cert` (from the `--tls-cert` files) as the platform
    /// certificate from the next handshake on (handshakes and connections
    /// under way keep theirs), unless the control API's is set: that one
    /// wins.
    pub fn set_platform(&self, cert: ServedCert) {
        let _writing = lock(&self.writing);
        let served = {
            let mut sources = lock(&self.platform_sources);
            sources.file = Some(cert);
            sources.served()
        };
        self.install_platform(served);
    }

    /// Serves `cert`, the platform certificate from the control API, in
    /// place of the files' (`None`: the files' again).
    pub fn set_control_platform(&self, cert: Option<ServedCert>) {
        let _writing = lock(&self.writing);
        let served = {
            let mut sources = lock(&self.platform_sources);
            sources.control = cert;
            sources.served()
        };
        self.install_platform(served);
    }

    /// Whether the platform certificate in service is the control API's.
    pub fn platform_from_control(&self) -> bool {
        lock(&self.platform_sources).control.is_some()
    }

    /// Installs `platform` with the tenants' certificates in service;
    /// the caller holds `writing`.
    fn install_platform(&self, platform: Option<ServedCert>) {
        let old = self.table.load();
        self.install(CertTable::new(
            platform,
            old.hosts.clone(),
            old.owners.clone(),
            old.routes.clone(),
        ));
    }

    /// Serves `hosts` (hostname, certificate) as the tenants' certificates
    /// from the next handshake on, replacing the previous ones whole; the
    /// platform certificate stays. A hostname `*.example.com` is served for
    /// one label under `example.com`; names are matched lowercase. Of two
    /// entries for one hostname the last is served.
    pub fn set_hosts(&self, hosts: Vec<(String, ServedCert)>) {
        let unowned: Arc<str> = Arc::from("");
        self.set_tenants(
            hosts
                .into_iter()
                .map(|(hostname, cert)| (hostname, unowned.clone(), cert))
                .collect(),
            Vec::new(),
        );
    }

    /// [`CertStore::set_hosts`] with the app each certificate belongs to,
    /// and the exact hostnames routed (with their apps): a wildcard
    /// certificate is never served for a name routed to another app.
    pub fn set_tenants(
        &self,
        hosts: Vec<(String, Arc<str>, ServedCert)>,
        routes: Vec<(String, Arc<str>)>,
    ) {
        let by_name: BTreeMap<String, (Arc<str>, ServedCert)> = hosts
            .into_iter()
            .map(|(hostname, app, cert)| (normalized(&hostname), (app, cert)))
            .collect();
        let (hosts, owners) = by_name
            .into_iter()
            .map(|(hostname, (app, cert))| ((hostname, cert), app))
            .unzip();
        let routes = routes
            .into_iter()
            .map(|(host, app)| (normalized(&host), app))
            .collect();
        let _writing = lock(&self.writing);
        let platform = self.table.load().platform.clone();
        self.install(CertTable::new(platform, hosts, owners, routes));
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
        self.metrics.set_cert_expiry(table.expiries());
        self.table.store(Arc::new(table));
    }

    /// Whether any certificate is in service.
    pub fn has_platform(&self) -> bool {
        self.table.load().platform.is_some()
    }

    /// The certificate a handshake sending `sni` (lowercase) gets now.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.table.load().lookup(sni)
    }

    /// `cert` parsed (once per distinct pair), refusing a pair that does
    /// not parse or whose key does not match. Expiry is not checked.
    fn parse_tenant(&self, cert: &HostCertificate) -> Result<ServedCert, CertError> {
        let print = fingerprint(cert);
        if let Some(served) = lock(&self.parsed).get(&print) {
            return Ok(served.clone());
        }
        let served = ServedCert::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())?;
        lock(&self.parsed).insert(print, served.clone());
        Ok(served)
    }

    /// Checks an app's certificates before a version of it is taken: each
    /// for one of its `hosts`, at most one per hostname, and each pair not
    /// in `served` (the certificates of the app's version in service) one
    /// that parses, whose key matches, that names its hostname and that has
    /// not expired. A pair served already is not judged again.
    pub fn check_app(
        &self,
        hosts: &[String],
        certificates: &[HostCertificate],
        served: &[HostCertificate],
    ) -> Result<(), HostCertError> {
        let hosts: HashSet<String> = hosts.iter().map(|h| normalized(h.as_str())).collect();
        let mut seen = HashSet::new();
        for cert in certificates {
            let hostname = normalized(&cert.hostname);
            if !hosts.contains(&hostname) {
                return Err(HostCertError::NotAHost { hostname });
            }
            if !seen.insert(hostname.clone()) {
                return Err(HostCertError::Duplicate { hostname });
            }
            if served.contains(cert) {
                continue;
            }
            let parsed = match self.parse_tenant(cert) {
                Ok(parsed) => parsed,
                Err(source) => return Err(HostCertError::Unusable { hostname, source }),
            };
            if !parsed.info.covers(&hostname) {
                return Err(HostCertError::DoesNotCover {
                    names: parsed.info.names.join(", "),
                    hostname,
                });
            }
            if let Err(source) = parsed.info.check_current(unix_now()) {
                return Err(HostCertError::Unusable { hostname, source });
            }
        }
        Ok(())
    }

    /// Serves `certificates` ((app, certificate) pairs: every certificate
    /// of the apps now installed) as the tenants' certificates, replacing
    /// the previous ones whole. Each was checked when its app's version was
    /// taken ([`CertStore::check_app`]); one that does not parse now (a
    /// state directory edited by hand) is logged and its hostname gets the
    /// platform certificate. Pairs no longer served are forgotten. Returns
    /// how many hostnames have their own certificate.
    pub fn serve_tenants<'a>(
        &self,
        certificates: impl IntoIterator<Item = (&'a str, &'a HostCertificate)>,
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> usize {
        let mut apps: HashMap<&str, Arc<str>> = HashMap::new();
        let mut app_name = |app: &'a str| apps.entry(app).or_insert_with(|| Arc::from(app)).clone();
        let mut hosts = Vec::new();
        let mut kept = HashSet::new();
        for (app, cert) in certificates {
            match self.parse_tenant(cert) {
                Ok(served) => {
                    kept.insert(fingerprint(cert));
                    hosts.push((cert.hostname.clone(), app_name(app), served));
                }
                Err(e) => {
                    tracing::error!(
                        app,
                        hostname = %cert.hostname,
                        error = %e,
                        "cannot serve this certificate; the hostname gets the platform certificate"
                    );
                }
            }
        }
        let routes = routes
            .into_iter()
            .filter(|(_, host)| !host.starts_with("*."))
            .map(|(app, host)| (host.to_string(), app_name(app)))
            .collect();
        lock(&self.parsed).retain(|print, _| kept.contains(print));
        let count = hosts.len();
        self.set_tenants(hosts, routes);
        count
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
            wildcard: HashMap::from([("apps.test".to_string(), (Arc::from("apps"), apps.clone()))]),
            routed: HashMap::from([
                ("own.apps.test".to_string(), Arc::from("apps")),
                ("taken.apps.test".to_string(), Arc::from("other")),
            ]),
            platform: Some(ServedCert {
                key: platform.clone(),
                info: CertInfo {
                    names: vec!["*.platform.test".into()],
                    issuer: String::new(),
                    not_before: 0,
                    not_after: 1,
                },
            }),
            hosts: Vec::new(),
            owners: Vec::new(),
            routes: Vec::new(),
        };
        let is = |sni, want: &Arc<CertifiedKey>| {
            assert!(Arc::ptr_eq(&table.lookup(sni).unwrap(), want), "{sni:?}");
        };
        is(Some("shop.example.com"), &shop);
        is(Some("shop.example.com."), &shop);
        is(Some("a.apps.test"), &apps);
        // A name routed to the wildcard's own app gets the wildcard; one
        // routed to another app never does (it gets the platform's).
        is(Some("own.apps.test"), &apps);
        is(Some("taken.apps.test"), &platform);
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

    const NO_ROUTES: [(&str, &str); 0] = [];

    /// A self-signed certificate for `names` and its key (PEM), valid until
    /// 1 January of `until`.
    fn pem_pair(names: &[&str], until: i32) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn host_cert(hostname: &str, pair: &(String, String)) -> HostCertificate {
        HostCertificate {
            hostname: hostname.into(),
            cert_pem: pair.0.clone(),
            key_pem: pair.1.clone(),
        }
    }

    fn served(names: &[&str]) -> ServedCert {
        let (cert, key) = pem_pair(names, 2100);
        ServedCert::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()
    }

    fn store() -> (Arc<CertStore>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        (CertStore::new(metrics.clone()), metrics)
    }

    /// Whether `store` gives `sni` exactly `want`.
    fn serves(store: &CertStore, sni: Option<&str>, want: &ServedCert) -> bool {
        store
            .lookup(sni)
            .is_some_and(|key| Arc::ptr_eq(&key, &want.key))
    }

    #[test]
    fn set_hosts_serves_exact_then_wildcard_then_platform_and_replaces_the_set_whole() {
        let (store, metrics) = store();
        let platform = served(&["*.platform.test"]);
        store.set_platform(platform.clone());
        let shop = served(&["shop.example.com"]);
        let beta = served(&["*.beta.example.org"]);
        let exact_in_wildcard = served(&["www.beta.example.org"]);
        store.set_hosts(vec![
            // Normalized: lowercase, no trailing dot.
            ("Shop.Example.com.".into(), shop.clone()),
            ("*.beta.example.org".into(), beta.clone()),
            ("www.beta.example.org".into(), exact_in_wildcard.clone()),
        ]);
        assert!(serves(&store, Some("shop.example.com"), &shop));
        assert!(serves(&store, Some("x.beta.example.org"), &beta));
        // An exact name wins over a wildcard.
        assert!(serves(
            &store,
            Some("www.beta.example.org"),
            &exact_in_wildcard
        ));
        // A wildcard covers one label; everything else is the platform's.
        for sni in [
            Some("a.b.beta.example.org"),
            Some("beta.example.org"),
            Some("example.com"),
            Some("other.example.com"),
            None,
        ] {
            assert!(serves(&store, sni, &platform), "{sni:?}");
        }
        // One expiry series per platform name and per tenant hostname.
        let text = metrics.render();
        for name in [
            "*.platform.test",
            "shop.example.com",
            "*.beta.example.org",
            "www.beta.example.org",
        ] {
            assert!(
                text.contains(&format!(
                    "gannet_tls_cert_expiry_timestamp_seconds{{name=\"{name}\"}}"
                )),
                "{name}: {text}"
            );
        }

        // Replaced whole: a new pair for shop, beta gone.
        let shop2 = served(&["shop.example.com"]);
        store.set_hosts(vec![("shop.example.com".into(), shop2.clone())]);
        assert!(serves(&store, Some("shop.example.com"), &shop2));
        assert!(serves(&store, Some("x.beta.example.org"), &platform));
        assert!(serves(&store, Some("www.beta.example.org"), &platform));
        let text = metrics.render();
        assert!(!text.contains("beta.example.org"), "{text}");
        assert!(text.contains("name=\"shop.example.com\""), "{text}");

        // A new platform certificate keeps the tenants'.
        let platform2 = served(&["*.platform.test"]);
        store.set_platform(platform2.clone());
        assert!(serves(&store, Some("shop.example.com"), &shop2));
        assert!(serves(&store, Some("nobody.test"), &platform2));

        // No tenant certificates: everyone gets the platform's.
        store.set_hosts(Vec::new());
        assert!(serves(&store, Some("shop.example.com"), &platform2));
    }

    #[test]
    fn check_app_refuses_what_cannot_be_served_and_names_why_without_the_key() {
        let (store, _) = store();
        let hosts: Vec<String> = [
            "shop-acme.localhost",
            "shop.example.com",
            "*.beta.example.org",
        ]
        .map(String::from)
        .to_vec();
        let good = pem_pair(&["shop.example.com"], 2100);
        let other = pem_pair(&["shop.example.com"], 2100);
        let wildcard = pem_pair(&["*.beta.example.org"], 2100);
        let expired = pem_pair(&["shop.example.com"], 2001);
        let elsewhere = pem_pair(&["blog.example.com"], 2100);
        let check = |certs: &[HostCertificate], served: &[HostCertificate]| {
            store.check_app(&hosts, certs, served)
        };
        check(
            &[
                host_cert("shop.example.com", &good),
                host_cert("*.beta.example.org", &wildcard),
            ],
            &[],
        )
        .unwrap();

        let mismatched = HostCertificate {
            hostname: "shop.example.com".into(),
            cert_pem: good.0.clone(),
            key_pem: other.1.clone(),
        };
        let not_a_key = HostCertificate {
            key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ..host_cert("shop.example.com", &good)
        };
        let cases = [
            (
                vec![mismatched],
                "certificate for shop.example.com: the private key does not match",
            ),
            (
                vec![not_a_key],
                "certificate for shop.example.com: unsupported private key",
            ),
            (
                vec![host_cert("shop.example.com", &expired)],
                "certificate for shop.example.com: the certificate expired",
            ),
            (
                vec![host_cert("blog.example.com", &elsewhere)],
                "certificate for blog.example.com: blog.example.com is not one of the app's hostnames",
            ),
            (
                vec![host_cert("shop.example.com", &wildcard)],
                "certificate for shop.example.com: it is for *.beta.example.org, not shop.example.com",
            ),
            (
                vec![
                    host_cert("shop.example.com", &good),
                    host_cert("SHOP.example.com", &other),
                ],
                "certificate for shop.example.com: given twice",
            ),
        ];
        for (certs, want) in cases {
            let err = check(&certs, &[]).expect_err(want).to_string();
            assert!(err.starts_with(want), "{err:?}, wanted {want:?}");
            assert!(!err.contains("PRIVATE KEY"), "{err}");
            for c in &certs {
                assert!(!err.contains(c.key_pem.trim()), "{err}");
            }
        }

        // A pair served already is not judged again (it expired in
        // service); its hostname must still be the app's.
        let old = host_cert("shop.example.com", &expired);
        check(std::slice::from_ref(&old), std::slice::from_ref(&old)).unwrap();
        let elsewhere = host_cert("blog.example.com", &elsewhere);
        assert!(
            check(
                std::slice::from_ref(&elsewhere),
                std::slice::from_ref(&elsewhere)
            )
            .is_err()
        );
    }

    #[test]
    fn serve_tenants_parses_each_pair_once_and_leaves_out_one_that_does_not_parse() {
        let (store, _) = store();
        let platform = served(&["*.platform.test"]);
        store.set_platform(platform.clone());
        let shop = host_cert("shop.example.com", &pem_pair(&["shop.example.com"], 2100));
        let broken = HostCertificate {
            key_pem: pem_pair(&["blog.example.com"], 2100).1,
            ..host_cert("blog.example.com", &pem_pair(&["blog.example.com"], 2100))
        };
        let count = store.serve_tenants([("shop", &shop), ("blog", &broken)], NO_ROUTES);
        assert_eq!(count, 1);
        let first = store.lookup(Some("shop.example.com")).unwrap();
        assert!(!Arc::ptr_eq(&first, &platform.key));
        assert!(serves(&store, Some("blog.example.com"), &platform));
        // The same pair again: the parsed one, not a new parse.
        store.serve_tenants([("shop", &shop)], NO_ROUTES);
        assert!(Arc::ptr_eq(
            &store.lookup(Some("shop.example.com")).unwrap(),
            &first
        ));
        assert_eq!(lock(&store.parsed).len(), 1);
        // Gone from the apps: gone from the table and forgotten.
        assert_eq!(
            store.serve_tenants(Vec::<(&str, &HostCertificate)>::new(), NO_ROUTES),
            0
        );
        assert!(serves(&store, Some("shop.example.com"), &platform));
        assert!(lock(&store.parsed).is_empty());
    }
}
