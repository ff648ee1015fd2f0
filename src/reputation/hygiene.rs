//! Egress hygiene: what receivers check about a sending IP before any reply says so
//! (the seed 001 story: a dynamic-looking reverse name is refused). For each egress IP:
//! a PTR record exists; its name resolves back to the IP (forward-confirmed reverse
//! DNS); the HELO name is that name or resolves to the IP; the name does not look like
//! a dial-up or generic one. Checked at start, on reload and with each listings refresh.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::dns::Resolver;

/// What one egress IP looks like to a receiver's reverse-DNS checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hygiene {
    /// The egress IP.
    pub ip: IpAddr,
    /// The HELO name it announces.
    pub helo: String,
    /// Its PTR names (none: no reverse DNS).
    pub ptr: Vec<String>,
    /// A PTR name resolves back to the IP.
    pub fcrdns: bool,
    /// The HELO name is a PTR name, or resolves to the IP.
    pub helo_matches: bool,
    /// Why the PTR name looks generic or dynamic, if it does.
    pub generic: Option<String>,
    /// The lookups failed (DNS trouble): nothing is concluded.
    pub error: Option<String>,
    /// When checked (Unix seconds).
    pub checked_at: u64,
}

impl Hygiene {
    /// What a receiver would hold against the IP, in words; empty when all is well (or
    /// the lookups failed).
    pub fn problems(&self) -> Vec<String> {
        if self.error.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.ptr.is_empty() {
            out.push("no PTR record (no reverse DNS)".to_string());
        } else if !self.fcrdns {
            out.push(format!(
                "PTR {} does not resolve back to {} (no forward-confirmed reverse DNS)",
                self.ptr.join(", "),
                self.ip
            ));
        }
        if !self.helo_matches {
            out.push(format!(
                "HELO {} is neither the PTR name nor resolves to {}",
                self.helo, self.ip
            ));
        }
        if let Some(why) = &self.generic {
            out.push(format!("PTR name looks generic or dynamic ({why})"));
        }
        out
    }

    /// Whether the IP fails forward-confirmed reverse DNS (known, not a lookup failure).
    pub fn fails_fcrdns(&self) -> bool {
        self.error.is_none() && !self.fcrdns
    }
}

/// Words receivers' filters read as a dynamic or generic host name.
const GENERIC_WORDS: &[&str] = &[
    "dyn",
    "dynamic",
    "dsl",
    "adsl",
    "pool",
    "dhcp",
    "cable",
    "ppp",
    "pppoe",
    "static",
    "dialup",
    "dial",
    "broadband",
    "client",
    "customer",
    "cust",
    "host",
    "ip",
    "res",
    "residential",
    "user",
    "unknown",
    "nat",
    "mobile",
    "wireless",
    "fiber",
    "ftth",
];

/// Why `name` looks like a generic name for `ip` (its octets spelled in it, or a word
/// such as `dyn`, `dsl`, `pool`), if it does.
pub fn looks_generic(name: &str, ip: IpAddr) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let IpAddr::V4(v4) = ip {
        let o = v4.octets();
        let numbers: Vec<&str> = name
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .collect();
        let hits = o
            .iter()
            .filter(|x| numbers.contains(&x.to_string().as_str()))
            .count();
        let hex = format!("{:02x}{:02x}{:02x}{:02x}", o[0], o[1], o[2], o[3]);
        if hits >= 3 || name.contains(&hex) {
            return Some("the IP's octets are in the name".into());
        }
    }
    // Words of the labels before the owner's domain (the last two labels).
    let labels: Vec<&str> = name.split('.').collect();
    let host_labels = &labels[..labels.len().saturating_sub(2).max(1)];
    host_labels
        .iter()
        .flat_map(|l| l.split(|c: char| !c.is_ascii_alphanumeric()))
        .map(|w| w.trim_matches(|c: char| c.is_ascii_digit()))
        .find(|w| GENERIC_WORDS.contains(w))
        .map(|w| format!("`{w}` in the host name"))
}

/// Checks `ip`, which announces `helo`, at `now` (Unix s).
pub async fn check(resolver: &Resolver, ip: IpAddr, helo: &str, now: u64) -> Hygiene {
    let mut h = Hygiene {
        ip,
        helo: helo.to_string(),
        ptr: Vec::new(),
        fcrdns: false,
        helo_matches: false,
        generic: None,
        error: None,
        checked_at: now,
    };
    match resolver.lookup_ptr(ip).await {
        Ok(names) => h.ptr = names,
        Err(e) => {
            h.error = Some(e.to_string());
            return h;
        }
    }
    for name in &h.ptr {
        if resolver
            .lookup_addresses(name)
            .await
            .is_ok_and(|ips| ips.contains(&ip))
        {
            h.fcrdns = true;
        }
    }
    let helo_lower = helo.trim_end_matches('.').to_ascii_lowercase();
    h.helo_matches = h.ptr.contains(&helo_lower)
        || resolver
            .lookup_addresses(&helo_lower)
            .await
            .is_ok_and(|ips| ips.contains(&ip));
    h.generic = h.ptr.iter().find_map(|n| looks_generic(n, ip));
    h
}

impl super::Reputation {
    /// Puts a round of checks in force: shown by `sidestep listings`, warned in the log
    /// when something is wrong; with `require_fcrdns`, an IP failing forward-confirmed
    /// reverse DNS leaves the rotation (and returns once it passes).
    pub fn set_hygiene(&self, results: Vec<Hygiene>, require_fcrdns: bool) {
        let lists = self.lists();
        let mut state = self.lock();
        for h in &results {
            let problems = h.problems();
            let before = state.hygiene.get(&h.ip).map(Hygiene::problems);
            if let Some(e) = &h.error {
                tracing::info!(ip = %h.ip, error = %e, "reverse DNS check failed; keeping the last result");
            } else if !problems.is_empty() && before.as_ref() != Some(&problems) {
                tracing::warn!(ip = %h.ip, helo = %h.helo, ptr = %h.ptr.join(","), problems = %problems.join("; "), "egress IP reverse DNS: receivers may refuse it");
            } else if problems.is_empty() && before.is_some_and(|b| !b.is_empty()) {
                tracing::info!(ip = %h.ip, ptr = %h.ptr.join(","), "egress IP reverse DNS is fine now");
            }
        }
        for h in results {
            // A failed lookup concludes nothing: the last result stands.
            if h.error.is_none() || !state.hygiene.contains_key(&h.ip) {
                state.hygiene.insert(h.ip, h);
            }
        }
        let out: std::collections::HashSet<IpAddr> = if require_fcrdns {
            state
                .hygiene
                .values()
                .filter(|h| h.fails_fcrdns())
                .map(|h| h.ip)
                .collect()
        } else {
            Default::default()
        };
        if out != state.no_rdns {
            for ip in out.difference(&state.no_rdns) {
                tracing::warn!(ip = %ip, "egress IP out of rotation: no forward-confirmed reverse DNS (require_fcrdns)");
            }
            for ip in state.no_rdns.difference(&out) {
                tracing::info!(ip = %ip, "egress IP back in rotation: its reverse DNS is forward-confirmed");
            }
            let back = state.no_rdns.difference(&out).count() > 0;
            state.no_rdns = out;
            state.listed = super::listings::compute_listed(&lists, &state);
            drop(state);
            if back {
                self.shared.improved.send_modify(|n| *n += 1);
            }
        }
    }

    /// Why `ip` is out of rotation for its reverse DNS, if it is.
    pub fn hygiene_out(&self, ip: IpAddr) -> Option<String> {
        let state = self.lock();
        state.no_rdns.contains(&ip).then(|| {
            state
                .hygiene
                .get(&ip)
                .map(|h| h.problems().join("; "))
                .unwrap_or_default()
        })
    }
}

/// Checks every egress IP (with the HELO it announces), in parallel.
pub async fn check_all(resolver: &Resolver, egress: &[(IpAddr, String)], now: u64) -> Vec<Hygiene> {
    let mut tasks = tokio::task::JoinSet::new();
    for (ip, helo) in egress.iter().cloned() {
        let resolver = resolver.clone();
        tasks.spawn(async move { check(&resolver, ip, &helo, now).await });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(h) = done {
            out.push(h);
        }
    }
    out.sort_by_key(|h| h.ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn generic_names_are_recognised() {
        let a = ip("203.0.113.45");
        for generic in [
            "203-0-113-45.dyn.example.net",
            "45.113.0.203.in-addr.isp.example",
            "host-203-0-113-45.example.com",
            "dsl-203-0-113-45.isp.example",
            "cpe-45-113.cable.example.com",
            "pool-71-113.example.com",
            "cb00712d.isp.example",
            "dhcp123.example.org",
        ] {
            assert!(looks_generic(generic, a).is_some(), "{generic}");
        }
        for named in [
            "mail.example.com",
            "out2.relay.example.net",
            "smtp45.example.com",
            "mx1.bell.ca",
        ] {
            assert_eq!(looks_generic(named, a), None, "{named}");
        }
    }

    #[test]
    fn problems_in_words() {
        let mut h = Hygiene {
            ip: ip("192.0.2.11"),
            helo: "out.example.net".into(),
            ptr: vec![],
            fcrdns: false,
            helo_matches: false,
            generic: None,
            error: None,
            checked_at: 0,
        };
        assert_eq!(h.problems().len(), 2);
        assert!(h.problems()[0].contains("no PTR record"));
        assert!(h.fails_fcrdns());
        h.ptr = vec!["out.example.net".into()];
        h.fcrdns = true;
        h.helo_matches = true;
        assert!(h.problems().is_empty());
        h.error = Some("timeout".into());
        h.fcrdns = false;
        assert!(!h.fails_fcrdns(), "a lookup failure concludes nothing");
    }
}
