//! How sessions, attempts and the stop talk to the scheduler: events over a channel.

use tokio::sync::mpsc;

use crate::spool::{QueueId, QueuedMessage};

/// What the scheduler is told.
pub enum QueueEvent {
    /// A message should be attempted at `at_ms` (Unix ms): new, recovered, or a DSN.
    Due {
        /// The message.
        id: QueueId,
        /// When (Unix ms).
        at_ms: u64,
        /// Its (first) recipient domain, so that the scheduler never starts more attempts
        /// for one domain than it has connections.
        domain: Option<String>,
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
        /// Park it with this site, which is down; `next_ms` is the site's next probe.
        parked: Option<crate::site::Site>,
        /// Sites that answered again: release their parked mail.
        recovered: Vec<crate::site::Site>,
        /// Its site reached no server: go when the site answers again.
        waits_for: Option<crate::site::Site>,
    },
    /// The relay is stopping: start no more attempts; answer once none is running.
    Drain(tokio::sync::oneshot::Sender<()>),
    /// The messages with an attempt under way, for the admin API.
    InFlight(tokio::sync::oneshot::Sender<Vec<QueueId>>),
    /// Attempts from now on run in this context (a reloaded configuration).
    Reconfigure(std::sync::Arc<super::context::QueueContext>),
    /// How many messages are under way and how many wait for their due time.
    Sizes(tokio::sync::oneshot::Sender<(usize, usize)>),
    /// An operator's command; the reply says which messages it touched.
    Control {
        /// What to do.
        command: Control,
        /// The messages acted on (not those with an attempt under way).
        reply: tokio::sync::oneshot::Sender<ControlOutcome>,
    },
}

/// What an operator asks of the scheduler.
#[derive(Debug, Clone)]
pub enum Control {
    /// Attempt these now instead of at their due time.
    Flush(Vec<QueueId>),
    /// Stop scheduling this message (hold, or before a delete). While an attempt is under
    /// way the message is reported busy, and the scheduler carries out the command when
    /// the attempt ends instead of scheduling it again.
    Forget(QueueId, super::operator::AfterAttempt),
    /// Schedule this message now (a release).
    Schedule(QueueId),
    /// This site answered another node: its parked mail goes now.
    SiteUp(crate::site::Site),
}

/// What a [`Control`] did.
#[derive(Debug, Clone, Default)]
pub struct ControlOutcome {
    /// The messages it applied to.
    pub done: Vec<QueueId>,
    /// The messages left alone because an attempt is under way.
    pub busy: Vec<QueueId>,
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

    /// Sends an operator's command to the scheduler and waits for what it did.
    pub async fn control(&self, command: Control) -> ControlOutcome {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(QueueEvent::Control { command, reply })
            .is_err()
        {
            return ControlOutcome::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Messages with an attempt under way, and messages waiting for their due time.
    pub async fn sizes(&self) -> (usize, usize) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(QueueEvent::Sizes(tx)).is_err() {
            return (0, 0);
        }
        rx.await.unwrap_or_default()
    }

    /// Runs attempts from now on in `ctx` (a reloaded configuration).
    pub fn reconfigure(&self, ctx: std::sync::Arc<super::context::QueueContext>) {
        let _ = self.tx.send(QueueEvent::Reconfigure(ctx));
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
            domain: msg
                .pending()
                .next()
                .map(|r| r.address.domain().to_ascii_lowercase()),
        });
    }
}
