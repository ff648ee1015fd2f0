//! Sites: recipient domains that share mail exchangers share a reputation. aliant.net,
//! bell.net and sympatico.ca go to the same MX hosts, so a block learned while sending
//! to one holds for all of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dns::MxHost;

/// A destination as reputation sees it: the sorted set of MX host names, or a rollup
/// suffix that covers all of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Site(String);

impl Site {
    /// The site of a domain with these MX hosts. `rollup`: suffixes that, when every MX
    /// host ends with one of them, name the site on their own.
    pub fn from_mx(hosts: &[MxHost], rollup: &[String]) -> Site {
        let mut names: Vec<String> = hosts
            .iter()
            .map(|h| h.name.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        for suffix in rollup {
            let suffix = suffix.trim_start_matches('.').to_ascii_lowercase();
            let covered = |n: &String| *n == suffix || n.ends_with(&format!(".{suffix}"));
            if !names.is_empty() && names.iter().all(covered) {
                return Site(suffix);
            }
        }
        Site(names.join(","))
    }

    /// The site's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Site {
    fn from(s: &str) -> Self {
        Site(s.to_string())
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(names: &[&str]) -> Vec<MxHost> {
        names
            .iter()
            .map(|n| MxHost {
                name: n.to_string(),
                preference: 10,
            })
            .collect()
    }

    #[test]
    fn same_mx_set_same_site_whatever_the_order() {
        let a = Site::from_mx(&mx(&["mx2.bell.ca", "MX1.bell.ca"]), &[]);
        let b = Site::from_mx(&mx(&["mx1.bell.ca", "mx2.bell.ca", "mx1.bell.ca"]), &[]);
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "mx1.bell.ca,mx2.bell.ca");
        assert_ne!(a, Site::from_mx(&mx(&["mx1.bell.ca"]), &[]));
    }

    #[test]
    fn rollup_suffix_covers_every_host() {
        let rollup = vec!["mail.protection.outlook.com".to_string()];
        let s = Site::from_mx(&mx(&["contoso-com.mail.protection.outlook.com"]), &rollup);
        assert_eq!(s.as_str(), "mail.protection.outlook.com");
        let mixed = Site::from_mx(
            &mx(&["a.mail.protection.outlook.com", "mx.other.test"]),
            &rollup,
        );
        assert_eq!(
            mixed.as_str(),
            "a.mail.protection.outlook.com,mx.other.test"
        );
    }
}
