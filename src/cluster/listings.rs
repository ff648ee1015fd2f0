//! The blocklist refresh: one node per refresh (a lock key with an expiry elects the
//! checker) asks the lists; its results go out on pub/sub and stay in a key for nodes
//! that join, and the others apply them.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::connection::{Conn, connect};
use crate::reputation::Reputation;

/// The channel the elected checker announces its blocklist results on.
pub(super) const CHANNEL: &str = "sidestep:listings";
/// The lock key of the blocklist refresh: its value names the node that checks.
const CHECKER: &str = "sidestep:listings:checker";
/// The latest blocklist results, for a node that joins.
const LATEST: &str = "sidestep:listings:latest";

/// One node's blocklist results, as they travel.
#[derive(Debug, Serialize, Deserialize)]
struct ListingsAnnouncement {
    node: String,
    outcome: crate::reputation::CheckOutcome,
}

/// The cluster's side of the blocklist refresh.
pub(super) struct SharedListings {
    pub(super) conn: Conn,
    pub(super) node: String,
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
                .arg(CHECKER)
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
            let _: redis::RedisResult<()> = c.set_ex(LATEST, &message, 24 * 3600).await;
            let _: redis::RedisResult<()> = c.publish(CHANNEL, &message).await;
        });
    }
}

/// Applies another node's blocklist results here (persisted on a blocking thread).
pub(super) async fn apply(reputation: &Reputation, node: &str, text: &str) {
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

/// On (re)connecting: the latest results another node published, applied here.
pub(super) async fn merge(
    c: &mut redis::aio::MultiplexedConnection,
    reputation: &Reputation,
    node: &str,
) -> redis::RedisResult<()> {
    let latest: Option<String> = c.get(LATEST).await?;
    if let Some(text) = latest {
        apply(reputation, node, &text).await;
    }
    Ok(())
}
