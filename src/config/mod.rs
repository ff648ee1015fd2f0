//! The operator's TOML file: serde sections, defaults, and validation.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored option.
//! `Config::load` parses; `Config::validate` collects *every* problem with its key path so
//! `sidestep check-config` can list them all at once.

mod bounces;
mod dkim;
mod duration;
mod error;
mod load;
mod networks;
mod validate;
mod words;

pub use bounces::{BouncesConfig, ReturnDomainConfig, SuppressionConfig, SuppressionScope};
pub use dkim::{ComplianceConfig, DkimAlgorithm, DkimConfig, DkimKeyConfig, OneClick, SignPolicy};
pub use duration::HumanDuration;
pub use error::{ConfigError, LoadError};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use ipnet::IpNet;
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
    /// The return path sidestep owns: VERP addresses whose late bounces it reads.
    pub bounces: BouncesConfig,
    /// Addresses that hard-bounced, refused at RCPT.
    pub suppression: SuppressionConfig,
}

/// `[cluster]`: relays that send from the same egress pools share their blocks through
/// Redis, so that what one learns the others honour. Without it (the default) nothing
/// changes: each node keeps its own state in its spool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:6379/0`; none: no cluster.
    pub redis: Option<String>,
    /// The Redis password (`AUTH`): the first line of this file.
    pub password_file: Option<PathBuf>,
    /// For `rediss://`: PEM certificates Redis's certificate must chain to, instead of
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// This node's name in the shared state; default: the host name.
    pub node: Option<String>,
}

/// `[complaints]`: receivers' feedback loops (Yahoo, Microsoft JMRP, Comcast…) send
/// ARF reports (RFC 5965) to a mailbox; sidestep reads them, finds the sender and egress
/// IP of each complained-about message, and counts them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplaintsConfig {
    /// Read reports at all.
    pub enabled: bool,
    /// The mailbox (as `[probes] imap`); default: the probes' mailbox.
    pub imap: Option<String>,
    /// Its password file; default: the probes' one.
    pub password_file: Option<PathBuf>,
    /// PEM roots for `imaps`; default: the probes' `ca_file`, else the system's.
    pub ca_file: Option<PathBuf>,
    /// Folders holding the reports.
    pub folders: Vec<String>,
    /// How often the mailbox is read.
    pub interval: HumanDuration,
    /// Reports older than this are not read.
    pub since: HumanDuration,
}

impl Default for ComplaintsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            imap: None,
            password_file: None,
            ca_file: None,
            folders: vec!["INBOX".into()],
            interval: HumanDuration::from_secs(300),
            since: HumanDuration::from_secs(14 * 24 * 3600),
        }
    }
}

impl ComplaintsConfig {
    /// The mailbox URL, password file and CA file in use: these, else the probes'.
    pub fn mailbox<'a>(
        &'a self,
        probes: &'a ProbesConfig,
    ) -> (Option<&'a str>, Option<&'a Path>, Option<&'a Path>) {
        let imap = self.imap.as_deref().or(probes.imap.as_deref());
        let from_probes = self.imap.is_none();
        let pick = |own: &'a Option<PathBuf>, theirs: &'a Option<PathBuf>| {
            own.as_deref()
                .or(if from_probes { theirs.as_deref() } else { None })
        };
        (
            imap,
            pick(&self.password_file, &probes.password_file),
            pick(&self.ca_file, &probes.ca_file),
        )
    }
}

/// `[probes]`: every `interval`, one small message from each egress IP to each seed
/// address; one that was accepted but is not in the seed mailbox (read over IMAP) by
/// `deadline` marks the IP as silently discarded by that site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// `imaps://user@host[:993]`, or `imap://user@host:port` for a loopback server only
    /// (the password would cross the network in the clear). None: no probes.
    pub imap: Option<String>,
    /// The IMAP password: the first line of this file.
    pub password_file: Option<PathBuf>,
    /// PEM certificates the IMAP server's certificate must chain to, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// How often each (egress IP, seed site) gets a probe: never more often.
    pub interval: HumanDuration,
    /// A probe accepted with `250` and not in the mailbox this long after is missing.
    pub deadline: HumanDuration,
    /// Where to look for probes; the first is the inbox, the others count as junk.
    pub folders: Vec<String>,
    /// How long a silent discard keeps the IP away from the site when no later probe
    /// arrives (each missing probe renews it).
    pub hold: HumanDuration,
    /// The probes' sender (envelope and From:); default `probe@<server.hostname>`.
    pub from: Option<String>,
    /// The seed recipients: addresses at the destinations that matter, delivering into
    /// the mailbox above (forwarding, or the mailbox's own address at that site).
    pub seeds: Vec<SeedConfig>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            imap: None,
            password_file: None,
            ca_file: None,
            interval: HumanDuration::from_secs(3600),
            deadline: HumanDuration::from_secs(15 * 60),
            folders: vec!["INBOX".into(), "Junk".into()],
            hold: HumanDuration::from_secs(7 * 24 * 3600),
            from: None,
            seeds: Vec::new(),
        }
    }
}

/// `[[probes.seeds]]`: one seed recipient.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// The seed address, at the destination it tests (its MX hosts make the site).
    pub address: String,
}

/// `[[shaping]]`: what a receiver accepts from us. Limits not set are not limited here
/// (`[delivery]` still caps connections per domain).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingConfig {
    /// Patterns matched against the recipient domain, the site, and each MX host name:
    /// `gmail.com`, `*.google.com` (the name and its subdomains), `*`.
    pub sites: Vec<String>,
    /// Only for connections from this egress IP (the IP × site limits); without it, the
    /// limits hold for the whole site, all IPs together.
    pub egress: Option<IpAddr>,
    /// Connections at once.
    pub max_connections: Option<usize>,
    /// Messages per connection; then it is closed and a new one opened.
    pub messages_per_connection: Option<u32>,
    /// Messages per hour (the whole hour's worth may go at once, then evenly).
    pub messages_per_hour: Option<u32>,
    /// New connections per minute.
    pub connections_per_minute: Option<u32>,
}

/// Messages and recipients per hour; `0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    /// Messages accepted per hour.
    pub messages_per_hour: u32,
    /// Recipients accepted per hour, over all messages.
    pub recipients_per_hour: u32,
}

/// `[quotas]`: per-hour limits on what a sender hands in. Over a limit, MAIL or RCPT
/// gets `450 4.7.1` (the client tries later): nothing is accepted and then dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Per logged-in user (AUTH).
    pub user: Quota,
    /// Per client address outside `relay_networks` (the MTA in front is trusted with
    /// the sum of its users).
    pub client: Quota,
    /// Per envelope sender domain (`MAIL FROM`), whoever sends it.
    pub sender_domain: Quota,
    /// Limits for one user, client address or sender domain instead of the defaults.
    pub overrides: Vec<QuotaOverride>,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        let generous = Quota {
            messages_per_hour: 5_000,
            recipients_per_hour: 50_000,
        };
        Self {
            user: generous,
            client: generous,
            sender_domain: Quota::default(),
            overrides: Vec::new(),
        }
    }
}

/// `[[quotas.overrides]]`: one sender's own limits. Exactly one of `user`, `client`,
/// `sender_domain` names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverride {
    /// A user name.
    pub user: Option<String>,
    /// A client address.
    pub client: Option<IpAddr>,
    /// An envelope sender domain.
    pub sender_domain: Option<String>,
    /// Messages per hour (0: no limit).
    #[serde(default)]
    pub messages_per_hour: u32,
    /// Recipients per hour (0: no limit).
    #[serde(default)]
    pub recipients_per_hour: u32,
}

/// `[suspension]`: a sender (a logged-in user, or else the envelope sender's domain)
/// whose recent mail looks like a hacked account's is suspended: new mail from it gets
/// `451 4.7.1` (or `550`), its queued mail is held, the operator is alerted and decides
/// (`sidestep senders release NAME [--bounce]`). Counted over `window`; every threshold
/// needs its minimum count first, so a quiet sender is never suspended on one bad reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuspensionConfig {
    /// Suspend at all.
    pub enabled: bool,
    /// The window recent mail is counted over.
    pub window: HumanDuration,
    /// Refusals that blame the egress IP's reputation (verdict `ip-reputation`) caused by
    /// the sender's mail…
    pub reputation_refusals: u32,
    /// …making at least this share of its delivery attempts.
    pub reputation_ratio: f64,
    /// Permanent unknown-recipient refusals (verdict `recipient`), at least this many…
    pub unknown_recipients: u32,
    /// …making at least this share of its delivery attempts (harvested lists).
    pub unknown_recipient_ratio: f64,
    /// Messages in the window more than this many times the sender's usual volume per
    /// window…
    pub spike_factor: f64,
    /// …and at least this many.
    pub spike_messages: u32,
    /// Feedback-loop complaints about the sender's mail, at least this many…
    pub complaints: u32,
    /// …making at least this share of its delivery attempts.
    pub complaint_ratio: f64,
    /// `temporary` (`451 4.7.1`: the client keeps the mail) or `permanent` (`550 5.7.1`).
    pub reply: SuspendedReply,
    /// Bounces (in the session and late, hard and soft) at least this share of the
    /// sender's delivery attempts, with `unknown_recipients` of them at least; none: not
    /// used.
    pub bounce_ratio: Option<f64>,
}

/// How mail from a suspended sender is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuspendedReply {
    /// `451 4.7.1`.
    #[default]
    Temporary,
    /// `550 5.7.1`.
    Permanent,
}

impl Default for SuspensionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: HumanDuration::from_secs(3600),
            reputation_refusals: 20,
            reputation_ratio: 0.1,
            unknown_recipients: 50,
            unknown_recipient_ratio: 0.3,
            spike_factor: 10.0,
            spike_messages: 1000,
            complaints: 5,
            complaint_ratio: 0.003,
            reply: SuspendedReply::Temporary,
            bounce_ratio: None,
        }
    }
}

/// `[auth]`: who may relay from anywhere by logging in (AUTH PLAIN and LOGIN, offered
/// only under TLS), and how password guessing is slowed and stopped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// One user per line, `name:argon2id-hash[:domain,domain…]` (`sidestep passwd NAME`
    /// prints the line). The optional domains are the only ones the user may send from
    /// (`MAIL FROM`). Without a file, AUTH is not offered. Re-read when it changes.
    pub users_file: Option<PathBuf>,
    /// Offer AUTH without TLS to clients on loopback (an MTA or tool on this host).
    pub allow_plaintext_loopback: bool,
    /// A failed AUTH is answered after this delay, doubled for each failure of the same
    /// client address in `failure_window` (up to 16 times it).
    pub failure_delay: HumanDuration,
    /// Failures from one client address within `failure_window` that lock it out of
    /// AUTH for `lockout` (`454 4.7.0`).
    pub max_failures: u32,
    /// The window in which failures are counted.
    pub failure_window: HumanDuration,
    /// How long a client address stays locked out of AUTH.
    pub lockout: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            users_file: None,
            allow_plaintext_loopback: false,
            failure_delay: HumanDuration::from_secs(1),
            max_failures: 5,
            failure_window: HumanDuration::from_secs(15 * 60),
            lockout: HumanDuration::from_secs(3600),
        }
    }
}

/// `[alerts]`: events POSTed as JSON to a webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// `http://` or `https://host:port/path` that gets each event as a JSON POST; none:
    /// no webhook.
    pub webhook: Option<String>,
    /// PEM certificates an https webhook's certificate must chain to, instead of the
    /// system's roots (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// The same event for the same IP and site is sent again only after this long.
    pub repeat_after: HumanDuration,
    /// At most this many alerts an hour, whatever happens.
    pub max_per_hour: u32,
    /// An address that gets each alert as a mail too, sent through the relay's own queue
    /// from `postmaster@<hostname>` (with a null envelope sender: no bounce loops).
    pub mail: Option<String>,
    /// Warn when the spool's file system has less free space than this, in percent.
    pub spool_free_below: u8,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            ca_file: None,
            repeat_after: HumanDuration::from_secs(3600),
            max_per_hour: 60,
            mail: None,
            spool_free_below: 10,
        }
    }
}

/// `[log]`: the form of the log lines on stderr.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (one `key=value` line per event, for people and grep) or `json` (one JSON
    /// object per line, for log pipelines).
    pub format: LogFormat,
}

/// The form of the log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[admin]`: the HTTP API the CLI uses, off the public internet by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener, `ip:port`; `""` turns it off. Clients on loopback
    /// need no credentials; any other needs the bearer token of `token_file`.
    pub listen: String,
    /// A file whose first line is the bearer token clients from other hosts must send
    /// (`Authorization: Bearer ...`). Without it, only `trusted_networks` are served.
    pub token_file: Option<PathBuf>,
    /// Clients that need no token: loopback by default.
    #[serde(deserialize_with = "networks::deserialize")]
    pub trusted_networks: Vec<IpNet>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8025".into(),
            token_file: None,
            trusted_networks: default_relay_networks(),
        }
    }
}

impl AdminConfig {
    /// The listen address, `None` when the listener is off.
    ///
    /// # Errors
    /// The address does not parse (validation reports it first).
    pub fn address(&self) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
        match self.listen.trim() {
            "" => Ok(None),
            a => a.parse().map(Some),
        }
    }
}

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

/// How a smarthost connection is encrypted. Plain text is not offered: the fallback
/// carries credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// STARTTLS is required (submission, port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (submissions, port 465).
    Implicit,
}

/// `[[smarthosts]]`: a relay that takes our mail when our own IPs cannot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmarthostConfig {
    /// Name that routes refer to.
    pub name: String,
    /// Host name (checked against its certificate) or address.
    pub host: String,
    #[serde(default = "default_submission_port")]
    /// Its SMTP port (587 for STARTTLS, 465 for implicit TLS).
    pub port: u16,
    #[serde(default)]
    /// How the session is encrypted: `starttls` or `implicit`.
    pub tls: SmarthostTls,
    /// AUTH user; with `password` or `password_file`.
    pub username: Option<String>,
    /// The password, inline (prefer `password_file`).
    pub password: Option<String>,
    /// File whose first line is the password, so the config file can be world-readable.
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for this smarthost instead of the system's.
    pub ca_file: Option<PathBuf>,
}

fn default_submission_port() -> u16 {
    587
}

/// `[[routes]]`: which pool and fallback serve which recipient domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domains: `example.com`, `*.example.com` (subdomains and the domain
    /// itself) or `*` (everything).
    pub domains: Vec<String>,
    /// Egress pool; default `delivery.pool`.
    pub pool: Option<String>,
    /// Smarthost for mail no egress IP may carry; default `delivery.fallback`.
    pub fallback: Option<String>,
    /// TLS toward these destinations: `opportunistic` (the default: STARTTLS when
    /// offered, certificate not checked, plain text if TLS fails) or `verify` (STARTTLS
    /// required and the MX host's certificate must verify for its name; otherwise the
    /// mail waits, never goes in the clear).
    #[serde(default)]
    pub tls: TlsPolicy,
}

/// How outbound connections use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// STARTTLS when offered, without checking the certificate; plain text otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS required, with a certificate that verifies for the MX host name.
    Verify,
}

impl RouteConfig {
    /// Whether the route covers `domain`: `*` every domain, `*.example.com` that domain
    /// and its subdomains, anything else that domain exactly; case does not matter. Runs
    /// per delivery, so it compares in place (patterns are lower-cased at load).
    pub fn matches(&self, domain: &str) -> bool {
        self.domains.iter().any(|p| name_matches(p, domain))
    }
}

/// Whether `name` matches a domain pattern of routes and shaping rules: `*` anything,
/// `*.example.com` that name and its subdomains, anything else that name exactly; case
/// does not matter. Compares in place: it runs per delivery.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        _ if pattern == "*" => true,
        Some(parent) => {
            let cut = name.len().checked_sub(parent.len());
            cut.is_some_and(|cut| {
                name.is_char_boundary(cut)
                    && name[cut..].eq_ignore_ascii_case(parent)
                    && (cut == 0 || name.as_bytes()[cut - 1] == b'.')
            })
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// `[classify]`: operator rules for reply classification.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// `[[classify.rules]]`: name, verdict, pattern, optional codes; first match wins.
    pub rules: Vec<crate::classify::RuleConfig>,
}

/// `[server]`: the relay port that the MTA or newsletter tool talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Port 0 picks a free port (tests use this).
    pub listen: SocketAddr,
    /// Name announced in the greeting, EHLO reply, `Received:` header and DSNs.
    pub hostname: String,
    /// Client networks allowed to relay. Anyone else is refused at RCPT with `554 5.7.1`:
    /// sidestep has no local domains, so an unlisted client can never send anything.
    #[serde(deserialize_with = "networks::deserialize")]
    pub relay_networks: Vec<IpNet>,
    /// Sessions beyond this many get `421 4.7.0` and are closed, so a flood of
    /// connections cannot exhaust memory or file descriptors.
    pub max_sessions: usize,
    /// Largest message accepted (advertised in EHLO SIZE); bigger ones get `552 5.3.4`.
    pub max_message_size: ByteSize,
    /// Recipients per message; more get `452 4.5.3` (RFC 5321 §4.5.3.1.10: the client
    /// sends the rest in another transaction).
    pub max_recipients: usize,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 requires at least 512).
    pub max_line_length: usize,
    /// Each command must arrive, and each reply wait for the next command, within this;
    /// a client that trickles bytes gets no more time (Postfix's per-request deadline).
    /// Past it: `421 4.4.2`.
    pub idle_timeout: HumanDuration,
    /// Message content (DATA, BDAT) must come at least this fast, in bytes per second:
    /// each read adds its bytes' worth of time to the deadline (Postfix's
    /// smtpd_min_data_rate).
    pub min_data_rate: u64,
    /// The timeout instead of `idle_timeout` while the session table is 7/8 full, so idle
    /// and slow clients give their slots back quickly (Postfix's stress mode).
    pub stress_timeout: HumanDuration,
    /// Sessions only clients in `relay_networks` may take: outsiders can never fill the
    /// port. Default: a tenth of `max_sessions`.
    pub reserved_sessions: Option<usize>,
    /// Concurrent sessions from one address outside `relay_networks`.
    pub max_sessions_per_ip: usize,
    /// New connections per minute from one address outside `relay_networks`.
    pub max_connection_rate_per_ip: u32,
    /// On SIGTERM/SIGINT: how long sessions may finish their transaction and deliveries
    /// in flight may finish, before the process exits anyway (a second signal exits at
    /// once). Deliveries cut short are sent again after the restart.
    pub drain_timeout: HumanDuration,
    /// PEM certificate chain for STARTTLS (and `listen_tls`); with `tls_key`, STARTTLS is
    /// offered. Re-read on reload.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of `tls_certificate`.
    pub tls_key: Option<PathBuf>,
    /// An implicit-TLS listener (submissions, port 465): TLS from the first byte. Needs
    /// `tls_certificate` and `tls_key`.
    pub listen_tls: Option<SocketAddr>,
}

/// `[spool]`: message files and the state database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory holding message bodies (`msg/`) and the queue index (`queue.redb`).
    pub directory: PathBuf,
}

/// `[queue]`: when to try again and when to give up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Delay before the first retry (Postfix: `minimal_backoff_time`, 300 s).
    pub retry_initial: HumanDuration,
    /// Each further retry waits this many times longer than the previous one.
    pub retry_factor: f64,
    /// Upper bound of a retry delay (Postfix: `maximal_backoff_time`, 4000 s).
    pub retry_max: HumanDuration,
    /// A recipient still undelivered after this long is bounced with a DSN
    /// (Postfix: `maximal_queue_lifetime`, 5 days).
    pub max_lifetime: HumanDuration,
    /// Each retry comes due up to this share of its delay later, at random, so mail
    /// deferred together (one destination's outage) never comes due in one instant.
    pub retry_jitter: f64,
}

/// `[delivery]`: outbound SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Destination port on MX hosts. 25 in production; tests point it at loopback sinks.
    pub port: u16,
    /// The egress pool used for direct delivery.
    pub pool: String,
    /// Smarthost (by name) for mail that no egress IP may carry, unless a route says
    /// otherwise. Without one, such mail waits for a block to expire.
    pub fallback: Option<String>,
    /// Sites whose MX hosts all end in one of these suffixes are one site (a block
    /// learned from `a.mail.protection.outlook.com` holds for every Microsoft 365 MX).
    pub site_rollup: Vec<String>,
    /// TCP connect timeout per MX address.
    pub connect_timeout: HumanDuration,
    /// Timeout for each SMTP command reply (RFC 5321 §4.5.3.2 suggests minutes; a slow
    /// receiver is still better than a resend).
    pub command_timeout: HumanDuration,
    /// Outbound connections open at once, over all destinations.
    pub max_connections: usize,
    /// Outbound connections open at once to one destination domain, so a burst to one
    /// receiver does not look like an attack and trip its rate limits.
    pub max_connections_per_domain: usize,
    /// Try STARTTLS when the MX offers it. Certificates are not verified (opportunistic TLS,
    /// RFC 7435): an MX with a self-signed certificate still gets encrypted mail.
    pub starttls: bool,
    /// A session whose transaction ended cleanly waits this long for the next message to
    /// the same MX address from the same egress IP, instead of QUIT ("0s": every message
    /// on a new connection). Postfix's `smtp_connection_cache_time_limit`.
    pub reuse_idle: HumanDuration,
    /// No session is reused once it is this old, so a long burst still reconnects now
    /// and then (and a receiver's per-connection limits reset).
    pub reuse_lifetime: HumanDuration,
    /// Messages per session at most; receivers such as Microsoft's cap it.
    pub reuse_messages: u32,
    /// Take an egress IP out of rotation while its reverse DNS is not forward-confirmed
    /// (no PTR, or the PTR name does not resolve back to it): many receivers refuse
    /// such IPs outright. Checked at start, on reload and with each listings refresh.
    pub require_fcrdns: bool,
    /// PEM certificates that routes with `tls = "verify"` trust instead of the system's
    /// roots (a private CA).
    pub tls_ca_file: Option<PathBuf>,
    /// Deliveries in a row to a site where no MX answered at all (connections refused
    /// or timed out, from any egress IP) before the site is marked down: its mail is
    /// parked, one probe delivery at a time tests it. 0: never.
    pub site_down_after: u32,
    /// The longest wait between two probes of a down site. They go at the pace of the
    /// `[queue]` retry schedule when that is quicker: parking a site never makes its mail
    /// wait longer than the retry schedule promises.
    pub site_probe_interval: HumanDuration,
    /// Whether the egress IP (or fallback smarthost) is chosen by the sender's SPF: an IP
    /// outside the MAIL FROM domain's SPF turns a reputation save into a DMARC failure.
    pub spf: SpfMode,
}

/// How SPF steers the choice of egress IP (`[delivery] spf`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfMode {
    /// Clean IPs that SPF authorises first; when none is usable, the others (with a
    /// warning) rather than wait.
    #[default]
    Prefer,
    /// Only IPs (or a smarthost) that SPF authorises; otherwise the mail waits, never
    /// bounces, and the operator is alerted (`spf-unauthorised`).
    Require,
    /// SPF plays no part in the choice.
    Off,
}

/// `[dns]`: the resolver for MX, address and blocklist lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers as `ip:port`. Empty means the system configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// How long to wait for one answer before trying again (twice) or giving up.
    pub timeout: HumanDuration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: HumanDuration::from_secs(5),
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

fn default_true() -> bool {
    true
}

/// `[[pools]]`: a named group of egress IPs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Name that `delivery.pool` refers to.
    pub name: String,
    /// The addresses in this pool, used round-robin, one per new connection.
    pub egress: Vec<EgressConfig>,
}

/// `[[pools.egress]]`: one local address to send from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Local address to bind. Omitted: the host's default source address.
    pub ip: Option<IpAddr>,
    /// EHLO name for connections from this address; receivers compare it with the PTR
    /// record of the IP, so it should be the IP's reverse DNS name.
    pub helo: Option<String>,
    /// A new IP's warmup: messages per destination site on day 1, 2, … (e.g. `[50,
    /// 100, 500, 1000, 5000]`); mail beyond the day's cap for a site goes from other IPs
    /// of the pool or waits for the next (UTC) day. After the last day: no cap.
    #[serde(default)]
    pub warmup: Vec<u32>,
    /// Day 1 of the warmup, `YYYY-MM-DD` (UTC); default: the day the relay first runs
    /// with the schedule.
    #[serde(default)]
    pub warmup_start: Option<String>,
}

/// Days since the Unix epoch of a `YYYY-MM-DD` date.
pub fn epoch_day(date: &str) -> Option<u64> {
    let mut parts = date.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let d = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    u64::try_from(i64::from(d.to_julian_day()) - 2_440_588).ok()
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_relay_networks() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
}

fn default_pool_name() -> String {
    "default".to_string()
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: default_hostname(),
            relay_networks: default_relay_networks(),
            max_sessions: 200,
            max_message_size: ByteSize::mib(25),
            max_recipients: 1000,
            max_line_length: 2048,
            idle_timeout: HumanDuration::from_secs(300),
            min_data_rate: 500,
            stress_timeout: HumanDuration::from_secs(10),
            reserved_sessions: None,
            max_sessions_per_ip: 20,
            max_connection_rate_per_ip: 120,
            drain_timeout: HumanDuration::from_secs(30),
            tls_certificate: None,
            tls_key: None,
            listen_tls: None,
        }
    }
}

impl ServerConfig {
    /// `reserved_sessions`, or its default: a tenth of `max_sessions`.
    pub fn reserved(&self) -> usize {
        self.reserved_sessions
            .unwrap_or(self.max_sessions / 10)
            .min(self.max_sessions)
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("sidestep-spool"),
        }
    }
}

impl QueueConfig {
    /// Delay after the `attempt`-th failed attempt (1-based): `retry_initial` times
    /// `retry_factor` to the power `attempt - 1`, capped at `retry_max`. Here because
    /// both the queue (messages) and routing (down sites' probes) keep this pace.
    pub fn retry_delay(&self, attempt: u32) -> std::time::Duration {
        let initial = self.retry_initial.get().as_secs_f64();
        let max = self.retry_max.get().as_secs_f64();
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = (initial * self.retry_factor.powi(exp)).min(max);
        std::time::Duration::from_secs_f64(secs.max(0.0))
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retry_initial: HumanDuration::from_secs(300),
            retry_factor: 2.0,
            retry_max: HumanDuration::from_secs(3600),
            max_lifetime: HumanDuration::from_secs(5 * 24 * 3600),
            retry_jitter: 0.1,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            port: 25,
            pool: default_pool_name(),
            fallback: None,
            site_rollup: Vec::new(),
            connect_timeout: HumanDuration::from_secs(30),
            command_timeout: HumanDuration::from_secs(300),
            max_connections: 100,
            max_connections_per_domain: 10,
            starttls: true,
            reuse_idle: HumanDuration::from_secs(2),
            reuse_lifetime: HumanDuration::from_secs(300),
            reuse_messages: 100,
            require_fcrdns: false,
            tls_ca_file: None,
            site_down_after: 5,
            site_probe_interval: HumanDuration::from_secs(300),
            spf: SpfMode::Prefer,
        }
    }
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
