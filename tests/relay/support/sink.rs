//! A destination SMTP server written for the tests (not sidestep's code): it records
//! every message with the peer address it came from, and answers as the test says.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::PATIENCE;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub peer: IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Content after dot-unstuffing, CRLF line endings, without the final `.` line.
    pub data: Vec<u8>,
}

/// How the sink answers. Tests change it while the relay runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Replies to RCPT for given addresses (default `250 2.1.5 Ok`).
    pub rcpt: HashMap<String, String>,
    /// Replies to the end of DATA, consumed one per message; then `250 2.0.0 Ok`.
    pub data: VecDeque<String>,
    /// Answer every DATA with this (after the queue above is empty).
    pub data_always: Option<String>,
    /// Greeting replaced for connections from these source addresses.
    pub refuse_from: HashMap<IpAddr, String>,
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Source addresses of every connection, accepted or refused.
    pub connections: Arc<Mutex<Vec<IpAddr>>>,
}

impl Sink {
    /// Starts a sink on `ip`, on `port` (0: any).
    pub async fn start(ip: IpAddr, port: u16) -> Sink {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            received: Default::default(),
            behaviour: Default::default(),
            connections: Default::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(stream, peer.ip()).await;
                });
            }
        });
        sink
    }

    /// Starts `n` sinks on fresh addresses sharing one port (sidestep delivers to one
    /// configured port).
    pub async fn start_many(n: usize) -> Vec<Sink> {
        'again: loop {
            let first = Sink::start(super::fresh_loopback(), 0).await;
            let port = first.addr.port();
            let mut all = vec![first];
            for _ in 1..n {
                let ip = super::fresh_loopback();
                match TcpListener::bind((ip, port)).await {
                    Ok(l) => {
                        drop(l);
                        all.push(Sink::start(ip, port).await);
                    }
                    Err(_) => continue 'again,
                }
            }
            return all;
        }
    }

    pub fn behave(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived; panics after [`PATIENCE`].
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "sink {} got {} of {n} messages: {got:#?}",
                    self.addr,
                    got.len()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn session(&self, stream: tokio::net::TcpStream, peer: IpAddr) -> std::io::Result<()> {
        self.connections.lock().unwrap().push(peer);
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let refuse = self
            .behaviour
            .lock()
            .unwrap()
            .refuse_from
            .get(&peer)
            .cloned();
        if let Some(greeting) = refuse {
            w.write_all(format!("{greeting}\r\n").as_bytes()).await?;
            // Like a real receiver that refuses a reputation-listed IP: answer the
            // client's commands with the same refusal until it quits.
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).await? > 0 {
                if line.to_ascii_uppercase().starts_with(b"QUIT") {
                    w.write_all(b"221 2.0.0 Bye\r\n").await?;
                    return Ok(());
                }
                w.write_all(format!("{greeting}\r\n").as_bytes()).await?;
                line.clear();
            }
            return Ok(());
        }
        w.write_all(b"220 sink.test ESMTP test sink\r\n").await?;
        let mut helo = String::new();
        let mut mail_from = String::new();
        let mut rcpts = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let upper = text.to_ascii_uppercase();
            let reply = if upper.starts_with("EHLO") {
                helo = text[4..].trim().to_string();
                "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000".to_string()
            } else if upper.starts_with("HELO") {
                helo = text[4..].trim().to_string();
                "250 sink.test".to_string()
            } else if upper.starts_with("MAIL FROM:") {
                mail_from = text[10..].to_string();
                rcpts.clear();
                "250 2.1.0 Ok".to_string()
            } else if upper.starts_with("RCPT TO:") {
                let arg = text[8..].to_string();
                let addr = arg
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let special = self.behaviour.lock().unwrap().rcpt.get(&addr).cloned();
                match special {
                    Some(reply) => reply,
                    None => {
                        rcpts.push(addr);
                        "250 2.1.5 Ok".to_string()
                    }
                }
            } else if upper == "DATA" {
                if rcpts.is_empty() {
                    "554 5.5.1 No valid recipients".to_string()
                } else {
                    w.write_all(b"354 go ahead\r\n").await?;
                    let mut data = Vec::new();
                    loop {
                        line.clear();
                        if r.read_until(b'\n', &mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == b".\r\n" {
                            break;
                        }
                        let content = line.strip_prefix(b".").unwrap_or(&line);
                        data.extend_from_slice(content);
                    }
                    let reply = {
                        let mut b = self.behaviour.lock().unwrap();
                        b.data.pop_front().or_else(|| b.data_always.clone())
                    };
                    match reply {
                        Some(reply) => reply,
                        None => {
                            self.received.lock().unwrap().push(Received {
                                peer,
                                helo: helo.clone(),
                                mail_from: mail_from.clone(),
                                rcpts: rcpts.clone(),
                                data,
                            });
                            "250 2.0.0 Ok: queued".to_string()
                        }
                    }
                }
            } else if upper == "RSET" || upper == "NOOP" {
                "250 2.0.0 Ok".to_string()
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.1 Unknown command".to_string()
            };
            w.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }
}
