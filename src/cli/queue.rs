use std::fmt::Write as _;
use std::path::Path;

use crate::admin::api::{MessageList, MessageView, QueueSummary};

/// What `sidestep queue` shows.
pub enum QueueView<'a> {
    /// Counts by state and domain, the oldest message's age.
    Summary,
    /// The messages, oldest first, filtered.
    List {
        /// Only messages with a pending recipient in this domain, at this site, or last
        /// tried from this egress IP.
        filter: Filter<'a>,
        /// Only messages in this state.
        state: Option<&'a str>,
        /// At most this many.
        limit: usize,
    },
    /// One message with every recipient.
    Show {
        /// Its queue id.
        id: &'a str,
    },
}

/// Which queued messages a command is about: those with a pending recipient matching
/// every field given.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter<'a> {
    /// In this recipient domain.
    pub domain: Option<&'a str>,
    /// At this destination site.
    pub site: Option<&'a str>,
    /// Last tried from this egress IP (or `smarthost:NAME`).
    pub egress: Option<&'a str>,
}

impl Filter<'_> {
    /// The filter as query parameters (`&domain=…&site=…`), empty when none is set.
    fn query(&self) -> String {
        [
            ("domain", self.domain),
            ("site", self.site),
            ("egress", self.egress),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("&{k}={}", query_value(v))))
        .collect()
    }
}

/// `sidestep queue [list|show ID]`: the running relay's queue, through its admin API.
pub async fn queue(
    config_path: Option<&Path>,
    view: QueueView<'_>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let path = match &view {
        QueueView::Summary => "/api/v1/queue".to_string(),
        QueueView::List {
            filter,
            state,
            limit,
        } => {
            let mut p = format!("/api/v1/queue/messages?limit={limit}{}", filter.query());
            if let Some(s) = state {
                p.push_str(&format!("&state={}", query_value(s)));
            }
            p
        }
        QueueView::Show { id } => format!("/api/v1/queue/messages/{}", query_value(id)),
    };
    let body = match view {
        QueueView::Show { .. } => match super::admin_client::exchange(&config, "GET", &path).await?
        {
            (200, body) => body,
            // Gone: the relay's text says what became of it.
            (404, body) => anyhow::bail!("{}", String::from_utf8_lossy(&body).trim()),
            (_, _) => super::admin_client::get(&config, &path).await?,
        },
        _ => super::admin_client::get(&config, &path).await?,
    };
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let text = match view {
        QueueView::Summary => render_summary(&serde_json::from_slice(&body)?),
        QueueView::List { .. } => render_list(&serde_json::from_slice(&body)?),
        QueueView::Show { .. } => render_message(&serde_json::from_slice(&body)?),
    };
    print!("{text}");
    Ok(())
}

fn query_value(s: &str) -> String {
    super::admin_client::encode(s)
}

/// An operator's command on the queue.
pub enum QueueCommand<'a> {
    /// Attempt now: one message, a domain's, a site's, or all.
    Flush {
        /// One message.
        id: Option<&'a str>,
        /// Those of a domain, site or egress IP.
        filter: Filter<'a>,
    },
    /// Keep a message, never attempted, until released.
    Hold(&'a str),
    /// Schedule a held message now.
    Release(&'a str),
    /// Remove a message, quietly or bouncing it with a reason.
    Delete {
        /// The message.
        id: &'a str,
        /// Send the sender a DSN quoting this.
        bounce: Option<&'a str>,
    },
}

/// `sidestep suspend IP [--site S] --for D --reason R` and `sidestep lift IP [--site S]`:
/// through the running relay's admin API.
pub async fn suspension(
    config_path: Option<&Path>,
    ip: std::net::IpAddr,
    site: Option<&str>,
    suspend: Option<(&str, &str)>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let mut path = match suspend {
        Some((period, reason)) => format!(
            "/api/v1/blocks/suspend?ip={}&for={}&reason={}",
            query_value(&ip.to_string()),
            query_value(period),
            query_value(reason)
        ),
        None => format!("/api/v1/blocks/lift?ip={}", query_value(&ip.to_string())),
    };
    if let Some(site) = site {
        path.push_str(&format!("&site={}", query_value(site)));
    }
    let body = super::admin_client::request(&config, "POST", &path).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
    } else if suspend.is_some() {
        let b: crate::reputation::Block = serde_json::from_slice(&body)?;
        print!("{}", b.report("", crate::clock::Clock::system().now()));
    } else {
        println!("lifted: {ip} for {}", site.unwrap_or("every site"));
    }
    Ok(())
}

/// `sidestep flush|hold|release|delete`: through the running relay's admin API.
pub async fn command(
    config_path: Option<&Path>,
    command: QueueCommand<'_>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let (method, path) = match &command {
        QueueCommand::Flush { id, filter } => {
            let mut p = "/api/v1/queue/flush?".to_string();
            if let Some(id) = id {
                p.push_str(&format!("id={}", query_value(id)));
            }
            p.push_str(&filter.query());
            ("POST", p)
        }
        QueueCommand::Hold(id) => (
            "POST",
            format!("/api/v1/queue/messages/{}/hold", query_value(id)),
        ),
        QueueCommand::Release(id) => (
            "POST",
            format!("/api/v1/queue/messages/{}/release", query_value(id)),
        ),
        QueueCommand::Delete { id, bounce } => {
            let mut p = format!("/api/v1/queue/messages/{}", query_value(id));
            if let Some(reason) = bounce {
                p.push_str(&format!("?bounce={}", query_value(reason)));
            }
            ("DELETE", p)
        }
    };
    let body = super::admin_client::request(&config, method, &path).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        return Ok(());
    }
    let done: crate::admin::control::Done = serde_json::from_slice(&body)?;
    let verb = match command {
        QueueCommand::Flush { .. } => "flushed",
        QueueCommand::Hold(_) => "held",
        QueueCommand::Release(_) => "released",
        QueueCommand::Delete {
            bounce: Some(_), ..
        } => "deleted, DSN sent",
        QueueCommand::Delete { .. } => "deleted",
    };
    if !done.done.is_empty() || done.when_attempt_ends.is_empty() {
        println!("{verb}: {}", done.done.len());
    }
    for id in &done.done {
        println!("  {id}");
    }
    if !done.busy.is_empty() {
        println!(
            "left alone (an attempt is under way): {}",
            done.busy.join(" ")
        );
    }
    for id in &done.when_attempt_ends {
        println!("{id}: an attempt is under way; {verb} when it ends (it is not attempted again)");
    }
    Ok(())
}

fn render_summary(s: &QueueSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} message(s), {} recipient(s) pending",
        s.messages, s.pending_recipients
    );
    for (state, n) in &s.by_state {
        let _ = writeln!(out, "  {state:<10} {n}");
    }
    if let Some(age) = s.oldest_age_s {
        let _ = writeln!(
            out,
            "oldest: {}",
            humantime::format_duration(std::time::Duration::from_secs(age))
        );
    }
    if !s.by_domain.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<40} {:>9} {:>11}",
            "domain", "messages", "recipients"
        );
        for d in &s.by_domain {
            let _ = writeln!(
                out,
                "{:<40} {:>9} {:>11}",
                d.domain, d.messages, d.recipients
            );
        }
    }
    for d in &s.sites_down {
        let _ = writeln!(
            out,
            "site DOWN: {} since {} ({} deliveries reached no server: {}); next probe {}",
            d.site,
            super::blocks::when(d.since_ms / 1000),
            d.failures,
            d.last_error,
            super::blocks::when(d.next_probe_ms / 1000)
        );
    }
    for (title, groups) in [("site", &s.by_site), ("egress", &s.by_egress)] {
        if groups.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{:<40} {:>9} {:>11}  oldest",
            title, "messages", "recipients"
        );
        for g in groups {
            let _ = writeln!(
                out,
                "{:<40} {:>9} {:>11}  {}",
                g.name,
                g.messages,
                g.recipients,
                humantime::format_duration(std::time::Duration::from_secs(g.oldest_age_s))
            );
        }
    }
    out
}

fn render_list(l: &MessageList) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<9} {:>8} {:>4} {:<22} sender → pending recipients",
        "queue id", "state", "age", "try", "next attempt"
    );
    for m in &l.messages {
        let pending: Vec<&str> = m
            .recipients
            .iter()
            .filter(|r| r.status == "pending")
            .map(|r| r.address.as_str())
            .collect();
        let _ = writeln!(
            out,
            "{:<22} {:<9} {:>8} {:>4} {:<22} {} → {}",
            m.id,
            m.state,
            humantime::format_duration(std::time::Duration::from_secs(m.age_s)).to_string(),
            m.attempts,
            m.next_attempt.as_deref().unwrap_or("-"),
            m.sender,
            pending.join(", ")
        );
    }
    let _ = writeln!(out, "{} of {} shown", l.messages.len(), l.total);
    out
}

fn render_message(m: &MessageView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  ({}, {} attempt(s))", m.id, m.state, m.attempts);
    let _ = writeln!(out, "  from:     {}", m.sender);
    let _ = writeln!(out, "  received: {} from {}", m.received, m.client);
    let _ = writeln!(
        out,
        "  next:     {}",
        m.next_attempt
            .as_deref()
            .unwrap_or("none: held until `sidestep release`")
    );
    let _ = writeln!(out, "  size:     {} bytes", m.size);
    for r in &m.recipients {
        let _ = writeln!(
            out,
            "  {:<9} {}  {}",
            r.status,
            r.address,
            r.reply.as_deref().unwrap_or("")
        );
        if r.site.is_some() || r.egress.is_some() {
            let _ = writeln!(
                out,
                "            site {} via {}",
                r.site.as_deref().unwrap_or("-"),
                r.egress.as_deref().unwrap_or("-")
            );
        }
    }
    if !m.history.is_empty() {
        let _ = writeln!(out, "  attempts (oldest first):");
        for a in &m.history {
            let _ = writeln!(
                out,
                "    {}  {}  {} via {} to {}: {} ({})",
                super::blocks::when(a.at),
                a.status,
                a.rcpt,
                a.egress,
                a.site.as_deref().unwrap_or("-"),
                a.reply,
                a.verdict
            );
        }
    }
    out
}
