//! `/api/v1/queue…`: the queue, read from the spool's records and the scheduler's list
//! of attempts under way.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::Admin;
use super::api::{DomainCount, ListQuery, MessageList, MessageView, QueueSummary, RecipientView};
use crate::spool::{QueuedMessage, RecipientStatus};

/// Every record with its state, oldest first.
async fn snapshot(admin: &Admin) -> Result<Vec<(QueuedMessage, &'static str)>, StatusCode> {
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
    Ok(records
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
        .collect())
}

/// `GET /api/v1/queue`.
pub(super) async fn summary(State(admin): State<Admin>) -> Result<Json<QueueSummary>, StatusCode> {
    summarize(&admin).await.map(Json)
}

/// The queue at a glance (the summary endpoint and the status page).
pub(super) async fn summarize(admin: &Admin) -> Result<QueueSummary, StatusCode> {
    let records = snapshot(admin).await?;
    let now = admin.clock.now();
    let mut s = QueueSummary {
        messages: records.len(),
        ..QueueSummary::default()
    };
    let mut domains: HashMap<String, (usize, usize)> = HashMap::new();
    for (m, state) in &records {
        *s.by_state.entry((*state).to_string()).or_default() += 1;
        let mut seen = HashSet::new();
        for r in m.pending() {
            s.pending_recipients += 1;
            let d = domains
                .entry(r.address.domain().to_ascii_lowercase())
                .or_default();
            d.1 += 1;
            if seen.insert(r.address.domain().to_ascii_lowercase()) {
                d.0 += 1;
            }
        }
        let age = now.saturating_sub(m.received_at);
        s.oldest_age_s = Some(s.oldest_age_s.map_or(age, |o| o.max(age)));
    }
    for state in ["active", "deferred", "held"] {
        s.by_state.entry(state.into()).or_default();
    }
    let mut by_domain: Vec<DomainCount> = domains
        .into_iter()
        .map(|(domain, (messages, recipients))| DomainCount {
            domain,
            messages,
            recipients,
        })
        .collect();
    by_domain.sort_by(|a, b| {
        b.recipients
            .cmp(&a.recipients)
            .then(a.domain.cmp(&b.domain))
    });
    s.by_domain = by_domain;
    Ok(s)
}

/// `GET /api/v1/queue/messages?domain=&state=&limit=&offset=`.
pub(super) async fn list(
    State(admin): State<Admin>,
    Query(q): Query<ListQuery>,
) -> Result<Json<MessageList>, StatusCode> {
    let now = admin.clock.now();
    let domain = q.domain.as_deref().map(str::to_ascii_lowercase);
    let matching: Vec<MessageView> = snapshot(&admin)
        .await?
        .into_iter()
        .filter(|(m, state)| {
            q.state.as_deref().is_none_or(|s| s == *state)
                && domain.as_deref().is_none_or(|d| {
                    m.pending()
                        .any(|r| r.address.domain().eq_ignore_ascii_case(d))
                })
        })
        .map(|(m, state)| view(&m, state, now))
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
    snapshot(&admin)
        .await?
        .into_iter()
        .find(|(m, _)| m.id.as_str() == id)
        .map(|(m, state)| Json(view(&m, state, now)))
        .ok_or(StatusCode::NOT_FOUND)
}

fn view(m: &QueuedMessage, state: &str, now: u64) -> MessageView {
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
                RecipientView {
                    address: r.address.to_string(),
                    status: status.to_string(),
                    reply: reply.map(|r| r.to_string()),
                }
            })
            .collect(),
    }
}
