//! `GET /metrics`: the Prometheus text format. Gauges of state are set here, at scrape
//! time, from the handles that own the state.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::Admin;
use crate::metrics::{EgressLabels, ListingLabels, StateLabels, metrics};
use crate::reputation::ListingState;

/// `GET /metrics`.
pub(super) async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    let m = metrics();
    let (active, waiting) = admin.queue.sizes().await;
    // The CLI's words for the states (held mail is not scheduled, so not counted).
    for (state, n) in [("active", active), ("deferred", waiting)] {
        m.queue_messages
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .set(n as i64);
    }
    // From the oldest queue id alone: a scrape never reads every record.
    let spool = admin.spool.clone();
    if let Ok(Ok(oldest)) = tokio::task::spawn_blocking(move || spool.oldest_accepted()).await {
        let age = oldest.map_or(0, |at| admin.clock.now().saturating_sub(at));
        m.oldest_age.set(age as i64);
    }
    if let Some(sessions) = &admin.sessions {
        m.sessions_open.set(sessions.running() as i64);
    }
    m.senders_suspended
        .set(admin.senders.suspensions().len() as i64);
    let report = admin.reputation.report();
    let now = admin.clock.now();
    let mut blocks: HashMap<String, i64> = HashMap::new();
    for b in &report.blocks {
        let held = i64::from(b.expires_at > now);
        *blocks.entry(b.ip.to_string()).or_default() += held;
    }
    for (egress, n) in blocks {
        m.blocks_active
            .get_or_create(&EgressLabels { egress })
            .set(n);
    }
    for r in &report.records {
        let listed = i64::from(matches!(r.state, ListingState::Listed { .. }));
        m.listed
            .get_or_create(&ListingLabels {
                egress: r.ip.to_string(),
                list: r.zone.clone(),
            })
            .set(listed);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}
