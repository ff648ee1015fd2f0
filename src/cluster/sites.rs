//! Site-down marks: a site marked down or seen up again on one node is announced (news
//! only, no key); another node's mark is applied to the site health here, and a site up
//! again releases the mail parked for it.

use tokio::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::connection::{Conn, announce};
use crate::clock::Clock;
use crate::routing::HealthChange;

/// The channel sites marked down or seen up again are announced on.
pub(super) const CHANNEL: &str = "sidestep:sites";

/// What the cluster needs of parts made after it starts: the site health (marks down and
/// up) and the queue (to release parked mail when another node sees a site up).
#[derive(Default)]
pub struct Sites {
    pub(super) health: std::sync::OnceLock<std::sync::Arc<crate::routing::SiteHealth>>,
    pub(super) queue: std::sync::OnceLock<crate::queue::QueueHandle>,
}

/// One node's site mark, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct SiteAnnouncement {
    node: String,
    change: HealthChange,
}

/// Announces each local mark.
pub(super) async fn publish(
    client: redis::Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<HealthChange>,
) {
    let conn = Conn::new(client);
    while let Some(change) = rx.recv().await {
        let message = serde_json::to_string(&SiteAnnouncement {
            node: node.clone(),
            change,
        });
        announce(&conn, CHANNEL, message).await;
    }
}

/// Another node's site mark: applied to the health here; a site up again releases the
/// mail parked for it.
pub(super) async fn apply(sites: &Sites, node: &str, clock: &Clock, text: &str) {
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
    if health.apply_remote(a.change, clock.now_ms())
        && let Some(queue) = sites.queue.get()
    {
        queue.control(crate::queue::Control::SiteUp(site)).await;
    }
}
