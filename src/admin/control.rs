//! The operator's commands on the queue: flush, hold, release, delete.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::Admin;
use crate::queue::Control;
use crate::queue::operator::{self, OperatorError};
use crate::spool::QueueId;

/// `POST /api/v1/queue/flush`: which messages (all without a filter).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FlushQuery {
    /// Only this message.
    pub id: Option<String>,
    /// Only messages with a pending recipient in this domain.
    pub domain: Option<String>,
    /// Only messages with a pending recipient at this site.
    pub site: Option<String>,
    /// Only messages with a pending recipient last tried from this egress IP.
    pub egress: Option<String>,
}

/// What a command did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Done {
    /// Messages acted on.
    pub done: Vec<String>,
    /// Messages left alone because an attempt is under way.
    pub busy: Vec<String>,
    /// Messages with an attempt under way that the command applies to when it ends
    /// (held or deleted then, never attempted again).
    #[serde(default)]
    pub when_attempt_ends: Vec<String>,
}

impl Done {
    /// The reply for a command on one message, done now or when its attempt ends.
    fn one(id: String, acted: operator::Acted) -> Self {
        match acted {
            operator::Acted::Now => Done {
                done: vec![id],
                ..Done::default()
            },
            operator::Acted::WhenAttemptEnds => Done {
                when_attempt_ends: vec![id],
                ..Done::default()
            },
        }
    }
}

/// `DELETE /api/v1/queue/messages/{id}`: quietly, or bouncing with this reason.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeleteQuery {
    /// Send the sender a DSN quoting this.
    pub bounce: Option<String>,
}

fn status(e: &OperatorError) -> (StatusCode, String) {
    let code = match e {
        OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
        OperatorError::Spool(_) | OperatorError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, format!("{e}\n"))
}

/// `POST /api/v1/queue/flush?id=&domain=&site=&egress=`: attempt now instead of at the
/// due time.
pub(super) async fn flush(
    State(admin): State<Admin>,
    Query(q): Query<FlushQuery>,
) -> Result<Json<Done>, (StatusCode, String)> {
    let ids: Vec<QueueId> = super::queue::scan(&admin, Vec::new(), move |ids, routes, m, _| {
        let wanted = !m.held
            && q.id.as_deref().is_none_or(|id| m.id.as_str() == id)
            && routes.matches(
                &m,
                q.domain.as_deref(),
                q.site.as_deref(),
                q.egress.as_deref(),
            );
        if wanted {
            ids.push(m.id);
        }
        true
    })
    .await
    .map_err(|code| (code, "cannot read the queue\n".to_string()))?;
    let outcome = admin.queue.control(Control::Flush(ids)).await;
    tracing::info!(
        flushed = outcome.done.len(),
        busy = outcome.busy.len(),
        "queue flushed by the operator"
    );
    Ok(Json(Done {
        done: outcome.done.iter().map(ToString::to_string).collect(),
        busy: outcome.busy.iter().map(ToString::to_string).collect(),
        ..Done::default()
    }))
}

/// `POST /api/v1/queue/messages/{id}/hold`.
pub(super) async fn hold(
    State(admin): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<Done>, (StatusCode, String)> {
    let qid = QueueId::from(id.as_str());
    let acted = operator::hold(&admin.spool, &admin.queue, &qid)
        .await
        .map_err(|e| status(&e))?;
    Ok(Json(Done::one(id, acted)))
}

/// `POST /api/v1/queue/messages/{id}/release`.
pub(super) async fn release(
    State(admin): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<Done>, (StatusCode, String)> {
    let qid = QueueId::from(id.as_str());
    operator::release(&admin.spool, &admin.queue, &qid, &admin.clock)
        .await
        .map_err(|e| status(&e))?;
    Ok(Json(Done::one(id, operator::Acted::Now)))
}

/// `DELETE /api/v1/queue/messages/{id}?bounce=REASON`.
pub(super) async fn delete(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Done>, (StatusCode, String)> {
    let qid = QueueId::from(id.as_str());
    let acted = operator::delete(
        &admin.spool,
        &admin.queue,
        &qid,
        q.bounce.as_deref(),
        &admin.hostname,
        &admin.clock,
    )
    .await
    .map_err(|e| status(&e))?;
    Ok(Json(Done::one(id, acted)))
}

/// `GET /api/v1/senders`: every suspended sender, with why and the evidence.
pub(super) async fn senders(State(admin): State<Admin>) -> Json<Vec<crate::senders::Suspension>> {
    Json(admin.senders.suspensions())
}

/// `GET /api/v1/senders/bounce-rates`: each sender's hard bounces (in the session and
/// late) per delivery attempt in its current window, worst first.
pub(super) async fn bounce_rates(
    State(admin): State<Admin>,
) -> Json<Vec<crate::senders::BounceRate>> {
    Json(admin.senders.bounce_rates())
}

/// `POST /api/v1/senders/release`: which sender, and what becomes of its held mail.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReleaseQuery {
    /// `user:NAME`, `domain:NAME`, or a bare user or domain name.
    pub name: String,
    /// Bounce the held mail (a DSN to each sender) instead of delivering it.
    #[serde(default)]
    pub bounce: bool,
}

/// `POST /api/v1/senders/release?name=&bounce=`.
pub(super) async fn release_sender(
    State(admin): State<Admin>,
    Query(q): Query<ReleaseQuery>,
) -> Result<Json<operator::SenderRelease>, (StatusCode, String)> {
    let Some(id) = admin.senders.find(&q.name) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no suspended sender {}\n", q.name),
        ));
    };
    operator::release_sender(
        &admin.senders,
        &admin.spool,
        &admin.queue,
        &id,
        q.bounce,
        &admin.hostname,
        &admin.clock,
    )
    .await
    .map(Json)
    .map_err(|e| status(&e))
}
