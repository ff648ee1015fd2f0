//! `[quotas]` and `[suspension]`: limits on, and the abuse guard over, each sender.

use std::net::IpAddr;

use serde::Deserialize;

use super::*;

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
    /// Hard bounces (unknown user, disabled mailbox), in the session or late by mail to
    /// the return path, at least this many…
    pub hard_bounces: u32,
    /// …making at least this share of its delivery attempts (receivers count
    /// unknown-user rates against the sender; Gmail and Yahoo cite them).
    pub bounce_ratio: f64,
    /// `temporary` (`451 4.7.1`: the client keeps the mail) or `permanent` (`550 5.7.1`).
    pub reply: SuspendedReply,
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
            hard_bounces: 50,
            bounce_ratio: 0.1,
            reply: SuspendedReply::Temporary,
        }
    }
}
