//! `sidestep senders [release NAME [--bounce]]`: suspended senders, through the running
//! relay's admin API.

use std::fmt::Write as _;
use std::path::Path;

use crate::queue::operator::SenderRelease;
use crate::senders::Suspension;

/// Lists suspended senders, or releases one (`release`: name, and whether its held
/// mail bounces).
pub async fn senders(
    config_path: Option<&Path>,
    release: Option<(&str, bool)>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let body = match release {
        None => super::admin_client::get(&config, "/api/v1/senders").await?,
        Some((name, bounce)) => {
            let path = format!(
                "/api/v1/senders/release?name={}&bounce={bounce}",
                super::admin_client::encode(name)
            );
            super::admin_client::request(&config, "POST", &path).await?
        }
    };
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let mut out = String::new();
    if release.is_some() {
        let r: SenderRelease = serde_json::from_slice(&body)?;
        let _ = writeln!(
            out,
            "released {}: {} held message(s) scheduled, {} bounced",
            r.sender,
            r.released.len(),
            r.bounced.len()
        );
    } else {
        let list: Vec<Suspension> = serde_json::from_slice(&body)?;
        if list.is_empty() {
            let _ = writeln!(out, "no sender is suspended");
        }
        for s in &list {
            let _ = writeln!(
                out,
                "{} suspended since {}",
                s.sender,
                super::blocks::when(s.since)
            );
            let _ = writeln!(out, "  why:      {}", s.reason);
            let r = &s.recent;
            let _ = writeln!(
                out,
                "  counts:   {} messages, {} attempts, {} reputation refusals, {} unknown recipients, {} complaints, {} hard bounces ({} late) (usual {:.0} messages per window)",
                r.messages,
                r.attempts,
                r.reputation_refusals,
                r.unknown_recipients,
                r.complaints,
                r.hard_bounces,
                r.late_bounces,
                r.usual
            );
            for e in &r.samples {
                let _ = writeln!(out, "  evidence: {e}");
            }
            let _ = writeln!(
                out,
                "  release:  sidestep senders release {} [--bounce]",
                s.sender
            );
        }
    }
    if release.is_none() {
        let body = super::admin_client::get(&config, "/api/v1/senders/bounce-rates").await?;
        let rates: Vec<crate::senders::BounceRate> = serde_json::from_slice(&body)?;
        section(
            &mut out,
            "bounce rates (hard bounces, in the session and late, per delivery attempt this window):",
            rates.iter().map(|r| {
                format!(
                    "{:<30} {:>8} attempts {:>5} hard bounces ({} late)  {:.1}%",
                    r.sender.to_string(),
                    r.attempts,
                    r.hard_bounces,
                    r.late_bounces,
                    r.rate * 100.0
                )
            }),
        );
        // The bulk-sender limit: complaints under 0.3% of what each domain sends.
        let body = super::admin_client::get(&config, "/api/v1/senders/complaint-rates").await?;
        let rates: Vec<crate::authorisation::report::ComplaintRate> =
            serde_json::from_slice(&body)?;
        section(
            &mut out,
            "complaint rates (last day; Gmail and Yahoo want under 0.3%):",
            rates.iter().map(|r| {
                format!(
                    "{:<30} {:>8} messages {:>5} complaints  {:.3}%{}",
                    r.domain,
                    r.messages,
                    r.complaints,
                    r.rate * 100.0,
                    if r.over_limit { "  OVER 0.3%" } else { "" }
                )
            }),
        );
    }
    print!("{out}");
    Ok(())
}

/// A titled list of rows, left out when there is no row.
fn section(out: &mut String, title: &str, rows: impl Iterator<Item = String>) {
    let mut rows = rows.peekable();
    if rows.peek().is_some() {
        let _ = writeln!(out, "{title}");
    }
    for row in rows {
        let _ = writeln!(out, "  {row}");
    }
}
