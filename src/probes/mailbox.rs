//! The seed mailbox over IMAP: where a probe landed (inbox, junk) or that it did not.
//! async-imap speaks the protocol; this file only says what to ask.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// `imaps://user@host[:port]` or `imap://user@host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapUrl {
    /// TLS from the first byte (`imaps`).
    pub tls: bool,
    /// The login name (percent-decoded).
    pub user: String,
    /// The server's name or address.
    pub host: String,
    /// 993 for `imaps`, 143 for `imap` unless given.
    pub port: u16,
}

impl ImapUrl {
    /// Parses the `[probes] imap` setting.
    ///
    /// # Errors
    /// Not an `imap://` or `imaps://` URL with a user and a host.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("imaps://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("imap://") {
            (false, r)
        } else {
            return Err("must start with imaps:// (or imap:// for a loopback server)".into());
        };
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = rest
            .rsplit_once('@')
            .ok_or("needs the user: imaps://user@host")?;
        if user.is_empty() {
            return Err("the user is empty".into());
        }
        let default_port = if tls { 993 } else { 143 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("bad port {p:?}"))?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        Ok(Self {
            tls,
            user: percent_decode(user),
            host,
            port,
        })
    }

    /// Whether the server is on this machine (the only place plain `imap://` may go).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// `%40` in a user name (`seeds%40example.net`) is `@`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a probe was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The folder it was in.
    pub folder: String,
    /// Not the first folder (the inbox): the receiver filed it as junk.
    pub junk: bool,
}

/// How to reach the mailbox.
pub struct Mailbox {
    /// Where, and as whom.
    pub url: ImapUrl,
    /// The login password.
    pub password: String,
    /// PEM roots for `imaps` instead of the system's.
    pub ca_pem: Option<String>,
    /// Folders to look in, inbox first.
    pub folders: Vec<String>,
    /// For the whole conversation.
    pub timeout: Duration,
}

impl Mailbox {
    /// Looks for each token in the folders (header `X-Sidestep-Probe`): the ones found,
    /// and where.
    ///
    /// # Errors
    /// The server could not be reached, refused the login, or broke off.
    pub async fn find(&self, tokens: &[String]) -> Result<HashMap<String, Found>, String> {
        if tokens.is_empty() {
            return Ok(HashMap::new());
        }
        tokio::time::timeout(self.timeout, self.find_now(tokens))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    async fn find_now(&self, tokens: &[String]) -> Result<HashMap<String, Found>, String> {
        let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.url.host, self.url.port))?;
        if !self.url.tls {
            return self.search(tcp, tokens).await;
        }
        let connector = crate::outbound::tls_client(self.ca_pem.as_deref())?;
        let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
            .map_err(|e| format!("{}: {e}", self.url.host))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.url.host))?;
        self.search(tls, tokens).await
    }

    async fn search<T>(
        &self,
        stream: T,
        tokens: &[String],
    ) -> Result<HashMap<String, Found>, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
    {
        let mut client = async_imap::Client::new(stream);
        client
            .read_response()
            .await
            .map_err(|e| format!("greeting: {e}"))?
            .ok_or("the server closed the connection before its greeting")?;
        let mut session = client
            .login(&self.url.user, &self.password)
            .await
            .map_err(|(e, _)| format!("login as {}: {e}", self.url.user))?;
        let mut found = HashMap::new();
        for (i, folder) in self.folders.iter().enumerate() {
            if let Err(e) = session.examine(folder).await {
                tracing::debug!(folder, error = %e, "probe mailbox: no such folder");
                continue;
            }
            for token in tokens {
                if found.contains_key(token) {
                    continue;
                }
                let hits = session
                    .search(format!("HEADER X-Sidestep-Probe {token}"))
                    .await
                    .map_err(|e| format!("search in {folder}: {e}"))?;
                if !hits.is_empty() {
                    found.insert(
                        token.clone(),
                        Found {
                            folder: folder.clone(),
                            junk: i > 0,
                        },
                    );
                }
            }
        }
        let _ = session.logout().await;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_tls_ports_and_encoded_users() {
        let u = ImapUrl::parse("imaps://seeds%40example.net@imap.example.net").unwrap();
        assert_eq!(
            u,
            ImapUrl {
                tls: true,
                user: "seeds@example.net".into(),
                host: "imap.example.net".into(),
                port: 993
            }
        );
        assert!(!u.is_loopback());
        let u = ImapUrl::parse("imap://seeds@127.0.0.1:1143").unwrap();
        assert_eq!((u.tls, u.port), (false, 1143));
        assert!(u.is_loopback());
        let u = ImapUrl::parse("imap://seeds@[::1]:1143/").unwrap();
        assert_eq!(u.host, "::1");
        assert!(u.is_loopback());
        for bad in [
            "https://x@y",
            "imaps://imap.example.net",
            "imaps://@h",
            "imaps://u@h:port",
        ] {
            assert!(ImapUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
