//! Temporary and permanent failures: retry, bounce, expiry, and the null sender.

use crate::support::client::ready;
use crate::support::eventually;
use crate::support::sink::Behaviour;
use crate::{World, message};

#[tokio::test]
async fn temporary_failure_is_retried_until_delivered() {
    let w = World::new().await;
    w.dest.behave(|b| {
        b.data.push_back("451 4.3.0 try again later".into());
        b.data.push_back("452 4.2.2 mailbox busy".into());
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("retry", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["b@dest.test"]);
    let log = relay.log_with("verdict=delivered").await;
    assert_eq!(log.matches("verdict=transient").count(), 2, "{log}");
    assert!(log.contains("451 4.3.0 try again later"), "{log}");
    // Each attempt line says what became of the recipient.
    assert_eq!(log.matches("status=deferred").count(), 2, "{log}");
    assert_eq!(log.matches("status=sent").count(), 1, "{log}");
    // Each deferral says when the next attempt is due.
    assert_eq!(
        log.matches("deferred: next attempt at 20").count(),
        2,
        "{log}"
    );
    assert!(log.contains("last=\"451 4.3.0 try again later\""), "{log}");
    // No DSN for a message that was eventually delivered.
    assert!(w.sender.messages().is_empty());
}

#[tokio::test]
async fn every_recipient_refused_by_a_lax_pipelining_server_still_bounces() {
    let w = World::new().await;
    // The server takes the pipelined DATA although it refused the only recipient; the
    // relay must end the empty message, not send the body, and bounce.
    w.dest.behave(|b| {
        b.lax_data = true;
        b.rcpt.insert(
            "nobody@dest.test".into(),
            "550 5.1.1 <nobody@dest.test>: User unknown".into(),
        );
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["nobody@dest.test"],
        &message("nobody home", "x\r\n"),
    )
    .await;
    let dsn = &w.sender.wait_for(1).await[0];
    let text = crate::support::dsn_text(dsn);
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 <nobody@dest.test>: User unknown"),
        "{text}"
    );
    assert!(w.dest.messages().is_empty());
    let log = relay.log_with("rcpt=nobody@dest.test").await;
    assert_eq!(
        log.matches("verdict=recipient").count(),
        1,
        "one attempt: {log}"
    );
    // The empty message was ended, so the QUIT after it was read as a command.
    eventually(
        || w.dest.quits.load(std::sync::atomic::Ordering::SeqCst) == 1,
        || "the sink never saw QUIT".into(),
    )
    .await;
}

#[tokio::test]
async fn permanent_failure_bounces_a_dsn_quoting_the_reply() {
    permanent_failure_bounces(|_| {}).await;
}

#[tokio::test]
async fn a_server_without_pipelining_gets_one_command_at_a_time() {
    permanent_failure_bounces(|b| b.no_pipelining = true).await;
}

/// One recipient of two refused at RCPT by a destination shaped by `shape`: the other is
/// delivered, the refused one bounced with a DSN quoting the refusal. Returns the world
/// for what else the caller checks.
pub async fn permanent_failure_bounces(shape: impl FnOnce(&mut Behaviour)) -> World {
    let w = World::new().await;
    w.dest.behave(|b| {
        shape(b);
        b.rcpt.insert(
            "nobody@dest.test".into(),
            "550 5.1.1 <nobody@dest.test>: User unknown in virtual mailbox table".into(),
        );
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["nobody@dest.test", "b@dest.test"],
        &message("bounce me", "x\r\n"),
    )
    .await;
    // The good recipient is delivered, the bad one bounced.
    assert_eq!(w.dest.wait_for(1).await[0].rcpts, vec!["b@dest.test"]);
    let dsn = &w.sender.wait_for(1).await[0];
    assert_eq!(dsn.mail_from.split(' ').next().unwrap(), "<>");
    assert_eq!(dsn.rcpts, vec!["a@sender.test"]);
    let text = crate::support::dsn_text(dsn);
    for want in [
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Type: message/delivery-status",
        "Reporting-MTA: dns; relay.test",
        "Final-Recipient: rfc822; nobody@dest.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.dest.test",
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@dest.test>: User unknown in virtual mailbox table",
        "Content-Type: text/rfc822-headers",
        "Subject: bounce me",
        "Auto-Submitted: auto-replied",
    ] {
        assert!(text.contains(want), "DSN lacks {want:?}:\n{text}");
    }
    assert!(
        !text.contains("Final-Recipient: rfc822; b@dest.test"),
        "{text}"
    );
    w
}

#[tokio::test]
async fn permanent_data_rejection_bounces() {
    let w = World::new().await;
    // From every egress IP: a refusal only one IP gets is asked again from the other
    // (tests/relay/second_opinion.rs).
    w.dest
        .behave(|b| b.data_always = Some("554 5.7.1 Message rejected as spam".into()));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("spam?", "x\r\n"),
    )
    .await;
    let dsn = &w.sender.wait_for(1).await[0];
    let text = crate::support::dsn_text(dsn);
    assert!(
        text.contains("Diagnostic-Code: smtp; 554 5.7.1 Message rejected as spam"),
        "{text}"
    );
    assert!(w.dest.messages().is_empty());
    let log = relay.log_with("bounced: permanent failure").await;
    assert!(log.contains("rcpt=b@dest.test"), "{log}");
}

#[tokio::test]
async fn nonexistent_domain_and_null_mx_bounce() {
    let w = World::new().await;
    w.setup.dns.add_null_mx("nomail.test").await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["x@nxdomain.test", "y@nomail.test"],
        &message("nx", "x\r\n"),
    )
    .await;
    let dsn = &w.sender.wait_for(1).await[0];
    let text = crate::support::dsn_text(dsn);
    assert!(
        text.contains("Final-Recipient: rfc822; x@nxdomain.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.2"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; y@nomail.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.10"), "{text}");
}

#[tokio::test]
async fn expiry_produces_a_dsn_with_the_last_error() {
    let mut w = World::new().await;
    w.setup.queue =
        "retry_initial = \"200ms\"\nretry_max = \"300ms\"\nmax_lifetime = \"2s\"".into();
    w.dest
        .behave(|b| b.data_always = Some("451 4.7.1 Greylisted, come back later".into()));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@dest.test"], &message("slow", "x\r\n"))
        .await;
    let dsn = &w.sender.wait_for(1).await[0];
    let text = crate::support::dsn_text(dsn);
    assert!(
        text.contains("Final-Recipient: rfc822; b@dest.test"),
        "{text}"
    );
    assert!(text.contains("Status: 4.7.1"), "{text}");
    assert!(text.contains("delivery time expired"), "{text}");
    assert!(
        text.contains("451 4.7.1 Greylisted, come back later"),
        "{text}"
    );
    assert!(w.dest.messages().is_empty());
}

#[tokio::test]
async fn null_sender_never_gets_a_dsn() {
    let w = World::new().await;
    w.dest
        .behave(|b| b.data_always = Some("550 5.1.1 no such user".into()));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "",
        &["b@dest.test"],
        &message("bounce of a bounce", "x\r\n"),
    )
    .await;
    // Wait until the relay has dealt with it, then check that nothing went anywhere.
    eventually(
        || relay.log().contains("removed: every recipient is final"),
        || relay.log(),
    )
    .await;
    relay.log_with("no DSN: null sender").await;
    assert!(w.sender.messages().is_empty());
    assert!(w.dest.messages().is_empty());
}

/// A destination whose server is down (connections closed at once): after a few
/// failures the site is marked down, its mail is parked and only probed, and when a
/// probe gets an answer all of it goes at once, not at its hour-later retry.
#[tokio::test]
async fn a_dead_site_is_probed_not_hammered_and_released_when_it_answers() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.setup.delivery = "site_down_after = 3\nsite_probe_interval = \"1s\"".into();
    w.dest.behave(|b| b.dead = true);
    let relay = w.setup.start().await;
    for i in 0..20 {
        let mut c = ready(relay.addr).await;
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("d{i}"), "x\r\n"),
        )
        .await;
    }
    relay.log_with("site marked down").await;
    let summary = w.setup.cli_json(&["queue"]);
    assert_eq!(
        summary["sites_down"][0]["site"], "mx.dest.test",
        "{summary}"
    );
    let at_down = w.dest.connections.lock().unwrap().len();
    // Three probes, a second apart.
    relay.log_count("probe delivery", 3).await;
    let after = w.dest.connections.lock().unwrap().len();
    assert!(
        at_down < 20 && after - at_down <= 4,
        "20 messages: {at_down} connections until the site was down, then {} for 3 probes",
        after - at_down
    );

    w.dest.behave(|b| b.dead = false);
    relay.log_with("site up again").await;
    let got = w.dest.wait_for(20).await;
    assert_eq!(got.len(), 20);
    assert_eq!(
        w.setup.cli_json(&["queue"])["sites_down"],
        serde_json::json!([])
    );
}

/// The retry schedule is seconds, the probe interval its default five minutes: a site
/// that refused connections and came back gets its mail at the schedule's pace, not
/// five minutes later (parking a site must not slow its mail beyond the schedule).
#[tokio::test]
async fn a_down_site_is_probed_at_the_retry_schedules_pace() {
    let mut w = World::new().await;
    w.setup.queue = "retry_initial = \"1s\"\nretry_max = \"2s\"\nmax_lifetime = \"1h\"".into();
    w.setup.delivery = "site_down_after = 2".into();
    w.dest.behave(|b| b.dead = true);
    let relay = w.setup.start().await;
    for i in 0..3 {
        let mut c = ready(relay.addr).await;
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("back{i}"), "x\r\n"),
        )
        .await;
    }
    relay.log_with("site marked down").await;
    w.dest.behave(|b| b.dead = false);
    // Within the tests' patience (30 s), far less than the 5 min probe interval.
    let got = w.dest.wait_for(3).await;
    assert_eq!(got.len(), 3);
    relay.log_with("site up again").await;
}
