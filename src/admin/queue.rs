//! `/api/v1/queue…`: the queue, read from the spool's records and the scheduler's list
//! of attempts under way.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::Admin;
use super::api::{
    DomainCount, GroupCount, ListQuery, MessageList, MessageView, QueueSummary, RecipientView,
};
use crate::spool::{QueuedMessage, RecipientState, RecipientStatus};

/// The queue as the spool holds it, with each message's state and where each domain's
/// mail goes.
pub(super) struct Snapshot {
    /// Every record with its state, oldest first.
    pub records: Vec<(QueuedMessage, &'static str)>,
    /// Domain → site, from the latest attempts of any message: a recipient not tried yet
    /// counts under its domain's site when another message found it.
    sites: HashMap<String, String>,
}

/// Where one pending recipient goes, as far as the queue knows.
pub(super) struct Destination {
    pub domain: String,
    /// The site, or `-` when its domain was never tried.
    pub site: String,
    /// The latest attempt's egress, or `-`.
    pub egress: String,
}

impl Snapshot {
    /// Where `r` goes.
    pub fn destination(&self, r: &RecipientState) -> Destination {
        let domain = r.address.domain().to_ascii_lowercase();
        let route = r.route.as_ref();
        let site = route
            .and_then(|l| l.site.clone())
            .or_else(|| self.sites.get(&domain).cloned())
            .unwrap_or_else(|| "-".into());
        Destination {
            domain,
            site,
            egress: route.map_or_else(|| "-".into(), |l| l.egress.clone()),
        }
    }

    /// Whether `m` has a pending recipient that matches every filter given.
    pub fn matches(
        &self,
        m: &QueuedMessage,
        domain: Option<&str>,
        site: Option<&str>,
        egress: Option<&str>,
    ) -> bool {
        if domain.is_none() && site.is_none() && egress.is_none() {
            return true;
        }
        m.pending().any(|r| {
            let d = self.destination(r);
            domain.is_none_or(|x| d.domain.eq_ignore_ascii_case(x))
                && site.is_none_or(|x| d.site.eq_ignore_ascii_case(x))
                && egress.is_none_or(|x| d.egress == x)
        })
    }
}

/// Every record with its state, oldest first.
pub(super) async fn snapshot(admin: &Admin) -> Result<Snapshot, StatusCode> {
    let spool = admin.spool.clone();
    let mut records = tokio::task::spawn_blocking(move || spool.recover())
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .map_err(|e| {
            tracing::warn!(error = %e, "admin: cannot read the queue");
            StatusCode::SERVICE_UNAVAILABLE
        })?;
    records.sort_by_key(|m| (m.received_at, m.id.clone()));
    let active: HashSet<_> = admin.queue.in_flight().await.into_iter().collect();
    let mut sites = HashMap::new();
    for r in records.iter().flat_map(|m| &m.recipients) {
        if let Some(site) = r.route.as_ref().and_then(|l| l.site.as_ref()) {
            sites.insert(r.address.domain().to_ascii_lowercase(), site.clone());
        }
    }
    let records = records
        .into_iter()
        .map(|m| {
            let state = if active.contains(&m.id) {
                "active"
            } else if m.held {
                "held"
            } else {
                "deferred"
            };
            (m, state)
        })
        .collect();
    Ok(Snapshot { records, sites })
}

/// Adds one pending recipient of a message `age` seconds old to a group's counts
/// (messages counted once).
fn count(
    groups: &mut HashMap<String, GroupCount>,
    seen: &mut HashSet<String>,
    name: &str,
    age: u64,
) {
    let g = groups
        .entry(name.to_string())
        .or_insert_with(|| GroupCount {
            name: name.to_string(),
            messages: 0,
            recipients: 0,
            oldest_age_s: 0,
        });
    g.recipients += 1;
    g.oldest_age_s = g.oldest_age_s.max(age);
    if seen.insert(name.to_string()) {
        g.messages += 1;
    }
}

/// Groups largest first (by recipients), then by name.
fn largest_first(groups: HashMap<String, GroupCount>) -> Vec<GroupCount> {
    let mut v: Vec<GroupCount> = groups.into_values().collect();
    v.sort_by(|a, b| b.recipients.cmp(&a.recipients).then(a.name.cmp(&b.name)));
    v
}

/// `GET /api/v1/queue`.
pub(super) async fn summary(State(admin): State<Admin>) -> Result<Json<QueueSummary>, StatusCode> {
    summarize(&admin).await.map(Json)
}

/// The queue at a glance (the summary endpoint and the status page).
pub(super) async fn summarize(admin: &Admin) -> Result<QueueSummary, StatusCode> {
    let snap = snapshot(admin).await?;
    let now = admin.clock.now();
    let mut s = QueueSummary {
        messages: snap.records.len(),
        ..QueueSummary::default()
    };
    let mut domains = HashMap::new();
    let mut sites = HashMap::new();
    let mut egresses = HashMap::new();
    for (m, state) in &snap.records {
        *s.by_state.entry((*state).to_string()).or_default() += 1;
        let (mut seen_domains, mut seen_sites, mut seen_egresses) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        let age = now.saturating_sub(m.received_at);
        for r in m.pending() {
            s.pending_recipients += 1;
            let d = snap.destination(r);
            count(&mut domains, &mut seen_domains, &d.domain, age);
            count(&mut sites, &mut seen_sites, &d.site, age);
            count(&mut egresses, &mut seen_egresses, &d.egress, age);
        }
        s.oldest_age_s = Some(s.oldest_age_s.map_or(age, |o| o.max(age)));
    }
    for state in ["active", "deferred", "held"] {
        s.by_state.entry(state.into()).or_default();
    }
    let mut by_domain: Vec<DomainCount> = domains
        .into_iter()
        .map(|(domain, g)| DomainCount {
            domain,
            messages: g.messages,
            recipients: g.recipients,
        })
        .collect();
    by_domain.sort_by(|a, b| {
        b.recipients
            .cmp(&a.recipients)
            .then(a.domain.cmp(&b.domain))
    });
    s.by_domain = by_domain;
    s.by_site = largest_first(sites);
    s.sites_down = admin.site_health.down();
    s.by_egress = largest_first(egresses);
    Ok(s)
}

/// `GET /api/v1/queue/messages?domain=&site=&egress=&state=&limit=&offset=`.
pub(super) async fn list(
    State(admin): State<Admin>,
    Query(q): Query<ListQuery>,
) -> Result<Json<MessageList>, StatusCode> {
    let now = admin.clock.now();
    let snap = snapshot(&admin).await?;
    let matching: Vec<MessageView> = snap
        .records
        .iter()
        .filter(|(m, state)| {
            q.state.as_deref().is_none_or(|s| s == *state)
                && snap.matches(
                    m,
                    q.domain.as_deref(),
                    q.site.as_deref(),
                    q.egress.as_deref(),
                )
        })
        .map(|(m, state)| view(&snap, m, state, now))
        .collect();
    let total = matching.len();
    let messages = matching
        .into_iter()
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(100))
        .collect();
    Ok(Json(MessageList { total, messages }))
}

/// `GET /api/v1/queue/messages/{id}`.
pub(super) async fn show(
    State(admin): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, StatusCode> {
    let now = admin.clock.now();
    let snap = snapshot(&admin).await?;
    snap.records
        .iter()
        .find(|(m, _)| m.id.as_str() == id)
        .map(|(m, state)| Json(view(&snap, m, state, now)))
        .ok_or(StatusCode::NOT_FOUND)
}

fn view(snap: &Snapshot, m: &QueuedMessage, state: &str, now: u64) -> MessageView {
    let when = |secs: u64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
    };
    MessageView {
        id: m.id.to_string(),
        sender: m.sender.to_string(),
        state: state.to_string(),
        received: when(m.received_at),
        age_s: now.saturating_sub(m.received_at),
        attempts: m.attempts,
        next_attempt: when(m.next_attempt_ms / 1000),
        size: m.size,
        client: m.client.clone(),
        recipients: m
            .recipients
            .iter()
            .map(|r| {
                let (status, reply) = match &r.status {
                    RecipientStatus::Pending { last } => ("pending", last.as_ref()),
                    RecipientStatus::Delivered { reply, .. } => ("delivered", Some(reply)),
                    RecipientStatus::Failed { reply, .. } => ("failed", Some(reply)),
                };
                let d = snap.destination(r);
                RecipientView {
                    address: r.address.to_string(),
                    status: status.to_string(),
                    reply: reply.map(|r| r.to_string()),
                    site: (d.site != "-").then_some(d.site),
                    egress: (d.egress != "-").then_some(d.egress),
                }
            })
            .collect(),
        history: m.history.clone(),
        held_reason: m.held_reason.clone(),
        user: m.user.clone(),
    }
}
