//! DATA and BDAT: receiving the content, and the moment of truth — making the message
//! durable before answering `250`.

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{State, Transaction};
use super::{Reply, Session, policy};
use crate::envelope::Sender;
use crate::senders::SenderId;
use crate::spool::{QueueId, QueuedMessage, RecipientState};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn data(&mut self) -> Reply {
        match &self.txn {
            None => Reply::new(503, "5.5.1", "Need MAIL command first"),
            Some(t) if t.recipients.is_empty() => Reply::new(554, "5.5.1", "No valid recipients"),
            Some(t) if t.chunking => Reply::new(503, "5.5.1", "DATA after BDAT is not allowed"),
            Some(_) => {
                let mut rx = DataReceiver::new();
                // The CRLF that ended the DATA line also starts the content, so that an
                // immediate ".\r\n" is an empty message rather than a line with a dot.
                rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                self.state = State::Data(rx);
                Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
            }
        }
    }

    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> Option<Reply> {
        let reject = match &self.txn {
            None => Some(Reply::new(503, "5.5.1", "Need MAIL command first")),
            Some(t) if t.recipients.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        };
        self.state = State::Bdat {
            size,
            remaining: size,
            last,
            reject,
        };
        if size == 0 {
            return Some(self.chunk_done().await);
        }
        None
    }

    /// Feeds input from `pos` to the content receiver. Returns the bytes used and the
    /// reply, if the content (or chunk) ended.
    pub(super) async fn ingest_content(&mut self, pos: usize) -> (usize, Option<Reply>) {
        let max = self.max_size();
        let input = &self.input[pos..];
        match &mut self.state {
            State::Data(rx) => {
                let Some(txn) = self.txn.as_mut() else {
                    self.state = State::Command;
                    return (0, Some(Reply::new(503, "5.5.1", "Need MAIL command first")));
                };
                let mut it = input.iter();
                let done = rx.ingest(&mut it, &mut txn.body);
                let used = input.len() - it.len();
                if done {
                    self.state = State::Command;
                    return (used, Some(self.finish_message().await));
                }
                if txn.body.len() > max {
                    txn.body = Vec::new();
                    txn.oversize = true;
                    self.state = State::DataDiscard(DummyDataReceiver::new_data(rx));
                }
                (used, None)
            }
            State::DataDiscard(rx) => {
                let mut it = input.iter();
                let done = rx.ingest(&mut it);
                let used = input.len() - it.len();
                if done {
                    self.state = State::Command;
                    return (used, Some(self.finish_message().await));
                }
                (used, None)
            }
            State::Bdat {
                remaining, reject, ..
            } => {
                let take = (*remaining).min(input.len());
                if reject.is_none()
                    && let Some(txn) = self.txn.as_mut()
                    && !txn.oversize
                {
                    if txn.body.len() + take > max {
                        txn.body = Vec::new();
                        txn.oversize = true;
                    } else {
                        txn.body.extend_from_slice(&input[..take]);
                    }
                }
                *remaining -= take;
                if *remaining == 0 {
                    return (take, Some(self.chunk_done().await));
                }
                (take, None)
            }
            State::Command | State::SkipLine | State::Sasl(_) => (0, None),
        }
    }

    async fn chunk_done(&mut self) -> Reply {
        let State::Bdat {
            size, last, reject, ..
        } = std::mem::replace(&mut self.state, State::Command)
        else {
            return Reply::new(503, "5.5.1", "No chunk in progress");
        };
        if let Some(reply) = reject {
            return reply;
        }
        let Some(txn) = self.txn.as_mut() else {
            return Reply::new(503, "5.5.1", "Need MAIL command first");
        };
        txn.chunking = true;
        // RFC 3030 §2: after a failed chunk the transaction is over; later chunks get 503.
        if last || txn.oversize {
            return self.finish_message().await;
        }
        Reply::new(250, "2.0.0", format!("{size} octets received"))
    }

    /// End of content: validate, spool durably, then answer (and count the outcome).
    async fn finish_message(&mut self) -> Reply {
        let started = std::time::Instant::now();
        let reply = self.store_or_refuse().await;
        let m = crate::metrics::metrics();
        if reply.code == 250 {
            m.accepted.inc();
            m.accept_latency.observe(started.elapsed().as_secs_f64());
        } else {
            let class = format!("{}xx", reply.code / 100);
            m.refused
                .get_or_create(&crate::metrics::ClassLabels { class })
                .inc();
        }
        reply
    }

    /// Validates the content and spools it durably. The `250` is written only after
    /// `store_message` returned, i.e. after the fsyncs.
    async fn store_or_refuse(&mut self) -> Reply {
        let Some(mut txn) = self.txn.take() else {
            return Reply::new(503, "5.5.1", "Need MAIL command first");
        };
        if txn.oversize {
            let max = self.config.server.max_message_size.as_u64();
            return Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds fixed limit of {max} bytes"),
            );
        }
        if policy::has_bare_cr_or_lf(&txn.body) {
            return Reply::new(
                550,
                "5.6.0",
                "Message contains bare CR or LF; lines must end with CRLF",
            );
        }
        let headers = crate::content::Headers::parse(&txn.body);
        if let Some(refusal) = self.check_one_click(&headers, &txn.sender) {
            return refusal;
        }
        let (body, signed) = self.sign(&headers, std::mem::take(&mut txn.body)).await;
        txn.body = body;
        let signatures = match signed {
            Ok(s) => s,
            Err(refusal) => return refusal,
        };
        let now_us = self.inbound.clock.now_us();
        let id = QueueId::generate(now_us);
        let body = self.with_received_header(&id, &txn, &signatures, now_us / 1_000_000);
        let msg = QueuedMessage {
            id: id.clone(),
            sender: txn.sender,
            recipients: txn
                .recipients
                .into_iter()
                .map(RecipientState::pending)
                .collect(),
            flags: txn.flags,
            received_at: now_us / 1_000_000,
            attempts: 0,
            next_attempt_ms: now_us / 1000,
            size: body.len() as u64,
            client: self.peer.ip().to_string(),
            body: None,
            held: false,
            held_reason: None,
            history: Vec::new(),
            user: self.user.as_ref().map(|u| u.name.clone()),
        };
        // How long the disk took to make it durable: what a slow `250` comes down to.
        let started = std::time::Instant::now();
        let stored = self.inbound.spool.store_message(&msg, body).await;
        let spool_us = started.elapsed().as_micros() as u64;
        crate::metrics::metrics()
            .spool_commit
            .observe(spool_us as f64 / 1e6);
        match stored {
            Ok(()) => {
                tracing::info!(
                    queue_id = %id,
                    from = %msg.sender,
                    recipients = msg.recipients.len(),
                    size = msg.size,
                    client = %self.peer.ip(),
                    user = msg.user.as_deref().unwrap_or("-"),
                    tls = self.tls.is_some(),
                    spool_us,
                    "accepted"
                );
                self.inbound.queue.enqueued(&msg);
                let submitter = self.submitter(&msg.sender);
                self.inbound.senders.accepted(
                    &submitter,
                    SenderId::of(msg.user.as_deref(), &msg.sender).as_ref(),
                    &self.config.quotas,
                    &self.config.suspension,
                    msg.recipients.len() as u32,
                );
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(e) if e.is_disk_full() => {
                tracing::error!(error = %e, "spool full, message refused");
                self.inbound.alerts.send(
                    "spool-full",
                    None,
                    None,
                    format!("the spool is full: new mail gets 452 until there is room ({e})"),
                );
                Reply::new(452, "4.3.1", "Insufficient system storage")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool message");
                Reply::new(451, "4.3.0", "Local error in processing, try again later")
            }
        }
    }

    /// Prepends our trace header (RFC 5321 §4.4: receivers and operators follow the path
    /// of a message by these), then the DKIM signatures made for the content.
    fn with_received_header(
        &self,
        id: &QueueId,
        txn: &Transaction,
        signatures: &[String],
        now: u64,
    ) -> Vec<u8> {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let hostname = &self.config.server.hostname;
        // RFC 3848: S for TLS, A for an authenticated client.
        let with = format!(
            "{}{}{}",
            match (txn.flags.smtputf8, self.esmtp) {
                (true, _) => "UTF8SMTP",
                (false, true) => "ESMTP",
                (false, false) => "SMTP",
            },
            if self.tls.is_some() { "S" } else { "" },
            if self.user.is_some() { "A" } else { "" },
        );
        let date = OffsetDateTime::from_unix_timestamp(now as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .format(&Rfc2822)
            .unwrap_or_default();
        let helo: String = helo.chars().filter(|c| !c.is_control()).collect();
        let mut header = format!("Received: from {helo} ([{}])", self.peer.ip());
        if let Some(user) = &self.user {
            header.push_str(&format!("\r\n\t(authenticated as {})", user.name));
        }
        header.push_str(&format!("\r\n\tby {hostname} (sidestep) with {with}"));
        if let Some(tls) = &self.tls {
            header.push_str(&format!(" ({tls})"));
        }
        header.push_str(&format!(" id {id}"));
        if let ([rcpt], Sender::Address(_) | Sender::Null) =
            (txn.recipients.as_slice(), &txn.sender)
        {
            header.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        header.push_str(&format!(";\r\n\t{date}\r\n"));
        let signed: usize = signatures.iter().map(String::len).sum();
        let mut body = Vec::with_capacity(header.len() + signed + txn.body.len());
        body.extend_from_slice(header.as_bytes());
        for s in signatures {
            body.extend_from_slice(s.as_bytes());
        }
        body.extend_from_slice(&txn.body);
        body
    }
}
