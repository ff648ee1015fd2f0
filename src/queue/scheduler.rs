//! The scheduler: the only owner of due times. Sessions and attempts tell it about
//! messages through [`QueueEvent`]s; it starts an attempt when a message is due and
//! fewer than `delivery.max_connections` attempts are running, so a burst of 20,000
//! messages never means 20,000 bodies in memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::attempt;
use crate::classify::Classifier;
use crate::clock::unix_now_ms;
use crate::config::Config;
use crate::outbound::Outbound;
use crate::reputation::Reputation;
use crate::spool::{QueueId, QueuedMessage, Spool, SpoolError};

/// What the scheduler is told.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message should be attempted at `at_ms` (Unix ms): new, recovered, or a DSN.
    Due { id: QueueId, at_ms: u64 },
    /// An attempt ended; `next_ms` is the retry time, `None` when the message left the
    /// spool. `waiting_for_egress`: retry as soon as an egress IP becomes usable.
    Finished {
        id: QueueId,
        next_ms: Option<u64>,
        waiting_for_egress: bool,
    },
    /// The relay is stopping: start no more attempts; answer once none is running.
    Drain(tokio::sync::oneshot::Sender<()>),
}

/// Cheap handle to tell the scheduler about new messages.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<QueueEvent>,
}

impl QueueHandle {
    /// Stops starting attempts and waits until the ones under way have finished (their
    /// results recorded). Messages due meanwhile stay spooled for the next start.
    pub async fn drain(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(QueueEvent::Drain(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// A message was just made durable; schedule it.
    pub fn enqueued(&self, msg: &QueuedMessage) {
        let _ = self.tx.send(QueueEvent::Due {
            id: msg.id.clone(),
            at_ms: msg.next_attempt_ms,
        });
    }
}

/// What attempts need: configuration, spool, the outbound client and connection limits.
pub struct QueueContext {
    pub config: Arc<Config>,
    pub spool: Spool,
    pub outbound: Outbound,
    pub reputation: Reputation,
    /// Built-in and operator rules, compiled once.
    pub classifier: Arc<Classifier>,
    /// Outbound connections over all destinations.
    pub connections: Arc<Semaphore>,
    /// Outbound connections per destination domain; entries are dropped when idle.
    pub per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Domains that asked us to slow down: until when (Unix seconds), and their one-lane
    /// semaphore.
    throttled: Mutex<HashMap<String, (u64, Arc<Semaphore>)>>,
    /// Outcomes the spool could not record (a full disk): the next attempt of the message
    /// starts from here, not from the stored record, so nothing delivered goes out again.
    unrecorded: Mutex<HashMap<QueueId, QueuedMessage>>,
}

impl QueueContext {
    pub fn new(
        config: Arc<Config>,
        spool: Spool,
        outbound: Outbound,
        reputation: Reputation,
        classifier: Arc<Classifier>,
    ) -> Self {
        Self {
            reputation,
            classifier,
            connections: Arc::new(Semaphore::new(config.delivery.max_connections)),
            per_domain: Mutex::new(HashMap::new()),
            throttled: Mutex::new(HashMap::new()),
            unrecorded: Mutex::new(HashMap::new()),
            config,
            spool,
            outbound,
        }
    }

    /// Keeps an attempt's outcome that the spool could not record.
    pub(super) fn keep_unrecorded(&self, msg: QueuedMessage) {
        self.unrecorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg.id.clone(), msg);
    }

    /// The unrecorded outcome of a message, if there is one.
    pub(super) fn take_unrecorded(&self, id: &QueueId) -> Option<QueuedMessage> {
        self.unrecorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// The destination said "too fast": one connection at a time to it for `period`.
    pub(super) fn throttle(&self, domain: &str, period: Duration) {
        let until = crate::clock::unix_now() + period.as_secs().max(1);
        let mut map = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (t, _)| *t > crate::clock::unix_now());
        let entry = map
            .entry(domain.to_string())
            .or_insert_with(|| (until, Arc::new(Semaphore::new(1))));
        entry.0 = until;
        tracing::info!(
            domain,
            until,
            "destination throttles us; one connection at a time"
        );
    }

    /// The one-connection lane of a domain that currently throttles us.
    fn throttle_lane(&self, domain: &str) -> Option<Arc<Semaphore>> {
        self.throttled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .filter(|(until, _)| *until > crate::clock::unix_now())
            .map(|(_, lane)| lane.clone())
    }

    /// How many connections to `domain` may be open: one while it throttles us.
    pub(super) fn domain_cap(&self, domain: &str) -> usize {
        match self.throttle_lane(domain) {
            Some(_) => 1,
            None => self.config.delivery.max_connections_per_domain,
        }
    }

    pub(super) fn domain_limit(&self, domain: &str) -> Arc<Semaphore> {
        if let Some(lane) = self.throttle_lane(domain) {
            return lane;
        }
        let mut map = self.per_domain.lock().unwrap_or_else(|e| e.into_inner());
        // Forget domains nobody is delivering to, so the map does not grow with every
        // domain ever seen.
        if map.len() > 1024 {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(domain.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.config.delivery.max_connections_per_domain,
                ))
            })
            .clone()
    }
}

/// Recovers the spool and starts the scheduler task.
///
/// # Errors
/// The spool index cannot be read.
pub fn start(ctx: Arc<QueueContext>) -> Result<QueueHandle, SpoolError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = QueueHandle { tx };
    let recovered = ctx.spool.recover()?;
    if !recovered.is_empty() {
        tracing::info!(messages = recovered.len(), "recovered spooled messages");
    }
    let mut due = BTreeSet::new();
    for msg in recovered {
        due.insert((msg.next_attempt_ms, msg.id));
    }
    let scheduler = Scheduler {
        improved: ctx.reputation.improvements(),
        ctx,
        handle: handle.clone(),
        rx,
        due,
        in_flight: HashSet::new(),
        egress_waiters: HashMap::new(),
        drained: None,
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
    /// Bumped by the reputation state when an IP may have become usable again.
    improved: tokio::sync::watch::Receiver<u64>,
    /// Stopping: no new attempts; these are told when the last one has finished.
    drained: Option<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl Scheduler {
    /// An egress IP may be usable again: messages that waited for one go now instead of
    /// at their backoff time (which may be an hour away).
    fn wake_egress_waiters(&mut self) {
        let now = unix_now_ms();
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

    async fn run(mut self) {
        let max_in_flight = self.ctx.config.delivery.max_connections;
        loop {
            let now = unix_now_ms();
            if let Some(waiting) = self.drained.as_mut().filter(|_| self.in_flight.is_empty()) {
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
            while self.drained.is_none() && self.in_flight.len() < max_in_flight {
                match self.due.first() {
                    Some((at, _)) if *at <= now => {}
                    _ => break,
                }
                let Some((_, id)) = self.due.pop_first() else {
                    break;
                };
                if self.in_flight.insert(id.clone()) {
                    let ctx = self.ctx.clone();
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let outcome = attempt::run(ctx, &handle, id.clone()).await;
                        let _ = handle.tx.send(QueueEvent::Finished {
                            id,
                            next_ms: outcome.next_ms,
                            waiting_for_egress: outcome.waiting_for_egress,
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
                QueueEvent::Due { id, at_ms } => {
                    // A message already running is rescheduled by its own Finished event.
                    if !self.in_flight.contains(&id) {
                        self.due.insert((at_ms, id));
                    }
                }
                QueueEvent::Finished {
                    id,
                    next_ms,
                    waiting_for_egress,
                } => {
                    self.in_flight.remove(&id);
                    if let Some(at) = next_ms {
                        if waiting_for_egress {
                            self.egress_waiters.insert(id.clone(), at);
                        }
                        self.due.insert((at, id));
                    }
                }
            }
        }
    }
}
