//! `sidestep senders [release NAME [--bounce]] [--json]`: suspended senders and each
//! sender's bounce and complaint rates, through the running relay's admin API.

use std::fmt::Write as _;
use std::path::Path;

use crate::queue::operator::SenderRelease;
use crate::senders::Suspension;

/// Lists suspended senders with the bounce and complaint rates, or releases one
/// (`release`: name, and whether its held mail bounces). `--json` prints the listing as
/// one object: `{"suspended": [...], "bounce_rates": [...], "complaint_rates": [...]}`
/// (the bodies of `GET /api/v1/senders`, `…/bounce-rates`, `…/complaint-rates`).
pub async fn senders(
    config_path: Option<&Path>,
    release: Option<(&str, bool)>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    if let Some((name, bounce)) = release {
        let path = format!(
            "/api/v1/senders/release?name={}&bounce={bounce}",
            super::admin_client::encode(name)
        );
        let body = super::admin_client::request(&config, "POST", &path).await?;
        if json {
            println!("{}", String::from_utf8_lossy(&body).trim_end());
        } else {
            let r: SenderRelease = serde_json::from_slice(&body)?;
            println!(
                "released {}: {} held message(s) scheduled, {} bounced",
                r.sender,
                r.released.len(),
                r.bounced.len()
            );
        }
        return Ok(());
    }
    let suspended = super::admin_client::get(&config, "/api/v1/senders").await?;
    let bounce_rates = super::admin_client::get(&config, "/api/v1/senders/bounce-rates").await?;
    let complaint_rates =
        super::admin_client::get(&config, "/api/v1/senders/complaint-rates").await?;
    if json {
        // As the API says them, field for field: one document for scripts.
        let all = serde_json::json!({
            "suspended": serde_json::from_slice::<serde_json::Value>(&suspended)?,
            "bounce_rates": serde_json::from_slice::<serde_json::Value>(&bounce_rates)?,
            "complaint_rates": serde_json::from_slice::<serde_json::Value>(&complaint_rates)?,
        });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let mut out = String::new();
    let list: Vec<Suspension> = serde_json::from_slice(&suspended)?;
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
    let rates: Vec<crate::senders::BounceRate> = serde_json::from_slice(&bounce_rates)?;
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
    let rates: Vec<crate::authorisation::report::ComplaintRate> =
        serde_json::from_slice(&complaint_rates)?;
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
