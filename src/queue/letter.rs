//! Mail sidestep writes itself: DSNs, alert mail, TLS reports, seed probes. One place
//! for the header block every such message carries (dated by the caller's clock, with
//! a Message-ID on the relay's host name and `Auto-Submitted` so that no one answers it
//! automatically) and for its queue record, so the four cannot drift apart.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::envelope::{BodyFlags, Sender};
use crate::spool::{QueueId, QueuedMessage, RecipientState, Spool, SpoolError};

/// The headers of a message sidestep writes.
pub struct Letter<'a> {
    /// The `From:` value, display name and address (`sidestep <postmaster@host>`).
    pub from: &'a str,
    /// The `To:` value.
    pub to: &'a str,
    /// The `Subject:` value.
    pub subject: &'a str,
    /// The `Message-ID:` without its angle brackets.
    pub message_id: &'a str,
    /// `auto-generated` (a notice) or `auto-replied` (a DSN); `None` for a probe, which
    /// must look like ordinary mail to the receiver.
    pub auto_submitted: Option<&'a str>,
    /// Further headers, in order (`X-Sidestep-Probe`, …).
    pub extra: &'a [(&'a str, &'a str)],
    /// The `Content-Type:` value (may fold onto further lines).
    pub content_type: &'a str,
}

impl Letter<'_> {
    /// The header block dated `now` (Unix seconds), ending with the empty line.
    pub fn headers(&self, now: u64) -> String {
        let mut h = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{}>\r\n",
            self.from,
            self.to,
            self.subject,
            date(now),
            self.message_id
        );
        if let Some(auto) = self.auto_submitted {
            h.push_str(&format!("Auto-Submitted: {auto}\r\n"));
        }
        for (name, value) in self.extra {
            h.push_str(&format!("{name}: {value}\r\n"));
        }
        h.push_str(&format!(
            "MIME-Version: 1.0\r\nContent-Type: {}\r\n\r\n",
            self.content_type
        ));
        h
    }
}

/// RFC 5322 date of Unix seconds `unix`.
pub fn date(unix: u64) -> String {
    OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc2822)
        .unwrap_or_default()
}

/// The queue record of a message sidestep wrote, due at once. A null `sender` for
/// every notice: like a DSN, it never bounces (RFC 5321 §4.5.5).
pub fn record(
    id: QueueId,
    sender: Sender,
    recipients: Vec<RecipientState>,
    body: &[u8],
    now_ms: u64,
    client: &str,
) -> QueuedMessage {
    let smtputf8 = recipients.iter().any(|r| !r.address.to_string().is_ascii());
    QueuedMessage {
        id,
        sender,
        recipients,
        flags: BodyFlags {
            eight_bit: !body.is_ascii(),
            smtputf8,
        },
        received_at: now_ms / 1000,
        attempts: 0,
        next_attempt_ms: now_ms,
        size: body.len() as u64,
        client: client.into(),
        body: None,
        held: false,
        held_reason: None,
        history: Vec::new(),
        user: None,
    }
}

/// Spools `msg` durably, then tells the scheduler.
///
/// # Errors
/// The spool could not take it.
pub async fn enqueue(
    spool: &Spool,
    queue: &super::QueueHandle,
    msg: &QueuedMessage,
    body: Vec<u8>,
) -> Result<(), SpoolError> {
    spool.store_message(msg, body).await?;
    queue.enqueued(msg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_block_has_every_header_once_and_ends_with_an_empty_line() {
        let h = Letter {
            from: "sidestep <postmaster@relay.test>",
            to: "<ops@example.test>",
            subject: "[sidestep relay.test] ip-listed",
            message_id: "X1@relay.test",
            auto_submitted: Some("auto-generated"),
            extra: &[("X-Extra", "1")],
            content_type: "text/plain; charset=utf-8",
        }
        .headers(1_800_000_000);
        assert!(
            h.starts_with("From: sidestep <postmaster@relay.test>\r\nTo: <ops@example.test>\r\n")
        );
        assert!(
            h.contains("\r\nDate: Fri, 15 Jan 2027 08:00:00 +0000\r\n"),
            "{h}"
        );
        assert!(h.contains("\r\nMessage-ID: <X1@relay.test>\r\nAuto-Submitted: auto-generated\r\nX-Extra: 1\r\nMIME-Version: 1.0\r\n"));
        assert!(h.ends_with("Content-Type: text/plain; charset=utf-8\r\n\r\n"));
        assert_eq!(h.matches("\r\n\r\n").count(), 1);
    }
}
