//! MAIL FROM and RCPT TO: building the envelope, with relay permission and limits.

use std::borrow::Cow;

use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom, RcptTo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Transaction;
use super::{Reply, Session, policy};
use crate::config::SuspendedReply;
use crate::envelope::{Address, AddressError, BodyFlags, Sender};
use crate::senders::{SenderId, Submitter};

/// RCPTs beyond `max_recipients` answered `452` without counting as client errors.
const RECIPIENT_OVERSHOOT: usize = 1000;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Who is handing in mail from `sender`, for the quotas.
    pub(super) fn submitter<'a>(&'a self, sender: &'a Sender) -> Submitter<'a> {
        Submitter {
            user: self.user.as_ref().map(|u| u.name.as_str()),
            client: (!policy::may_relay(self.peer.ip(), &self.config.server.relay_networks))
                .then(|| self.peer.ip()),
            sender_domain: match sender {
                Sender::Address(a) => Some(a.domain()),
                Sender::Null => None,
            },
        }
    }

    /// The `450` for one more recipient of `txn` beyond a recipient quota. Only for a
    /// client that may relay at all: an outsider learns of relay permission first.
    fn over_recipient_quota(&self, txn: &Transaction) -> Option<Reply> {
        if self.user.is_none()
            && !policy::may_relay(self.peer.ip(), &self.config.server.relay_networks)
        {
            return None;
        }
        let over = self
            .inbound
            .senders
            .check(
                &self.submitter(&txn.sender),
                &self.config.quotas,
                false,
                txn.recipients.len() as u32 + 1,
            )
            .err()?;
        tracing::warn!(client = %self.peer.ip(), limit = %over.0, "RCPT refused: over quota");
        crate::metrics::metrics().quota_refusals.inc();
        Some(Reply::new(
            450,
            "4.7.1",
            format!("Recipient quota exceeded ({}); try again later", over.0),
        ))
    }

    /// Why mail from `sender` is refused now: the sender is suspended, or over a
    /// message quota.
    fn sender_refused(&self, sender: &Sender) -> Option<Reply> {
        let user = self.user.as_ref().map(|u| u.name.as_str());
        if let Some(id) = SenderId::of(user, sender)
            && let Some(s) = self.inbound.senders.suspended(&id)
        {
            tracing::warn!(client = %self.peer.ip(), sender = %id, "MAIL refused: sender suspended");
            let text = format!(
                "Sender {id} is suspended by the relay's abuse guard ({}); contact the postmaster",
                s.reason
            );
            return Some(match self.config.suspension.reply {
                SuspendedReply::Temporary => Reply::new(451, "4.7.1", text),
                SuspendedReply::Permanent => Reply::new(550, "5.7.1", text),
            });
        }
        let submitter = self.submitter(sender);
        if let Err(over) = self
            .inbound
            .senders
            .check(&submitter, &self.config.quotas, true, 0)
        {
            tracing::warn!(client = %self.peer.ip(), limit = %over.0, "MAIL refused: over quota");
            crate::metrics::metrics().quota_refusals.inc();
            return Some(Reply::new(
                450,
                "4.7.1",
                format!("Message quota exceeded ({}); try again later", over.0),
            ));
        }
        None
    }

    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "Send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return Reply::new(503, "5.5.1", "Nested MAIL command");
        }
        let max = self.config.server.max_message_size.as_u64();
        if from.size as u64 > max {
            return Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds fixed limit of {max} bytes"),
            );
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Reply::new(504, "5.5.4", "BODY=BINARYMIME not supported");
        }
        let flags = BodyFlags {
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
        };
        let sender = if from.address.is_empty() {
            Sender::Null
        } else {
            match Address::parse(&from.address, flags.smtputf8) {
                Ok(a) => Sender::Address(a),
                Err(AddressError::NeedsUtf8) => {
                    return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
                }
                Err(e) => return Reply::new(501, "5.1.7", format!("Bad sender address: {e}")),
            }
        };
        if let Some(reply) = self.sender_refused(&sender) {
            return reply;
        }
        // A logged-in user sends only as their own domains, when the users file says
        // which they are: a stolen password cannot send as anyone.
        if let (Some(user), Sender::Address(a)) = (&self.user, &sender)
            && !user.may_send_from(a.domain())
        {
            tracing::warn!(client = %self.peer.ip(), user = %user.name, from = %a, "sender refused: not one of the user's domains");
            return Reply::new(
                553,
                "5.7.1",
                format!("<{a}>: Sender address not owned by user {}", user.name),
            );
        }
        self.txn = Some(Transaction {
            sender,
            recipients: Vec::new(),
            flags,
            body: Vec::new(),
            oversize: false,
            chunking: false,
            overshoot: 0,
        });
        Reply::new(250, "2.1.0", "Ok")
    }

    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Reply {
        if let Some(txn) = &self.txn
            && let Some(reply) = self.over_recipient_quota(txn)
        {
            return reply;
        }
        let Some(txn) = self.txn.as_ref() else {
            return Reply::new(503, "5.5.1", "Need MAIL command first");
        };
        // Mail for a bounce domain is local: taken from anyone, within the gate's rate.
        let bounce = self.to_bounce_domain(&to.address);
        if bounce && let Some(reply) = self.bounce_admitted(txn) {
            return reply;
        }
        let server = &self.config.server;
        // Permission before syntax: a client that may not relay learns nothing else.
        if !bounce
            && self.user.is_none()
            && !policy::may_relay(self.peer.ip(), &server.relay_networks)
        {
            tracing::warn!(client = %self.peer.ip(), rcpt = %to.address, "relay denied");
            return Reply::new(
                554,
                "5.7.1",
                format!("<{}>: Relay access denied", to.address),
            );
        }
        let address = match Address::parse(&to.address, txn.flags.smtputf8) {
            Ok(a) => a,
            Err(AddressError::NeedsUtf8) => {
                return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
            }
            Err(e) => return Reply::new(501, "5.1.3", format!("Bad recipient address: {e}")),
        };
        if !bounce && let Some(reply) = self.suppressed(&txn.sender, &address) {
            return reply;
        }
        let server = &self.config.server;
        let Some(txn) = self.txn.as_mut() else {
            return Reply::new(503, "5.5.1", "Need MAIL command first");
        };
        if txn.recipients.len() >= server.max_recipients {
            // RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction. A
            // pipelining client learns that after the fact, so the refusals do not count
            // as errors and the accepted recipients keep their DATA; past a generous
            // overshoot (Postfix's smtpd_recipient_overshoot_limit) they do.
            txn.overshoot += 1;
            let reply = Reply::new(452, "4.5.3", "Too many recipients");
            return if txn.overshoot <= RECIPIENT_OVERSHOOT {
                reply.harmless()
            } else {
                reply
            };
        }
        txn.recipients.push(address);
        Reply::new(250, "2.1.5", "Ok")
    }
}
