//! `GET /`: the status page. One self-contained HTML page (no external assets, refreshed
//! every 5 s): each egress IP with its listings and blocks, the queue by domain, the
//! latest refusals with their evidence, and the last hour's deliveries, deferrals and
//! bounces ([`super::chart`]).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Html;

use super::Admin;
use crate::metrics::metrics;
use crate::reputation::ListingState;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// What receivers' reverse-DNS checks would make of an egress IP. Only a PTR that
/// checks out is green: a missing PTR gets mail refused, and a lookup that failed
/// proves nothing either way.
fn rdns(hy: &crate::reputation::Hygiene) -> String {
    let problems = hy.problems();
    if let Some(error) = &hy.error {
        format!(
            "<div class=\"warn rdns\">rDNS unknown (the lookup failed: {})</div>",
            esc(error)
        )
    } else if !problems.is_empty() {
        format!(
            "<div class=\"bad rdns\">rDNS: {}</div>",
            esc(&problems.join("; "))
        )
    } else {
        format!(
            "<div class=\"ok rdns\">rDNS {}</div>",
            esc(&hy.ptr.join(", "))
        )
    }
}

/// `GET /`.
pub(super) async fn status_page(State(admin): State<Admin>) -> Html<String> {
    let now = admin.clock.now();
    let report = admin.reputation.report();
    let summary = super::queue::summarize(&admin).await.unwrap_or_default();
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>sidestep on {host}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}}\
         .bad{{color:#b00;font-weight:bold}}.warn{{color:#a60;font-weight:bold}}.ok{{color:#070}}.note{{color:#555}}code{{font-size:12px}}</style></head><body>\
         <h1>sidestep on {host}</h1><p>{at}</p>",
        host = esc(&admin.hostname),
        at = when(now)
    );

    // Egress IPs.
    let mut ips: Vec<String> = admin.egress.iter().map(ToString::to_string).collect();
    for r in &report.records {
        if !ips.contains(&r.ip.to_string()) {
            ips.push(r.ip.to_string());
        }
    }
    for b in &report.blocks {
        if !ips.contains(&b.ip.to_string()) {
            ips.push(b.ip.to_string());
        }
    }
    h.push_str("<h2>Egress IPs</h2><table id=\"egress\"><tr><th>IP</th><th>Listings</th><th>Blocks</th></tr>");
    for ip in &ips {
        let mut listings = String::new();
        for r in report.records.iter().filter(|r| r.ip.to_string() == *ip) {
            match &r.state {
                ListingState::Listed {
                    codes,
                    reason,
                    first_seen,
                    ..
                } => {
                    let codes: Vec<String> = codes
                        .iter()
                        .map(|c| format!("{} {}", c.code, c.meaning))
                        .collect();
                    let _ = write!(
                        listings,
                        "<div class=\"bad listing\">LISTED on {} ({}) since {}{}</div>",
                        esc(&r.zone),
                        esc(&codes.join(", ")),
                        when(*first_seen),
                        reason
                            .as_deref()
                            .map(|t| format!(": {}", esc(t)))
                            .unwrap_or_default()
                    );
                }
                ListingState::Clean => {
                    let _ = write!(
                        listings,
                        "<div class=\"ok\">clean on {}</div>",
                        esc(&r.zone)
                    );
                }
                ListingState::Unknown => {}
            }
        }
        if let Some(hy) = report.hygiene.iter().find(|x| x.ip.to_string() == *ip) {
            listings.push_str(&rdns(hy));
        }
        let mut blocks = String::new();
        for b in report.blocks.iter().filter(|b| b.ip.to_string() == *ip) {
            let state = if b.expires_at > now {
                "blocked"
            } else {
                "expired"
            };
            let _ = write!(
                blocks,
                "<div class=\"bad block\">{state} for {site} since {since} until {until}: <code>{reply}</code>{removal}</div>",
                site = esc(b.site.as_str()),
                since = when(b.first_seen),
                until = when(b.expires_at),
                reply = esc(&b.evidence.reply),
                removal = b
                    .evidence
                    .removal_url
                    .as_deref()
                    .map(|u| format!(" — <a href=\"{0}\">{0}</a>", esc(u)))
                    .unwrap_or_default()
            );
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(ip),
            if listings.is_empty() {
                "—".into()
            } else {
                listings
            },
            if blocks.is_empty() {
                "—".into()
            } else {
                blocks
            }
        );
    }
    if admin.default_source {
        // Mail that binds no address leaves from whatever the host's route picks: an
        // egress too, though no list or rDNS check can follow it.
        let detected = crate::egress::default_source()
            .map(|ip| format!(": {ip} now"))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr class=\"default-source\"><td>default source address (the host picks it{detected})</td>\
             <td><div class=\"note\">not checked against blocklists or reverse DNS: no fixed address \
             (give <code>[[pools.egress]] ip</code> to have it watched)</div></td><td>—</td></tr>",
            detected = esc(&detected)
        );
    }
    h.push_str("</table>");

    // Queue.
    let _ = write!(
        h,
        "<h2>Queue</h2><p id=\"queue\">{} message(s), {} recipient(s) pending{}</p>\
         <table><tr><th>Domain</th><th>Messages</th><th>Recipients</th></tr>",
        summary.messages,
        summary.pending_recipients,
        summary
            .oldest_age_s
            .map(|a| format!(
                "; oldest {}",
                humantime::format_duration(Duration::from_secs(a))
            ))
            .unwrap_or_default()
    );
    for d in &summary.by_domain {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.domain),
            d.messages,
            d.recipients
        );
    }
    h.push_str("</table>");
    h.push_str(
        "<table id=\"queue-sites\"><tr><th>Site</th><th>Messages</th><th>Recipients</th><th>Oldest</th></tr>",
    );
    for g in &summary.by_site {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.name),
            g.messages,
            g.recipients,
            humantime::format_duration(Duration::from_secs(g.oldest_age_s))
        );
    }
    h.push_str("</table>");

    // The last hour.
    let hour = metrics().last_hour(now);
    let mut total = crate::metrics::MinuteCounts::default();
    for m in &hour {
        total.add(m);
    }
    let _ = write!(
        h,
        "<h2>Last hour</h2><p id=\"rates\">recipients: {} delivered, {} deferred, {} bounced \
         ({} of them refused by a server)</p>{}",
        total.delivered,
        total.deferred,
        total.bounced,
        total.refused,
        super::chart::last_hour(&hour)
    );

    // Sender domains of the last day and what receivers will check of their mail.
    if let Some(desk) = admin.auth.clone() {
        let domains = desk.authorisation.recent_senders();
        if !domains.is_empty() {
            h.push_str("<h2>Sender domains (last day)</h2><table id=\"senders\"><tr><th>Domain</th><th>Bulk-sender checklist</th></tr>");
            for domain in domains.iter().take(20) {
                let report = super::auth::build(&admin, &desk, domain).await;
                let items: Vec<String> = report
                    .checklist
                    .iter()
                    .map(|c| {
                        format!(
                            "<span class=\"{}\" title=\"{}\">{} {}</span>",
                            if c.pass { "ok" } else { "bad" },
                            esc(&c.reason),
                            esc(&c.item),
                            if c.pass { "pass" } else { "FAIL" }
                        )
                    })
                    .collect();
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc(domain),
                    items.join(" · ")
                );
            }
            h.push_str("</table>");
        }
    }

    // Latest refusals.
    h.push_str("<h2>Latest refusals</h2><table id=\"refusals\"><tr><th>When</th><th>Egress</th><th>Site</th><th>Verdict</th><th>Reply</th></tr>");
    for r in metrics().recent_refusals() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            when(r.at),
            esc(&r.egress),
            esc(&r.site),
            esc(&r.verdict),
            esc(&r.reply)
        );
    }
    h.push_str("</table></body></html>");
    Html(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hygiene(ptr: &[&str], error: Option<&str>) -> crate::reputation::Hygiene {
        crate::reputation::Hygiene {
            ip: "192.0.2.7".parse().unwrap(),
            helo: "out.example.net".into(),
            ptr: ptr.iter().map(ToString::to_string).collect(),
            fcrdns: !ptr.is_empty(),
            helo_matches: !ptr.is_empty(),
            generic: None,
            error: error.map(str::to_string),
            checked_at: 0,
        }
    }

    /// Green only for a PTR that checks out: a missing one is a problem, and a lookup
    /// that failed is not "no PTR" in green (as it was).
    #[test]
    fn only_a_ptr_that_checks_out_is_green() {
        assert_eq!(
            rdns(&hygiene(&["out.example.net"], None)),
            "<div class=\"ok rdns\">rDNS out.example.net</div>"
        );
        assert!(
            rdns(&hygiene(&[], None)).starts_with("<div class=\"bad rdns\">rDNS: no PTR record")
        );
        assert_eq!(
            rdns(&hygiene(&[], Some("timed out"))),
            "<div class=\"warn rdns\">rDNS unknown (the lookup failed: timed out)</div>"
        );
    }
}
