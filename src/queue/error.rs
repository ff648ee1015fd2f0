//! The queue's own failures: the spool's, and a blocking spool task that did not finish.

use crate::spool::SpoolError;

/// Why an attempt (or an operator's command) could not read or record a message.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A blocking read or write of the spool did not finish (its thread panicked).
    #[error("a spool task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}
