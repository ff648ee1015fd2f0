//! What the admin API answers, shared by its handlers and the CLI that prints it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /api/v1/queue`: the queue at a glance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Messages in the queue.
    pub messages: usize,
    /// Recipients not yet delivered or bounced, over all messages.
    pub pending_recipients: usize,
    /// Messages by state: `active` (an attempt under way) and `deferred` (waiting for
    /// their next attempt).
    pub by_state: BTreeMap<String, usize>,
    /// Pending recipients by destination domain, largest first.
    pub by_domain: Vec<DomainCount>,
    /// Pending recipients by destination site (the MX set the latest attempt found;
    /// `-` for domains not tried yet), largest first.
    #[serde(default)]
    pub by_site: Vec<GroupCount>,
    /// Pending recipients by the egress IP of their latest attempt (`smarthost:NAME`
    /// through a smarthost, `-` when not tried yet or nothing could be sent), largest
    /// first.
    #[serde(default)]
    pub by_egress: Vec<GroupCount>,
    /// Age in seconds of the oldest message, if any.
    pub oldest_age_s: Option<u64>,
    /// Destination sites marked down (no server answered): their mail is parked, one
    /// probe per interval.
    #[serde(default)]
    pub sites_down: Vec<crate::routing::DownSite>,
}

/// Pending recipients of one destination domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainCount {
    /// The recipient domain.
    pub domain: String,
    /// Messages with a pending recipient there.
    pub messages: usize,
    /// Pending recipients there.
    pub recipients: usize,
}

/// Pending recipients of one site or egress IP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupCount {
    /// The site or egress IP.
    pub name: String,
    /// Messages with a pending recipient there.
    pub messages: usize,
    /// Pending recipients there.
    pub recipients: usize,
    /// Age in seconds of the oldest of those messages.
    pub oldest_age_s: u64,
}

/// `GET /api/v1/queue/messages`: filters and paging.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only messages with a pending recipient in this domain.
    pub domain: Option<String>,
    /// Only messages with a pending recipient at this site.
    pub site: Option<String>,
    /// Only messages with a pending recipient last tried from this egress IP (or
    /// `smarthost:NAME`).
    pub egress: Option<String>,
    /// Only messages in this state (`active`, `deferred`).
    pub state: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
    /// Skip this many first (oldest first).
    pub offset: Option<usize>,
}

/// The states a queued message is in, in the words of the CLI, the API and `/metrics`:
/// `active` (an attempt under way), `deferred` (waiting for its next attempt), `held`.
pub const QUEUE_STATES: [&str; 3] = ["active", "deferred", "held"];

/// One page of the queue listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessageList {
    /// Messages matching the filters, over all pages.
    pub total: usize,
    /// This page, oldest first.
    pub messages: Vec<MessageView>,
}

/// One queued message as the operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// The queue id (in the `250` reply and every log line).
    pub id: String,
    /// The envelope sender (`<>` for DSNs).
    pub sender: String,
    /// `active` or `deferred`.
    pub state: String,
    /// When it was accepted (RFC 3339).
    pub received: String,
    /// Seconds since then.
    pub age_s: u64,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (RFC 3339); none while it is held.
    pub next_attempt: Option<String>,
    /// Body size in bytes.
    pub size: u64,
    /// The client that handed it over.
    pub client: String,
    /// Every recipient with where it stands.
    pub recipients: Vec<RecipientView>,
    /// Why it is held, when it is and not by the operator's hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    /// The logged-in user that handed it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The latest attempts, oldest first: which IP, which site, what was said.
    #[serde(default)]
    pub history: Vec<crate::spool::AttemptRecord>,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientView {
    /// The address.
    pub address: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// The latest reply: the last temporary failure, the acceptance or the refusal.
    pub reply: Option<String>,
    /// The site of the latest attempt (or of the domain, from other messages' attempts).
    #[serde(default)]
    pub site: Option<String>,
    /// The egress of the latest attempt.
    #[serde(default)]
    pub egress: Option<String>,
}

/// `POST /api/v1/reload` (and SIGHUP): what re-reading the configuration did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The new configuration is in force (for new sessions and attempts).
    pub applied: bool,
    /// Why it was not: every problem, with its key. The old configuration stays.
    pub problems: Vec<String>,
    /// Settings that changed but take effect only after a restart.
    pub restart_needed: Vec<String>,
}
