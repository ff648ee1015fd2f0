//! How sessions, attempts and the stop talk to the scheduler: events over a channel.

use tokio::sync::mpsc;

use crate::spool::{QueueId, QueuedMessage};

/// What the scheduler is told.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message should be attempted at `at_ms` (Unix ms): new, recovered, or a DSN.
    Due {
        /// The message.
        id: QueueId,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// An attempt ended; `next_ms` is the retry time, `None` when the message left the
    /// spool. `waiting_for_egress`: retry as soon as an egress IP becomes usable.
    Finished {
        /// The message.
        id: QueueId,
        /// The next due time (Unix ms); `None` once it left the spool.
        next_ms: Option<u64>,
        /// Retry as soon as an egress IP becomes usable.
        waiting_for_egress: bool,
    },
    /// The relay is stopping: start no more attempts; answer once none is running.
    Drain(tokio::sync::oneshot::Sender<()>),
    /// The messages with an attempt under way, for the admin API.
    InFlight(tokio::sync::oneshot::Sender<Vec<QueueId>>),
}

/// Cheap handle to tell the scheduler about new messages.
#[derive(Clone)]
pub struct QueueHandle {
    pub(super) tx: mpsc::UnboundedSender<QueueEvent>,
}

impl QueueHandle {
    /// A handle and the receiving end of its events, for tests that play the scheduler.
    #[cfg(test)]
    pub(crate) fn for_test() -> (Self, mpsc::UnboundedReceiver<QueueEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Stops starting attempts and waits until the ones under way have finished (their
    /// results recorded). Messages due meanwhile stay spooled for the next start.
    pub async fn drain(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(QueueEvent::Drain(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the scheduler still takes events.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The messages with an attempt under way now.
    pub async fn in_flight(&self) -> Vec<QueueId> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(QueueEvent::InFlight(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// A message was just made durable; schedule it.
    pub fn enqueued(&self, msg: &QueuedMessage) {
        let _ = self.tx.send(QueueEvent::Due {
            id: msg.id.clone(),
            at_ms: msg.next_attempt_ms,
        });
    }
}
