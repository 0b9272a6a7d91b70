//! The routing table: `Host` → deployment (a stable version, and during a
//! rollout a canary with its weight). Built whole from a routes file or a
//! desired state, then published behind an atomic pointer
//! ([`arc_swap::ArcSwap`]): requests load the current table without taking
//! a lock, and a reload swaps in a new table while requests already running
//! keep the one they loaded.

use crate::metrics::AppMetrics;
use crate::proxies::TrustedProxies;
use gannet_model::snapshot::Affinity;
use gannet_model::{AppId, ResolvedLimits, Sha256Digest};
use gannet_runtime::InstanceSettings;
use gannet_runtime::fair::AppShare;
use gannet_scheduler::split::{PIN_HEADER, Pin, Weight, bucket, parse_pin, picks_canary};
use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One app as the hot path sees it: everything a request needs, prepared.
pub struct App {
    /// The app's id.
    pub id: AppId,
    /// Version label: the version number for apps from the control API,
    /// the component digest's first 12 hex digits for a routes file's.
    pub version: String,
    /// The component's digest (the cache key).
    pub digest: Sha256Digest,
    /// Where the component's bytes are, for a cache miss.
    pub component_path: PathBuf,
    /// Env, limits, log sink and outbound policy of each instance.
    pub settings: InstanceSettings,
    /// Permits for `max_inflight` instances.
    pub inflight: Arc<Semaphore>,
    /// Metric handles.
    pub metrics: AppMetrics,
    /// `tenant/app` and version, for apps from the control API.
    pub report: Option<(String, u32)>,
    /// Where its guests' CPU, slots and memory are charged.
    pub share: AppShare,
}

impl App {
    /// The app's resolved limits.
    pub fn limits(&self) -> &ResolvedLimits {
        &self.settings.limits
    }

    /// Its version number, for apps from the control API.
    pub fn number(&self) -> Option<u32> {
        self.report.as_ref().map(|(_, n)| *n)
    }
}

/// What a hostname routes to: the app's stable version and, during a
/// rollout, a canary with its share of requests. Both are warm.
pub struct Deployment {
    /// The stable version.
    pub stable: Arc<App>,
    /// The canary, if a rollout is live here.
    pub canary: Option<Canary>,
    /// What the split hashes.
    pub affinity: AffinityKey,
}

/// A rollout's canary at this gateway.
pub struct Canary {
    /// The canary version.
    pub app: Arc<App>,
    /// Its share of requests.
    pub weight: Weight,
}

/// [`Affinity`], prepared for the hot path (a header name parsed once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AffinityKey {
    /// The client address.
    #[default]
    Client,
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(Box<str>),
}

impl From<&Affinity> for AffinityKey {
    fn from(a: &Affinity) -> AffinityKey {
        match a {
            Affinity::Client => AffinityKey::Client,
            Affinity::Header(name) => HeaderName::from_bytes(name.as_bytes())
                .map(AffinityKey::Header)
                .unwrap_or_default(),
            Affinity::Cookie(name) => AffinityKey::Cookie(name.as_str().into()),
        }
    }
}

impl Deployment {
    /// A deployment of one version, no canary.
    pub fn single(app: Arc<App>) -> Deployment {
        Deployment {
            stable: app,
            canary: None,
            affinity: AffinityKey::Client,
        }
    }

    /// The version that serves a request with `headers` from `peer`: the
    /// one its `gannet-version` header pins, if the deployment has it;
    /// else the canary when the affinity key's bucket falls under the
    /// canary's weight; else the stable version. Without a canary, the
    /// stable version at once. No lock, no allocation.
    pub fn pick(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        proxies: &TrustedProxies,
    ) -> &Arc<App> {
        let Some(canary) = &self.canary else {
            return &self.stable;
        };
        let versions = Versions {
            stable: self.stable.number(),
            canary: canary.app.number(),
            weight: canary.weight,
        };
        if goes_to_canary(headers, peer, proxies, &self.affinity, versions) {
            &canary.app
        } else {
            &self.stable
        }
    }
}

/// The two versions of a deployment with a canary, as the split sees them.
#[derive(Clone, Copy, Debug)]
pub struct Versions {
    /// The stable version's number (none for a routes file's app).
    pub stable: Option<u32>,
    /// The canary's.
    pub canary: Option<u32>,
    /// The canary's share.
    pub weight: Weight,
}

/// Whether a request goes to the canary: pinned to it by `gannet-version`
/// (a pin to the stable version keeps it there; a pin to any other version
/// is ignored), else when the bucket of its affinity key (the header or
/// cookie `affinity` names, else the client address) falls under the
/// canary's weight. No lock, no allocation.
pub fn goes_to_canary(
    headers: &HeaderMap,
    peer: SocketAddr,
    proxies: &TrustedProxies,
    affinity: &AffinityKey,
    versions: Versions,
) -> bool {
    if let Pin::Version(n) = parse_pin(headers.get(PIN_HEADER).map(|v| v.as_bytes())) {
        if versions.canary == Some(n) {
            return true;
        }
        if versions.stable == Some(n) {
            return false;
        }
    }
    let key_bucket = match affinity {
        AffinityKey::Client => None,
        AffinityKey::Header(name) => headers.get(name).map(|v| bucket(v.as_bytes())),
        AffinityKey::Cookie(name) => cookie(headers, name).map(bucket),
    };
    let key_bucket = key_bucket.unwrap_or_else(|| match proxies.client(headers, peer) {
        IpAddr::V4(a) => bucket(&a.octets()),
        IpAddr::V6(a) => bucket(&a.octets()),
    });
    picks_canary(key_bucket, versions.weight)
}

/// The value of cookie `name` in the request's `Cookie` headers, if any.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name.as_bytes())
                && let Some(v) = rest.strip_prefix(b"=")
            {
                return Some(v.trim_ascii());
            }
        }
    }
    None
}

/// Hostname → deployment, exact names first, then the most specific wildcard.
#[derive(Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Arc<Deployment>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Arc<Deployment>>,
    /// Every version served, stable and canary.
    apps: Vec<Arc<App>>,
    by_id: HashMap<AppId, Arc<Deployment>>,
}

impl RouteTable {
    /// Builds a table; `hosts` are lowercase names or `*.suffix` patterns.
    pub fn new(entries: Vec<(Arc<Deployment>, Vec<String>)>) -> Self {
        let mut table = RouteTable::default();
        for (deployment, hosts) in entries {
            for h in hosts {
                match h.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.insert(suffix.into(), deployment.clone()),
                    None => table.exact.insert(h.into_boxed_str(), deployment.clone()),
                };
            }
            table
                .by_id
                .insert(deployment.stable.id.clone(), deployment.clone());
            table.apps.push(deployment.stable.clone());
            if let Some(canary) = &deployment.canary {
                table.apps.push(canary.app.clone());
            }
        }
        table
    }

    /// The deployment serving `host` (already normalized: lowercase, no port).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Deployment>> {
        if let Some(app) = self.exact.get(host) {
            return Some(app);
        }
        // `a.b.example.com` tries `b.example.com`, then `example.com`, …
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(app) = self.wildcard.get(rest) {
                return Some(app);
            }
        }
        None
    }

    /// Every app version in the table (stable and canary).
    pub fn apps(&self) -> &[Arc<App>] {
        &self.apps
    }

    /// The stable version of the app with `id`, if any.
    pub fn app(&self, id: &AppId) -> Option<&Arc<App>> {
        self.by_id.get(id).map(|d| &d.stable)
    }

    /// The version labelled `version` of the app with `id`, stable or
    /// canary, if served.
    pub fn version(&self, id: &AppId, version: &str) -> Option<&Arc<App>> {
        let d = self.by_id.get(id)?;
        if d.stable.version == version {
            return Some(&d.stable);
        }
        d.canary
            .as_ref()
            .map(|c| &c.app)
            .filter(|a| a.version == version)
    }
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form)
/// or the `Host` header, without port or trailing dot, lowercased. Borrows
/// when the name is already lowercase, so the common case does not allocate.
pub fn request_host<B>(req: &http::Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
    let host = if let Some(v6) = raw.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        raw.split_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pins_and_keys() {
        let v = |w: u8| Versions {
            stable: Some(1),
            canary: Some(2),
            weight: Weight::new(w).unwrap(),
        };
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let none = TrustedProxies::default();
        let header = AffinityKey::from(&Affinity::Header("x-user".into()));
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, val) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    val.parse().unwrap(),
                );
            }
            h
        };
        // Pins: the canary at 0 %, the stable at 100 %; others ignored.
        assert!(goes_to_canary(
            &with(&[("gannet-version", "2")]),
            peer,
            &none,
            &header,
            v(0)
        ));
        assert!(!goes_to_canary(
            &with(&[("gannet-version", "1")]),
            peer,
            &none,
            &header,
            v(100)
        ));
        assert!(!goes_to_canary(
            &with(&[("gannet-version", "9")]),
            peer,
            &none,
            &header,
            v(0)
        ));
        assert!(goes_to_canary(
            &with(&[("gannet-version", "9")]),
            peer,
            &none,
            &header,
            v(100)
        ));
        // The split by header: about the weight's share of keys, and a key
        // that reached the canary stays there as the weight rises.
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let on = |w: u8| -> Vec<bool> {
            keys.iter()
                .map(|k| goes_to_canary(&with(&[("x-user", k)]), peer, &none, &header, v(w)))
                .collect()
        };
        let at10 = on(10);
        let at50 = on(50);
        let share = at10.iter().filter(|c| **c).count();
        assert!((140..=260).contains(&share), "{share} of 2000 at 10 %");
        assert!(
            at10.iter().zip(&at50).all(|(a, b)| !*a || *b),
            "a key went back to stable"
        );
        assert!(on(0).iter().all(|c| !c) && on(100).iter().all(|c| *c));
        // A cookie, among others.
        let cookie_key = AffinityKey::from(&Affinity::Cookie("sid".into()));
        let by_cookie = |h: &HeaderMap| goes_to_canary(h, peer, &none, &cookie_key, v(50));
        let direct = goes_to_canary(&with(&[("x-user", "abc")]), peer, &none, &header, v(50));
        assert_eq!(by_cookie(&with(&[("cookie", "a=1; sid=abc; b=2")])), direct);
        assert_eq!(
            by_cookie(&with(&[("cookie", "a=1"), ("cookie", "sid=abc")])),
            direct
        );
        assert_eq!(
            cookie(&with(&[("cookie", "sidx=1; sid=7")]), "sid"),
            Some(&b"7"[..])
        );
        assert_eq!(cookie(&with(&[("cookie", "a=1")]), "sid"), None);
        // Without the key: the client address, the same for every request.
        let addr = |h: &HeaderMap, peer| goes_to_canary(h, peer, &none, &header, v(50));
        let results: Vec<bool> = (0..200)
            .map(|i| {
                addr(
                    &HeaderMap::new(),
                    SocketAddr::new(
                        std::net::IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]),
                        1,
                    ),
                )
            })
            .collect();
        assert!(results.iter().any(|c| *c) && results.iter().any(|c| !c));
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let via = |client: &str| {
            goes_to_canary(
                &with(&[("x-forwarded-for", client)]),
                "10.1.1.1:1".parse().unwrap(),
                &trusted,
                &AffinityKey::Client,
                v(50),
            )
        };
        let direct = |client: &str| {
            goes_to_canary(
                &HeaderMap::new(),
                SocketAddr::new(client.parse().unwrap(), 1),
                &none,
                &AffinityKey::Client,
                v(50),
            )
        };
        for i in 0..50 {
            let client = format!("203.0.113.{i}");
            assert_eq!(via(&client), direct(&client), "{client}");
        }
    }

    #[test]
    fn host_normalization() {
        let req = |host: &str| {
            http::Request::builder()
                .uri("/")
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert_eq!(
            request_host(&req("Hello.LocalHost:8080")).unwrap(),
            "hello.localhost"
        );
        assert_eq!(request_host(&req("a.test.")).unwrap(), "a.test");
        assert_eq!(request_host(&req("[::1]:80")).unwrap(), "::1");
        let h2 = http::Request::builder()
            .uri("http://x.test:1/p")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).unwrap(), "x.test");
        let none = http::Request::builder().uri("/").body(()).unwrap();
        assert!(request_host(&none).is_none());
    }
}
