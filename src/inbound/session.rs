//! One client connection. The session reads bytes, splits them into command lines or
//! message data according to its [`State`], and answers each command. Replies are
//! buffered and written when no more pipelined input is waiting (RFC 2920 §3.1), so a
//! client that sends MAIL, RCPT, RCPT, DATA in one packet gets its four replies together.

use std::net::SocketAddr;
use std::sync::Arc;

use memchr::memchr;
use smtp_proto::Request;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Inbound;
use super::Reply;
use crate::envelope::{Address, BodyFlags, Sender};

/// After this many rejected commands the client is clearly not speaking SMTP (or is
/// probing); it is disconnected rather than served forever.
const MAX_ERRORS: u32 = 20;
/// Bytes read from the client at a time at least (the input buffer grows by this much
/// when its spare room is smaller).
const READ_CHUNK: usize = 32 * 1024;

/// What the next input bytes mean.
pub(super) enum State {
    /// Command lines.
    Command,
    /// The rest of an over-long command line, discarded up to its LF.
    SkipLine,
    /// Message content after `354`, up to CRLF.CRLF.
    Data(DataReceiver),
    /// Content of a message that is already too big: read to its end, then `552`.
    DataDiscard(DummyDataReceiver),
    /// A BDAT chunk with `remaining` bytes still to come. `reject` is the answer for a
    /// chunk that arrived out of sequence: its bytes are read and dropped.
    Bdat {
        size: usize,
        remaining: usize,
        last: bool,
        reject: Option<Reply>,
    },
    /// An AUTH exchange: the next line is the client's answer to our `334`.
    Sasl(super::auth::Sasl),
}

/// The mail transaction between MAIL and the end of DATA/BDAT LAST. RSET and the end of
/// the message `take()` it.
pub(super) struct Transaction {
    pub sender: Sender,
    pub recipients: Vec<Address>,
    pub flags: BodyFlags,
    pub body: Vec<u8>,
    /// The content outgrew `max_message_size`; it is discarded and answered with `552`.
    pub oversize: bool,
    /// BDAT was used; DATA is then out of sequence (RFC 3030 §2).
    pub chunking: bool,
    /// RCPTs refused for `max_recipients` so far.
    pub overshoot: usize,
}

/// One client connection on the relay port.
pub struct Session<S> {
    pub(super) stream: S,
    pub(super) inbound: Arc<Inbound>,
    /// The configuration this session started with.
    pub(super) config: Arc<crate::config::Config>,
    pub(super) peer: SocketAddr,
    pub(super) state: State,
    /// The name from HELO/EHLO; MAIL needs it first.
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) txn: Option<Transaction>,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) errors: u32,
    /// Replies given so far: each one ends a request and starts the next one's deadline.
    pub(super) replies: u64,
    /// The session runs under TLS: how it was negotiated (for `Received:` and the log).
    pub(super) tls: Option<String>,
    /// Logged in as this user (AUTH).
    pub(super) user: Option<super::users::User>,
    /// STARTTLS was accepted: the session ends here and resumes under TLS.
    pub(super) starttls: bool,
    /// Send the `220` greeting (not after STARTTLS, where the client goes on with EHLO).
    greet: bool,
}

/// How a session ended.
pub enum Ending<S> {
    /// The connection is done with.
    Closed,
    /// The client asked for STARTTLS and got `220`: the handshake goes on with this
    /// stream, and a fresh session after it (RFC 3207 §4.2: nothing from before counts).
    StartTls(S),
}

/// The connection is no longer usable (I/O error, timeout, client gone).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session on `stream` from `peer`, before the greeting.
    pub fn new(stream: S, inbound: Arc<Inbound>, peer: SocketAddr) -> Self {
        Self {
            stream,
            config: inbound.config(),
            inbound,
            peer,
            state: State::Command,
            helo: None,
            esmtp: false,
            txn: None,
            input: Vec::with_capacity(4096),
            output: Vec::with_capacity(1024),
            errors: 0,
            replies: 0,
            tls: None,
            user: None,
            starttls: false,
            greet: true,
        }
    }

    /// A session on a stream that is under TLS already: `tls` says how it was
    /// negotiated; `greet` is false when STARTTLS led here (the client speaks first).
    pub fn under_tls(mut self, tls: String, greet: bool) -> Self {
        self.tls = Some(tls);
        self.greet = greet;
        self
    }

    /// Runs the session to its end: QUIT, a closing reply, idle timeout or disconnect.
    ///
    /// # Errors
    /// The connection failed; nothing is left to tell the client.
    pub async fn run(mut self) -> Result<Ending<S>, SessionError> {
        let hostname = self.config.server.hostname.clone();
        if self.greet {
            self.push(Reply::new(220, "", format!("{hostname} ESMTP sidestep")));
        }
        let server = &self.config.server;
        let (idle, stress) = (server.idle_timeout.get(), server.stress_timeout.get());
        let min_rate = server.min_data_rate.max(1) as f64;
        // Each request (a command, or message content after 354) has a deadline counted
        // from the reply before it, whatever the client trickles meanwhile; content
        // earns time at min_data_rate. One timer for the whole session, re-armed only
        // per request or when it fires early (at the latest every `stress`, so a table
        // that fills up shortens the wait of sessions already idle).
        let mut request_start = tokio::time::Instant::now();
        let mut allowance = std::time::Duration::ZERO;
        let mut replies_seen = 0;
        let expiry = tokio::time::sleep(idle.min(stress));
        tokio::pin!(expiry);
        let mut stopping = self.inbound.stopping.clone();
        loop {
            let mut close = self.process_input().await;
            if !close && self.may_stop_here() && *stopping.borrow() {
                close = self.say_stopping();
            }
            if self.replies != replies_seen {
                replies_seen = self.replies;
                request_start = tokio::time::Instant::now();
                allowance = std::time::Duration::ZERO;
                expiry.as_mut().reset(request_start + idle.min(stress));
            }
            if !self.output.is_empty() {
                self.stream.write_all(&self.output).await?;
                self.stream.flush().await?;
                self.output.clear();
            }
            if close {
                if self.starttls {
                    return Ok(Ending::StartTls(self.stream));
                }
                // Dropping the socket closes it, which sends the FIN after the reply: a
                // shutdown(2) first would be one more system call per session to the
                // same effect (and mostly ENOTCONN, the client having closed after QUIT).
                return Ok(Ending::Closed);
            }
            // Straight into the input buffer's spare capacity: no zeroed scratch buffer per
            // session, no copy out of it.
            if self.input.capacity() - self.input.len() < READ_CHUNK {
                self.input.reserve(READ_CHUNK);
            }
            let n = tokio::select! {
                read = self.stream.read_buf(&mut self.input) => read?,
                _ = stopping.changed(), if self.may_stop_here() && !*stopping.borrow() => {
                    // Between transactions: the loop says 421 at its top.
                    continue;
                }
                () = &mut expiry => {
                    let timeout = if self.inbound.sessions.under_stress() { stress } else { idle };
                    let limit = request_start + allowance + timeout;
                    let now = tokio::time::Instant::now();
                    if now < limit {
                        expiry.as_mut().reset(limit.min(now + stress));
                        continue;
                    }
                    tracing::info!(client = %self.peer, "request deadline passed; disconnecting");
                    self.push(Reply::new(
                        421,
                        "4.4.2",
                        format!("{hostname} Error: timeout exceeded"),
                    ));
                    self.stream.write_all(&self.output).await?;
                    let _ = self.stream.shutdown().await;
                    return Ok(Ending::Closed);
                }
            };
            if n == 0 {
                return Ok(Ending::Closed);
            }
            if !matches!(
                self.state,
                State::Command | State::SkipLine | State::Sasl(_)
            ) {
                allowance += std::time::Duration::from_secs_f64(n as f64 / min_rate);
            }
        }
    }

    /// Whether a stop may end the session now: no transaction is open and no input is
    /// waiting to be answered.
    fn may_stop_here(&self) -> bool {
        self.txn.is_none() && matches!(self.state, State::Command) && self.input.is_empty()
    }

    /// The relay is stopping: `421` (RFC 5321 §3.8) and close. Returns true.
    fn say_stopping(&mut self) -> bool {
        let hostname = &self.config.server.hostname;
        let reply = Reply::new(
            421,
            "4.3.2",
            format!("{hostname} Service shutting down, try again later"),
        );
        self.push(reply);
        true
    }

    pub(super) fn push(&mut self, reply: Reply) {
        self.replies += 1;
        if reply.is_error() {
            self.errors += 1;
        }
        reply.write_to(&mut self.output);
    }

    /// Consumes every complete unit of input. Returns true when the session must close.
    async fn process_input(&mut self) -> bool {
        let max_line = self.config.server.max_line_length;
        let mut pos = 0;
        while pos < self.input.len() {
            match &mut self.state {
                State::Command if self.txn.is_none() && *self.inbound.stopping.borrow() => {
                    // Stopping: a new transaction (or anything but the end of the one
                    // under way) gets 421.
                    self.input.clear();
                    return self.say_stopping();
                }
                State::Command => {
                    let rest = &self.input[pos..];
                    let Some(lf) = memchr(b'\n', rest) else {
                        if rest.len() > max_line {
                            self.state = State::SkipLine;
                            pos = self.input.len();
                            self.push(Reply::new(500, "5.5.2", "Line too long"));
                        }
                        break;
                    };
                    let line_end = pos + lf + 1;
                    let reply = if lf + 1 > max_line {
                        Some(Reply::new(500, "5.5.2", "Line too long"))
                    } else {
                        let line = self.input[pos..line_end].to_vec();
                        pos = line_end;
                        self.command(&line).await
                    };
                    pos = pos.max(line_end);
                    if let Some(reply) = reply {
                        let closes = reply.closes();
                        self.push(reply);
                        if closes {
                            return true;
                        }
                    }
                    if self.starttls {
                        // Anything the client pipelined after STARTTLS came in the clear
                        // and must not be acted on under TLS (CVE-2011-0411): dropped.
                        self.input.clear();
                        return true;
                    }
                    if self.errors >= MAX_ERRORS {
                        self.push(Reply::new(
                            421,
                            "4.7.0",
                            "Too many errors, closing connection",
                        ));
                        return true;
                    }
                }
                State::Sasl(_) => {
                    let rest = &self.input[pos..];
                    let Some(lf) = memchr(b'\n', rest) else {
                        if rest.len() > max_line {
                            self.state = State::SkipLine;
                            pos = self.input.len();
                            self.push(Reply::new(
                                500,
                                "5.5.6",
                                "Authentication exchange line is too long",
                            ));
                        }
                        break;
                    };
                    let line = self.input[pos..pos + lf + 1].to_vec();
                    pos += lf + 1;
                    let reply = self.sasl_line(&line).await;
                    self.push(reply);
                }
                State::SkipLine => match memchr(b'\n', &self.input[pos..]) {
                    Some(lf) => {
                        pos += lf + 1;
                        self.state = State::Command;
                    }
                    None => pos = self.input.len(),
                },
                State::Data(_) | State::DataDiscard(_) | State::Bdat { .. } => {
                    let (used, reply) = self.ingest_content(pos).await;
                    pos += used;
                    if let Some(reply) = reply {
                        self.push(reply);
                    }
                }
            }
        }
        self.input.drain(..pos);
        false
    }

    /// Parses and answers one command line. `None` means no reply now (a BDAT chunk
    /// whose data is still to come).
    async fn command(&mut self, line: &[u8]) -> Option<Reply> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return Some(parse_error(e)),
        };
        Some(match request {
            Request::Ehlo { host } => self.ehlo(&host, true),
            Request::Helo { host } => self.ehlo(&host, false),
            Request::Lhlo { .. } => Reply::new(500, "5.5.1", "LHLO is for LMTP, use EHLO"),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.txn = None;
                Reply::new(250, "2.0.0", "Ok")
            }
            Request::Noop { .. } => Reply::new(250, "2.0.0", "Ok"),
            Request::Quit => Reply::new(221, "2.0.0", "Bye"),
            Request::Vrfy { .. } => Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Request::Expn { .. } => Reply::new(502, "5.5.1", "EXPN not available"),
            Request::Help { .. } => Reply::new(214, "2.0.0", "See RFC 5321"),
            Request::StartTls => self.start_tls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response).await,
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Reply::new(502, "5.5.1", "Command not implemented")
            }
        })
    }
}

fn parse_error(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => Reply::new(500, "5.5.1", "Unknown command"),
        E::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        E::InvalidRecipientAddress => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
        E::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
        E::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid parameter {param}"))
        }
        E::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
        }
        E::ResponseTooLong => Reply::new(500, "5.5.2", "Line too long"),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
            Reply::new(500, "5.5.2", "Syntax error")
        }
    }
}
