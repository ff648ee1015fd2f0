//! `sidestep auth DOMAIN`: what receivers will check about a sender domain's mail from
//! this relay (SPF per egress IP and smarthost, DKIM, DMARC, reverse DNS, the bulk-sender
//! checklist, the SPF of each bounce domain), through the running relay's admin API.

use std::fmt::Write as _;
use std::path::Path;

use crate::authorisation::report::{AddressAuth, AuthReport};

/// Prints the report for `domain`.
pub async fn auth(config_path: Option<&Path>, domain: &str, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let query: String = domain
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if query.is_empty() {
        anyhow::bail!("not a domain name: {domain:?}");
    }
    let body = super::admin_client::get(&config, &format!("/api/v1/auth?domain={query}")).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let r: AuthReport = serde_json::from_slice(&body)?;
    print!("{}", render(&r));
    Ok(())
}

fn render(r: &AuthReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sender domain {}", r.domain);
    let _ = writeln!(
        out,
        "SPF record: {}",
        r.spf_record.as_deref().unwrap_or("(none published)")
    );
    for a in &r.addresses {
        address_line(&mut out, a);
    }
    for d in &r.denials {
        let _ = writeln!(
            out,
            "IP not authorised: {} for {} (site {}, {} time(s), until {}; accepted via {}): {}",
            d.ip,
            d.domain,
            d.site,
            d.count,
            crate::clock::rfc3339(d.until),
            d.accepted_via,
            d.reply
        );
    }
    if r.dkim.is_empty() {
        let _ = writeln!(out, "DKIM: no key configured");
    }
    for k in &r.dkim {
        let _ = writeln!(
            out,
            "DKIM: {} ({}) {}",
            k.selector,
            k.algorithm,
            if k.published {
                "published"
            } else {
                "NOT published"
            }
        );
    }
    match &r.dmarc {
        Some(d) => {
            let _ = writeln!(
                out,
                "DMARC: {} (p={}, adkim={}, aspf={})",
                d.record, d.policy, d.adkim, d.aspf
            );
        }
        None => {
            let _ = writeln!(out, "DMARC: no record");
        }
    }
    for p in &r.ptr {
        let _ = writeln!(
            out,
            "PTR {}: {}{}",
            p.ip,
            if p.ptr.is_empty() {
                "none".to_string()
            } else {
                p.ptr.join(", ")
            },
            if p.fcrdns { " (forward-confirmed)" } else { "" }
        );
    }
    for rp in &r.return_paths {
        let _ = writeln!(
            out,
            "return path {}: SPF record: {}",
            rp.domain,
            rp.spf_record.as_deref().unwrap_or("(none published)")
        );
        for a in &rp.addresses {
            address_line(&mut out, a);
        }
    }
    if let Some(rate) = r.complaint_rate {
        let _ = writeln!(out, "complaint rate: {:.3}% (limit 0.3%)", rate * 100.0);
    }
    let _ = writeln!(out, "bulk-sender checklist:");
    for c in &r.checklist {
        let _ = writeln!(
            out,
            "  [{}] {:<11} {}",
            if c.pass { "pass" } else { "FAIL" },
            c.item,
            c.reason
        );
    }
    out
}

/// One address mail may leave from and the SPF result it gets.
fn address_line(out: &mut String, a: &AddressAuth) {
    let _ = writeln!(
        out,
        "  {:<16} {:<20} spf={}{}",
        a.ip.to_string(),
        a.kind,
        a.spf,
        if a.denied {
            "  (refused for authentication by a receiver: avoided)"
        } else {
            ""
        }
    );
}
