//! Senders: who hands mail in, how much they may hand in, and whether they look hacked.
//!
//! A sender is a logged-in user, or else the envelope sender's domain (a null sender,
//! a DSN, is nobody's). [`quota`] keeps per-hour allowances per user, client address and
//! sender domain, checked at MAIL and RCPT and taken at the `250`. [`watch`] counts what
//! each sender's recent mail drew from destinations; when it looks like a hacked
//! account's (the seed 003 story: reputation refusals, unknown recipients, a spike), the
//! sender is suspended: new mail refused, queued mail held, the operator alerted. A
//! suspension lasts until the operator releases it and survives restarts
//! (`senders.json` in the spool directory).

mod quota;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

pub use watch::Recent;

use crate::classify::Verdict;
use crate::config::{Quota, QuotasConfig, SuspensionConfig};
use crate::envelope::Sender;

/// Who a message is from, as quotas and suspensions see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SenderId {
    /// A logged-in user.
    User(String),
    /// An envelope sender domain (lower case).
    Domain(String),
}

impl SenderId {
    /// The sender of a message from `user` (if logged in) with envelope sender `sender`.
    pub fn of(user: Option<&str>, sender: &Sender) -> Option<Self> {
        match (user, sender) {
            (Some(u), _) => Some(Self::User(u.to_string())),
            (None, Sender::Address(a)) => Some(Self::Domain(a.domain().to_ascii_lowercase())),
            (None, Sender::Null) => None,
        }
    }

    /// `user:NAME` or `domain:NAME` as shown; a bare name is looked up by the caller.
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once(':') {
            Some(("user", n)) if !n.is_empty() => Some(Self::User(n.to_string())),
            Some(("domain", n)) if !n.is_empty() => Some(Self::Domain(n.to_ascii_lowercase())),
            _ => None,
        }
    }
}

impl fmt::Display for SenderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(n) => write!(f, "user:{n}"),
            Self::Domain(n) => write!(f, "domain:{n}"),
        }
    }
}

impl Serialize for SenderId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SenderId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not a sender: {text}")))
    }
}

/// A suspended sender, with the evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suspension {
    /// Who.
    pub sender: SenderId,
    /// Since when (Unix seconds).
    pub since: u64,
    /// Why, in a sentence.
    pub reason: String,
    /// The counts of the window that tripped it, with sample refusals.
    pub recent: Recent,
}

/// One sender's hard bounces per delivery attempt in its current window
/// (`GET /api/v1/senders/bounce-rates`, `sidestep senders`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BounceRate {
    /// Who.
    pub sender: SenderId,
    /// When the window started (Unix seconds).
    pub since: u64,
    /// Delivery attempts of its recipients.
    pub attempts: u32,
    /// Hard bounces, in the session and late.
    pub hard_bounces: u32,
    /// Of those, the late ones.
    pub late_bounces: u32,
    /// `hard_bounces / attempts`.
    pub rate: f64,
}

/// Who is handing a message in, for the quotas.
#[derive(Debug, Clone, Copy)]
pub struct Submitter<'a> {
    /// The logged-in user.
    pub user: Option<&'a str>,
    /// The client's address, when it is outside `relay_networks` (the MTA in front is
    /// trusted with the sum of its users).
    pub client: Option<IpAddr>,
    /// The envelope sender's domain.
    pub sender_domain: Option<&'a str>,
}

/// Which limit a submission ran into, for the `450` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota(pub String);

/// Cheap handle on the senders' state, shared by inbound sessions, the queue and the
/// admin API.
#[derive(Clone, Default)]
pub struct Senders {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// `senders.json`; `None` in memory only (tests).
    path: Option<PathBuf>,
    /// Serialises writes of the file, so the last write holds the latest state.
    persist: Mutex<()>,
    alerts: Option<crate::alerts::Alerts>,
    clock: crate::clock::Clock,
    /// Where local suspensions and releases go to be shared with the other nodes.
    cluster: OnceLock<tokio::sync::mpsc::UnboundedSender<SenderChange>>,
    /// Quota takes are collected for the other nodes of a cluster.
    share_takes: std::sync::atomic::AtomicBool,
}

/// Quota taken here: the other nodes of a cluster take the same from their buckets, so
/// that a sender's hourly limit holds for all of them together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaTake {
    /// The bucket (`user:NAME`, `client:IP`, `domain:NAME`).
    pub key: String,
    /// Its limit per hour, messages and recipients.
    pub limit: (u32, u32),
    /// Taken: messages and recipients.
    pub taken: (u32, u32),
}

/// A sender's suspension as it is now on this node (`None`: released), for the other
/// nodes of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderChange {
    /// Who.
    pub sender: SenderId,
    /// The suspension, or `None` when it was released.
    pub suspension: Option<Suspension>,
}

#[derive(Default)]
struct State {
    messages: quota::Buckets,
    recipients: quota::Buckets,
    recent: HashMap<SenderId, Recent>,
    suspended: BTreeMap<SenderId, Suspension>,
    /// Takes not yet passed to the other nodes.
    takes: Vec<QuotaTake>,
}

/// The file's content.
#[derive(Serialize, Deserialize, Default)]
struct Stored {
    suspended: Vec<Suspension>,
}

/// The senders' saved state cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SendersError {
    /// `senders.json` cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `senders.json` is not what sidestep writes.
    #[error("{}: {source}", path.display())]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

impl Senders {
    /// The senders' state in `dir` (suspensions survive restarts); suspensions are
    /// announced through `alerts`, windows and quotas timed by `clock`.
    ///
    /// # Errors
    /// `senders.json` exists but cannot be read or parsed.
    pub fn open(
        dir: &Path,
        alerts: Option<crate::alerts::Alerts>,
        clock: crate::clock::Clock,
    ) -> Result<Self, SendersError> {
        let path = dir.join("senders.json");
        let stored: Stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SendersError::Corrupt {
                path: path.clone(),
                source: e,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => {
                return Err(SendersError::Read {
                    path: path.clone(),
                    source: e,
                });
            }
        };
        let state = State {
            suspended: stored
                .suspended
                .into_iter()
                .map(|s| (s.sender.clone(), s))
                .collect(),
            ..State::default()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                path: Some(path),
                alerts,
                clock,
                ..Shared::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The suspension of `id`, if it is suspended.
    pub fn suspended(&self, id: &SenderId) -> Option<Suspension> {
        self.lock().suspended.get(id).cloned()
    }

    /// Every suspended sender.
    pub fn suspensions(&self) -> Vec<Suspension> {
        self.lock().suspended.values().cloned().collect()
    }

    /// The suspended sender `name` means: `user:X`, `domain:X`, or a bare user or domain.
    pub fn find(&self, name: &str) -> Option<SenderId> {
        if let Some(id) = SenderId::parse(name) {
            return Some(id);
        }
        let state = self.lock();
        [
            SenderId::User(name.to_string()),
            SenderId::Domain(name.to_ascii_lowercase()),
        ]
        .into_iter()
        .find(|id| state.suspended.contains_key(id))
    }

    /// Whether a message with `recipients` more recipients (and, with `message`, one
    /// more message) fits every quota of `who`.
    ///
    /// # Errors
    /// The first limit it would exceed.
    pub fn check(
        &self,
        who: &Submitter<'_>,
        quotas: &QuotasConfig,
        message: bool,
        recipients: u32,
    ) -> Result<(), OverQuota> {
        let keys = keys(who, quotas);
        if keys.is_empty() {
            // No limit applies (the common case of the MTA in front): no lock taken.
            return Ok(());
        }
        let now = self.shared.clock.now_ms();
        let state = self.lock();
        for (key, what, limit) in keys {
            if message && !state.messages.allows(&key, limit.messages_per_hour, 1, now) {
                return Err(OverQuota(format!(
                    "{what}: {} messages per hour",
                    limit.messages_per_hour
                )));
            }
            if !state
                .recipients
                .allows(&key, limit.recipients_per_hour, recipients, now)
            {
                return Err(OverQuota(format!(
                    "{what}: {} recipients per hour",
                    limit.recipients_per_hour
                )));
            }
        }
        Ok(())
    }

    /// A message of `who` with `recipients` recipients was accepted: its quotas are
    /// taken, and its volume counts toward a spike.
    pub fn accepted(
        &self,
        who: &Submitter<'_>,
        sender: Option<&SenderId>,
        quotas: &QuotasConfig,
        suspension: &SuspensionConfig,
        recipients: u32,
    ) {
        let now = self.shared.clock.now_ms();
        let tripped = {
            let mut state = self.lock();
            let share = self
                .shared
                .share_takes
                .load(std::sync::atomic::Ordering::Relaxed);
            for (key, _, limit) in keys(who, quotas) {
                state.messages.take(&key, limit.messages_per_hour, 1, now);
                state
                    .recipients
                    .take(&key, limit.recipients_per_hour, recipients, now);
                if share && state.takes.len() < 100_000 {
                    state.takes.push(QuotaTake {
                        key,
                        limit: (limit.messages_per_hour, limit.recipients_per_hour),
                        taken: (1, recipients),
                    });
                }
            }
            sender.and_then(|id| {
                prune(&mut state.recent, suspension, self.shared.clock.now());
                let recent = state.recent.entry(id.clone()).or_default();
                recent.roll(self.shared.clock.now(), suspension.window.get().as_secs());
                recent.messages += 1;
                recent.verdict(suspension).map(|why| (id.clone(), why))
            })
        };
        if let Some((id, why)) = tripped {
            self.suspend(&id, why);
        }
    }

    /// What destinations said to one attempt of `id`'s mail: one verdict (and reply)
    /// per recipient. Returns the suspension when this tipped the sender over.
    pub fn observe(
        &self,
        id: &SenderId,
        verdicts: &[(Verdict, String)],
        config: &SuspensionConfig,
    ) -> Option<Suspension> {
        self.count(id, config, |recent| {
            for (verdict, reply) in verdicts {
                recent.attempts += 1;
                match verdict {
                    Verdict::IpReputation => {
                        recent.reputation_refusals += 1;
                        recent.sample(reply.clone());
                    }
                    Verdict::Recipient => {
                        recent.unknown_recipients += 1;
                        // A permanent refusal is a hard bounce, as the suppression list
                        // reads it (a 4xx "user unknown" is not, yet).
                        if reply.starts_with('5') {
                            recent.hard_bounces += 1;
                        }
                        recent.sample(reply.clone());
                    }
                    _ => {}
                }
            }
        })
    }

    /// Adds to `id`'s counts of the current window (`add`), then suspends it if they
    /// say so. Nothing is counted for a sender already suspended.
    fn count(
        &self,
        id: &SenderId,
        config: &SuspensionConfig,
        add: impl FnOnce(&mut Recent),
    ) -> Option<Suspension> {
        let why = {
            let mut state = self.lock();
            if state.suspended.contains_key(id) {
                return None;
            }
            prune(&mut state.recent, config, self.shared.clock.now());
            let recent = state.recent.entry(id.clone()).or_default();
            recent.roll(self.shared.clock.now(), config.window.get().as_secs());
            add(recent);
            recent.verdict(config)?
        };
        self.suspend(id, why)
    }

    /// A feedback-loop complaint about `id`'s mail (`evidence`: the report in a line).
    /// Returns the suspension when this tipped the sender over.
    pub fn complaint(
        &self,
        id: &SenderId,
        evidence: String,
        config: &SuspensionConfig,
    ) -> Option<Suspension> {
        self.count(id, config, |recent| recent.complaint(evidence))
    }

    /// A hard bounce of `id`'s mail that arrived later by mail to the return path (the
    /// attempt was counted when the receiver said `250`). Returns the suspension when
    /// this tipped the sender over.
    pub fn late_bounce(
        &self,
        id: &SenderId,
        evidence: String,
        config: &SuspensionConfig,
    ) -> Option<Suspension> {
        self.count(id, config, |recent| recent.late_bounce(evidence))
    }

    /// Each sender's bounce rate in its current window, worst first (senders with no
    /// attempt and no bounce left out).
    pub fn bounce_rates(&self) -> Vec<BounceRate> {
        let state = self.lock();
        let mut out: Vec<BounceRate> = state
            .recent
            .iter()
            .chain(state.suspended.iter().map(|(id, s)| (id, &s.recent)))
            .filter(|(_, r)| r.attempts > 0 || r.hard_bounces > 0)
            .map(|(id, r)| BounceRate {
                sender: id.clone(),
                since: r.since,
                attempts: r.attempts,
                hard_bounces: r.hard_bounces,
                late_bounces: r.late_bounces,
                rate: r.bounce_rate(),
            })
            .collect();
        out.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.sender.cmp(&b.sender)));
        out.dedup_by(|a, b| a.sender == b.sender);
        out
    }

    /// Suspends `id` (once): persisted, logged, alerted.
    fn suspend(&self, id: &SenderId, reason: String) -> Option<Suspension> {
        let suspension = {
            let mut state = self.lock();
            if state.suspended.contains_key(id) {
                return None;
            }
            let s = Suspension {
                sender: id.clone(),
                since: self.shared.clock.now(),
                reason,
                recent: state.recent.get(id).cloned().unwrap_or_default(),
            };
            state.suspended.insert(id.clone(), s.clone());
            s
        };
        tracing::error!(
            sender = %id,
            reason = %suspension.reason,
            evidence = %suspension.recent.samples.join(" | "),
            "sender suspended: its new mail is refused and its queued mail held until the operator releases it"
        );
        if let Some(a) = &self.shared.alerts {
            a.send(
                "sender-suspended",
                None,
                Some(id.to_string()),
                format!(
                    "{id} suspended: {}; its queued mail is held. Evidence: {}. Release with `sidestep senders release {id}` (add --bounce to return its held mail to the senders).",
                    suspension.reason,
                    suspension.recent.samples.join(" | ")
                ),
            );
        }
        self.persist();
        self.share(id, Some(suspension.clone()));
        Some(suspension)
    }

    /// Ends the suspension of `id`; its counts start afresh.
    pub fn release(&self, id: &SenderId) -> Option<Suspension> {
        let released = {
            let mut state = self.lock();
            state.recent.remove(id);
            state.suspended.remove(id)
        };
        if released.is_some() {
            tracing::warn!(sender = %id, "sender released by the operator");
            self.persist();
            self.share(id, None);
        }
        released
    }

    /// Quota takes are collected for the other nodes from now on (a cluster).
    pub fn share_takes(&self) {
        self.shared
            .share_takes
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The quota taken here since the last call, for the other nodes.
    pub fn drain_takes(&self) -> Vec<QuotaTake> {
        std::mem::take(&mut self.lock().takes)
    }

    /// Quota another node took: taken here too.
    pub fn apply_takes(&self, takes: &[QuotaTake]) {
        let now = self.shared.clock.now_ms();
        let mut state = self.lock();
        for t in takes {
            state.messages.take(&t.key, t.limit.0, t.taken.0, now);
            state.recipients.take(&t.key, t.limit.1, t.taken.1, now);
        }
    }

    /// Local suspensions and releases go to `tx` from now on (a cluster).
    pub fn share_with(&self, tx: tokio::sync::mpsc::UnboundedSender<SenderChange>) {
        let _ = self.shared.cluster.set(tx);
    }

    fn share(&self, id: &SenderId, suspension: Option<Suspension>) {
        if let Some(tx) = self.shared.cluster.get() {
            let _ = tx.send(SenderChange {
                sender: id.clone(),
                suspension,
            });
        }
    }

    /// Another node suspended (`Some`) or released (`None`) a sender: the same here
    /// (its new mail refused, its queued mail held at its next attempt), persisted, not
    /// alerted again. Returns whether anything changed.
    pub fn apply_remote(&self, change: SenderChange) -> bool {
        let changed = {
            let mut state = self.lock();
            match change.suspension {
                Some(s) if !state.suspended.contains_key(&change.sender) => {
                    state.suspended.insert(change.sender.clone(), s);
                    true
                }
                Some(_) => false,
                None => {
                    state.recent.remove(&change.sender);
                    state.suspended.remove(&change.sender).is_some()
                }
            }
        };
        if changed {
            tracing::warn!(sender = %change.sender, suspended = self.suspended(&change.sender).is_some(), "sender suspension changed by another node");
            self.persist();
        }
        changed
    }

    /// Writes the suspensions (a temporary file, fsynced, renamed over the old one).
    fn persist(&self) {
        let Some(path) = &self.shared.path else {
            return;
        };
        let _turn = self
            .shared
            .persist
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let stored = Stored {
            suspended: self.suspensions(),
        };
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
            crate::spool::replace_durably(path, &bytes)
        };
        if let Err(e) = write() {
            tracing::error!(path = %path.display(), error = %e, "cannot save the sender suspensions (they hold in memory)");
        }
    }
}

/// Senders tracked before the quiet ones are forgotten: a relay for many sender
/// domains keeps a bounded table.
const MAX_TRACKED: usize = 50_000;

/// Forgets senders quiet for two windows once the table is full (their usual volume
/// goes with them: a sender back after that long starts afresh).
fn prune(recent: &mut HashMap<SenderId, Recent>, config: &SuspensionConfig, now: u64) {
    if recent.len() < MAX_TRACKED {
        return;
    }
    let horizon = now.saturating_sub(2 * config.window.get().as_secs());
    recent.retain(|_, r| r.since >= horizon);
    if recent.len() >= MAX_TRACKED {
        recent.clear();
    }
}

/// The quota keys of a submission with their limits (user, client, sender domain),
/// leaving out those without any limit.
fn keys(who: &Submitter<'_>, q: &QuotasConfig) -> Vec<(String, String, Quota)> {
    let find = |pick: &dyn Fn(&crate::config::QuotaOverride) -> bool, default: Quota| {
        q.overrides
            .iter()
            .find(|o| pick(o))
            .map_or(default, |o| Quota {
                messages_per_hour: o.messages_per_hour,
                recipients_per_hour: o.recipients_per_hour,
            })
    };
    let limited = |q: &Quota| q.messages_per_hour > 0 || q.recipients_per_hour > 0;
    // Keys are formatted only for limits that apply: the common case (the MTA in front,
    // no sender-domain limit) allocates nothing per MAIL and RCPT.
    let mut out = Vec::new();
    if let Some(u) = who.user {
        let limit = find(&|o| o.user.as_deref() == Some(u), q.user);
        if limited(&limit) {
            out.push((format!("u:{u}"), format!("user {u}"), limit));
        }
    }
    if let Some(ip) = who.client {
        let limit = find(&|o| o.client == Some(ip), q.client);
        if limited(&limit) {
            out.push((format!("c:{ip}"), format!("client {ip}"), limit));
        }
    }
    if let Some(d) = who.sender_domain {
        let limit = find(
            &|o| {
                o.sender_domain
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(d))
            },
            q.sender_domain,
        );
        if limited(&limit) {
            out.push((
                format!("d:{}", d.to_ascii_lowercase()),
                format!("sender domain {d}"),
                limit,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use std::time::Duration;

    fn guard() -> SuspensionConfig {
        SuspensionConfig {
            window: crate::config::HumanDuration::from_secs(3600),
            reputation_refusals: 3,
            reputation_ratio: 0.5,
            ..SuspensionConfig::default()
        }
    }

    fn refused(n: usize) -> Vec<(Verdict, String)> {
        vec![(Verdict::IpReputation, "550 5.7.1 listed".to_string()); n]
    }

    /// The abuse guard counts within its window only: refusals an hour apart do not add
    /// up, refusals within one do, and the suspension is stamped with the clock's time.
    #[test]
    fn suspension_counts_within_its_window_on_a_simulated_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_800_000_000_000);
        let senders = Senders::open(dir.path(), None, clock.clone()).unwrap();
        let id = SenderId::Domain("news.example".into());
        let config = guard();
        assert!(senders.observe(&id, &refused(2), &config).is_none());
        clock.advance(Duration::from_secs(3601));
        assert!(
            senders.observe(&id, &refused(2), &config).is_none(),
            "last window's refusals were forgotten"
        );
        clock.advance(Duration::from_secs(1800));
        let s = senders
            .observe(&id, &refused(1), &config)
            .expect("three refusals in one window suspend");
        assert_eq!(s.since, 1_800_000_000 + 3601 + 1800);
        assert!(senders.suspended(&id).is_some());
        let reopened = Senders::open(dir.path(), None, clock).unwrap();
        assert!(reopened.suspended(&id).is_some(), "kept across a restart");
    }
}
