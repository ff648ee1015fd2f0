//! What attempts share: configuration, spool, the outbound client, reputation, the
//! classifier, connection limits, throttle lanes, and outcomes the spool could not record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::throttle::ThrottleLanes;
use crate::classify::Classifier;
use crate::clock::Clock;
use crate::config::Config;
use crate::outbound::Outbound;
use crate::reputation::Reputation;
use crate::spool::{QueueId, QueuedMessage, Spool};

/// What attempts need: configuration, spool, the outbound client and connection limits.
pub struct QueueContext {
    /// The whole configuration.
    pub config: Arc<Config>,
    /// Messages and their records.
    pub spool: Spool,
    /// The SMTP client side.
    pub outbound: Outbound,
    /// Listings and blocks: read by routing, taught by verdicts.
    pub reputation: Reputation,
    /// Built-in and operator rules, compiled once.
    pub classifier: Arc<Classifier>,
    /// Senders' suspensions (their mail is held) and what their mail draws.
    pub senders: crate::senders::Senders,
    /// Outbound connections over all destinations.
    pub connections: Arc<Semaphore>,
    /// Outbound connections per destination domain; entries are dropped when idle.
    pub per_domain: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// Domains that asked us to slow down.
    throttled: Arc<ThrottleLanes>,
    /// Due times, retry times and stamps; the system clock except in tests.
    pub clock: Clock,
    /// Outcomes the spool could not record (a full disk): the next attempt of the message
    /// starts from here, not from the stored record, so nothing delivered goes out again.
    unrecorded: Arc<Mutex<HashMap<QueueId, QueuedMessage>>>,
    /// VERP return paths (`[bounces]`); none: mail goes out with its sender's address.
    pub return_path: Option<Arc<crate::returnpath::ReturnPath>>,
    /// Where mail to the bounce domains goes instead of an MX (the bounce reader).
    pub local: Option<Arc<dyn super::LocalDelivery>>,
    /// Addresses that hard-bounced: in-session failures feed it.
    pub suppressions: crate::suppression::Suppressions,
}

impl QueueContext {
    /// The context for `config`, with the connection limits of `[delivery]`.
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
            senders: crate::senders::Senders::default(),
            connections: Arc::new(Semaphore::new(config.delivery.max_connections)),
            per_domain: Arc::new(Mutex::new(HashMap::new())),
            throttled: Arc::new(ThrottleLanes::new(Clock::system())),
            clock: Clock::system(),
            unrecorded: Arc::new(Mutex::new(HashMap::new())),
            return_path: None,
            local: None,
            suppressions: crate::suppression::Suppressions::default(),
            config,
            spool,
            outbound,
        }
    }

    /// The same context feeding and obeying these senders' state.
    pub fn with_senders(mut self, senders: crate::senders::Senders) -> Self {
        self.senders = senders;
        self
    }

    /// The same context on another clock (tests run the queue on tokio's paused one).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.throttled = Arc::new(ThrottleLanes::new(clock.clone()));
        self.clock = clock;
        self
    }

    /// The same queue under a reloaded configuration: new settings, routes, pools,
    /// smarthosts and rules; the same spool, reputation, limits in use, throttle lanes and
    /// unrecorded outcomes. Attempts under way keep the context they started with.
    pub fn reconfigured(
        &self,
        config: Arc<Config>,
        outbound: Outbound,
        classifier: Arc<Classifier>,
    ) -> Self {
        Self {
            config,
            outbound: outbound.keep_health(&self.outbound),
            classifier,
            spool: self.spool.clone(),
            reputation: self.reputation.clone(),
            senders: self.senders.clone(),
            connections: self.connections.clone(),
            per_domain: self.per_domain.clone(),
            throttled: self.throttled.clone(),
            clock: self.clock.clone(),
            unrecorded: self.unrecorded.clone(),
            return_path: self.return_path.clone(),
            local: self.local.clone(),
            suppressions: self.suppressions.clone(),
        }
    }

    /// The same context with return paths, the bounce reader and the suppression list
    /// (at start, and after a reload re-read `[bounces]`).
    pub fn with_bounces(
        mut self,
        (return_path, local, suppressions): (
            Option<Arc<crate::returnpath::ReturnPath>>,
            Option<Arc<dyn super::LocalDelivery>>,
            crate::suppression::Suppressions,
        ),
    ) -> Self {
        self.return_path = return_path;
        self.local = local;
        self.suppressions = suppressions;
        self
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
        self.throttled.throttle(domain, period);
    }

    /// The one-connection lane of a domain that currently throttles us.
    fn throttle_lane(&self, domain: &str) -> Option<Arc<Semaphore>> {
        self.throttled.lane(domain)
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
