//! Crash safety: a `250` means the message survives `kill -9`.

use std::collections::BTreeSet;

use crate::support::client::ready;
use crate::support::eventually;
use crate::{World, message};

#[tokio::test]
async fn every_acknowledged_message_survives_sigkill() {
    let w = World::new().await;
    // The destination defers everything, so acknowledged mail sits in the spool.
    w.dest
        .behave(|b| b.data_always = Some("421 4.3.2 System not accepting network messages".into()));
    let relay = w.setup.start().await;
    let mut acknowledged = BTreeSet::new();
    for i in 0..10 {
        let mut c = ready(relay.addr).await;
        let subject = format!("crash-{i}");
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&subject, "x\r\n"),
        )
        .await;
        acknowledged.insert(subject);
    }
    // The first attempts have happened (and failed); now the process dies hard.
    eventually(
        || relay.log().matches("verdict=transient").count() >= 10,
        || relay.log(),
    )
    .await;
    relay.kill().await;
    assert!(w.dest.messages().is_empty());

    w.dest.behave(|b| b.data_always = None);
    let relay = w.setup.start().await;
    let got = w.dest.wait_for(10).await;
    let delivered: BTreeSet<String> = got
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    assert_eq!(delivered, acknowledged);
    relay.log_with("recovered spooled messages").await;
}

/// SIGTERM stops the relay at once and cleanly: exit status 0, every line it logged
/// written out (the log is batched), the spooled message delivered after the restart.
#[tokio::test]
async fn sigterm_stops_with_the_log_written_and_the_spool_kept() {
    let w = World::new().await;
    w.dest
        .behave(|b| b.data_always = Some("421 4.3.2 System not accepting network messages".into()));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@dest.test"], &message("term", "x\r\n"))
        .await;
    relay.log_with("verdict=transient").await;
    let (status, log) = relay.terminate().await;
    assert!(status.success(), "{status}: {log}");
    // The last lines of a busy moment would be lost if the batch were not written out.
    let stopping = log
        .find("signal=\"SIGTERM\"")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(log.find("verdict=transient").unwrap() < stopping, "{log}");

    w.dest.behave(|b| b.data_always = None);
    let _relay = w.setup.start().await;
    let got = w.dest.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: term"));
}

/// Spools one message for `b@later.test`, whose MX host has no address yet (so the
/// message must wait), then kills the relay with SIGKILL right after the `250`.
async fn spool_one_and_kill(w: &World, subject: &str) {
    w.setup.dns.add_mx("later.test", 10, "mx.later.test").await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@later.test"],
        &message(subject, "x\r\n"),
    )
    .await;
    relay.kill().await;
}

#[tokio::test]
async fn sigkill_right_after_250_loses_nothing() {
    let w = World::new().await;
    spool_one_and_kill(&w, "kill-now").await;
    w.setup.dns.add_a("mx.later.test", w.dest.addr.ip()).await;
    let _relay = w.setup.start().await;
    let got = w.dest.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: kill-now"));
    assert!(w.sender.messages().is_empty(), "no bounce expected");
}

#[tokio::test]
async fn a_message_whose_body_is_gone_expires_into_a_dsn_instead_of_staying_for_ever() {
    let mut w = World::new().await;
    w.setup.queue =
        "retry_initial = \"200ms\"\nretry_max = \"300ms\"\nmax_lifetime = \"2s\"".into();
    spool_one_and_kill(&w, "vanished").await;
    // An operator (or a damaged disk) takes the body away while the relay is down.
    let msg_dir = w.setup.dir.path().join("spool/msg");
    for entry in std::fs::read_dir(&msg_dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::metadata(&path).unwrap().len() > 0 {
            std::fs::remove_file(path).unwrap();
        }
    }
    let relay = w.setup.start().await;
    let dsn = &w.sender.wait_for(1).await[0];
    let text = crate::support::dsn_text(dsn);
    assert!(
        text.contains("Final-Recipient: rfc822; b@later.test"),
        "{text}"
    );
    assert!(text.contains("cannot be read"), "{text}");
    relay
        .log_with("the body file of a queued message is missing")
        .await;
    relay.log_with("cannot read the message body").await;
    assert!(w.dest.messages().is_empty());
}
