//! Reading a bounce: an RFC 3464 DSN (`multipart/report; report-type=delivery-status`)
//! field by field, or one of the shapes MTAs wrote before and beside it — Exim's
//! `X-Failed-Recipients` and "SMTP error from remote mail server", qmail's
//! "Remote host said:", Postfix's and Sendmail's text part, Exchange's "Diagnostic
//! information for administrators" — by finding the reply in the text. mail-parser does
//! the MIME. An ARF report (`message/feedback-report`) is recognised for the complaint
//! counts.

use std::sync::LazyLock;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use regex::Regex;

/// What a bounce is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// RFC 3464 delivery-status fields.
    Dsn,
    /// A reply found in a human-readable text.
    Text,
    /// A feedback-loop report (RFC 5965).
    Arf,
    /// Neither (an auto-reply, a challenge, spam to the bounce address).
    Unknown,
}

/// One recipient's failure, as the bounce tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    /// `Final-Recipient` (or the address the text names).
    pub recipient: Option<String>,
    /// `Original-Recipient`.
    pub original: Option<String>,
    /// `failed`, `delayed`, `delivered`, … (inferred from the code for a text bounce).
    pub action: String,
    /// The SMTP code, when there is one (from `Diagnostic-Code`, else from `Status`).
    pub code: u16,
    /// The enhanced status code (`Status`).
    pub enhanced: String,
    /// The receiver's text (`Diagnostic-Code` without its type), the evidence.
    pub diagnostic: String,
    /// `Remote-MTA`: the server that refused.
    pub remote_mta: Option<String>,
}

impl Failure {
    /// Whether the bounce says delivery failed for good (not a delay warning).
    pub fn failed(&self) -> bool {
        self.action.eq_ignore_ascii_case("failed")
    }
}

/// A bounce read.
#[derive(Debug, Clone)]
pub struct Bounce {
    /// What it is.
    pub shape: Shape,
    /// `Reporting-MTA`, else the `From:`.
    pub reporter: Option<String>,
    /// The failures, in order.
    pub failures: Vec<Failure>,
    /// Every address the text names, in order (to check a token's tag against when the
    /// message's record is gone).
    pub addresses: Vec<String>,
    /// The original message's header block, when the bounce returns it.
    pub original_headers: Option<Vec<u8>>,
}

impl Bounce {
    /// Every address the bounce names as failed or mentions, failures first: what a
    /// token's tag is checked against when the message's record is gone.
    pub fn named(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .failures
            .iter()
            .flat_map(|f| [&f.recipient, &f.original])
            .flatten()
            .cloned()
            .collect();
        for a in &self.addresses {
            if !all.iter().any(|x| x.eq_ignore_ascii_case(a)) {
                all.push(a.clone());
            }
        }
        all
    }
}

/// Reads `raw` as a bounce.
pub fn parse(raw: &[u8]) -> Bounce {
    let mut b = Bounce {
        shape: Shape::Unknown,
        reporter: None,
        failures: Vec::new(),
        addresses: Vec::new(),
        original_headers: None,
    };
    let Some(message) = MessageParser::new().parse(raw) else {
        return b;
    };
    b.reporter = message
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .map(str::to_string);
    let mut text = String::new();
    let mut status: Option<Vec<u8>> = None;
    for (i, part) in message.parts.iter().enumerate() {
        if part.is_content_type("message", "feedback-report") {
            b.shape = Shape::Arf;
            return b;
        }
        if part.is_content_type("message", "delivery-status")
            || part.is_content_type("message", "global-delivery-status")
        {
            status = Some(match &part.body {
                PartType::Message(m) => m.raw_message().to_vec(),
                _ => part.contents().to_vec(),
            });
        } else if part.is_content_type("text", "rfc822-headers") {
            b.original_headers = Some(part.contents().to_vec());
        } else if let PartType::Message(original) = &part.body {
            if b.original_headers.is_none() {
                let raw = original.raw_message();
                let end = raw
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(raw.len(), |p| p + 2);
                b.original_headers = Some(raw[..end].to_vec());
            }
        } else if let PartType::Text(t) = &part.body
            && (i == 0 || text.is_empty() || !part.is_content_type("text", "html"))
            && text.len() < 64 * 1024
        {
            // The human-readable parts, before any returned message.
            text.push_str(t);
            text.push('\n');
        }
    }
    let text = cut_returned_message(&text);
    b.addresses = addresses(text);
    if let Some(x) = message.header_raw("X-Failed-Recipients") {
        for a in x.split(',') {
            let a = a.trim().to_string();
            if !a.is_empty() && !b.addresses.contains(&a) {
                b.addresses.insert(0, a);
            }
        }
    }
    if let Some(fields) = status {
        let (reporter, failures) = delivery_status(&String::from_utf8_lossy(&fields));
        if !failures.is_empty() {
            b.shape = Shape::Dsn;
            b.reporter = reporter.or(b.reporter);
            b.failures = failures;
            // A DSN without a Diagnostic-Code (Exchange's often): the text says it.
            for f in &mut b.failures {
                if f.diagnostic.is_empty()
                    && let Some(found) = find_reply(text)
                {
                    f.diagnostic = found.2;
                    if f.code == 0 {
                        f.code = found.0;
                    }
                }
            }
            return b;
        }
    }
    if let Some((code, enhanced, diagnostic)) = find_reply(text) {
        b.shape = Shape::Text;
        let recipient = message
            .header_raw("X-Failed-Recipients")
            .map(|x| x.split(',').next().unwrap_or("").trim().to_string())
            .or_else(|| b.addresses.first().cloned());
        b.failures.push(Failure {
            recipient,
            original: None,
            action: if code >= 500 || enhanced.starts_with('5') {
                "failed"
            } else {
                "delayed"
            }
            .into(),
            code,
            enhanced,
            diagnostic,
            remote_mta: None,
        });
    }
    b
}

/// The text before the copy of the original message that single-part bounces append.
fn cut_returned_message(text: &str) -> &str {
    const MARKERS: [&str; 9] = [
        "------ This is a copy of the message",
        "--- Below this line is a copy of the message",
        "----- Original message -----",
        "------ Original message ------",
        "Original message follows",
        "--- Enclosed are the original headers",
        "----- Transcript of session follows",
        "   ----- Original message follows -----",
        "The original message was received",
    ];
    let lower = text.to_ascii_lowercase();
    let cut = MARKERS
        .iter()
        .filter_map(|m| lower.find(&m.to_ascii_lowercase()))
        .filter(|at| *at > 0)
        .min()
        .unwrap_or(text.len());
    // A transcript still holds the reply: keep it when nothing before it does.
    if find_reply(&text[..cut]).is_some() {
        &text[..cut]
    } else {
        text
    }
}

/// RFC 3464 §2.2-2.3: per-message fields, then one group per recipient, separated by
/// blank lines; values are `type; text` and may be folded.
fn delivery_status(fields: &str) -> (Option<String>, Vec<Failure>) {
    let fields = fields.replace("\r\n", "\n");
    let mut reporter = None;
    let mut failures = Vec::new();
    for group in fields.split("\n\n") {
        let mut f = Failure::default();
        let mut is_recipient = false;
        for (name, value) in unfold(group) {
            let typed = value
                .split_once(';')
                .map_or(value.as_str(), |(_, v)| v)
                .trim()
                .to_string();
            match name.to_ascii_lowercase().as_str() {
                "reporting-mta" => reporter = Some(typed),
                "final-recipient" => {
                    is_recipient = true;
                    f.recipient = Some(unbracket(&typed));
                }
                "original-recipient" => f.original = Some(unbracket(&typed)),
                "action" => f.action = value.trim().to_ascii_lowercase(),
                "status" => {
                    f.enhanced = value.split_whitespace().next().unwrap_or("").to_string();
                }
                "remote-mta" => f.remote_mta = Some(typed),
                "diagnostic-code" => f.diagnostic = typed,
                _ => {}
            }
        }
        if !is_recipient {
            continue;
        }
        if let Some((code, enhanced, _)) = find_reply(&f.diagnostic) {
            f.code = code;
            if f.enhanced.is_empty() {
                f.enhanced = enhanced;
            }
        }
        if f.code == 0 && !f.enhanced.is_empty() {
            f.code = if f.enhanced.starts_with('5') {
                550
            } else {
                450
            };
        }
        if f.action.is_empty() {
            f.action = if f.enhanced.starts_with('5') {
                "failed"
            } else {
                "delayed"
            }
            .into();
        }
        failures.push(f);
    }
    (reporter, failures)
}

/// Header-like lines with their continuations joined.
fn unfold(group: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in group.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

fn unbracket(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// `550 5.1.1 …`, `550-5.7.1 …`, `#550 5.1.1 …##`, `5.1.1 …`: a reply line, and its
/// continuation lines.
static REPLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)#?\b([245][0-9][0-9])[ -]#?([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
        .expect("a valid pattern")
});
static ENHANCED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)(?:^|[\s#(\[])([45]\.[0-9]{1,3}\.[0-9]{1,3})\b").expect("a valid pattern")
});
/// A bare code where a text bounce quotes the server: qmail's "Remote host said: 550
/// …", Exim's indented reply after "SMTP error from remote mail server".
static SAID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)(?:said|says|replied|response|error|reply was|message)\s*:?\s*\(?([45][0-9][0-9])[ -]|^\s+([45][0-9][0-9])[ -]\S")
        .expect("a valid pattern")
});
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+").expect("a valid pattern")
});

/// The first reply in `text`: code (550 when only an enhanced code is given), enhanced
/// code, and the text from there to the end of its paragraph (folded lines joined).
pub fn find_reply(text: &str) -> Option<(u16, String, String)> {
    let (start, code, enhanced) = if let Some(c) = REPLY.captures(text) {
        let code: u16 = c[1].parse().ok()?;
        (c.get(0)?.start(), code, c[2].to_string())
    } else if let Some(c) = SAID.captures(text) {
        let m = c.get(1).or_else(|| c.get(2))?;
        let code: u16 = m.as_str().parse().ok()?;
        let enhanced = ENHANCED
            .captures(&text[m.start()..])
            .filter(|e| e.get(1).is_some_and(|x| x.start() < 40))
            .map(|e| e[1].to_string())
            .unwrap_or_default();
        (m.start(), code, enhanced)
    } else if let Some(c) = ENHANCED.captures(text) {
        let m = c.get(1)?;
        let code = if m.as_str().starts_with('5') {
            550
        } else {
            450
        };
        (m.start(), code, m.as_str().to_string())
    } else {
        return None;
    };
    if code < 400 {
        return None;
    }
    let rest = &text[start..];
    let mut reply = String::new();
    for (i, line) in rest.lines().enumerate() {
        let line = line.trim();
        if (i > 0 && line.is_empty()) || reply.len() > 600 {
            break;
        }
        if !reply.is_empty() {
            reply.push(' ');
        }
        reply.push_str(line.trim_start_matches('#').trim_end_matches('#').trim());
    }
    Some((code, enhanced, reply))
}

/// The addresses `text` names, in order, without repeats.
fn addresses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in ADDRESS.find_iter(text) {
        let a = m.as_str().trim_end_matches('.').to_string();
        let lower = a.to_ascii_lowercase();
        if lower.starts_with("mailer-daemon@") || lower.starts_with("postmaster@") {
            continue;
        }
        if !out.iter().any(|x| x.eq_ignore_ascii_case(&a)) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_found_in_the_usual_wordings() {
        let (code, enhanced, text) = find_reply(
            "Remote host said: 550 5.1.1 <bob@dest.test>: Recipient address rejected\nGiving up",
        )
        .unwrap();
        assert_eq!((code, enhanced.as_str()), (550, "5.1.1"));
        assert!(text.starts_with("550 5.1.1 <bob@dest.test>"), "{text}");
        let (code, enhanced, _) =
            find_reply("Remote Server returned '550 5.7.1 Service unavailable'").unwrap();
        assert_eq!((code, enhanced.as_str()), (550, "5.7.1"));
        let (code, enhanced, _) =
            find_reply("#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##").unwrap();
        assert_eq!((code, enhanced.as_str()), (550, "5.1.1"));
        let (code, _, text) = find_reply(
            "Remote host said: 554 delivery error: dd This user doesn't have an account",
        )
        .unwrap();
        assert_eq!(code, 554);
        assert!(text.contains("doesn't have an account"));
        assert!(find_reply("Your message was delivered, thank you.").is_none());
    }

    #[test]
    fn a_dsn_is_read_field_by_field() {
        let raw = b"From: MAILER-DAEMON@mx.dest.test\r\nTo: b-x@bounces.test\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.dest.test\r\n\r\nFinal-Recipient: rfc822; bob@dest.test\r\nAction: failed\r\nStatus: 5.7.1\r\nRemote-MTA: dns; mx.dest.test\r\nDiagnostic-Code: smtp; 550 5.7.1 Service unavailable; client [192.0.2.11]\r\n blocked using Spamhaus\r\n\r\n--B--\r\n";
        let b = parse(raw);
        assert_eq!(b.shape, Shape::Dsn);
        assert_eq!(b.reporter.as_deref(), Some("mx.dest.test"));
        let f = &b.failures[0];
        assert_eq!(f.recipient.as_deref(), Some("bob@dest.test"));
        assert!(f.failed());
        assert_eq!((f.code, f.enhanced.as_str()), (550, "5.7.1"));
        assert_eq!(
            f.diagnostic,
            "550 5.7.1 Service unavailable; client [192.0.2.11] blocked using Spamhaus"
        );
    }
}
