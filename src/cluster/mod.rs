//! The cluster: several relays sending from the same egress pools share what they learn
//! through Redis, the engine mail operators already run (rspamd, KumoMTA). Each node
//! keeps its in-memory copy, so routing never waits for Redis; changes travel as keys
//! with an expiry (the state) and pub/sub messages (the news).
//!
//! Shared now: blocks (learned and manual, with their evidence and expiry) — a block
//! learned on one node reaches the others in the time of one pub/sub message — and the
//! blocklist refresh: one node per refresh (a lock key with an expiry) asks the lists,
//! the others apply its results; sender suspensions and releases; `[[shaping]]`
//! connection limits (leases). When Redis
//! is unreachable every node goes on with what it knows and learns ("degraded", logged
//! once); when it is back, the node merges: blocks only Redis has are taken, blocks only
//! the node has (or with a later expiry) are written back — a Redis restart loses nothing
//! a node still knows.

use std::net::IpAddr;
use std::time::Duration;

use redis::{AsyncCommands, IntoConnectionInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::reputation::{Block, BlockChange, Reputation};
use crate::routing::Pending;
use crate::site::Site;

/// The pub/sub channel block changes are announced on.
const CHANNEL: &str = "sidestep:blocks";
/// The channel sites marked down or seen up again are announced on.
const SITES_CHANNEL: &str = "sidestep:sites";
/// The channel sender suspensions and releases are announced on.
const SENDERS_CHANNEL: &str = "sidestep:senders";
/// Keys of suspended senders: `sidestep:sender:<user:NAME|domain:NAME>`.
const SENDER_PREFIX: &str = "sidestep:sender:";
/// The channel the elected checker announces its blocklist results on.
const LISTINGS_CHANNEL: &str = "sidestep:listings";
/// The lock key of the blocklist refresh: its value names the node that checks.
const LISTINGS_CHECKER: &str = "sidestep:listings:checker";
/// The latest blocklist results, for a node that joins.
const LISTINGS_LATEST: &str = "sidestep:listings:latest";
/// Keys of blocks: `sidestep:block:<ip>|<site>`.
const PREFIX: &str = "sidestep:block:";
/// A block's key outlives its expiry by this much: its strikes (how long the next one
/// lasts) are remembered as they are on one node.
const KEEP_AFTER_EXPIRY: u64 = 7 * 24 * 3600;

/// One node's blocklist results, as they travel.
#[derive(Debug, Serialize, Deserialize)]
struct ListingsAnnouncement {
    node: String,
    outcome: crate::reputation::CheckOutcome,
}

/// The cluster's side of the blocklist refresh: a lock key with an expiry elects the
/// checker; its results go out on pub/sub and stay in a key for nodes that join.
struct SharedListings {
    conn: Conn,
    node: String,
}

/// A connection kept for the next command, made again after a failure.
struct Conn {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// After a failure, no new attempt before this: a Redis that does not answer must
    /// not cost every delivery a connection timeout.
    retry_after: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long connecting to Redis or a command may take on the delivery path: past it,
/// the node counts alone (degraded) rather than delay mail.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, the next connection attempt waits this long.
const REDIS_RETRY: Duration = Duration::from_secs(1);

impl Conn {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            retry_after: std::sync::Mutex::new(None),
        }
    }

    /// The kept connection, or a new one; `None` while Redis is unreachable (at once
    /// within [`REDIS_RETRY`] of a failure).
    async fn get(&self) -> Option<redis::aio::MultiplexedConnection> {
        let waiting = self
            .retry_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| std::time::Instant::now() < t);
        if waiting {
            return None;
        }
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = connect(&self.client).await.ok();
            if conn.is_none() {
                self.failed();
            }
        }
        conn.clone()
    }

    /// A command failed: the next one connects again, after [`REDIS_RETRY`].
    async fn reset(&self) {
        *self.conn.lock().await = None;
        self.failed();
    }

    fn failed(&self) {
        *self.retry_after.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now() + REDIS_RETRY);
    }
}

impl crate::reputation::SharedListings for SharedListings {
    fn elect(
        &self,
        period: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let Some(mut c) = self.conn.get().await else {
                return true;
            };
            // Most of the period: the next refresh finds the turn free again.
            let ms = (period.as_millis() as u64 * 9 / 10).max(500);
            let taken: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(LISTINGS_CHECKER)
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await;
            match taken {
                Ok(ok) => ok.is_some(),
                Err(_) => {
                    self.conn.reset().await;
                    true
                }
            }
        })
    }

    fn publish(&self, outcome: &crate::reputation::CheckOutcome) {
        let message = serde_json::to_string(&ListingsAnnouncement {
            node: self.node.clone(),
            outcome: outcome.clone(),
        })
        .unwrap_or_default();
        let client = self.conn.client.clone();
        tokio::spawn(async move {
            let Ok(mut c) = connect(&client).await else {
                return;
            };
            let _: redis::RedisResult<()> = c.set_ex(LISTINGS_LATEST, &message, 24 * 3600).await;
            let _: redis::RedisResult<()> = c.publish(LISTINGS_CHANNEL, &message).await;
        });
    }
}

/// Connection leases per site: `sidestep:conn:<site>` is a sorted set of leases scored
/// by their expiry, so that a node that dies mid-delivery frees its leases in time.
const CONN_PREFIX: &str = "sidestep:conn:";
/// A lease lives this long unless given back (a delivery is seconds; a dead node's
/// leases go after this).
const LEASE_MS: u64 = 60_000;

/// Takes a lease when fewer than the limit are live, in one step on the server.
const TAKE_LEASE: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
";

/// Rates across nodes (GCRA): `n` per `period`, all at once at most; the key holds the
/// theoretical arrival time of the next one (ms). Returns 0 when one may go, else the
/// wait in ms.
const TAKE_RATE: &str = r"
local now = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local interval = period / tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - period - now
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(period))
return 0
";

/// Rate keys: `sidestep:rate:<m|site>` (messages per hour), `<c|site[|ip]>` (connections
/// per minute).
const RATE_PREFIX: &str = "sidestep:rate:";

/// The cluster's connection count and rates: `[[shaping]]` for all nodes together.
pub struct SharedSlots {
    conn: std::sync::Arc<Conn>,
    node: String,
    script: redis::Script,
    rate_script: redis::Script,
    next: std::sync::atomic::AtomicU64,
}

impl crate::routing::SharedSlots for SharedSlots {
    fn take(&self, key: &str, limit: usize) -> Pending<'_, Result<Option<String>, ()>> {
        let key = format!("{CONN_PREFIX}{key}");
        Box::pin(async move {
            let mut c = self.conn.get().await.ok_or(())?;
            let lease = format!(
                "{}:{}",
                self.node,
                self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let now = crate::clock::unix_now_ms();
            let taken: redis::RedisResult<i64> = self
                .script
                .key(&key)
                .arg(now)
                .arg(LEASE_MS)
                .arg(limit)
                .arg(&lease)
                .invoke_async(&mut c)
                .await;
            match taken {
                Ok(1) => Ok(Some(lease)),
                Ok(_) => Ok(None),
                Err(_) => {
                    self.conn.reset().await;
                    Err(())
                }
            }
        })
    }

    fn rate(
        &self,
        key: &str,
        n: u32,
        period: Duration,
    ) -> Pending<'_, Result<Result<(), Duration>, ()>> {
        let key = format!("{RATE_PREFIX}{key}");
        Box::pin(async move {
            if n == 0 {
                return Ok(Ok(()));
            }
            let mut c = self.conn.get().await.ok_or(())?;
            let wait: redis::RedisResult<u64> = self
                .rate_script
                .key(&key)
                .arg(crate::clock::unix_now_ms())
                .arg(period.as_millis() as u64)
                .arg(n)
                .invoke_async(&mut c)
                .await;
            match wait {
                Ok(0) => Ok(Ok(())),
                Ok(ms) => Ok(Err(Duration::from_millis(ms))),
                Err(_) => {
                    self.conn.reset().await;
                    Err(())
                }
            }
        })
    }

    fn give_back(&self, key: &str, lease: String) {
        let key = format!("{CONN_PREFIX}{key}");
        let conn = self.conn.clone();
        tokio::spawn(async move {
            if let Some(mut c) = conn.get().await {
                let removed: redis::RedisResult<()> = c.zrem(key, lease).await;
                if removed.is_err() {
                    conn.reset().await;
                }
            }
        });
    }
}

/// Applies another node's blocklist results here (persisted on a blocking thread).
async fn apply_listings(reputation: &Reputation, node: &str, text: &str) {
    let Ok(a) = serde_json::from_str::<ListingsAnnouncement>(text) else {
        return;
    };
    if a.node == node {
        return;
    }
    let r = reputation.clone();
    match tokio::task::spawn_blocking(move || r.apply(a.outcome)).await {
        Ok(Ok(())) => {
            tracing::debug!(from = %a.node, "cluster: blocklist results of another node applied")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot persist listing state"),
        Err(_) => {}
    }
}

/// One block change as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    node: String,
    ip: IpAddr,
    site: Site,
    /// `None`: lifted.
    block: Option<Block>,
    /// When it was sent (Unix seconds).
    at: u64,
}

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
    let Some(url) = config
        .redis
        .as_deref()
        .filter(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
    else {
        return Vec::new();
    };
    match client(config) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let key = match (&config.password_file, &config.ca_file) {
                _ if e.starts_with(url) => "cluster.redis",
                (Some(p), _) if e.starts_with(&p.display().to_string()) => "cluster.password_file",
                (_, Some(p)) if e.starts_with(&p.display().to_string()) => "cluster.ca_file",
                _ => "cluster.redis",
            };
            vec![crate::config::ConfigError {
                key: key.into(),
                problem: e,
            }]
        }
    }
}

/// The Redis client for `[cluster]`, with the password from its file.
///
/// # Errors
/// The URL does not parse or the password file cannot be read.
pub fn client(config: &ClusterConfig) -> Result<Option<redis::Client>, String> {
    let Some(url) = config.redis.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let mut info: redis::ConnectionInfo = url
        .into_connection_info()
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        info.redis.password = Some(text.lines().next().unwrap_or_default().to_string());
    }
    match &config.ca_file {
        // rediss:// with a private CA; without one, the system's roots.
        Some(path) if url.starts_with("rediss://") => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => redis::Client::open(info),
    }
    .map(Some)
    .map_err(|e| e.to_string())
}

/// Starts sharing `reputation`'s blocks through Redis; nothing without `[cluster]`.
///
/// # Errors
/// The `[cluster]` settings are unusable (check-config says which).
pub fn start(
    config: &ClusterConfig,
    reputation: Reputation,
    senders: crate::senders::Senders,
) -> Result<Option<Started>, String> {
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
    reputation.share_listings(std::sync::Arc::new(SharedListings {
        conn: Conn::new(client.clone()),
        node: node.clone(),
    }));
    tracing::info!(node = %node, "cluster: sharing blocks through Redis");
    tokio::spawn(publish(client.clone(), node.clone(), rx));
    let slots = std::sync::Arc::new(SharedSlots {
        conn: std::sync::Arc::new(Conn::new(client.clone())),
        node: node.clone(),
        script: redis::Script::new(TAKE_LEASE),
        rate_script: redis::Script::new(TAKE_RATE),
        next: std::sync::atomic::AtomicU64::new(0),
    });
    let sites = std::sync::Arc::new(Sites::default());
    tokio::spawn(sync_warmup(client.clone(), reputation.clone()));
    senders.share_takes();
    tokio::spawn(publish_quota(client.clone(), node.clone(), senders.clone()));
    let (sender_tx, sender_rx) = mpsc::unbounded_channel();
    senders.share_with(sender_tx);
    tokio::spawn(publish_senders(client.clone(), node.clone(), sender_rx));
    tokio::spawn(subscribe(
        client.clone(),
        node.clone(),
        reputation,
        senders,
        sites.clone(),
        status.clone(),
    ));
    Ok(Some(Started {
        client,
        node,
        sites,
        status,
        slots,
    }))
}

/// What the cluster needs of parts made after it starts: the site health (marks down and
/// up) and the queue (to release parked mail when another node sees a site up).
#[derive(Default)]
pub struct Sites {
    health: std::sync::OnceLock<std::sync::Arc<crate::routing::SiteHealth>>,
    queue: std::sync::OnceLock<crate::queue::QueueHandle>,
}

impl Started {
    /// Shares `health`'s down and up marks with the other nodes, and applies theirs.
    pub fn share_health(&self, health: std::sync::Arc<crate::routing::SiteHealth>) {
        let (tx, rx) = mpsc::unbounded_channel();
        health.share_with(tx);
        let _ = self.sites.health.set(health);
        tokio::spawn(publish_sites(self.client.clone(), self.node.clone(), rx));
    }

    /// The queue whose parked mail a remote "site up" releases.
    pub fn set_queue(&self, queue: crate::queue::QueueHandle) {
        let _ = self.sites.queue.set(queue);
    }
}

/// One node's site mark, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct SiteAnnouncement {
    node: String,
    change: crate::routing::HealthChange,
}

async fn publish_sites(
    client: redis::Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<crate::routing::HealthChange>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let message = serde_json::to_string(&SiteAnnouncement {
            node: node.clone(),
            change,
        });
        announce(&conn, SITES_CHANNEL, message).await;
    }
}

/// Another node's site mark: applied to the health here; a site up again releases the
/// mail parked for it.
async fn apply_site(sites: &Sites, node: &str, text: &str) {
    let Ok(a) = serde_json::from_str::<SiteAnnouncement>(text) else {
        return;
    };
    if a.node == node {
        return;
    }
    let Some(health) = sites.health.get() else {
        return;
    };
    let site = a.change.site.clone();
    if health.apply_remote(a.change, crate::clock::unix_now_ms())
        && let Some(queue) = sites.queue.get()
    {
        queue.control(crate::queue::Control::SiteUp(site)).await;
    }
}

/// Publishes `message` on `channel` (news only: lost while Redis is away).
async fn announce(conn: &Conn, channel: &str, message: serde_json::Result<String>) {
    let (Some(mut c), Ok(message)) = (conn.get().await, message) else {
        return;
    };
    let sent: redis::RedisResult<()> = c.publish(channel, message).await;
    if sent.is_err() {
        conn.reset().await;
    }
}

/// The channel quota takes travel on.
const QUOTA_CHANNEL: &str = "sidestep:quota";

/// One node's quota takes of the last second, as they travel.
#[derive(Debug, Serialize, Deserialize)]
struct QuotaAnnouncement {
    node: String,
    takes: Vec<crate::senders::QuotaTake>,
}

/// Every second: the quota this node took goes to the others (they take it too).
async fn publish_quota(client: redis::Client, node: String, senders: crate::senders::Senders) {
    let conn = Conn::new(client);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let takes = senders.drain_takes();
        if takes.is_empty() {
            continue;
        }
        let message = serde_json::to_string(&QuotaAnnouncement {
            node: node.clone(),
            takes,
        });
        announce(&conn, QUOTA_CHANNEL, message).await;
    }
}

/// Warmup totals per UTC day: `sidestep:warmup:<day>`, fields `<ip>|<site>`.
const WARMUP_PREFIX: &str = "sidestep:warmup:";

/// Every second: this node's new warmup messages go into the day's totals, and the
/// totals come back, so that an IP's cap holds for all nodes together (overshoot at most
/// what the nodes send within that second).
async fn sync_warmup(client: redis::Client, reputation: Reputation) {
    let conn = Conn::new(client);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // No IP warms up: no Redis command a second for nothing.
        if !reputation.warmup_active() {
            continue;
        }
        let (day, mine) = reputation.warmup_unsynced();
        let Some(mut c) = conn.get().await else {
            reputation.warmup_unsent(day, mine);
            continue;
        };
        let key = format!("{WARMUP_PREFIX}{day}");
        let mut pipe = redis::pipe();
        for (ip, site, n) in &mine {
            pipe.hincr(&key, format!("{ip}|{site}"), *n).ignore();
        }
        pipe.expire(&key, 2 * 24 * 3600).ignore();
        pipe.hgetall(&key);
        let totals: redis::RedisResult<(std::collections::HashMap<String, u32>,)> =
            pipe.query_async(&mut c).await;
        match totals {
            Ok((totals,)) => {
                let totals = totals
                    .into_iter()
                    .filter_map(|(field, n)| {
                        let (ip, site) = field.split_once('|')?;
                        Some((ip.parse().ok()?, Site::from(site), n))
                    })
                    .collect();
                reputation.warmup_totals(day, totals);
            }
            Err(_) => {
                reputation.warmup_unsent(day, mine);
                conn.reset().await;
            }
        }
    }
}

/// What a started cluster hands the rest of the relay.
pub struct Started {
    client: redis::Client,
    node: String,
    sites: std::sync::Arc<Sites>,
    /// Connected or degraded, for `/readyz`.
    pub status: std::sync::Arc<Status>,
    /// The shared connection count, for the shaper.
    pub slots: std::sync::Arc<SharedSlots>,
}

fn key(ip: IpAddr, site: &Site) -> String {
    format!("{PREFIX}{ip}|{site}")
}

/// Writes each local change to Redis and announces it. While Redis is away the changes
/// wait here (in memory) and the merge after reconnecting covers them.
async fn publish(
    client: redis::Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<BlockChange>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let Some(mut c) = conn.get().await else {
            // Degraded: the subscriber logs it and merges when Redis is back.
            continue;
        };
        if let Err(e) = write(&mut c, &node, change).await {
            tracing::debug!(error = %e, "cluster: write failed");
            conn.reset().await;
        }
    }
}

async fn write(
    c: &mut redis::aio::MultiplexedConnection,
    node: &str,
    change: BlockChange,
) -> redis::RedisResult<()> {
    let now = crate::clock::unix_now();
    let k = key(change.ip, &change.site);
    match &change.block {
        Some(b) => {
            let ttl = b.expires_at.saturating_sub(now) + KEEP_AFTER_EXPIRY;
            let value = serde_json::to_string(b).unwrap_or_default();
            let _: () = c.set_ex(&k, value, ttl).await?;
        }
        None => {
            let _: () = c.del(&k).await?;
        }
    }
    let message = serde_json::to_string(&Announcement {
        node: node.to_string(),
        ip: change.ip,
        site: change.site,
        block: change.block,
        at: now,
    })
    .unwrap_or_default();
    let _: () = c.publish(CHANNEL, message).await?;
    Ok(())
}

/// Listens for other nodes' changes; on every (re)connection first merges with what
/// Redis holds. Retries every second while Redis is away.
async fn subscribe(
    client: redis::Client,
    node: String,
    reputation: Reputation,
    senders: crate::senders::Senders,
    sites: std::sync::Arc<Sites>,
    status: std::sync::Arc<Status>,
) {
    use futures_util::StreamExt;
    let mut degraded = false;
    loop {
        let pubsub = tokio::time::timeout(REDIS_TIMEOUT * 4, client.get_async_pubsub())
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "no answer from Redis",
                )))
            });
        match pubsub {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub
                    .subscribe(&[
                        CHANNEL,
                        LISTINGS_CHANNEL,
                        SENDERS_CHANNEL,
                        SITES_CHANNEL,
                        QUOTA_CHANNEL,
                    ])
                    .await
                {
                    tracing::debug!(error = %e, "cluster: subscribe failed");
                } else {
                    if let Err(e) = merge_senders(&client, &node, &senders).await {
                        tracing::warn!(error = %e, "cluster: merging sender suspensions failed");
                    }
                    match merge(&client, &node, &reputation).await {
                        Ok((taken, given)) => {
                            if degraded {
                                tracing::warn!(
                                    taken,
                                    given,
                                    "cluster: Redis is back; state merged"
                                );
                            } else {
                                tracing::info!(taken, given, "cluster: connected; state merged");
                            }
                            degraded = false;
                            status.set_degraded(false);
                        }
                        Err(e) => tracing::warn!(error = %e, "cluster: merge failed"),
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        if msg.get_channel_name() == LISTINGS_CHANNEL {
                            apply_listings(&reputation, &node, &text).await;
                            continue;
                        }
                        if msg.get_channel_name() == QUOTA_CHANNEL {
                            if let Ok(a) = serde_json::from_str::<QuotaAnnouncement>(&text)
                                && a.node != node
                            {
                                senders.apply_takes(&a.takes);
                            }
                            continue;
                        }
                        if msg.get_channel_name() == SITES_CHANNEL {
                            apply_site(&sites, &node, &text).await;
                            continue;
                        }
                        if msg.get_channel_name() == SENDERS_CHANNEL {
                            if let Ok(a) = serde_json::from_str::<SenderAnnouncement>(&text)
                                && a.node != node
                            {
                                senders.apply_remote(a.change);
                            }
                            continue;
                        }
                        let Ok(a) = serde_json::from_str::<Announcement>(&text) else {
                            continue;
                        };
                        if a.node == node {
                            continue;
                        }
                        if let Err(e) = reputation.apply_remote(a.ip, &a.site, a.block, a.at) {
                            tracing::error!(error = %e, "cluster: cannot save a block from another node");
                        }
                    }
                }
            }
            Err(e) => {
                if !degraded {
                    tracing::error!(error = %e, "cluster: Redis unreachable; degraded (delivering on what this node knows)");
                }
            }
        }
        if !degraded {
            tracing::error!("cluster: lost Redis; degraded (delivering on what this node knows)");
        }
        degraded = true;
        status.set_degraded(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One node's suspension or release of a sender, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct SenderAnnouncement {
    node: String,
    change: crate::senders::SenderChange,
}

/// Writes each local suspension (a key without expiry: it lasts until released) or
/// release (the key goes) to Redis and announces it.
async fn publish_senders(
    client: redis::Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<crate::senders::SenderChange>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let Some(mut c) = conn.get().await else {
            continue;
        };
        if write_sender(&mut c, &node, change).await.is_err() {
            conn.reset().await;
        }
    }
}

async fn write_sender(
    c: &mut redis::aio::MultiplexedConnection,
    node: &str,
    change: crate::senders::SenderChange,
) -> redis::RedisResult<()> {
    let k = format!("{SENDER_PREFIX}{}", change.sender);
    match &change.suspension {
        Some(s) => {
            let _: () = c
                .set(&k, serde_json::to_string(s).unwrap_or_default())
                .await?;
        }
        None => {
            let _: () = c.del(&k).await?;
        }
    }
    let message = serde_json::to_string(&SenderAnnouncement {
        node: node.to_string(),
        change,
    })
    .unwrap_or_default();
    let _: () = c.publish(SENDERS_CHANNEL, message).await?;
    Ok(())
}

/// A connection that gives up within [`REDIS_TIMEOUT`] (connecting and per command).
async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(REDIS_TIMEOUT);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The keys under `prefix`, by SCAN.
async fn keys(
    c: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(c)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Suspensions: the union of Redis's and this node's (a release made while Redis was
/// away is undone by another node's record of the suspension: release it again).
async fn merge_senders(
    client: &redis::Client,
    node: &str,
    senders: &crate::senders::Senders,
) -> redis::RedisResult<()> {
    let mut c = connect(client).await?;
    let mut remote = std::collections::BTreeSet::new();
    for k in keys(&mut c, SENDER_PREFIX).await? {
        let value: Option<String> = c.get(&k).await?;
        if let Some(s) =
            value.and_then(|v| serde_json::from_str::<crate::senders::Suspension>(&v).ok())
        {
            remote.insert(s.sender.clone());
            senders.apply_remote(crate::senders::SenderChange {
                sender: s.sender.clone(),
                suspension: Some(s),
            });
        }
    }
    for s in senders.suspensions() {
        if !remote.contains(&s.sender) {
            write_sender(
                &mut c,
                node,
                crate::senders::SenderChange {
                    sender: s.sender.clone(),
                    suspension: Some(s),
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Blocks Redis has that this node lacks (or that end later) are taken; blocks this
/// node has that Redis lacks (or that end later here) are written and announced.
async fn merge(
    client: &redis::Client,
    node: &str,
    reputation: &Reputation,
) -> redis::RedisResult<(usize, usize)> {
    let mut c = connect(client).await?;
    let keys = keys(&mut c, PREFIX).await?;
    let mut remote = std::collections::HashMap::new();
    for k in keys {
        let value: Option<String> = c.get(&k).await?;
        if let Some(b) = value.and_then(|v| serde_json::from_str::<Block>(&v).ok()) {
            remote.insert((b.ip, b.site.clone()), b);
        }
    }
    let latest: Option<String> = c.get(LISTINGS_LATEST).await?;
    if let Some(text) = latest {
        apply_listings(reputation, node, &text).await;
    }
    let now = crate::clock::unix_now();
    let mut taken = 0;
    for b in remote.values() {
        if reputation
            .apply_remote(b.ip, &b.site, Some(b.clone()), now)
            .unwrap_or(false)
        {
            taken += 1;
        }
    }
    let mut given = 0;
    for b in reputation.all_blocks() {
        let newer = remote
            .get(&(b.ip, b.site.clone()))
            .is_none_or(|r| r.expires_at < b.expires_at);
        if newer {
            write(
                &mut c,
                node,
                BlockChange {
                    ip: b.ip,
                    site: b.site.clone(),
                    block: Some(b),
                },
            )
            .await?;
            given += 1;
        }
    }
    Ok((taken, given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rediss_with_a_ca_file_trusts_that_ca_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let config = ClusterConfig {
            redis: Some("rediss://127.0.0.1:6380/0".into()),
            ca_file: Some(ca),
            ..ClusterConfig::default()
        };
        // Nothing parses as a certificate: no roots at all, which redis refuses.
        let plain = ClusterConfig {
            redis: Some("redis://127.0.0.1:6379/0".into()),
            ..ClusterConfig::default()
        };
        assert!(client(&plain).unwrap().is_some());
        let tls = client(&config);
        if let Ok(Some(c)) = &tls {
            let addr = format!("{:?}", c.get_connection_info().addr);
            assert!(addr.contains("tls_params: Some"), "{addr}");
        }
    }
}
