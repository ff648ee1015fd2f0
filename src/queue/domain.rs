//! One destination domain within an attempt: the transaction, the verdict per
//! recipient, and what reputation learns from it.
//!
//! An `ip-reputation` refusal blocks the egress IP for the site and sends the refused
//! recipients again at once from another IP (or the fallback smarthost); they are never
//! bounced for it. A refusal the rules do *not* blame on the IP, but that could be about
//! it (see [`crate::classify::worth_second_opinion`]), gets a second opinion before it is
//! acted on: the same recipients, at once, from another egress IP. Accepted there, the
//! first refusal was about the IP after all: it becomes a block and a learned reply.
//! Refused again, it is about the message or sender: the bounce quotes both replies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use super::context::QueueContext;
use crate::classify::{Classification, Verdict, worth_second_opinion};
use crate::config::SpfMode;
use crate::envelope::{Address, BodyFlags, Sender};
use crate::metrics::AttemptResult;
use crate::outbound::{AttemptReport, DomainDelivery, Via};
use crate::reputation::{Evidence, LearnedReply, Reputation, StoreError};
use crate::site::Site;
use crate::spool::{AttemptRecord, Body, LastRoute, QueueId, RemoteReply};

/// An IP refused, another tried at once: at most this many times per attempt, so a
/// destination that refuses everyone cannot keep an attempt spinning.
const MAX_ROUNDS: usize = 16;

pub(super) struct DomainJob {
    pub queue_id: QueueId,
    pub received_at: u64,
    pub sender: Sender,
    pub flags: BodyFlags,
    pub body: Body,
    pub domain: String,
    /// Index in the message's recipient list, and the address.
    pub recipients: Vec<(usize, Address)>,
    /// The queue's clock, for the attempt's log line and records.
    pub clock: crate::clock::Clock,
    /// The message's attempts before this one (the return-path token names it).
    pub attempt: u32,
}

/// The final word on one recipient in this attempt.
pub(super) struct RecipientResult {
    pub reply: RemoteReply,
    pub verdict: Verdict,
    /// The first IP's refusal, when a second IP was asked and refused too.
    pub earlier: Option<RemoteReply>,
    /// What the sender must fix (an authentication failure), for the DSN.
    pub explanation: Option<String>,
    /// Where the attempt that gave this result went.
    pub route: LastRoute,
}

pub(super) struct DomainOutcome {
    /// The final result per recipient index.
    pub results: BTreeMap<usize, RecipientResult>,
    /// Nothing could be sent: every egress IP is listed or blocked, and no fallback.
    pub no_egress: bool,
    /// With `no_egress`: when the first block expires (Unix seconds).
    pub retry_at: Option<u64>,
    /// The destination asked us to slow down.
    pub throttled: bool,
    /// The site that asked (its shaping is tightened, for all its domains).
    pub throttled_site: Option<Site>,
    pub domain: String,
    /// Every recipient's attempt in this job, in order (rerouted and second-opinion
    /// rounds included), for the message's history.
    pub history: Vec<AttemptRecord>,
    /// Nothing was tried: the site is down until its next probe (Unix ms).
    pub site_down: Option<(Site, u64)>,
    /// The site was down and answered this delivery: its parked mail may go.
    pub site_recovered: Option<Site>,
    /// No server of this site answered: when it comes back, this message goes too.
    pub unreachable: Option<Site>,
}

/// An authentication refusal (SPF/DKIM/DMARC) from one of our IPs: asked again only from
/// an IP the sender's SPF authorises.
struct AuthDoubt {
    index: usize,
    rcpt: Address,
    reply: RemoteReply,
    ip: IpAddr,
    /// The HELO name it announced (SPF's identity for a null sender).
    helo: std::sync::Arc<str>,
    site: Site,
}

/// A refusal that may be about the IP although no rule says so: what a block needs if a
/// second IP gets past it.
struct Doubt {
    index: usize,
    rcpt: Address,
    reply: RemoteReply,
    class: Classification,
    ip: IpAddr,
    site: Site,
    evidence: Evidence,
}

impl DomainOutcome {
    /// Nothing known yet about `domain`.
    pub(super) fn empty(domain: String) -> Self {
        Self {
            results: BTreeMap::new(),
            no_egress: false,
            retry_at: None,
            throttled: false,
            throttled_site: None,
            domain,
            history: Vec::new(),
            site_down: None,
            site_recovered: None,
            unreachable: None,
        }
    }
}

pub(super) async fn deliver_domain(ctx: &QueueContext, job: DomainJob) -> DomainOutcome {
    if let Some(local) = ctx.local.as_ref().filter(|l| l.is_local(&job.domain)) {
        return super::local::deliver(ctx, local.as_ref(), job).await;
    }
    let mut pending = job.recipients.clone();
    let mut outcome = DomainOutcome::empty(job.domain.clone());
    let mut doubts = Vec::new();
    let mut auth_doubts = Vec::new();
    for round in 0..MAX_ROUNDS {
        let report = send(ctx, &job, &pending, &[], ctx.config.delivery.spf).await;
        if let (Some(next), Some(site), true) = (report.site_down, &report.site, report.skipped) {
            // Not tried: the recipients wait with the reason, nothing is logged per
            // recipient (the site's mail is parked, not attempted).
            for (k, (i, _)) in pending.iter().enumerate() {
                if let Some(reply) = report.replies.get(k).cloned() {
                    outcome.results.insert(
                        *i,
                        RecipientResult {
                            reply,
                            verdict: Verdict::Transient,
                            earlier: None,
                            explanation: None,
                            route: LastRoute {
                                site: Some(site.to_string()),
                                egress: "-".into(),
                            },
                        },
                    );
                }
            }
            outcome.site_down = Some((site.clone(), next));
            return outcome;
        }
        if report.site_recovered {
            outcome.site_recovered = report.site.clone();
        }
        outcome.unreachable = report.site.clone().filter(|_| report.unreachable);
        // Its probe found the site still down (or this delivery marked it down).
        outcome.site_down = report
            .site_down
            .and_then(|next| Some((report.site.clone()?, next)));
        announce_route(ctx, &report);
        outcome.no_egress = report.no_egress;
        outcome.retry_at = report.retry_at;
        let egress_ip = report.egress.as_ref().and_then(|e| e.ip);
        // Only a refusal of *our IP* on a direct delivery teaches reputation; through a
        // smarthost it is the smarthost's IP, not ours.
        let our_ip = egress_ip.filter(|_| report.via == Via::Direct);
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
            let doubt = match (our_ip, &report.site) {
                (Some(ip), Some(site))
                    if worth_second_opinion(reply.code, class.verdict, &reply.text, ip) =>
                {
                    Some((ip, site.clone()))
                }
                _ => None,
            };
            let keep_line = class.verdict == Verdict::IpReputation || doubt.is_some();
            // An authentication refusal of one of our IPs: another IP that the sender's
            // SPF authorises is asked before anything is concluded.
            let auth_doubt = match (&report.egress, our_ip, &report.site) {
                (Some(e), Some(ip), Some(site)) if class.verdict == Verdict::Authentication => {
                    Some((ip, e.helo.clone(), site.clone()))
                }
                _ => None,
            };
            if class.verdict == Verdict::Authentication {
                crate::metrics::metrics().auth_refusals.inc();
            }
            let Logged { record, line } = log_attempt(
                &job,
                rcpt,
                &report,
                &reply,
                &class,
                keep_line,
                doubt.is_some() || auth_doubt.is_some(),
            );
            let verdict = class.verdict;
            super::suppress::feed(ctx, &job, rcpt, &reply, verdict, report.site.as_ref());
            match verdict {
                Verdict::Delivered => delivered = true,
                Verdict::Throttle => {
                    outcome.throttled = true;
                    outcome.throttled_site = report.site.clone();
                }
                Verdict::DomainReputation => tracing::error!(
                    queue_id = %job.queue_id,
                    rcpt = %rcpt,
                    reply = %reply,
                    "a domain of this message is on a reputation list; another IP cannot help, bouncing"
                ),
                _ => {}
            }
            if class.verdict == Verdict::IpReputation && our_ip.is_some() {
                if refusal.is_none() {
                    refusal = Some(evidence(&job, rcpt, &report, &reply, &class, line));
                }
                again.push((*i, rcpt.clone()));
            } else if let Some((ip, helo, site)) = auth_doubt {
                auth_doubts.push(AuthDoubt {
                    index: *i,
                    rcpt: rcpt.clone(),
                    reply: reply.clone(),
                    ip,
                    helo,
                    site,
                });
            } else if class.verdict == Verdict::Authentication {
                // Through a smarthost: nothing of ours to try instead.
                auth_failing(ctx, &job, &reply, None).await;
            } else if let Some((ip, site)) = doubt {
                doubts.push(Doubt {
                    index: *i,
                    rcpt: rcpt.clone(),
                    evidence: evidence(&job, rcpt, &report, &reply, &class, line),
                    reply: reply.clone(),
                    class,
                    ip,
                    site,
                });
            }
            outcome.results.insert(
                *i,
                RecipientResult {
                    reply,
                    verdict,
                    earlier: None,
                    explanation: None,
                    route: record.route(),
                },
            );
            outcome.history.push(record);
        }
        let refused = refusal.is_some();
        learn(ctx, our_ip, report.site.as_ref(), refusal, delivered).await;
        if again.is_empty() || !refused || round + 1 == MAX_ROUNDS {
            break;
        }
        tracing::info!(
            queue_id = %job.queue_id,
            recipients = again.len(),
            "refused for the sending IP's reputation; retrying at once from another IP"
        );
        pending = again;
    }
    if !doubts.is_empty() {
        second_opinion(ctx, &job, doubts, &mut outcome).await;
    }
    if !auth_doubts.is_empty() {
        auth_second_opinion(ctx, &job, auth_doubts, &mut outcome).await;
    }
    outcome
}

/// Asks an egress IP that the sender's SPF authorises (or an authorised fallback
/// smarthost) about recipients refused for authentication. Accepted there: the first IP
/// is recorded as not authorised for the sender domain (`sidestep auth`), never blocked
/// for the site. Refused there too, or no authorised address: the refusal stands, the
/// DSN says what failed and the operator gets an `auth-failing` alert.
async fn auth_second_opinion(
    ctx: &QueueContext,
    job: &DomainJob,
    doubts: Vec<AuthDoubt>,
    outcome: &mut DomainOutcome,
) {
    let mut avoid: Vec<IpAddr> = doubts.iter().map(|d| d.ip).collect();
    avoid.sort();
    avoid.dedup();
    let recipients: Vec<(usize, Address)> =
        doubts.iter().map(|d| (d.index, d.rcpt.clone())).collect();
    tracing::info!(
        queue_id = %job.queue_id,
        recipients = recipients.len(),
        refused_ip = %avoid.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","),
        first_reply = %doubts[0].reply,
        "authentication refusal: asking an address the sender's SPF authorises before bouncing (no block: it is not the IP's reputation)"
    );
    let report = send(ctx, job, &recipients, &avoid, SpfMode::Require).await;
    if report.unauthorised || report.no_egress || report.replies.is_empty() {
        tracing::warn!(
            queue_id = %job.queue_id,
            why = report.replies.first().map(|r| r.text.as_str()).unwrap_or("-"),
            "authentication refusal stands: no other address that the sender's SPF authorises"
        );
        for d in doubts {
            let explanation = auth_failing(ctx, job, &d.reply, Some((d.ip, &d.helo))).await;
            if let Some(r) = outcome.results.get_mut(&d.index) {
                r.explanation = Some(explanation);
            }
        }
        return;
    }
    let (accepted_via, our_ip) = second_address(&report);
    let mut refusal = None;
    let mut delivered = false;
    let mut denied: Vec<IpAddr> = Vec::new();
    for (k, d) in doubts.into_iter().enumerate() {
        let Some(reply) = report.replies.get(k).cloned() else {
            continue;
        };
        let (class, Logged { record, line }) = second_answer(ctx, job, &d.rcpt, &report, &reply);
        let verdict = class.verdict;
        let mut explanation = None;
        let earlier = match verdict {
            Verdict::Delivered => {
                delivered = true;
                if !denied.contains(&d.ip) {
                    denied.push(d.ip);
                    deny(ctx, job, &d, &accepted_via);
                }
                None
            }
            Verdict::IpReputation if our_ip.is_some() => {
                if refusal.is_none() {
                    refusal = Some(evidence(job, &d.rcpt, &report, &reply, &class, line));
                }
                None
            }
            Verdict::Throttle => {
                outcome.throttled = true;
                outcome.throttled_site = report.site.clone();
                None
            }
            v if v.is_permanent_failure() => {
                if v == Verdict::Authentication {
                    crate::metrics::metrics().auth_refusals.inc();
                    explanation = Some(auth_failing(ctx, job, &reply, Some((d.ip, &d.helo))).await);
                }
                tracing::info!(
                    queue_id = %job.queue_id,
                    rcpt = %d.rcpt,
                    first = %d.reply,
                    second = %reply,
                    "authentication: refused from an authorised address too; bouncing"
                );
                Some(d.reply)
            }
            _ => None,
        };
        outcome.results.insert(
            d.index,
            RecipientResult {
                reply,
                verdict,
                earlier,
                explanation,
                route: record.route(),
            },
        );
        outcome.history.push(record);
    }
    learn(ctx, our_ip, report.site.as_ref(), refusal, delivered).await;
}

/// An address SPF authorises got past an authentication refusal of `d.ip`: the pair
/// (sender domain, IP) is remembered so that domain's mail avoids the IP; the IP keeps
/// its standing for every other sender.
fn deny(ctx: &QueueContext, job: &DomainJob, d: &AuthDoubt, accepted_via: &str) {
    let domain = crate::authorisation::domain_of(&job.sender, &d.helo).to_string();
    let stored = ctx
        .outbound
        .authorisation()
        .deny(crate::authorisation::Denial {
            domain: domain.clone(),
            ip: d.ip,
            site: d.site.to_string(),
            reply: d.reply.to_string(),
            accepted_via: accepted_via.to_string(),
            first_seen: 0,
            last_seen: 0,
            count: 0,
            until: 0,
        });
    tracing::warn!(
        queue_id = %job.queue_id,
        sender_domain = %domain,
        ip = %d.ip,
        site = %d.site,
        accepted_via,
        count = stored.count,
        until = %crate::clock::rfc3339(stored.until),
        reply = %d.reply,
        "IP not authorised for {domain}: refused for authentication, accepted from {accepted_via}; that domain's mail avoids the IP (no block: other senders keep it)"
    );
}

/// An authentication refusal that another address cannot get past: alert the operator
/// (`auth-failing`, once per sender domain per `[alerts] repeat_after`) and return what
/// the DSN tells the sender.
async fn auth_failing(
    ctx: &QueueContext,
    job: &DomainJob,
    reply: &RemoteReply,
    from: Option<(IpAddr, &str)>,
) -> String {
    let helo = from.map_or("", |(_, h)| h);
    let domain = crate::authorisation::domain_of(&job.sender, helo).to_string();
    let named = named_checks(&reply.text);
    let spf = match from {
        Some((ip, helo)) => {
            let outcome = ctx
                .outbound
                .authorisation()
                .spf(crate::authorisation::identity_of(&job.sender), ip, helo)
                .await;
            format!("SPF of {domain} for {ip}: {outcome}; ")
        }
        None => String::new(),
    };
    let explanation = format!(
        "Sender authentication failed for {domain} ({spf}the receiver names: {named}).          No address of ours that {domain}'s SPF authorises got the message accepted:          the sender domain's DNS must be fixed (SPF record, DKIM signature, DMARC alignment)."
    );
    ctx.reputation.alert(
        "auth-failing",
        None,
        Some(domain.clone()),
        format!(
            "mail from {domain} is refused for authentication and no egress IP that its SPF authorises gets it accepted; {spf}reply: {reply}"
        ),
    );
    tracing::warn!(
        queue_id = %job.queue_id,
        sender_domain = %domain,
        reply = %reply,
        "authentication failing for {domain}: {named}"
    );
    explanation
}

/// Which checks an authentication refusal names, in words for the DSN.
fn named_checks(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let named: Vec<&str> = [
        ("spf", "SPF"),
        ("dkim", "DKIM"),
        ("dmarc", "DMARC"),
        ("align", "alignment"),
    ]
    .into_iter()
    .filter(|(word, _)| lower.contains(word))
    .map(|(_, name)| name)
    .collect();
    if named.is_empty() {
        "authentication".into()
    } else {
        named.join(", ")
    }
}

/// Tells the operator when a site has no egress IP left: its mail waits, or goes through
/// the fallback smarthost (alerts are deduplicated per site).
fn announce_route(ctx: &QueueContext, report: &AttemptReport) {
    let Some(site) = &report.site else {
        return;
    };
    match &report.via {
        Via::Smarthost(name) => ctx.reputation.alert(
            "no-egress",
            None,
            Some(site.to_string()),
            format!("every egress IP is listed or blocked for {site}: its mail goes through the fallback smarthost {name}"),
        ),
        Via::Direct if report.no_egress => ctx.reputation.alert(
            "no-egress",
            None,
            Some(site.to_string()),
            format!(
                "every egress IP is listed or blocked for {site}, and no fallback smarthost: its mail waits ({})",
                report.replies.first().map(|r| r.text.as_str()).unwrap_or("-")
            ),
        ),
        Via::Direct => {}
    }
}

/// Sends the job's `recipients` from any egress IP but those in `avoid`.
async fn send(
    ctx: &QueueContext,
    job: &DomainJob,
    recipients: &[(usize, Address)],
    avoid: &[IpAddr],
    spf: SpfMode,
) -> AttemptReport {
    let addresses: Vec<Address> = recipients.iter().map(|(_, a)| a.clone()).collect();
    let verp = super::verp::Verp::of(ctx.return_path.as_deref(), job, recipients);
    ctx.outbound
        .deliver(&DomainDelivery {
            domain: &job.domain,
            sender: verp.as_ref().map_or(&job.sender, |(_, s)| s),
            recipients: &addresses,
            flags: job.flags,
            body: &job.body,
            max_connections: ctx.domain_cap(&job.domain),
            avoid,
            spf,
            return_path: verp
                .as_ref()
                .map(|(v, _)| v as &dyn crate::outbound::ReturnPathFor),
        })
        .await
}

/// Asks another egress IP (or the fallback smarthost) about the recipients whose refusal
/// may have been about the IP; at most once per (message, site) and attempt, so a site
/// that refuses the content from everywhere costs two attempts and one bounce.
async fn second_opinion(
    ctx: &QueueContext,
    job: &DomainJob,
    doubts: Vec<Doubt>,
    outcome: &mut DomainOutcome,
) {
    let mut avoid: Vec<IpAddr> = doubts.iter().map(|d| d.ip).collect();
    avoid.sort();
    avoid.dedup();
    let recipients: Vec<(usize, Address)> =
        doubts.iter().map(|d| (d.index, d.rcpt.clone())).collect();
    tracing::info!(
        queue_id = %job.queue_id,
        recipients = recipients.len(),
        refused_ip = %avoid.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","),
        first_reply = %doubts[0].reply,
        first_rule = %doubts[0].class.rule,
        "second opinion: a refusal no rule blames on the IP; asking another egress IP before bouncing"
    );
    let report = send(ctx, job, &recipients, &avoid, ctx.config.delivery.spf).await;
    if report.no_egress {
        tracing::info!(
            queue_id = %job.queue_id,
            "second opinion: no other egress IP and no fallback smarthost; the refusal stands"
        );
        return;
    }
    let (accepted_via, our_ip) = second_address(&report);
    let mut refusal = None;
    let mut delivered = false;
    let mut confirmed: Vec<(IpAddr, Site)> = Vec::new();
    for (k, d) in doubts.into_iter().enumerate() {
        let Some(reply) = report.replies.get(k).cloned() else {
            continue;
        };
        let (class, Logged { record, line }) = second_answer(ctx, job, &d.rcpt, &report, &reply);
        let verdict = class.verdict;
        let index = d.index;
        let earlier = match verdict {
            Verdict::Delivered => {
                delivered = true;
                if !confirmed.contains(&(d.ip, d.site.clone())) {
                    confirmed.push((d.ip, d.site.clone()));
                    confirm_block(ctx, job, d, &accepted_via).await;
                }
                None
            }
            Verdict::IpReputation if our_ip.is_some() => {
                if refusal.is_none() {
                    refusal = Some(evidence(job, &d.rcpt, &report, &reply, &class, line));
                }
                None
            }
            Verdict::Throttle => {
                outcome.throttled = true;
                outcome.throttled_site = report.site.clone();
                None
            }
            v if v.is_permanent_failure() => {
                tracing::info!(
                    queue_id = %job.queue_id,
                    rcpt = %d.rcpt,
                    first = %d.reply,
                    second = %reply,
                    "second opinion: refused from another IP too; the refusal is about the message or sender"
                );
                Some(d.reply)
            }
            _ => None,
        };
        outcome.results.insert(
            index,
            RecipientResult {
                reply,
                verdict,
                earlier,
                explanation: None,
                route: record.route(),
            },
        );
        outcome.history.push(record);
    }
    learn(ctx, our_ip, report.site.as_ref(), refusal, delivered).await;
}

/// Where a second opinion went (for the log and the evidence) and, on a direct
/// delivery, which of our IPs it came from.
fn second_address(report: &AttemptReport) -> (String, Option<IpAddr>) {
    let via = match (&report.via, &report.egress) {
        (Via::Smarthost(name), _) => format!("smarthost:{name}"),
        (Via::Direct, Some(e)) => e.to_string(),
        (Via::Direct, None) => "default".into(),
    };
    let our_ip = report
        .egress
        .as_ref()
        .and_then(|e| e.ip)
        .filter(|_| report.via == Via::Direct);
    (via, our_ip)
}

/// A second opinion's reply for one recipient: classified and logged (the line kept
/// when it blames the IP, as a block's evidence).
fn second_answer(
    ctx: &QueueContext,
    job: &DomainJob,
    rcpt: &Address,
    report: &AttemptReport,
    reply: &RemoteReply,
) -> (Classification, Logged) {
    let class = ctx
        .classifier
        .classify(reply.code, &reply.enhanced, &reply.text);
    let logged = log_attempt(
        job,
        rcpt,
        report,
        reply,
        &class,
        class.verdict == Verdict::IpReputation,
        false,
    );
    (class, logged)
}

/// A second IP got past a refusal the rules did not blame on the first: block the first
/// IP for the site as if a rule had said so, and remember the wording.
async fn confirm_block(ctx: &QueueContext, job: &DomainJob, d: Doubt, accepted_via: &str) {
    tracing::warn!(
        queue_id = %job.queue_id,
        ip = %d.ip,
        site = %d.site,
        accepted_via = accepted_via,
        reply = %d.reply,
        "second opinion: accepted from another address; the refusal was about the egress IP"
    );
    let mut evidence = d.evidence;
    evidence.rule = format!(
        "second-opinion: confirmed by {accepted_via} (rules said {} by {})",
        d.class.verdict, d.class.rule
    );
    let now = ctx.clock.now();
    let learned = LearnedReply {
        reply: d.reply.to_string(),
        verdict: d.class.verdict,
        rule: d.class.rule,
        ip: d.ip,
        accepted_via: accepted_via.to_string(),
        site: d.site.clone(),
        mx_host: evidence.mx_host.clone(),
        first_seen: now,
        last_seen: now,
        count: 1,
    };
    let update = ctx
        .reputation
        .block_now(d.ip, &d.site, evidence, &ctx.config.blocks);
    with_reputation(ctx, move |r| {
        r.save_block(&update)?;
        r.record_learned(learned)
    })
    .await;
}

/// The evidence a block keeps of one refusal.
fn evidence(
    job: &DomainJob,
    rcpt: &Address,
    report: &AttemptReport,
    reply: &RemoteReply,
    class: &Classification,
    line: Option<String>,
) -> Evidence {
    Evidence {
        reply: reply.to_string(),
        rule: class.rule.clone(),
        at: job.clock.now(),
        mx_host: report.mx.clone(),
        mx_ip: report.mx_ip,
        queue_id: job.queue_id.to_string(),
        recipient: rcpt.to_string(),
        removal_url: crate::reputation::find_removal_url(&reply.text),
        log_line: line.unwrap_or_default(),
        late: false,
    }
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
    match refusal {
        Some(evidence) => {
            // In memory first, on this task: no new connection from the refused IP to the
            // site is opened while the evidence is written.
            let update = ctx
                .reputation
                .block_now(ip, site, evidence, &ctx.config.blocks);
            with_reputation(ctx, move |r| r.save_block(&update)).await;
        }
        None => {
            let site = site.clone();
            with_reputation(ctx, move |r| r.note_success(ip, &site)).await;
        }
    }
}

/// Runs reputation bookkeeping that writes to disk on a blocking thread; a failure to
/// persist is logged (the state holds in memory).
async fn with_reputation(
    ctx: &QueueContext,
    f: impl FnOnce(&Reputation) -> Result<(), StoreError> + Send + 'static,
) {
    let reputation = ctx.reputation.clone();
    match tokio::task::spawn_blocking(move || f(&reputation)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot persist block state"),
        Err(e) => tracing::error!(error = %e, "block bookkeeping panicked"),
    }
}

/// What [`log_attempt`] leaves behind: the attempt for the message's history and, when
/// asked for, the log line as text.
struct Logged {
    record: AttemptRecord,
    line: Option<String>,
}

/// The attempt's log line: one per recipient, the line operators grep and delisting
/// forms ask for. With `keep`, returns the same line as text, kept as a block's evidence.
/// `second_opinion`: another IP is asked before this refusal is acted on.
fn log_attempt(
    job: &DomainJob,
    rcpt: &Address,
    report: &AttemptReport,
    reply: &RemoteReply,
    class: &Classification,
    keep: bool,
    second_opinion: bool,
) -> Logged {
    let now = job.clock.now();
    // What becomes of the recipient: sent, bounced, or tried again (later, or at once
    // from another IP).
    let status = match class.verdict.retry() {
        _ if class.verdict == Verdict::Delivered => AttemptResult::Delivered,
        crate::classify::Retry::No if !second_opinion => AttemptResult::Bounced,
        _ => AttemptResult::Deferred,
    };
    let line = AttemptLine {
        queue_id: &job.queue_id,
        rcpt,
        egress: match (&report.via, &report.egress) {
            (Via::Smarthost(name), _) => format!("smarthost:{name}"),
            (Via::Direct, Some(e)) => e.to_string(),
            (Via::Direct, None) => "-".into(),
        },
        mx: reply.mx.as_deref().or(report.mx.as_deref()).unwrap_or("-"),
        mx_ip: report
            .mx_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "-".into()),
        reused: report.reused,
        delay_s: now.saturating_sub(job.received_at),
        at: now,
        reply,
        class,
        site: report.site.as_ref(),
        status,
    };
    line.log();
    Logged {
        record: AttemptRecord {
            at: now,
            rcpt: rcpt.to_string(),
            egress: line.egress.clone(),
            site: report.site.as_ref().map(ToString::to_string),
            reply: reply.to_string(),
            verdict: class.verdict,
            status: status.word().to_string(),
        },
        line: keep.then(|| {
            format!(
                "{} {line}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now))
            )
        }),
    }
}

/// One delivery attempt of one recipient: the fields of its log line, which is both
/// logged (structured, for grep and log shippers) and, for a refusal, kept as text in the
/// block's evidence. One struct, so the two can never say different things.
struct AttemptLine<'a> {
    queue_id: &'a QueueId,
    rcpt: &'a Address,
    egress: String,
    mx: &'a str,
    mx_ip: String,
    reused: bool,
    delay_s: u64,
    reply: &'a RemoteReply,
    class: &'a Classification,
    site: Option<&'a Site>,
    /// Sent, deferred or bounced.
    status: AttemptResult,
    /// When (Unix seconds, from the queue's clock).
    at: u64,
}

impl AttemptLine<'_> {
    fn log(&self) {
        let m = crate::metrics::metrics();
        m.delivery(
            &self.egress,
            self.site.map(Site::as_str),
            self.class.verdict.name(),
        );
        if self.class.verdict == Verdict::Delivered && self.egress.starts_with("smarthost:") {
            m.smarthost_deliveries.inc();
        }
        let refused = (self.reply.code >= 400).then(|| crate::metrics::Refusal {
            at: self.at,
            egress: self.egress.clone(),
            site: self.site.map_or_else(|| "-".into(), ToString::to_string),
            verdict: self.class.verdict.name().into(),
            reply: self.reply.to_string(),
        });
        m.remember(self.at, self.status, refused);
        tracing::info!(
            queue_id = %self.queue_id,
            rcpt = %self.rcpt,
            egress = %self.egress,
            mx = self.mx,
            mx_ip = %self.mx_ip,
            reused = self.reused,
            delay_s = self.delay_s,
            dsn = %self.reply.enhanced,
            verdict = %self.class.verdict,
            status = %self.status.word(),
            rule = self.class.rule.as_str(),
            reply = %self.reply,
            "delivery attempt"
        );
    }
}

impl std::fmt::Display for AttemptLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queue_id={} rcpt={} egress={} mx={} mx_ip={} reused={} delay_s={} dsn={} verdict={} status={} rule={} reply=\"{}\"",
            self.queue_id,
            self.rcpt,
            self.egress,
            self.mx,
            self.mx_ip,
            self.reused,
            self.delay_s,
            self.reply.enhanced,
            self.class.verdict,
            self.status.word(),
            self.class.rule,
            self.reply
        )
    }
}
