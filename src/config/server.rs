//! `[server]`, `[auth]`, `[admin]`, `[log]`, `[spool]`: the relay's own listeners, who
//! may use them, and where it keeps its state.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use ipnet::IpNet;
use serde::Deserialize;

use super::*;

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

pub(super) fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

pub(super) fn default_relay_networks() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
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
