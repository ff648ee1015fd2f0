//! Blocks (learned and manual, with their evidence and expiry): each local change is a
//! key with an expiry plus a pub/sub message; another node's message is applied here; on
//! every (re)connection the node merges with what Redis holds.

use std::net::IpAddr;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::connection::{Conn, connect, keys};
use crate::clock::Clock;
use crate::reputation::{Block, BlockChange, Reputation};
use crate::site::Site;

/// The pub/sub channel block changes are announced on.
pub(super) const CHANNEL: &str = "sidestep:blocks";
/// Keys of blocks: `sidestep:block:<ip>|<site>`.
const PREFIX: &str = "sidestep:block:";
/// A block's key outlives its expiry by this much: its strikes (how long the next one
/// lasts) are remembered as they are on one node.
const KEEP_AFTER_EXPIRY: u64 = 7 * 24 * 3600;

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

fn key(ip: IpAddr, site: &Site) -> String {
    format!("{PREFIX}{ip}|{site}")
}

/// How long the key of a block that ends at `expires_at` lives in Redis, `now` in Unix
/// seconds.
fn key_ttl(expires_at: u64, now: u64) -> u64 {
    expires_at.saturating_sub(now) + KEEP_AFTER_EXPIRY
}

/// Writes each local change to Redis and announces it. While Redis is away the changes
/// wait here (in memory) and the merge after reconnecting covers them.
pub(super) async fn publish(
    client: redis::Client,
    node: String,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<BlockChange>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let Some(mut c) = conn.get().await else {
            // Degraded: the subscriber logs it and merges when Redis is back.
            continue;
        };
        if let Err(e) = write(&mut c, &node, clock.now(), change).await {
            tracing::debug!(error = %e, "cluster: write failed");
            conn.reset().await;
        }
    }
}

/// Writes one change (`now` in Unix seconds) and announces it.
async fn write(
    c: &mut redis::aio::MultiplexedConnection,
    node: &str,
    now: u64,
    change: BlockChange,
) -> redis::RedisResult<()> {
    let k = key(change.ip, &change.site);
    match &change.block {
        Some(b) => {
            let value = serde_json::to_string(b).unwrap_or_default();
            let _: () = c.set_ex(&k, value, key_ttl(b.expires_at, now)).await?;
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

/// Another node's block change, applied here.
pub(super) fn apply(reputation: &Reputation, node: &str, text: &str) {
    let Ok(a) = serde_json::from_str::<Announcement>(text) else {
        return;
    };
    if a.node == node {
        return;
    }
    if let Err(e) = reputation.apply_remote(a.ip, &a.site, a.block, a.at) {
        tracing::error!(error = %e, "cluster: cannot save a block from another node");
    }
}

/// Blocks Redis has that this node lacks (or that end later) are taken; blocks this
/// node has that Redis lacks (or that end later here) are written and announced.
/// The latest blocklist results are applied on the way.
pub(super) async fn merge(
    client: &redis::Client,
    node: &str,
    clock: &Clock,
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
    super::listings::merge(&mut c, reputation, node).await?;
    let now = clock.now();
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
            let change = BlockChange {
                ip: b.ip,
                site: b.site.clone(),
                block: Some(b),
            };
            write(&mut c, node, clock.now(), change).await?;
            given += 1;
        }
    }
    Ok((taken, given))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_block_key_outlives_the_block_by_a_week_as_the_clock_moves() {
        let clock = Clock::manual(1_800_000_000_000);
        let expires_at = clock.now() + 3600;
        assert_eq!(key_ttl(expires_at, clock.now()), 3600 + KEEP_AFTER_EXPIRY);
        clock.advance(Duration::from_secs(1800));
        assert_eq!(key_ttl(expires_at, clock.now()), 1800 + KEEP_AFTER_EXPIRY);
        // Written after it ended (a merge of an old block): its strikes still last a week.
        clock.advance(Duration::from_secs(7200));
        assert_eq!(key_ttl(expires_at, clock.now()), KEEP_AFTER_EXPIRY);
    }
}
