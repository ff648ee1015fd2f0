//! The operator's TOML file: serde sections, defaults, and validation.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored option.
//! `Config::load` parses; `Config::validate` collects *every* problem with its key path so
//! `sidestep check-config` can list them all at once.

mod bounces;
mod delivery;
mod dkim;
mod duration;
mod error;
mod load;
mod networks;
mod reputation;
mod senders;
mod server;
mod tls_policy;
mod validate;
mod watch;
mod words;

pub use bounces::{BouncesConfig, ReturnDomainConfig, SuppressionConfig, SuppressionScope};
pub use delivery::*;
pub use dkim::{ComplianceConfig, DkimAlgorithm, DkimConfig, DkimKeyConfig, OneClick, SignPolicy};
pub use duration::HumanDuration;
pub use error::{ConfigError, LoadError};
pub use reputation::*;
pub use senders::*;
pub use server::*;
pub use tls_policy::{TlsPolicyConfig, TlsRptConfig};
pub use watch::*;

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

/// The whole configuration. Every section has defaults, so an empty file (or none) is valid.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The inbound SMTP listener: who may connect, who may relay, and the limits.
    pub server: ServerConfig,
    /// Where durable state lives.
    pub spool: SpoolConfig,
    /// Retry schedule and queue lifetime.
    pub queue: QueueConfig,
    /// Outbound SMTP to destination MX hosts.
    pub delivery: DeliveryConfig,
    /// Which resolver answers MX and address lookups.
    pub dns: DnsConfig,
    /// Named groups of egress IPs; delivery rotates through the pool named by
    /// `delivery.pool`.
    pub pools: Vec<PoolConfig>,
    /// Public DNS blocklists that every egress IP is checked against.
    pub blocklists: Vec<BlocklistConfig>,
    /// How often the blocklists are asked.
    pub listings: ListingsConfig,
    /// The operator's own reply classification rules, tried before the built-in ones.
    pub classify: ClassifyConfig,
    /// How long a block learned from a destination's reply lasts.
    pub blocks: BlocksConfig,
    /// Relays to hand mail to when no egress IP is clean for a destination.
    pub smarthosts: Vec<SmarthostConfig>,
    /// Per-destination choice of pool and fallback smarthost; first match wins.
    pub routes: Vec<RouteConfig>,
    /// The admin HTTP API (queue, health), for the CLI and the operator.
    pub admin: AdminConfig,
    /// How log lines are written.
    pub log: LogConfig,
    /// Where the operator hears about listings and blocks first.
    pub alerts: AlertsConfig,
    /// SMTP AUTH for senders outside `relay_networks`, and the brute-force guard.
    pub auth: AuthConfig,
    /// How much each sender may hand in per hour.
    pub quotas: QuotasConfig,
    /// When a sender looks hacked and is suspended.
    pub suspension: SuspensionConfig,
    /// Per destination site (or egress IP × site): connections, messages per
    /// connection, messages per hour, new connections per minute. First match wins.
    pub shaping: Vec<ShapingConfig>,
    /// Seed-mailbox probes: mail accepted with `250` and then discarded is seen too.
    pub probes: ProbesConfig,
    /// Feedback-loop complaint reports (ARF) read from a mailbox, counted per sender.
    pub complaints: ComplaintsConfig,
    /// Several relays sharing what they learn through Redis.
    pub cluster: ClusterConfig,
    /// DKIM signing at acceptance: whose mail, and the keys of each From: domain.
    pub dkim: DkimConfig,
    /// Bulk-sender rules checked at the end of DATA (one-click unsubscribe).
    pub compliance: ComplianceConfig,
    /// Destinations' published TLS requirements (MTA-STS, DANE).
    pub tls_policy: TlsPolicyConfig,
    /// Daily TLS reports (TLS-RPT) to the destinations that ask for them.
    pub tlsrpt: TlsRptConfig,
    /// The return path sidestep owns: VERP addresses whose late bounces it reads.
    pub bounces: BouncesConfig,
    /// Addresses that hard-bounced, refused at RCPT.
    pub suppression: SuppressionConfig,
}

/// Adds the line of `path` where each error's key is written to the key, as
/// `key (line N)`: for the checks made outside this module too.
pub fn locate(path: &Path, errors: &mut [ConfigError]) {
    if let Ok(text) = std::fs::read_to_string(path) {
        for e in errors {
            if let Some(at) = load::line_of(&text, &e.key) {
                e.key = format!("{} (line {})", e.key, at + 1);
            }
        }
    }
}

impl Config {
    /// Reads and parses a TOML file. Does not validate: call [`Config::validate`].
    ///
    /// # Errors
    /// The file cannot be read, or is not valid TOML for this schema (the message names
    /// the line and key).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        load::parse(&text, path)
    }

    /// Reads a file, parsing what the schema accepts and listing what it refuses (for
    /// `check-config`, which then validates the rest).
    ///
    /// # Errors
    /// The file cannot be read or is not TOML.
    pub fn load_collecting(path: &Path) -> Result<(Self, Vec<ConfigError>), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        load::parse_collecting(&text, path)
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The text is not valid TOML for this schema.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        load::parse(text, Path::new("<config>"))
    }

    /// Every problem in the configuration, each with its key path. Empty means valid.
    pub fn validate(&self) -> Vec<ConfigError> {
        validate::all(self)
    }

    /// Each egress IP with the HELO name it announces (its own, or the host name): what
    /// the reverse-DNS check compares.
    pub fn egress_helos(&self) -> Vec<(IpAddr, String)> {
        let mut out: Vec<(IpAddr, String)> = self
            .pools
            .iter()
            .flat_map(|p| p.egress.iter())
            .filter_map(|e| {
                let helo = e
                    .helo
                    .clone()
                    .unwrap_or_else(|| self.server.hostname.clone());
                e.ip.map(|ip| (ip, helo))
            })
            .collect();
        out.sort();
        out.dedup_by_key(|(ip, _)| *ip);
        out
    }

    /// Every configured egress address, each once: what the DNSBL monitor checks.
    pub fn egress_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .pools
            .iter()
            .flat_map(|p| p.egress.iter().filter_map(|e| e.ip))
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Whether some mail leaves from the host's default source address: an egress
    /// without `ip`, or no `[[pools]]` at all.
    pub fn uses_default_source(&self) -> bool {
        self.effective_pools()
            .iter()
            .flat_map(|p| &p.egress)
            .any(|e| e.ip.is_none())
    }

    /// The pools as configured, or the implicit one used when the file defines none: the
    /// host's default source address, announcing `server.hostname`.
    pub fn effective_pools(&self) -> Vec<PoolConfig> {
        if self.pools.is_empty() {
            vec![PoolConfig {
                name: default_pool_name(),
                egress: vec![EgressConfig {
                    ip: None,
                    helo: None,
                    warmup: Vec::new(),
                    warmup_start: None,
                }],
            }]
        } else {
            self.pools.clone()
        }
    }
}

#[cfg(test)]
mod tests;
