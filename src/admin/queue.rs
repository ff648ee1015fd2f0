//! `/api/v1/queue…`: the queue, read from the spool's records (streamed, never all in
//! memory) and the scheduler's list of attempts under way.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::Admin;
use super::api::{
    DomainCount, GroupCount, ListQuery, MessageList, MessageView, QueueSummary, RecipientView,
};
use crate::spool::{QueueId, QueuedMessage, RecipientState, RecipientStatus};

/// Where each domain's mail goes, learned from the latest attempts of any message: a
/// recipient not tried yet counts under its domain's site when another message found it.
pub(super) struct Routes {
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

impl Routes {
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

/// Folds every record, oldest first, with its state (`active`, `held`, `deferred`) into
/// `acc`, reading them one at a time on a blocking thread: a queue of a million costs
/// the time to read it, not the memory to hold it. Two passes: the first learns where
/// each domain goes, so that the second can place mail not tried yet.
pub(super) async fn scan<T, F>(admin: &Admin, acc: T, mut f: F) -> Result<T, StatusCode>
where
    T: Send + 'static,
    F: FnMut(&mut T, &Routes, QueuedMessage, &'static str) -> bool + Send + 'static,
{
    let active: HashSet<QueueId> = admin.queue.in_flight().await.into_iter().collect();
    let spool = admin.spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut sites = HashMap::new();
        spool.visit(|m| {
            for r in m.recipients {
                if let Some(site) = r.route.and_then(|l| l.site) {
                    sites.insert(r.address.domain().to_ascii_lowercase(), site);
                }
            }
            true
        })?;
        let routes = Routes { sites };
        let mut acc = acc;
        spool.visit(|m| {
            let state = if active.contains(&m.id) {
                "active"
            } else if m.held {
                "held"
            } else {
                "deferred"
            };
            f(&mut acc, &routes, m, state)
        })?;
        Ok(acc)
    })
    .await
    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
    .map_err(|e: crate::spool::SpoolError| {
        tracing::warn!(error = %e, "admin: cannot read the queue");
        StatusCode::SERVICE_UNAVAILABLE
    })
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
    #[derive(Default)]
    struct Counts {
        s: QueueSummary,
        domains: HashMap<String, GroupCount>,
        sites: HashMap<String, GroupCount>,
        egresses: HashMap<String, GroupCount>,
    }
    let now = admin.clock.now();
    let c = scan(admin, Counts::default(), move |c, routes, m, state| {
        c.s.messages += 1;
        *c.s.by_state.entry(state.to_string()).or_default() += 1;
        let (mut seen_domains, mut seen_sites, mut seen_egresses) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        let age = now.saturating_sub(m.received_at);
        for r in m.pending() {
            c.s.pending_recipients += 1;
            let d = routes.destination(r);
            count(&mut c.domains, &mut seen_domains, &d.domain, age);
            count(&mut c.sites, &mut seen_sites, &d.site, age);
            count(&mut c.egresses, &mut seen_egresses, &d.egress, age);
        }
        c.s.oldest_age_s = Some(c.s.oldest_age_s.map_or(age, |o| o.max(age)));
        true
    })
    .await?;
    let (mut s, domains, sites, egresses) = (c.s, c.domains, c.sites, c.egresses);
    for state in super::api::QUEUE_STATES {
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
) -> Result<Json<MessageList>, (StatusCode, String)> {
    if let Some(state) = q.state.as_deref()
        && !super::api::QUEUE_STATES.contains(&state)
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "no queue state {state:?}: one of {}\n",
                super::api::QUEUE_STATES.join(", ")
            ),
        ));
    }
    let now = admin.clock.now();
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100));
    let (total, messages) = scan(
        &admin,
        (0, Vec::new()),
        move |(total, page), routes, m, state| {
            let wanted = q.state.as_deref().is_none_or(|s| s == state)
                && routes.matches(
                    &m,
                    q.domain.as_deref(),
                    q.site.as_deref(),
                    q.egress.as_deref(),
                );
            if wanted {
                if *total >= offset && page.len() < limit {
                    page.push(view(routes, &m, state, now));
                }
                *total += 1;
            }
            true
        },
    )
    .await
    .map_err(|code| (code, "cannot read the queue\n".to_string()))?;
    Ok(Json(MessageList { total, messages }))
}

/// `GET /api/v1/queue/messages/{id}`. A message that is gone: 404, and the text says
/// what became of it when the spool remembers ([`crate::spool::Departed`]).
pub(super) async fn show(
    State(admin): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, (StatusCode, String)> {
    let now = admin.clock.now();
    let wanted = QueueId::from(id.as_str());
    let lookup = wanted.clone();
    scan(&admin, None, move |found, routes, m, state| {
        if m.id != lookup {
            return true;
        }
        *found = Some(view(routes, &m, state, now));
        false
    })
    .await
    .map_err(|code| (code, "cannot read the queue\n".to_string()))?
    .map(Json)
    .ok_or_else(|| (StatusCode::NOT_FOUND, gone(&admin, &wanted)))
}

/// What became of a message that is not in the queue.
fn gone(admin: &Admin, id: &QueueId) -> String {
    match admin.spool.departed(id) {
        Some(d) => format!(
            "{id} is not in the queue: {} at {}\n",
            d.departure,
            crate::clock::rfc3339(d.at)
        ),
        None => format!(
            "{id} is not in the queue (delivered, bounced or deleted before the relay's last start or among more than the last {} to leave, or never queued; see the log)\n",
            crate::spool::DEPARTED_MAX
        ),
    }
}

fn view(routes: &Routes, m: &QueuedMessage, state: &str, now: u64) -> MessageView {
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
        next_attempt: (!m.held).then(|| when(m.next_attempt_ms / 1000)),
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
                let d = routes.destination(r);
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
