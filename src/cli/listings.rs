use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{BlocklistConfig, Config, Severity};
use crate::reputation::{ListHealth, ListingRecord, ListingState, ReputationReport};

/// `sidestep listings`: every egress IP with every list's state, from the relay's state
/// (readable while it runs).
pub fn listings(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let report = super::load_state(&config)?;
    print!("{}", render(&config, &config.egress_ips(), &report, json));
    Ok(())
}

#[derive(Serialize)]
struct JsonList<'a> {
    zone: &'a str,
    name: &'a str,
    severity: Severity,
    removal_url: Option<&'a str>,
    health: Option<&'a ListHealth>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    lists: Vec<JsonList<'a>>,
    records: Vec<&'a ListingRecord>,
    /// Each egress IP's reverse DNS, with what a receiver would hold against it.
    hygiene: Vec<JsonHygiene<'a>>,
}

#[derive(Serialize)]
struct JsonHygiene<'a> {
    #[serde(flatten)]
    check: &'a crate::reputation::Hygiene,
    problems: Vec<String>,
}

/// The reverse-DNS line of `ip`, as `sidestep listings` prints it.
fn rdns_line(report: &ReputationReport, ip: IpAddr) -> String {
    let Some(h) = report.hygiene.iter().find(|h| h.ip == ip) else {
        return "not checked yet".into();
    };
    if let Some(e) = &h.error {
        return format!("lookup failed: {e}");
    }
    let problems = h.problems();
    let ptr = if h.ptr.is_empty() {
        "-".to_string()
    } else {
        h.ptr.join(", ")
    };
    if problems.is_empty() {
        format!("ok: PTR {ptr}, forward-confirmed, HELO {} matches", h.helo)
    } else {
        format!(
            "PROBLEM: {} (PTR {ptr}, HELO {})",
            problems.join("; "),
            h.helo
        )
    }
}

/// Human table (or JSON) of `report` for `ips`. Shared with `dnsbl-check`.
pub(super) fn render(
    config: &Config,
    ips: &[IpAddr],
    report: &ReputationReport,
    json: bool,
) -> String {
    let health = |zone: &str| report.health.iter().find(|h| h.zone == zone);
    if json {
        let out = JsonReport {
            lists: config
                .blocklists
                .iter()
                .map(|l| JsonList {
                    zone: &l.zone,
                    name: l.display_name(),
                    severity: l.severity,
                    removal_url: l.removal_url.as_deref(),
                    health: health(&l.zone),
                })
                .collect(),
            records: report
                .records
                .iter()
                .filter(|r| ips.contains(&r.ip))
                .collect(),
            hygiene: report
                .hygiene
                .iter()
                .filter(|h| ips.contains(&h.ip))
                .map(|h| JsonHygiene {
                    check: h,
                    problems: h.problems(),
                })
                .collect(),
        };
        return serde_json::to_string_pretty(&out).expect("report serializes") + "\n";
    }
    let mut out = String::new();
    if config.blocklists.is_empty() {
        out.push_str("no [[blocklists]] configured\n");
        for ip in ips {
            let _ = writeln!(out, "\n{ip}\n  reverse DNS  {}", rdns_line(report, *ip));
        }
        return out;
    }
    let width = config
        .blocklists
        .iter()
        .map(|l| l.zone.len())
        .max()
        .unwrap_or(0);
    out.push_str("Lists:\n");
    for l in &config.blocklists {
        let state = match health(&l.zone) {
            Some(ListHealth {
                broken: Some(b), ..
            }) => {
                format!("BROKEN since {}: {} (ignored)", when(b.at), b.cause)
            }
            Some(ListHealth { error: Some(e), .. }) => format!("unreachable: {}", e.cause),
            Some(ListHealth {
                last_checked: Some(t),
                ..
            }) => format!("ok (checked {})", when(*t)),
            _ => "not checked yet".into(),
        };
        let severity = match l.severity {
            Severity::Hard => "hard",
            Severity::Soft => "soft",
        };
        let _ = writeln!(
            out,
            "  {:width$}  {} [{severity}]  {state}",
            l.zone,
            l.display_name()
        );
    }
    for ip in ips {
        let _ = writeln!(out, "\n{ip}");
        let _ = writeln!(
            out,
            "  {:width$}  {}",
            "reverse DNS",
            rdns_line(report, *ip)
        );
        for l in &config.blocklists {
            let record = report
                .records
                .iter()
                .find(|r| r.ip == *ip && r.zone == l.zone);
            let _ = writeln!(out, "  {:width$}  {}", l.zone, describe(l, record));
        }
    }
    out
}

fn describe(list: &BlocklistConfig, record: Option<&ListingRecord>) -> String {
    let Some(r) = record else {
        return "not checked yet".into();
    };
    let mut s = match &r.state {
        ListingState::Unknown => "unknown".to_string(),
        ListingState::Clean => match r.last_checked {
            Some(t) => format!("clean (checked {})", when(t)),
            None => "clean".into(),
        },
        ListingState::Listed {
            codes,
            reason,
            first_seen,
            last_seen,
        } => {
            let codes: Vec<String> = codes
                .iter()
                .map(|c| format!("{} {}", c.code, c.meaning))
                .collect();
            let mut s = format!(
                "LISTED {} since {} (last seen {})",
                codes.join(", "),
                when(*first_seen),
                when(*last_seen)
            );
            if let Some(reason) = reason {
                let _ = write!(s, "\n  {:w$}  reason: {reason}", "", w = list.zone.len());
            }
            if let Some(url) = &list.removal_url {
                let _ = write!(s, "\n  {:w$}  removal: {url}", "", w = list.zone.len());
            }
            s
        }
    };
    if let Some(e) = &r.error {
        s = format!("error at {}: {} (last known: {s})", when(e.at), e.cause);
    }
    s
}

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}
