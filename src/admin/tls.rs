//! `GET /api/v1/tls?domain=`: the TLS policy that applies to a destination and how its
//! last sessions went; `POST /api/v1/tls/report?day=today|yesterday`: send the TLS
//! reports of that day now (the daily task sends each finished day by itself).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Admin;

#[derive(serde::Deserialize)]
pub(super) struct TlsQuery {
    domain: Option<String>,
    day: Option<String>,
}

pub(super) async fn describe(State(admin): State<Admin>, Query(q): Query<TlsQuery>) -> Response {
    let (Some(tls), Some(domain)) = (admin.tls.clone(), q.domain) else {
        return (StatusCode::BAD_REQUEST, "?domain= is needed\n").into_response();
    };
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    axum::Json(tls.describe(&domain).await).into_response()
}

pub(super) async fn report(State(admin): State<Admin>, Query(q): Query<TlsQuery>) -> Response {
    let Some(tls) = admin.tls.clone() else {
        return (StatusCode::NOT_FOUND, "no TLS policies here\n").into_response();
    };
    let today = tls.clock().now() / 86_400;
    let day = match q.day.as_deref() {
        None | Some("yesterday") => today - 1,
        Some("today") => today,
        Some(_) => return (StatusCode::BAD_REQUEST, "day is today or yesterday\n").into_response(),
    };
    axum::Json(tls.send_reports(day).await).into_response()
}
