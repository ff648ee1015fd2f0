use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::reputation::Block;

/// `sidestep blocks`: every block learned from destinations' replies, with its evidence.
pub fn blocks(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let report = super::load_state(&config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.blocks)?);
        return Ok(());
    }
    if report.blocks.is_empty() {
        println!("no blocks: no destination has refused an egress IP");
    }
    for b in &report.blocks {
        print!("{}", render_block(b, ""));
    }
    Ok(())
}

/// One block as text, every line prefixed with `indent`.
pub(super) fn render_block(b: &Block, indent: &str) -> String {
    let mut s = String::new();
    let now = crate::clock::unix_now();
    let state = if b.expires_at > now {
        format!("blocked until {}", when(b.expires_at))
    } else if b.canary_in_flight {
        "expired, canary delivery under way".to_string()
    } else {
        "expired, the next delivery is a canary".to_string()
    };
    let e = &b.evidence;
    if b.manual {
        let _ = writeln!(
            s,
            "{indent}{} suspended by the operator for site {}",
            b.ip, b.site
        );
    } else {
        let _ = writeln!(s, "{indent}{} refused by site {}", b.ip, b.site);
    }
    let _ = writeln!(
        s,
        "{indent}  since:   {} ({state}; repeats: {})",
        when(b.first_seen),
        b.strikes
    );
    let _ = writeln!(s, "{indent}  reply:   {}", e.reply);
    let mx = match (&e.mx_host, e.mx_ip) {
        (Some(h), Some(ip)) => format!("{h} [{ip}]"),
        (Some(h), None) => h.clone(),
        (None, _) => "-".into(),
    };
    let _ = writeln!(
        s,
        "{indent}  mx:      {mx}, at {}, message {} to {}",
        when(e.at),
        e.queue_id,
        e.recipient
    );
    let _ = writeln!(s, "{indent}  rule:    {}", e.rule);
    let _ = writeln!(
        s,
        "{indent}  removal: {}",
        e.removal_url.as_deref().unwrap_or("(the reply names none)")
    );
    let _ = writeln!(s, "{indent}  log:     {}", e.log_line);
    if !b.later.is_empty() {
        let _ = writeln!(
            s,
            "{indent}  also:    {} more refusal(s) from attempts already in flight (not counted as repeats):",
            b.later.len()
        );
        for l in &b.later {
            let _ = writeln!(s, "{indent}           {} {}", when(l.at), l.reply);
        }
    }
    s
}

pub(super) fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}
