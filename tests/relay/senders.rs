//! Sender quotas and the suspension of a sender whose mail looks like a hacked
//! account's (the seed 003 story), through the real binary: logged-in users over SMTP,
//! a destination whose content filter refuses one user's mail for the egress IP's
//! reputation, the CLI to see and release the suspension.

use std::net::IpAddr;

use crate::submission::{plain_response, submission_world};
use crate::support::client::Client;
use crate::support::eventually;
use crate::{World, message};

/// A session from a fresh outsider address, logged in as `user`.
async fn logged_in(relay: &crate::support::relay::Relay, user: &str, password: &str) -> Client {
    let from: IpAddr = crate::support::fresh_loopback();
    let mut c = Client::connect_from(from, relay.addr).await;
    c.expect("220").await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain_response(user, password)),
        "235",
    )
    .await;
    c
}

#[tokio::test]
async fn quotas_refuse_with_450_before_anything_is_accepted() {
    let mut w = World::new().await;
    submission_world(&mut w);
    w.setup.extra.push_str(
        "allow_plaintext_loopback = true\n\n\
         [[quotas.overrides]]\nuser = \"alice\"\nmessages_per_hour = 2\nrecipients_per_hour = 100\n\n\
         [[quotas.overrides]]\nuser = \"carol\"\nmessages_per_hour = 100\nrecipients_per_hour = 3\n",
    );
    let relay = w.setup.start().await;
    let mut alice = logged_in(&relay, "alice", "s3cret").await;
    for i in 0..2 {
        alice
            .send_mail(
                "alice@sender.test",
                &["b@dest.test"],
                &message(&format!("a{i}"), "x\r\n"),
            )
            .await;
    }
    let refused = alice
        .cmd("MAIL FROM:<alice@sender.test>", "450 4.7.1")
        .await;
    assert!(
        refused.contains("user alice: 2 messages per hour"),
        "{refused}"
    );

    let mut carol = logged_in(&relay, "carol", "hunter2").await;
    carol.cmd("MAIL FROM:<carol@sender.test>", "250").await;
    for r in ["r1", "r2", "r3"] {
        carol.cmd(&format!("RCPT TO:<{r}@dest.test>"), "250").await;
    }
    let refused = carol.cmd("RCPT TO:<r4@dest.test>", "450 4.7.1").await;
    assert!(
        refused.contains("user carol: 3 recipients per hour"),
        "{refused}"
    );
    carol.cmd("DATA", "354").await;
    carol.send("Subject: three\r\n\r\nx\r\n.\r\n").await;
    carol.expect("250").await;
    let got = w.dest.wait_for(3).await;
    assert_eq!(
        got.len(),
        3,
        "two of alice's, one of carol's; nothing dropped"
    );
    relay.log_with("MAIL refused: over quota").await;
    let metrics = crate::support::http_get(relay.admin.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("sidestep_quota_refusals_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_sender_whose_mail_draws_reputation_refusals_is_suspended_and_held() {
    let mut w = World::new().await;
    submission_world(&mut w);
    w.setup.extra.push_str(
        "allow_plaintext_loopback = true\n\n\
         [suspension]\nreputation_refusals = 2\nreputation_ratio = 0.5\n",
    );
    w.dest.behave(|b| {
        b.data_containing.insert(
            "CHEAP-PILLS".into(),
            "554 5.7.1 Service unavailable; Client host [{peer}] blocked using zen.spamhaus.org"
                .into(),
        );
    });
    let relay = w.setup.start().await;
    let mut alice = logged_in(&relay, "alice", "s3cret").await;
    alice
        .send_mail(
            "alice@sender.test",
            &["victim@dest.test"],
            &message("offer", "CHEAP-PILLS\r\n"),
        )
        .await;
    relay.log_with("sender suspended").await;
    let refused = alice
        .cmd("MAIL FROM:<alice@sender.test>", "451 4.7.1")
        .await;
    assert!(refused.contains("user:alice is suspended"), "{refused}");

    // Other users keep flowing.
    let mut carol = logged_in(&relay, "carol", "hunter2").await;
    carol
        .send_mail(
            "carol@sender.test",
            &["c@sender.test"],
            &message("fine", "x\r\n"),
        )
        .await;
    let got = w.sender.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["c@sender.test"]);

    let all = w.setup.cli_json(&["senders"]);
    let list = &all["suspended"];
    assert_eq!(list[0]["sender"], "user:alice", "{all}");
    assert!(
        all["bounce_rates"].is_array() && all["complaint_rates"].is_array(),
        "{all}"
    );
    assert!(
        list[0]["reason"].as_str().unwrap().contains("reputation"),
        "{list}"
    );
    assert!(
        list[0]["recent"]["samples"][0]
            .as_str()
            .unwrap()
            .contains("zen.spamhaus.org"),
        "{list}"
    );
    let text = w.setup.cli(&["senders"]);
    assert!(
        text.contains("sidestep senders release user:alice"),
        "{text}"
    );
    // Its queued mail is held: not delivered, not lost.
    eventually(
        || w.setup.cli_json(&["queue"])["by_state"]["held"] == 1,
        || relay.log(),
    )
    .await;

    // A restart keeps the suspension.
    relay.kill().await;
    let relay = w.setup.start().await;
    let mut again = logged_in(&relay, "alice", "s3cret").await;
    again
        .cmd("MAIL FROM:<alice@sender.test>", "451 4.7.1")
        .await;

    // The operator releases alice and returns her held mail to her.
    let out = w.setup.cli(&["senders", "release", "alice", "--bounce"]);
    assert!(out.contains("1 bounced"), "{out}");
    let dsns = w.sender.wait_for(2).await;
    let dsn = crate::support::dsn_text(&dsns[1]);
    assert!(dsn.contains("suspended"), "{dsn}");
    assert_eq!(
        w.setup.cli_json(&["senders"])["suspended"],
        serde_json::json!([])
    );
    again.cmd("RSET", "250").await;
    again.cmd("MAIL FROM:<alice@sender.test>", "250").await;
}
