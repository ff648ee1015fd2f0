//! The accept loop: one task per session, admitted by the session table
//! ([`super::limits`]).

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

use tokio::net::{TcpListener, TcpStream};

use super::{Ending, Inbound, Session, policy};

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a listener speaks TLS from the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Plain SMTP, with STARTTLS when a certificate is configured.
    Plain,
    /// Implicit TLS (submissions, RFC 8314).
    Tls,
}

/// Runs one session: TLS first on an implicit-TLS port; after a STARTTLS, the handshake
/// and a fresh session under TLS.
async fn session(stream: TcpStream, inbound: Arc<Inbound>, peer: SocketAddr, port: Port) {
    let (stream, greet) = match port {
        Port::Tls => (stream, true),
        Port::Plain => match Session::new(stream, inbound.clone(), peer).run().await {
            Ok(Ending::Closed) => return,
            Ok(Ending::StartTls(stream)) => (stream, false),
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "session ended");
                return;
            }
        },
    };
    let Some(acceptor) = inbound.security().tls.clone() else {
        return;
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let how = super::tls::describe(tls.get_ref().1);
    tracing::debug!(client = %peer, tls = %how, "TLS established");
    if let Err(e) = Session::new(tls, inbound, peer)
        .under_tls(how, greet)
        .run()
        .await
    {
        tracing::debug!(client = %peer, error = %e, "session ended");
    }
}

/// Accepts connections until the relay stops. A client beyond `max_sessions` gets
/// `421 4.7.0` and is closed at once, without a task of its own reading its input.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, port: Port) {
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
                    session(stream, inbound, peer, port).await;
                });
            }
            Err(refusal) if port == Port::Tls => {
                // No TLS session to say 421 in: closed.
                tracing::warn!(client = %peer, why = ?refusal, "connection refused");
                drop(stream);
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
