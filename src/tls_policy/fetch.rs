//! Fetching an MTA-STS policy (RFC 8461 §3.3): `GET /.well-known/mta-sts.txt` from
//! `mta-sts.DOMAIN` over HTTPS with a certificate valid for that name, `200` only (no
//! redirects), at most [`MAX_POLICY`] bytes, within the configured time.
//!
//! A few lines of HTTP/1.0 rather than an HTTP client crate: one request, one answer,
//! the connection closed after it, and the resolver the rest of delivery uses (so the
//! tests' DNS server answers for `mta-sts.DOMAIN` too).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dns::Resolver;

/// The largest policy file accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;

/// Why a policy could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// `mta-sts.DOMAIN` has no address.
    #[error("{0}")]
    Dns(#[from] crate::dns::DnsError),
    /// Connecting, TLS (certificate included) or reading failed.
    #[error("{0}")]
    Io(String),
    /// The whole exchange took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// Anything but `200`; a redirect is not followed.
    #[error("HTTP status {0}")]
    Status(String),
    /// More than [`MAX_POLICY`] bytes.
    #[error("policy larger than {MAX_POLICY} bytes")]
    TooLarge,
    /// Not an HTTP answer, or a body that is not text.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

impl FetchError {
    /// Whether the certificate was at fault (TLS-RPT's `sts-webpki-invalid`).
    pub fn is_certificate(&self) -> bool {
        matches!(self, Self::Io(m) if m.contains("certificate"))
    }
}

/// Fetches the policy text of `domain` from port `port`.
///
/// # Errors
/// See [`FetchError`].
pub async fn fetch_policy(
    resolver: &Resolver,
    tls: &Arc<rustls::ClientConfig>,
    domain: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, fetch(resolver, tls, domain, port))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn fetch(
    resolver: &Resolver,
    tls: &Arc<rustls::ClientConfig>,
    domain: &str,
    port: u16,
) -> Result<String, FetchError> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: sidestep\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    let answer = https_exchange(
        resolver,
        tls,
        (&host, port),
        &[request.as_bytes()],
        MAX_POLICY + 16 * 1024,
    )
    .await?;
    parse_answer(&answer)
}

/// One HTTPS request (`request`, written in parts) to `host` on `port`, its addresses
/// looked up through `resolver` and tried in turn until one connects; the certificate
/// must be valid for `host` under `tls`. Returns what the server answered before it
/// closed, at most `limit` bytes. Shared by policy fetches and TLS report POSTs.
///
/// # Errors
/// No address, no connection, TLS (certificate included) or I/O failure.
pub async fn https_exchange(
    resolver: &Resolver,
    tls: &Arc<rustls::ClientConfig>,
    (host, port): (&str, u16),
    request: &[&[u8]],
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let addrs = resolver.lookup_addresses(host).await?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| FetchError::Malformed("bad host name"))?;
    let io = |e: std::io::Error| FetchError::Io(e.to_string());
    let mut last = FetchError::Io(format!("no address for {host}"));
    for ip in addrs {
        let stream = match tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(s) => s,
            Err(e) => {
                last = io(e);
                continue;
            }
        };
        let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, stream)
            .await
            .map_err(io)?;
        for part in request {
            stream.write_all(part).await.map_err(io)?;
        }
        stream.flush().await.map_err(io)?;
        let mut answer = Vec::new();
        let read = (&mut stream)
            .take(limit as u64)
            .read_to_end(&mut answer)
            .await;
        // A server that closes without close_notify still answered: keep what came.
        if answer.is_empty() {
            read.map_err(io)?;
        }
        return Ok(answer);
    }
    Err(last)
}

/// The body of an HTTP/1.x answer, if it is a `200` of at most [`MAX_POLICY`] bytes.
fn parse_answer(answer: &[u8]) -> Result<String, FetchError> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(FetchError::Malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&answer[..split]).map_err(|_| FetchError::Malformed("headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or(FetchError::Malformed("no status line"))?;
    if status != "200" {
        return Err(FetchError::Status(status.to_string()));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &answer[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    if body.len() > MAX_POLICY {
        return Err(FetchError::TooLarge);
    }
    String::from_utf8(body).map_err(|_| FetchError::Malformed("body is not UTF-8"))
}

/// A `Transfer-Encoding: chunked` body, joined (a server may chunk even for HTTP/1.0).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(FetchError::Malformed("chunk size"))?;
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or(FetchError::Malformed("chunk size"))?;
        if size == 0 {
            return Ok(out);
        }
        let data = body
            .get(end + 2..end + 2 + size)
            .ok_or(FetchError::Malformed("short chunk"))?;
        out.extend_from_slice(data);
        if out.len() > MAX_POLICY {
            return Err(FetchError::TooLarge);
        }
        body = body.get(end + 4 + size..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_gives_a_policy() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nversion: STSv1\r\n";
        assert_eq!(parse_answer(ok).unwrap(), "version: STSv1\r\n");
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n";
        assert!(matches!(parse_answer(redirect), Err(FetchError::Status(s)) if s == "301"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\r\n\r\n3\r\ncde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap(), "ab\r\ncde");
        let mut big = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_POLICY + 1));
        assert!(matches!(parse_answer(&big), Err(FetchError::TooLarge)));
    }
}
