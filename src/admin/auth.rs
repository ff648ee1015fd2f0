//! `GET /api/v1/auth?domain=`: the authentication picture of a sender domain (SPF for
//! every egress IP and smarthost, DKIM keys, DMARC, reverse DNS, the bulk-sender
//! checklist), as `sidestep auth` prints it.

use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Admin;
use crate::authorisation::Authorisation;
use crate::authorisation::report::{AuthReport, PtrAuth, ReportInputs};
use crate::dns::Resolver;

/// What the auth report needs from the running relay's configuration.
pub struct AuthDesk {
    /// SPF results and learned denials.
    pub authorisation: Authorisation,
    /// The relay's resolver.
    pub resolver: Resolver,
    /// Egress IPs and their HELO names.
    pub egress: Vec<(IpAddr, String)>,
    /// Smarthosts: name, host, HELO.
    pub smarthosts: Vec<(String, String, String)>,
    /// DKIM keys: domain, selector, algorithm.
    pub dkim: Vec<(String, String, String)>,
    /// `[delivery] starttls`.
    pub starttls: bool,
    /// Bulk mail is checked for one-click unsubscribe.
    pub one_click_checked: bool,
}

#[derive(serde::Deserialize)]
pub(super) struct DomainQuery {
    domain: Option<String>,
}

/// The report for `?domain=`, or the sender domains seen in the last day without one.
pub(super) async fn report(State(admin): State<Admin>, Query(q): Query<DomainQuery>) -> Response {
    let Some(desk) = admin.auth.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "authentication reports are not served by this relay\n",
        )
            .into_response();
    };
    let Some(domain) = q.domain.filter(|d| !d.trim().is_empty()) else {
        return axum::Json(desk.authorisation.recent_senders()).into_response();
    };
    let domain = domain.trim().to_ascii_lowercase();
    axum::Json(build(&admin, &desk, &domain).await).into_response()
}

/// The report for `domain` from what the running relay knows.
pub(super) async fn build(admin: &Admin, desk: &AuthDesk, domain: &str) -> AuthReport {
    let report = admin.reputation.report();
    let hygiene = report
        .hygiene
        .iter()
        .map(|h| PtrAuth {
            ip: h.ip,
            ptr: h.ptr.clone(),
            fcrdns: h.fcrdns,
            unknown: h.error.is_some(),
        })
        .collect();
    let complaints = admin
        .complaints
        .view()
        .by_sender
        .get(&format!("domain:{domain}"))
        .map_or(0, |t| t.complaints);
    let dkim = desk
        .dkim
        .iter()
        .filter(|(d, _, _)| d == domain || domain.ends_with(&format!(".{d}")))
        .map(|(_, s, a)| (s.clone(), a.clone()))
        .collect();
    let inputs = ReportInputs {
        egress: desk.egress.clone(),
        smarthosts: desk.smarthosts.clone(),
        dkim,
        hygiene,
        complaints,
        starttls: desk.starttls,
        one_click_checked: desk.one_click_checked,
    };
    desk.authorisation
        .report(&desk.resolver, domain, inputs)
        .await
}

/// `GET /api/v1/senders/complaint-rates`: each sender domain seen in the last day, its
/// messages and complaints, against Gmail's and Yahoo's 0.3%.
pub(super) async fn complaint_rates(
    State(admin): State<Admin>,
) -> axum::Json<Vec<crate::authorisation::report::ComplaintRate>> {
    let Some(desk) = admin.auth.clone() else {
        return axum::Json(Vec::new());
    };
    let view = admin.complaints.view();
    axum::Json(desk.authorisation.complaint_rates(|d| {
        view.by_sender
            .get(&format!("domain:{d}"))
            .map_or(0, |t| t.complaints)
    }))
}
