//! The accept loop: one task per session, admitted by the session table
//! ([`super::limits`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::{Inbound, Session, policy};

/// Accepts connections until the relay stops. A client beyond `max_sessions` gets
/// `421 4.7.0` and is closed at once, without a task of its own reading its input.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>) {
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
        let config = inbound.config();
        let permitted = policy::may_relay(peer.ip(), &config.server.relay_networks);
        match inbound.sessions.admit(peer.ip(), permitted) {
            Ok(admission) => {
                let inbound = inbound.clone();
                tokio::spawn(async move {
                    let _admission = admission;
                    if let Err(e) = Session::new(stream, inbound, peer).run().await {
                        tracing::debug!(client = %peer, error = %e, "session ended");
                    }
                });
            }
            Err(refusal) => {
                tracing::warn!(client = %peer, why = ?refusal, "connection refused");
                let hostname = config.server.hostname.clone();
                tokio::spawn(async move {
                    let msg = format!("421 4.7.0 {hostname} {}\r\n", refusal.reply_text());
                    let _ = stream.write_all(msg.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        }
    }
}
