//! The second opinion before a bounce: a refusal no rule blames on the egress IP is
//! tried again at once from the other IP. Accepted there, the first IP is blocked for
//! the site and the wording is learned; refused again, the sender gets one DSN quoting
//! both replies. Real SMTP over loopback throughout.

use std::net::IpAddr;

use crate::support::client::ready;
use crate::support::eventually;
use crate::{World, message};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends `n` messages one after the other and waits until the relay is done with each.
async fn send_and_settle(relay: &crate::support::relay::Relay, n: usize) {
    for i in 0..n {
        let mut c = ready(relay.addr).await;
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("m{i}"), "x\r\n"),
        )
        .await;
        relay
            .log_count("removed: every recipient is final", i + 1)
            .await;
    }
}

#[tokio::test]
async fn an_ip_refusal_in_unknown_words_reroutes_and_is_learned() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    // After DATA, in words no rule knows (the rules read it as local policy).
    let refusal = "554 5.7.1 Transaction refused by local policy, ref 8a2f";
    w.dest.behave(|b| {
        b.data_from.insert(ip("127.0.0.2"), refusal.to_string());
    });
    let relay = w.setup.start().await;
    send_and_settle(&relay, 6).await;

    let got = w.dest.messages();
    assert_eq!(got.len(), 6, "every message arrives");
    assert!(got.iter().all(|m| m.peer == ip("127.0.0.3")));
    assert!(w.sender.messages().is_empty(), "nothing bounces");
    let log = relay.log();
    // Once .2 is blocked it is not asked again: one second opinion for six messages.
    assert_eq!(
        log.matches("second opinion: a refusal no rule blames")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("second opinion: accepted from another address"));

    let blocks = w.setup.cli_json(&["blocks"]);
    let blocks = blocks.as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0]["ip"], "127.0.0.2");
    assert_eq!(blocks[0]["evidence"]["reply"], refusal);
    let rule = blocks[0]["evidence"]["rule"].as_str().unwrap();
    assert!(
        rule.contains("second-opinion") && rule.contains("127.0.0.3"),
        "{rule}"
    );
    assert!(
        blocks[0]["evidence"]["log_line"]
            .as_str()
            .unwrap()
            .contains("egress=127.0.0.2")
    );

    let learned = w.setup.cli_json(&["classify", "--learned"]);
    let learned = learned.as_array().unwrap();
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0]["reply"], refusal);
    assert_eq!(learned[0]["verdict"], "policy");
    assert_eq!(learned[0]["ip"], "127.0.0.2");
    assert_eq!(learned[0]["accepted_via"], "127.0.0.3");

    // The human form suggests a rule an operator can paste.
    let text = w.setup.cli(&["classify", "--learned"]);
    assert!(text.contains("[[classify.rules]]"), "{text}");
    assert!(
        text.contains("transaction refused by local policy"),
        "{text}"
    );
}

#[tokio::test]
async fn a_deferral_naming_the_ip_is_asked_elsewhere_at_once() {
    let mut w = World::new().await;
    // Nothing waits for a retry: what arrives went out within its first attempt.
    w.setup.queue = crate::NO_RETRY_SOON.into();
    let deferral = "451 4.7.1 Connections from 127.0.0.2 not accepted at this time";
    w.dest.behave(|b| {
        b.refuse_from.insert(ip("127.0.0.2"), deferral.to_string());
    });
    let relay = w.setup.start().await;
    send_and_settle(&relay, 3).await;
    let got = w.dest.messages();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| m.peer == ip("127.0.0.3")));
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks[0]["ip"], "127.0.0.2", "{blocks}");
    assert_eq!(blocks[0]["evidence"]["reply"], deferral);
}

#[tokio::test]
async fn content_refused_from_every_ip_costs_two_attempts_and_one_dsn() {
    let w = World::new().await;
    let refusal = "554 5.6.0 Message content rejected, id=77";
    w.dest.behave(|b| b.data_always = Some(refusal.to_string()));
    let relay = w.setup.start().await;
    send_and_settle(&relay, 1).await;

    let dsns = w.sender.wait_for(1).await;
    let log = relay.log();
    assert_eq!(
        log.matches("verdict=message").count(),
        2,
        "two attempts, one per IP: {log}"
    );
    assert!(log.contains("refused from another IP too"));
    // The first refusal waits for the second opinion; the second one bounces.
    assert_eq!(log.matches("status=deferred").count(), 1, "{log}");
    assert_eq!(log.matches("status=bounced").count(), 1, "{log}");
    assert_eq!(dsns.len(), 1);
    let dsn = crate::support::dsn_text(&dsns[0]);
    assert_eq!(
        dsn.matches(refusal).count(),
        4,
        "both replies, twice: {dsn}"
    );
    assert!(dsn.contains("first: 554 5.6.0"), "{dsn}");
    assert!(dsn.contains("then: 554 5.6.0"), "{dsn}");
    assert!(dsn.contains("X-Sidestep-First-Diagnostic-Code: smtp; 554 5.6.0"));
    assert!(dsn.contains("Status: 5.6.0"));
    // Two refusals that agree blame nobody's IP.
    assert_eq!(w.setup.cli_json(&["blocks"]), serde_json::json!([]));
    assert_eq!(
        w.setup.cli_json(&["classify", "--learned"]),
        serde_json::json!([])
    );
    // The relay is done: no third attempt, no second DSN.
    eventually(|| relay.log().contains("DSN queued"), || relay.log()).await;
    assert_eq!(relay.log().matches("DSN queued").count(), 1);
    assert_eq!(w.sender.messages().len(), 1);
}

#[tokio::test]
async fn with_one_ip_the_fallback_smarthost_gives_the_second_opinion() {
    let mut w = World::new().await;
    w.setup.egress = vec![2];
    w.setup.queue = crate::NO_RETRY_SOON.into();
    let refusal = "550 5.7.1 Message refused (policy 17)";
    w.dest.behave(|b| {
        b.data_from.insert(ip("127.0.0.2"), refusal.to_string());
    });
    let (smarthost, ca) = crate::blocks::smarthost(&w, "smarthost.test", false, "pw").await;
    w.setup.delivery = "fallback = \"clean\"".into();
    w.setup.extra = crate::blocks::clean_smarthost_config(&smarthost, &ca);
    let relay = w.setup.start().await;
    send_and_settle(&relay, 2).await;
    // The first message: refused from .2, then accepted by the smarthost; the second goes
    // straight to the smarthost, .2 being blocked for the site.
    assert_eq!(smarthost.messages().len(), 2);
    assert!(w.dest.messages().is_empty());
    assert!(w.sender.messages().is_empty(), "nothing bounces");
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks[0]["ip"], "127.0.0.2", "{blocks}");
    let learned = w.setup.cli_json(&["classify", "--learned"]);
    assert_eq!(learned[0]["accepted_via"], "smarthost:clean", "{learned}");
    assert_eq!(
        relay
            .log()
            .matches("second opinion: a refusal no rule blames")
            .count(),
        1
    );
}
