//! Sender quotas: every second, the quota this node took goes to the others (news only),
//! and they take it too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::connection::{Conn, announce};
use crate::senders::Senders;

/// The channel quota takes travel on.
pub(super) const CHANNEL: &str = "sidestep:quota";

/// One node's quota takes of the last second, as they travel.
#[derive(Debug, Serialize, Deserialize)]
struct QuotaAnnouncement {
    node: String,
    takes: Vec<crate::senders::QuotaTake>,
}

/// Every second: the quota this node took goes to the others (they take it too).
pub(super) async fn publish(client: redis::Client, node: String, senders: Senders) {
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
        announce(&conn, CHANNEL, message).await;
    }
}

/// Another node's takes, taken here too.
pub(super) fn apply(senders: &Senders, node: &str, text: &str) {
    if let Ok(a) = serde_json::from_str::<QuotaAnnouncement>(text)
        && a.node != node
    {
        senders.apply_takes(&a.takes);
        if !a.takes.is_empty() {
            tracing::debug!(node = %a.node, takes = a.takes.len(), "quota taken by another node: applied");
        }
    }
}
