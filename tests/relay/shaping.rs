//! `[[shaping]]` through the binary: a site's connections at once, messages per
//! connection and messages per hour, counted at the destination.

use std::sync::atomic::Ordering;

use crate::support::client::ready;
use crate::{World, message};

fn shaping(w: &mut World, rule: &str) {
    w.setup.extra = format!("\n[[shaping]]\nsites = [\"*.dest.test\"]\n{rule}\n");
}

#[tokio::test]
async fn one_connection_at_a_time_when_the_site_says_so() {
    let mut w = World::new().await;
    shaping(&mut w, "max_connections = 1");
    w.dest
        .behave(|b| b.data_delay = Some(std::time::Duration::from_millis(100)));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    for i in 0..6 {
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("s{i}"), "x\r\n"),
        )
        .await;
    }
    w.dest.wait_for(6).await;
    assert_eq!(w.dest.max_open.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_carries_at_most_its_messages() {
    let mut w = World::new().await;
    shaping(&mut w, "messages_per_connection = 2");
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 6).await;
    // Two IPs in turn, each connection closed after its second message: four.
    let connections = w.dest.connections.lock().unwrap().len();
    assert_eq!(connections, 4, "{:?}", w.dest.peers());
}

#[tokio::test]
async fn the_hourly_limit_defers_the_rest() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    shaping(&mut w, "messages_per_hour = 3");
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    for i in 0..5 {
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("h{i}"), "x\r\n"),
        )
        .await;
    }
    relay
        .log_count(
            "shaping: the hourly message limit for mx.dest.test is reached",
            2,
        )
        .await;
    assert_eq!(w.dest.wait_for(3).await.len(), 3);
    let summary = w.setup.cli_json(&["queue"]);
    assert_eq!(summary["messages"], 2, "{summary}");
}

#[tokio::test]
async fn a_site_that_says_too_fast_gets_one_connection_for_all_its_domains() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    // other.test shares dest.test's mail exchanger: one site, two domains.
    w.setup.dns.add_mx("other.test", 10, "mx.dest.test").await;
    w.dest.behave(|b| {
        b.data
            .push_back("421 4.7.0 mx.dest.test Error: too many connections from you".into());
        b.data_delay = Some(std::time::Duration::from_millis(100));
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("first", "x\r\n"),
    )
    .await;
    relay
        .log_with("its shaping is tightened (one connection at a time)")
        .await;
    for i in 0..8 {
        let to = if i % 2 == 0 {
            "b@dest.test"
        } else {
            "b@other.test"
        };
        c.send_mail("a@sender.test", &[to], &message(&format!("t{i}"), "x\r\n"))
            .await;
    }
    let got = w.dest.wait_for(8).await;
    assert!(got.iter().any(|m| m.rcpts == ["b@other.test"]));
    assert_eq!(
        w.dest.max_open.load(Ordering::SeqCst),
        1,
        "both domains share the tightened site's one connection"
    );
}
