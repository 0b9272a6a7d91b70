//! Which resolved addresses a guest may connect to when private networks are
//! not allowed: globally routable unicast only.
//!
//! IPv6 is checked by allowing the global unicast block (2000::/3) minus its
//! special-purpose parts, so anything outside it (loopback, unspecified,
//! IPv4-compatible `::a.b.c.d`, discard-only 100::/64, unique-local,
//! link-local, site-local fec0::/10, multicast…) is refused without being
//! listed. Addresses that embed an IPv4 address are judged by that address:
//! IPv4-mapped `::ffff:a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`, and NAT64
//! `64:ff9b::a.b.c.d`. A NAT64 gateway forwards to the embedded address, so
//! `64:ff9b::10.0.0.1` reaches 10.0.0.1 and is refused, while a public
//! embedded address is allowed (on an IPv6-only network with DNS64 every
//! public name resolves to one). The local-use NAT64 prefix 64:ff9b:1::/48
//! translates however the operator set it up, and is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_documentation()
        || o[0] == 0 // 0/8 "this network", includes 0.0.0.0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 IETF protocol assignments
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 192.88.99/24 6to4 relay anycast
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
        || o[0] >= 224) // 224/4 multicast, 240/4 reserved, 255.255.255.255
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(v6) {
        return is_public_v4(v4);
    }
    let s = v6.segments();
    (s[0] & 0xe000) == 0x2000 // 2000::/3 global unicast
        && !(s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments (Teredo, benchmarking, ORCHID…)
        && !(s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        && !(s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20 documentation
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped, NAT64
/// well-known prefix (64:ff9b::/96) or 6to4 (2002::/16).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let from =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(from(s[1], s[2]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::8.8.8.8",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "3fff::1",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "5f00::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(!is_public(parsed), "{ip} should not be public");
        }
    }

    #[test]
    fn global_addresses_are_public() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(is_public(parsed), "{ip} should be public");
        }
    }
}
