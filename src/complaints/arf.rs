//! Abuse Reporting Format (RFC 5965): a `multipart/report; report-type=feedback-report`
//! with a human part, a `message/feedback-report` part of fields, and the original
//! message (or its headers). mail-parser reads the MIME; this file picks out what says
//! whose mail it was and where it left from.

use std::net::IpAddr;

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One complaint report, as far as it names the original.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The report's own Message-ID (what makes reading it twice harmless).
    pub report_id: String,
    /// `abuse`, `fraud`, `not-spam`, … (`Feedback-Type`).
    pub feedback_type: String,
    /// The reporting system (`User-Agent`).
    pub reporter: Option<String>,
    /// The address the complained-about message came from (`Source-IP`).
    pub source_ip: Option<IpAddr>,
    /// Its envelope sender (`Original-Mail-From`, else the original's `Return-Path`).
    pub mail_from: Option<String>,
    /// The recipient that complained (`Original-Rcpt-To`), often redacted.
    pub rcpt: Option<String>,
    /// When the receiver got it (`Arrival-Date`).
    pub arrival: Option<String>,
    /// The original's Message-ID.
    pub message_id: Option<String>,
    /// sidestep's queue id, from its own `Received:` line in the original.
    pub queue_id: Option<String>,
    /// The logged-in user that line names (`authenticated as NAME`).
    pub user: Option<String>,
    /// Addresses in the original's `Received: from … [IP]` lines, newest first.
    pub received_ips: Vec<IpAddr>,
}

/// Reads `raw` as an ARF report; `None` when it is not one (other mail in the box).
pub fn parse(raw: &[u8]) -> Option<Report> {
    let message = MessageParser::new().parse(raw)?;
    let is_report = message.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    if !is_report {
        return None;
    }
    let mut report = Report {
        report_id: message
            .message_id()
            .map(str::to_string)
            .unwrap_or_else(|| format!("sha:{:016x}", fingerprint(raw))),
        ..Report::default()
    };
    let mut fields = None;
    for part in &message.parts {
        if part.is_content_type("message", "feedback-report") {
            fields = Some(match &part.body {
                PartType::Text(t) | PartType::Html(t) => t.as_bytes().to_vec(),
                PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
                _ => continue,
            });
        } else if let PartType::Message(original) = &part.body {
            original_headers(&mut report, original.headers_raw());
        } else if part.is_content_type("text", "rfc822-headers")
            && let PartType::Text(t) = &part.body
            && let Some(h) = MessageParser::new().parse_headers(t.as_bytes())
        {
            original_headers(&mut report, h.headers_raw());
        }
    }
    let fields = fields?;
    let fields = MessageParser::new().parse_headers(&fields)?;
    for (name, value) in fields.headers_raw() {
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "feedback-type" => report.feedback_type = value.to_ascii_lowercase(),
            "user-agent" => report.reporter = Some(value.to_string()),
            "source-ip" => report.source_ip = value.parse().ok(),
            "original-mail-from" => report.mail_from = Some(unbracket(value)),
            "original-rcpt-to" => report.rcpt = Some(unbracket(value)),
            "arrival-date" | "received-date" => report.arrival = Some(value.to_string()),
            _ => {}
        }
    }
    if report.feedback_type.is_empty() {
        return None;
    }
    Some(report)
}

/// What the original's headers say: its Message-ID, envelope sender, sidestep's queue
/// id and login, and the addresses it passed through.
fn original_headers<'a>(report: &mut Report, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    for (name, value) in headers {
        let unfolded: String = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match name.to_ascii_lowercase().as_str() {
            "message-id" => report.message_id = Some(unbracket(&unfolded)),
            "return-path" if report.mail_from.is_none() => {
                report.mail_from = Some(unbracket(&unfolded));
            }
            "received" => received(report, &unfolded),
            _ => {}
        }
    }
}

/// One `Received:` line: sidestep's own names the queue id and the login; any names the
/// address it came from.
fn received(report: &mut Report, line: &str) {
    if line.contains("(sidestep)") {
        if let Some(id) = line
            .split(" id ")
            .nth(1)
            .and_then(|r| r.split([' ', ';']).next())
        {
            report.queue_id = Some(id.to_string());
        }
        if let Some(user) = line
            .split("(authenticated as ")
            .nth(1)
            .and_then(|r| r.split(')').next())
        {
            report.user = Some(user.to_string());
        }
    }
    let from = line.split(" by ").next().unwrap_or(line);
    for piece in from.split('[').skip(1) {
        if let Some(ip) = piece
            .split(']')
            .next()
            .map(|s| s.trim_start_matches("IPv6:"))
            .and_then(|s| s.parse().ok())
        {
            report.received_ips.push(ip);
        }
    }
}

/// The address inside `<…>` when there is one (ignoring what follows it), else the
/// value trimmed.
fn unbracket(s: &str) -> String {
    let s = s.trim();
    match s.split_once('<').and_then(|(_, r)| r.split_once('>')) {
        Some((inside, _)) => inside.trim().to_string(),
        None => s.trim_end_matches('>').to_string(),
    }
}

/// A stable fingerprint of a report without a Message-ID (FNV-1a).
fn fingerprint(raw: &[u8]) -> u64 {
    raw.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "From: feedbackloop@comcast.net\r\n\
To: fbl@relay.example\r\n\
Subject: Complaint\r\n\
Message-ID: <report-1@fbl.comcast.net>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is an email abuse report.\r\n\
--b1\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: Comcast-FBL/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <news@shop.example>\r\n\
Arrival-Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\
Source-IP: 192.0.2.11\r\n\
\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Received: from out11.relay.example (out11.relay.example [192.0.2.11])\r\n\
\tby mx.comcast.net with ESMTP; Wed, 25 Nov 2026 10:00:00 +0000\r\n\
Received: from mta.shop.example ([10.0.0.5])\r\n\
\t(authenticated as shop)\r\n\
\tby relay.example (sidestep) with ESMTPSA id 0001A2B3C4D5E6F7;\r\n\
\tWed, 25 Nov 2026 09:59:59 +0000\r\n\
From: news@shop.example\r\n\
Message-ID: <news-42@shop.example>\r\n\
Subject: Sale\r\n\
\r\n\
Buy now.\r\n\
--b1--\r\n";

    #[test]
    fn an_arf_report_names_the_sender_queue_id_and_ip() {
        let r = parse(REPORT.as_bytes()).expect("a report");
        assert_eq!(r.report_id, "report-1@fbl.comcast.net");
        assert_eq!(r.feedback_type, "abuse");
        assert_eq!(r.reporter.as_deref(), Some("Comcast-FBL/1.0"));
        assert_eq!(r.source_ip, Some("192.0.2.11".parse().unwrap()));
        assert_eq!(r.mail_from.as_deref(), Some("news@shop.example"));
        assert_eq!(r.message_id.as_deref(), Some("news-42@shop.example"));
        assert_eq!(r.queue_id.as_deref(), Some("0001A2B3C4D5E6F7"));
        assert_eq!(r.user.as_deref(), Some("shop"));
        assert_eq!(
            r.received_ips,
            vec![
                "192.0.2.11".parse::<IpAddr>().unwrap(),
                "10.0.0.5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn other_mail_is_not_a_report() {
        assert_eq!(
            parse(b"From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n"),
            None
        );
        let bounce = REPORT.replace("feedback-report; boundary", "delivery-status; boundary");
        let bounce = bounce.replace("message/feedback-report", "message/delivery-status");
        assert_eq!(parse(bounce.as_bytes()), None, "a DSN is no complaint");
    }
}
