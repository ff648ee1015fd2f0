//! A raw SMTP client for tests: writes exactly the bytes a test gives it, so malformed
//! and pipelined input can be sent, and reads whole (multi-line) replies.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::PATIENCE;

pub struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    /// Connects and reads the greeting, which must start with `greeting`.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_from("127.0.0.1".parse().unwrap(), addr).await
    }

    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// The connection itself, for a TLS handshake after STARTTLS (nothing may be left
    /// unread).
    pub fn into_stream(self) -> tokio::net::TcpStream {
        assert!(
            self.r.buffer().is_empty(),
            "unread input before the handshake"
        );
        self.r.into_inner().reunite(self.w).unwrap()
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.w.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Like [`Client::send`], for a server that may have closed the connection.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes).await
    }

    /// Reads one complete reply; returns its lines joined with `\n`, or "" on EOF.
    pub async fn reply(&mut self) -> String {
        tokio::time::timeout(PATIENCE, async {
            let mut all = Vec::new();
            loop {
                let mut line = String::new();
                if self.r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return all.join("\n");
                }
                let line = line.trim_end().to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                all.push(line);
                if last {
                    return all.join("\n");
                }
            }
        })
        .await
        .expect("no reply from server")
    }

    /// Reads a reply and asserts it starts with `want` (e.g. "250 2.1.5" or "554 5.7.1").
    pub async fn expect(&mut self, want: &str) -> String {
        let got = self.reply().await;
        let last = got.lines().last().unwrap_or("");
        assert!(
            last.starts_with(want) || got.starts_with(want),
            "expected {want:?}, got {got:?}"
        );
        got
    }

    /// Sends one command line and checks the reply.
    pub async fn cmd(&mut self, line: &str, want: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        self.expect(want).await
    }

    /// Sends one command line and returns the reply, whatever it is.
    pub async fn reply_to(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// MAIL, RCPT for each of `to`, DATA: the server is then waiting for the content.
    pub async fn begin_data(&mut self, from: &str, to: &[&str]) {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.cmd("DATA", "354").await;
    }

    /// A whole plain transaction; returns the final reply (with the queue id).
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.begin_data(from, to).await;
        self.send(body).await;
        self.send(".\r\n").await;
        self.expect("250 2.0.0").await
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(PATIENCE, self.r.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Connects, greets with EHLO and returns the client ready for MAIL.
pub async fn ready(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    c.expect("220").await;
    c.cmd("EHLO client.test", "250").await;
    c
}
