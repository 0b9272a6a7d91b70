//! The checks that prove a tenant controls a hostname: a DNS TXT record at
//! [`dns_record_name`] or the token served over plain HTTP at
//! [`http_path`], both holding the hostname's token.
//!
//! One [`Checker`] holds one resolver (hickory, without a cache: a tenant
//! who just added the record must not wait out a negative TTL) and one
//! HTTP client (hyper, plain HTTP, no redirects, no idle connections).
//! The HTTP check connects only to globally routable addresses unless
//! [`CheckConfig::allow_private_addresses`] says otherwise, so that the
//! control API cannot be made to probe its own network.
//!
//! Failures come back as sentences a tenant can act on; nothing a remote
//! party sent is echoed beyond 64 bytes, and never with control
//! characters.
//!
//! # Testing against a real DNS server
//!
//! [pebble-challtestsrv](https://github.com/letsencrypt/pebble) is a DNS
//! server whose records are set over HTTP; it answers every A query with
//! 127.0.0.1 (and AAAA with ::1), so the HTTP check needs
//! `allow_private_addresses` there:
//!
//! ```text
//! pebble-challtestsrv -dns01 127.0.0.1:18053 -management 127.0.0.1:18055 \
//!     -http01 "" -https01 "" -tlsalpn01 ""
//! curl -d '{"host":"_gannet-challenge.x.test.","value":"tok"}' \
//!     http://127.0.0.1:18055/set-txt
//! ```
//!
//! then `CheckConfig { dns_server: Some("127.0.0.1:18053".parse()?), .. }`
//! and `checker.check("x.test", "tok", false)` gives `Ok(Proof::Dns)`.

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The label a TXT proof goes under.
pub const DNS_LABEL: &str = "_gannet-challenge";
/// Where HTTP proofs are served: `HTTP_PREFIX` + token.
pub const HTTP_PREFIX: &str = "/.well-known/gannet-challenge/";
/// The most of an HTTP answer's body that is read.
const MAX_BODY: usize = 1024;
/// The most of anything a remote party sent that is echoed in a reason.
const MAX_ECHO: usize = 64;
/// The most addresses listed in a reason.
const MAX_LISTED: usize = 4;
/// The `User-Agent` of the HTTP check.
const USER_AGENT: &str = "gannet-ownership-check";

/// Where and how ownership is checked (operator settings).
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// The DNS server to ask (`--verify-dns-server 127.0.0.1:8053`); the
    /// system's (/etc/resolv.conf) when None.
    pub dns_server: Option<SocketAddr>,
    /// The port the HTTP token is fetched on (80).
    pub http_port: u16,
    /// Whether addresses that are not globally routable (loopback,
    /// private, link-local, CGNAT, unique-local, unspecified, multicast,
    /// documentation…) may be connected to for the HTTP check. Off by
    /// default (the control API must not be made to probe its own
    /// network); tests turn it on.
    pub allow_private_addresses: bool,
    /// Per check (DNS query, HTTP fetch) timeout (5 s).
    pub timeout: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            dns_server: None,
            http_port: 80,
            allow_private_addresses: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The DNS name a TXT proof goes at: `_gannet-challenge.<hostname>`.
pub fn dns_record_name(hostname: &str) -> String {
    format!("{DNS_LABEL}.{}", hostname.trim_end_matches('.'))
}

/// The path an HTTP proof is fetched at:
/// `/.well-known/gannet-challenge/<token>`.
pub fn http_path(token: &str) -> String {
    format!("{HTTP_PREFIX}{token}")
}

/// How control was proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// A TXT record at [`dns_record_name`] holds the token.
    Dns,
    /// The hostname serves the token at [`http_path`].
    Http,
}

impl Proof {
    /// `"dns"` or `"http"`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::Dns => "dns",
            Proof::Http => "http",
        }
    }
}

/// Why a [`Checker`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckSetupError {
    /// The system's DNS configuration (/etc/resolv.conf) does not read.
    #[error("reading the system's DNS configuration (/etc/resolv.conf): {0}")]
    SystemDns(String),
    /// The resolver refused its configuration.
    #[error("setting up the DNS resolver: {0}")]
    Resolver(String),
}

/// The checker: one resolver, one HTTP client, reused.
pub struct Checker {
    config: CheckConfig,
    resolver: TokioResolver,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker asking `config.dns_server` (or the system's resolvers).
    pub fn new(config: CheckConfig) -> Result<Checker, CheckSetupError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.dns_server {
            Some(server) => {
                let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                for connection in name_server.connections.iter_mut() {
                    connection.port = server.port();
                }
                let resolver_config =
                    ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
                TokioResolver::builder_with_config(resolver_config, provider)
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| CheckSetupError::SystemDns(e.to_string()))?,
        };
        let options = builder.options_mut();
        // Two tries fit in the check's timeout (a lost UDP packet is
        // retried); the outer timeout bounds the whole lookup anyway.
        options.timeout = (config.timeout / 2).max(Duration::from_millis(100));
        options.attempts = 2;
        // Nothing cached: a tenant who just added the record (after a
        // failed check) must be believed at once, not after the
        // negative TTL.
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.cache_size = 16;
        // The control API's /etc/hosts says nothing about who controls a
        // tenant's name.
        options.use_hosts_file = ResolveHosts::Never;
        // IPv4 first: not every control API host routes IPv6.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder
            .build()
            .map_err(|e| CheckSetupError::Resolver(e.to_string()))?;

        let mut connector = HttpConnector::new();
        connector.enforce_http(true);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .retry_canceled_requests(false)
            .build(connector);
        Ok(Checker {
            config,
            resolver,
            http,
        })
    }

    /// The settings this checker runs with.
    pub fn config(&self) -> &CheckConfig {
        &self.config
    }

    /// Tries DNS first, then HTTP (`try_http` false skips HTTP: the
    /// gateways have not all applied the token yet). `Ok(proof)` if either
    /// shows `token`; `Err(reasons)` says, for each method tried, what was
    /// found, e.g. "DNS: no TXT record at _gannet-challenge.shop.example.com
    /// (add one with the value <token>); HTTP:
    /// http://shop.example.com/.well-known/gannet-challenge/<token>
    /// answered 404 Not Found".
    pub async fn check(
        &self,
        hostname: &str,
        token: &str,
        try_http: bool,
    ) -> Result<Proof, String> {
        let dns = match self.check_dns(hostname, token).await {
            Ok(proof) => return Ok(proof),
            Err(why) => why,
        };
        tracing::debug!(hostname = %sanitize(hostname), reason = %dns, "DNS proof not found");
        if !try_http {
            return Err(format!("DNS: {dns}"));
        }
        let http = match self.check_http(hostname, token).await {
            Ok(proof) => return Ok(proof),
            Err(why) => why,
        };
        tracing::debug!(hostname = %sanitize(hostname), reason = %http, "HTTP proof not found");
        Err(format!("DNS: {dns}; HTTP: {http}"))
    }

    /// Whether the HTTP check may connect to `ip`.
    fn address_allowed(&self, ip: IpAddr) -> bool {
        self.config.allow_private_addresses || is_global(ip)
    }

    /// The TXT records at `_gannet-challenge.<hostname>.`.
    async fn check_dns(&self, hostname: &str, token: &str) -> Result<Proof, String> {
        let record_name = dns_record_name(hostname);
        let shown = sanitize(&record_name);
        let shown_token = sanitize(token);
        let fqdn = format!("{record_name}.");
        let lookup = match tokio::time::timeout(
            self.config.timeout,
            self.resolver.txt_lookup(fqdn.as_str()),
        )
        .await
        {
            Err(_) | Ok(Err(NetError::Timeout)) => {
                return Err(format!(
                    "no answer from DNS for {shown} within {:?}",
                    self.config.timeout
                ));
            }
            Ok(Err(e)) if e.is_nx_domain() => {
                return Err(format!(
                    "no TXT record at {shown}: the name does not exist (add a TXT record there with the value {shown_token})"
                ));
            }
            Ok(Err(e)) if e.is_no_records_found() => {
                return Err(format!(
                    "no TXT record at {shown} (add one with the value {shown_token})"
                ));
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "looking up TXT records at {shown} failed: {}",
                    sanitize(&e.to_string())
                ));
            }
            Ok(Ok(lookup)) => lookup,
        };
        let mut found: Vec<Vec<u8>> = Vec::new();
        for record in lookup.answers() {
            if let RData::TXT(txt) = &record.data {
                let value = txt_value(&txt.txt_data);
                if txt_is_token(&value, token) {
                    return Ok(Proof::Dns);
                }
                found.push(value);
            }
        }
        match found.first() {
            None => Err(format!(
                "no TXT record at {shown} (add one with the value {shown_token})"
            )),
            Some(first) => Err(format!(
                "{} at {shown}, but none holds the token (found \"{}\"; expected {shown_token})",
                if found.len() == 1 {
                    "1 TXT record".to_string()
                } else {
                    format!("{} TXT records", found.len())
                },
                excerpt(first.trim_ascii()),
            )),
        }
    }

    /// Resolves `hostname` and fetches the token from its first allowed
    /// address.
    async fn check_http(&self, hostname: &str, token: &str) -> Result<Proof, String> {
        let host = hostname.trim_end_matches('.');
        let shown = sanitize(host);
        let fqdn = format!("{host}.");
        let addresses: Vec<IpAddr> =
            match tokio::time::timeout(self.config.timeout, self.resolver.lookup_ip(fqdn.as_str()))
                .await
            {
                Err(_) | Ok(Err(NetError::Timeout)) => {
                    return Err(format!(
                        "no answer from DNS for {shown}'s address within {:?}",
                        self.config.timeout
                    ));
                }
                Ok(Err(e)) if e.is_nx_domain() => {
                    return Err(format!("{shown} does not exist in DNS"));
                }
                Ok(Err(e)) if e.is_no_records_found() => {
                    return Err(format!("{shown} has no A or AAAA record"));
                }
                Ok(Err(e)) => {
                    return Err(format!(
                        "resolving {shown} failed: {}",
                        sanitize(&e.to_string())
                    ));
                }
                Ok(Ok(lookup)) => lookup.iter().collect(),
            };
        if addresses.is_empty() {
            return Err(format!("{shown} has no A or AAAA record"));
        }
        let Some(ip) = addresses
            .iter()
            .copied()
            .find(|ip| self.address_allowed(*ip))
        else {
            return Err(not_public(&shown, &addresses));
        };
        self.check_http_at(SocketAddr::new(ip, self.config.http_port), host, token)
            .await
    }

    /// Fetches `http://<hostname>[:port]/.well-known/gannet-challenge/<token>`
    /// from `addr` (refusing an address that is not public unless
    /// [`CheckConfig::allow_private_addresses`]). The reason on failure is
    /// without the "HTTP: " that [`Checker::check`] puts before it.
    pub(crate) async fn check_http_at(
        &self,
        addr: SocketAddr,
        hostname: &str,
        token: &str,
    ) -> Result<Proof, String> {
        let host = hostname.trim_end_matches('.');
        if !self.address_allowed(addr.ip()) {
            return Err(not_public(&sanitize(host), &[addr.ip()]));
        }
        let authority = if addr.port() == 80 {
            host.to_string()
        } else {
            format!("{host}:{}", addr.port())
        };
        let path = http_path(token);
        let shown_url = sanitize(&format!("http://{authority}{path}"));
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Empty::<Bytes>::new())
            .map_err(|e| {
                format!(
                    "{shown_url} cannot be requested: {}",
                    sanitize(&e.to_string())
                )
            })?;
        match tokio::time::timeout(self.config.timeout, self.fetch(request, addr, token)).await {
            Err(_) => Err(format!(
                "{shown_url} did not answer within {:?} (at {addr})",
                self.config.timeout
            )),
            Ok(Ok(())) => Ok(Proof::Http),
            Ok(Err(why)) => Err(format!("{shown_url} {why}")),
        }
    }

    /// Sends `request`; `Ok` if the answer is 200 with the token as its
    /// body. The error completes a sentence that starts with the URL.
    async fn fetch(
        &self,
        request: http::Request<Empty<Bytes>>,
        addr: SocketAddr,
        token: &str,
    ) -> Result<(), String> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| describe_client_error(&e, addr))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(if status.is_redirection() {
                format!(
                    "answered {status} (redirects are not followed: serve the token at this very URL, over plain HTTP)"
                )
            } else {
                format!("answered {status}")
            });
        }
        let mut body = response.into_body();
        let mut read: Vec<u8> = Vec::new();
        let mut too_long = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                format!(
                    "answered 200 but its body could not be read: {}",
                    sanitize(&e.to_string())
                )
            })?;
            if let Ok(data) = frame.into_data() {
                let room = MAX_BODY - read.len();
                if data.len() > room {
                    read.extend_from_slice(&data[..room]);
                    too_long = true;
                    break;
                }
                read.extend_from_slice(&data);
            }
        }
        // Dropping `body` unread closes the connection (no idle pool).
        drop(body);
        let trimmed = read.trim_ascii();
        if !too_long && txt_is_token(trimmed, token) {
            return Ok(());
        }
        Err(if too_long {
            format!(
                "answered 200 with a body over {MAX_BODY} bytes, not the token (it starts with \"{}\")",
                excerpt(trimmed)
            )
        } else if trimmed.is_empty() {
            "answered 200 with an empty body, not the token".to_string()
        } else {
            format!(
                "answered 200 but the body does not match the token (it is \"{}\")",
                excerpt(trimmed)
            )
        })
    }
}

/// A TXT record's value: its character-strings concatenated (long values
/// are split into strings of at most 255 bytes).
fn txt_value(parts: &[Box<[u8]>]) -> Vec<u8> {
    let mut value = Vec::new();
    for part in parts {
        value.extend_from_slice(part);
    }
    value
}

/// Whether `value` (a TXT value or an HTTP body) is exactly `token`, but
/// for surrounding whitespace.
fn txt_is_token(value: &[u8], token: &str) -> bool {
    let token = token.trim();
    !token.is_empty() && value.trim_ascii() == token.as_bytes()
}

/// "shop.example.com resolves to 10.0.0.5, which is not a public address".
fn not_public(shown_host: &str, addresses: &[IpAddr]) -> String {
    let listed: Vec<String> = addresses
        .iter()
        .take(MAX_LISTED)
        .map(|ip| ip.to_string())
        .collect();
    let more = if addresses.len() > MAX_LISTED {
        ", …"
    } else {
        ""
    };
    if addresses.len() == 1 {
        format!(
            "{shown_host} resolves to {}, which is not a public address",
            listed.join(", ")
        )
    } else {
        format!(
            "{shown_host} resolves to {}{more}, none of which is a public address",
            listed.join(", ")
        )
    }
}

/// A client error in words: what happened when connecting to `addr`.
fn describe_client_error(error: &(dyn std::error::Error + 'static), addr: SocketAddr) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut deepest = error.to_string();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("could not be fetched: {addr} refused the connection")
                }
                std::io::ErrorKind::TimedOut => {
                    format!("could not be fetched: connecting to {addr} timed out")
                }
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    format!("could not be fetched: {addr} closed the connection")
                }
                _ => format!(
                    "could not be fetched from {addr}: {}",
                    sanitize(&io.to_string())
                ),
            };
        }
        deepest = e.to_string();
        cause = e.source();
    }
    format!("could not be fetched from {addr}: {}", sanitize(&deepest))
}

/// `text` without control characters (nor bidirectional overrides and
/// zero-width characters, which disguise text).
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(
                    c,
                    '\u{200B}'..='\u{200F}'
                        | '\u{202A}'..='\u{202E}'
                        | '\u{2066}'..='\u{2069}'
                        | '\u{FEFF}'
                )
        })
        .collect()
}

/// At most [`MAX_ECHO`] bytes of what a remote party sent, sanitized.
fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_ECHO)];
    let mut shown = sanitize(&String::from_utf8_lossy(cut));
    if bytes.len() > MAX_ECHO {
        shown.push('…');
    }
    shown
}

/// Whether `ip` is globally routable (std's `IpAddr::is_global` is
/// unstable): not loopback, private, shared (CGNAT), link-local,
/// unspecified, multicast, broadcast, reserved, benchmarking,
/// documentation, unique-local, discard-only or IETF protocol
/// assignments. IPv4-mapped and NAT64 (64:ff9b::/96) IPv6 addresses are
/// judged by the IPv4 address they carry.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0/8
        || a == 10 // private
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT), 100.64.0.0/10
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (b & 0xf0) == 16) // private, 172.16.0.0/12
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation (TEST-NET-1)
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168) // private
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || (a == 198 && b == 51 && c == 100) // documentation (TEST-NET-2)
        || (a == 203 && b == 0 && c == 113) // documentation (TEST-NET-3)
        || a >= 224) // multicast, reserved, broadcast
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    // NAT64 well-known prefix: routes to the IPv4 address it carries.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [_, _, _, _, _, _, _, _, _, _, _, _, a, b, c, d] = ip.octets();
        return is_global_v4(Ipv4Addr::new(a, b, c, d));
    }
    // Only global unicast (2000::/3) is routable; that excludes
    // unspecified, loopback, IPv4-compatible, discard-only (100::/64),
    // NAT64 local-use, unique-local (fc00::/7), link-local (fe80::/10),
    // site-local and multicast (ff00::/8).
    if (s[0] & 0xe000) != 0x2000 {
        return false;
    }
    // IETF protocol assignments (2001::/23) and documentation
    // (2001:db8::/32).
    if s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8) {
        return false;
    }
    // Documentation, 3fff::/20.
    !(s[0] == 0x3fff && (s[1] & 0xf000) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    fn checker(allow_private_addresses: bool, timeout: Duration) -> Checker {
        Checker::new(CheckConfig {
            // Never asked: these tests call `check_http_at` directly.
            dns_server: Some("127.0.0.1:9".parse().unwrap()),
            http_port: 80,
            allow_private_addresses,
            timeout,
        })
        .unwrap()
    }

    /// A server on 127.0.0.1 answering every request with `response`;
    /// each request's head goes to the receiver.
    async fn serve(response: Vec<u8>) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (response, heads) = (response.clone(), heads.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    // Fails once the client hangs up (the huge body).
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (addr, rx)
    }

    fn response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn global_addresses() {
        let table: &[(&str, bool)] = &[
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.1", true),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.128.0.1", true),
            ("169.254.169.254", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("192.0.2.1", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("198.18.0.1", false),
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("::1", false),
            ("::", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("2001:db8::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::a00:1", false),
            ("64:ff9b::808:808", true),
            ("2001:4860:4860::8888", true),
            ("2606:4700::1111", true),
        ];
        for (ip, global) in table {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(is_global(parsed), *global, "{ip}");
        }
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(
            dns_record_name("shop.example.com"),
            "_gannet-challenge.shop.example.com"
        );
        assert_eq!(
            dns_record_name("shop.example.com."),
            "_gannet-challenge.shop.example.com"
        );
        assert_eq!(http_path("abc123"), "/.well-known/gannet-challenge/abc123");
        assert!(http_path("t").starts_with(HTTP_PREFIX));
        assert_eq!(Proof::Dns.as_str(), "dns");
        assert_eq!(Proof::Http.as_str(), "http");
    }

    #[test]
    fn txt_strings_are_concatenated() {
        let parts: Vec<Box<[u8]>> = vec![
            b"abc".to_vec().into_boxed_slice(),
            b"def".to_vec().into_boxed_slice(),
        ];
        let value = txt_value(&parts);
        assert!(txt_is_token(&value, "abcdef"));
        assert!(txt_is_token(b" abcdef\n", "abcdef"));
        assert!(!txt_is_token(&value, "abc"));
        assert!(!txt_is_token(b"", ""));
    }

    #[test]
    fn echoes_are_short_and_clean() {
        assert_eq!(sanitize("a\u{1b}[31mb\r\nc\u{202e}d"), "a[31mbcd");
        let long = vec![b'x'; 1000];
        let shown = excerpt(&long);
        assert!(shown.starts_with(&"x".repeat(MAX_ECHO)));
        assert_eq!(shown.trim_end_matches('…').len(), MAX_ECHO);
    }

    #[tokio::test]
    async fn http_right_token_proves() {
        let (addr, mut heads) = serve(response("200 OK", b"tok123\n")).await;
        let checker = checker(true, Duration::from_secs(5));
        let proof = checker.check_http_at(addr, "shop.test", "tok123").await;
        assert_eq!(proof, Ok(Proof::Http));
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("GET /.well-known/gannet-challenge/tok123 HTTP/1.1\r\n"),
            "{head}"
        );
        let host = format!("host: shop.test:{}\r\n", addr.port());
        assert!(head.to_ascii_lowercase().contains(&host), "{head}");
    }

    #[tokio::test]
    async fn http_wrong_body_is_a_mismatch() {
        let (addr, _heads) = serve(response("200 OK", b"other\x1b[2J")).await;
        let checker = checker(true, Duration::from_secs(5));
        let why = checker
            .check_http_at(addr, "shop.test", "tok123")
            .await
            .unwrap_err();
        assert!(why.contains("does not match"), "{why}");
        assert!(why.contains("other"), "{why}");
        assert!(!why.contains('\u{1b}'), "{why}");
        assert!(
            why.contains("/.well-known/gannet-challenge/tok123"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn http_404_is_reported() {
        let (addr, _heads) = serve(response("404 Not Found", b"")).await;
        let checker = checker(true, Duration::from_secs(5));
        let why = checker
            .check_http_at(addr, "shop.test", "tok123")
            .await
            .unwrap_err();
        assert!(why.contains("404"), "{why}");
    }

    #[tokio::test]
    async fn http_redirects_are_not_followed() {
        let mut r = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n".to_vec();
        r.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
        let (addr, _heads) = serve(r).await;
        let checker = checker(true, Duration::from_secs(5));
        let why = checker
            .check_http_at(addr, "shop.test", "tok123")
            .await
            .unwrap_err();
        assert!(why.contains("302"), "{why}");
        assert!(why.contains("redirects are not followed"), "{why}");
    }

    #[tokio::test]
    async fn http_huge_body_is_not_read_whole() {
        let body = vec![b'a'; 10 * 1024 * 1024];
        let (addr, _heads) = serve(response("200 OK", &body)).await;
        let timeout = Duration::from_secs(5);
        let checker = checker(true, timeout);
        let started = std::time::Instant::now();
        let why = tokio::time::timeout(
            timeout + Duration::from_secs(2),
            checker.check_http_at(addr, "shop.test", "tok123"),
        )
        .await
        .expect("the check returns within its timeout")
        .unwrap_err();
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        assert!(why.contains("over 1024 bytes"), "{why}");
        assert!(why.len() < 400, "{why}");
    }

    #[tokio::test]
    async fn http_connection_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let checker = checker(true, Duration::from_secs(5));
        let why = checker
            .check_http_at(addr, "shop.test", "tok123")
            .await
            .unwrap_err();
        assert!(why.contains("refused"), "{why}");
    }

    #[tokio::test]
    async fn http_silent_server_times_out() {
        // Accepts, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let checker = checker(true, Duration::from_millis(300));
        let why = checker
            .check_http_at(addr, "shop.test", "tok123")
            .await
            .unwrap_err();
        assert!(why.contains("did not answer within"), "{why}");
        held.abort();
    }

    #[tokio::test]
    async fn http_private_addresses_are_refused_by_default() {
        let (addr, mut heads) = serve(response("200 OK", b"tok123")).await;
        let checker = checker(false, Duration::from_secs(5));
        let why = checker
            .check_http_at(addr, "shop.test", "tok123")
            .await
            .unwrap_err();
        assert!(
            why.contains("shop.test resolves to 127.0.0.1, which is not a public address"),
            "{why}"
        );
        // Nothing was sent.
        assert!(heads.try_recv().is_err());
    }

    #[test]
    fn several_private_addresses_are_listed() {
        let addresses: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::1".parse().unwrap()];
        let why = not_public("shop.test", &addresses);
        assert_eq!(
            why,
            "shop.test resolves to 10.0.0.5, fd00::1, none of which is a public address"
        );
    }
}
