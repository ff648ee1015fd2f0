//! MAIL FROM and RCPT TO: building the envelope, with relay permission and limits.

use std::borrow::Cow;

use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom, RcptTo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Transaction;
use super::{Reply, Session, policy};
use crate::envelope::{Address, AddressError, BodyFlags, Sender};

/// RCPTs beyond `max_recipients` answered `452` without counting as client errors.
const RECIPIENT_OVERSHOOT: usize = 1000;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
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
        let server = &self.config.server;
        let Some(txn) = self.txn.as_mut() else {
            return Reply::new(503, "5.5.1", "Need MAIL command first");
        };
        // Permission before syntax: a client that may not relay learns nothing else.
        if self.user.is_none() && !policy::may_relay(self.peer.ip(), &server.relay_networks) {
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
