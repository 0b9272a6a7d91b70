//! Outbound HTTP from guests: allowed only to hosts on the app's allowlist,
//! and never to private, loopback or link-local addresses unless the operator
//! allows it. The address check runs on the *resolved* IP, right before
//! connecting, so a public name pointing at 127.0.0.1 is refused too.

use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who a guest may call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Host patterns: `example.com`, `*.example.com` (subdomains only) or `*`.
    /// Empty: no outbound requests at all.
    pub allowed_hosts: Vec<String>,
    /// Whether private, loopback and link-local addresses may be reached
    /// (an operator setting, for tests and private networks).
    pub allow_private_ips: bool,
}

impl OutboundPolicy {
    /// Whether `host` matches the allowlist.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            if pattern == "*" {
                true
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            } else {
                host == pattern
            }
        })
    }

    /// Whether connecting to `ip` is allowed.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allow_private_ips || is_public(ip)
    }
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared
                || (o[0] == 198 && (o[1] & 0xfe) == 18)) // 198.18/15 benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// The wasi:http hooks of one store: outbound requests go through the policy.
pub struct OutboundHooks {
    policy: Arc<OutboundPolicy>,
}

impl OutboundHooks {
    /// Hooks enforcing `policy`.
    pub fn new(policy: Arc<OutboundPolicy>) -> Self {
        OutboundHooks { policy }
    }
}

type WorkerFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, WorkerFuture), Error>> + Send>
    {
        let policy = self.policy.clone();
        Box::new(async move { send(&policy, request, options).await })
    }
}

/// The client TLS configuration (webpki roots, ring), built once.
fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| tracing::error!(error = %e, "outbound TLS unavailable"))
                .ok()
        })
        .clone()
}

async fn resolve(host: &str, port: u16, policy: &OutboundPolicy) -> Result<SocketAddr, Error> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Error::DnsError {
                rcode: Some("lookup failed".into()),
                info_code: None,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    addrs
        .into_iter()
        .find(|a| policy.allows_ip(a.ip()))
        .ok_or(Error::DestinationIpProhibited)
}

async fn send(
    policy: &OutboundPolicy,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, WorkerFuture), Error> {
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_matches(['[', ']'])
        .to_string();
    let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if !policy.allows_host(&host) {
        tracing::debug!(%host, "outbound request denied by allowlist");
        return Err(Error::HttpRequestDenied);
    }
    let addr = resolve(&host, port, policy).await?;
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(|_| Error::ConnectionRefused)?;

    // Origin-form request target: the authority travels in the Host header.
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let (response, conn) = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| Error::TlsProtocolError)?;
        let stream = tokio::time::timeout(
            connect_timeout,
            tokio_rustls::TlsConnector::from(tls_config().ok_or(Error::TlsProtocolError)?)
                .connect(name, tcp),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(|_| Error::TlsProtocolError)?;
        exchange(
            TokioIo::new(stream),
            request,
            connect_timeout,
            first_byte_timeout,
        )
        .await?
    } else {
        exchange(
            TokioIo::new(tcp),
            request,
            connect_timeout,
            first_byte_timeout,
        )
        .await?
    };
    Ok((response, conn))
}

async fn exchange<IO>(
    io: IO,
    request: http::Request<WasiBody>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> Result<(http::Response<WasiBody>, WorkerFuture), Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake::<IO, WasiBody>(io),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::from)?;
    // The connection is driven by its own task; the worker future handed to
    // wasi:http reports how it ended.
    let driver = tokio::spawn(conn);
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    let worker = async move {
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((response, Box::new(worker)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_patterns() {
        let p = OutboundPolicy {
            allowed_hosts: vec!["api.example.com".into(), "*.cdn.net".into()],
            allow_private_ips: false,
        };
        assert!(p.allows_host("api.example.com"));
        assert!(p.allows_host("API.example.com."));
        assert!(!p.allows_host("example.com"));
        assert!(!p.allows_host("evil-api.example.com"));
        assert!(p.allows_host("a.cdn.net"));
        assert!(!p.allows_host("cdn.net"));
        assert!(!p.allows_host("xcdn.net"));
        assert!(!OutboundPolicy::default().allows_host("anything"));
    }

    #[test]
    fn private_addresses_are_refused() {
        let p = OutboundPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            assert!(!p.allows_ip(ip.parse().unwrap()), "{ip} should be refused");
        }
        assert!(p.allows_ip("93.184.216.34".parse().unwrap()));
        let open = OutboundPolicy {
            allow_private_ips: true,
            ..OutboundPolicy::default()
        };
        assert!(open.allows_ip("127.0.0.1".parse().unwrap()));
    }
}
