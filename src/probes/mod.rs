//! Seed probes: the receiver that answers `250` and then drops the mail never says so in
//! a reply. Every interval, each egress IP sends a small message with a unique token to
//! each seed address; the seed mailbox is read over IMAP. A probe accepted but not there
//! by its deadline marks (IP, site) as *silently discarding*: routing keeps the IP away
//! from the site as it does for a refusal, with the probe as evidence. A later probe that
//! arrives lifts it.
//!
//! - [`mailbox`]: the IMAP side (async-imap), finding tokens in the folders.
//! - [`json_file`]: loading and durably saving the JSON state files (here and in
//!   complaints).
//! - [`poll`]: the IMAP polling loop (here and in complaints): open, read, track
//!   failures, sleep.
//! - `runner`: the task that sends the probes and checks them.
//! - this file: the probes' records, persisted in `probes.json` in the spool directory
//!   (a restart neither forgets a probe in flight nor sends one early).

pub mod json_file;
pub mod mailbox;
pub mod poll;
mod runner;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use mailbox::{Found, ImapUrl, ImapUrlError, MailboxError};

/// The probes could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    /// `probes.json` exists and cannot be used.
    #[error(transparent)]
    State(#[from] json_file::StateFileError),
}
pub use runner::spawn;

/// The IMAP mailboxes of `[probes]` and `[complaints]` parse and are reached safely
/// (config only reads values; the URL is this module's to parse).
pub fn check_config(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let mut errors = Vec::new();
    let mut check = |section: &str, imap: &str| {
        let problem = match ImapUrl::parse(imap) {
            Ok(url) if !url.tls && !url.is_loopback() => format!(
                "{imap:?}: plain imap:// only to a loopback server (the password would cross the network in the clear); use imaps://"
            ),
            Ok(_) => return,
            Err(e) => format!("{imap:?}: {e}"),
        };
        errors.push(crate::config::ConfigError {
            key: format!("{section}.imap"),
            problem,
        });
    };
    if let Some(imap) = config
        .probes
        .imap
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        check("probes", imap);
    }
    let c = &config.complaints;
    if c.enabled
        && let Some(imap) = c.imap.as_deref().filter(|s| !s.trim().is_empty())
    {
        check("complaints", imap);
    }
    errors
}

/// What became of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum ProbeStatus {
    /// Accepted with `250`; not seen in the mailbox yet, deadline not reached.
    Sent,
    /// Found in the mailbox: in the inbox (`junk: false`) or another folder.
    Arrived {
        /// When the mailbox showed it (Unix seconds).
        at: u64,
        /// The folder it was in.
        folder: String,
        /// Not the inbox: filed as junk.
        junk: bool,
    },
    /// Accepted, and not in the mailbox by the deadline: silently discarded.
    Missing {
        /// When the deadline check found it missing (Unix seconds).
        checked_at: u64,
    },
    /// The receiver refused it (the reply says why; nothing silent about it).
    Refused,
    /// It could not be sent (no server answered, DNS failed).
    Failed,
}

/// One probe: from `ip` to `seed` at `site`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// The unique token, in the `X-Sidestep-Probe` header and the subject.
    pub token: String,
    /// The egress IP it was sent from.
    pub ip: IpAddr,
    /// The seed address it went to.
    pub seed: String,
    /// The seed's site (its MX hosts), once the probe went out.
    pub site: Option<String>,
    /// Unix seconds.
    pub sent_at: u64,
    /// The receiver's reply, exactly.
    pub reply: String,
    /// The receiver's own id for the message, when the `250` names it.
    pub receiver_id: Option<String>,
    /// The MX host that answered.
    pub mx: Option<String>,
    /// Its address.
    pub mx_ip: Option<IpAddr>,
    /// What became of it.
    #[serde(flatten)]
    pub status: ProbeStatus,
}

/// The latest probe per (IP, seed), shared by the runner and the admin API.
#[derive(Clone, Default)]
pub struct Probes {
    inner: Arc<Mutex<BTreeMap<(IpAddr, String), ProbeRecord>>>,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    probes: Vec<ProbeRecord>,
}

impl Probes {
    /// The probes saved in `dir` (none yet: empty).
    ///
    /// # Errors
    /// `probes.json` exists but cannot be read or parsed.
    pub fn open(dir: &Path) -> Result<Self, ProbesError> {
        let path = dir.join("probes.json");
        let stored: Stored = json_file::load(&path)?;
        let map = stored
            .probes
            .into_iter()
            .map(|r| ((r.ip, r.seed.clone()), r))
            .collect();
        Ok(Self {
            inner: Arc::new(Mutex::new(map)),
            path: Some(path),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(IpAddr, String), ProbeRecord>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every (IP, seed)'s latest probe.
    pub fn list(&self) -> Vec<ProbeRecord> {
        self.lock().values().cloned().collect()
    }

    /// The latest probe from `ip` to `seed`.
    pub fn latest(&self, ip: IpAddr, seed: &str) -> Option<ProbeRecord> {
        self.lock().get(&(ip, seed.to_string())).cloned()
    }

    /// When `ip` last sent a probe to `site` through any seed (Unix seconds).
    pub fn last_sent_to_site(&self, ip: IpAddr, site: &str) -> Option<u64> {
        self.lock()
            .values()
            .filter(|r| r.ip == ip && r.site.as_deref() == Some(site))
            .map(|r| r.sent_at)
            .max()
    }

    /// Records (or replaces) a probe and saves the lot.
    pub fn put(&self, record: ProbeRecord) {
        self.lock().insert((record.ip, record.seed.clone()), record);
        self.persist();
    }

    /// Writes the records (a temporary file, fsynced, renamed over the old one).
    fn persist(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let stored = Stored {
            probes: self.list(),
        };
        json_file::save(path, &stored, json_file::Layout::Pretty, "probes");
    }
}

/// The receiver's id for an accepted message, from the usual `250` wordings
/// (`queued as 4Xyz`, `Ok: queued as X`, `id=X`, `<X> Queued mail for delivery`).
pub fn receiver_id(reply: &str) -> Option<String> {
    let lower = reply.to_ascii_lowercase();
    let clean = |s: &str| {
        s.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.')
            .to_string()
    };
    if let Some(i) = lower.find("queued as ") {
        let rest = &reply[i + 10..];
        return rest.split_whitespace().next().map(clean);
    }
    if let Some(i) = lower.find("id=") {
        return reply[i + 3..].split_whitespace().next().map(clean);
    }
    reply
        .split_whitespace()
        .find(|w| w.starts_with('<') && w.ends_with('>') && w.len() > 2)
        .map(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_ids_in_the_usual_wordings() {
        assert_eq!(
            receiver_id("250 2.0.0 Ok: queued as 4XyZ1234").as_deref(),
            Some("4XyZ1234")
        );
        assert_eq!(
            receiver_id("250 2.0.0 OK id=1qAbCd-0004Xy-Ab").as_deref(),
            Some("1qAbCd-0004Xy-Ab")
        );
        assert_eq!(
            receiver_id("250 2.6.0 <abc123@mx.example> Queued mail for delivery").as_deref(),
            Some("abc123@mx.example")
        );
        assert_eq!(receiver_id("250 2.0.0 Ok"), None);
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let probes = Probes::open(dir.path()).unwrap();
        probes.put(ProbeRecord {
            token: "t1".into(),
            ip: "192.0.2.1".parse().unwrap(),
            seed: "seed@bell.net".into(),
            site: Some("mx.bell.net".into()),
            sent_at: 100,
            reply: "250 ok".into(),
            receiver_id: None,
            mx: None,
            mx_ip: None,
            status: ProbeStatus::Missing { checked_at: 200 },
        });
        let again = Probes::open(dir.path()).unwrap();
        assert_eq!(again.list(), probes.list());
        assert_eq!(
            again.last_sent_to_site("192.0.2.1".parse().unwrap(), "mx.bell.net"),
            Some(100)
        );
    }
}
