//! The daily TLS report (RFC 8460): for each domain that publishes `_smtp._tls` with a
//! `rua`, the day's sessions per policy as JSON, gzipped, mailed (`mailto:`, through the
//! relay's own queue: handed over as an event, see [`ReportMail`]) or POSTed
//! (`https:`, the host looked up through the relay's resolver; a POST that fails is
//! retried, see [`super::pending`]). Counts of domains without a `rua` are dropped once
//! the day is over.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::report::tlsrpt::{DateRange, Policy, TlsReport};

use super::TlsPolicies;
use super::outcomes::{PolicyCounts, summary};
use super::pending::PendingPost;
use crate::dns::Resolver;

/// A report to mail: the queue turns it into a message from `from` (null envelope
/// sender, like a DSN: a report never bounces).
#[derive(Debug, Clone)]
pub struct ReportMail {
    /// The `rua` mailboxes.
    pub to: Vec<String>,
    /// The whole message (headers and MIME body, CRLF).
    pub body: Vec<u8>,
}

/// What happened to one domain's report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportSent {
    /// The policy domain.
    pub domain: String,
    /// Where it went (`mailto:…` queued, `https://…` answered 2xx) or why not.
    pub to: Vec<String>,
    /// Sessions it counts.
    pub sessions: u32,
    /// Failures on the way, if any.
    pub errors: Vec<String>,
}

/// Why a POST of a report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Not an https URL with a host.
    #[error("bad URL {0}")]
    Url(String),
    /// Connect, TLS, write or read failed, or a non-2xx answer.
    #[error("{0}")]
    Io(String),
}

impl TlsPolicies {
    /// Where report mail goes: `serve` wires this to the queue.
    pub fn set_mailer(&self, mailer: tokio::sync::mpsc::UnboundedSender<ReportMail>) {
        *self.shared.mailer.lock().unwrap_or_else(|p| p.into_inner()) = Some(mailer);
    }

    /// Sends the reports of `day` (days since the epoch, UTC) and forgets its counts.
    pub async fn send_reports(&self, day: u64) -> Vec<ReportSent> {
        let (config, hostname, resolver) = self.report_setup();
        let mut sent = Vec::new();
        for (domain, counts) in self.outcomes().take_day(day) {
            let rua = resolver
                .lookup_txt(&format!("_smtp._tls.{domain}"))
                .await
                .map(|r| super::sts::tlsrpt_rua(&r))
                .unwrap_or_default();
            if rua.is_empty() || !config.enabled {
                continue;
            }
            let report = build(&domain, day, &counts, config, hostname);
            let from = config
                .from
                .clone()
                .unwrap_or_else(|| format!("postmaster@{hostname}"));
            let mut done = ReportSent {
                domain: domain.clone(),
                to: Vec::new(),
                sessions: counts.iter().map(|c| c.success + c.failure).sum(),
                errors: Vec::new(),
            };
            let json = json(&report);
            let gz = gzip(json.as_bytes());
            let mailto: Vec<&str> = rua
                .iter()
                .filter_map(|u| u.strip_prefix("mailto:"))
                .collect();
            if !mailto.is_empty() {
                let org = config
                    .organization
                    .clone()
                    .unwrap_or_else(|| hostname.to_string());
                let mut body = Vec::new();
                let written = report.write_rfc5322_from_bytes(
                    &domain,
                    hostname,
                    (org.as_str(), from.as_str()),
                    mailto.iter().copied(),
                    &gz,
                    &mut body,
                );
                let mailer = self
                    .shared
                    .mailer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                match (written, mailer) {
                    (Ok(()), Some(m)) => {
                        let to: Vec<String> = mailto.iter().map(|s| s.to_string()).collect();
                        if m.send(ReportMail {
                            to: to.clone(),
                            body,
                        })
                        .is_ok()
                        {
                            done.to.extend(to.iter().map(|t| format!("mailto:{t}")));
                        } else {
                            done.errors.push("the queue is gone".into());
                        }
                    }
                    (Err(e), _) => done.errors.push(e.to_string()),
                    (_, None) => done.errors.push("no queue for report mail".into()),
                }
            }
            for url in rua.iter().filter(|u| u.starts_with("https://")) {
                let post = PendingPost {
                    url: url.clone(),
                    domain: domain.clone(),
                    report_id: report.report_id.clone(),
                    gz: gz.clone(),
                    first_ms: self.clock().now_ms(),
                    attempts: 0,
                    next_ms: 0,
                    error: String::new(),
                };
                match self.post_report(&post).await {
                    Ok(()) => done.to.push(url.clone()),
                    Err(e) => {
                        let next = self.shared.pending.failed(post, e.to_string());
                        done.errors.push(match next {
                            Some(at) => format!(
                                "{url}: {e} (tried again at {})",
                                crate::clock::rfc3339(at / 1000)
                            ),
                            None => format!("{url}: {e}"),
                        });
                    }
                }
            }
            tracing::info!(domain, to = ?done.to, errors = ?done.errors, sessions = done.sessions, "TLS report sent");
            sent.push(done);
        }
        let _ = self.flush();
        sent
    }

    /// POSTs one report to its `https:` rua, the host looked up through the relay's
    /// resolver.
    async fn post_report(&self, p: &PendingPost) -> Result<(), ReportError> {
        post(&self.shared.resolver, &self.shared.fetch_tls, &p.url, &p.gz).await
    }

    /// POSTs the waiting reports that are due (see [`super::pending`]); one that fails
    /// again waits longer, or is given up.
    pub async fn retry_reports(&self) {
        for p in self.shared.pending.due() {
            match self.post_report(&p).await {
                Ok(()) => {
                    tracing::info!(
                        url = p.url,
                        domain = p.domain,
                        report_id = p.report_id,
                        attempts = p.attempts + 1,
                        "TLS report posted"
                    );
                    self.shared.pending.posted(&p);
                }
                Err(e) => {
                    self.shared.pending.failed(p, e.to_string());
                }
            }
        }
    }

    /// The reports waiting for another POST.
    pub fn pending_reports(&self) -> Vec<PendingPost> {
        self.shared.pending.list()
    }

    /// Retries the waiting reports when due, from those the last run left in the spool
    /// on. Sleeps until the next due time (at most a minute, so a step of the clock is
    /// noticed), or until a new report waits.
    pub fn spawn_retries(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.retry_reports().await;
                let now = me.clock().now_ms();
                let wait = me
                    .shared
                    .pending
                    .next_due()
                    .map_or(60_000, |at| at.saturating_sub(now))
                    .min(60_000);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    () = me.shared.pending.added.notified() => {}
                }
            }
        });
    }

    /// Sends each finished day's reports just after midnight UTC, by the policies' clock.
    pub fn spawn_daily(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let now = me.clock().now();
                let today = now / 86_400;
                for day in me.outcomes().days().into_iter().filter(|d| *d < today) {
                    me.send_reports(day).await;
                }
                // A few minutes past midnight, so sessions of the last second are in.
                let next = (today + 1) * 86_400 + 300;
                let wait =
                    Duration::from_secs(next.saturating_sub(now)).min(Duration::from_secs(3600));
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// The report of one domain and day.
fn build(
    domain: &str,
    day: u64,
    counts: &[PolicyCounts],
    config: &crate::config::TlsRptConfig,
    hostname: &str,
) -> TlsReport {
    let start = (day * 86_400) as i64;
    let from = config
        .from
        .clone()
        .unwrap_or_else(|| format!("postmaster@{hostname}"));
    TlsReport {
        organization_name: Some(
            config
                .organization
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
        ),
        date_range: DateRange {
            start_datetime: mail_parser::DateTime::from_timestamp(start),
            end_datetime: mail_parser::DateTime::from_timestamp(start + 86_400 - 1),
        },
        contact_info: Some(config.contact.clone().unwrap_or(from)),
        report_id: format!(
            "{}_{day}_{domain}@{hostname}",
            crate::clock::rfc3339(day * 86_400)
        ),
        policies: counts
            .iter()
            .map(|c| Policy {
                policy: c.policy.clone(),
                summary: summary(c),
                failure_details: c.details.clone(),
            })
            .collect(),
    }
}

/// The report as RFC 8460 JSON, without the `null`s of fields we do not know.
pub fn json(report: &TlsReport) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, v| !v.is_null());
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(report).unwrap_or_default();
    strip(&mut v);
    v.to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// POSTs the gzipped report (RFC 8460 §3: `application/tlsrpt+gzip`); 2xx is success.
/// The host is looked up through `resolver` (the relay's, as for MX hosts and MTA-STS
/// policy hosts).
async fn post(
    resolver: &Resolver,
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    gz: &[u8],
) -> Result<(), ReportError> {
    let (host, port, path) = split_url(url).ok_or_else(|| ReportError::Url(url.into()))?;
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gz.len()
    );
    let request = [head.as_bytes(), gz];
    let exchange = super::fetch::https_exchange(resolver, tls, (host, port), &request, 16 * 1024);
    let reply = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| ReportError::Io("timed out".into()))?
        .map_err(|e| ReportError::Io(e.to_string()))?;
    let status = String::from_utf8_lossy(&reply);
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        other => Err(ReportError::Io(format!(
            "answered {}",
            other.unwrap_or("nothing")
        ))),
    }
}

/// The host, port (443 by default) and path of an `https:` URL; an IPv6 literal is in
/// brackets.
fn split_url(url: &str) -> Option<(&str, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = port.map_or(Some(443), |p| p.parse().ok())?;
    (!host.is_empty()).then_some((host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_rua_splits_into_host_port_and_path() {
        assert_eq!(
            split_url("https://tlsrpt.example.com/v1/r?x=1"),
            Some(("tlsrpt.example.com", 443, "/v1/r?x=1".to_string()))
        );
        assert_eq!(
            split_url("https://r.example:8443"),
            Some(("r.example", 8443, "/".to_string()))
        );
        assert_eq!(
            split_url("https://[2001:db8::1]:444/r"),
            Some(("2001:db8::1", 444, "/r".to_string()))
        );
        assert_eq!(split_url("https://r.example:http/"), None);
        assert_eq!(split_url("https:///r"), None);
        assert_eq!(split_url("mailto:r@example"), None);
    }
}
