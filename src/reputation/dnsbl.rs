//! RFC 5782 DNSBL queries and what their answers mean. Pure functions: the rules that
//! decide "listed" live here and are tested without a network.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::config::BlocklistConfig;

/// The name to query for `ip` in `zone`: IPv4 octets reversed, IPv6 as 32 nibbles
/// reversed (RFC 5782 §2.1, §2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
            name.push_str(zone);
            name
        }
    }
}

/// One return code that the list configuration says means *listed*.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedCode {
    /// The A record's address (`127.0.0.x`).
    pub code: Ipv4Addr,
    /// The operator-facing meaning from the config (e.g. "XBL: exploited host").
    pub meaning: String,
}

/// What one answer says about one IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finding {
    /// NXDOMAIN: not on this list.
    Clean,
    /// An A record with a configured code.
    Listed {
        /// The list's codes for this IP.
        codes: Vec<ListedCode>,
    },
    /// Not an answer about our IP: a refused query, an unconfigured code, a timeout. Never
    /// treated as a listing.
    Error {
        /// Why.
        cause: String,
    },
}

/// Spamhaus answers these instead of a listing when it refuses the query; other lists
/// have adopted the convention (Spamhaus DQS documentation, "return codes").
fn refusal(code: Ipv4Addr) -> Option<&'static str> {
    match code.octets() {
        [127, 255, 255, 252] => Some("typing error in the DNSBL name (127.255.255.252)"),
        [127, 255, 255, 254] => {
            Some("query refused: sent through a public or open resolver (127.255.255.254)")
        }
        [127, 255, 255, 255] => {
            Some("query refused: excessive number of queries (127.255.255.255)")
        }
        _ => None,
    }
}

/// Interprets the A records of an answer (`None`: NXDOMAIN) under `list`'s codes.
pub fn interpret(answer: Option<&[Ipv4Addr]>, list: &BlocklistConfig) -> Finding {
    let Some(codes) = answer.filter(|c| !c.is_empty()) else {
        return Finding::Clean;
    };
    if let Some(cause) = codes.iter().find_map(|c| refusal(*c)) {
        return Finding::Error {
            cause: cause.into(),
        };
    }
    let mut listed = Vec::new();
    let mut unknown = Vec::new();
    for &code in codes {
        match list.codes.get(&code.to_string()) {
            Some(meaning) if code.octets()[0] == 127 => listed.push(ListedCode {
                code,
                meaning: meaning.clone(),
            }),
            _ => unknown.push(code.to_string()),
        }
    }
    if listed.is_empty() {
        return Finding::Error {
            cause: format!(
                "unexpected answer {} (not a configured listing code)",
                unknown.join(", ")
            ),
        };
    }
    listed.sort_by_key(|c| c.code);
    Finding::Listed { codes: listed }
}

/// Whether a list answers its RFC 5782 §5 test points correctly: 127.0.0.2 listed (any
/// configured code), 127.0.0.1 not listed. `None` when healthy, or why it is broken.
pub fn check_test_points(
    positive: Option<&[Ipv4Addr]>,
    negative: Option<&[Ipv4Addr]>,
    list: &BlocklistConfig,
) -> Option<String> {
    if let Some(n) = negative.filter(|n| !n.is_empty()) {
        let codes: Vec<String> = n.iter().map(|c| c.to_string()).collect();
        return Some(format!(
            "test point 127.0.0.1 answered as listed ({}): the list answers everything, its zone may have lapsed",
            codes.join(", ")
        ));
    }
    match interpret(positive, list) {
        Finding::Listed { .. } => None,
        Finding::Clean => Some("test point 127.0.0.2 is not listed".into()),
        Finding::Error { cause } => Some(format!("test point 127.0.0.2: {cause}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zen() -> BlocklistConfig {
        BlocklistConfig {
            zone: "zen.spamhaus.org".into(),
            name: None,
            severity: Default::default(),
            codes: [
                ("127.0.0.2", "SBL"),
                ("127.0.0.3", "CSS"),
                ("127.0.0.4", "XBL"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            removal_url: None,
            test_points: true,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "zen.spamhaus.org"),
            "99.2.0.192.zen.spamhaus.org"
        );
        assert_eq!(
            query_name("127.0.0.2".parse().unwrap(), "bl.test."),
            "2.0.0.127.bl.test"
        );
        // RFC 5782 §2.4's own example.
        assert_eq!(
            query_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
    }

    #[test]
    fn answers_mean_what_the_config_says() {
        let l = zen();
        assert_eq!(interpret(None, &l), Finding::Clean);
        assert_eq!(interpret(Some(&[]), &l), Finding::Clean);
        assert_eq!(
            interpret(Some(&[ip("127.0.0.4"), ip("127.0.0.2")]), &l),
            Finding::Listed {
                codes: vec![
                    ListedCode {
                        code: ip("127.0.0.2"),
                        meaning: "SBL".into()
                    },
                    ListedCode {
                        code: ip("127.0.0.4"),
                        meaning: "XBL".into()
                    },
                ]
            }
        );
        for refused in ["127.255.255.252", "127.255.255.254", "127.255.255.255"] {
            assert!(
                matches!(interpret(Some(&[ip(refused)]), &l), Finding::Error { .. }),
                "{refused}"
            );
        }
        // Refusal wins even next to a listed code: the answer cannot be trusted.
        assert!(matches!(
            interpret(Some(&[ip("127.0.0.2"), ip("127.255.255.254")]), &l),
            Finding::Error { .. }
        ));
        for other in ["127.0.0.1", "127.0.0.10", "10.0.0.2"] {
            assert!(
                matches!(interpret(Some(&[ip(other)]), &l), Finding::Error { .. }),
                "{other}"
            );
        }
    }

    #[test]
    fn test_points_catch_broken_lists() {
        let l = zen();
        let listed = [ip("127.0.0.2")];
        assert_eq!(check_test_points(Some(&listed), None, &l), None);
        assert!(
            check_test_points(Some(&listed), Some(&[ip("127.0.0.2")]), &l)
                .unwrap()
                .contains("lapsed")
        );
        assert!(
            check_test_points(None, None, &l)
                .unwrap()
                .contains("not listed")
        );
        assert!(check_test_points(Some(&[ip("127.255.255.254")]), None, &l).is_some());
    }
}
