//! The suppression list: an entry is a key that expires when the entry does (Redis
//! forgets it on its own), a removal deletes the keys; both are announced. A node applies
//! the others' changes to its list and its file, so a restart while Redis is away still
//! refuses what another node suppressed. On (re)connecting, the node takes Redis's
//! entries and writes back those only it has (a removal made while this node was away
//! is undone by its own record of the entry: remove it again).

use std::sync::Arc;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::connection::{Conn, connect, keys};
use crate::clock::Clock;
use crate::suppression::{Change, Entry, SharedSuppressions, Suppressions};

/// The channel suppressions and removals are announced on.
pub(super) const CHANNEL: &str = "sidestep:suppressions";
/// Keys of entries: `sidestep:suppression:<scope>:<address>` (a scope is a domain or
/// `*`, never with a colon).
const PREFIX: &str = "sidestep:suppression:";

/// One node's change, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    node: String,
    change: Change,
}

/// What the list publishes through: a channel to [`publish`] (the list's callers are
/// synchronous and must not wait for Redis).
pub(super) struct Publisher {
    tx: mpsc::UnboundedSender<Change>,
}

impl SharedSuppressions for Publisher {
    fn publish(&self, change: &Change) {
        let _ = self.tx.send(change.clone());
    }
}

impl Publisher {
    /// A publisher, and the receiving end for [`publish`].
    pub(super) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { tx }), rx)
    }
}

/// Writes each local change to Redis and announces it.
pub(super) async fn publish(
    client: redis::Client,
    node: String,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<Change>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let Some(mut c) = conn.get().await else {
            continue;
        };
        if write(&mut c, &node, &clock, change).await.is_err() {
            conn.reset().await;
        }
    }
}

fn key(e: &Entry) -> String {
    format!("{PREFIX}{}:{}", e.scope, e.address)
}

/// The entry's key for the time it has left (an expired one is not written).
async fn store(
    c: &mut redis::aio::MultiplexedConnection,
    clock: &Clock,
    e: &Entry,
) -> redis::RedisResult<()> {
    let ttl = e.expires.saturating_sub(clock.now());
    if ttl > 0 {
        let _: () = c
            .set_ex(key(e), serde_json::to_string(e).unwrap_or_default(), ttl)
            .await?;
    }
    Ok(())
}

async fn write(
    c: &mut redis::aio::MultiplexedConnection,
    node: &str,
    clock: &Clock,
    change: Change,
) -> redis::RedisResult<()> {
    match &change {
        Change::Add(e) => store(c, clock, e).await?,
        Change::Remove { address, scope } => {
            let gone: Vec<String> = match scope {
                Some(scope) => vec![format!("{PREFIX}{scope}:{address}")],
                None => keys(c, PREFIX)
                    .await?
                    .into_iter()
                    .filter(|k| {
                        k.strip_prefix(PREFIX)
                            .and_then(|rest| rest.split_once(':'))
                            .is_some_and(|(_, a)| a == address)
                    })
                    .collect(),
            };
            if !gone.is_empty() {
                let _: () = c.del(gone).await?;
            }
        }
    }
    let message = serde_json::to_string(&Announcement {
        node: node.to_string(),
        change,
    })
    .unwrap_or_default();
    let _: () = c.publish(CHANNEL, message).await?;
    Ok(())
}

/// Another node's change, applied here.
pub(super) fn apply(list: Option<&Suppressions>, node: &str, text: &str) {
    let Some(list) = list else {
        return;
    };
    if let Ok(a) = serde_json::from_str::<Announcement>(text)
        && a.node != node
    {
        tracing::info!(from = %a.node, change = ?a.change, "suppression list changed by another node");
        if let Err(e) = list.record_replicated(&a.change) {
            tracing::error!(error = %e, "cannot write another node's suppression change");
        }
    }
}

/// The list: the union of Redis's entries and this node's. Returns (taken, given).
pub(super) async fn merge(
    client: &redis::Client,
    clock: &Clock,
    list: &Suppressions,
) -> redis::RedisResult<(usize, usize)> {
    let mut c = connect(client).await?;
    let mut remote = std::collections::BTreeSet::new();
    let mut taken = 0;
    for k in keys(&mut c, PREFIX).await? {
        let value: Option<String> = c.get(&k).await?;
        let Some(e) = value.and_then(|v| serde_json::from_str::<Entry>(&v).ok()) else {
            continue;
        };
        remote.insert((e.scope.clone(), e.address.clone()));
        if list.check(Some(&e.scope), &e.address).as_ref() != Some(&e) {
            taken += 1;
            if let Err(err) = list.record_replicated(&Change::Add(e)) {
                tracing::error!(error = %err, "cannot write a suppression taken from Redis");
            }
        }
    }
    let mut given = 0;
    for e in list.list() {
        if !remote.contains(&(e.scope.clone(), e.address.clone())) {
            store(&mut c, clock, &e).await?;
            given += 1;
        }
    }
    Ok((taken, given))
}
