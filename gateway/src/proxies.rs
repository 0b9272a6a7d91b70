//! The client address of a request: the connection's peer, or, when that
//! peer is a proxy the operator trusts (`--trusted-proxy CIDR`), the
//! address the proxies recorded in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read from the right: each trusted proxy appends the
//! address it received the request from, so the rightmost entry that is not
//! a trusted proxy is the client. Entries left of it were written by the
//! client itself and are never believed. Without trusted proxies the header
//! is ignored: anyone can send it.

use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The standard header proxies append the client's address to.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// One trusted network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A `--trusted-proxy` that is not an address or a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted proxy `{0}`: use an address (10.0.0.1) or a CIDR block (10.0.0.0/8, fd00::/8)")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Trusts `blocks`.
    pub fn new(blocks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies { blocks }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|b| b.contains(ip))
    }

    /// The client address of a request that came from `peer`: `peer`
    /// itself unless it is trusted; then the rightmost `X-Forwarded-For`
    /// entry that is not a trusted proxy (or the leftmost entry, if all
    /// are; or the last trusted hop, at an entry that is not an address).
    /// Does not allocate.
    pub fn client(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let mut client = peer.ip();
        if !self.trusts(client) {
            return client;
        }
        for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for entry in value.rsplit(',') {
                let Some(ip) = parse_entry(entry.trim()) else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly `[v6]:port` or
/// `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse().unwrap()).collect())
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "proxy", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let p = proxies(&["10.0.0.0/8"]);
        // An untrusted peer's header is ignored: anyone can send one.
        assert_eq!(
            p.client(&headers(&["203.0.113.9"]), peer("198.51.100.1")),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Behind one proxy: the entry it appended.
        assert_eq!(
            p.client(&headers(&["203.0.113.9"]), peer("10.0.0.2")),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A client's forged entries left of the real one are not believed.
        assert_eq!(
            p.client(
                &headers(&["1.1.1.1, 203.0.113.9, 10.0.0.3"]),
                peer("10.0.0.2")
            ),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Several header lines read as one list, last line rightmost.
        assert_eq!(
            p.client(&headers(&["1.1.1.1", "203.0.113.9:5555"]), peer("10.0.0.2")),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Garbage stops at the last trusted hop.
        assert_eq!(
            p.client(&headers(&["nonsense, 10.0.0.3"]), peer("10.0.0.2")),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(
            p.client(&HeaderMap::new(), peer("10.0.0.2")),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        // Nobody trusted: the peer, always.
        assert_eq!(
            TrustedProxies::default().client(&headers(&["203.0.113.9"]), peer("10.0.0.2")),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }
}
