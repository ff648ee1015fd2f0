//! Egress IPs, the local addresses mail leaves from, and their standing: the vocabulary
//! routing, outbound delivery and reputation share.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A local address to send from, with the name it announces in EHLO.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressIp {
    /// `None`: let the kernel choose the source address (the host's default route).
    pub ip: Option<IpAddr>,
    /// Shared, so handing out an egress IP per connection does not copy its name.
    pub helo: Arc<str>,
}

impl EgressIp {
    /// Whether this address can reach `dest` (an IPv4 source cannot reach an IPv6 MX).
    pub fn can_reach(&self, dest: IpAddr) -> bool {
        self.ip.is_none_or(|ip| ip.is_ipv4() == dest.is_ipv4())
    }
}

impl fmt::Display for EgressIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("default"),
        }
    }
}

/// The address the host sends from when none is bound (its default route's source), if
/// it has one: a UDP socket "connected" to a documentation address (RFC 5737) asks the
/// kernel's routing table and sends nothing.
pub fn default_source() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:25").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// How usable an egress IP is, worst listing first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// On no list that counts (and, towards a site, not blocked by it).
    Clean,
    /// On a `soft` list: used only when no clean IP is left.
    Soft,
    /// On a `hard` list: not used for any destination.
    Hard,
}
