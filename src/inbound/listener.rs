//! The accept loop: one task per session, at most `max_sessions` at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Session;
use crate::config::Config;
use crate::queue::QueueHandle;
use crate::spool::Spool;

/// What every inbound session shares.
pub struct Inbound {
    pub config: Arc<Config>,
    pub spool: Spool,
    pub queue: QueueHandle,
    /// Becomes `true` when the relay stops: sessions finish their transaction, then say
    /// `421`.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The accept loop's sessions, for a stop that waits for them.
#[derive(Clone)]
pub struct Sessions {
    limit: Arc<Semaphore>,
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Self {
        Self {
            limit: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Sessions still running.
    pub fn running(&self) -> usize {
        self.max - self.limit.available_permits()
    }

    /// Waits until every session has ended.
    pub async fn ended(&self) {
        let _ = self.limit.acquire_many(self.max as u32).await;
    }
}

/// Accepts connections until the relay stops. A client beyond `max_sessions` gets
/// `421 4.7.0` and is closed at once, without a task of its own reading its input.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, sessions: Sessions) {
    let limit = sessions.limit.clone();
    let mut stopping = inbound.stopping.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => {
                // Dropping the listener closes the port: new clients are refused by the
                // kernel, and their MTA tries another relay or later.
                return;
            }
        };
        let (mut stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let inbound = inbound.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = Session::new(stream, inbound, peer).run().await {
                        tracing::debug!(client = %peer, error = %e, "session ended");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(client = %peer, "too many sessions, refusing");
                let hostname = inbound.config.server.hostname.clone();
                tokio::spawn(async move {
                    let msg =
                        format!("421 4.7.0 {hostname} Too many connections, try again later\r\n");
                    let _ = stream.write_all(msg.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        }
    }
}
