//! `sidestep warmup`: each warming egress IP's day, today's cap and counts per site,
//! through the running relay's admin API.

use std::fmt::Write as _;
use std::path::Path;

use crate::reputation::WarmupStatus;

/// Prints where each IP with a warmup schedule stands today.
pub async fn warmup(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let body = super::admin_client::get(&config, "/api/v1/warmup").await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let list: Vec<WarmupStatus> = serde_json::from_slice(&body)?;
    let mut out = String::new();
    if list.is_empty() {
        let _ = writeln!(out, "no egress IP has a warmup schedule");
    }
    for w in &list {
        match w.cap {
            Some(cap) => {
                let _ = writeln!(
                    out,
                    "{}  day {} of {}: up to {cap} messages per site today",
                    w.ip, w.day, w.days
                );
            }
            None => {
                let _ = writeln!(out, "{}  warm (schedule of {} days done)", w.ip, w.days);
            }
        }
        for (site, n) in &w.today {
            let _ = writeln!(out, "    {n:>6}  {site}");
        }
    }
    print!("{out}");
    Ok(())
}
