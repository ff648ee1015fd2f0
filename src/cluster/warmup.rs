//! Warmup counts per UTC day: every second, this node's new warmup messages go into the
//! day's totals in Redis, and the totals come back, so that an IP's cap holds for all
//! nodes together (overshoot at most what the nodes send within that second).

use std::time::Duration;

use super::connection::Conn;
use crate::reputation::Reputation;
use crate::site::Site;

/// Warmup totals per UTC day: `sidestep:warmup:<day>`, fields `<ip>|<site>`.
const PREFIX: &str = "sidestep:warmup:";

/// Every second: this node's new warmup messages go into the day's totals, and the
/// totals come back.
pub(super) async fn sync(client: redis::Client, reputation: Reputation) {
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
        let key = format!("{PREFIX}{day}");
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
