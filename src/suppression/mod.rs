//! The suppression list: addresses that hard-bounced (in the SMTP session or late, by
//! mail), or soft-bounced `soft_limit` times within `soft_window`, refused at RCPT with
//! `550 5.1.1` and the reason, so list managers (Mailman, listmonk, Sendy) unsubscribe
//! them and receivers stop counting unknown-user hits against the sender.
//!
//! An entry is scoped to the sender domain whose mail bounced (`[suppression] scope =
//! "sender"`) or to everyone (`"global"`, scope `*`), and expires after `ttl`.
//!
//! - [`log`]: the durable file, `suppressions.jsonl` (one change a line, fsynced).
//! - this file: the list in memory, shared by inbound (RCPT), the queue (in-session
//!   failures), the bounce reader, the admin API, and the cluster (which replicates each
//!   change to the other nodes).

mod log;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::{SuppressionConfig, SuppressionScope};

pub use log::SuppressionError;

/// The scope of a global entry.
pub const GLOBAL: &str = "*";

/// Why an address is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A permanent recipient failure (unknown user, disabled mailbox).
    Hard,
    /// `soft_limit` temporary ones (mailbox full) within `soft_window`.
    Soft,
    /// The operator added it (CLI, API, import).
    Manual,
}

impl Reason {
    /// As written in the RCPT reply and the CLI.
    pub fn word(self) -> &'static str {
        match self {
            Self::Hard => "hard bounce",
            Self::Soft => "repeated soft bounces",
            Self::Manual => "added by the operator",
        }
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The address, lowercase.
    pub address: String,
    /// The sender domain it is refused to, or `*` for everyone.
    pub scope: String,
    /// Why.
    pub reason: Reason,
    /// When it bounced (Unix seconds).
    pub at: u64,
    /// Until when it is refused (Unix seconds).
    pub expires: u64,
    /// The site whose server said so.
    #[serde(default)]
    pub site: Option<String>,
    /// What it said (the SMTP reply or the DSN's Diagnostic-Code).
    #[serde(default)]
    pub reply: String,
    /// The bounce came by mail, after the server had accepted the message.
    #[serde(default)]
    pub late: bool,
    /// The message that bounced.
    #[serde(default)]
    pub queue_id: Option<String>,
}

impl Entry {
    /// The RCPT refusal's text (after `550 5.1.1`).
    pub fn refusal(&self) -> String {
        format!(
            "<{}> suppressed: {} at {} from {}: \"{}\"",
            self.address,
            self.reason.word(),
            crate::clock::rfc3339(self.at),
            self.site.as_deref().unwrap_or("-"),
            self.reply.replace(['"', '\r', '\n'], "'")
        )
    }
}

/// A change to the list, as logged and as replicated to other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Suppress (or renew).
    Add(Entry),
    /// Lift, in one scope or (`scope` none) in all.
    Remove {
        /// The address, lowercase.
        address: String,
        /// The scope; none: every scope.
        scope: Option<String>,
    },
}

/// Where changes go besides this node's file: the cluster's shared store.
pub trait SharedSuppressions: Send + Sync {
    /// Tells the other nodes (errors are the implementor's to log).
    fn publish(&self, change: &Change);
}

#[derive(Default)]
struct State {
    entries: HashMap<(String, String), Entry>,
    /// Soft failures per (scope, address): their times, within the window.
    soft: HashMap<(String, String), VecDeque<u64>>,
}

/// The list, a cheap clonable handle.
#[derive(Clone)]
pub struct Suppressions {
    inner: Arc<Mutex<State>>,
    log: Option<Arc<log::Log>>,
    shared: Arc<OnceLock<Arc<dyn SharedSuppressions>>>,
    clock: Clock,
}

impl Default for Suppressions {
    fn default() -> Self {
        Self::in_memory(Clock::system())
    }
}

/// A failure to feed: whose mail, which address, what was said and where.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The envelope sender's domain (none: a null sender).
    pub sender_domain: Option<&'a str>,
    /// The recipient.
    pub address: &'a str,
    /// The site that refused.
    pub site: Option<&'a str>,
    /// The reply.
    pub reply: &'a str,
    /// Known by a late bounce.
    pub late: bool,
    /// The message.
    pub queue_id: Option<&'a str>,
}

impl Suppressions {
    /// A list that lives in memory only (tests, `check-config`).
    pub fn in_memory(clock: Clock) -> Self {
        Self {
            inner: Arc::default(),
            log: None,
            shared: Arc::default(),
            clock,
        }
    }

    /// The list saved in `dir` (none yet: empty), compacted (expired entries and
    /// superseded lines dropped).
    ///
    /// # Errors
    /// The file exists and cannot be read, or cannot be rewritten.
    pub fn open(dir: &Path, clock: Clock) -> Result<Self, SuppressionError> {
        let (log, changes) = log::Log::open(&dir.join("suppressions.jsonl"))?;
        let me = Self {
            inner: Arc::default(),
            log: None,
            shared: Arc::default(),
            clock,
        };
        for c in changes {
            me.apply(&c);
        }
        me.expire();
        let live: Vec<Change> = me.list().into_iter().map(Change::Add).collect();
        log.compact(&live)?;
        Ok(Self {
            log: Some(Arc::new(log)),
            ..me
        })
    }

    /// Changes from now on are also published to the cluster.
    pub fn share(&self, shared: Arc<dyn SharedSuppressions>) {
        let _ = self.shared.set(shared);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a change in memory only (a replicated change, or the log at start).
    pub fn apply(&self, change: &Change) {
        let mut s = self.lock();
        match change {
            Change::Add(e) => {
                s.entries
                    .insert((e.scope.clone(), e.address.clone()), e.clone());
            }
            Change::Remove { address, scope } => {
                s.entries
                    .retain(|(sc, a), _| !(a == address && scope.as_ref().is_none_or(|x| x == sc)));
                s.soft
                    .retain(|(sc, a), _| !(a == address && scope.as_ref().is_none_or(|x| x == sc)));
            }
        }
    }

    /// Makes a change: in memory, in the file (fsynced), and to the cluster.
    ///
    /// # Errors
    /// The file could not be written (the change holds in memory).
    pub fn record(&self, change: Change) -> Result<(), SuppressionError> {
        if let Some(shared) = self.shared.get() {
            shared.publish(&change);
        }
        self.record_replicated(&change)
    }

    /// Another node's change: in memory and in this node's file (so it holds through a
    /// restart while Redis is away), not published again.
    ///
    /// # Errors
    /// The file could not be written (the change holds in memory).
    pub fn record_replicated(&self, change: &Change) -> Result<(), SuppressionError> {
        self.apply(change);
        match &self.log {
            Some(log) => log.append(change),
            None => Ok(()),
        }
    }

    /// Drops expired entries.
    fn expire(&self) {
        let now = self.clock.now();
        self.lock().entries.retain(|_, e| e.expires > now);
    }

    /// Why mail from `sender_domain` to `address` is refused, if it is.
    pub fn check(&self, sender_domain: Option<&str>, address: &str) -> Option<Entry> {
        let s = self.lock();
        if s.entries.is_empty() {
            return None;
        }
        let address = address.to_ascii_lowercase();
        let now = self.clock.now();
        let scoped =
            sender_domain.and_then(|d| s.entries.get(&(d.to_ascii_lowercase(), address.clone())));
        scoped
            .or_else(|| s.entries.get(&(GLOBAL.to_string(), address)))
            .filter(|e| e.expires > now)
            .cloned()
    }

    /// Every live entry, by address.
    pub fn list(&self) -> Vec<Entry> {
        let now = self.clock.now();
        let mut all: Vec<Entry> = self
            .lock()
            .entries
            .values()
            .filter(|e| e.expires > now)
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.address, &a.scope).cmp(&(&b.address, &b.scope)));
        all
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scope an entry for mail from `sender_domain` gets under `config`.
    pub fn scope_of(config: &SuppressionConfig, sender_domain: Option<&str>) -> String {
        match (config.scope, sender_domain) {
            (SuppressionScope::Sender, Some(d)) => d.to_ascii_lowercase(),
            _ => GLOBAL.to_string(),
        }
    }

    /// A permanent recipient failure: the address is suppressed. Returns the entry.
    ///
    /// # Errors
    /// The file could not be written (the entry holds in memory).
    pub fn hard(
        &self,
        config: &SuppressionConfig,
        f: &Failure<'_>,
    ) -> Result<Entry, SuppressionError> {
        self.suppress(config, f, Reason::Hard)
    }

    /// A temporary one (mailbox full): suppressed once `soft_limit` came within
    /// `soft_window`. Returns the entry when this one tipped it.
    ///
    /// # Errors
    /// The file could not be written (the entry holds in memory).
    pub fn soft(
        &self,
        config: &SuppressionConfig,
        f: &Failure<'_>,
    ) -> Result<Option<Entry>, SuppressionError> {
        let key = (
            Self::scope_of(config, f.sender_domain),
            f.address.to_ascii_lowercase(),
        );
        let now = self.clock.now();
        let window = config.soft_window.get().as_secs();
        let count = {
            let mut s = self.lock();
            let times = s.soft.entry(key.clone()).or_default();
            times.push_back(now);
            while times
                .front()
                .is_some_and(|t| now.saturating_sub(*t) > window)
            {
                times.pop_front();
            }
            let n = times.len();
            if n >= config.soft_limit as usize {
                s.soft.remove(&key);
            }
            // Forget addresses whose window passed, so the map does not grow for ever.
            if s.soft.len() > 100_000 {
                s.soft
                    .retain(|_, t| t.back().is_some_and(|b| now.saturating_sub(*b) <= window));
            }
            n
        };
        if count < config.soft_limit as usize {
            return Ok(None);
        }
        self.suppress(config, f, Reason::Soft).map(Some)
    }

    fn suppress(
        &self,
        config: &SuppressionConfig,
        f: &Failure<'_>,
        reason: Reason,
    ) -> Result<Entry, SuppressionError> {
        let now = self.clock.now();
        let entry = Entry {
            address: f.address.to_ascii_lowercase(),
            scope: Self::scope_of(config, f.sender_domain),
            reason,
            at: now,
            expires: now + config.ttl.get().as_secs(),
            site: f.site.map(str::to_string),
            reply: f.reply.to_string(),
            late: f.late,
            queue_id: f.queue_id.map(str::to_string),
        };
        tracing::warn!(
            address = %entry.address,
            scope = %entry.scope,
            reason = entry.reason.word(),
            site = entry.site.as_deref().unwrap_or("-"),
            late = entry.late,
            reply = %entry.reply,
            "address suppressed"
        );
        crate::metrics::metrics().suppressed(entry.reason.kind(), entry.late);
        self.record(Change::Add(entry.clone()))?;
        Ok(entry)
    }

    /// The operator's entry for `address` (scope `*` or a sender domain).
    ///
    /// # Errors
    /// The file could not be written (the entry holds in memory).
    pub fn add_manual(
        &self,
        config: &SuppressionConfig,
        address: &str,
        scope: Option<&str>,
        reply: Option<&str>,
    ) -> Result<Entry, SuppressionError> {
        let now = self.clock.now();
        let entry = Entry {
            address: address.to_ascii_lowercase(),
            scope: scope.unwrap_or(GLOBAL).to_ascii_lowercase(),
            reason: Reason::Manual,
            at: now,
            expires: now + config.ttl.get().as_secs(),
            site: None,
            reply: reply.unwrap_or("added by the operator").to_string(),
            late: false,
            queue_id: None,
        };
        self.record(Change::Add(entry.clone()))?;
        Ok(entry)
    }

    /// Lifts `address` in `scope` (none: every scope); how many entries went.
    ///
    /// # Errors
    /// The file could not be written (the removal holds in memory).
    pub fn remove(&self, address: &str, scope: Option<&str>) -> Result<usize, SuppressionError> {
        let address = address.to_ascii_lowercase();
        let scope = scope.map(str::to_ascii_lowercase);
        let n = self
            .lock()
            .entries
            .keys()
            .filter(|(sc, a)| *a == address && scope.as_ref().is_none_or(|x| x == sc))
            .count();
        self.record(Change::Remove { address, scope })?;
        Ok(n)
    }
}

/// What kind of recipient failure a reply is: `Hard` (unknown user, disabled mailbox: a
/// permanent recipient refusal), `Soft` (mailbox full, RFC 3463 X.2.2, however it was
/// coded), or none (not the recipient's fault).
pub fn failure_kind(
    verdict: crate::classify::Verdict,
    code: u16,
    enhanced: &str,
    text: &str,
) -> Option<Reason> {
    let lower = text.to_ascii_lowercase();
    let full = enhanced.ends_with(".2.2")
        || [
            "mailbox full",
            "over quota",
            "quota exceeded",
            "mailbox is full",
            "insufficient storage",
        ]
        .iter()
        .any(|w| lower.contains(w));
    if full && code >= 400 {
        return Some(Reason::Soft);
    }
    (verdict == crate::classify::Verdict::Recipient && code >= 500).then_some(Reason::Hard)
}

impl Reason {
    /// The metrics' word: `hard`, `soft` or `manual`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
            Self::Manual => "manual",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn failure<'a>(address: &'a str, sender: &'a str) -> Failure<'a> {
        Failure {
            sender_domain: Some(sender),
            address,
            site: Some("mx.dest.test"),
            reply: "550 5.1.1 <bob@dest.test>: Recipient address rejected: User unknown",
            late: false,
            queue_id: Some("Q1"),
        }
    }

    #[test]
    fn a_hard_bounce_is_refused_to_its_sender_only_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_000_000);
        let list = Suppressions::open(dir.path(), clock.clone()).unwrap();
        let config = SuppressionConfig::default();
        let e = list
            .hard(&config, &failure("Bob@Dest.test", "shop.test"))
            .unwrap();
        assert_eq!(e.scope, "shop.test");
        assert!(list.check(Some("SHOP.test"), "bob@dest.test").is_some());
        assert!(list.check(Some("other.test"), "bob@dest.test").is_none());
        assert!(
            e.refusal().starts_with("<bob@dest.test> suppressed: hard bounce at 1970-01-01T00:16:40Z from mx.dest.test: \"550 5.1.1"),
            "{}",
            e.refusal()
        );
        let again = Suppressions::open(dir.path(), clock.clone()).unwrap();
        assert_eq!(again.list(), vec![e]);
        assert_eq!(again.remove("bob@dest.test", None).unwrap(), 1);
        let third = Suppressions::open(dir.path(), clock.clone()).unwrap();
        assert!(third.is_empty(), "the removal was durable");
        clock.advance(std::time::Duration::from_secs(1));
    }

    #[test]
    fn soft_failures_suppress_at_the_limit_within_the_window_and_entries_expire() {
        let clock = Clock::manual(1_000_000);
        let list = Suppressions::in_memory(clock.clone());
        let config = SuppressionConfig {
            scope: SuppressionScope::Global,
            soft_limit: 3,
            soft_window: HumanDuration::from_secs(3600),
            ttl: HumanDuration::from_secs(86_400),
            enabled: Some(true),
        };
        let f = failure("full@dest.test", "shop.test");
        assert!(list.soft(&config, &f).unwrap().is_none());
        clock.advance(std::time::Duration::from_secs(7200));
        // The first one is outside the window now.
        assert!(list.soft(&config, &f).unwrap().is_none());
        assert!(list.soft(&config, &f).unwrap().is_none());
        let e = list
            .soft(&config, &f)
            .unwrap()
            .expect("third in the window");
        assert_eq!(e.scope, GLOBAL);
        assert!(list.check(Some("any.test"), "full@dest.test").is_some());
        assert!(list.check(None, "full@dest.test").is_some());
        clock.advance(std::time::Duration::from_secs(86_401));
        assert!(list.check(None, "full@dest.test").is_none(), "expired");
    }
}
