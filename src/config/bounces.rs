//! `[bounces]` and `[suppression]`: the return path sidestep owns (VERP addresses on a
//! bounce domain, so a bounce that comes days later is tied to the message, recipient,
//! egress IP and site that drew it) and the list of addresses not to mail again. Plain
//! data; the secret is read by `returnpath`, the list kept by `suppression`.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{ConfigError, HumanDuration};

/// `[bounces]`: off unless `domain` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BouncesConfig {
    /// The bounce domain: each attempt's MAIL FROM becomes `b-TOKEN@domain` (its MX
    /// points at this relay, its SPF authorises every egress IP and smarthost). None: the
    /// sender's own address goes out, as before.
    pub domain: Option<String>,
    /// The HMAC key that authenticates the tokens (its bytes, whole file; 16 bytes at
    /// least). A reload with a new one keeps verifying the previous one for `keep_sent`;
    /// a restart forgets it, orphaning the bounces of mail sent before.
    pub secret_file: Option<PathBuf>,
    /// Per-sender return-path domains, so SPF aligns (relaxed) with the From: domain: the
    /// customer points `domain` at the relay with an MX (or CNAME), as ESPs ask.
    pub domains: Vec<ReturnDomainConfig>,
    /// An extra listener that takes only bounces (port 25 of the host's MX address); the
    /// relay listener takes them too.
    pub listen: Option<SocketAddr>,
    /// The original sender still gets one DSN quoting the receiver's text.
    pub forward: bool,
    /// A bounce larger than this is refused (`552`): DSNs quote headers, not archives.
    pub max_size: ByteSize,
    /// Bounce transactions a client outside `relay_networks` may start per minute.
    pub rate_per_minute: u32,
    /// How long a message that left the spool is remembered for its late bounces.
    pub keep_sent: HumanDuration,
}

/// One `[[bounces.domains]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnDomainConfig {
    /// The envelope sender domain this applies to (`example.com`).
    pub sender: String,
    /// Its return-path domain (`rp.example.com`).
    pub domain: String,
}

impl Default for BouncesConfig {
    fn default() -> Self {
        Self {
            domain: None,
            secret_file: None,
            domains: Vec::new(),
            listen: None,
            forward: true,
            max_size: ByteSize::mib(5),
            rate_per_minute: 120,
            keep_sent: HumanDuration::from_secs(30 * 86_400),
        }
    }
}

impl BouncesConfig {
    /// Whether VERP return paths are on.
    pub fn enabled(&self) -> bool {
        self.domain.is_some()
    }

    /// Every bounce domain, lowercase: the default one and the per-sender ones.
    pub fn all_domains(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .domain
            .iter()
            .chain(self.domains.iter().map(|d| &d.domain))
            .map(|d| d.to_ascii_lowercase())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether mail to `domain` is a bounce for this relay (local, never relayed).
    pub fn is_bounce_domain(&self, domain: &str) -> bool {
        self.enabled()
            && (self
                .domain
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(domain))
                || self
                    .domains
                    .iter()
                    .any(|d| d.domain.eq_ignore_ascii_case(domain)))
    }

    pub(super) fn problems(&self, err: &mut impl FnMut(String, String)) {
        if !self.enabled() {
            if !self.domains.is_empty() || self.listen.is_some() {
                err(
                    "bounces.domain".into(),
                    "[[bounces.domains]] and listen need the default bounce domain".into(),
                );
            }
            return;
        }
        let bad_name = |d: &str| {
            d.is_empty() || d.contains(['@', ' ', '<', '>']) || !d.contains('.') || d.len() > 253
        };
        if let Some(d) = &self.domain
            && bad_name(d)
        {
            err(
                "bounces.domain".into(),
                format!("{d:?} is not a domain name"),
            );
        }
        for (i, d) in self.domains.iter().enumerate() {
            if bad_name(&d.domain) {
                err(
                    format!("bounces.domains[{i}].domain"),
                    format!("{:?} is not a domain name", d.domain),
                );
            }
            if bad_name(&d.sender) {
                err(
                    format!("bounces.domains[{i}].sender"),
                    format!("{:?} is not a domain name", d.sender),
                );
            }
        }
        match &self.secret_file {
            None => err(
                "bounces.secret_file".into(),
                "required with a bounce domain: the tokens are authenticated with it".into(),
            ),
            Some(path) => match std::fs::read(path) {
                Ok(bytes) if bytes.len() < 16 => err(
                    "bounces.secret_file".into(),
                    format!("{}: 16 bytes at least", path.display()),
                ),
                Ok(_) => {}
                Err(e) => err(
                    "bounces.secret_file".into(),
                    format!("cannot read {}: {e}", path.display()),
                ),
            },
        }
        if self.rate_per_minute == 0 {
            err(
                "bounces.rate_per_minute".into(),
                "0 would refuse every bounce".into(),
            );
        }
        if self.keep_sent.is_zero() {
            err(
                "bounces.keep_sent".into(),
                "0 would forget every message before its bounce".into(),
            );
        }
    }
}

/// `[suppression]`: addresses that hard-bounced are refused at RCPT (`550 5.1.1`) until
/// they expire or the operator removes them, so list managers unsubscribe them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionConfig {
    /// Keep and apply the list; default: on when `[bounces] domain` is set.
    pub enabled: Option<bool>,
    /// `sender`: an address is refused to the sender domain whose mail bounced;
    /// `global`: to everyone.
    pub scope: SuppressionScope,
    /// How long an address stays suppressed.
    pub ttl: HumanDuration,
    /// Soft failures (mailbox full) of one address…
    pub soft_limit: u32,
    /// …within this window suppress it like a hard one.
    pub soft_window: HumanDuration,
}

/// Whose mail a suppression refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuppressionScope {
    /// The sender domain whose mail bounced.
    #[default]
    Sender,
    /// Every sender.
    Global,
}

impl Default for SuppressionConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            scope: SuppressionScope::Sender,
            ttl: HumanDuration::from_secs(180 * 86_400),
            soft_limit: 3,
            soft_window: HumanDuration::from_secs(7 * 86_400),
        }
    }
}

impl SuppressionConfig {
    /// Whether the list is kept and applied, given `[bounces]`.
    pub fn active(&self, bounces: &BouncesConfig) -> bool {
        self.enabled.unwrap_or(bounces.enabled())
    }

    pub(super) fn problems(&self, err: &mut impl FnMut(String, String)) {
        if self.ttl.is_zero() {
            err("suppression.ttl".into(), "must be more than 0".into());
        }
        if self.soft_limit == 0 {
            err(
                "suppression.soft_limit".into(),
                "0 would suppress on no failure at all; 1 suppresses on the first".into(),
            );
        }
    }
}

/// Both sections' problems, for [`super::validate`].
pub(super) fn problems(c: &super::Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |key: String, problem: String| errors.push(ConfigError { key, problem });
    c.bounces.problems(&mut err);
    c.suppression.problems(&mut err);
    errors
}
