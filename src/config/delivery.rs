//! `[queue]`, `[delivery]`, `[dns]`, `[classify]`, `[shaping]`, egress IPs and pools,
//! smarthosts and routes: how mail leaves.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::*;

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
    /// Whether this smarthost enforces the destinations' MTA-STS and DANE policies on
    /// its own hop. Mail whose destination requires verified TLS (MTA-STS `enforce`, a
    /// DANE TLSA record) is handed only to a smarthost that says so; otherwise it
    /// waits for a clean egress IP.
    #[serde(default)]
    pub enforces_tls_policy: bool,
    /// AUTH user; with `password` or `password_file`.
    pub username: Option<String>,
    /// The password, inline (prefer `password_file`).
    pub password: Option<String>,
    /// File whose first line is the password, so the config file can be world-readable.
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for this smarthost instead of the system's.
    pub ca_file: Option<PathBuf>,
}

pub(super) fn default_submission_port() -> u16 {
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
    /// Deliveries under way at once, over all destinations (each holds one connection).
    /// Idle sessions kept for reuse are counted apart, by `reuse_max_idle`.
    pub max_connections: usize,
    /// Outbound connections open at once to one destination domain, so a burst to one
    /// receiver does not look like an attack and trip its rate limits.
    pub max_connections_per_domain: usize,
    /// Try STARTTLS when the MX offers it. Certificates are not verified (opportunistic TLS,
    /// RFC 7435): an MX with a self-signed certificate still gets encrypted mail.
    pub starttls: bool,
    /// Send a message as one BDAT chunk behind its envelope when the MX offers CHUNKING
    /// and PIPELINING (RFC 3030): one round trip per message instead of two, no
    /// dot-stuffing. Off: DATA always, as Postfix sends.
    pub chunking: bool,
    /// A session whose transaction ended cleanly waits this long for the next message to
    /// the same MX address from the same egress IP, instead of QUIT ("0s": every message
    /// on a new connection). Postfix's `smtp_connection_cache_time_limit`.
    pub reuse_idle: HumanDuration,
    /// No session is reused once it is this old, so a long burst still reconnects now
    /// and then (and a receiver's per-connection limits reset).
    pub reuse_lifetime: HumanDuration,
    /// Messages per session at most; receivers such as Microsoft's cap it.
    pub reuse_messages: u32,
    /// Idle sessions kept at most over all destinations, beside the `max_connections`
    /// busy ones (Postfix's cached sessions do not count against its process limit
    /// either); past it, the session idle longest is closed.
    pub reuse_max_idle: usize,
    /// Take an egress IP out of rotation while its reverse DNS is not forward-confirmed
    /// (no PTR, or the PTR name does not resolve back to it): many receivers refuse
    /// such IPs outright. Checked at start, on reload and with each listings refresh.
    pub require_fcrdns: bool,
    /// PEM certificates that routes with `tls = "verify"` trust instead of the system's
    /// roots (a private CA); MTA-STS policy fetches and MX sessions under an MTA-STS
    /// policy trust them besides the system's roots.
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
    /// Validate DNSSEC for DANE's MX and TLSA lookups (the resolver must pass DNSSEC
    /// records through; if its root keys do not validate, DANE is off and says so).
    pub dnssec: bool,
    /// DNSKEY records (zone-file syntax) trusted as DNSSEC anchors instead of the root
    /// KSKs built in (a private or test root).
    pub trust_anchor: Option<PathBuf>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: HumanDuration::from_secs(5),
            dnssec: true,
            trust_anchor: None,
        }
    }
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

pub(super) fn default_pool_name() -> String {
    "default".to_string()
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
            chunking: true,
            reuse_idle: HumanDuration::from_secs(2),
            reuse_lifetime: HumanDuration::from_secs(300),
            reuse_messages: 100,
            reuse_max_idle: 1000,
            require_fcrdns: false,
            tls_ca_file: None,
            site_down_after: 5,
            site_probe_interval: HumanDuration::from_secs(300),
            spf: SpfMode::Prefer,
        }
    }
}
