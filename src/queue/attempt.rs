//! One delivery attempt of one message: every pending recipient, grouped by domain, one
//! transaction per domain, in parallel within the connection limits. The attempt then
//! records each recipient's verdict, bounces what failed, and says when to retry.
//!
//! When the spool cannot record the outcome (a full disk), the outcome is kept in memory
//! ([`QueueContext::unrecorded`]) and the next attempt starts from it instead of the
//! stored record: a recipient delivered is never delivered again while the relay runs,
//! and the record is written as soon as the spool takes writes again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::context::QueueContext;
use super::domain::{DomainJob, DomainOutcome, deliver_domain};
use super::error::QueueError;
use super::handle::QueueHandle;
use super::{dsn, retry};
use crate::classify::{Retry, Verdict};
use crate::envelope::Sender;
use crate::senders::SenderId;
use crate::site::Site;
use crate::spool::{
    Body, Departure, QueueId, QueuedMessage, RecipientStatus, RemoteReply, SpoolError,
};

/// When the spool itself fails mid-attempt, try the message again after this long
/// rather than lose track of it.
const SPOOL_ERROR_RETRY: Duration = Duration::from_secs(60);

/// A finished message whose removal could not be recorded: try the write again this soon
/// (it costs no delivery).
const RECORD_RETRY: Duration = Duration::from_secs(2);

/// How an attempt ended, for the scheduler.
pub(super) struct Outcome {
    /// The next due time (Unix ms), or `None` if the message left the spool.
    pub next_ms: Option<u64>,
    /// Some domain could not be tried because every egress IP is listed.
    pub waiting_for_egress: bool,
    /// Nothing was tried because the message's only site is down: park it with the
    /// site until a probe gets through (`next_ms` is the next probe).
    pub parked: Option<Site>,
    /// Sites that were down and answered in this attempt: their parked mail may go.
    pub recovered: Vec<Site>,
    /// The message's one site reached no server (not down yet): if it comes back, the
    /// message goes then, not at its backoff time.
    pub waits_for: Option<Site>,
}

impl Outcome {
    fn at(next_ms: Option<u64>) -> Self {
        Self {
            next_ms,
            waiting_for_egress: false,
            parked: None,
            recovered: Vec::new(),
            waits_for: None,
        }
    }
}

pub(super) async fn run(ctx: Arc<QueueContext>, queue: &QueueHandle, id: QueueId) -> Outcome {
    match attempt(&ctx, queue, &id).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "attempt failed in the spool; will retry");
            Outcome::at(Some(
                ctx.clock.now_ms() + SPOOL_ERROR_RETRY.as_millis() as u64,
            ))
        }
    }
}

/// One attempt, in the order it happens: load the message (or find it parked with a
/// down site), hold it if its sender is suspended, deliver each domain's recipients in
/// parallel, read what the sites did, apply each recipient's verdict, then bounce,
/// remove or reschedule.
async fn attempt(
    ctx: &Arc<QueueContext>,
    queue: &QueueHandle,
    id: &QueueId,
) -> Result<Outcome, QueueError> {
    let unrecorded = ctx.take_unrecorded(id);
    let from_memory = unrecorded.is_some();
    let (mut msg, body) = match load(ctx, id, unrecorded).await? {
        Loaded::Gone => return Ok(Outcome::at(None)),
        Loaded::Parked(site, next) => {
            return Ok(Outcome {
                parked: Some(site),
                ..Outcome::at(Some(next))
            });
        }
        Loaded::Message(msg, body) => (*msg, body),
    };
    let sender = SenderId::of(msg.user.as_deref(), &msg.sender);
    if hold_if_suspended(ctx, &mut msg, sender.as_ref()).await? {
        return Ok(Outcome::at(None));
    }
    let body = readable(&mut msg, body);
    let outcomes = match &body {
        Some(body) => deliver_all(ctx, &msg, body).await,
        None => Vec::new(),
    };
    let sites = Sites::of(&outcomes);
    if !sites.tried
        && !from_memory
        && let Some((site, next)) = sites.parked()
    {
        // Every domain's site is down and nothing was sent: nothing changed worth a
        // disk write; the message waits for the site's probe.
        return Ok(Outcome {
            parked: Some(site),
            recovered: sites.recovered,
            ..Outcome::at(Some(next))
        });
    }
    let applied = apply(ctx, queue, &mut msg, sender.as_ref(), outcomes);
    msg.attempts += 1;
    expire(
        &mut msg,
        ctx.config.queue.max_lifetime.get(),
        ctx.clock.now(),
    );
    // Come back for the first down site's probe at the latest.
    let retry_at = match sites.first_probe_ms() {
        Some(next) => Some(applied.retry_at.map_or(next / 1000, |r| r.min(next / 1000))),
        None => applied.retry_at,
    };
    let body = body.unwrap_or_default();
    match record(ctx, queue, &mut msg, &body, applied.throttled, retry_at).await {
        Ok(next_ms) => Ok(Outcome {
            next_ms,
            waiting_for_egress: applied.waiting_for_egress && next_ms.is_some(),
            parked: sites.parked().filter(|_| next_ms.is_some()).map(|(s, _)| s),
            waits_for: sites.waits_for().filter(|_| next_ms.is_some()),
            recovered: sites.recovered,
        }),
        Err(e) => Ok(Outcome {
            recovered: sites.recovered,
            ..Outcome::at(Some(keep_unrecorded(ctx, msg, &e)))
        }),
    }
}

/// What [`load`] found.
enum Loaded {
    /// The message left the spool (delivered, deleted) since it was scheduled.
    Gone,
    /// Every pending recipient is at one site that is down: parked with it until its
    /// next probe (Unix ms), without reading the body.
    Parked(Site, u64),
    /// The message and its body (or why the body cannot be read).
    Message(Box<QueuedMessage>, Result<Body, SpoolError>),
}

/// The message as the last attempt left it: from memory if its record could not be
/// written, from the spool's just-received cache, or from disk.
async fn load(
    ctx: &Arc<QueueContext>,
    id: &QueueId,
    unrecorded: Option<QueuedMessage>,
) -> Result<Loaded, QueueError> {
    match (unrecorded, ctx.spool.take_fresh(id)) {
        // Nothing left to send: the body is not needed.
        (Some(msg), _) if msg.is_done() => Ok(Loaded::Message(Box::new(msg), Ok(Body::default()))),
        (Some(msg), _) => {
            let spool = ctx.spool.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let body = spool.load_body(&msg).map(Arc::new);
                Loaded::Message(Box::new(msg), body)
            })
            .await?;
            Ok(loaded)
        }
        (None, Some((msg, body))) => Ok(Loaded::Message(Box::new(msg), Ok(body))),
        (None, None) => {
            let spool = ctx.spool.clone();
            let load_id = id.clone();
            let health = ctx.outbound.health();
            let now = ctx.clock.now_ms();
            let loaded = tokio::task::spawn_blocking(move || -> Result<_, SpoolError> {
                let Some(msg) = spool.load(&load_id)? else {
                    return Ok(Loaded::Gone);
                };
                if let Some(site) = one_site(&msg)
                    && !msg.held
                    && let Some(next) = health.down_until(&site, now)
                {
                    return Ok(Loaded::Parked(site, next));
                }
                let body = spool.load_body(&msg).map(Arc::new);
                Ok(Loaded::Message(Box::new(msg), body))
            })
            .await??;
            Ok(loaded)
        }
    }
}

/// The one site every pending recipient was last routed to, if there is one.
fn one_site(msg: &QueuedMessage) -> Option<Site> {
    let mut sites = msg
        .pending()
        .map(|r| r.route.as_ref().and_then(|l| l.site.as_deref()));
    let first = sites.next()??;
    sites.all(|s| s == Some(first)).then(|| Site::from(first))
}

/// Holds the message if its sender is suspended: not delivered, not lost, kept until
/// the operator releases the sender. Returns whether it was held.
async fn hold_if_suspended(
    ctx: &Arc<QueueContext>,
    msg: &mut QueuedMessage,
    sender: Option<&SenderId>,
) -> Result<bool, QueueError> {
    let Some(id) = sender else {
        return Ok(false);
    };
    if msg.is_done() || ctx.senders.suspended(id).is_none() {
        return Ok(false);
    }
    msg.held = true;
    msg.held_reason = Some(format!("sender {id} suspended"));
    ctx.spool.update(msg).await?;
    tracing::warn!(queue_id = %msg.id, sender = %id, "held: its sender is suspended");
    Ok(true)
}

/// The body, or `None` when it cannot be read (a damaged disk, a file deleted by hand).
/// Such a message must not stay in the queue for ever: nothing is sent, its recipients
/// wait with this as their last error, and it expires into a DSN like any other.
fn readable(msg: &mut QueuedMessage, body: Result<Body, SpoolError>) -> Option<Body> {
    let e = match body {
        Ok(body) => return Some(body),
        Err(e) => e,
    };
    tracing::error!(queue_id = %msg.id, error = %e, "cannot read the message body");
    let reply = RemoteReply {
        code: 0,
        enhanced: "4.3.0".into(),
        text: format!("the spooled message body cannot be read: {e}"),
        mx: None,
    };
    for r in &mut msg.recipients {
        if let RecipientStatus::Pending { last } = &mut r.status {
            *last = Some(reply.clone());
        }
    }
    None
}

/// Delivers every pending recipient, one job per domain, in parallel within the
/// per-domain and global connection limits.
async fn deliver_all(
    ctx: &Arc<QueueContext>,
    msg: &QueuedMessage,
    body: &Body,
) -> Vec<DomainOutcome> {
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in msg.recipients.iter().enumerate() {
        if !r.status.is_final() {
            by_domain
                .entry(r.address.domain().to_string())
                .or_default()
                .push(i);
        }
    }
    let mut tasks = JoinSet::new();
    for (domain, idxs) in by_domain {
        let ctx = ctx.clone();
        let job = DomainJob {
            queue_id: msg.id.clone(),
            received_at: msg.received_at,
            sender: msg.sender.clone(),
            flags: msg.flags,
            body: body.clone(),
            recipients: idxs
                .iter()
                .map(|&i| (i, msg.recipients[i].address.clone()))
                .collect(),
            domain,
            clock: ctx.clock.clone(),
            attempt: msg.attempts,
        };
        tasks.spawn(async move {
            // The domain's slot first: waiting for a busy (slow) domain must not hold one
            // of the global connections other destinations could use.
            let _domain = ctx.domain_limit(&job.domain).acquire_owned().await;
            let _global = ctx.connections.clone().acquire_owned().await;
            // Boxed: the delivery's future is some 10 KiB (DNS, TLS policy, SPF and SMTP
            // states), which spawning by value would copy into the task more than once.
            Box::pin(deliver_domain(&ctx, job)).await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            // Its recipients stay pending with their last error and are tried again.
            Err(e) => {
                tracing::error!(queue_id = %msg.id, error = %e, "a domain's delivery task failed")
            }
        }
    }
    outcomes
}

/// What the sites did in this attempt, across its domains.
struct Sites {
    /// Sites that were down, with their next probe (Unix ms).
    down: Vec<(Site, u64)>,
    /// Whether every domain's site was down.
    all_down: bool,
    /// Sites that reached no server (not down yet).
    unreachable: Vec<Site>,
    /// Whether no domain reached a server.
    all_unreachable: bool,
    /// Sites that were down and answered: their parked mail may go.
    recovered: Vec<Site>,
    /// Whether anything was tried at all.
    tried: bool,
}

impl Sites {
    fn of(outcomes: &[DomainOutcome]) -> Self {
        let mut sites = Sites {
            down: Vec::new(),
            all_down: true,
            unreachable: Vec::new(),
            all_unreachable: true,
            recovered: Vec::new(),
            tried: false,
        };
        for outcome in outcomes {
            sites
                .recovered
                .extend(outcome.site_recovered.iter().cloned());
            match &outcome.site_down {
                Some(d) => sites.down.push(d.clone()),
                None => sites.all_down = false,
            }
            match &outcome.unreachable {
                Some(site) => sites.unreachable.push(site.clone()),
                None => sites.all_unreachable = false,
            }
            sites.tried |= !outcome.history.is_empty();
        }
        sites
    }

    /// The one site this message waits for, if it is down: parked with it.
    fn parked(&self) -> Option<(Site, u64)> {
        match self.down.as_slice() {
            [(site, next)] if self.all_down => Some((site.clone(), *next)),
            _ => None,
        }
    }

    /// The message's one site reached no server: it goes when the site comes back.
    fn waits_for(&self) -> Option<Site> {
        match self.unreachable.as_slice() {
            [site] if self.all_unreachable => Some(site.clone()),
            _ => None,
        }
    }

    /// The first down site's next probe (Unix ms).
    fn first_probe_ms(&self) -> Option<u64> {
        self.down.iter().map(|(_, n)| *n).min()
    }
}

/// What applying the domains' outcomes decided about the message's next attempt.
struct Applied {
    /// Some domain could not be tried because every egress IP is listed.
    waiting_for_egress: bool,
    /// The earliest time (Unix s) a block or limit that held mail back ends.
    retry_at: Option<u64>,
    /// A destination asked us to slow down.
    throttled: bool,
}

/// Applies each domain's outcome: throttles, the sender's abuse guard, the attempt
/// history, and each recipient's new status from its verdict.
fn apply(
    ctx: &Arc<QueueContext>,
    queue: &QueueHandle,
    msg: &mut QueuedMessage,
    sender: Option<&SenderId>,
    outcomes: Vec<DomainOutcome>,
) -> Applied {
    let mut applied = Applied {
        waiting_for_egress: false,
        retry_at: None,
        throttled: false,
    };
    let now = ctx.clock.now();
    for outcome in outcomes {
        applied.waiting_for_egress |= outcome.no_egress;
        if outcome.throttled {
            applied.throttled = true;
            let period = retry::retry_delay(&ctx.config.queue, msg.attempts + 1) * 2;
            ctx.throttle(&outcome.domain, period);
            if let Some(site) = &outcome.throttled_site {
                ctx.outbound.tighten(site, period);
            }
        }
        if let Some(at) = outcome.retry_at {
            applied.retry_at = Some(applied.retry_at.map_or(at, |r: u64| r.min(at)));
        }
        if let Some(id) = sender {
            let verdicts: Vec<_> = outcome
                .history
                .iter()
                .map(|a| (a.verdict, a.reply.clone()))
                .collect();
            if ctx
                .senders
                .observe(id, &verdicts, &ctx.config.suspension)
                .is_some()
            {
                hold_queued(ctx.clone(), queue.clone(), id.clone());
            }
        }
        msg.remember(outcome.history);
        for (i, r) in outcome.results {
            msg.recipients[i].route = Some(r.route);
            let (reply, verdict) = (r.reply, r.verdict);
            msg.recipients[i].status = match (verdict, verdict.retry()) {
                (Verdict::Delivered, _) => RecipientStatus::Delivered { at: now, reply },
                (_, Retry::No) => {
                    tracing::warn!(
                        queue_id = %msg.id,
                        rcpt = %msg.recipients[i].address,
                        reply = %reply,
                        "bounced: permanent failure; a DSN goes to the sender"
                    );
                    RecipientStatus::Failed {
                        at: now,
                        reply,
                        expired: false,
                        earlier: r.earlier,
                        explanation: r.explanation,
                    }
                }
                (_, Retry::Later | Retry::LaterSlower | Retry::OtherIp) => {
                    RecipientStatus::Pending { last: Some(reply) }
                }
            };
        }
    }
    applied
}

/// The outcome could not be recorded (a full disk): kept in memory and recorded when
/// the spool takes writes again. Returns when to try.
fn keep_unrecorded(ctx: &Arc<QueueContext>, msg: QueuedMessage, e: &QueueError) -> u64 {
    let soon = ctx.clock.now_ms() + RECORD_RETRY.as_millis() as u64;
    let next = if msg.is_done() {
        soon
    } else {
        msg.next_attempt_ms.max(soon)
    };
    tracing::error!(
        queue_id = %msg.id,
        error = %e,
        done = msg.is_done(),
        "cannot record the attempt's outcome; kept in memory, recorded when the spool takes writes again"
    );
    ctx.keep_unrecorded(msg);
    next
}

/// Holds every queued message of a newly suspended sender at once (each would be held
/// when it comes due anyway; this makes `sidestep queue` show it now). A message with
/// an attempt under way is held at its next attempt.
fn hold_queued(ctx: Arc<QueueContext>, queue: QueueHandle, id: SenderId) {
    tokio::spawn(async move {
        // The sender's message ids only: a deep queue is read one record at a time.
        let spool = ctx.spool.clone();
        let wanted = id.clone();
        let Ok(Ok(ids)) = tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            spool
                .visit(|m| {
                    if !m.held
                        && SenderId::of(m.user.as_deref(), &m.sender).as_ref() == Some(&wanted)
                    {
                        ids.push(m.id);
                    }
                    true
                })
                .map(|()| ids)
        })
        .await
        else {
            return;
        };
        let mut held = 0;
        for qid in ids {
            let reason = format!("sender {id} suspended");
            if super::operator::hold_for(&ctx.spool, &queue, &qid, Some(reason))
                .await
                .is_ok()
            {
                held += 1;
            }
        }
        tracing::warn!(sender = %id, held, "queued mail of a suspended sender held");
    });
}

/// Bounces what failed, then removes the message or records its new state and next due
/// time. Returns the next due time (Unix ms), `None` once the message is gone.
async fn record(
    ctx: &Arc<QueueContext>,
    queue: &QueueHandle,
    msg: &mut QueuedMessage,
    body: &[u8],
    throttled: bool,
    retry_at: Option<u64>,
) -> Result<Option<u64>, QueueError> {
    bounce(ctx, queue, msg, body).await?;

    let spool = ctx.spool.clone();
    if msg.is_done() {
        spool
            .remove(msg, Departure::of(msg), ctx.clock.now())
            .await?;
        tracing::info!(queue_id = %msg.id, "removed: every recipient is final");
        return Ok(None);
    }
    let mut delay = retry::retry_delay(&ctx.config.queue, msg.attempts);
    if throttled {
        // The destination asked us to slow down: back off twice as long.
        delay *= 2;
    }
    // Somewhat later, at random: mail deferred together (a destination's outage) does
    // not come due again in one instant.
    let jitter = ctx.config.queue.retry_jitter.clamp(0.0, 1.0);
    if jitter > 0.0 {
        delay = delay.mul_f64(1.0 + rand::random::<f64>() * jitter);
    }
    let mut next = ctx.clock.now_ms() + delay.as_millis() as u64;
    if let Some(at) = retry_at {
        // Waiting for a block to expire: come back when the first one does.
        next = next.min(at * 1000).max(ctx.clock.now_ms());
    }
    msg.next_attempt_ms = next;
    let due =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(next));
    for r in msg.pending() {
        if let RecipientStatus::Pending { last } = &r.status {
            tracing::info!(
                queue_id = %msg.id,
                rcpt = %r.address,
                attempts = msg.attempts,
                next_attempt = %due,
                in_s = next.saturating_sub(ctx.clock.now_ms()) / 1000,
                last = last.as_ref().map(|l| l.to_string()).unwrap_or_default(),
                "deferred: next attempt at {due}"
            );
        }
    }
    spool.update(msg).await?;
    Ok(Some(next))
}

/// Recipients still pending after the queue lifetime become failures that quote the
/// last temporary error.
fn expire(msg: &mut QueuedMessage, lifetime: Duration, now: u64) {
    if now.saturating_sub(msg.received_at) < lifetime.as_secs() {
        return;
    }
    for r in &mut msg.recipients {
        if let RecipientStatus::Pending { last } = &r.status {
            let reply = last.clone().unwrap_or(RemoteReply {
                code: 0,
                enhanced: "4.4.7".into(),
                text: "delivery time expired".into(),
                mx: None,
            });
            tracing::warn!(queue_id = %msg.id, rcpt = %r.address, last = %reply, "expired");
            r.status = RecipientStatus::Failed {
                at: now,
                reply,
                expired: true,
                earlier: None,
                explanation: None,
            };
        }
    }
}

/// Sends one DSN for the failures not yet reported. The DSN is spooled (durably) before
/// the failures are marked notified, so a crash in between repeats a DSN rather than
/// losing one. A null sender never gets a DSN (RFC 5321 §4.5.5): no bounce loops.
async fn bounce(
    ctx: &Arc<QueueContext>,
    queue: &QueueHandle,
    msg: &mut QueuedMessage,
    body: &[u8],
) -> Result<(), QueueError> {
    let unreported: Vec<usize> = msg
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.status, RecipientStatus::Failed { .. }) && !r.notified)
        .map(|(i, _)| i)
        .collect();
    if unreported.is_empty() {
        return Ok(());
    }
    match &msg.sender {
        Sender::Null => {
            tracing::info!(queue_id = %msg.id, failed = unreported.len(), "no DSN: null sender");
        }
        Sender::Address(to) => {
            let failed: Vec<_> = unreported.iter().map(|&i| &msg.recipients[i]).collect();
            let dsn = dsn::build(
                ctx.clock.now_ms(),
                &ctx.config.server.hostname,
                msg,
                to,
                &failed,
                body,
            );
            ctx.spool.store_message(&dsn.message, dsn.body).await?;
            tracing::info!(queue_id = %msg.id, dsn_id = %dsn.message.id, to = %to, "DSN queued");
            queue.enqueued(&dsn.message);
        }
    }
    for i in unreported {
        msg.recipients[i].notified = true;
    }
    Ok(())
}
