//! The subscriber: listens for other nodes' news and hands each message to its concern;
//! on every (re)connection first merges with what Redis holds. Retries every second
//! while Redis is away.

use std::time::Duration;

use super::connection::REDIS_TIMEOUT;
use super::{Sites, Status, blocks, listings, quota, sites, suppressions, suspensions};
use crate::clock::Clock;
use crate::reputation::Reputation;

/// Every channel the subscriber listens on.
const CHANNELS: [&str; 6] = [
    blocks::CHANNEL,
    listings::CHANNEL,
    suspensions::CHANNEL,
    suppressions::CHANNEL,
    sites::CHANNEL,
    quota::CHANNEL,
];

/// What the messages are applied to.
pub(super) struct Subscriber {
    pub(super) client: redis::Client,
    pub(super) node: String,
    pub(super) clock: Clock,
    pub(super) reputation: Reputation,
    pub(super) senders: crate::senders::Senders,
    pub(super) sites: std::sync::Arc<Sites>,
    pub(super) suppressions: std::sync::Arc<std::sync::OnceLock<crate::suppression::Suppressions>>,
    pub(super) status: std::sync::Arc<Status>,
}

impl Subscriber {
    /// Listens until Redis goes, marks the node degraded (logged once), and tries again
    /// a second later.
    pub(super) async fn run(self) {
        let mut degraded = false;
        loop {
            let pubsub = tokio::time::timeout(REDIS_TIMEOUT * 4, self.client.get_async_pubsub())
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "no answer from Redis",
                    )))
                });
            match pubsub {
                Ok(pubsub) => self.listen(pubsub, &mut degraded).await,
                Err(e) => {
                    if !degraded {
                        tracing::error!(error = %e, "cluster: Redis unreachable; degraded (delivering on what this node knows)");
                    }
                }
            }
            if !degraded {
                tracing::error!(
                    "cluster: lost Redis; degraded (delivering on what this node knows)"
                );
            }
            degraded = true;
            self.status.set_degraded(true);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Subscribes, merges, then applies messages until the connection ends.
    async fn listen(&self, mut pubsub: redis::aio::PubSub, degraded: &mut bool) {
        use futures_util::StreamExt;
        if let Err(e) = pubsub.subscribe(&CHANNELS).await {
            tracing::debug!(error = %e, "cluster: subscribe failed");
            return;
        }
        self.merge(degraded).await;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            self.dispatch(msg.get_channel_name(), &text).await;
        }
    }

    /// Suspensions and blocks (with the latest blocklist results) merged with Redis's;
    /// the node is connected once the blocks are.
    async fn merge(&self, degraded: &mut bool) {
        if let Err(e) = suspensions::merge(&self.client, &self.node, &self.senders).await {
            tracing::warn!(error = %e, "cluster: merging sender suspensions failed");
        }
        if let Some(list) = self.suppressions.get()
            && let Err(e) = suppressions::merge(&self.client, &self.clock, list).await
        {
            tracing::warn!(error = %e, "cluster: merging the suppression list failed");
        }
        match blocks::merge(&self.client, &self.node, &self.clock, &self.reputation).await {
            Ok((taken, given)) => {
                if *degraded {
                    tracing::warn!(taken, given, "cluster: Redis is back; state merged");
                } else {
                    tracing::info!(taken, given, "cluster: connected; state merged");
                }
                *degraded = false;
                self.status.set_degraded(false);
            }
            Err(e) => tracing::warn!(error = %e, "cluster: merge failed"),
        }
    }

    /// One message, to the concern of its channel.
    async fn dispatch(&self, channel: &str, text: &str) {
        let node = self.node.as_str();
        match channel {
            blocks::CHANNEL => blocks::apply(&self.reputation, node, text),
            listings::CHANNEL => listings::apply(&self.reputation, node, text).await,
            suspensions::CHANNEL => suspensions::apply(&self.senders, node, text),
            suppressions::CHANNEL => suppressions::apply(self.suppressions.get(), node, text),
            sites::CHANNEL => sites::apply(&self.sites, node, &self.clock, text).await,
            quota::CHANNEL => quota::apply(&self.senders, node, text),
            _ => {}
        }
    }
}
