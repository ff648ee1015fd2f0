//! Feedback-loop complaints through the binary: ARF reports about mail the relay really
//! sent land in a real IMAP mailbox (Dovecot); sidestep reads them, matches each to its
//! sender and egress IP, counts each once, and suspends the sender past the threshold.

use crate::support::imap::Dovecot;
use crate::support::sink::Received;
use crate::{World, message};

/// An RFC 5965 report about `original` as the destination received it.
fn arf(report_id: &str, original: &Received) -> Vec<u8> {
    let mut text = format!(
        "From: fbl@dest.test\r\n\
To: abuse@relay.test\r\n\
Subject: FW: complaint\r\n\
Message-ID: <{report_id}>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\r\n\
\r\n\
--arf\r\n\
Content-Type: text/plain\r\n\
\r\n\
A recipient marked this message as spam.\r\n\
--arf\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: DestFBL/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <{}>\r\n\
Source-IP: {}\r\n\
\r\n\
--arf\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Received: from out.relay.test (out.relay.test [{}])\r\n\
\tby mx.dest.test with ESMTP; Wed, 25 Nov 2026 10:00:00 +0000\r\n",
        // As the sink logged MAIL FROM: `<news@sender.test> SIZE=…` (parameters kept).
        original.mail_from,
        original.peer,
        original.peer
    )
    .into_bytes();
    text.extend_from_slice(&original.data);
    text.extend_from_slice(b"\r\n--arf--\r\n");
    text
}

#[tokio::test]
async fn reports_are_matched_counted_once_and_suspend_the_sender() {
    let mailbox = Dovecot::start("fbl", "fbl-password").await;
    let mut w = World::new().await;
    w.setup.extra = format!(
        r#"
[complaints]
enabled = true
imap = "{}"
password_file = "{}"
interval = "1s"
[suspension]
complaints = 3
complaint_ratio = 0.5
"#,
        mailbox.url(),
        mailbox.password_file.display()
    );
    let relay = w.setup.start().await;
    let mut c = crate::support::client::ready(relay.addr).await;
    for i in 0..4 {
        c.send_mail(
            "news@sender.test",
            &["b@dest.test"],
            &message(&format!("offer {i}"), "x\r\n"),
        )
        .await;
    }
    let sent = w.dest.wait_for(4).await;
    // Our queue ids, as our Received: lines name them.
    let queue_id = |m: &Received| {
        let text = String::from_utf8_lossy(&m.data).replace("\r\n\t", " ");
        text.split(" id ")
            .nth(1)
            .and_then(|r| r.split([' ', ';']).next())
            .unwrap()
            .to_string()
    };

    mailbox.deliver(
        "INBOX",
        b"From: someone@else.test\r\nSubject: not a report\r\n\r\nhello\r\n",
    );
    mailbox.deliver("INBOX", &arf("r0@fbl.dest.test", &sent[0]));
    mailbox.deliver("INBOX", &arf("r0@fbl.dest.test", &sent[0]));
    mailbox.deliver("INBOX", &arf("r1@fbl.dest.test", &sent[1]));
    crate::support::eventually(
        || w.setup.cli_json(&["complaints"])["by_sender"]["domain:sender.test"]["complaints"] == 2,
        || format!("{}", w.setup.cli_json(&["complaints"])),
    )
    .await;
    let view = w.setup.cli_json(&["complaints"]);
    let reports = view["reports"].as_array().unwrap();
    assert_eq!(
        reports.len(),
        2,
        "the same report twice counts once: {view}"
    );
    let r1 = &reports[0];
    assert_eq!(r1["report_id"], "r1@fbl.dest.test");
    assert_eq!(r1["queue_id"], queue_id(&sent[1]), "{view}");
    assert_eq!(r1["ip"], sent[1].peer.to_string(), "{view}");
    assert_eq!(r1["feedback_type"], "abuse");
    assert_eq!(r1["reporter"], "DestFBL/1.0");
    let per_ip: u64 = view["by_ip"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(ip, _)| ip.starts_with("127.0.0."))
        .map(|(_, t)| t["complaints"].as_u64().unwrap())
        .sum();
    assert_eq!(per_ip, 2, "both matched to our egress IPs: {view}");
    assert_eq!(
        w.setup.cli_json(&["senders"])["suspended"],
        serde_json::json!([]),
        "2 of 3: not yet"
    );
    let text = w.setup.cli(&["complaints"]);
    assert!(
        text.contains("domain:sender.test") && text.contains("abuse from DestFBL/1.0"),
        "{text}"
    );

    // The third complaint: 3 of 4 delivery attempts (over the 50% share): suspended.
    mailbox.deliver("INBOX", &arf("r2@fbl.dest.test", &sent[2]));
    relay.log_with("sender suspended").await;
    let all = w.setup.cli_json(&["senders"]);
    let list = &all["suspended"];
    assert_eq!(list[0]["sender"], "domain:sender.test", "{list}");
    assert!(
        all["complaint_rates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["domain"] == "sender.test" && r["complaints"] == 3),
        "{all}"
    );
    assert!(
        list[0]["reason"]
            .as_str()
            .unwrap()
            .contains("3 feedback-loop complaints"),
        "{list}"
    );
    assert!(
        list[0]["recent"]["samples"][0]
            .as_str()
            .unwrap()
            .contains("abuse report"),
        "the reports are the evidence: {list}"
    );
    let mut again = crate::support::client::ready(relay.addr).await;
    again.cmd("MAIL FROM:<news@sender.test>", "451").await;
}
