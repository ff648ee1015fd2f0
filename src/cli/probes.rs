//! `sidestep probes`: per egress IP and seed, the latest seed probe and what became of
//! it, through the running relay's admin API.

use std::fmt::Write as _;
use std::path::Path;

use crate::probes::{ProbeRecord, ProbeStatus};

/// Prints the latest probe of each (egress IP, seed).
pub async fn probes(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let body = super::admin_client::get(&config, "/api/v1/probes").await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let list: Vec<ProbeRecord> = serde_json::from_slice(&body)?;
    let mut out = String::new();
    if list.is_empty() {
        let _ = writeln!(out, "no probe sent yet (is [probes] configured?)");
    }
    let when = crate::clock::rfc3339;
    for r in &list {
        let status = match &r.status {
            ProbeStatus::Sent => "sent, not arrived yet".to_string(),
            ProbeStatus::Arrived { at, folder, junk } => format!(
                "arrived in {folder}{} at {}",
                if *junk { " (junk)" } else { "" },
                when(*at)
            ),
            ProbeStatus::Missing { checked_at } => format!(
                "MISSING at {} (accepted, never delivered: silent discard)",
                when(*checked_at)
            ),
            ProbeStatus::Refused => "refused".to_string(),
            ProbeStatus::Failed => "not sent (no server answered)".to_string(),
        };
        let _ = writeln!(
            out,
            "{}  {}  site {}\n    sent {}  token {}  {status}\n    reply: {}{}",
            r.ip,
            r.seed,
            r.site.as_deref().unwrap_or("-"),
            when(r.sent_at),
            r.token,
            r.reply,
            r.receiver_id
                .as_deref()
                .map(|id| format!(" (receiver id {id})"))
                .unwrap_or_default()
        );
    }
    print!("{out}");
    Ok(())
}
