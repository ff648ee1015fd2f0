//! IP warmup through the binary: a warming IP carries no more than its daily cap per
//! site, the rest goes from the warm IP or waits, and today's counts survive a restart.

use std::net::IpAddr;

use crate::support::client::ready;
use crate::{World, message};

/// Egress 127.0.0.2 and .3 with these warmup schedules (empty: warm).
fn egress(w: &mut World, two: &str, three: &str) {
    w.setup.egress = vec![];
    w.setup.extra = format!(
        "[[pools.egress]]\nip = \"127.0.0.2\"\nhelo = \"out2.relay.test\"\nwarmup = [{two}]\n\n\
         [[pools.egress]]\nip = \"127.0.0.3\"\nhelo = \"out3.relay.test\"\nwarmup = [{three}]\n"
    );
}

async fn send(relay: &crate::support::relay::Relay, from: usize, n: usize) {
    for i in from..from + n {
        let mut c = ready(relay.addr).await;
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("w{i}"), "x\r\n"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_warming_ip_carries_its_daily_cap_and_the_warm_one_the_rest() {
    let mut w = World::new().await;
    egress(&mut w, "2, 10", "");
    let relay = w.setup.start().await;
    send(&relay, 0, 8).await;
    let got = w.dest.wait_for(8).await;
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    let from_two = got.iter().filter(|m| m.peer == two).count();
    assert_eq!(from_two, 2, "{:?}", w.dest.peers());
    let status = w.setup.cli_json(&["warmup"]);
    assert_eq!(status[0]["ip"], "127.0.0.2", "{status}");
    assert_eq!(status[0]["day"], 1);
    assert_eq!(status[0]["cap"], 2);
    assert_eq!(status[0]["today"]["mx.dest.test"], 2, "{status}");
    let text = w.setup.cli(&["warmup"]);
    assert!(
        text.contains("day 1 of 2: up to 2 messages per site today"),
        "{text}"
    );
}

#[tokio::test]
async fn with_every_ip_at_its_cap_mail_waits_and_the_counts_survive_a_restart() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    egress(&mut w, "2", "1");
    let relay = w.setup.start().await;
    send(&relay, 0, 4).await;
    w.dest.wait_for(3).await;
    relay
        .log_with("warming up: today's cap for mx.dest.test reached")
        .await;
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    assert_eq!(w.dest.messages().len(), 3, "never beyond the caps");

    let relay = w.setup.start().await;
    send(&relay, 4, 1).await;
    relay.log_count("warming up: today's cap", 2).await;
    assert_eq!(w.dest.messages().len(), 3, "today's counts were kept");
    let summary = w.setup.cli_json(&["queue"]);
    assert_eq!(summary["messages"], 2, "{summary}");
}
