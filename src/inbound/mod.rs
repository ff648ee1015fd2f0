//! Inbound SMTP: the relay port. `listener` accepts and limits connections, `session`
//! runs the state machine, one file per command group, `policy` decides relay permission.

mod data;
mod ehlo;
mod envelope;
pub mod limits;
mod listener;
pub mod policy;
mod reply;
mod session;
#[cfg(test)]
mod tests;

pub use limits::Sessions;
pub use listener::serve;
pub use reply::Reply;
pub use session::Session;

use std::sync::Arc;

use crate::config::Config;
use crate::queue::QueueHandle;
use crate::spool::Spool;

impl Inbound {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `config` in force for sessions that start from now on.
    pub fn reconfigure(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// What every inbound session shares.
pub struct Inbound {
    /// The configuration sessions start with (`[server]` mostly); a reload swaps it,
    /// sessions under way keep theirs.
    pub config: std::sync::RwLock<Arc<Config>>,
    /// Where accepted messages are made durable before `250`.
    pub spool: Spool,
    /// Tells the scheduler about each accepted message.
    pub queue: QueueHandle,
    /// Becomes `true` when the relay stops: sessions finish their transaction, then say
    /// `421`.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The session table: slots, per-address caps, stress.
    pub sessions: Sessions,
    /// Where a full spool is announced.
    pub alerts: crate::alerts::Alerts,
}
