//! `GET/POST/DELETE /api/v1/suppressions`: the suppression list (`sidestep
//! suppressions` asks here). POST and DELETE take `address` and optionally `scope` (a
//! sender domain, `*` for everyone) as query parameters.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::Admin;
use crate::suppression::Entry;

/// Which entry.
#[derive(Debug, Deserialize)]
pub(super) struct EntryQuery {
    address: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    reply: Option<String>,
}

/// Every live entry.
pub(super) async fn list(State(admin): State<Admin>) -> Json<Vec<Entry>> {
    Json(admin.suppressions.0.list())
}

/// Suppresses an address by the operator's hand.
pub(super) async fn add(
    State(admin): State<Admin>,
    Query(q): Query<EntryQuery>,
) -> Result<Json<Entry>, (StatusCode, String)> {
    if crate::envelope::Address::parse(&q.address, true).is_err() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a mail address\n", q.address),
        ));
    }
    let (list, config) = (admin.suppressions.0.clone(), admin.suppressions.1.clone());
    tokio::task::spawn_blocking(move || {
        list.add_manual(&config, &q.address, q.scope.as_deref(), q.reply.as_deref())
    })
    .await
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map(Json)
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
}

/// Lifts an address (every scope unless `scope` says one).
pub(super) async fn remove(
    State(admin): State<Admin>,
    Query(q): Query<EntryQuery>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let list = admin.suppressions.0.clone();
    let removed = tokio::task::spawn_blocking(move || list.remove(&q.address, q.scope.as_deref()))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
    if removed == 0 {
        return Err((StatusCode::NOT_FOUND, "not suppressed\n".into()));
    }
    Ok(Json(serde_json::json!({ "removed": removed })))
}
