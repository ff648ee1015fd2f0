//! The seed mailbox over IMAP: where a probe landed (inbox, junk) or that it did not.
//! async-imap speaks the protocol; this file only says what to ask.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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

/// Why a `[probes] imap` (or `[complaints] imap`) value is not an IMAP URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImapUrlError {
    /// Neither `imaps://` nor `imap://`.
    #[error("must start with imaps:// (or imap:// for a loopback server)")]
    Scheme,
    /// No `user@`.
    #[error("needs the user: imaps://user@host")]
    NoUser,
    /// `@` with nothing before it.
    #[error("the user is empty")]
    EmptyUser,
    /// `[::1` without its `]`.
    #[error("unclosed [ in the host")]
    UnclosedBracket,
    /// The port is not a number from 0 to 65535.
    #[error("bad port {0:?}")]
    BadPort(String),
    /// Nothing between `@` and the port.
    #[error("the host is empty")]
    EmptyHost,
}

/// What went wrong reading a mailbox.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The password or CA file could not be read.
    #[error("{}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The whole conversation took longer than the mailbox's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The `since` time is not a date IMAP can be asked about.
    #[error("{0}")]
    Date(String),
    /// The TCP connection failed.
    #[error("connecting to {host}:{port}: {source}")]
    Connect {
        /// The server's name or address.
        host: String,
        /// Its port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// No TLS client could be set up (the CA file does not hold roots).
    #[error(transparent)]
    TlsSetup(#[from] crate::tls::TlsError),
    /// The host is not a name TLS can check.
    #[error("{host}: {source}")]
    ServerName {
        /// The server's name.
        host: String,
        /// Why.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake failed.
    #[error("TLS with {host}: {source}")]
    Handshake {
        /// The server's name.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The greeting could not be read.
    #[error("greeting: {0}")]
    Greeting(std::io::Error),
    /// The server hung up before greeting.
    #[error("the server closed the connection before its greeting")]
    ClosedBeforeGreeting,
    /// The server refused the login.
    #[error("login as {user}: {source}")]
    Login {
        /// The login name.
        user: String,
        /// The server's answer.
        source: async_imap::error::Error,
    },
    /// A SEARCH failed.
    #[error("search in {folder}: {source}")]
    Search {
        /// The folder searched.
        folder: String,
        /// Why.
        source: async_imap::error::Error,
    },
    /// A FETCH failed.
    #[error("fetch in {folder}: {source}")]
    Fetch {
        /// The folder read.
        folder: String,
        /// Why.
        source: async_imap::error::Error,
    },
}

impl ImapUrl {
    /// Parses the `[probes] imap` setting.
    ///
    /// # Errors
    /// Not an `imap://` or `imaps://` URL with a user and a host.
    pub fn parse(s: &str) -> Result<Self, ImapUrlError> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("imaps://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("imap://") {
            (false, r)
        } else {
            return Err(ImapUrlError::Scheme);
        };
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = rest.rsplit_once('@').ok_or(ImapUrlError::NoUser)?;
        if user.is_empty() {
            return Err(ImapUrlError::EmptyUser);
        }
        let default_port = if tls { 993 } else { 143 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(ImapUrlError::UnclosedBracket)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| ImapUrlError::BadPort(p.into()))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| ImapUrlError::BadPort(p.into()))?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(ImapUrlError::EmptyHost);
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
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
        folders: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, MailboxError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| MailboxError::ReadFile {
                path: p.to_path_buf(),
                source,
            })
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
    pub async fn find(&self, tokens: &[String]) -> Result<HashMap<String, Found>, MailboxError> {
        if tokens.is_empty() {
            return Ok(HashMap::new());
        }
        tokio::time::timeout(self.timeout, self.find_now(tokens))
            .await
            .map_err(|_| MailboxError::Timeout(self.timeout))?
    }

    async fn find_now(&self, tokens: &[String]) -> Result<HashMap<String, Found>, MailboxError> {
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
                    .map_err(|source| MailboxError::Search {
                        folder: folder.clone(),
                        source,
                    })?;
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
    pub async fn fetch_since(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, MailboxError> {
        tokio::time::timeout(self.timeout, self.fetch_now(since, limit))
            .await
            .map_err(|_| MailboxError::Timeout(self.timeout))?
    }

    async fn fetch_now(&self, since: u64, limit: usize) -> Result<Vec<Vec<u8>>, MailboxError> {
        use futures_util::TryStreamExt;
        let day = time::OffsetDateTime::from_unix_timestamp(since as i64)
            .map_err(|e| MailboxError::Date(e.to_string()))?
            .format(time::macros::format_description!(
                "[day]-[month repr:short]-[year]"
            ))
            .map_err(|e| MailboxError::Date(e.to_string()))?;
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
                .map_err(|source| MailboxError::Search {
                    folder: folder.clone(),
                    source,
                })?
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
                .map_err(|source| MailboxError::Fetch {
                    folder: folder.clone(),
                    source,
                })?
                .try_collect()
                .await
                .map_err(|source| MailboxError::Fetch {
                    folder: folder.clone(),
                    source,
                })?;
            out.extend(fetched.iter().filter_map(|f| f.body().map(<[u8]>::to_vec)));
        }
        let _ = session.logout().await;
        Ok(out)
    }

    /// A logged-in session, over TLS for `imaps`.
    async fn login(&self) -> Result<async_imap::Session<Box<dyn Io>>, MailboxError> {
        let host = &self.url.host;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), self.url.port))
            .await
            .map_err(|source| MailboxError::Connect {
                host: host.clone(),
                port: self.url.port,
                source,
            })?;
        let stream: Box<dyn Io> = if self.url.tls {
            let connector = crate::tls::client(self.ca_pem.as_deref())?;
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|source| {
                MailboxError::ServerName {
                    host: host.clone(),
                    source,
                }
            })?;
            Box::new(connector.connect(name, tcp).await.map_err(|source| {
                MailboxError::Handshake {
                    host: host.clone(),
                    source,
                }
            })?)
        } else {
            Box::new(tcp)
        };
        let mut client = async_imap::Client::new(stream);
        client
            .read_response()
            .await
            .map_err(MailboxError::Greeting)?
            .ok_or(MailboxError::ClosedBeforeGreeting)?;
        client
            .login(&self.url.user, &self.password)
            .await
            .map_err(|(source, _)| MailboxError::Login {
                user: self.url.user.clone(),
                source,
            })
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
