//! One destination domain within an attempt: the transaction, the verdict per
//! recipient, and what reputation learns from it. An `ip-reputation` refusal blocks the
//! egress IP for the site and sends the refused recipients again at once from another
//! IP (or the fallback smarthost); they are never bounced for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::scheduler::QueueContext;
use crate::classify::Verdict;
use crate::envelope::{Address, BodyFlags, Sender};
use crate::outbound::{AttemptReport, DomainDelivery, Via};
use crate::reputation::Evidence;
use crate::routing::Site;
use crate::spool::{QueueId, RemoteReply, unix_now};

/// An IP refused, another tried at once: at most this many times per attempt, so a
/// destination that refuses everyone cannot keep an attempt spinning.
const MAX_ROUNDS: usize = 16;

pub(super) struct DomainJob {
    pub queue_id: QueueId,
    pub received_at: u64,
    pub sender: Sender,
    pub flags: BodyFlags,
    pub body: Arc<[u8]>,
    pub domain: String,
    /// Index in the message's recipient list, and the address.
    pub recipients: Vec<(usize, Address)>,
}

pub(super) struct DomainOutcome {
    /// The final reply and verdict per recipient index.
    pub results: Vec<(usize, RemoteReply, Verdict)>,
    /// Nothing could be sent: every egress IP is listed or blocked, and no fallback.
    pub no_egress: bool,
    /// With `no_egress`: when the first block expires (Unix seconds).
    pub retry_at: Option<u64>,
    /// The destination asked us to slow down.
    pub throttled: bool,
    pub domain: String,
}

pub(super) async fn deliver_domain(ctx: &QueueContext, job: DomainJob) -> DomainOutcome {
    let mut pending = job.recipients.clone();
    let mut results = Vec::new();
    let mut outcome = DomainOutcome {
        results: Vec::new(),
        no_egress: false,
        retry_at: None,
        throttled: false,
        domain: job.domain.clone(),
    };
    for round in 0..MAX_ROUNDS {
        let addresses: Vec<Address> = pending.iter().map(|(_, a)| a.clone()).collect();
        let report = ctx
            .outbound
            .deliver(&DomainDelivery {
                domain: &job.domain,
                sender: &job.sender,
                recipients: &addresses,
                flags: job.flags,
                body: &job.body,
                max_connections: ctx.domain_cap(&job.domain),
            })
            .await;
        outcome.no_egress = report.no_egress;
        outcome.retry_at = report.retry_at;
        let egress_ip = report.egress.as_ref().and_then(|e| e.ip);
        let direct = report.via == Via::Direct;
        let mut again = Vec::new();
        let mut refusal: Option<Evidence> = None;
        let mut delivered = false;
        for (k, (i, rcpt)) in pending.iter().enumerate() {
            let Some(reply) = report.replies.get(k).cloned() else {
                continue;
            };
            let class = ctx
                .classifier
                .classify(reply.code, &reply.enhanced, &reply.text);
            let line = log_attempt(&job, rcpt, &report, &reply, class.verdict, &class.rule);
            match class.verdict {
                Verdict::Delivered => delivered = true,
                Verdict::Throttle => outcome.throttled = true,
                Verdict::DomainReputation => tracing::error!(
                    queue_id = %job.queue_id,
                    rcpt = %rcpt,
                    reply = %reply,
                    "a domain of this message is on a reputation list; another IP cannot help, bouncing"
                ),
                _ => {}
            }
            // Only a refusal of *our IP* on a direct delivery teaches reputation; through a
            // smarthost it is the smarthost's IP, not ours.
            if class.verdict == Verdict::IpReputation && direct && egress_ip.is_some() {
                if refusal.is_none() {
                    refusal = Some(Evidence {
                        reply: reply.to_string(),
                        rule: class.rule.clone(),
                        at: unix_now(),
                        mx_host: report.mx.clone(),
                        mx_ip: report.mx_ip,
                        queue_id: job.queue_id.to_string(),
                        recipient: rcpt.to_string(),
                        removal_url: crate::reputation::blocks::find_removal_url(&reply.text),
                        log_line: line.unwrap_or_default(),
                    });
                }
                again.push((*i, rcpt.clone()));
            }
            results.push((*i, reply, class.verdict));
        }
        learn(
            ctx,
            egress_ip.filter(|_| direct),
            report.site.as_ref(),
            refusal.clone(),
            delivered,
        )
        .await;
        if again.is_empty() || refusal.is_none() || round + 1 == MAX_ROUNDS {
            break;
        }
        tracing::info!(
            queue_id = %job.queue_id,
            recipients = again.len(),
            "refused for the sending IP's reputation; retrying at once from another IP"
        );
        pending = again;
    }
    // Later rounds override earlier ones: keep the last result per recipient.
    let mut last: Vec<(usize, RemoteReply, Verdict)> = Vec::new();
    for (i, reply, verdict) in results {
        match last.iter_mut().find(|(j, _, _)| *j == i) {
            Some(slot) => *slot = (i, reply, verdict),
            None => last.push((i, reply, verdict)),
        }
    }
    outcome.results = last;
    outcome
}

/// Tells reputation what the destination thought of the IP: a refusal blocks it for the
/// site; an acceptance lifts a block (the canary succeeded); anything else frees a
/// claimed canary.
async fn learn(
    ctx: &QueueContext,
    ip: Option<IpAddr>,
    site: Option<&Site>,
    refusal: Option<Evidence>,
    delivered: bool,
) {
    let (Some(ip), Some(site)) = (ip, site) else {
        return;
    };
    // The common case, a delivery where nothing was blocked, touches no disk and needs
    // no blocking thread.
    match &refusal {
        None if !delivered => return ctx.reputation.release_canary(ip, site),
        None if !ctx.reputation.has_block(ip, site) => return,
        _ => {}
    }
    let site = site.clone();
    let reputation = ctx.reputation.clone();
    let blocks = ctx.config.blocks.clone();
    let result = tokio::task::spawn_blocking(move || match refusal {
        Some(evidence) => reputation
            .record_block(ip, &site, evidence, &blocks)
            .map(|_| ()),
        None => reputation.note_success(ip, &site),
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot persist block state"),
        Err(e) => tracing::error!(error = %e, "block bookkeeping panicked"),
    }
}

/// The attempt's log line: one per recipient, the line operators grep and delisting
/// forms ask for. For a refusal of the IP, returns the same line as text, kept as the
/// block's evidence.
fn log_attempt(
    job: &DomainJob,
    rcpt: &Address,
    report: &AttemptReport,
    reply: &RemoteReply,
    verdict: Verdict,
    rule: &str,
) -> Option<String> {
    let egress = match (&report.via, &report.egress) {
        (Via::Smarthost(name), _) => format!("smarthost:{name}"),
        (Via::Direct, Some(e)) => e.to_string(),
        (Via::Direct, None) => "-".into(),
    };
    let mx = reply.mx.as_deref().or(report.mx.as_deref()).unwrap_or("-");
    let mx_ip = report
        .mx_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "-".into());
    let delay = unix_now().saturating_sub(job.received_at);
    tracing::info!(
        queue_id = %job.queue_id,
        rcpt = %rcpt,
        egress = %egress,
        mx = mx,
        mx_ip = %mx_ip,
        reused = report.reused,
        delay_s = delay,
        dsn = %reply.enhanced,
        verdict = %verdict,
        rule = rule,
        reply = %reply,
        "delivery attempt"
    );
    (verdict == Verdict::IpReputation).then(|| format!(
        "{} queue_id={} rcpt={} egress={} mx={} mx_ip={} delay_s={} dsn={} verdict={} rule={} reply=\"{}\"",
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_now())),
        job.queue_id,
        rcpt,
        egress,
        mx,
        mx_ip,
        delay,
        reply.enhanced,
        verdict,
        rule,
        reply
    ))
}
