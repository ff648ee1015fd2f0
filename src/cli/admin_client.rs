//! The CLI's side of the admin API: which address, and one HTTP/1.1 request over a fresh
//! connection (`Connection: close`: the body ends with the stream). The API is on
//! loopback by default, so a full HTTP client would only add weight.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// Responses larger than this are refused (a queue listing is paged).
const MAX_RESPONSE: u64 = 64 << 20;

/// Where the running relay's admin API is: `admin.addr` in its spool directory (written
/// at start), else `[admin] listen`.
///
/// # Errors
/// The API is turned off and no relay wrote its address.
pub fn address(config: &Config) -> anyhow::Result<SocketAddr> {
    let file = config.spool.directory.join(super::serve::ADMIN_ADDR_FILE);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(addr) = text.trim().parse()
    {
        return Ok(addr);
    }
    config
        .admin
        .address()
        .context("[admin] listen")?
        .context("the admin API is off ([admin] listen = \"\")")
}

/// `GET path` on the relay's admin API; the body of a `200`.
///
/// # Errors
/// The relay does not answer, or answers with another status (its text is the error).
pub async fn get(config: &Config, path: &str) -> anyhow::Result<Vec<u8>> {
    request(config, "GET", path).await
}

/// `method path` on the relay's admin API, without a body; the body of a `200`.
///
/// # Errors
/// The relay does not answer, or answers with another status (its text is the error).
pub async fn request(config: &Config, method: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let (status, body) = exchange(config, method, path).await?;
    if status != 200 {
        anyhow::bail!(
            "admin API {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}

/// `method path` on the relay's admin API: the status and the body, whatever the status.
///
/// # Errors
/// The relay does not answer, or not in HTTP.
pub async fn exchange(config: &Config, method: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = address(config)?;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("cannot reach the relay's admin API at {addr}; is `sidestep serve` running?")
        })?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await?;
    let split = memchr::memmem::find(&response, b"\r\n\r\n")
        .context("the admin API sent no complete HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the admin API sent no status")?;
    Ok((status, response[split + 4..].to_vec()))
}

/// A query value, percent-encoded (RFC 3986 unreserved characters kept).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
