//! The SMTP client side of one session, used by direct delivery and by the fallback
//! smarthost alike: greeting, EHLO/HELO, the (pipelined) transaction, dot-stuffing, and
//! turning what went wrong into the reply that is logged, classified and quoted.

use std::net::SocketAddr;

use mail_send::SmtpClient;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_CHUNKING, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EhloResponse, Response,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::DomainDelivery;
use super::reply::{Reply, exchange, read_replies_into, read_reply};
use super::sessions::{Client, Io};
use crate::spool::RemoteReply;

/// A failure before the transaction started: the next MX address may do better.
pub(super) struct HostFailure {
    pub(super) reply: RemoteReply,
    /// The TLS handshake failed; the same host is retried once in plain text.
    pub(super) tls: bool,
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

/// Servers that broke a BDAT transaction ([`Transaction::chunk_lost`]), by address:
/// they are sent DATA from then on. The MX addresses' set lives until the relay restarts
/// (a reload keeps it), a smarthost's until a reload. Bounded: past
/// [`BrokenChunking::MAX`] addresses none is added, and a new one that breaks BDAT costs
/// an attempt each time.
#[derive(Default)]
pub(super) struct BrokenChunking(std::sync::Mutex<std::collections::HashSet<SocketAddr>>);

impl BrokenChunking {
    const MAX: usize = 10_000;

    /// `dest` (`name`, a `kind` of server: MX or smarthost) broke a BDAT transaction.
    pub(super) fn remember(&self, dest: SocketAddr, name: &str, kind: &str) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() < Self::MAX && set.insert(dest) {
            tracing::warn!(
                server = name,
                addr = %dest,
                "the connection broke during a BDAT transaction; this {kind} gets DATA from now on"
            );
        }
    }

    /// The extensions of `caps` to use with `dest`: CHUNKING only with `[delivery]
    /// chunking` on and `dest` not remembered.
    pub(super) fn usable(&self, dest: SocketAddr, caps: u32, chunking: bool) -> u32 {
        if caps & EXT_CHUNKING == 0 {
            return caps;
        }
        let broke = || {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&dest)
        };
        if chunking && !broke() {
            caps
        } else {
            caps & !EXT_CHUNKING
        }
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

pub(super) fn boxed<S: Io + 'static>(client: SmtpClient<S>) -> Client {
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
    /// The connection broke during a BDAT transaction before the chunk was answered:
    /// some servers hang up rather than read a chunk behind a refused envelope (against
    /// RFC 3030 §2), taking their refusal with them. The caller sends DATA to that
    /// server from then on, so the next attempt hears why.
    pub(super) chunk_lost: bool,
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
    egress: Option<std::net::IpAddr>,
) -> Transaction {
    let Some(rp) = d.return_path else {
        return one_transaction(client, caps, d, None, mx, reused).await;
    };
    // VERP: one transaction per recipient, each with its own return path, on this
    // session (Postfix does the same for VERP). A transaction that leaves the session
    // unusable ends the round: the recipients after it wait for the next attempt.
    let mut replies = Vec::with_capacity(d.recipients.len());
    let mut after = After::Done;
    let mut chunk_lost = false;
    for (i, rcpt) in d.recipients.iter().enumerate() {
        if i > 0 && after != After::Ready {
            replies.push(RemoteReply {
                code: 0,
                enhanced: "4.4.2".into(),
                text: format!(
                    "{mx}: the session ended before this recipient's transaction (one per recipient with return paths)"
                ),
                mx: Some(mx.to_string()),
            });
            continue;
        }
        let one = DomainDelivery {
            recipients: std::slice::from_ref(rcpt),
            return_path: None,
            ..*d
        };
        let from = rp.mail_from(i, egress);
        let t = one_transaction(client, caps, &one, from.as_deref(), mx, reused && i == 0).await;
        if t.after == After::Stale {
            // Only the first, on a reused session: nothing of this message was taken.
            return t;
        }
        after = t.after;
        chunk_lost |= t.chunk_lost;
        replies.extend(t.replies);
    }
    Transaction {
        replies,
        after,
        chunk_lost,
    }
}

/// One transaction: `d`'s recipients with `from` (else `d.sender`) as MAIL FROM.
async fn one_transaction<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    caps: u32,
    d: &DomainDelivery<'_>,
    from: Option<&str>,
    mx: &str,
    reused: bool,
) -> Transaction {
    let n = d.recipients.len();
    let done = |replies| Transaction {
        replies,
        after: After::Done,
        chunk_lost: false,
    };
    let stale = || Transaction {
        replies: Vec::new(),
        after: After::Stale,
        chunk_lost: false,
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
    let mut mail = match from {
        Some(from) => format!("MAIL FROM:<{from}>"),
        None => format!("MAIL FROM:<{}>", d.sender),
    };
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

    let pipelined = caps & EXT_PIPELINING != 0;
    if pipelined && caps & EXT_CHUNKING != 0 && d.body.len() <= ONE_CHUNK_MAX {
        return chunked(client, mail, rcpts, d.body, mx, reused).await;
    }
    let mut replies: Vec<Option<RemoteReply>> = vec![None; n];
    // With PIPELINING, DATA ends the group (RFC 2920 §3.1): one round trip for the
    // whole envelope.
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
        chunk_lost: false,
    }
}

/// The largest body sent as one BDAT chunk behind its envelope. The server reads a chunk
/// whatever it answered to MAIL and RCPT (RFC 3030 §2), so a refused envelope costs the
/// body's bytes: larger bodies go after DATA's `354`, where one more round trip is small
/// beside the transfer.
const ONE_CHUNK_MAX: usize = 1024 * 1024;

/// The whole transaction in one write when the server offers CHUNKING and PIPELINING
/// (RFC 3030, RFC 2920): MAIL, RCPT…, `BDAT <size> LAST` and the body as spooled (no
/// dot-stuffing), then one reply per command. One round trip instead of two, as Exim
/// does. Accepted recipients get the reply to the chunk.
async fn chunked<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    mail: String,
    rcpts: Vec<String>,
    body: &[u8],
    mx: &str,
    reused: bool,
) -> Transaction {
    let n = rcpts.len();
    let mut head = mail.into_bytes();
    for rcpt in &rcpts {
        head.extend_from_slice(rcpt.as_bytes());
    }
    head.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    let mut got: Vec<Reply> = Vec::with_capacity(n + 2);
    let timeout = client.timeout;
    let stream = &mut client.stream;
    let result = tokio::time::timeout(timeout, async {
        let sent = async {
            write_all_vectored(stream, &head, body).await?;
            stream.flush().await
        }
        .await;
        // A server that refused the envelope and hung up without reading the chunk has
        // usually said why first: its replies are read even when the write failed.
        let read = read_replies_into(stream, n + 2, &mut got).await;
        match (sent, read) {
            (Err(e), _) => Err(mail_send::Error::Io(e)),
            (Ok(()), r) => r,
        }
    })
    .await
    .unwrap_or(Err(mail_send::Error::Timeout));
    if reused && got.first().is_none_or(|r| r.code == 421) {
        // Nothing of this message was taken on a session that turned out dead.
        return Transaction {
            replies: Vec::new(),
            after: After::Stale,
            chunk_lost: false,
        };
    }
    // The connection broke (rather than timed out) before every reply came.
    let broke = matches!(result, Err(mail_send::Error::Io(_)));
    // What a recipient whose reply never came gets.
    let lost = match result {
        Ok(()) => mail_reply_missing(mx),
        Err(e) => error_reply(e, mx),
    };
    let mut got = got.into_iter().map(|r| r.to_remote(mx));
    let Some(mail_reply) = got.next() else {
        return Transaction {
            replies: vec![lost; n],
            after: After::Done,
            chunk_lost: broke,
        };
    };
    if !is_positive(&mail_reply) {
        return Transaction {
            replies: vec![mail_reply; n],
            after: After::Done,
            chunk_lost: false,
        };
    }
    let rcpt_replies: Vec<RemoteReply> = got.by_ref().take(n).collect();
    let chunk_reply = got.next();
    let accepted = rcpt_replies.iter().filter(|r| is_positive(r)).count();
    // Only the reply to the last chunk ends the transaction cleanly (with no recipient
    // accepted the server discards the chunk; that session is not worth keeping).
    let after = match &chunk_reply {
        Some(r) if accepted > 0 && (200..600).contains(&r.code) && r.code != 421 => After::Ready,
        _ => After::Done,
    };
    let replies = (0..n)
        .map(|i| match rcpt_replies.get(i) {
            Some(r) if is_positive(r) => chunk_reply.clone().unwrap_or_else(|| lost.clone()),
            Some(r) => r.clone(),
            None => lost.clone(),
        })
        .collect();
    Transaction {
        replies,
        after,
        chunk_lost: broke && chunk_reply.is_none(),
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
/// every line (RFC 5321 §4.5.2) and the terminating `.` line. Most bodies have no line
/// starting with a dot: they go straight from the spooled bytes with the end line in
/// one vectored write, as every copy of a message shares them (copying each into a
/// buffer first was a sixth of the CPU spent delivering, on the realistic benchmark).
/// The others are stuffed into chunks of about [`WRITE_CHUNK`] bytes: one write for a
/// typical message, bounded memory for a large one.
async fn write_dot_stuffed<W: AsyncWrite + Unpin>(
    out: &mut W,
    body: &[u8],
) -> mail_send::Result<()> {
    if body.first() != Some(&b'.') && memchr::memmem::find(body, b"\n.").is_none() {
        let end: &[u8] = if body.is_empty() || body.ends_with(b"\n") {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        };
        write_all_vectored(out, body, end).await?;
        out.flush().await?;
        return Ok(());
    }
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

/// Writes `a` then `b`, in as few system calls as the stream takes them.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    out: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = out
            .write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

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
            b"a\r\n".repeat(40_000),
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

    #[tokio::test]
    async fn a_stream_taking_a_few_bytes_at_a_time_gets_every_byte_once() {
        use tokio::io::AsyncReadExt;
        for body in [b"hello\r\nworld".to_vec(), b"line\r\n".repeat(5_000)] {
            let (mut ours, mut theirs) = tokio::io::duplex(7);
            let expected = reference(&body);
            let write = async {
                write_dot_stuffed(&mut ours, &body).await.unwrap();
                drop(ours);
            };
            let mut got = Vec::new();
            let read = theirs.read_to_end(&mut got);
            let ((), read) = tokio::join!(write, read);
            read.unwrap();
            assert_eq!(got, expected);
        }
    }
}
