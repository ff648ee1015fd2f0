//! The scheduler: the only owner of due times. Sessions and attempts tell it about
//! messages through [`QueueEvent`]s; it starts an attempt when a message is due and
//! fewer than `delivery.max_connections` attempts are running, so a burst of 20,000
//! messages never means 20,000 bodies in memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::attempt;
use super::context::QueueContext;
use super::handle::{Control, ControlOutcome, QueueEvent, QueueHandle};
use super::operator::AfterAttempt;
use crate::site::Site;
use crate::spool::{QueueId, SpoolError};

/// Recovers the spool and starts the scheduler task.
///
/// # Errors
/// The spool index cannot be read.
pub fn start(ctx: Arc<QueueContext>) -> Result<QueueHandle, SpoolError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = QueueHandle { tx };
    // Held messages stay in the spool, unscheduled, until released.
    let recovered = ctx.spool.due_times()?;
    if !recovered.is_empty() {
        tracing::info!(messages = recovered.len(), "recovered spooled messages");
    }
    let mut due = BTreeSet::new();
    let mut domains = Domains::default();
    for (at, id, domain) in recovered {
        domains.note(&id, domain);
        due.insert((at, id));
    }
    let scheduler = Scheduler {
        improved: ctx.reputation.improvements(),
        ctx,
        handle: handle.clone(),
        rx,
        due,
        in_flight: HashSet::new(),
        egress_waiters: HashMap::new(),
        parked: HashMap::new(),
        parked_site: HashMap::new(),
        site_waiters: HashMap::new(),
        domains,
        drained: None,
        after_attempt: HashMap::new(),
    };
    tokio::spawn(scheduler.run());
    Ok(handle)
}

struct Scheduler {
    ctx: Arc<QueueContext>,
    handle: QueueHandle,
    rx: mpsc::UnboundedReceiver<QueueEvent>,
    due: BTreeSet<(u64, QueueId)>,
    in_flight: HashSet<QueueId>,
    /// Messages deferred because every egress IP was listed, with their due time.
    egress_waiters: HashMap<QueueId, u64>,
    /// Mail of sites that are down, not due at all: one message per site goes as the
    /// probe at `probe_at`; when a probe gets through, all of them go.
    parked: HashMap<Site, Parked>,
    /// The site each parked message waits for.
    parked_site: HashMap<QueueId, Site>,
    /// Messages due at their backoff time whose site reached no server (before it was
    /// marked down), with that due time: they go with the parked mail when it answers.
    site_waiters: HashMap<QueueId, (Site, u64)>,
    /// Attempts in flight per recipient domain, and the messages waiting for one of the
    /// domain's slots: a slow or dead domain's backlog waits here, out of the way of
    /// every other destination's mail.
    domains: Domains,
    /// Bumped by the reputation state when an IP may have become usable again.
    improved: tokio::sync::watch::Receiver<u64>,
    /// Stopping: no new attempts; these are told when the last one has finished.
    drained: Option<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// Holds and deletes the operator asked for while the message's attempt was under
    /// way: carried out when it ends, instead of scheduling the message again.
    after_attempt: HashMap<QueueId, AfterAttempt>,
}

/// Per-domain bookkeeping of the scheduler.
#[derive(Default)]
struct Domains {
    /// Each queued message's (first) recipient domain, shared strings.
    of: HashMap<QueueId, Arc<str>>,
    /// Interned domain names.
    names: HashSet<Arc<str>>,
    /// Attempts under way per domain.
    busy: HashMap<Arc<str>, usize>,
    /// Messages due but waiting for a slot of their domain, oldest first.
    waiting: HashMap<Arc<str>, std::collections::VecDeque<QueueId>>,
}

impl Domains {
    fn note(&mut self, id: &QueueId, domain: Option<String>) {
        let Some(d) = domain else {
            return;
        };
        let name = match self.names.get(d.as_str()) {
            Some(n) => n.clone(),
            None => {
                if self.names.len() >= 10_000 {
                    // Names no queued message uses any more.
                    self.names.retain(|n| Arc::strong_count(n) > 1);
                }
                let n: Arc<str> = d.into();
                self.names.insert(n.clone());
                n
            }
        };
        self.of.insert(id.clone(), name);
    }

    /// Whether `id` may start now with `cap` attempts per domain; if not, it waits.
    fn admit(&mut self, id: &QueueId, cap: usize) -> bool {
        let Some(d) = self.of.get(id).cloned() else {
            return true;
        };
        let busy = self.busy.entry(d.clone()).or_insert(0);
        if *busy >= cap.max(1) {
            self.waiting.entry(d).or_default().push_back(id.clone());
            return false;
        }
        *busy += 1;
        true
    }

    /// An attempt of `id` ended: its domain's slot goes to the next waiting message.
    fn finished(&mut self, id: &QueueId, gone: bool) -> Option<QueueId> {
        let d = if gone {
            self.of.remove(id)?
        } else {
            self.of.get(id)?.clone()
        };
        if let Some(b) = self.busy.get_mut(&d) {
            *b = b.saturating_sub(1);
            if *b == 0 {
                self.busy.remove(&d);
            }
        }
        let next = self.waiting.get_mut(&d).and_then(|w| w.pop_front());
        if self.waiting.get(&d).is_some_and(|w| w.is_empty()) {
            self.waiting.remove(&d);
        }
        next
    }

    /// Takes `id` out of the waiting lines (the operator forgot it).
    fn forget(&mut self, id: &QueueId) {
        if let Some(d) = self.of.remove(id)
            && let Some(w) = self.waiting.get_mut(&d)
        {
            w.retain(|x| x != id);
        }
    }

    fn waiting(&self) -> usize {
        self.waiting.values().map(|w| w.len()).sum()
    }
}

/// The parked mail of one down site.
struct Parked {
    ids: HashSet<QueueId>,
    /// When one of them goes as the site's probe (Unix ms); `u64::MAX` while a probe is
    /// under way.
    probe_at: u64,
}

/// Released mail is spread over this long at most, so that a big backlog of a site that
/// came back (or of a long outage) does not come due in one instant.
const RELEASE_SPREAD_MS: u64 = 30_000;

impl Scheduler {
    /// One message of each down site whose probe time came goes now (the probe).
    fn send_probes(&mut self, now: u64) {
        for (site, p) in &mut self.parked {
            if p.probe_at <= now
                && let Some(id) = p.ids.iter().next().cloned()
            {
                p.ids.remove(&id);
                self.parked_site.remove(&id);
                tracing::debug!(site = %site, queue_id = %id, parked = p.ids.len(), "probe of a down site");
                p.probe_at = u64::MAX;
                self.due.insert((now, id));
            }
        }
        self.parked
            .retain(|_, p| !p.ids.is_empty() || p.probe_at == u64::MAX);
    }

    /// `site` answered again: its parked mail goes, spread over a few seconds per
    /// thousand messages (the site's connection limit paces it further).
    fn release(&mut self, site: &Site, now: u64) {
        let waiting: Vec<QueueId> = self
            .site_waiters
            .iter()
            .filter(|(_, (s, _))| s == site)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            if let Some((_, at)) = self.site_waiters.remove(&id)
                && self.due.remove(&(at, id.clone()))
            {
                self.due.insert((now, id));
            }
        }
        let Some(p) = self.parked.remove(site) else {
            return;
        };
        for id in &p.ids {
            self.parked_site.remove(id);
        }
        let n = p.ids.len() as u64;
        tracing::info!(site = %site, messages = n, "site up: its parked mail goes now");
        let spread = (n * 5).clamp(1, RELEASE_SPREAD_MS);
        for (i, id) in p.ids.into_iter().enumerate() {
            self.due.insert((now + i as u64 * spread / n.max(1), id));
        }
    }

    /// When the next probe of a parked site is due.
    fn next_probe(&self) -> Option<u64> {
        self.parked
            .values()
            .filter(|p| !p.ids.is_empty())
            .map(|p| p.probe_at)
            .min()
    }

    /// Takes `id` out of the parked mail, if it is there.
    fn unpark(&mut self, id: &QueueId) -> bool {
        let Some(site) = self.parked_site.remove(id) else {
            return false;
        };
        if let Some(p) = self.parked.get_mut(&site) {
            p.ids.remove(id);
        }
        true
    }

    /// An egress IP may be usable again: messages that waited for one go now instead of
    /// at their backoff time (which may be an hour away).
    fn wake_egress_waiters(&mut self) {
        let now = self.ctx.clock.now_ms();
        let waiters = std::mem::take(&mut self.egress_waiters);
        if !waiters.is_empty() {
            tracing::info!(
                messages = waiters.len(),
                "egress IP usable again; retrying deferred mail"
            );
        }
        for (id, at) in waiters {
            if self.due.remove(&(at, id.clone())) {
                self.due.insert((now, id));
            }
        }
    }

    /// Carries out an operator's command on the due times.
    fn control(&mut self, command: Control) -> ControlOutcome {
        let now = self.ctx.clock.now_ms();
        let mut outcome = ControlOutcome::default();
        let due_of = |due: &BTreeSet<(u64, QueueId)>, id: &QueueId| {
            due.iter().find(|(_, d)| d == id).map(|(at, _)| *at)
        };
        match command {
            Control::Flush(ids) => {
                let wanted: HashSet<QueueId> = ids.into_iter().collect();
                let moved: Vec<(u64, QueueId)> = self
                    .due
                    .iter()
                    .filter(|(_, id)| wanted.contains(id))
                    .cloned()
                    .collect();
                for entry in moved {
                    self.due.remove(&entry);
                    self.egress_waiters.remove(&entry.1);
                    self.due.insert((now, entry.1.clone()));
                    outcome.done.push(entry.1);
                }
                for id in &wanted {
                    if self.unpark(id) {
                        self.due.insert((now, id.clone()));
                        outcome.done.push(id.clone());
                    }
                }
                outcome.busy = wanted
                    .into_iter()
                    .filter(|id| self.in_flight.contains(id))
                    .collect();
            }
            Control::Forget(id, then) => {
                if self.in_flight.contains(&id) {
                    self.after_attempt.insert(id.clone(), then);
                    outcome.busy.push(id);
                } else {
                    if let Some(at) = due_of(&self.due, &id) {
                        self.due.remove(&(at, id.clone()));
                    }
                    self.egress_waiters.remove(&id);
                    self.site_waiters.remove(&id);
                    self.unpark(&id);
                    self.domains.forget(&id);
                    outcome.done.push(id);
                }
            }
            Control::SiteUp(site) => self.release(&site, now),
            Control::Schedule(id) => {
                if let Some(at) = due_of(&self.due, &id) {
                    self.due.remove(&(at, id.clone()));
                }
                self.unpark(&id);
                if !self.in_flight.contains(&id) {
                    self.due.insert((now, id.clone()));
                    outcome.done.push(id);
                } else {
                    // A release undoes a hold still waiting for the attempt to end.
                    if matches!(self.after_attempt.get(&id), Some(AfterAttempt::Hold(_))) {
                        self.after_attempt.remove(&id);
                    }
                    outcome.busy.push(id);
                }
            }
        }
        outcome
    }

    async fn run(mut self) {
        loop {
            let max_in_flight = self.ctx.config.delivery.max_connections;
            let now = self.ctx.clock.now_ms();
            if let Some(waiting) = self.drained.as_mut().filter(|_| self.in_flight.is_empty()) {
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
            self.send_probes(now);
            while self.drained.is_none() && self.in_flight.len() < max_in_flight {
                match self.due.first() {
                    Some((at, _)) if *at <= now => {}
                    _ => break,
                }
                let Some((_, id)) = self.due.pop_first() else {
                    break;
                };
                self.site_waiters.remove(&id);
                if !self
                    .domains
                    .admit(&id, self.ctx.config.delivery.max_connections_per_domain)
                {
                    continue;
                }
                if self.in_flight.insert(id.clone()) {
                    let ctx = self.ctx.clone();
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let outcome = attempt::run(ctx, &handle, id.clone()).await;
                        let _ = handle.tx.send(QueueEvent::Finished {
                            id,
                            next_ms: outcome.next_ms,
                            waiting_for_egress: outcome.waiting_for_egress,
                            parked: outcome.parked,
                            recovered: outcome.recovered,
                            waits_for: outcome.waits_for,
                        });
                    });
                }
            }
            let wait = match self.due.first() {
                Some((at, _)) if self.drained.is_none() && self.in_flight.len() < max_in_flight => {
                    Some(Duration::from_millis(at.saturating_sub(now)))
                }
                _ => None,
            };
            let wait = match (wait, self.next_probe()) {
                (Some(w), Some(p)) => Some(w.min(Duration::from_millis(p.saturating_sub(now)))),
                (None, Some(p)) if self.drained.is_none() => {
                    Some(Duration::from_millis(p.saturating_sub(now)))
                }
                (w, _) => w,
            };
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = self.rx.recv() => event,
                _ = self.improved.changed() => {
                    self.wake_egress_waiters();
                    continue;
                }
                () = sleep => continue,
            };
            let Some(event) = event else {
                return;
            };
            match event {
                QueueEvent::Control { command, reply } => {
                    let _ = reply.send(self.control(command));
                }
                QueueEvent::Reconfigure(ctx) => {
                    self.ctx = ctx;
                }
                QueueEvent::Sizes(reply) => {
                    let parked: usize = self.parked.values().map(|p| p.ids.len()).sum();
                    let _ = reply.send((
                        self.in_flight.len(),
                        self.due.len() + parked + self.domains.waiting(),
                    ));
                }
                QueueEvent::InFlight(reply) => {
                    let _ = reply.send(self.in_flight.iter().cloned().collect());
                }
                QueueEvent::Drain(done) => {
                    if self.drained.is_none() {
                        tracing::info!(
                            in_flight = self.in_flight.len(),
                            queued = self.due.len(),
                            "stopping: no new attempts; waiting for those under way"
                        );
                    }
                    self.drained.get_or_insert_with(Vec::new).push(done);
                }
                QueueEvent::Due { id, at_ms, domain } => {
                    // A message already running is rescheduled by its own Finished event.
                    if !self.in_flight.contains(&id) {
                        self.domains.note(&id, domain);
                        self.due.insert((at_ms, id));
                    }
                }
                QueueEvent::Finished {
                    id,
                    next_ms,
                    waiting_for_egress,
                    parked,
                    recovered,
                    waits_for,
                } => {
                    self.in_flight.remove(&id);
                    // For whoever waits on an attempt's end (the relay tests; an operator
                    // tracing one message): from here on, hold and delete act at once.
                    tracing::debug!(queue_id = %id, "attempt over");
                    let now = self.ctx.clock.now_ms();
                    if let Some(next) = self.domains.finished(&id, next_ms.is_none()) {
                        self.due.insert((now, next));
                    }
                    for site in &recovered {
                        self.release(site, now);
                    }
                    if let Some(then) = self.after_attempt.remove(&id) {
                        // Held or deleted while its attempt ran: never scheduled again.
                        if next_ms.is_some() {
                            let (ctx, handle) = (self.ctx.clone(), self.handle.clone());
                            tokio::spawn(async move {
                                super::operator::after_attempt(&ctx, &handle, &id, then).await;
                            });
                        }
                        continue;
                    }
                    match (next_ms, parked) {
                        (Some(at), Some(site)) => {
                            let p = self.parked.entry(site.clone()).or_insert(Parked {
                                ids: HashSet::new(),
                                probe_at: at,
                            });
                            // A failed probe (or the first parked message) sets when
                            // the next one goes.
                            if p.probe_at == u64::MAX || p.ids.is_empty() {
                                p.probe_at = at;
                            }
                            p.ids.insert(id.clone());
                            tracing::debug!(queue_id = %id, site = %site, "parked with its down site until its probe");
                            self.parked_site.insert(id, site);
                        }
                        (Some(at), None) => {
                            if waiting_for_egress {
                                self.egress_waiters.insert(id.clone(), at);
                            }
                            if let Some(site) = waits_for {
                                self.site_waiters.insert(id.clone(), (site, at));
                            }
                            self.due.insert((at, id));
                        }
                        (None, _) => {}
                    }
                }
            }
        }
    }
}
