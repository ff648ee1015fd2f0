//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Counters and histograms are updated where things happen (an accepted message, a
//! delivery attempt, a DNS failure): an atomic add, plus for labelled ones a map lookup
//! under a read lock. Gauges that describe state (queue, sessions, blocks, listings) are
//! set when scraped, from the handles that own that state, so they cost nothing between
//! scrapes. The `site` label is bounded: the first [`MAX_SITES`] sites seen get their
//! own, the rest are counted as `other`.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Sites with a label of their own; beyond them, `other`.
pub const MAX_SITES: usize = 100;

/// A refusal's class (`4xx`, `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// `4xx` or `5xx`.
    pub class: String,
}

/// One delivery attempt's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The egress IP, or `smarthost:NAME`.
    pub egress: String,
    /// The destination site (bounded, see [`MAX_SITES`]).
    pub site: String,
    /// The verdict (`delivered`, `ip-reputation`, …).
    pub verdict: String,
}

/// A queue state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `active` or `deferred`, as `sidestep queue` says.
    pub state: String,
}

/// One sender (`user:NAME` or `domain:NAME`, bounded like sites: the first
/// [`MAX_SENDERS`] get their own label, the rest are `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderLabels {
    /// The sender.
    pub sender: String,
}

/// Senders with a label of their own; beyond them, `other`.
pub const MAX_SENDERS: usize = 100;

/// A bounce's labels: where it came from and when it was known.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceLabels {
    /// The sender (`domain:NAME`, `user:NAME`) or the site, bounded.
    pub who: String,
    /// `session` (refused in the SMTP session) or `late` (a bounce by mail).
    pub when: String,
    /// `hard`, `soft` or `block`.
    pub kind: String,
}

/// What became of one mail to a bounce domain.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `resolved`, `forged`, `no-token`, `unreadable`, `complaint`.
    pub result: String,
}

/// One egress IP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    /// The egress IP.
    pub egress: String,
}

/// One egress IP on one list.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListingLabels {
    /// The egress IP.
    pub egress: String,
    /// The list's zone.
    pub list: String,
}

/// One outbound TLS session's policy and result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsSessionLabels {
    /// `sts`, `tlsa` or `none` (TLS-RPT's policy types).
    pub policy: String,
    /// `success` or the TLS-RPT failure type (`certificate-host-mismatch`, …).
    pub result: String,
}

/// Every metric sidestep exports.
pub struct Metrics {
    registry: Registry,
    /// Messages accepted (`250` after DATA).
    pub accepted: Counter,
    /// Messages refused after DATA, by class.
    pub refused: Family<ClassLabels, Counter>,
    /// Delivery attempts by egress, site and verdict.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Deliveries handed to a fallback smarthost.
    pub smarthost_deliveries: Counter,
    /// Deliveries that left from an address the sender's SPF does not authorise,
    /// because no authorised one was usable (`[delivery] spf = "prefer"`).
    pub spf_unauthorised: Counter,
    /// Deliveries that waited because no address SPF authorises was usable
    /// (`[delivery] spf = "require"`).
    pub spf_waiting: Counter,
    /// SPF evaluations made (not answered from the cache): once per (domain, IP) per TTL.
    pub spf_evaluations: Counter,
    /// Authentication refusals (SPF/DKIM/DMARC) received.
    pub auth_refusals: Counter,
    /// Seconds the spool took to make a message durable.
    pub spool_commit: Histogram,
    /// Seconds from the end of DATA to the `250`.
    pub accept_latency: Histogram,
    /// DNS lookups that failed (not NXDOMAIN).
    pub dns_failures: Counter,
    /// Messages in the queue by state (set when scraped).
    pub queue_messages: Family<StateLabels, Gauge>,
    /// Inbound sessions open (set when scraped).
    pub sessions_open: Gauge,
    /// Age in seconds of the oldest queued message, 0 for an empty queue (set when scraped).
    pub oldest_age: Gauge,
    /// Blocks (learned or manual) holding now, by egress IP (set when scraped).
    pub blocks_active: Family<EgressLabels, Gauge>,
    /// 1 when an egress IP is listed on a list (set when scraped).
    pub listed: Family<ListingLabels, Gauge>,
    /// Failed SMTP logins.
    pub auth_failures: Counter,
    /// Client addresses locked out of AUTH.
    pub auth_lockouts: Counter,
    /// MAIL or RCPT refused for a quota.
    pub quota_refusals: Counter,
    /// Senders suspended now (set when scraped).
    pub senders_suspended: Gauge,
    /// Bulk mail accepted without one-click unsubscribe, by sender.
    pub bulk_without_one_click: Family<SenderLabels, Counter>,
    /// Outbound sessions by TLS policy and result.
    pub tls_sessions: Family<TlsSessionLabels, Counter>,
    /// DKIM signatures made at acceptance.
    pub dkim_signatures: Counter,
    /// Messages refused with 451 because signing failed.
    pub dkim_failures: Counter,
    /// Bounces per sender, in the session and late.
    pub bounces_by_sender: Family<BounceLabels, Counter>,
    /// Bounces per site, in the session and late.
    pub bounces_by_site: Family<BounceLabels, Counter>,
    /// Mail to the bounce domains, by what became of it (a forged token is `forged`).
    pub bounce_mail: Family<ResultLabels, Counter>,
    /// Addresses put on the suppression list, by reason and when it was known.
    pub suppressions: Family<BounceLabels, Counter>,
    sites: Mutex<HashSet<String>>,
    senders: Mutex<HashSet<String>>,
    /// The latest refusals, newest last, for the status page.
    recent: Mutex<std::collections::VecDeque<Refusal>>,
    /// Per minute of the last hour: (Unix minute, what the attempts came to).
    minutes: Mutex<[(u64, MinuteCounts); 60]>,
}

/// What the attempts of one minute came to, for the status page's last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Recipients delivered.
    pub delivered: u32,
    /// Recipients deferred (to be tried again).
    pub deferred: u32,
    /// Recipients bounced (failed for good; a DSN goes to the sender).
    pub bounced: u32,
    /// Of the deferred and bounced, those a server refused (a 4xx or 5xx reply).
    pub refused: u32,
}

/// What became of one recipient's attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// Delivered.
    Delivered,
    /// To be tried again.
    Deferred,
    /// Failed for good.
    Bounced,
}

impl AttemptResult {
    /// The log's word for it: `sent`, `deferred`, `bounced`.
    pub fn word(self) -> &'static str {
        match self {
            Self::Delivered => "sent",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
        }
    }
}

impl MinuteCounts {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &MinuteCounts) {
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        self.refused += other.refused;
    }
}

/// Refusals kept for the status page.
pub const RECENT_REFUSALS: usize = 50;

/// One refusal, as the status page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// Unix seconds.
    pub at: u64,
    /// The egress IP or `smarthost:NAME`.
    pub egress: String,
    /// The destination site.
    pub site: String,
    /// The verdict.
    pub verdict: String,
    /// The reply as received.
    pub reply: String,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sidestep");
        let m = Metrics {
            accepted: Counter::default(),
            refused: Family::default(),
            deliveries: Family::default(),
            smarthost_deliveries: Counter::default(),
            spf_unauthorised: Counter::default(),
            spf_waiting: Counter::default(),
            auth_refusals: Counter::default(),
            spf_evaluations: Counter::default(),
            // 50 µs to about 1.6 s.
            spool_commit: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            accept_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            dns_failures: Counter::default(),
            queue_messages: Family::default(),
            sessions_open: Gauge::default(),
            oldest_age: Gauge::default(),
            blocks_active: Family::default(),
            listed: Family::default(),
            auth_failures: Counter::default(),
            auth_lockouts: Counter::default(),
            quota_refusals: Counter::default(),
            senders_suspended: Gauge::default(),
            bulk_without_one_click: Family::default(),
            tls_sessions: Family::default(),
            dkim_signatures: Counter::default(),
            dkim_failures: Counter::default(),
            bounces_by_sender: Family::default(),
            bounces_by_site: Family::default(),
            bounce_mail: Family::default(),
            suppressions: Family::default(),
            sites: Mutex::new(HashSet::new()),
            senders: Mutex::new(HashSet::new()),
            recent: Mutex::new(std::collections::VecDeque::with_capacity(RECENT_REFUSALS)),
            minutes: Mutex::new([(0, MinuteCounts::default()); 60]),
            registry: Registry::default(),
        };
        registry.register(
            "messages_accepted",
            "Messages accepted with 250 after DATA",
            m.accepted.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages refused after DATA, by reply class",
            m.refused.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts by egress IP, site and verdict",
            m.deliveries.clone(),
        );
        registry.register(
            "smarthost_deliveries",
            "Deliveries handed to a fallback smarthost",
            m.smarthost_deliveries.clone(),
        );
        registry.register(
            "spf_unauthorised",
            "Deliveries sent from an address the sender's SPF does not authorise (none that it does was usable)",
            m.spf_unauthorised.clone(),
        );
        registry.register(
            "spf_waiting",
            "Deliveries deferred because no address the sender's SPF authorises was usable (spf = require)",
            m.spf_waiting.clone(),
        );
        registry.register(
            "spf_evaluations",
            "SPF evaluations made, not answered from the cache (one per sender domain and IP per TTL)",
            m.spf_evaluations.clone(),
        );
        registry.register(
            "authentication_refusals",
            "Refusals for SPF, DKIM, DMARC or alignment",
            m.auth_refusals.clone(),
        );
        registry.register(
            "spool_commit_seconds",
            "Time to make an accepted message durable",
            m.spool_commit.clone(),
        );
        registry.register(
            "accept_latency_seconds",
            "End of DATA to 250",
            m.accept_latency.clone(),
        );
        registry.register(
            "dns_failures",
            "DNS lookups that failed temporarily",
            m.dns_failures.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the queue by state",
            m.queue_messages.clone(),
        );
        registry.register(
            "inbound_sessions",
            "Inbound SMTP sessions open",
            m.sessions_open.clone(),
        );
        registry.register(
            "oldest_message_age_seconds",
            "Age of the oldest queued message",
            m.oldest_age.clone(),
        );
        registry.register(
            "blocks_active",
            "Blocks holding now, by egress IP",
            m.blocks_active.clone(),
        );
        registry.register(
            "listed",
            "1 when the egress IP is on the list",
            m.listed.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed SMTP logins",
            m.auth_failures.clone(),
        );
        registry.register(
            "auth_lockouts",
            "Client addresses locked out of AUTH",
            m.auth_lockouts.clone(),
        );
        registry.register(
            "quota_refusals",
            "MAIL or RCPT refused with 450 for a sender quota",
            m.quota_refusals.clone(),
        );
        registry.register(
            "senders_suspended",
            "Senders suspended now",
            m.senders_suspended.clone(),
        );
        registry.register(
            "bulk_without_one_click",
            "Bulk mail accepted without RFC 8058 one-click unsubscribe, by sender",
            m.bulk_without_one_click.clone(),
        );
        registry.register(
            "tls_sessions",
            "Outbound sessions by TLS policy (sts, tlsa, none) and result (success or the TLS-RPT failure type)",
            m.tls_sessions.clone(),
        );
        registry.register(
            "dkim_signatures",
            "DKIM signatures made at acceptance",
            m.dkim_signatures.clone(),
        );
        registry.register(
            "dkim_failures",
            "Messages refused with 451 because DKIM signing failed",
            m.dkim_failures.clone(),
        );
        registry.register(
            "bounces_by_sender",
            "Recipient bounces (hard, soft) and IP blocks their mail drew, per sender, in the session or late",
            m.bounces_by_sender.clone(),
        );
        registry.register(
            "bounces_by_site",
            "Recipient bounces (hard, soft) and IP blocks, per site, in the session or late",
            m.bounces_by_site.clone(),
        );
        registry.register(
            "bounce_mail",
            "Mail to the bounce domains, by result (resolved, forged, no-token, unreadable, complaint)",
            m.bounce_mail.clone(),
        );
        registry.register(
            "suppressions_added",
            "Addresses put on the suppression list",
            m.suppressions.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a bounce of `kind` (`hard`, `soft`, `block`) drawn by `sender` at `site`.
    pub fn bounce(&self, sender: Option<&str>, site: Option<&str>, late: bool, kind: &str) {
        let when = if late { "late" } else { "session" }.to_string();
        let sender = bounded(&self.senders, sender.unwrap_or("-"), MAX_SENDERS);
        self.bounces_by_sender
            .get_or_create(&BounceLabels {
                who: sender,
                when: when.clone(),
                kind: kind.to_string(),
            })
            .inc();
        self.bounces_by_site
            .get_or_create(&BounceLabels {
                who: self.site_label(site.unwrap_or("-")),
                when,
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts an address suppressed for `reason`.
    pub fn suppressed(&self, reason: &str, late: bool) {
        self.suppressions
            .get_or_create(&BounceLabels {
                who: "-".into(),
                when: if late { "late" } else { "session" }.into(),
                kind: reason.to_string(),
            })
            .inc();
    }

    /// Counts one mail to a bounce domain by what became of it.
    pub fn bounce_mail(&self, result: &str) {
        self.bounce_mail
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts bulk mail from `sender` that lacks one-click unsubscribe.
    pub fn bulk_without_one_click(&self, sender: &str) {
        let sender = bounded(&self.senders, sender, MAX_SENDERS);
        self.bulk_without_one_click
            .get_or_create(&SenderLabels { sender })
            .inc();
    }

    /// Counts an outbound session under a TLS policy (`result` is `success` or a
    /// TLS-RPT failure type: both small fixed sets).
    pub fn tls_session(&self, policy: &str, result: &str) {
        self.tls_sessions
            .get_or_create(&TlsSessionLabels {
                policy: policy.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a delivery attempt.
    pub fn delivery(&self, egress: &str, site: Option<&str>, verdict: &str) {
        let site = self.site_label(site.unwrap_or("-"));
        self.deliveries
            .get_or_create(&DeliveryLabels {
                egress: egress.to_string(),
                site,
                verdict: verdict.to_string(),
            })
            .inc();
    }

    /// Remembers an attempt for the status page: counted in its minute, and kept among
    /// the latest refusals when it was one.
    pub fn remember(&self, now: u64, result: AttemptResult, refusal: Option<Refusal>) {
        let minute = now / 60;
        {
            let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
            let slot = &mut minutes[(minute % 60) as usize];
            if slot.0 != minute {
                *slot = (minute, MinuteCounts::default());
            }
            let counts = &mut slot.1;
            match result {
                AttemptResult::Delivered => counts.delivered += 1,
                AttemptResult::Deferred => counts.deferred += 1,
                AttemptResult::Bounced => counts.bounced += 1,
            }
            counts.refused += u32::from(refusal.is_some());
        }
        if let Some(r) = refusal {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_REFUSALS {
                recent.pop_front();
            }
            recent.push_back(r);
        }
    }

    /// The latest refusals, newest first.
    pub fn recent_refusals(&self) -> Vec<Refusal> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// What the attempts came to per minute of the hour before `now`, oldest first.
    pub fn last_hour(&self, now: u64) -> Vec<MinuteCounts> {
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        let current = now / 60;
        (0..60)
            .rev()
            .map(|back| {
                let minute = current.saturating_sub(back);
                let slot = minutes[(minute % 60) as usize];
                if slot.0 == minute {
                    slot.1
                } else {
                    MinuteCounts::default()
                }
            })
            .collect()
    }

    fn site_label(&self, site: &str) -> String {
        bounded(&self.sites, site, MAX_SITES)
    }

    /// The text exposition format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `value` as a label: itself while `seen` holds fewer than `max` values (or holds it),
/// else `other`, so that a label's values stay bounded.
fn bounded(seen: &Mutex<HashSet<String>>, value: &str, max: usize) -> String {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(value) {
        return value.to_string();
    }
    if seen.len() < max {
        seen.insert(value.to_string());
        return value.to_string();
    }
    "other".into()
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
