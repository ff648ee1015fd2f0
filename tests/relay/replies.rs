//! The destination's reply is quoted exactly: every digit of the enhanced status code
//! (Microsoft's 5.7.606–649, 5.7.511, 5.7.509) and the text, in the log line, the block
//! evidence, what the classifier sees, and the DSN.

use crate::support::client::ready;
use crate::{World, message};

#[tokio::test]
async fn three_digit_enhanced_codes_reach_log_block_classifier_and_dsn() {
    let w = World::new().await;
    let banned = "550 5.7.606 Access denied, banned sending IP [127.0.0.2]. To request removal from this list please visit https://sender.office.com/ and follow the directions.";
    let dmarc = "550 5.7.509 Access denied, sending domain [SENDER.TEST] does not pass DMARC verification and has a DMARC policy of reject.";
    w.dest.behave(|b| {
        b.data_from
            .insert("127.0.0.2".parse().unwrap(), banned.into());
        b.rcpt.insert("dmarc@dest.test".into(), dmarc.into());
    });
    let relay = w.setup.start().await;
    // The rotation reaches .2 within two messages.
    w.send_in_a_row(&relay, 2).await;
    let log = relay.log_with("egress IP blocked by destination").await;
    assert!(log.contains("dsn=5.7.606"), "{log}");
    assert!(log.contains("rule=\"microsoft-ip-block\""), "{log}");
    assert!(log.contains(banned), "the reply as sent: {log}");
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks[0]["evidence"]["reply"], banned, "{blocks}");
    assert_eq!(
        blocks[0]["evidence"]["removal_url"], "https://sender.office.com/",
        "{blocks}"
    );

    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["dmarc@dest.test"],
        &message("dmarc", "x\r\n"),
    )
    .await;
    let dsn = w.sender.wait_for(1).await;
    let text = crate::support::dsn_text(&dsn[0]);
    assert!(text.contains("Status: 5.7.509"), "{text}");
    assert!(
        text.contains(&format!("Diagnostic-Code: smtp; {dmarc}")),
        "{text}"
    );
    relay.log_with("dsn=5.7.509").await;
}
