//! The `sidestep` command line: one file per subcommand.

mod admin_client;
mod auth;
mod blocks;
mod bounces;
mod check_config;
mod classify;
mod complaints;
mod delist_report;
mod dkim;
mod dnsbl_check;
mod listings;
mod logs;
mod passwd;
mod probes;
mod queue;
mod reload;
mod senders;
mod serve;
mod suppressions;
mod tls;
mod warmup;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use auth::auth;
pub use blocks::blocks;
pub use check_config::check_config;
pub use classify::{ClassifyMode, classify};
pub use complaints::complaints;
pub use delist_report::delist_report;
pub use dkim::{dkim_check, dkim_keygen};
pub use dnsbl_check::dnsbl_check;
pub use listings::listings;
pub use logs::BatchedStderr;
pub use passwd::passwd;
pub use probes::probes;
pub use queue::{
    Filter as QueueFilter, QueueCommand, QueueView, command as queue_command, queue, suspension,
};
pub use reload::{Reloader, Running, reload};
pub use senders::senders;
pub use serve::serve;
pub use suppressions::{SuppressionsAction, suppressions};
pub use tls::tls;
pub use warmup::warmup;

/// Outbound SMTP relay that keeps mail flowing when an egress IP is blocklisted.
#[derive(Debug, Parser)]
#[command(name = "sidestep", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each has a file of its own in `src/cli/`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay. Without --config, the embedded defaults: listen on
    /// 127.0.0.1:2525, relay from loopback only, spool in ./sidestep-spool.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; print every problem with its key; exit 1 if any.
    CheckConfig {
        /// Configuration file (TOML); without it the embedded defaults are checked.
        #[arg(long = "config", short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// The file, as a positional argument (the same as --config).
        #[arg(conflicts_with = "config", value_name = "FILE")]
        path: Option<PathBuf>,
    },
    /// Show every egress IP with its state on every configured blocklist (clean, listed
    /// with code, reason, since when and removal URL, error, broken list).
    Listings {
        /// Configuration file (TOML); the spool directory named there holds the relay's
        /// state. Without it, the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (one JSON document).
        #[arg(long)]
        json: bool,
    },
    /// Classify a remote SMTP reply: prints the verdict (delivered, transient, recipient,
    /// message, policy, throttle, greylist, ip-reputation, domain-reputation) and the rule.
    /// Without REPLY, classifies each line of standard input.
    Classify {
        /// Configuration file (TOML), for its [[classify.rules]] and spool directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (one JSON object per reply; one document otherwise).
        #[arg(long)]
        json: bool,
        /// Show the replies no rule blamed on the IP that a second egress IP then got
        /// past (from the relay's state), each with a rule that would catch it.
        #[arg(long, conflicts_with_all = ["reply", "eval"])]
        learned: bool,
        /// Measure the rules on a labelled corpus (JSONL: {"reply": ..., "verdict": ...}
        /// per line): accuracy, confusion matrix, every miss with the rule that fired.
        #[arg(long, value_name = "FILE", conflicts_with = "reply")]
        eval: Option<PathBuf>,
        /// With --eval: exit 1 when the accuracy (in percent) is below this.
        #[arg(long, value_name = "PERCENT", requires = "eval")]
        floor: Option<f64>,
        /// The reply text, e.g. "550 5.7.1 ... blocked using CSI".
        reply: Option<String>,
    },
    /// List the blocks learned from destinations' replies, with their evidence.
    Blocks {
        /// Configuration file (TOML); the spool directory named there holds the relay's
        /// state. Without it, the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (one JSON document).
        #[arg(long)]
        json: bool,
    },
    /// Print what a delisting form asks for about one egress IP: every list and site
    /// that refuses it, since when, the exact reply and log line, where to ask.
    DelistReport {
        /// Configuration file (TOML); the spool directory named there holds the relay's
        /// state. Without it, the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (one JSON document).
        #[arg(long)]
        json: bool,
        /// The egress IP to report on (IPv4 or IPv6).
        ip: std::net::IpAddr,
    },
    /// Show the running relay's queue (through its admin API): counts by state and
    /// domain; `list` the messages; `show` one.
    Queue {
        /// Configuration file (TOML): where the admin API listens. Without it, the
        /// embedded defaults.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long, global = true)]
        json: bool,
        /// What to show; the summary without one.
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Attempt queued mail now instead of at its due time: one message, a domain's, or
    /// all of it.
    Flush {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// Only messages with a pending recipient in this domain.
        #[arg(long, conflicts_with = "id")]
        domain: Option<String>,
        /// Only messages with a pending recipient at this destination site (as `sidestep
        /// queue` lists them, e.g. `mx1.bell.ca,mx2.bell.ca`).
        #[arg(long, conflicts_with = "id")]
        site: Option<String>,
        /// Only messages with a pending recipient last tried from this egress IP (or
        /// `smarthost:NAME`).
        #[arg(long, conflicts_with = "id")]
        egress: Option<String>,
        /// Only this message (its queue id).
        id: Option<String>,
    },
    /// Keep a queued message, never attempted, until released.
    Hold {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// The message's queue id.
        id: String,
    },
    /// Attempt a held message now.
    Release {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// The message's queue id.
        id: String,
    },
    /// Remove a queued message: quietly, or with --bounce a DSN to its sender quoting
    /// the reason.
    Delete {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// Bounce the pending recipients with a DSN that quotes this reason.
        #[arg(long, value_name = "REASON")]
        bounce: Option<String>,
        /// The message's queue id.
        id: String,
    },
    /// Keep an egress IP away from a site (or every site) for a while: routing treats it
    /// as a block, `blocks` shows it as manual, it survives restarts and expires.
    Suspend {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// The site, as `sidestep blocks` names it (its MX hosts); every site without it.
        #[arg(long)]
        site: Option<String>,
        /// How long, e.g. 4h.
        #[arg(long = "for", value_name = "DURATION")]
        period: String,
        /// Why, for the record and the delisting report.
        #[arg(long)]
        reason: String,
        /// The egress IP.
        ip: std::net::IpAddr,
    },
    /// End a block or suspension of an egress IP now.
    Lift {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// The site, as `sidestep blocks` names it; the every-site suspension without it.
        #[arg(long)]
        site: Option<String>,
        /// The egress IP.
        ip: std::net::IpAddr,
    },
    /// Make the running relay re-read its configuration file: validated first, kept out
    /// if anything is wrong (every problem is printed), else in force for new sessions
    /// and attempts. Settings that need a restart are named.
    Reload {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Suspended senders (through the running relay's admin API): who, why, the
    /// evidence; each sender's bounce and complaint rates; `release NAME` lets one send
    /// again.
    Senders {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Machine-readable output: `{"suspended", "bounce_rates", "complaint_rates"}`
        /// (the release's result for `release`).
        #[arg(long, global = true)]
        json: bool,
        /// What to do; the list without one.
        #[command(subcommand)]
        action: Option<SendersAction>,
    },
    /// A destination's TLS policy (through the running relay's admin API): MTA-STS mode
    /// and MX patterns, DANE TLSA records and DNSSEC, the TLS-RPT address, and the last
    /// session per MX host; `--report today|yesterday` sends that day's TLS reports now.
    Tls {
        /// The recipient domain.
        domain: Option<String>,
        /// Send the TLS reports of `today` (so far) or `yesterday` now.
        #[arg(long)]
        report: Option<String>,
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
    },
    /// Warming egress IPs (through the running relay's admin API): the day of each
    /// one's schedule, today's cap per site and what was sent.
    Warmup {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
    },
    /// Seed probes (through the running relay's admin API): per egress IP and seed, the
    /// latest probe: sent, arrived (inbox or junk), missing (silently discarded), refused.
    Probes {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
    },
    /// Feedback-loop complaints (through the running relay's admin API): counts per
    /// sender and egress IP, and the latest reports.
    Complaints {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
    },
    /// The suppression list (through the running relay's admin API): addresses that
    /// hard-bounced, refused at RCPT; list, add, remove, CSV import and export.
    Suppressions {
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
        /// What to do; the list without one.
        #[command(subcommand)]
        action: Option<SuppressionsAction>,
    },
    /// What receivers check about a sender domain's mail from this relay: SPF for each
    /// egress IP and smarthost, IPs receivers refused for authentication, DKIM keys,
    /// DMARC, reverse DNS and the bulk-sender checklist (asks the running relay).
    Auth {
        /// The sender domain (the MAIL FROM / From: domain).
        domain: String,
        /// Configuration file (TOML): where the admin API listens.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (the API's JSON).
        #[arg(long)]
        json: bool,
    },
    /// Print the `[auth] users_file` line for a user: reads the password from the
    /// terminal (twice, without echo) or one line of stdin, hashes it with argon2id.
    Passwd {
        /// The user name (what the client logs in with).
        name: String,
        /// The only sender domains this user may use in MAIL FROM (any, without).
        #[arg(long = "domain")]
        domains: Vec<String>,
    },
    /// DKIM keys: make one, or check that DNS publishes the configured ones.
    Dkim {
        /// What to do.
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Check addresses against the configured blocklists once, now.
    DnsblCheck {
        /// Configuration file (TOML), for its [[blocklists]] and [dns]. Without it, the
        /// embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (one JSON document).
        #[arg(long)]
        json: bool,
        /// Addresses to check (IPv4 or IPv6).
        #[arg(required = true)]
        ips: Vec<std::net::IpAddr>,
    },
}

/// `sidestep dkim` actions.
#[derive(Debug, Subcommand)]
pub enum DkimAction {
    /// Make a private key (written with mode 0600; an existing file is never replaced)
    /// and print the TXT record to publish for it.
    Keygen {
        /// The signing domain (`d=`).
        #[arg(long)]
        domain: String,
        /// The selector (`s=`): the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// `rsa` (what every verifier reads) or `ed25519` (RFC 8463).
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: KeyAlgorithm,
        /// RSA key size (2048 to 4096).
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the PEM key.
        #[arg(long)]
        out: PathBuf,
    },
    /// For each configured key, whether DNS (through the configured resolver) publishes
    /// it: published, missing or mismatch. Exits 1 unless all are published.
    Check {
        /// Configuration file (TOML), for its [[dkim.keys]] and [dns].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output (one JSON document).
        #[arg(long)]
        json: bool,
    },
}

/// A key type for `sidestep dkim keygen`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA with SHA-256.
    Rsa,
    /// Ed25519 with SHA-256.
    Ed25519,
}

impl From<KeyAlgorithm> for crate::config::DkimAlgorithm {
    fn from(a: KeyAlgorithm) -> Self {
        match a {
            KeyAlgorithm::Rsa => Self::RsaSha256,
            KeyAlgorithm::Ed25519 => Self::Ed25519Sha256,
        }
    }
}

/// `sidestep senders` actions.
#[derive(Debug, Subcommand)]
pub enum SendersAction {
    /// End a suspension: the sender may send again, its held mail goes out (or, with
    /// `--bounce`, back to its senders with a DSN).
    Release {
        /// `user:NAME`, `domain:NAME`, or a bare user or domain name.
        name: String,
        /// Return the held mail to its senders instead of delivering it.
        #[arg(long)]
        bounce: bool,
    },
}

/// `sidestep queue` actions.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// The messages, oldest first.
    List {
        /// Only messages with a pending recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages with a pending recipient at this destination site.
        #[arg(long)]
        site: Option<String>,
        /// Only messages with a pending recipient last tried from this egress IP (or
        /// `smarthost:NAME`).
        #[arg(long)]
        egress: Option<String>,
        /// Only messages in this state: active (an attempt under way), deferred (waiting
        /// for its next attempt) or held (until `sidestep release`).
        #[arg(long, value_parser = crate::admin::api::QUEUE_STATES)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message: envelope, every recipient with its last reply, next attempt.
    Show {
        /// The queue id (from the `250` reply or a log line).
        id: String,
    },
}

/// Loads the configuration (or the defaults) and refuses an invalid one.
pub(crate) fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<crate::config::Config> {
    let (config, errors) = match path {
        Some(p) => {
            let config = crate::config::Config::load(p)?;
            let errors = check_config::problems(&config, Some(p));
            (config, errors)
        }
        None => {
            let config = crate::config::Config::default();
            let errors = check_config::problems(&config, None);
            (config, errors)
        }
    };
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::bail!("invalid configuration:\n{}", list.join("\n"));
    }
    Ok(config)
}

/// The relay's reputation state (listings, blocks, learned replies): from its admin API
/// while it runs (the state in memory), else from the state file it keeps.
pub(crate) fn load_state(
    config: &crate::config::Config,
) -> anyhow::Result<crate::reputation::ReputationReport> {
    if let Some(report) = state_from_api(config) {
        return Ok(report);
    }
    crate::reputation::read_report(&config.spool.directory).map_err(|e| {
        anyhow::anyhow!(
            "no state in {} ({e}); has sidestep run with this spool?",
            config.spool.directory.display()
        )
    })
}

/// The running relay's state through `GET /api/v1/listings`, if it answers at once.
fn state_from_api(config: &crate::config::Config) -> Option<crate::reputation::ReputationReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            admin_client::get(config, "/api/v1/listings"),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice(&body).ok()
    })
}
