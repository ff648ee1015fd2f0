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
}

/// Accepts connections forever. A client beyond `max_sessions` gets `421 4.7.0` and is
/// closed at once, without a task of its own reading its input.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>) {
    let limit = Arc::new(Semaphore::new(inbound.config.server.max_sessions));
    loop {
        let (mut stream, peer) = match listener.accept().await {
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
