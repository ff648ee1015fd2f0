//! `[[blocklists]]`, `[listings]`, `[blocks]`: what the relay knows about its IPs' names
//! on lists and at sites.

use serde::Deserialize;

use super::*;

/// `[blocks]`: a destination refused an egress IP for its reputation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlocksConfig {
    /// How long the IP is kept away from that destination the first time. After it
    /// expires one canary delivery tries the IP again.
    pub duration: HumanDuration,
    /// Each repeat doubles the time, up to this.
    pub max_duration: HumanDuration,
}

impl Default for BlocksConfig {
    fn default() -> Self {
        Self {
            duration: HumanDuration::from_secs(4 * 3600),
            max_duration: HumanDuration::from_secs(2 * 24 * 3600),
        }
    }
}

/// `[[blocklists]]`: one public DNSBL (RFC 5782) that sidestep asks about its own IPs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistConfig {
    /// DNS zone queried, e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// Name shown to the operator; defaults to the zone.
    pub name: Option<String>,
    /// `hard`: a listed IP leaves the rotation for every destination. `soft`: it is shown
    /// and only used when no unlisted IP is left.
    #[serde(default)]
    pub severity: Severity,
    /// The answers that mean *listed*, each with its meaning (`"127.0.0.2" = "SBL"`).
    /// Any other answer is an error, never a listing: lists return special codes for
    /// refused or malformed queries.
    pub codes: std::collections::BTreeMap<String, String>,
    /// Where the operator asks for removal; printed with every listing.
    pub removal_url: Option<String>,
    /// Check the RFC 5782 test points each refresh (127.0.0.2 listed, 127.0.0.1 not),
    /// and ignore the list while they answer wrong: a lapsed zone answers *everything*.
    #[serde(default = "default_true")]
    pub test_points: bool,
}

/// How much a listing counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    /// A listed IP is used for no destination.
    Hard,
    /// A listed IP is used only when no clean IP is left.
    Soft,
}

impl BlocklistConfig {
    /// The list's name for people, or its zone.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.zone)
    }
}

/// `[listings]`: the DNSBL monitor of our own egress IPs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListingsConfig {
    /// Time between two checks of every egress IP against every list.
    pub refresh: HumanDuration,
    /// Each query of a refresh starts after a random delay up to this long, so the
    /// queries of a large pool do not all hit the lists at the same instant.
    pub jitter: HumanDuration,
}

impl Default for ListingsConfig {
    fn default() -> Self {
        Self {
            refresh: HumanDuration::from_secs(15 * 60),
            jitter: HumanDuration::from_secs(60),
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}
