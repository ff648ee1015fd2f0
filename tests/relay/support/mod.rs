//! Test harness: real servers on loopback. A DNS server (hickory-server, in process),
//! SMTP sinks on their own 127.x addresses, and sidestep itself as a child process
//! started from the built binary with a config written for the test.

pub mod client;
pub mod dkim;
pub mod dns;
pub mod imap;
pub mod nsd;
pub mod postfix;
pub mod redis;
pub mod relay;
pub mod sink;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Upper bound for waiting on something that should happen; a test that hits it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A random address in 127.64.0.0/10, so sinks of tests running in parallel never share
/// an address (sidestep's egress IPs are 127.0.0.2 and 127.0.0.3).
pub fn fresh_loopback() -> IpAddr {
    let r: u32 = rand::random();
    IpAddr::V4(Ipv4Addr::new(
        127,
        64 + (r % 190) as u8,
        (r >> 8) as u8,
        1 + (r >> 16) as u8 % 250,
    ))
}

/// Polls `done` until it holds; panics with `what()` after [`PATIENCE`].
pub async fn eventually(mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test, saying what to install, when a real peer from Debian is missing.
/// `GET path` on an HTTP server (the admin API) from loopback; the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    http_request(addr, "GET", path).await
}

/// One request without a body on an HTTP server (the admin API) from loopback; the
/// response body.
pub async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

pub fn require(tool: &str) {
    let package = match tool {
        "postfix" | "postconf" | "smtp-sink" | "smtp-source" => "postfix",
        "dnsmasq" => "dnsmasq-base",
        "dovecot" => "dovecot-imapd",
        "ldns-keygen" | "ldns-signzone" => "ldnsutils",
        other => other,
    };
    let found = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: `apt-get install {package}`; `bash .ci/run` installs every tool the tests need"
    );
}

/// A DSN's text with folded lines joined, as a reader sees it.
pub fn dsn_text(m: &sink::Received) -> String {
    String::from_utf8_lossy(&m.data).replace("\r\n ", " ")
}
