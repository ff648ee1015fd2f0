//! `/healthz` (the process answers) and `/readyz` (it can take mail: the spool takes a
//! write, the scheduler answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::Admin;

/// `GET /healthz`.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// What `/readyz` checked.
#[derive(Serialize)]
pub(super) struct Readiness {
    spool: String,
    queue: String,
    /// With `[cluster]`: `ok (node N)` or why it is degraded. A Redis outage does not
    /// make the node unready: it delivers on what it knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
}

/// `GET /readyz`: 200 when the spool is writable and the queue answers, else 503.
pub(super) async fn readyz(State(admin): State<Admin>) -> (StatusCode, Json<Readiness>) {
    let spool = admin.spool.clone();
    let spool = match tokio::task::spawn_blocking(move || spool.check_writable()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    let queue = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        admin.queue.in_flight(),
    )
    .await
    {
        Ok(_) if admin.queue.is_open() => "ok".to_string(),
        _ => "the scheduler does not answer".to_string(),
    };
    let status = if spool == "ok" && queue == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let cluster = admin.cluster.as_ref().map(|c| {
        if c.degraded() {
            format!(
                "degraded (node {}): Redis unreachable, delivering on what this node knows",
                c.node
            )
        } else {
            format!("ok (node {})", c.node)
        }
    });
    (
        status,
        Json(Readiness {
            spool,
            queue,
            cluster,
        }),
    )
}
