//! A destination SMTP server written for the tests (not sidestep's code): it records
//! every message with the peer address it came from, and answers as the test says.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::PATIENCE;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub peer: IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Whether the message came over TLS (after STARTTLS).
    pub tls: bool,
    /// The AUTH user, when the client authenticated.
    pub auth: Option<String>,
    /// Content after dot-unstuffing, CRLF line endings, without the final `.` line.
    pub data: Vec<u8>,
    /// The message came in BDAT chunks (RFC 3030), not after DATA.
    pub chunked: bool,
}

/// How the sink answers. Tests change it while the relay runs.
#[derive(Default)]
pub struct Behaviour {
    /// Replies to RCPT for given addresses (default `250 2.1.5 Ok`).
    pub rcpt: HashMap<String, String>,
    /// Replies to the end of DATA, consumed one per message; then `250 2.0.0 Ok`.
    pub data: VecDeque<String>,
    /// Answer every DATA with this (after the queue above is empty).
    pub data_always: Option<String>,
    /// Greeting replaced for connections from these source addresses.
    pub refuse_from: HashMap<IpAddr, String>,
    /// The reply to the end of DATA for connections from these source addresses (a
    /// receiver that refuses an IP only once it has seen the message); not recorded.
    pub data_from: HashMap<IpAddr, String>,
    /// The reply to the end of DATA for messages whose content contains the key (a
    /// content filter); `{peer}` in it becomes the client's address. Not recorded.
    pub data_containing: HashMap<String, String>,
    /// Offer STARTTLS with this certificate.
    pub tls: Option<TlsAcceptor>,
    /// Speak TLS from the first byte (a submissions/465 server), with this certificate.
    pub implicit_tls: Option<TlsAcceptor>,
    /// Wait this long before answering the end of DATA (to make deliveries overlap).
    pub data_delay: Option<Duration>,
    /// Hold each answer to the end of DATA until the test lets it through (an attempt
    /// under way for as long as the test needs, without a timer).
    pub data_gate: Option<Gate>,
    /// Require AUTH PLAIN/LOGIN with this user and password before MAIL.
    pub auth: Option<(String, String)>,
    /// What the sink does with a connection once a message has been answered.
    pub after_message: AfterMessage,
    /// Answer DATA with 354 even when no recipient was accepted (as some servers do; a
    /// pipelining client must then end the empty message), and refuse it at the dot.
    pub lax_data: bool,
    /// Do not offer PIPELINING: the client must wait for each reply.
    pub no_pipelining: bool,
    /// Offer CHUNKING (RFC 3030) and take messages in BDAT chunks; their last chunk is
    /// answered as the end of DATA is.
    pub chunking: bool,
    /// With `chunking`: once the envelope has no accepted recipient, close the connection
    /// instead of reading the chunk (a server breaking RFC 3030 §2).
    pub hang_up_on_refused_chunk: bool,
    /// Accept connections and close them at once, without a greeting (a server that is
    /// down behind its address); they are counted in `connections`.
    pub dead: bool,
    /// Check SPF for the connecting IP and the MAIL FROM domain (through the test's DNS)
    /// at the end of DATA, and refuse what does not pass as Gmail does (5.7.26).
    pub spf: Option<Arc<mail_auth::MessageAuthenticator>>,
}

/// An SPF checker for a sink, asking the test's DNS server at `dns`.
pub fn spf_checker(dns: SocketAddr) -> Arc<mail_auth::MessageAuthenticator> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let mut ns = NameServerConfig::udp_and_tcp(dns.ip());
    for conn in &mut ns.connections {
        conn.port = dns.port();
    }
    Arc::new(
        mail_auth::MessageAuthenticator::new(
            ResolverConfig::from_name_servers(vec![ns]),
            ResolverOpts::default(),
        )
        .unwrap(),
    )
}

/// Gmail's refusal when SPF does not pass and nothing else authenticates the mail.
async fn spf_refusal(
    auth: &mail_auth::MessageAuthenticator,
    peer: IpAddr,
    helo: &str,
    mail_from: &str,
) -> Option<String> {
    let sender = mail_from
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string();
    let output = auth
        .verify_spf(mail_auth::spf::verify::SpfParameters::verify_mail_from(
            peer,
            helo,
            "sink.test",
            &sender,
        ))
        .await;
    let domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_string();
    (output.result() != mail_auth::SpfResult::Pass).then(|| {
        format!(
            "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM. Authentication results: DKIM = did not pass SPF [{domain}] with ip: [{peer}] = did not pass"
        )
    })
}

/// Answers to the end of DATA wait here until the test lets them through.
#[derive(Clone)]
pub struct Gate {
    waiting: Arc<AtomicUsize>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    pub fn new() -> Self {
        Self {
            waiting: Default::default(),
            open: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    /// Messages whose answer waits at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Lets `n` answers through.
    pub fn let_through(&self, n: usize) {
        self.open.add_permits(n);
    }

    async fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = self.open.acquire().await {
            permit.forget();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a connection goes on after a message, to try the client's connection reuse.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub enum AfterMessage {
    /// Waits for the next command, like most servers.
    #[default]
    Stay,
    /// Closes the connection at once, without a word.
    HangUp,
    /// Answers the next command with `421` (an idle timeout) and closes.
    Refuse421,
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Source addresses of every connection, accepted or refused.
    pub connections: Arc<Mutex<Vec<IpAddr>>>,
    open: Arc<AtomicUsize>,
    /// The most connections that were open at once.
    pub max_open: Arc<AtomicUsize>,
    /// QUIT commands received.
    pub quits: Arc<AtomicUsize>,
    /// Messages answered with a `data_from` refusal.
    pub refused: Arc<AtomicUsize>,
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
            open: Default::default(),
            max_open: Default::default(),
            quits: Default::default(),
            refused: Default::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let now = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                    s.max_open.fetch_max(now, Ordering::SeqCst);
                    s.connections.lock().unwrap().push(peer.ip());
                    if s.behaviour.lock().unwrap().dead {
                        drop(stream);
                        s.open.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    let implicit = s.behaviour.lock().unwrap().implicit_tls.clone();
                    let _ = match implicit {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => s.session(Box::new(tls), peer.ip(), true, true).await,
                            Err(e) => Err(e),
                        },
                        None => s.session(Box::new(stream), peer.ip(), false, true).await,
                    };
                    s.open.fetch_sub(1, Ordering::SeqCst);
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

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The egress IP each message came from, in arrival order.
    pub fn peers(&self) -> Vec<IpAddr> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.peer)
            .collect()
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

    async fn session(
        &self,
        stream: Box<dyn Io>,
        peer: IpAddr,
        tls: bool,
        greet: bool,
    ) -> std::io::Result<()> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        let (refuse, acceptor, required_auth, pipelining, chunking) = {
            let b = self.behaviour.lock().unwrap();
            (
                b.refuse_from.get(&peer).cloned(),
                b.tls.clone(),
                b.auth.clone(),
                if b.no_pipelining {
                    ""
                } else {
                    "250-PIPELINING\r\n"
                },
                if b.chunking { "250-CHUNKING\r\n" } else { "" },
            )
        };
        let mut authenticated: Option<String> = None;
        if let Some(greeting) = refuse.filter(|_| !tls) {
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
        if greet {
            w.write_all(b"220 sink.test ESMTP test sink\r\n").await?;
        }
        let mut helo = String::new();
        let mut mail_from = String::new();
        let mut rcpts = Vec::new();
        let mut line = Vec::new();
        // The BDAT chunks of the message under way.
        let mut chunks: Vec<u8> = Vec::new();
        // A whole message read (its content, and whether it came in chunks).
        let mut whole: Option<(Vec<u8>, bool)> = None;
        let mut answered_message = false;
        loop {
            line.clear();
            let after = self.behaviour.lock().unwrap().after_message;
            if answered_message && after == AfterMessage::HangUp {
                return Ok(());
            }
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            if answered_message && after == AfterMessage::Refuse421 {
                w.write_all(b"421 4.4.2 sink.test idle timeout, closing\r\n")
                    .await?;
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let upper = text.to_ascii_uppercase();
            let reply = if upper.starts_with("EHLO") {
                helo = text[4..].trim().to_string();
                let starttls = if acceptor.is_some() && !tls {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                let auth = if required_auth.is_some() && (tls || acceptor.is_none()) {
                    "250-AUTH PLAIN LOGIN\r\n"
                } else {
                    ""
                };
                format!(
                    "250-sink.test\r\n{starttls}{auth}{pipelining}{chunking}250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000"
                )
            } else if upper.starts_with("AUTH PLAIN") && required_auth.is_some() {
                let mut arg = text[10..].trim().to_string();
                if arg.is_empty() {
                    w.write_all(b"334 \r\n").await?;
                    line.clear();
                    r.read_until(b'\n', &mut line).await?;
                    arg = String::from_utf8_lossy(&line).trim().to_string();
                }
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(arg)
                    .unwrap_or_default();
                let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
                let (user, pass) = required_auth.clone().unwrap();
                if parts.len() == 3 && parts[1] == user.as_bytes() && parts[2] == pass.as_bytes() {
                    authenticated = Some(user);
                    "235 2.7.0 Authentication successful".to_string()
                } else {
                    "535 5.7.8 Authentication credentials invalid".to_string()
                }
            } else if upper.starts_with("MAIL FROM:")
                && required_auth.is_some()
                && authenticated.is_none()
            {
                "530 5.7.0 Authentication required".to_string()
            } else if upper == "STARTTLS" && !tls && acceptor.is_some() {
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                let stream = r.into_inner().unsplit(w);
                let tls_stream = acceptor.unwrap().accept(stream).await?;
                return Box::pin(self.session(Box::new(tls_stream), peer, true, false)).await;
            } else if upper.starts_with("HELO") {
                helo = text[4..].trim().to_string();
                "250 sink.test".to_string()
            } else if upper.starts_with("MAIL FROM:") {
                mail_from = text[10..].to_string();
                rcpts.clear();
                chunks.clear();
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
                let lax = self.behaviour.lock().unwrap().lax_data;
                if rcpts.is_empty() && !lax {
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
                    whole = Some((data, false));
                    String::new()
                }
            } else if upper.starts_with("BDAT ") && chunking.is_empty() {
                "502 5.5.1 Unknown command".to_string()
            } else if upper.starts_with("BDAT ") {
                let mut words = upper.split_ascii_whitespace().skip(1);
                let size: Option<usize> = words.next().and_then(|w| w.parse().ok());
                let last = words.next() == Some("LAST");
                let Some(size) = size else {
                    w.write_all(b"501 5.5.4 BDAT needs a size\r\n").await?;
                    continue;
                };
                let hang_up = self.behaviour.lock().unwrap().hang_up_on_refused_chunk;
                if hang_up && rcpts.is_empty() {
                    w.flush().await?;
                    return Ok(());
                }
                let start = chunks.len();
                chunks.resize(start + size, 0);
                r.read_exact(&mut chunks[start..]).await?;
                if !last {
                    format!("250 2.0.0 {size} octets received")
                } else if rcpts.is_empty() {
                    chunks.clear();
                    "554 5.5.1 No valid recipients".to_string()
                } else {
                    whole = Some((std::mem::take(&mut chunks), true));
                    String::new()
                }
            } else if upper == "RSET" || upper == "NOOP" {
                chunks.clear();
                "250 2.0.0 Ok".to_string()
            } else if upper == "QUIT" {
                self.quits.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.1 Unknown command".to_string()
            };
            // A whole message (after DATA, or its last chunk) is answered here.
            let reply = match whole.take() {
                Some((data, chunked)) => {
                    answered_message = true;
                    let message = Envelope {
                        peer,
                        helo: &helo,
                        mail_from: &mail_from,
                        rcpts: &rcpts,
                        tls,
                        auth: &authenticated,
                    };
                    self.end_of_message(message, data, chunked).await
                }
                None => reply,
            };
            w.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }
}

/// Who sent a message and to whom, as the session knows it at its end.
struct Envelope<'a> {
    peer: IpAddr,
    helo: &'a str,
    mail_from: &'a str,
    rcpts: &'a [String],
    tls: bool,
    auth: &'a Option<String>,
}

impl Sink {
    /// The answer to a whole message (the end of DATA, or the last BDAT chunk), as the
    /// behaviour says; an accepted message is recorded.
    async fn end_of_message(&self, e: Envelope<'_>, data: Vec<u8>, chunked: bool) -> String {
        let peer = e.peer;
        let gate = self.behaviour.lock().unwrap().data_gate.clone();
        if let Some(gate) = gate {
            gate.pass().await;
        }
        let (reply, delay) = {
            let mut b = self.behaviour.lock().unwrap();
            let from_peer = b.data_from.get(&peer).cloned();
            let content = String::from_utf8_lossy(&data);
            let filtered = b
                .data_containing
                .iter()
                .find(|(k, _)| content.contains(k.as_str()))
                .map(|(_, v)| v.replace("{peer}", &peer.to_string()));
            (
                from_peer
                    .or(filtered)
                    .or_else(|| b.data.pop_front())
                    .or_else(|| b.data_always.clone()),
                b.data_delay,
            )
        };
        let spf = self.behaviour.lock().unwrap().spf.clone();
        let reply = match (reply, spf) {
            (None, Some(auth)) => spf_refusal(&auth, peer, e.helo, e.mail_from).await,
            (reply, _) => reply,
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if self.behaviour.lock().unwrap().data_from.contains_key(&peer) {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        match reply {
            Some(reply) => reply,
            None if e.rcpts.is_empty() => "554 5.5.1 No valid recipients".to_string(),
            None => {
                self.received.lock().unwrap().push(Received {
                    peer,
                    helo: e.helo.to_string(),
                    mail_from: e.mail_from.to_string(),
                    rcpts: e.rcpts.to_vec(),
                    tls: e.tls,
                    auth: e.auth.clone(),
                    data,
                    chunked,
                });
                "250 2.0.0 Ok: queued".to_string()
            }
        }
    }
}

/// A CA and a server certificate for `name` signed by it: the acceptor, and the CA in
/// PEM for the client to trust (as an operator's `ca_file`).
pub fn tls_with_ca(name: &str) -> (TlsAcceptor, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], private)
    .unwrap();
    (TlsAcceptor::from(Arc::new(config)), ca.pem())
}

/// A CA, and a certificate for `name` signed by it: the certificate chain and its key
/// in PEM (as an operator's `tls_certificate` and `tls_key`), and the CA in PEM for
/// clients to trust.
pub fn certificate_files(name: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (leaf.pem() + &ca.pem(), key.serialize_pem(), ca.pem())
}

/// Plain or TLS stream, behind one type so STARTTLS can restart the session.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TLS acceptor with a fresh self-signed certificate for `name`.
pub fn tls_acceptor(name: &str) -> TlsAcceptor {
    self_signed(name).0
}

/// A TLS acceptor with a fresh self-signed certificate for `name`, and the certificate's
/// SubjectPublicKeyInfo (what a DANE `3 1 x` record matches).
pub fn self_signed(name: &str) -> (TlsAcceptor, Vec<u8>) {
    let key = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key.signing_key);
    let cert = key.cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], private)
    .unwrap();
    (TlsAcceptor::from(Arc::new(config)), spki)
}
