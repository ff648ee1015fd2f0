use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::{EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use std::collections::HashMap;

use smtp_proto::EhloResponse;

use super::reply::{Reply, exchange, read_reply};
use super::sessions::{Client, Io, ReuseLimits, Session, SessionCache};
use super::smarthost::Smarthost;
use crate::config::{Config, RouteConfig};
use crate::dns::{DnsError, Resolver};
use crate::egress::{EgressIp, Standing};
use crate::envelope::{Address, BodyFlags, Sender};
use crate::reputation::Reputation;
use crate::routing::Pool;
use crate::site::Site;
use crate::spool::RemoteReply;

/// What is being sent in one transaction.
pub struct DomainDelivery<'a> {
    pub domain: &'a str,
    pub sender: &'a Sender,
    pub recipients: &'a [Address],
    pub flags: BodyFlags,
    /// The spooled body, CRLF line endings, not dot-stuffed.
    pub body: &'a [u8],
    /// Connections to the destination this delivery may have open, its own included
    /// (idle sessions kept for reuse count): the domain's connection limit.
    pub max_connections: usize,
    /// Egress IPs not to use for this delivery, whatever their standing: a second
    /// opinion must come from another address than the one that was refused.
    pub avoid: &'a [IpAddr],
}

/// How the mail left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// To the destination's MX from one of our egress IPs.
    Direct,
    /// Handed to this smarthost because no egress IP was clean for the site.
    Smarthost(String),
}

/// What happened: one reply per recipient (same order as `recipients`), plus where the
/// attempt went, for the log line, the DSN and reputation.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub egress: Option<EgressIp>,
    pub mx: Option<String>,
    /// The MX address connected to.
    pub mx_ip: Option<IpAddr>,
    /// The destination site, once the MX lookup succeeded.
    pub site: Option<Site>,
    pub via: Via,
    /// With `no_egress`: when the first block of the site expires (Unix seconds), the
    /// earliest time an IP could be usable again.
    pub retry_at: Option<u64>,
    pub replies: Vec<RemoteReply>,
    /// Nothing was sent because no egress IP of the pool may be used (all listed): the
    /// queue retries as soon as the listing state improves.
    pub no_egress: bool,
    /// The transaction ran on a session kept from an earlier message.
    pub reused: bool,
}

/// The outbound side: resolver, egress pools, smarthosts, routes and the timeouts from
/// `[delivery]`.
#[derive(Clone)]
pub struct Outbound {
    resolver: Resolver,
    pools: HashMap<String, Pool>,
    smarthosts: HashMap<String, Smarthost>,
    routes: Vec<RouteConfig>,
    default_pool: String,
    default_fallback: Option<String>,
    site_rollup: Vec<String>,
    reputation: Reputation,
    port: u16,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// `None` when `delivery.starttls = false`.
    tls: Option<TlsConnector>,
    sessions: std::sync::Arc<SessionCache>,
}

/// A failure before the transaction started: the next MX address may do better.
pub(super) struct HostFailure {
    pub(super) reply: RemoteReply,
    /// The TLS handshake failed; the same host is retried once in plain text.
    pub(super) tls: bool,
}

impl Outbound {
    /// Builds the outbound side from the whole configuration.
    ///
    /// # Errors
    /// A smarthost's password or CA file cannot be read.
    pub fn new(
        config: &Config,
        resolver: Resolver,
        reputation: Reputation,
    ) -> Result<Self, super::OutboundError> {
        let d = &config.delivery;
        let tls = d.starttls.then(|| {
            mail_send::smtp::tls::build_tls_connector(true)
                .expect("a TLS connector without verification always builds")
        });
        let pools = config
            .effective_pools()
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Pool::from_config(p, &config.server.hostname),
                )
            })
            .collect();
        let smarthosts = config
            .smarthosts
            .iter()
            .map(|s| Ok((s.name.clone(), Smarthost::new(s, &config.server.hostname)?)))
            .collect::<Result<_, super::OutboundError>>()?;
        Ok(Self {
            resolver,
            pools,
            smarthosts,
            routes: config.routes.clone(),
            default_pool: d.pool.clone(),
            default_fallback: d.fallback.clone(),
            site_rollup: d.site_rollup.clone(),
            reputation,
            port: d.port,
            connect_timeout: d.connect_timeout.get(),
            command_timeout: d.command_timeout.get(),
            tls,
            sessions: SessionCache::new(ReuseLimits {
                idle: d.reuse_idle.get(),
                lifetime: d.reuse_lifetime.get(),
                messages: d.reuse_messages,
                max_total: d.max_connections,
            }),
        })
    }

    /// The pool and fallback smarthost for a recipient domain: the first matching route,
    /// else `[delivery]`.
    fn route_for(&self, domain: &str) -> (&Pool, Option<&Smarthost>) {
        let route = self.routes.iter().find(|r| r.matches(domain));
        let pool_name = route
            .and_then(|r| r.pool.as_deref())
            .unwrap_or(&self.default_pool);
        let fallback = route
            .and_then(|r| r.fallback.as_deref())
            .or(self.default_fallback.as_deref());
        let pool = self
            .pools
            .get(pool_name)
            .or_else(|| self.pools.get(&self.default_pool))
            .expect("validated: every route names a configured pool");
        (pool, fallback.and_then(|f| self.smarthosts.get(f)))
    }

    /// Delivers to one domain: MX hosts in order, each address in turn, until one server
    /// takes the transaction. Never fails: every problem becomes a reply for the
    /// recipients (code 0 when no server answered).
    pub async fn deliver(&self, d: &DomainDelivery<'_>) -> AttemptReport {
        let (pool, fallback) = self.route_for(d.domain);
        let report = |replies: Vec<RemoteReply>| AttemptReport {
            egress: None,
            mx: None,
            mx_ip: None,
            site: None,
            via: Via::Direct,
            retry_at: None,
            replies,
            no_egress: false,
            reused: false,
        };
        let hosts = match self.resolver.lookup_mx(d.domain).await {
            Ok(h) => h,
            Err(e) => return report(vec![dns_reply(&e); d.recipients.len()]),
        };
        let site = Site::from_mx(&hosts, &self.site_rollup);
        // Every egress IP listed or blocked for this site: the fallback smarthost, or wait.
        let avoided = |e: &EgressIp| e.ip.is_some_and(|ip| d.avoid.contains(&ip));
        let usable = pool
            .egress()
            .iter()
            .any(|e| !avoided(e) && self.standing(e, &site) != Standing::Hard);
        if !usable {
            if let Some(smarthost) = fallback {
                let mut r = smarthost
                    .deliver(
                        &self.resolver,
                        d,
                        self.connect_timeout,
                        self.command_timeout,
                    )
                    .await;
                r.site = Some(site);
                return r;
            }
            let ips: Vec<IpAddr> = pool.egress().iter().filter_map(|e| e.ip).collect();
            let mut r = report(vec![self.no_egress(pool, &site, None); d.recipients.len()]);
            r.retry_at = self.reputation.next_expiry(&site, &ips);
            r.no_egress = true;
            r.site = Some(site);
            return r;
        }
        let mut last = RemoteReply {
            code: 0,
            enhanced: "4.4.4".into(),
            text: format!("no usable mail exchanger for {}", d.domain),
            mx: None,
        };
        let mut last_egress = None;
        let mut last_ip = None;
        let mut no_egress = false;
        for host in &hosts {
            let addrs = match self.resolver.lookup_addresses(&host.name).await {
                Ok(a) => a,
                Err(e) => {
                    last = dns_reply(&e);
                    last.mx = Some(host.name.clone());
                    continue;
                }
            };
            for addr in addrs {
                let claim = |e: &EgressIp| match e.ip {
                    _ if avoided(e) => Standing::Hard,
                    Some(ip) => self.reputation.claim(ip, &site),
                    None => Standing::Clean,
                };
                let Some(egress) = pool.next_for(addr, claim) else {
                    last = self.no_egress(pool, &site, Some((&host.name, addr)));
                    no_egress = true;
                    continue;
                };
                last_egress = Some(egress.clone());
                last_ip = Some(addr);
                let mut result = self.try_host(&egress, addr, &host.name, d, true).await;
                if let Err(HostFailure { tls: true, .. }) = result {
                    result = self.try_host(&egress, addr, &host.name, d, false).await;
                }
                match result {
                    Ok((replies, reused)) => {
                        return AttemptReport {
                            egress: Some(egress),
                            mx: Some(host.name.clone()),
                            mx_ip: Some(addr),
                            site: Some(site),
                            via: Via::Direct,
                            retry_at: None,
                            replies,
                            no_egress: false,
                            reused,
                        };
                    }
                    Err(f) => {
                        // This address said nothing about the IP: a claimed canary is free
                        // again for the next delivery.
                        if let Some(ip) = egress.ip {
                            self.reputation.release_canary(ip, &site);
                        }
                        last = f.reply;
                        no_egress = false;
                    }
                }
            }
        }
        AttemptReport {
            egress: last_egress,
            mx: last.mx.clone(),
            mx_ip: last_ip,
            site: Some(site),
            via: Via::Direct,
            retry_at: None,
            replies: vec![last; d.recipients.len()],
            no_egress,
            reused: false,
        }
    }

    fn standing(&self, egress: &EgressIp, site: &Site) -> Standing {
        egress
            .ip
            .map_or(Standing::Clean, |ip| self.reputation.standing_for(ip, site))
    }

    /// Why no egress IP may be used: the message is deferred (never bounced) with this
    /// as its reason, which the attempt's log line and an expiry DSN show.
    fn no_egress(&self, pool: &Pool, site: &Site, target: Option<(&str, IpAddr)>) -> RemoteReply {
        let why: Vec<String> = pool
            .egress()
            .iter()
            .map(|e| match (e.ip, target) {
                (Some(ip), Some((_, addr))) if !e.can_reach(addr) => {
                    format!("{ip}: cannot reach {addr}")
                }
                (Some(ip), _) => format!(
                    "{ip}: {}",
                    self.reputation.describe_for(ip, site).join("; ")
                ),
                (None, _) => "default address: cannot reach the destination".to_string(),
            })
            .collect();
        RemoteReply {
            code: 0,
            enhanced: "4.7.0".into(),
            text: format!(
                "no usable egress IP in pool {} for {site}: {}",
                pool.name,
                why.join(" | ")
            ),
            mx: target.map(|(mx, _)| mx.to_string()),
        }
    }

    /// One transaction with one MX address from `egress`: on an idle session left by an
    /// earlier message if there is one, else on a new connection. Returns the replies
    /// and whether the session was reused.
    async fn try_host(
        &self,
        egress: &EgressIp,
        addr: IpAddr,
        mx: &str,
        d: &DomainDelivery<'_>,
        use_tls: bool,
    ) -> Result<(Vec<RemoteReply>, bool), HostFailure> {
        let dest = SocketAddr::new(addr, self.port);
        let _busy = self.sessions.busy(dest);
        while let Some(mut session) = self.sessions.take(egress.ip, dest) {
            let t = transaction(&mut session.client, session.caps, d, mx, true).await;
            match t.after {
                // The server closed the idle session meanwhile: nothing of this message
                // was taken; another idle session or a new connection will do.
                After::Stale => continue,
                After::Ready => self.sessions.put(egress.ip, dest, session),
                After::Done => session.quit().await,
            }
            return Ok((t.replies, true));
        }
        self.sessions.make_room(dest, d.max_connections);
        let mut session = self.open(egress, dest, mx, use_tls).await?;
        let t = transaction(&mut session.client, session.caps, d, mx, false).await;
        match t.after {
            After::Ready => self.sessions.put(egress.ip, dest, session),
            After::Done | After::Stale => session.quit().await,
        }
        Ok((t.replies, false))
    }

    /// A new session: connect from `egress`, greeting, EHLO, STARTTLS when offered (and
    /// `use_tls`), EHLO again.
    async fn open(
        &self,
        egress: &EgressIp,
        dest: SocketAddr,
        mx: &str,
        use_tls: bool,
    ) -> Result<Session, HostFailure> {
        let addr = dest.ip();
        let fail = |code: u16, enhanced: &str, text: String| HostFailure {
            reply: RemoteReply {
                code,
                enhanced: enhanced.into(),
                text,
                mx: Some(mx.to_string()),
            },
            tls: false,
        };
        let stream = self.connect(egress, dest).await.map_err(|e| {
            fail(
                0,
                "4.4.1",
                format!("connect to {mx}[{addr}] from {egress}: {e}"),
            )
        })?;
        let mut client = SmtpClient {
            stream,
            timeout: self.command_timeout,
        };
        greeting(&mut client, mx).await?;
        let caps = hello(&mut client, &egress.helo, mx).await?.capabilities;
        match (&self.tls, use_tls && caps & EXT_START_TLS != 0) {
            (Some(tls), true) => {
                let mut client = client.start_tls(tls, mx).await.map_err(|e| HostFailure {
                    reply: error_reply(e, mx),
                    tls: true,
                })?;
                let caps = hello(&mut client, &egress.helo, mx).await?.capabilities;
                Ok(Session::new(boxed(client), caps))
            }
            _ => Ok(Session::new(boxed(client), caps)),
        }
    }

    async fn connect(&self, egress: &EgressIp, dest: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if dest.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = egress.ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = tokio::time::timeout(self.connect_timeout, socket.connect(dest))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// The server's greeting: `220`, or the refusal (a reputation block often comes here).
pub(super) async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    mx: &str,
) -> Result<(), HostFailure> {
    let r = tokio::time::timeout(client.timeout, read_reply(&mut client.stream))
        .await
        .map_err(|_| mail_send::Error::Timeout)
        .and_then(|r| r)
        .map_err(|e| HostFailure {
            reply: error_reply(e, mx),
            tls: false,
        })?;
    if r.code == 220 {
        Ok(())
    } else {
        Err(HostFailure {
            reply: r.to_remote(mx),
            tls: false,
        })
    }
}

/// EHLO, falling back to HELO for servers that refuse EHLO (RFC 5321 §3.2). Returns
/// the extensions (none after HELO).
pub(super) async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    helo: &str,
    mx: &str,
) -> Result<EhloResponse<String>, HostFailure> {
    let fail = |e: mail_send::Error| HostFailure {
        reply: error_reply(e, mx),
        tls: false,
    };
    let refused = |r: &Reply| HostFailure {
        reply: r.to_remote(mx),
        tls: false,
    };
    let ehlo = command(client, format!("EHLO {helo}\r\n").as_bytes())
        .await
        .map_err(fail)?;
    if ehlo.is_positive() {
        return ehlo.ehlo().map_err(fail);
    }
    if ehlo.code < 500 {
        return Err(refused(&ehlo));
    }
    let r = command(client, format!("HELO {helo}\r\n").as_bytes())
        .await
        .map_err(fail)?;
    if r.is_positive() {
        Ok(EhloResponse::default())
    } else {
        Err(refused(&r))
    }
}

/// One command and its reply, within the session's command timeout.
async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    bytes: &[u8],
) -> mail_send::Result<Reply> {
    let mut r = exchange(&mut client.stream, bytes, 1, client.timeout).await?;
    r.pop().ok_or(mail_send::Error::UnparseableReply)
}

fn boxed<S: Io + 'static>(client: SmtpClient<S>) -> Client {
    SmtpClient {
        stream: Box::new(client.stream),
        timeout: client.timeout,
    }
}

/// The state a transaction leaves its session in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// The server answered the end of DATA: the session is ready for the next MAIL.
    Ready,
    /// The session should end (error, refusal, or a server closing with 421).
    Done,
    /// A reused session turned out dead (closed, or 421) before MAIL was accepted:
    /// nothing of this transaction counts, the replies are meaningless.
    Stale,
}

pub(super) struct Transaction {
    /// One per recipient, in order.
    pub(super) replies: Vec<RemoteReply>,
    pub(super) after: After,
}

/// MAIL, RCPT…, DATA on an established session. Pipelined when the server offers it
/// (RFC 2920): the whole envelope and DATA in one write, one reply read per command;
/// otherwise one command at a time, DATA only if a recipient was accepted. Sends no QUIT:
/// the caller decides whether the session is kept. `reused`: the session served an
/// earlier message, so a dead connection is [`After::Stale`], not a failure.
pub(super) async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    caps: u32,
    d: &DomainDelivery<'_>,
    mx: &str,
    reused: bool,
) -> Transaction {
    let n = d.recipients.len();
    let done = |replies| Transaction {
        replies,
        after: After::Done,
    };
    let stale = || Transaction {
        replies: Vec::new(),
        after: After::Stale,
    };
    if d.flags.smtputf8 && caps & EXT_SMTP_UTF8 == 0 {
        return done(vec![
            RemoteReply {
                code: 0,
                enhanced: "5.6.7".into(),
                text: format!("{mx} does not support SMTPUTF8, required by this message"),
                mx: Some(mx.to_string()),
            };
            n
        ]);
    }
    let mut mail = format!("MAIL FROM:<{}>", d.sender);
    if caps & EXT_SIZE != 0 {
        mail.push_str(&format!(" SIZE={}", d.body.len()));
    }
    if d.flags.eight_bit && caps & EXT_8BIT_MIME != 0 {
        mail.push_str(" BODY=8BITMIME");
    }
    if d.flags.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let rcpts: Vec<String> = d
        .recipients
        .iter()
        .map(|r| format!("RCPT TO:<{r}>\r\n"))
        .collect();

    let mut replies: Vec<Option<RemoteReply>> = vec![None; n];
    // With PIPELINING, DATA ends the group (RFC 2920 §3.1): one round trip for the
    // whole envelope.
    let pipelined = caps & EXT_PIPELINING != 0;
    let envelope = if pipelined {
        pipeline(
            client,
            std::iter::once(mail)
                .chain(rcpts)
                .chain(std::iter::once("DATA\r\n".to_string())),
        )
        .await
        .map(|r| r.into_iter().map(|r| r.to_remote(mx)).collect())
    } else {
        sequential_envelope(client, mail, rcpts, mx).await
    };
    let mut envelope: Vec<RemoteReply> = match envelope {
        Ok(e) => e,
        Err(_) if reused => return stale(),
        Err(e) => return done(vec![error_reply(e, mx); n]),
    };
    let data_reply = if pipelined { envelope.pop() } else { None };
    let Some((mail_reply, rcpt_replies)) = envelope.split_first() else {
        return done(vec![error_reply(mail_send::Error::UnparseableReply, mx); n]);
    };
    if reused && mail_reply.code == 421 {
        return stale();
    }
    if !is_positive(mail_reply) {
        return done(vec![mail_reply.clone(); n]);
    }
    let mut accepted = Vec::new();
    for (i, slot) in replies.iter_mut().enumerate() {
        match rcpt_replies.get(i) {
            Some(r) if is_positive(r) => accepted.push(i),
            Some(r) => *slot = Some(r.clone()),
            None => *slot = Some(mail_reply_missing(mx)),
        }
    }
    let data_reply = match data_reply {
        None if !pipelined && !accepted.is_empty() => {
            Some(match command(client, b"DATA\r\n").await {
                Ok(r) => r.to_remote(mx),
                Err(e) => error_reply(e, mx),
            })
        }
        other => other,
    };
    let mut after = After::Done;
    let outcome = match data_reply {
        // A server that took DATA although no recipient was accepted gets an empty
        // message, which it must refuse (RFC 2920 §3.1); the session then ends.
        Some(r) if r.code == 354 && accepted.is_empty() => {
            let _ = tokio::time::timeout(client.timeout, async {
                client.stream.write_all(b".\r\n").await?;
                client.stream.flush().await?;
                read_reply(&mut client.stream).await
            })
            .await;
            None
        }
        Some(r) if r.code == 354 => Some((send_body(client, d.body, mx).await, true)),
        Some(r) if !accepted.is_empty() => Some((r, false)),
        _ => None,
    };
    if let Some((outcome, message_sent)) = outcome {
        // Only a reply to the final dot leaves a clean session (a refused DATA may leave
        // the server mid-transaction); a reply of 0 is ours (timeout, lost connection).
        if message_sent && (200..600).contains(&outcome.code) && outcome.code != 421 {
            after = After::Ready;
        }
        for i in accepted {
            replies[i] = Some(outcome.clone());
        }
    }
    Transaction {
        replies: replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| mail_reply_missing(mx)))
            .collect(),
        after,
    }
}

/// Sends a group of commands in one write (mail-send's `cmds` writes each on its own,
/// which with `TCP_NODELAY` is a packet per command) and reads one reply per command.
async fn pipeline<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    cmds: impl Iterator<Item = String>,
) -> mail_send::Result<Vec<Reply>> {
    let mut out = Vec::with_capacity(256);
    let mut n = 0;
    for cmd in cmds {
        out.extend_from_slice(cmd.as_bytes());
        n += 1;
    }
    exchange(&mut client.stream, &out, n, client.timeout).await
}

async fn sequential_envelope<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    mail: String,
    rcpts: Vec<String>,
    mx: &str,
) -> mail_send::Result<Vec<RemoteReply>> {
    let first = command(client, mail.as_bytes()).await?.to_remote(mx);
    let ok = is_positive(&first);
    let mut out = vec![first];
    if ok {
        for rcpt in rcpts {
            out.push(command(client, rcpt.as_bytes()).await?.to_remote(mx));
        }
    }
    Ok(out)
}

/// The content after a `354`, and the reply to it.
async fn send_body<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    body: &[u8],
    mx: &str,
) -> RemoteReply {
    let timeout = client.timeout;
    let result = tokio::time::timeout(timeout, async {
        write_dot_stuffed(&mut client.stream, body).await?;
        read_reply(&mut client.stream).await
    })
    .await;
    match result {
        Ok(Ok(r)) => r.to_remote(mx),
        Ok(Err(e)) => error_reply(e, mx),
        Err(_) => error_reply(mail_send::Error::Timeout, mx),
    }
}

/// Writes `body` (CRLF line endings, as spooled) with a dot doubled at the start of
/// every line (RFC 5321 §4.5.2) and the terminating `.` line, in chunks of about
/// [`WRITE_CHUNK`] bytes: one write for a typical message, bounded memory for a large one.
async fn write_dot_stuffed<W: AsyncWrite + Unpin>(
    out: &mut W,
    body: &[u8],
) -> mail_send::Result<()> {
    let mut buf = Vec::with_capacity(body.len().min(WRITE_CHUNK) + 64);
    let mut line_start = true;
    // Copies the spans between lines that start with a dot whole, found with memmem,
    // instead of line by line: most messages have no such line at all.
    for chunk in body.chunks(WRITE_CHUNK) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if line_start && rest[0] == b'.' {
                buf.push(b'.');
            }
            match memchr::memmem::find(rest, b"\n.") {
                Some(lf) => {
                    buf.extend_from_slice(&rest[..=lf]);
                    rest = &rest[lf + 1..];
                    line_start = true;
                }
                None => {
                    buf.extend_from_slice(rest);
                    line_start = rest.ends_with(b"\n");
                    rest = &[];
                }
            }
        }
        if buf.len() >= WRITE_CHUNK {
            out.write_all(&buf).await?;
            buf.clear();
        }
    }
    if !line_start {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b".\r\n");
    out.write_all(&buf).await?;
    out.flush().await?;
    Ok(())
}

const WRITE_CHUNK: usize = 64 * 1024;

fn is_positive(r: &RemoteReply) -> bool {
    (200..300).contains(&r.code)
}

fn mail_reply_missing(mx: &str) -> RemoteReply {
    RemoteReply {
        code: 0,
        enhanced: "4.4.2".into(),
        text: format!("{mx} sent too few replies"),
        mx: Some(mx.to_string()),
    }
}

pub(super) fn response_reply(r: &Response<String>, mx: &str) -> RemoteReply {
    let enhanced = if r.esc[0] == 0 {
        format!("{}.0.0", r.code / 100)
    } else {
        format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
    };
    RemoteReply {
        code: r.code,
        enhanced,
        text: r.message.replace(['\r', '\n'], " "),
        mx: Some(mx.to_string()),
    }
}

pub(super) fn error_reply(e: mail_send::Error, mx: &str) -> RemoteReply {
    use mail_send::Error as E;
    let (enhanced, text) = match e {
        E::UnexpectedReply(r) | E::AuthenticationFailed(r) => return response_reply(&r, mx),
        E::Timeout => ("4.4.2", format!("timeout talking to {mx}")),
        E::Io(e) => ("4.4.2", format!("connection to {mx} lost: {e}")),
        E::Tls(e) => ("4.7.5", format!("TLS with {mx} failed: {e}")),
        E::UnparseableReply => ("4.5.0", format!("{mx} sent an unparseable reply")),
        other => ("4.4.0", format!("{mx}: {other}")),
    };
    RemoteReply {
        code: 0,
        enhanced: enhanced.into(),
        text,
        mx: Some(mx.to_string()),
    }
}

fn dns_reply(e: &DnsError) -> RemoteReply {
    let enhanced = match e {
        DnsError::NoSuchDomain(_) => "5.1.2",
        DnsError::NullMx(_) => "5.1.10",
        DnsError::NoAddress(_) | DnsError::Temporary { .. } | DnsError::Setup(_) => "4.4.3",
    };
    RemoteReply {
        code: 0,
        enhanced: enhanced.into(),
        text: e.to_string(),
        mx: None,
    }
}

#[cfg(test)]
mod dot_stuffing_tests {
    use super::{WRITE_CHUNK, write_dot_stuffed};

    /// Line by line, as RFC 5321 §4.5.2 states it.
    fn reference(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !body.is_empty() && !body.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    async fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, body).await.unwrap();
        out
    }

    #[tokio::test]
    async fn dots_opening_lines_are_doubled_wherever_they_are() {
        let mut across = vec![b'a'; WRITE_CHUNK - 2];
        across.extend_from_slice(b"\r\n.x\r\n");
        let mut at_chunk_end = vec![b'b'; WRITE_CHUNK - 3];
        at_chunk_end.extend_from_slice(b"\r\n.\r\n..\r\n");
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b".".to_vec(),
            b".\r\n".to_vec(),
            b"no dots\r\n".to_vec(),
            b"x\r\n.\r\n..\r\n.y\r\nz.\r\n".to_vec(),
            b"no final line end".to_vec(),
            b"ends with a dot line\r\n.".to_vec(),
            across,
            at_chunk_end,
            b".a\r\n".repeat(30_000),
        ];
        for body in cases {
            assert_eq!(
                stuffed(&body).await,
                reference(&body),
                "{:?}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
        }
    }
}
