//! Outbound HTTP from guests: allowed only to hosts (and, when the entry
//! says so, schemes and ports) on the app's allowlist, never to private,
//! loopback or link-local addresses unless the operator allows it, and
//! within the operator's [`OutboundLimits`]: requests in flight at once and
//! in total per instance, and a total time per request. The address check
//! runs on the *resolved* IP, right before connecting, so a public name
//! pointing at 127.0.0.1 is refused too.
//!
//! Refusals are counted per reason for the whole process
//! ([`outbound_refusals`]).
//!
//! - [`allowlist`]: entry syntax, validation and matching.
//! - [`ip`]: which addresses are public.
//! - [`limits`]: the per-instance caps.
//! - [`refusals`]: the counters.
//! - `dns`, `client`: bounded resolution and the HTTP/1.1 client.

pub mod allowlist;
mod client;
mod dns;
pub mod ip;
pub mod limits;
pub mod refusals;

pub use allowlist::{AllowEntry, EntryError, Scheme, validate_entries};
pub use dns::MAX_CONCURRENT_LOOKUPS;
pub use ip::is_public;
pub use limits::OutboundLimits;
pub use refusals::{Refusal, outbound_refusals};

use client::{Target, WorkerFuture};
use limits::Caps;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Who a guest may call, and how much.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Allowlist entries (see [`allowlist`]): `example.com`, `*.example.com`,
    /// `*`, `https://example.com`, `http://example.com:8080`. Empty: no
    /// outbound requests at all. Entries that do not parse match nothing.
    pub allowed_hosts: Vec<String>,
    /// Whether private, loopback and link-local addresses may be reached
    /// (an operator setting, for tests and private networks).
    pub allow_private_ips: bool,
    /// Caps on each instance's outbound requests (operator settings).
    pub limits: OutboundLimits,
}

impl OutboundPolicy {
    /// Whether a request to `host` over `scheme` on `port` matches the
    /// allowlist.
    pub fn allows(&self, host: &str, scheme: Scheme, port: u16) -> bool {
        let host = allowlist::normalize_host(host);
        self.allowed_hosts
            .iter()
            .any(|entry| match entry.parse::<AllowEntry>() {
                Ok(e) => e.matches(&host, scheme, port),
                Err(e) => {
                    tracing::debug!(error = %e, "invalid outbound entry ignored");
                    false
                }
            })
    }

    /// Whether `host` matches the allowlist on some scheme and port: entries
    /// without a scheme, or with one on its default port.
    pub fn allows_host(&self, host: &str) -> bool {
        [Scheme::Http, Scheme::Https]
            .into_iter()
            .any(|s| self.allows(host, s, s.default_port()))
    }

    /// Whether connecting to `ip` is allowed.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allow_private_ips || is_public(ip)
    }
}

/// The wasi:http hooks of one store (one instance): outbound requests go
/// through the policy and the instance's caps.
pub struct OutboundHooks {
    policy: Arc<OutboundPolicy>,
    caps: Caps,
}

impl OutboundHooks {
    /// Hooks enforcing `policy`, with fresh caps.
    pub fn new(policy: Arc<OutboundPolicy>) -> Self {
        let caps = Caps::new(&policy.limits);
        OutboundHooks { policy, caps }
    }

    /// Checks the allowlist and the caps, before anything is spawned or
    /// connected: a refused request costs nothing but its error.
    fn admit(
        &mut self,
        request: &http::Request<WasiBody>,
    ) -> Result<(Target, tokio::sync::OwnedSemaphorePermit), Error> {
        let uri = request.uri();
        let host = uri
            .host()
            .ok_or(Error::HttpRequestUriInvalid)?
            .trim_matches(['[', ']'])
            .to_string();
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            _ => return Err(Error::HttpProtocolError),
        };
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        if !self.policy.allows(&host, scheme, port) {
            refusals::count(Refusal::DeniedHost);
            tracing::debug!(%host, port, "outbound request denied by allowlist");
            return Err(Error::HttpRequestDenied);
        }
        let permit = self.caps.admit().map_err(|reason| {
            refusals::count(reason);
            Error::ConnectionLimitReached
        })?;
        Ok((Target { host, scheme, port }, permit))
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, WorkerFuture), Error>> + Send>
    {
        let admitted = self.admit(&request);
        let policy = self.policy.clone();
        let deadline = deadline_after(policy.limits.timeout);
        Box::new(async move {
            let (target, permit) = admitted?;
            client::send(&policy, target, request, options, permit, deadline).await
        })
    }
}

/// `timeout` from now (a year, if that overflows).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_matches_host_scheme_and_port() {
        let p = OutboundPolicy {
            allowed_hosts: vec![
                "api.example.com".into(),
                "*.cdn.net".into(),
                "https://pay.example.com".into(),
                "http://127.0.0.1:8080".into(),
                "ftp://broken".into(),
            ],
            ..OutboundPolicy::default()
        };
        assert!(p.allows("API.example.com.", Scheme::Http, 1234));
        assert!(p.allows("a.cdn.net", Scheme::Https, 443));
        assert!(p.allows("pay.example.com", Scheme::Https, 443));
        assert!(!p.allows("pay.example.com", Scheme::Http, 80));
        assert!(!p.allows("pay.example.com", Scheme::Https, 8443));
        assert!(p.allows("127.0.0.1", Scheme::Http, 8080));
        assert!(!p.allows("127.0.0.1", Scheme::Http, 8081));
        assert!(!p.allows("broken", Scheme::Http, 80));
        assert!(p.allows_host("pay.example.com"));
        assert!(!p.allows_host("example.com"));
        assert!(!OutboundPolicy::default().allows_host("anything"));
    }

    #[test]
    fn private_addresses_need_the_operator() {
        let p = OutboundPolicy::default();
        assert!(!p.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(!p.allows_ip("64:ff9b::a00:1".parse().unwrap()));
        assert!(p.allows_ip("93.184.216.34".parse().unwrap()));
        let open = OutboundPolicy {
            allow_private_ips: true,
            ..OutboundPolicy::default()
        };
        assert!(open.allows_ip("127.0.0.1".parse().unwrap()));
    }

    fn request(uri: &str) -> http::Request<WasiBody> {
        use http_body_util::{BodyExt, Empty};
        let body: WasiBody = Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::builder().uri(uri).body(body).unwrap()
    }

    #[test]
    fn hooks_refuse_past_the_caps_and_off_the_allowlist() {
        let before = outbound_refusals();
        let policy = Arc::new(OutboundPolicy {
            allowed_hosts: vec!["http://up.test:8080".into()],
            allow_private_ips: false,
            limits: OutboundLimits {
                max_concurrent: 1,
                max_per_request: 2,
                timeout: Duration::from_secs(1),
            },
        });
        let mut hooks = OutboundHooks::new(policy);
        assert!(matches!(
            hooks.admit(&request("http://up.test:9090/")),
            Err(Error::HttpRequestDenied)
        ));
        assert!(matches!(
            hooks.admit(&request("https://up.test:8080/")),
            Err(Error::HttpRequestDenied)
        ));
        let (target, first) = hooks.admit(&request("http://UP.test:8080/x")).unwrap();
        assert!(target.host.eq_ignore_ascii_case("up.test") && target.port == 8080);
        assert!(matches!(
            hooks.admit(&request("http://up.test:8080/")),
            Err(Error::ConnectionLimitReached)
        ));
        drop(first);
        let second = hooks.admit(&request("http://up.test:8080/"));
        assert!(second.is_ok());
        drop(second);
        assert!(matches!(
            hooks.admit(&request("http://up.test:8080/")),
            Err(Error::ConnectionLimitReached)
        ));
        let after = outbound_refusals();
        let rose = |i: usize| after[i].1 > before[i].1;
        assert!(rose(0) && rose(1) && rose(2), "{before:?} → {after:?}");
    }
}
