//! Mail to the bounce domains: late bounces and feedback reports, read and tied to what
//! drew them.
//!
//! A bounce arrives like any mail (inbound takes it from anyone, spools it before its
//! `250`), and the queue hands it here instead of to an MX ([`crate::queue::LocalDelivery`]).
//! Its envelope recipient is the return path of one attempt, `b-TOKEN@domain`: the token
//! names the queue id and the recipient's index, the message's record (in the queue, or
//! in the spool's sent table once it left) names the recipient, sender, site and egress
//! IP, and the token's tag must verify for that recipient. What it feeds:
//!
//! - a failure the classifier reads as `ip-reputation`: a block of (egress IP, site),
//!   marked `late`, the Diagnostic-Code as evidence (the delisting report as usual);
//! - a hard recipient failure: the suppression list at once; a soft one (mailbox full)
//!   after `[suppression] soft_limit`;
//! - the bounce counts per sender and site (metrics);
//! - unless `[bounces] forward = false`, one DSN to the original sender quoting the
//!   receiver's text.
//!
//! An ARF report feeds the complaint counts as the IMAP reader does. A bounce with no
//! token, or one that does not verify, is counted and dropped.
//!
//! - [`parse`]: DSNs and the other shapes, read with mail-parser.

#[cfg(test)]
mod corpus_tests;
pub mod parse;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use crate::classify::Verdict;
use crate::complaints::Complaints;
use crate::envelope::{Address, Sender};
use crate::queue::{LocalDelivery, LocalError, LocalFuture, LocalMail, QueueContext, QueueHandle};
use crate::reputation::Evidence;
use crate::returnpath::{ReturnPath, Unverified};
use crate::senders::SenderId;
use crate::site::Site;
use crate::spool::{QueueId, QueuedMessage, RecipientStatus, RemoteReply, SpoolError};
use crate::suppression::{Failure as Suppressed, Reason, SuppressionError, failure_kind};

pub use parse::{Bounce, Shape, parse};

/// What one bounce was tied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The message.
    pub queue_id: String,
    /// The recipient that bounced.
    pub recipient: String,
    /// The egress IP the attempt left from (none through a smarthost).
    pub egress: Option<IpAddr>,
    /// The site it went to, when the message's record is still kept.
    pub site: Option<String>,
    /// When it was accepted there (Unix seconds).
    pub sent_at: Option<u64>,
    /// The original envelope sender, when the record is still kept.
    pub sender: Option<Sender>,
}

/// How a token resolves against what the spool remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Verified: tied to this attempt.
    Resolved(Resolved),
    /// The tag does not verify for the recipient the record (or the bounce) names.
    Forged,
}

/// Checks `token` against the message's record (`record`), or when it is gone against
/// the addresses the bounce names.
pub fn resolve(
    rp: &ReturnPath,
    token: &Unverified,
    record: Option<&QueuedMessage>,
    named: &[String],
) -> Resolution {
    let t = &token.token;
    if let Some(msg) = record {
        let Some(r) = msg.recipients.get(usize::from(t.recipient)) else {
            return Resolution::Forged;
        };
        let address = r.address.to_string();
        if !rp.verify(token, &address) {
            return Resolution::Forged;
        }
        let route = r.route.as_ref();
        return Resolution::Resolved(Resolved {
            queue_id: t.queue_id.clone(),
            recipient: address,
            egress: t
                .egress
                .or_else(|| route.and_then(|l| l.egress.split_whitespace().next()?.parse().ok())),
            site: route.and_then(|l| l.site.clone()),
            sent_at: match &r.status {
                RecipientStatus::Delivered { at, .. } => Some(*at),
                _ => None,
            },
            sender: Some(msg.sender.clone()),
        });
    }
    named
        .iter()
        .find(|a| rp.verify(token, a))
        .map_or(Resolution::Forged, |a| {
            Resolution::Resolved(Resolved {
                queue_id: t.queue_id.clone(),
                recipient: a.to_ascii_lowercase(),
                egress: t.egress,
                site: None,
                sent_at: None,
                sender: None,
            })
        })
}

/// Why a bounce could not be read yet: each leaves it queued for the next attempt, so a
/// crash or a full disk never loses what a bounce would teach.
#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    /// The spool (the sent record, the forwarded DSN) failed.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// The suppression list could not record the address.
    #[error("suppression list: {0}")]
    Suppression(#[from] SuppressionError),
    /// A blocking task (spool or list I/O) panicked or was cancelled.
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A DSN to forward, but the queue is not running yet.
    #[error("the queue is not running yet")]
    QueueNotRunning,
}

impl From<BounceError> for LocalError {
    fn from(e: BounceError) -> Self {
        match e {
            BounceError::Spool(e) => LocalError::Spool(e),
            BounceError::QueueNotRunning => LocalError::NotReady("the queue is not running yet"),
            other => LocalError::Reader(Box::new(other)),
        }
    }
}

/// The bounce reader, wired into the queue by `serve` (a reload makes a new one).
pub struct BounceReader {
    rp: Arc<ReturnPath>,
    domains: Vec<String>,
    complaints: Complaints,
    queue: OnceLock<QueueHandle>,
}

impl BounceReader {
    /// A reader for `domains` (every bounce domain), checking tokens with `rp`.
    pub fn new(rp: Arc<ReturnPath>, domains: Vec<String>, complaints: Complaints) -> Self {
        Self {
            rp,
            domains,
            complaints,
            queue: OnceLock::new(),
        }
    }

    /// The queue forwarded DSNs go to (known once the queue runs).
    pub fn set_queue(&self, queue: QueueHandle) {
        let _ = self.queue.set(queue);
    }

    /// The domains whose mail it reads.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    async fn read(&self, ctx: &QueueContext, mail: LocalMail<'_>) -> Result<(), BounceError> {
        let bounce = parse(mail.body);
        for rcpt in &mail.recipients {
            self.read_one(ctx, rcpt, &bounce, mail.body, mail.queue_id)
                .await?;
        }
        Ok(())
    }

    async fn read_one(
        &self,
        ctx: &QueueContext,
        rcpt: &Address,
        bounce: &Bounce,
        raw: &[u8],
        bounce_id: &QueueId,
    ) -> Result<(), BounceError> {
        let m = crate::metrics::metrics();
        if bounce.shape == Shape::Arf {
            m.bounce_mail("complaint");
            crate::complaints::count_reports(ctx, &self.complaints, vec![raw.to_vec()]);
            return Ok(());
        }
        let Some(token) = ReturnPath::read(rcpt.local_part()) else {
            m.bounce_mail("no-token");
            tracing::warn!(bounce_id = %bounce_id, rcpt = %rcpt, "bounce without a return-path token: dropped");
            return Ok(());
        };
        let spool = ctx.spool.clone();
        let id = QueueId::from(token.token.queue_id.as_str());
        let record = tokio::task::spawn_blocking(move || spool.sent(&id)).await??;
        let resolved = match resolve(&self.rp, &token, record.as_ref(), &bounce.named()) {
            Resolution::Resolved(r) => r,
            Resolution::Forged => {
                m.bounce_mail("forged");
                tracing::warn!(bounce_id = %bounce_id, rcpt = %rcpt, queue_id = %token.token.queue_id, "bounce with a token that does not verify: dropped");
                return Ok(());
            }
        };
        let failure = bounce
            .failures
            .iter()
            .find(|f| {
                [&f.recipient, &f.original]
                    .into_iter()
                    .flatten()
                    .any(|a| a.eq_ignore_ascii_case(&resolved.recipient))
            })
            .or(bounce.failures.first());
        let Some(failure) = failure.filter(|f| f.failed()) else {
            m.bounce_mail(if bounce.failures.is_empty() {
                "unreadable"
            } else {
                "delayed"
            });
            tracing::info!(bounce_id = %bounce_id, queue_id = %resolved.queue_id, rcpt = %resolved.recipient, shape = ?bounce.shape, "mail to the return path that reports no failure: nothing learned");
            return Ok(());
        };
        m.bounce_mail("resolved");
        let class = ctx
            .classifier
            .classify(failure.code, &failure.enhanced, &failure.diagnostic);
        let sender_domain = match &resolved.sender {
            Some(Sender::Address(a)) => Some(a.domain().to_ascii_lowercase()),
            _ => None,
        };
        tracing::warn!(
            bounce_id = %bounce_id,
            queue_id = %resolved.queue_id,
            rcpt = %resolved.recipient,
            egress = %resolved.egress.map_or_else(|| "-".into(), |ip| ip.to_string()),
            site = %resolved.site.as_deref().unwrap_or("-"),
            sent_at = %resolved.sent_at.map_or_else(|| "-".into(), crate::clock::rfc3339),
            reporter = %bounce.reporter.as_deref().unwrap_or("-"),
            verdict = %class.verdict,
            rule = class.rule.as_str(),
            diagnostic = %failure.diagnostic,
            "late bounce"
        );
        let sender_label = sender_domain.as_ref().map(|d| format!("domain:{d}"));
        if class.verdict == Verdict::IpReputation
            && let (Some(ip), Some(site)) = (resolved.egress, &resolved.site)
        {
            m.bounce(sender_label.as_deref(), Some(site), true, "block");
            self.block(
                ctx,
                ip,
                &Site::from(site.as_str()),
                &resolved,
                failure,
                bounce,
                &class.rule,
            )
            .await;
        }
        if let Some(kind) = failure_kind(
            class.verdict,
            failure.code,
            &failure.enhanced,
            &failure.diagnostic,
        ) {
            m.bounce(
                sender_label.as_deref(),
                resolved.site.as_deref(),
                true,
                kind.kind(),
            );
            if kind == Reason::Hard
                && let Some(id) = record
                    .as_ref()
                    .and_then(|m| SenderId::of(m.user.as_deref(), &m.sender))
            {
                let evidence = format!(
                    "late bounce for {} from {}: {}",
                    resolved.recipient,
                    resolved.site.as_deref().unwrap_or("-"),
                    failure.diagnostic
                );
                ctx.senders
                    .late_bounce(&id, evidence, &ctx.config.suspension);
            }
            if ctx.config.suppression.active(&ctx.config.bounces) {
                self.suppress(ctx, kind, sender_domain.clone(), &resolved, failure)
                    .await?;
            }
        }
        if ctx.config.bounces.forward
            && let Some(Sender::Address(to)) = &resolved.sender
        {
            self.forward(ctx, to, record.as_ref(), &resolved, failure, bounce)
                .await?;
        }
        Ok(())
    }

    /// The block of (IP, site), as an in-session refusal would make it, marked late.
    #[allow(clippy::too_many_arguments)]
    async fn block(
        &self,
        ctx: &QueueContext,
        ip: IpAddr,
        site: &Site,
        r: &Resolved,
        f: &parse::Failure,
        bounce: &Bounce,
        rule: &str,
    ) {
        let reply = if f.diagnostic.is_empty() {
            format!("{} {}", f.code, f.enhanced)
        } else {
            f.diagnostic.clone()
        };
        let evidence = Evidence {
            removal_url: crate::reputation::find_removal_url(&reply),
            reply,
            rule: format!("late: {rule}"),
            at: ctx.clock.now(),
            mx_host: f.remote_mta.clone().or_else(|| bounce.reporter.clone()),
            mx_ip: None,
            queue_id: r.queue_id.clone(),
            recipient: r.recipient.clone(),
            log_line: format!(
                "{} late bounce from {} for queue_id={} rcpt={} egress={} site={} sent_at={}: action={} status={} diagnostic=\"{}\"",
                crate::clock::rfc3339(ctx.clock.now()),
                bounce.reporter.as_deref().unwrap_or("-"),
                r.queue_id,
                r.recipient,
                ip,
                site,
                r.sent_at.map_or_else(|| "-".into(), crate::clock::rfc3339),
                f.action,
                f.enhanced,
                f.diagnostic
            ),
            late: true,
        };
        let update = ctx
            .reputation
            .block_now(ip, site, evidence, &ctx.config.blocks);
        let reputation = ctx.reputation.clone();
        match tokio::task::spawn_blocking(move || reputation.save_block(&update)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot persist the late block"),
            Err(e) => tracing::error!(error = %e, "late block bookkeeping panicked"),
        }
    }

    async fn suppress(
        &self,
        ctx: &QueueContext,
        kind: Reason,
        sender_domain: Option<String>,
        r: &Resolved,
        f: &parse::Failure,
    ) -> Result<(), BounceError> {
        let list = ctx.suppressions.clone();
        let config = ctx.config.suppression.clone();
        let (address, site, reply, queue_id) = (
            r.recipient.clone(),
            r.site.clone(),
            f.diagnostic.clone(),
            r.queue_id.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let failure = Suppressed {
                sender_domain: sender_domain.as_deref(),
                address: &address,
                site: site.as_deref(),
                reply: &reply,
                late: true,
                queue_id: Some(&queue_id),
            };
            match kind {
                Reason::Soft => list.soft(&config, &failure).map(|_| ()),
                _ => list.hard(&config, &failure).map(|_| ()),
            }
        })
        .await??;
        Ok(())
    }

    /// One DSN to the original sender, quoting the receiver's text (the same builder as
    /// the relay's own DSNs), spooled before the bounce counts as read.
    async fn forward(
        &self,
        ctx: &QueueContext,
        to: &Address,
        record: Option<&QueuedMessage>,
        r: &Resolved,
        f: &parse::Failure,
        bounce: &Bounce,
    ) -> Result<(), BounceError> {
        let Some(record) = record else {
            return Ok(());
        };
        let Some(queue) = self.queue.get() else {
            return Err(BounceError::QueueNotRunning);
        };
        let mut original = record.clone();
        let index = original
            .recipients
            .iter()
            .position(|x| x.address.to_string().eq_ignore_ascii_case(&r.recipient));
        let Some(index) = index else {
            return Ok(());
        };
        let rcpt = &mut original.recipients[index];
        rcpt.status = RecipientStatus::Failed {
            at: ctx.clock.now(),
            reply: RemoteReply {
                code: f.code,
                enhanced: f.enhanced.clone(),
                text: f
                    .diagnostic
                    .strip_prefix(&format!("{} ", f.code))
                    .map(|t| t.strip_prefix(&format!("{} ", f.enhanced)).unwrap_or(t))
                    .unwrap_or(&f.diagnostic)
                    .to_string(),
                mx: f.remote_mta.clone().or_else(|| bounce.reporter.clone()),
            },
            expired: false,
            earlier: None,
            explanation: Some(format!(
                "{} accepted this message{} and bounced it later by mail",
                f.remote_mta
                    .as_deref()
                    .or(bounce.reporter.as_deref())
                    .unwrap_or("the receiving server"),
                r.sent_at
                    .map(|t| format!(" at {}", crate::clock::rfc3339(t)))
                    .unwrap_or_default()
            )),
        };
        let failed = [&original.recipients[index]];
        let dsn = crate::queue::dsn::build(
            ctx.clock.now_ms(),
            &ctx.config.server.hostname,
            &original,
            to,
            &failed,
            bounce.original_headers.as_deref().unwrap_or(b""),
        );
        ctx.spool.store_message(&dsn.message, dsn.body).await?;
        tracing::info!(queue_id = %r.queue_id, dsn_id = %dsn.message.id, to = %to, "late bounce forwarded to the sender");
        queue.enqueued(&dsn.message);
        Ok(())
    }
}

impl LocalDelivery for BounceReader {
    fn is_local(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn deliver<'a>(&'a self, ctx: &'a QueueContext, mail: LocalMail<'a>) -> LocalFuture<'a> {
        Box::pin(async move { self.read(ctx, mail).await.map_err(LocalError::from) })
    }
}

/// Forgets sent records older than `keep_sent()` (`[bounces] keep_sent` in force: a
/// reload may change it), hourly.
pub fn spawn_pruning(
    spool: crate::spool::Spool,
    clock: crate::clock::Clock,
    keep_sent: impl Fn() -> std::time::Duration + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            let before = clock.now().saturating_sub(keep_sent().as_secs());
            let s = spool.clone();
            match tokio::task::spawn_blocking(move || s.prune_sent(before)).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(records = n, "sent records past keep_sent forgotten")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the sent records"),
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// What the queue logs and keeps as the attempt's reply when a bounce cannot be read
    /// yet: the reader's cause, classified, never a bare string.
    #[test]
    fn bounce_errors_reach_the_queue_as_its_local_error() {
        let e = LocalError::from(BounceError::QueueNotRunning);
        assert!(matches!(e, LocalError::NotReady(_)), "{e:?}");
        assert_eq!(e.to_string(), "not ready: the queue is not running yet");
        let e = LocalError::from(BounceError::Suppression(SuppressionError::Io {
            path: "suppressions.jsonl".into(),
            source: std::io::Error::other("disk full"),
        }));
        assert!(matches!(e, LocalError::Reader(_)), "{e:?}");
        assert!(e.to_string().starts_with("suppression list: "), "{e}");
        assert!(e.to_string().contains("disk full"), "{e}");
    }
}
