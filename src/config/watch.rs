//! `[cluster]`, `[complaints]`, `[probes]`, `[alerts]`: the relay watching itself and
//! telling the operator, alone or with other nodes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::*;

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
