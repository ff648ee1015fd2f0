//! Sender suspensions and releases: a suspension is a key without expiry (it lasts until
//! released), a release deletes it; both are announced. On (re)connecting, the node takes
//! the union of Redis's suspensions and its own.

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::connection::{Conn, connect, keys};
use crate::senders::{SenderChange, Senders, Suspension};

/// The channel sender suspensions and releases are announced on.
pub(super) const CHANNEL: &str = "sidestep:senders";
/// Keys of suspended senders: `sidestep:sender:<user:NAME|domain:NAME>`.
const PREFIX: &str = "sidestep:sender:";

/// One node's suspension or release of a sender, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct SenderAnnouncement {
    node: String,
    change: SenderChange,
}

/// Writes each local suspension or release to Redis and announces it.
pub(super) async fn publish(
    client: redis::Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<SenderChange>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let Some(mut c) = conn.get().await else {
            continue;
        };
        if write(&mut c, &node, change).await.is_err() {
            conn.reset().await;
        }
    }
}

async fn write(
    c: &mut redis::aio::MultiplexedConnection,
    node: &str,
    change: SenderChange,
) -> redis::RedisResult<()> {
    let k = format!("{PREFIX}{}", change.sender);
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
    let _: () = c.publish(CHANNEL, message).await?;
    Ok(())
}

/// Another node's suspension or release, applied here.
pub(super) fn apply(senders: &Senders, node: &str, text: &str) {
    if let Ok(a) = serde_json::from_str::<SenderAnnouncement>(text)
        && a.node != node
    {
        senders.apply_remote(a.change);
    }
}

/// Suspensions: the union of Redis's and this node's (a release made while Redis was
/// away is undone by another node's record of the suspension: release it again).
pub(super) async fn merge(
    client: &redis::Client,
    node: &str,
    senders: &Senders,
) -> redis::RedisResult<()> {
    let mut c = connect(client).await?;
    let mut remote = std::collections::BTreeSet::new();
    for k in keys(&mut c, PREFIX).await? {
        let value: Option<String> = c.get(&k).await?;
        if let Some(s) = value.and_then(|v| serde_json::from_str::<Suspension>(&v).ok()) {
            remote.insert(s.sender.clone());
            senders.apply_remote(SenderChange {
                sender: s.sender.clone(),
                suspension: Some(s),
            });
        }
    }
    for s in senders.suspensions() {
        if !remote.contains(&s.sender) {
            let change = SenderChange {
                sender: s.sender.clone(),
                suspension: Some(s),
            };
            write(&mut c, node, change).await?;
        }
    }
    Ok(())
}
