//! `GET /`: the status page. One self-contained HTML page (no external assets, refreshed
//! every 5 s): each egress IP with its listings and blocks, the queue by domain, the
//! latest refusals with their evidence, and the last hour's deliveries and refusals.

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
         .bad{{color:#b00;font-weight:bold}}.ok{{color:#070}}code{{font-size:12px}}</style></head><body>\
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
            let problems = hy.problems();
            let ptr = if hy.ptr.is_empty() {
                "no PTR".to_string()
            } else {
                hy.ptr.join(", ")
            };
            let _ = if problems.is_empty() {
                write!(listings, "<div class=\"ok rdns\">rDNS {}</div>", esc(&ptr))
            } else {
                write!(
                    listings,
                    "<div class=\"bad rdns\">rDNS: {}</div>",
                    esc(&problems.join("; "))
                )
            };
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
    let peak = hour
        .iter()
        .map(|(d, r)| (*d).max(*r))
        .max()
        .unwrap_or(0)
        .max(1);
    let line = |pick: fn(&(u32, u32)) -> u32| {
        hour.iter()
            .enumerate()
            .map(|(i, v)| format!("{},{}", i * 10, 100 - pick(v) * 100 / peak))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (delivered, refused): (u32, u32) =
        hour.iter().fold((0, 0), |(a, b), (d, r)| (a + d, b + r));
    let _ = write!(
        h,
        "<h2>Last hour</h2><p id=\"rates\">{delivered} delivered, {refused} refused</p>\
         <svg width=\"600\" height=\"110\" viewBox=\"0 -5 600 110\" role=\"img\" aria-label=\"deliveries and refusals per minute\">\
         <polyline fill=\"none\" stroke=\"#070\" stroke-width=\"2\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#b00\" stroke-width=\"2\" points=\"{}\"/></svg>",
        line(|v| v.0),
        line(|v| v.1)
    );

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
