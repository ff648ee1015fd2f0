//! `[[shaping]]` for all nodes together: connection leases per site (a sorted set scored
//! by expiry, so a node that dies mid-delivery frees its leases in time) and rates across
//! nodes (GCRA), each taken in one step on the server.

use std::time::Duration;

use redis::AsyncCommands;

use super::connection::Conn;
use crate::clock::Clock;
use crate::routing::Pending;

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
    clock: Clock,
    script: redis::Script,
    rate_script: redis::Script,
    next: std::sync::atomic::AtomicU64,
}

impl SharedSlots {
    pub(super) fn new(client: redis::Client, node: String, clock: Clock) -> Self {
        Self {
            conn: std::sync::Arc::new(Conn::new(client)),
            node,
            clock,
            script: redis::Script::new(TAKE_LEASE),
            rate_script: redis::Script::new(TAKE_RATE),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
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
            let taken: redis::RedisResult<i64> = self
                .script
                .key(&key)
                .arg(self.clock.now_ms())
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
                .arg(self.clock.now_ms())
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
