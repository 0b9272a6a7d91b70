//! Outbound allowlist entries: which hosts, and optionally which scheme and
//! port, a guest may call.
//!
//! | entry | matches |
//! |---|---|
//! | `api.example.com` | that host, any scheme, any port |
//! | `*.example.com` | its subdomains (not `example.com`), any scheme and port |
//! | `*` | every host |
//! | `https://api.example.com` | that host over HTTPS on port 443 only |
//! | `http://api.example.com:8080` | that host over plain HTTP on port 8080 only |
//!
//! A host may also be an IP literal (`10.0.0.5`, `[::1]`; a bare `::1` only
//! without a scheme). A port needs a scheme, and an entry has no path, query,
//! fragment or user info. Names compare case-insensitively, without a
//! trailing dot.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// The scheme of an outbound request or allowlist entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The port used when none is given: 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Which hosts an entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// `*`: every host.
    Any,
    /// `*.suffix`: names ending in `.suffix`.
    Subdomains(String),
    /// One name or IP literal, normalised by [`normalize_host`].
    Exact(String),
}

/// One parsed allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    host: HostPattern,
    /// The only scheme and port allowed, when the entry gives a scheme.
    target: Option<(Scheme, u16)>,
}

/// Why an allowlist entry is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("outbound entry `{entry}`: {problem}")]
pub struct EntryError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub problem: EntryProblem,
}

/// What is wrong with an allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    /// Nothing, or only a scheme, was given.
    #[error("names no host")]
    EmptyHost,
    /// A scheme other than `http` or `https`.
    #[error("scheme `{0}` is not supported (use http or https)")]
    Scheme(String),
    /// A port that is not a number in 1..=65535.
    #[error("port `{0}` is not a number in 1..=65535")]
    Port(String),
    /// A port without a scheme.
    #[error("a port needs a scheme, e.g. `https://host:{0}`")]
    PortWithoutScheme(u16),
    /// A path, query or fragment.
    #[error("has a path, query or fragment; give only [scheme://]host[:port]")]
    Path,
    /// `user@` or `user:password@`.
    #[error("has user info (`…@`); credentials do not belong in the allowlist")]
    UserInfo,
    /// The host is not a DNS name, `*.name`, `*` or an IP literal.
    #[error("`{0}` is not a hostname, `*.domain` wildcard, `*` or IP address")]
    Host(String),
}

impl FromStr for AllowEntry {
    type Err = EntryError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        parse(entry).map_err(|problem| EntryError {
            entry: entry.to_string(),
            problem,
        })
    }
}

fn parse(entry: &str) -> Result<AllowEntry, EntryProblem> {
    let entry = entry.trim();
    let (scheme, rest) = match entry.split_once("://") {
        Some((s, rest)) => (Some(parse_scheme(s)?), rest),
        None => (None, entry),
    };
    if rest.contains(['/', '?', '#']) {
        return Err(EntryProblem::Path);
    }
    if rest.contains('@') {
        return Err(EntryProblem::UserInfo);
    }
    let (host, port) = split_host_port(rest)?;
    let target = match (scheme, port) {
        (Some(s), port) => Some((s, port.unwrap_or(s.default_port()))),
        (None, Some(port)) => return Err(EntryProblem::PortWithoutScheme(port)),
        (None, None) => None,
    };
    Ok(AllowEntry {
        host: parse_host_pattern(host)?,
        target,
    })
}

fn parse_scheme(s: &str) -> Result<Scheme, EntryProblem> {
    match s.to_ascii_lowercase().as_str() {
        "http" => Ok(Scheme::Http),
        "https" => Ok(Scheme::Https),
        _ => Err(EntryProblem::Scheme(s.to_string())),
    }
}

/// Splits `host[:port]`, `[v6][:port]` or a bare IPv6 literal.
fn split_host_port(rest: &str) -> Result<(&str, Option<u16>), EntryProblem> {
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| EntryProblem::Host(rest.to_string()))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(EntryProblem::Host(rest.to_string()));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(parse_port(p)?))),
                None => Err(EntryProblem::Host(rest.to_string())),
            },
        };
    }
    if rest.matches(':').count() > 1 {
        // Only a bare IPv6 literal has several colons.
        return match rest.parse::<Ipv6Addr>() {
            Ok(_) => Ok((rest, None)),
            Err(_) => Err(EntryProblem::Host(rest.to_string())),
        };
    }
    match rest.split_once(':') {
        Some((host, port)) => Ok((host, Some(parse_port(port)?))),
        None => Ok((rest, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, EntryProblem> {
    match p.parse::<u16>() {
        Ok(port) if port != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(EntryProblem::Port(p.to_string())),
    }
}

fn parse_host_pattern(host: &str) -> Result<HostPattern, EntryProblem> {
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        let suffix = normalize_host(suffix);
        if is_dns_name(&suffix) && suffix.parse::<IpAddr>().is_err() {
            return Ok(HostPattern::Subdomains(suffix));
        }
        return Err(EntryProblem::Host(host.to_string()));
    }
    let normalized = normalize_host(host);
    if normalized.is_empty() {
        return Err(EntryProblem::EmptyHost);
    }
    if normalized.parse::<IpAddr>().is_ok() || is_dns_name(&normalized) {
        return Ok(HostPattern::Exact(normalized));
    }
    Err(EntryProblem::Host(host.to_string()))
}

/// Lowercase, without a trailing dot or IPv6 brackets; IP literals in their
/// canonical form (so `0:0::1` and `::1` compare equal).
pub fn normalize_host(host: &str) -> String {
    let host = host.trim_matches(['[', ']']).trim_end_matches('.');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// Dot-separated labels of letters, digits, `-` and `_` (no leading or
/// trailing `-`), at most 63 bytes each and 253 in all.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl AllowEntry {
    /// Whether a request to `host` (normalised by [`normalize_host`]) over
    /// `scheme` on `port` matches this entry.
    pub fn matches(&self, host: &str, scheme: Scheme, port: u16) -> bool {
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        };
        host_ok && self.target.is_none_or(|t| t == (scheme, port))
    }
}

/// Checks every entry of an allowlist, returning the first invalid one.
pub fn validate_entries<S: AsRef<str>>(entries: &[S]) -> Result<(), EntryError> {
    entries
        .iter()
        .try_for_each(|e| e.as_ref().parse::<AllowEntry>().map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Scheme::{Http, Https};

    fn entry(s: &str) -> AllowEntry {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn bare_hosts_match_any_scheme_and_port() {
        let e = entry("api.example.com");
        assert!(e.matches("api.example.com", Https, 443));
        assert!(e.matches("api.example.com", Http, 8080));
        assert!(!e.matches("example.com", Https, 443));
        assert!(!e.matches("evil-api.example.com", Https, 443));
        let e = entry("API.Example.com.");
        assert!(e.matches(&normalize_host("api.example.COM."), Http, 80));
    }

    #[test]
    fn wildcards() {
        let e = entry("*.cdn.net");
        assert!(e.matches("a.cdn.net", Https, 443));
        assert!(e.matches("a.b.cdn.net", Http, 81));
        assert!(!e.matches("cdn.net", Https, 443));
        assert!(!e.matches("xcdn.net", Https, 443));
        assert!(entry("*").matches("anything.at.all", Http, 1));
        let e = entry("https://*.cdn.net");
        assert!(e.matches("a.cdn.net", Https, 443));
        assert!(!e.matches("a.cdn.net", Http, 443));
    }

    #[test]
    fn a_scheme_pins_the_scheme_and_port() {
        let e = entry("https://api.example.com");
        assert!(e.matches("api.example.com", Https, 443));
        assert!(!e.matches("api.example.com", Https, 8443));
        assert!(!e.matches("api.example.com", Http, 443));
        assert!(!e.matches("api.example.com", Http, 80));
        let e = entry("https://api.example.com:8443");
        assert!(e.matches("api.example.com", Https, 8443));
        assert!(!e.matches("api.example.com", Https, 443));
        let e = entry("HTTP://api.example.com:8080");
        assert!(e.matches("api.example.com", Http, 8080));
        assert!(!e.matches("api.example.com", Https, 8080));
        assert!(!e.matches("api.example.com", Http, 80));
        let e = entry("http://api.example.com");
        assert!(e.matches("api.example.com", Http, 80));
        assert!(!e.matches("api.example.com", Http, 8080));
    }

    #[test]
    fn ip_literals() {
        assert!(entry("127.0.0.1").matches("127.0.0.1", Http, 9999));
        let e = entry("http://127.0.0.1:8080");
        assert!(e.matches("127.0.0.1", Http, 8080));
        assert!(!e.matches("127.0.0.1", Http, 8081));
        let v6 = normalize_host("[0:0::1]");
        assert!(entry("::1").matches(&v6, Https, 443));
        assert!(entry("[::1]").matches(&v6, Https, 443));
        assert!(entry("http://[::1]:8080").matches(&v6, Http, 8080));
        assert!(!entry("http://[::1]:8080").matches(&v6, Http, 80));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        use EntryProblem as P;
        type Expect = fn(&EntryProblem) -> bool;
        let cases: [(&str, Expect); 17] = [
            ("ftp://x.com", |p| matches!(p, P::Scheme(_))),
            ("https://x.com:99999", |p| matches!(p, P::Port(_))),
            ("https://x.com:0", |p| matches!(p, P::Port(_))),
            ("https://x.com:", |p| matches!(p, P::Port(_))),
            ("https://x.com:+80", |p| matches!(p, P::Port(_))),
            ("https://x.com/path", |p| *p == P::Path),
            ("x.com/path", |p| *p == P::Path),
            ("https://x.com?q=1", |p| *p == P::Path),
            ("https://user:pw@x.com", |p| *p == P::UserInfo),
            ("user@x.com", |p| *p == P::UserInfo),
            ("https://", |p| *p == P::EmptyHost),
            ("", |p| *p == P::EmptyHost),
            ("https://:443", |p| *p == P::EmptyHost),
            ("x.com:443", |p| *p == P::PortWithoutScheme(443)),
            ("bad host", |p| matches!(p, P::Host(_))),
            ("*.", |p| matches!(p, P::Host(_))),
            ("a.*.com", |p| matches!(p, P::Host(_))),
        ];
        for (text, want) in cases {
            let err = text.parse::<AllowEntry>().expect_err(text);
            assert!(want(&err.problem), "{text}: {err}");
            assert!(err.to_string().contains(text), "{err}");
        }
        assert!(validate_entries(&["a.com", "https://b.com:8443"]).is_ok());
        assert!(validate_entries(&["a.com", "ftp://b.com"]).is_err());
    }
}
