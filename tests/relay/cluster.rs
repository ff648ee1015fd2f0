//! Several relays, one reputation: three sidestep processes share a real Redis. What
//! one learns, the others honour; a Redis outage loses nothing.

use std::net::IpAddr;

use crate::support::redis::Redis;
use crate::support::relay::Relay;
use crate::{World, message};

const REFUSED: &str = "127.0.0.2";

/// The destination's Cloudmark-style refusal of `ip`, at the greeting.
fn refuse(w: &World) {
    w.dest.behave(|b| {
        b.refuse_from.insert(
            REFUSED.parse().unwrap(),
            format!("554 5.7.1 Service unavailable; Client host [{REFUSED}] blocked using CSI. https://csi.cloudmark.com/reset-request/?ip={REFUSED}"),
        );
    });
}

/// Nodes 2 and 3: the same configuration as node 1 (same DNS, destinations, egress
/// IPs, Redis) with their own spool and name.
async fn more_nodes(w: &World) -> Vec<(tempfile::TempDir, Relay)> {
    let mut nodes = Vec::new();
    for name in ["n2", "n3"] {
        let dir = tempfile::tempdir().unwrap();
        let config = w
            .setup
            .config()
            .replace(
                &w.setup.dir.path().join("spool").display().to_string(),
                &dir.path().join("spool").display().to_string(),
            )
            .replace("node = \"n1\"", &format!("node = \"{name}\""));
        let relay = Relay::start(&config, dir.path()).await;
        nodes.push((dir, relay));
    }
    nodes
}

async fn send(relay: &Relay, n: usize, tag: &str) {
    let mut c = crate::support::client::ready(relay.addr).await;
    for i in 0..n {
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("{tag}{i}"), "x\r\n"),
        )
        .await;
    }
}

fn connections_from(w: &World, ip: &str) -> usize {
    let ip: IpAddr = ip.parse().unwrap();
    w.dest
        .connections
        .lock()
        .unwrap()
        .iter()
        .filter(|c| **c == ip)
        .count()
}

#[tokio::test]
async fn a_block_learned_on_one_node_keeps_the_others_off_the_ip() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.extra = format!("\n[cluster]\nredis = \"{}\"\nnode = \"n1\"\n", redis.url());
    refuse(&w);
    let n1 = w.setup.start().await;
    let others = more_nodes(&w).await;
    for (_, n) in &others {
        n.log_with("cluster: connected").await;
    }
    n1.log_with("cluster: connected").await;

    // Node 1 meets the refusal and blocks the IP for the site.
    send(&n1, 2, "one").await;
    w.dest.wait_for(2).await;
    n1.log_with("egress IP blocked by destination").await;
    for (_, n) in &others {
        let log = n.log_with("block learned by another node: applied").await;
        assert!(log.contains(REFUSED), "{log}");
    }
    let refused_before = connections_from(&w, REFUSED);

    // Nodes 2 and 3 never try the refused IP: every message leaves from the other one.
    for (i, (_, n)) in others.iter().enumerate() {
        send(n, 3, &format!("node{i}-")).await;
    }
    let got = w.dest.wait_for(8).await;
    assert_eq!(
        connections_from(&w, REFUSED),
        refused_before,
        "another node connected from the IP node 1 found blocked"
    );
    assert!(got[2..].iter().all(|m| m.peer.to_string() == "127.0.0.3"));
    // And `sidestep blocks` on node 2 shows the block with node 1's evidence.
    let blocks = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["blocks", "--config"])
        .arg(others[0].0.path().join("sidestep.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&blocks.stdout);
    assert!(
        text.contains(REFUSED) && text.contains("blocked using CSI"),
        "{text}"
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_loses_no_block_and_merges_what_was_learned_meanwhile() {
    let mut redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.extra = format!("\n[cluster]\nredis = \"{}\"\nnode = \"n1\"\n", redis.url());
    let n1 = w.setup.start().await;
    let others = more_nodes(&w).await;
    for (_, n) in &others {
        n.log_with("cluster: connected").await;
    }
    n1.log_with("cluster: connected").await;

    // Redis goes away; node 1 keeps delivering and learns a block alone.
    redis.kill();
    n1.log_with("degraded").await;
    refuse(&w);
    send(&n1, 3, "outage").await;
    w.dest.wait_for(3).await;
    n1.log_with("egress IP blocked by destination").await;

    // Redis comes back empty: node 1 writes its block back, the others take it.
    redis.restart().await;
    n1.log_with("Redis is back; state merged").await;
    for (_, n) in &others {
        n.log_with("block learned by another node: applied").await;
    }
    let refused_before = connections_from(&w, REFUSED);
    send(&others[1].1, 3, "after").await;
    w.dest.wait_for(6).await;
    assert_eq!(connections_from(&w, REFUSED), refused_before);
}
