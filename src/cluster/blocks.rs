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

    /// A private redis-server on a free loopback port, stopped when dropped.
    struct RedisServer(std::process::Child, u16);

    impl RedisServer {
        async fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (Debian package redis-server) must be installed");
            let server = Self(child, port);
            for _ in 0..200 {
                if connect(&server.client()).await.is_ok() {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("redis-server did not start on port {port}");
        }

        fn client(&self) -> redis::Client {
            redis::Client::open(format!("redis://127.0.0.1:{}/0", self.1)).unwrap()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Two nodes on one simulated clock, each learning while the other cannot hear it
    /// (Redis away, or not yet connected): each (re)connection merges both ways, and the
    /// block that ends later wins.
    #[tokio::test]
    async fn a_reconnect_merges_both_ways_and_the_later_expiry_wins() {
        let redis = RedisServer::start().await;
        let client = redis.client();
        let clock = Clock::manual(1_800_000_000_000);
        let (a, b) = (
            Reputation::in_memory_with_clock(vec![], clock.clone()),
            Reputation::in_memory_with_clock(vec![], clock.clone()),
        );
        let (one, two): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let site = Site::from("mx.dest.test");
        let hour = Duration::from_secs(3600);
        a.suspend(one, Some(&site), hour, "node a's").unwrap();
        clock.advance(Duration::from_secs(60));
        b.suspend(two, Some(&site), 2 * hour, "node b's, learned offline")
            .unwrap();

        assert_eq!(merge(&client, "a", &clock, &a).await.unwrap(), (0, 1));
        assert_eq!(
            merge(&client, "b", &clock, &b).await.unwrap(),
            (1, 1),
            "took a's, gave its own"
        );
        assert_eq!(
            merge(&client, "a", &clock, &a).await.unwrap(),
            (1, 0),
            "took b's"
        );
        for node in [&a, &b] {
            assert!(node.has_block(one, &site) && node.has_block(two, &site));
        }

        // Half an hour on, node b blocks `one` for longer, while node a is away: at a's
        // reconnect the longer block replaces its own, and nothing goes back.
        clock.advance(hour / 2);
        b.suspend(one, Some(&site), 3 * hour, "longer").unwrap();
        assert_eq!(merge(&client, "b", &clock, &b).await.unwrap(), (0, 1));
        assert_eq!(merge(&client, "a", &clock, &a).await.unwrap(), (1, 0));
        let until = |r: &Reputation| {
            r.all_blocks()
                .into_iter()
                .find(|x| x.ip == one)
                .map(|x| x.expires_at)
        };
        assert_eq!(until(&a), Some(clock.now() + 3 * 3600));
        assert_eq!(until(&a), until(&b));

        // Four hours on every block has expired; a merge changes nothing either way.
        clock.advance(4 * hour);
        assert_eq!(merge(&client, "a", &clock, &a).await.unwrap().0, 0);
        assert_eq!(
            a.standing_for(two, &site),
            crate::egress::Standing::Clean,
            "an expired block lets the IP be tried"
        );
    }
}
