//! Reading the destination's replies ourselves, byte for byte.
//!
//! mail-send's reader keeps the enhanced status code in three bytes, so Microsoft's
//! `5.7.606`–`5.7.649`, `5.7.511` and `4.7.650` came out as `x.7.255`: the log line, the
//! block evidence, the DSN and the classifier all saw a code the receiver never sent.
//! Replies are the evidence a delisting form asks for, so this reader keeps every part of
//! the enhanced code (RFC 3463 allows up to three digits each) and the text as sent.
//! Replies are bounded ([`MAX_REPLY`]): a hostile server cannot make us buffer for ever.

use smtp_proto::EhloResponse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spool::RemoteReply;

/// The most bytes read for one group of replies (RFC 5321 §4.5.3.1.5 allows 512 per
/// line; EHLO and multi-line refusals take a few lines).
const MAX_REPLY: usize = 64 * 1024;

/// One reply as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub code: u16,
    /// The enhanced status code of the first line, e.g. `5.7.606`, when it has one.
    pub enhanced: Option<String>,
    /// Each line's text, without the code and without a leading enhanced code.
    pub lines: Vec<String>,
    /// The reply's bytes as received (EHLO capabilities are parsed from them).
    raw: Vec<u8>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The reply as kept and quoted: lines joined with a space, the enhanced code as
    /// sent (or the class alone, `5.0.0`, when the server gave none).
    pub fn to_remote(&self, mx: &str) -> RemoteReply {
        RemoteReply {
            code: self.code,
            enhanced: self
                .enhanced
                .clone()
                .unwrap_or_else(|| format!("{}.0.0", self.code / 100)),
            text: self.lines.join(" "),
            mx: Some(mx.to_string()),
        }
    }

    /// The capabilities of a positive EHLO reply.
    pub fn ehlo(&self) -> Result<EhloResponse<String>, mail_send::Error> {
        EhloResponse::parse(&mut self.raw.iter()).map_err(|_| mail_send::Error::UnparseableReply)
    }
}

/// Reads `n` replies (a pipelined group answers one per command).
///
/// # Errors
/// The connection closed or failed, or the server sent something that is not a reply.
pub(super) async fn read_replies<S: AsyncRead + Unpin>(
    stream: &mut S,
    n: usize,
) -> Result<Vec<Reply>, mail_send::Error> {
    let mut replies = Vec::with_capacity(n);
    read_replies_into(stream, n, &mut replies).await?;
    Ok(replies)
}

/// Reads replies into `replies` until it holds `n`: on an error, the replies read
/// before it are kept (a server that refused a recipient and then dropped the
/// connection still said why).
///
/// # Errors
/// As [`read_replies`].
pub(super) async fn read_replies_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    n: usize,
    replies: &mut Vec<Reply>,
) -> Result<(), mail_send::Error> {
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut start = 0;
    let mut parsed = 0;
    let mut chunk = [0u8; 4096];
    while replies.len() < n {
        // Complete lines not yet looked at.
        while let Some(end) = memchr::memchr(b'\n', &buf[parsed..]).map(|i| parsed + i + 1) {
            let line = &buf[parsed..end];
            parsed = end;
            match line_kind(line)? {
                LineKind::More => {}
                LineKind::Last => {
                    replies.push(parse_reply(&buf[start..end])?);
                    start = end;
                    if replies.len() == n {
                        break;
                    }
                }
            }
        }
        if replies.len() == n {
            break;
        }
        if buf.len() >= MAX_REPLY {
            return Err(mail_send::Error::UnparseableReply);
        }
        let got = stream.read(&mut chunk).await?;
        if got == 0 {
            return Err(mail_send::Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            )));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

/// Reads one reply.
///
/// # Errors
/// As [`read_replies`].
pub(super) async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Reply, mail_send::Error> {
    let mut r = read_replies(stream, 1).await?;
    r.pop().ok_or(mail_send::Error::UnparseableReply)
}

/// Writes `bytes` (one command or a pipelined group) and reads `n` replies, within
/// `timeout` for the whole exchange.
///
/// # Errors
/// As [`read_replies`], or [`mail_send::Error::Timeout`].
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    n: usize,
    timeout: std::time::Duration,
) -> Result<Vec<Reply>, mail_send::Error> {
    tokio::time::timeout(timeout, async {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        read_replies(stream, n).await
    })
    .await
    .map_err(|_| mail_send::Error::Timeout)?
}

enum LineKind {
    More,
    Last,
}

/// `250-…` continues a reply, `250 …` (or a bare `250`) ends it.
fn line_kind(line: &[u8]) -> Result<LineKind, mail_send::Error> {
    let digits = line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit);
    match (digits, line.get(3)) {
        (true, Some(b'-')) => Ok(LineKind::More),
        (true, Some(b' ' | b'\r' | b'\n') | None) => Ok(LineKind::Last),
        _ => Err(mail_send::Error::UnparseableReply),
    }
}

fn parse_reply(raw: &[u8]) -> Result<Reply, mail_send::Error> {
    let text = String::from_utf8_lossy(raw);
    let mut code = None;
    let mut enhanced = None;
    let mut lines = Vec::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let this: u16 = line[..3]
            .parse()
            .map_err(|_| mail_send::Error::UnparseableReply)?;
        if *code.get_or_insert(this) != this {
            return Err(mail_send::Error::UnparseableReply);
        }
        let rest = line.get(4..).unwrap_or("");
        let (esc, rest) = split_enhanced(rest, this);
        if enhanced.is_none() && lines.is_empty() {
            enhanced = esc.map(str::to_string);
        }
        if !rest.is_empty() {
            lines.push(rest.to_string());
        }
    }
    Ok(Reply {
        code: code.ok_or(mail_send::Error::UnparseableReply)?,
        enhanced,
        lines,
        raw: raw.to_vec(),
    })
}

/// Splits a leading enhanced status code (`class.subject.detail`, the class matching the
/// reply code's first digit, each part 1–3 digits) from a line's text.
fn split_enhanced(text: &str, code: u16) -> (Option<&str>, &str) {
    let token = text.split(' ').next().unwrap_or("");
    let parts: Vec<&str> = token.split('.').collect();
    let valid = parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0].len() == 1
        && parts[0].as_bytes()[0] == b'0' + (code / 100) as u8;
    if valid {
        (Some(token), text[token.len()..].trim_start_matches(' '))
    } else {
        (None, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8], n: usize) -> Result<Vec<Reply>, mail_send::Error> {
        let mut stream = bytes;
        read_replies(&mut stream, n).await
    }

    #[tokio::test]
    async fn enhanced_codes_keep_every_digit_and_text_is_as_sent() {
        let r = read(
            b"550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal\r\n",
            1,
        )
        .await
        .unwrap();
        let remote = r[0].to_remote("mx.test");
        assert_eq!(
            remote.to_string(),
            "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal"
        );
        for (line, code, enhanced, text) in [
            (
                "451 4.7.650 rate limited (S775)\r\n",
                451,
                "4.7.650",
                "rate limited (S775)",
            ),
            (
                "550 5.7.511 banned sender\r\n",
                550,
                "5.7.511",
                "banned sender",
            ),
            ("554 no enhanced code\r\n", 554, "5.0.0", "no enhanced code"),
            (
                "550 4.1.1 wrong class stays text\r\n",
                550,
                "5.0.0",
                "4.1.1 wrong class stays text",
            ),
            ("421\r\n", 421, "4.0.0", ""),
        ] {
            let r = read(line.as_bytes(), 1).await.unwrap()[0].to_remote("mx");
            assert_eq!(
                (r.code, r.enhanced.as_str(), r.text.as_str()),
                (code, enhanced, text),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn multi_line_and_pipelined_replies() {
        let r = read(
            b"550-5.7.1 first line\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n250 2.1.5 Ok\r\n354 go\r\n",
            3,
        )
        .await
        .unwrap();
        assert_eq!(r[0].to_remote("mx").text, "first line second third");
        assert_eq!(r[1].to_remote("mx").enhanced, "2.1.5");
        assert_eq!(r[2].code, 354);
        let ehlo = read(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", 1)
            .await
            .unwrap()[0]
            .ehlo()
            .unwrap();
        assert_ne!(ehlo.capabilities & smtp_proto::EXT_PIPELINING, 0);
    }

    #[tokio::test]
    async fn bad_and_endless_replies_are_errors() {
        assert!(read(b"hello\r\n", 1).await.is_err());
        assert!(read(b"250-a\r\n251 b\r\n", 1).await.is_err());
        assert!(
            read(b"250 ok\r\n", 2).await.is_err(),
            "closed before the second"
        );
        let endless = b"250-x\r\n".repeat(20_000);
        assert!(read(&endless, 1).await.is_err());
    }
}
