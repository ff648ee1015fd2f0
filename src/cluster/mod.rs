//! The cluster: several relays sending from the same egress pools share what they learn
//! through Redis, the engine mail operators already run (rspamd, KumoMTA). Each node
//! keeps its in-memory copy, so routing never waits for Redis; changes travel as keys
//! with an expiry (the state) and pub/sub messages (the news).
//!
//! Shared now: blocks (learned and manual, with their evidence and expiry) — a block
//! learned on one node reaches the others in the time of one pub/sub message — and the
//! blocklist refresh: one node per refresh (a lock key with an expiry) asks the lists,
//! the others apply its results; sender suspensions and releases; the suppression
//! list (an address suppressed on one node is refused at RCPT on all); `[[shaping]]`
//! connection limits (leases). When Redis
//! is unreachable every node goes on with what it knows and learns ("degraded", logged
//! once); when it is back, the node merges: blocks only Redis has are taken, blocks only
//! the node has (or with a later expiry) are written back — a Redis restart loses nothing
//! a node still knows.
//!
//! Layout: `connection` is the Redis client, the kept connection and its backoff; each
//! replicated concern has a file of its own (`blocks`, `listings` election,
//! `suspensions`, `suppressions`, `sites` down marks, `warmup` counts, `quota` takes, `slots`
//! for shaping's leases and rates); `subscribe` hands each message to its concern.

mod blocks;
mod connection;
mod listings;
mod quota;
mod sites;
mod slots;
mod subscribe;
mod suppressions;
mod suspensions;
mod warmup;

use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::reputation::Reputation;

pub use connection::{ClusterError, client};
pub use sites::Sites;
pub use slots::SharedSlots;

/// How this node stands with the cluster, for `/readyz`.
#[derive(Debug)]
pub struct Status {
    /// This node's name.
    pub node: String,
    degraded: std::sync::atomic::AtomicBool,
}

impl Status {
    /// Redis is unreachable: the node delivers on what it knows and learns alone.
    pub fn degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_degraded(&self, yes: bool) {
        self.degraded
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// This node's name in the cluster: `[cluster] node`, else the host name.
pub fn node_name(config: &ClusterConfig) -> String {
    config.node.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
}

/// The Redis URL and its files make a client (config only checks the scheme).
pub fn check_config(config: &ClusterConfig) -> Vec<crate::config::ConfigError> {
    let redis_url = config
        .redis
        .as_deref()
        .is_some_and(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
    if !redis_url {
        return Vec::new();
    }
    match client(config) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let key = match &e {
                ClusterError::PasswordFile { .. } => "cluster.password_file",
                ClusterError::CaFile { .. } => "cluster.ca_file",
                ClusterError::Url { .. } | ClusterError::Client(_) => "cluster.redis",
            };
            vec![crate::config::ConfigError {
                key: key.into(),
                problem: e.to_string(),
            }]
        }
    }
}

/// Starts sharing `reputation`'s blocks through Redis; nothing without `[cluster]`.
/// `clock` stamps what the node writes and announces.
///
/// # Errors
/// The `[cluster]` settings are unusable (check-config says which).
pub fn start(
    config: &ClusterConfig,
    clock: Clock,
    reputation: Reputation,
    senders: crate::senders::Senders,
) -> Result<Option<Started>, ClusterError> {
    let Some(client) = client(config)? else {
        return Ok(None);
    };
    let node = node_name(config);
    let status = std::sync::Arc::new(Status {
        node: node.clone(),
        // Until the first connection says otherwise.
        degraded: std::sync::atomic::AtomicBool::new(true),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    reputation.share_blocks(tx);
    reputation.share_listings(std::sync::Arc::new(listings::SharedListings {
        conn: connection::Conn::new(client.clone()),
        node: node.clone(),
    }));
    tracing::info!(node = %node, "cluster: sharing blocks through Redis");
    tokio::spawn(blocks::publish(
        client.clone(),
        node.clone(),
        clock.clone(),
        rx,
    ));
    let slots = std::sync::Arc::new(SharedSlots::new(
        client.clone(),
        node.clone(),
        clock.clone(),
    ));
    let sites = std::sync::Arc::new(Sites::default());
    let suppressions = std::sync::Arc::new(std::sync::OnceLock::new());
    tokio::spawn(warmup::sync(client.clone(), reputation.clone()));
    senders.share_takes();
    tokio::spawn(quota::publish(
        client.clone(),
        node.clone(),
        senders.clone(),
    ));
    let (sender_tx, sender_rx) = mpsc::unbounded_channel();
    senders.share_with(sender_tx);
    tokio::spawn(suspensions::publish(
        client.clone(),
        node.clone(),
        sender_rx,
    ));
    tokio::spawn(
        subscribe::Subscriber {
            client: client.clone(),
            node: node.clone(),
            clock: clock.clone(),
            reputation,
            senders,
            sites: sites.clone(),
            suppressions: suppressions.clone(),
            status: status.clone(),
        }
        .run(),
    );
    Ok(Some(Started {
        client,
        node,
        clock,
        sites,
        suppressions,
        status,
        slots,
    }))
}

/// What a started cluster hands the rest of the relay.
pub struct Started {
    client: redis::Client,
    node: String,
    clock: Clock,
    sites: std::sync::Arc<Sites>,
    /// The suppression list, once `serve` has opened it.
    suppressions: std::sync::Arc<std::sync::OnceLock<crate::suppression::Suppressions>>,
    /// Connected or degraded, for `/readyz`.
    pub status: std::sync::Arc<Status>,
    /// The shared connection count, for the shaper.
    pub slots: std::sync::Arc<SharedSlots>,
}

impl Started {
    /// Shares `health`'s down and up marks with the other nodes, and applies theirs.
    pub fn share_health(&self, health: std::sync::Arc<crate::routing::SiteHealth>) {
        let (tx, rx) = mpsc::unbounded_channel();
        health.share_with(tx);
        let _ = self.sites.health.set(health);
        tokio::spawn(sites::publish(self.client.clone(), self.node.clone(), rx));
    }

    /// Shares `list`'s changes with the other nodes and applies theirs; merges it with
    /// Redis's entries now (the subscriber may have connected before the list was open)
    /// and on every reconnection.
    pub fn share_suppressions(&self, list: crate::suppression::Suppressions) {
        if self.suppressions.set(list.clone()).is_err() {
            return;
        }
        let (publisher, rx) = suppressions::Publisher::new();
        list.share(publisher);
        tokio::spawn(suppressions::publish(
            self.client.clone(),
            self.node.clone(),
            self.clock.clone(),
            rx,
        ));
        let (client, clock) = (self.client.clone(), self.clock.clone());
        tokio::spawn(async move {
            match suppressions::merge(&client, &clock, &list).await {
                Ok((taken, given)) => {
                    tracing::info!(taken, given, "cluster: suppression list merged")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: merging the suppression list failed")
                }
            }
        });
    }

    /// The queue whose parked mail a remote "site up" releases.
    pub fn set_queue(&self, queue: crate::queue::QueueHandle) {
        let _ = self.sites.queue.set(queue);
    }
}
