//! `/api/v1/blocks…`: learned blocks and the operator's suspensions.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::Admin;
use crate::reputation::Block;
use crate::site::Site;

/// `POST /api/v1/blocks/suspend` and `/lift`: which IP, for which site.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SuspendQuery {
    /// The egress IP.
    pub ip: Option<String>,
    /// The site (as `sidestep blocks` names it); every site when absent.
    pub site: Option<String>,
    /// How long, e.g. `4h` (suspend only).
    #[serde(rename = "for")]
    pub period: Option<String>,
    /// Why, for the record (suspend only).
    pub reason: Option<String>,
}

type Refusal = (StatusCode, String);

fn bad(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, message.into())
}

fn parse_ip(q: &SuspendQuery) -> Result<IpAddr, Refusal> {
    q.ip.as_deref()
        .ok_or_else(|| bad("ip is required\n"))?
        .parse()
        .map_err(|e| bad(format!("ip: {e}\n")))
}

/// `GET /api/v1/blocks`: every block and suspension, current and expired.
pub(super) async fn list(State(admin): State<Admin>) -> Json<Vec<Block>> {
    Json(admin.reputation.report().blocks)
}

/// `POST /api/v1/blocks/suspend?ip=&site=&for=&reason=`.
pub(super) async fn suspend(
    State(admin): State<Admin>,
    Query(q): Query<SuspendQuery>,
) -> Result<Json<Block>, Refusal> {
    let ip = parse_ip(&q)?;
    let period = humantime::parse_duration(q.period.as_deref().unwrap_or(""))
        .map_err(|e| bad(format!("for: a duration such as 4h is required ({e})\n")))?;
    let reason = q.reason.as_deref().unwrap_or("").trim();
    if reason.is_empty() {
        return Err(bad("reason is required\n"));
    }
    let site = q.site.as_deref().map(Site::from);
    let (reputation, reason) = (admin.reputation.clone(), reason.to_string());
    tokio::task::spawn_blocking(move || reputation.suspend(ip, site.as_ref(), period, &reason))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// `POST /api/v1/blocks/lift?ip=&site=`: 404 when there was nothing to lift.
pub(super) async fn lift(
    State(admin): State<Admin>,
    Query(q): Query<SuspendQuery>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let ip = parse_ip(&q)?;
    let site = q.site.as_deref().map(Site::from);
    let reputation = admin.reputation.clone();
    let lifted = tokio::task::spawn_blocking(move || reputation.lift(ip, site.as_ref()))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if lifted {
        Ok(Json(serde_json::json!({ "lifted": true })))
    } else {
        Err((StatusCode::NOT_FOUND, format!("no block of {ip} there\n")))
    }
}

/// `GET /api/v1/listings`: every egress IP on every list, and each list's health.
pub(super) async fn listings(
    State(admin): State<Admin>,
) -> Json<crate::reputation::ReputationReport> {
    Json(admin.reputation.report())
}

/// `POST /api/v1/listings/refresh`: ask every list about every egress IP now.
pub(super) async fn refresh(State(admin): State<Admin>) -> Json<serde_json::Value> {
    admin.reputation.request_refresh();
    Json(serde_json::json!({ "refresh": "requested" }))
}
