//! What became of the messages that left the spool lately, so that `sidestep queue show`
//! of an id that is gone says delivered, bounced or deleted, and when, instead of a bare
//! 404. In memory and bounded (the last [`DEPARTED_MAX`]): about 100 bytes each, a
//! megabyte at most; after a restart, or further back, the log is the record.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{QueueId, QueuedMessage, RecipientStatus};

/// Departed messages remembered at most.
pub const DEPARTED_MAX: usize = 10_000;

/// How a message left the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Departure {
    /// Every recipient delivered.
    Delivered {
        /// How many.
        recipients: usize,
    },
    /// Some or all recipients failed (their sender got a DSN unless it was null).
    Bounced {
        /// Recipients delivered.
        delivered: usize,
        /// Recipients failed.
        failed: usize,
    },
    /// The operator deleted it, quietly or with a DSN.
    Deleted {
        /// With a DSN to the sender.
        bounced: bool,
    },
}

impl Departure {
    /// The departure of a message whose every recipient is final.
    pub fn of(msg: &QueuedMessage) -> Self {
        let count = |f: fn(&RecipientStatus) -> bool| {
            msg.recipients.iter().filter(|r| f(&r.status)).count()
        };
        let delivered = count(|s| matches!(s, RecipientStatus::Delivered { .. }));
        let failed = count(|s| matches!(s, RecipientStatus::Failed { .. }));
        if failed == 0 {
            Self::Delivered {
                recipients: delivered,
            }
        } else {
            Self::Bounced { delivered, failed }
        }
    }
}

impl std::fmt::Display for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Delivered { recipients } => write!(f, "delivered ({recipients} recipient(s))"),
            Self::Bounced { delivered, failed } => {
                write!(
                    f,
                    "bounced ({failed} recipient(s) failed, {delivered} delivered)"
                )
            }
            Self::Deleted { bounced: true } => write!(f, "deleted by the operator, DSN sent"),
            Self::Deleted { bounced: false } => write!(f, "deleted by the operator"),
        }
    }
}

/// One message that left the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    /// Its queue id.
    pub id: QueueId,
    /// When (Unix seconds).
    pub at: u64,
    /// How.
    #[serde(flatten)]
    pub departure: Departure,
}

/// The last [`DEPARTED_MAX`] departures, oldest first.
#[derive(Default)]
pub(super) struct DepartedLog {
    inner: Mutex<VecDeque<Departed>>,
}

impl DepartedLog {
    pub(super) fn note(&self, departed: Departed) {
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= DEPARTED_MAX {
            log.pop_front();
        }
        log.push_back(departed);
    }

    /// The latest departure of `id`, if it is still remembered. A linear search of at
    /// most 10,000 entries: an operator's command, not a hot path.
    pub(super) fn find(&self, id: &QueueId) -> Option<Departed> {
        let log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().rev().find(|d| d.id == *id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_latest_departures_only() {
        let log = DepartedLog::default();
        for i in 0..DEPARTED_MAX + 1 {
            log.note(Departed {
                id: QueueId::from(format!("id{i}").as_str()),
                at: i as u64,
                departure: Departure::Deleted { bounced: false },
            });
        }
        assert_eq!(
            log.find(&QueueId::from("id0")),
            None,
            "the oldest is forgotten"
        );
        let last = log.find(&QueueId::from(format!("id{DEPARTED_MAX}").as_str()));
        assert_eq!(last.map(|d| d.at), Some(DEPARTED_MAX as u64));
    }
}
