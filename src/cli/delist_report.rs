use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use super::blocks::when;
use crate::reputation::{Block, ListingRecord, ListingState};

#[derive(Serialize)]
struct JsonReport<'a> {
    ip: IpAddr,
    listings: Vec<JsonListing<'a>>,
    blocks: Vec<&'a Block>,
}

#[derive(Serialize)]
struct JsonListing<'a> {
    zone: &'a str,
    name: &'a str,
    removal_url: Option<&'a str>,
    record: &'a ListingRecord,
}

/// `sidestep delist-report IP`: what a delisting form asks for — each list or site that
/// refuses the IP, since when, the exact reply with its timestamped log line, and where
/// to ask for removal.
pub fn delist_report(config_path: Option<&Path>, ip: IpAddr, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let report = super::load_state(&config)?;
    let listed: Vec<JsonListing> = config
        .blocklists
        .iter()
        .filter_map(|l| {
            let record = report
                .records
                .iter()
                .find(|r| r.ip == ip && r.zone == l.zone)?;
            matches!(record.state, ListingState::Listed { .. }).then_some(JsonListing {
                zone: &l.zone,
                name: l.display_name(),
                removal_url: l.removal_url.as_deref(),
                record,
            })
        })
        .collect();
    let blocks: Vec<&Block> = report.blocks.iter().filter(|b| b.ip == ip).collect();
    if json {
        let out = JsonReport {
            ip,
            listings: listed,
            blocks,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Delisting report for {ip} ({})",
        when(crate::clock::Clock::system().now())
    );
    let _ = writeln!(
        s,
        "\nPublic blocklists ({} checked):",
        config.blocklists.len()
    );
    if listed.is_empty() {
        let _ = writeln!(s, "  not listed on any configured list");
    }
    for l in &listed {
        if let ListingState::Listed {
            codes,
            reason,
            first_seen,
            last_seen,
        } = &l.record.state
        {
            let codes: Vec<String> = codes
                .iter()
                .map(|c| format!("{} {}", c.code, c.meaning))
                .collect();
            let _ = writeln!(
                s,
                "  {} ({}): listed with {}",
                l.zone,
                l.name,
                codes.join(", ")
            );
            let _ = writeln!(
                s,
                "    since:   {} (last seen {})",
                when(*first_seen),
                when(*last_seen)
            );
            if let Some(reason) = reason {
                let _ = writeln!(s, "    reason:  {reason}");
            }
            let _ = writeln!(
                s,
                "    removal: {}",
                l.removal_url.unwrap_or("(not configured)")
            );
        }
    }
    let _ = writeln!(s, "\nDestinations refusing {ip}:");
    if blocks.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for b in &blocks {
        s.push_str(&b.report("  ", crate::clock::Clock::system().now()));
    }
    print!("{s}");
    Ok(())
}
