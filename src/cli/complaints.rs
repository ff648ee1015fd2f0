//! `sidestep complaints`: feedback-loop complaints per sender and egress IP, and the
//! latest reports, through the running relay's admin API.

use std::fmt::Write as _;
use std::path::Path;

use crate::complaints::ComplaintsView;

/// Prints the complaint counts and the latest reports.
pub async fn complaints(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let body = super::admin_client::get(&config, "/api/v1/complaints").await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let v: ComplaintsView = serde_json::from_slice(&body)?;
    let mut out = String::new();
    if v.reports.is_empty() {
        let _ = writeln!(out, "no complaint read (is [complaints] enabled?)");
    }
    let when = crate::clock::rfc3339;
    for (title, counts) in [("by sender", &v.by_sender), ("by egress IP", &v.by_ip)] {
        if counts.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}:");
        let mut rows: Vec<_> = counts.iter().collect();
        rows.sort_by(|a, b| b.1.complaints.cmp(&a.1.complaints).then(a.0.cmp(b.0)));
        for (name, t) in rows {
            let _ = writeln!(
                out,
                "  {:>6}  {name}  (latest {})",
                t.complaints,
                when(t.last)
            );
        }
    }
    if !v.reports.is_empty() {
        let _ = writeln!(out, "latest reports:");
    }
    for c in v.reports.iter().take(20) {
        let _ = writeln!(
            out,
            "  {}  {} from {}: sender {}, IP {}, queue id {}, message {}",
            when(c.at),
            c.feedback_type,
            c.reporter.as_deref().unwrap_or("-"),
            c.sender.as_deref().unwrap_or("-"),
            c.ip.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            c.queue_id.as_deref().unwrap_or("-"),
            c.message_id.as_deref().unwrap_or("-")
        );
    }
    print!("{out}");
    Ok(())
}
