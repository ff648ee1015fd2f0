//! `sidestep tls DOMAIN`: the TLS policy that applies to a destination (MTA-STS mode,
//! MX patterns, max_age, when fetched; TLSA records and whether DNSSEC validated; the
//! TLS-RPT addresses) and the last session per MX host, through the running relay's
//! admin API. `sidestep tls --report today|yesterday` sends that day's TLS reports now.

use std::fmt::Write as _;
use std::path::Path;

use crate::tls_policy::Described;

/// Prints the policy of `domain`, or sends the reports of `report_day`.
pub async fn tls(
    config_path: Option<&Path>,
    domain: Option<&str>,
    report_day: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    if let Some(day) = report_day {
        let path = format!(
            "/api/v1/tls/report?day={}",
            super::admin_client::encode(day)
        );
        let body = super::admin_client::request(&config, "POST", &path).await?;
        if json {
            println!("{}", String::from_utf8_lossy(&body).trim_end());
        } else {
            let sent: Vec<crate::tls_policy::report::ReportSent> = serde_json::from_slice(&body)?;
            if sent.is_empty() {
                println!("no report to send for {day}");
            }
            for s in sent {
                println!(
                    "{}: {} sessions -> {}{}",
                    s.domain,
                    s.sessions,
                    s.to.join(", "),
                    if s.errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (errors: {})", s.errors.join("; "))
                    }
                );
            }
        }
        return Ok(());
    }
    let Some(domain) = domain else {
        anyhow::bail!("a domain (or --report today|yesterday) is needed");
    };
    let path = format!("/api/v1/tls?domain={}", super::admin_client::encode(domain));
    let body = super::admin_client::get(&config, &path).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let d: Described = serde_json::from_slice(&body)?;
    print!("{}", render(&d));
    Ok(())
}

fn render(d: &Described) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", d.domain);
    match d
        .mta_sts
        .as_ref()
        .and_then(|e| e.policy.as_ref().map(|p| (e, p)))
    {
        Some((e, p)) => {
            let _ = writeln!(
                out,
                "  MTA-STS: mode {}, mx {}, max_age {} s, id {}, fetched {}, expires {}",
                p.mode,
                p.mx.join(" "),
                p.max_age,
                e.id.as_deref().unwrap_or("-"),
                crate::clock::rfc3339(e.fetched_at),
                crate::clock::rfc3339(e.expires_at)
            );
        }
        None => {
            let _ = writeln!(out, "  MTA-STS: no policy");
        }
    }
    if let Some(err) = d.mta_sts.as_ref().and_then(|e| e.error.as_deref()) {
        let _ = writeln!(out, "  MTA-STS last fetch failed: {err}");
    }
    let _ = writeln!(
        out,
        "  DANE: {}",
        if d.dane_available {
            "DNSSEC validates"
        } else {
            "not applied (DNSSEC off or not validating)"
        }
    );
    let _ = writeln!(
        out,
        "  TLS-RPT: {}",
        if d.tlsrpt_rua.is_empty() {
            "no rua".to_string()
        } else {
            d.tlsrpt_rua.join(", ")
        }
    );
    for mx in &d.mx {
        let _ = writeln!(
            out,
            "  MX {}: DNSSEC {}{}{}",
            mx.name,
            mx.dnssec,
            match mx.allowed_by_sts {
                Some(true) => ", allowed by MTA-STS",
                Some(false) => ", NOT allowed by MTA-STS",
                None => "",
            },
            mx.last.as_ref().map_or(String::new(), |l| format!(
                "; last session {} ({}): {}{}",
                crate::clock::rfc3339(l.at),
                l.policy,
                l.result,
                l.detail
                    .as_deref()
                    .map_or(String::new(), |x| format!(" — {x}"))
            ))
        );
        for t in &mx.tlsa {
            let _ = writeln!(out, "    TLSA {t}");
        }
    }
    out
}
