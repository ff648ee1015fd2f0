//! `GET /api/v1/auth?domain=`: the authentication picture of a sender domain (SPF for
//! every egress IP and smarthost, DKIM keys, DMARC, reverse DNS, the bulk-sender
//! checklist, the bounce domains' SPF), as `sidestep auth` prints it.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Admin;
use crate::authorisation::Authorisation;
use crate::authorisation::report::{AuthReport, PtrAuth, ReportInputs};
use crate::config::{Config, OneClick};
use crate::dns::Resolver;

/// The configuration in force now: a reload replaces it, and the report must describe
/// the egress IPs, smarthosts, keys and bounce domains mail leaves with now.
pub type CurrentConfig = Arc<dyn Fn() -> Arc<Config> + Send + Sync>;

/// What the auth report needs from the running relay.
pub struct AuthDesk {
    /// SPF results and learned denials.
    pub authorisation: Authorisation,
    /// The relay's resolver.
    pub resolver: Resolver,
    /// Egress IPs, smarthosts, DKIM keys, `[delivery] starttls`, the one-click check and
    /// the bounce domains, read at each report.
    pub config: CurrentConfig,
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
    let config = (desk.config)();
    let dkim = config
        .dkim
        .keys
        .iter()
        .filter(|k| {
            let d = k.domain.to_ascii_lowercase();
            d == domain || domain.ends_with(&format!(".{d}"))
        })
        .map(|k| (k.selector.clone(), k.algorithm.name().to_string()))
        .collect();
    let inputs = ReportInputs {
        egress: config.egress_helos(),
        smarthosts: config
            .smarthosts
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.host.clone(),
                    config.server.hostname.clone(),
                )
            })
            .collect(),
        dkim,
        hygiene,
        complaints,
        starttls: config.delivery.starttls,
        one_click_checked: config.compliance.one_click != OneClick::Off,
        bounce_domains: config.bounces.all_domains(),
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
