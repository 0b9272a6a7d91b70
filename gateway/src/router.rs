//! The routing table: `Host` → app. Built whole from a routes file, then
//! published behind an atomic pointer ([`arc_swap::ArcSwap`]): requests load
//! the current table without taking a lock, and a reload swaps in a new
//! table while requests already running keep the one they loaded.

use crate::metrics::AppMetrics;
use gannet_model::{AppId, ResolvedLimits, Sha256Digest};
use gannet_runtime::InstanceSettings;
use gannet_runtime::fair::AppShare;
use std::collections::HashMap;
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
}

/// Hostname → app, exact names first, then the most specific wildcard.
#[derive(Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Arc<App>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Arc<App>>,
    apps: Vec<Arc<App>>,
    by_id: HashMap<AppId, Arc<App>>,
}

impl RouteTable {
    /// Builds a table; `hosts` are lowercase names or `*.suffix` patterns.
    pub fn new(entries: Vec<(Arc<App>, Vec<String>)>) -> Self {
        let mut table = RouteTable::default();
        for (app, hosts) in entries {
            for h in hosts {
                match h.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.insert(suffix.into(), app.clone()),
                    None => table.exact.insert(h.into_boxed_str(), app.clone()),
                };
            }
            table.by_id.insert(app.id.clone(), app.clone());
            table.apps.push(app);
        }
        table
    }

    /// The app serving `host` (already normalized: lowercase, no port).
    pub fn lookup(&self, host: &str) -> Option<&Arc<App>> {
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

    /// Every app in the table.
    pub fn apps(&self) -> &[Arc<App>] {
        &self.apps
    }

    /// The app with `id`, if any.
    pub fn app(&self, id: &AppId) -> Option<&Arc<App>> {
        self.by_id.get(id)
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
