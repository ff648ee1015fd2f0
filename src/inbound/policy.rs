//! Who may do what. Pure functions, so the rules can be tested without sockets.

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether a client may relay. sidestep has no local domains, so this is the only gate:
/// a client outside `relay_networks` cannot send to any address at all.
pub fn may_relay(client: IpAddr, relay_networks: &[IpNet]) -> bool {
    let client = match client {
        // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; compare it as v4
        // so `127.0.0.0/8` still matches.
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    relay_networks.iter().any(|net| net.contains(&client))
}

/// Whether the client is on this host (loopback, also as a v4-mapped v6 address).
pub fn is_loopback(client: IpAddr) -> bool {
    match client {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// Bare CR or LF in message content. Receivers disagree on whether `<LF>.<LF>` ends DATA,
/// which is how SMTP smuggling hides a second message inside the first; RFC 5322 §2.3
/// allows CR and LF only as a pair, so such content is refused outright.
pub fn has_bare_cr_or_lf(body: &[u8]) -> bool {
    // Visits only the line endings (SIMD search), not every byte.
    memchr::memchr2_iter(b'\r', b'\n', body).any(|i| match body[i] {
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        _ => i == 0 || body[i - 1] != b'\r',
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_permission_follows_networks_only() {
        let nets: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        assert!(may_relay("127.0.0.1".parse().unwrap(), &nets));
        assert!(may_relay("10.1.2.3".parse().unwrap(), &nets));
        assert!(may_relay("::ffff:127.0.0.5".parse().unwrap(), &nets));
        assert!(!may_relay("10.2.0.1".parse().unwrap(), &nets));
        assert!(!may_relay("::1".parse().unwrap(), &nets));
        assert!(!may_relay("127.0.0.1".parse().unwrap(), &[]));
    }

    #[test]
    fn bare_line_endings_are_found() {
        assert!(!has_bare_cr_or_lf(b"a\r\nb\r\n"));
        assert!(!has_bare_cr_or_lf(b""));
        assert!(has_bare_cr_or_lf(b"a\nb\r\n"));
        assert!(has_bare_cr_or_lf(b"a\r\n.\n"));
        assert!(has_bare_cr_or_lf(b"a\rb\r\n"));
        assert!(has_bare_cr_or_lf(b"a\r\nb\r"));
    }
}
