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
    /// The mailbox at `url` with the password from the first line of `password_file`
    /// and the roots of `ca_file`, both read now (so that a rotated password is used).
    ///
    /// # Errors
    /// A file cannot be read.
    pub fn open(
        url: ImapUrl,
        password_file: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
        folders: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Mailbox {
            url,
            password: match password_file {
                Some(p) => read(p)?.lines().next().unwrap_or_default().to_string(),
                None => String::new(),
            },
            ca_pem: ca_file.map(read).transpose()?,
            folders,
            timeout,
        })
    }

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
        let mut session = self.login().await?;
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

    /// The messages of the folders that arrived on or after the day of `since` (Unix
    /// seconds; IMAP's SINCE has a day's grain), at most the latest `limit` per folder,
    /// read without marking them seen.
    ///
    /// # Errors
    /// The server could not be reached, refused the login, or broke off.
    pub async fn fetch_since(&self, since: u64, limit: usize) -> Result<Vec<Vec<u8>>, String> {
        tokio::time::timeout(self.timeout, self.fetch_now(since, limit))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    async fn fetch_now(&self, since: u64, limit: usize) -> Result<Vec<Vec<u8>>, String> {
        use futures_util::TryStreamExt;
        let day = time::OffsetDateTime::from_unix_timestamp(since as i64)
            .map_err(|e| e.to_string())?
            .format(time::macros::format_description!(
                "[day]-[month repr:short]-[year]"
            ))
            .map_err(|e| e.to_string())?;
        let mut session = self.login().await?;
        let mut out = Vec::new();
        for folder in &self.folders {
            if let Err(e) = session.examine(folder).await {
                tracing::debug!(folder, error = %e, "report mailbox: no such folder");
                continue;
            }
            let mut uids: Vec<u32> = session
                .uid_search(format!("SINCE {day}"))
                .await
                .map_err(|e| format!("search in {folder}: {e}"))?
                .into_iter()
                .collect();
            uids.sort_unstable();
            let uids = &uids[uids.len().saturating_sub(limit)..];
            if uids.is_empty() {
                continue;
            }
            let set = uids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let fetched: Vec<_> = session
                .uid_fetch(set, "BODY.PEEK[]")
                .await
                .map_err(|e| format!("fetch in {folder}: {e}"))?
                .try_collect()
                .await
                .map_err(|e| format!("fetch in {folder}: {e}"))?;
            out.extend(fetched.iter().filter_map(|f| f.body().map(<[u8]>::to_vec)));
        }
        let _ = session.logout().await;
        Ok(out)
    }

    /// A logged-in session, over TLS for `imaps`.
    async fn login(&self) -> Result<async_imap::Session<Box<dyn Io>>, String> {
        let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.url.host, self.url.port))?;
        let stream: Box<dyn Io> = if self.url.tls {
            let connector =
                crate::tls::client(self.ca_pem.as_deref()).map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
                .map_err(|e| format!("{}: {e}", self.url.host))?;
            Box::new(
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.url.host))?,
            )
        } else {
            Box::new(tcp)
        };
        let mut client = async_imap::Client::new(stream);
        client
            .read_response()
            .await
            .map_err(|e| format!("greeting: {e}"))?
            .ok_or("the server closed the connection before its greeting")?;
        client
            .login(&self.url.user, &self.password)
            .await
            .map_err(|(e, _)| format!("login as {}: {e}", self.url.user))
    }
}

/// A connection to the mailbox, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Io for T {}

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
