//! HELO and EHLO: the greeting exchange and the extensions we offer.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Reply, Session};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// EHLO/HELO reset any transaction (RFC 5321 §4.1.4) and record the client's name.
    pub(super) fn ehlo(&mut self, host: &str, esmtp: bool) -> Reply {
        self.txn = None;
        self.helo = Some(host.to_string());
        self.esmtp = esmtp;
        let server = &self.config.server;
        let hostname = server.hostname.clone();
        if !esmtp {
            return Reply::new(250, "", hostname);
        }
        let mut lines = vec![
            hostname.into(),
            "PIPELINING".into(),
            format!("SIZE {}", server.max_message_size.as_u64()).into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "SMTPUTF8".into(),
        ];
        if self.tls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::multiline(250, lines)
    }
}
