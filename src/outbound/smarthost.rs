//! Fallback smarthosts: a relay with its own, clean reputation (the "clean fallback SMTP
//! details" good providers hand out). TLS is required, implicit or STARTTLS, because the
//! session carries credentials; AUTH uses the strongest mechanism both sides know.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_send::{Credentials, SmtpClient};
use rustls::pki_types::ServerName;
use smtp_proto::EXT_START_TLS;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::protocol::{BrokenChunking, HostFailure, error_reply, greeting, hello, transaction};
use super::{AttemptReport, DomainDelivery, OutboundError, Via};
use crate::config::{SmarthostConfig, SmarthostTls};
use crate::dns::Resolver;
use crate::spool::RemoteReply;

#[derive(Clone)]
pub struct Smarthost {
    name: String,
    host: String,
    port: u16,
    mode: SmarthostTls,
    credentials: Option<Credentials<String>>,
    tls: TlsConnector,
    helo: String,
    /// The operator vouches that it enforces destinations' MTA-STS and DANE itself.
    enforces_tls_policy: bool,
    /// `[delivery] chunking`: BDAT when the smarthost offers it.
    chunking: bool,
    /// Its addresses that broke a BDAT transaction: they get DATA from then on (until a
    /// reload builds the smarthost anew), as MX addresses do.
    broken_chunking: std::sync::Arc<BrokenChunking>,
}

impl Smarthost {
    /// `chunking`: `[delivery] chunking`.
    ///
    /// # Errors
    /// The password file or CA file cannot be read, or holds no certificate.
    pub fn new(
        config: &SmarthostConfig,
        helo: &str,
        chunking: bool,
    ) -> Result<Self, OutboundError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| OutboundError::File {
                name: config.name.clone(),
                path: path.to_path_buf(),
                source,
            })
        };
        let password = match (&config.password, &config.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(read(f)?.lines().next().unwrap_or("").to_string()),
            (None, None) => None,
        };
        let credentials = config
            .username
            .clone()
            .zip(password)
            .map(|(u, p)| Credentials::new(u, p));
        let ca = config.ca_file.as_deref().map(read).transpose()?;
        let tls = crate::tls::client(ca.as_deref()).map_err(|e| OutboundError::Tls {
            name: config.name.clone(),
            message: match &config.ca_file {
                Some(path) => format!("{}: {e}", path.display()),
                None => e.to_string(),
            },
        })?;
        Ok(Self {
            name: config.name.clone(),
            host: config.host.clone(),
            port: config.port,
            mode: config.tls,
            credentials,
            tls,
            helo: helo.to_string(),
            enforces_tls_policy: config.enforces_tls_policy,
            chunking,
            broken_chunking: Default::default(),
        })
    }

    /// Its name in `[[smarthosts]]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether mail whose destination requires verified TLS may be handed to it
    /// (`enforces_tls_policy`): its own hop is always verified TLS.
    pub fn enforces_tls_policy(&self) -> bool {
        self.enforces_tls_policy
    }

    /// The host connected to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The name announced in EHLO (SPF's HELO identity for bounces).
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// Hands the transaction to the smarthost. Never fails: problems become replies.
    pub async fn deliver(
        &self,
        resolver: &Resolver,
        d: &DomainDelivery<'_>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> AttemptReport {
        let (ip, replies) = match self
            .session(resolver, d, connect_timeout, command_timeout)
            .await
        {
            Ok((ip, replies)) => (Some(ip), replies),
            Err(f) => (None, vec![f.reply; d.recipients.len()]),
        };
        AttemptReport {
            mx: Some(format!("{} (smarthost {})", self.host, self.name)),
            mx_ip: ip,
            ..AttemptReport::new(Via::Smarthost(self.name.clone()), replies)
        }
    }

    async fn session(
        &self,
        resolver: &Resolver,
        d: &DomainDelivery<'_>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<(IpAddr, Vec<RemoteReply>), HostFailure> {
        let fail = |enhanced: &str, text: String| HostFailure {
            reply: RemoteReply {
                code: 0,
                enhanced: enhanced.into(),
                text,
                mx: Some(self.host.clone()),
            },
            tls: false,
        };
        let ip = match resolver.lookup_addresses(&self.host).await {
            Ok(ips) => ips[0],
            Err(e) => return Err(fail("4.4.3", format!("smarthost {}: {e}", self.name))),
        };
        let stream = tokio::time::timeout(
            connect_timeout,
            TcpStream::connect(SocketAddr::new(ip, self.port)),
        )
        .await
        .map_err(|_| fail("4.4.1", format!("smarthost {}: connect timeout", self.name)))?
        .map_err(|e| {
            fail(
                "4.4.1",
                format!("smarthost {} [{ip}]:{}: {e}", self.name, self.port),
            )
        })?;
        let _ = stream.set_nodelay(true);
        let server_name = ServerName::try_from(self.host.clone()).map_err(|e| {
            fail(
                "4.7.5",
                format!("smarthost {}: bad TLS name: {e}", self.name),
            )
        })?;
        let host = self.host.as_str();
        // Either way the submission runs over TLS: from the first byte, or after STARTTLS.
        let mut client = match self.mode {
            SmarthostTls::Implicit => {
                let tls =
                    tokio::time::timeout(command_timeout, self.tls.connect(server_name, stream))
                        .await
                        .map_err(|_| {
                            fail(
                                "4.7.5",
                                format!("smarthost {}: TLS handshake timeout", self.name),
                            )
                        })?
                        .map_err(|e| fail("4.7.5", format!("smarthost {}: TLS: {e}", self.name)))?;
                let mut client = SmtpClient {
                    stream: tls,
                    timeout: command_timeout,
                };
                greeting(&mut client, host).await?;
                client
            }
            SmarthostTls::Starttls => {
                let mut client = SmtpClient {
                    stream,
                    timeout: command_timeout,
                };
                greeting(&mut client, host).await?;
                let ehlo = hello(&mut client, &self.helo, host).await?;
                if ehlo.capabilities & EXT_START_TLS == 0 {
                    return Err(fail(
                        "4.7.4",
                        format!(
                            "smarthost {} does not offer STARTTLS; credentials are never sent in clear",
                            self.name
                        ),
                    ));
                }
                client
                    .start_tls(&self.tls, host)
                    .await
                    .map_err(|e| HostFailure {
                        reply: error_reply(e, host),
                        tls: false,
                    })?
            }
        };
        let ehlo = hello(&mut client, &self.helo, host).await?;
        self.authenticate(&mut client, &ehlo, host).await?;
        let dest = SocketAddr::new(ip, self.port);
        let caps = self
            .broken_chunking
            .usable(dest, ehlo.capabilities, self.chunking);
        let t = transaction(&mut client, caps, d, host, false, None).await;
        if t.chunk_lost {
            self.broken_chunking.remember(dest, host, "smarthost");
        }
        super::sessions::quit(&mut client.stream).await;
        let replies = t.replies;
        Ok((ip, replies))
    }

    async fn authenticate<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<S>,
        ehlo: &smtp_proto::EhloResponse<String>,
        host: &str,
    ) -> Result<(), HostFailure> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        client
            .authenticate(credentials, ehlo)
            .await
            .map(|_| ())
            .map_err(|e| {
                let mut reply = error_reply(e, host);
                reply.text = format!("smarthost {} AUTH failed: {}", self.name, reply.text);
                HostFailure { reply, tls: false }
            })
    }
}
