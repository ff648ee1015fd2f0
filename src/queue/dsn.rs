//! Delivery status notifications (RFC 3464 `multipart/report`), sent to the envelope
//! sender when recipients fail for good. The remote reply is quoted exactly: it is often
//! the only thing that tells the sender (or the operator) why.

use std::fmt::Write;

use super::letter::{Letter, record};
use crate::envelope::{Address, Sender};
use crate::spool::{QueueId, QueuedMessage, RecipientState, RecipientStatus, RemoteReply};

/// A DSN ready to be spooled like any other message.
pub struct Dsn {
    /// Its queue record (null sender, one recipient: the original sender).
    pub message: QueuedMessage,
    /// The RFC 3464 report, CRLF line endings.
    pub body: Vec<u8>,
}

/// Builds the DSN for `failed` recipients of `original`, addressed to `to`, dated and
/// queued at `now_ms` (the queue's clock).
pub fn build(
    now_ms: u64,
    hostname: &str,
    original: &QueuedMessage,
    to: &Address,
    failed: &[&RecipientState],
    original_body: &[u8],
) -> Dsn {
    let id = QueueId::generate(now_ms * 1000);
    let boundary = format!("{id}/{hostname}");
    let now = rfc2822(now_ms / 1000);
    let mut b = Letter {
        from: &format!("Mail Delivery System <MAILER-DAEMON@{hostname}>"),
        to: &format!("<{to}>"),
        subject: "Undelivered Mail Returned to Sender",
        message_id: &format!("{id}@{hostname}"),
        auto_submitted: Some("auto-replied"),
        extra: &[],
        content_type: &format!(
            "multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
        ),
    }
    .headers(now_ms / 1000);
    b.reserve(4096);
    let _ = write!(
        b,
        "This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         The reason is given below for each of them.\r\n\
         \r\n"
    );
    for r in failed {
        let (reply, expired) = failure(r);
        match earlier(r) {
            Some(first) => {
                b.push_str(&fold(&format!(
                    "<{}>: refused from two of our sending addresses, so the refusal is \
                     about the message or its sender, not our IP.",
                    r.address
                )));
                b.push_str(&fold(&format!("    first: {first}")));
                b.push_str(&fold(&format!("    then: {reply}")));
            }
            None => {
                let why = if expired {
                    "delivery time expired; last error"
                } else {
                    "refused"
                };
                b.push_str(&fold(&format!("<{}>: {why}: {}", r.address, reply)));
            }
        }
        if let Some(what) = explanation(r) {
            b.push_str(&fold(&format!("    {what}")));
        }
    }
    let _ = write!(
        b,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Sidestep-Queue-ID: {}\r\n\
         Arrival-Date: {}\r\n",
        original.id,
        rfc2822(original.received_at)
    );
    for r in failed {
        let (reply, expired) = failure(r);
        let status = dsn_status(reply, expired);
        let _ = write!(
            b,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {status}\r\n",
            r.address
        );
        if let Some(mx) = &reply.mx {
            let _ = write!(b, "Remote-MTA: dns; {mx}\r\n");
        }
        if reply.code != 0 {
            b.push_str(&fold(&format!("Diagnostic-Code: smtp; {reply}")));
        } else {
            b.push_str(&fold(&format!(
                "Diagnostic-Code: X-Sidestep; {}",
                reply.text
            )));
        }
        if let Some(first) = earlier(r) {
            // An extension field (RFC 3464 §7): the refusal the second opinion confirmed.
            b.push_str(&fold(&format!(
                "X-Sidestep-First-Diagnostic-Code: smtp; {first}"
            )));
        }
        let _ = write!(b, "Last-Attempt-Date: {now}\r\n");
    }
    let _ = write!(
        b,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut body = b.into_bytes();
    body.extend_from_slice(headers_of(original_body));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let message = record(
        id,
        Sender::Null,
        vec![RecipientState::pending(to.clone())],
        &body,
        now_ms,
        "local (DSN)",
    );
    Dsn { message, body }
}

fn failure(r: &RecipientState) -> (&RemoteReply, bool) {
    match &r.status {
        RecipientStatus::Failed { reply, expired, .. } => (reply, *expired),
        RecipientStatus::Pending { last: Some(reply) }
        | RecipientStatus::Delivered { reply, .. } => (reply, false),
        RecipientStatus::Pending { last: None } => (&EXPIRED, true),
    }
}

/// What the sender must fix, when the queue knew more than the reply says.
fn explanation(r: &RecipientState) -> Option<&str> {
    match &r.status {
        RecipientStatus::Failed { explanation, .. } => explanation.as_deref(),
        _ => None,
    }
}

/// The first IP's refusal, when a second IP refused too.
fn earlier(r: &RecipientState) -> Option<&RemoteReply> {
    match &r.status {
        RecipientStatus::Failed { earlier, .. } => earlier.as_ref(),
        _ => None,
    }
}

static EXPIRED: RemoteReply = RemoteReply {
    code: 0,
    enhanced: String::new(),
    text: String::new(),
    mx: None,
};

/// RFC 3464 `Status`: the reply's enhanced code; for an expiry, its 4.x.x code (the
/// failure was temporary each time) or 4.4.7 "delivery time expired".
fn dsn_status(reply: &RemoteReply, expired: bool) -> String {
    let valid = reply.enhanced.len() >= 5 && reply.enhanced.as_bytes()[1] == b'.';
    match (expired, valid, reply.enhanced.chars().next()) {
        (true, true, Some('4')) => reply.enhanced.clone(),
        (true, _, _) => "4.4.7".into(),
        (false, true, Some('5')) => reply.enhanced.clone(),
        (false, _, _) => format!(
            "5.{}",
            reply.enhanced.get(2..).filter(|_| valid).unwrap_or("0.0")
        ),
    }
}

/// Folds a line at spaces so no line exceeds 78 characters where it can be avoided
/// (RFC 5322 §2.1.1; 998 is the hard limit). Continuation lines start with a space, which
/// keeps header-style fields (RFC 3464) one logical field.
fn fold(line: &str) -> String {
    const WIDTH: usize = 78;
    let mut out = String::with_capacity(line.len() + 8);
    let mut current = 0;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            if current + 1 + word.len() > WIDTH && current > 0 {
                out.push_str("\r\n ");
                current = 1;
            } else {
                out.push(' ');
                current += 1;
            }
        }
        out.push_str(word);
        current += word.len();
    }
    out.push_str("\r\n");
    out
}

/// The header section of a message, up to and including the blank line.
fn headers_of(body: &[u8]) -> &[u8] {
    match body.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &body[..end + 2],
        None => body,
    }
}

fn rfc2822(unix: u64) -> String {
    super::letter::date(unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(enhanced: &str) -> RemoteReply {
        RemoteReply {
            code: 550,
            enhanced: enhanced.into(),
            text: "x".into(),
            mx: None,
        }
    }

    #[test]
    fn status_codes() {
        assert_eq!(dsn_status(&reply("5.1.1"), false), "5.1.1");
        assert_eq!(dsn_status(&reply("4.2.0"), true), "4.2.0");
        assert_eq!(dsn_status(&reply("5.7.1"), true), "4.4.7");
        assert_eq!(dsn_status(&reply(""), true), "4.4.7");
        assert_eq!(dsn_status(&reply(""), false), "5.0.0");
        assert_eq!(dsn_status(&reply("4.1.2"), false), "5.1.2");
    }

    #[test]
    fn long_lines_are_folded() {
        let long = format!("Diagnostic-Code: X-Sidestep; {}", "word ".repeat(400));
        let folded = fold(long.trim_end());
        assert!(folded.split("\r\n").all(|l| l.len() <= 78), "{folded}");
        assert!(
            folded
                .split("\r\n")
                .skip(1)
                .all(|l| l.is_empty() || l.starts_with(' '))
        );
        assert_eq!(
            folded.replace("\r\n ", " "),
            format!("{}\r\n", long.trim_end())
        );
        assert_eq!(fold("short"), "short\r\n");
    }

    #[test]
    fn headers_stop_at_blank_line() {
        assert_eq!(
            headers_of(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(headers_of(b"A: 1\r\n"), b"A: 1\r\n");
    }
}
