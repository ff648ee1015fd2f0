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

/// Node `name`'s directory and configuration: node 1's (same DNS, destinations, egress
/// IPs, Redis) with its own spool and name.
fn node_config(w: &World, name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = w
        .setup
        .config()
        .replace(
            &w.setup.dir.path().join("spool").display().to_string(),
            &dir.path().join("spool").display().to_string(),
        )
        .replace("node = \"n1\"", &format!("node = \"{name}\""));
    (dir, config)
}

/// Nodes 2 and 3, started.
async fn more_nodes(w: &World) -> Vec<(tempfile::TempDir, Relay)> {
    let mut nodes = Vec::new();
    for name in ["n2", "n3"] {
        let (dir, config) = node_config(w, name);
        let relay = Relay::start(&config, dir.path()).await;
        nodes.push((dir, relay));
    }
    nodes
}

/// `extra` and node 1's `[cluster]` section on `redis`.
fn with_cluster(redis: &Redis, extra: &str) -> String {
    format!(
        "\n{extra}\n[cluster]\nredis = \"{}\"\nnode = \"n1\"\n",
        redis.url()
    )
}

/// Node 1 (the setup's) and nodes 2 and 3, each connected to Redis.
async fn three_nodes(w: &World) -> (Relay, Vec<(tempfile::TempDir, Relay)>) {
    let n1 = w.setup.start().await;
    let others = more_nodes(w).await;
    n1.log_with("cluster: connected").await;
    for (_, n) in &others {
        n.log_with("cluster: connected").await;
    }
    (n1, others)
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
    w.setup.extra = with_cluster(&redis, "");
    refuse(&w);
    let (n1, others) = three_nodes(&w).await;

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
    w.setup.extra = with_cluster(&redis, "");
    let (n1, others) = three_nodes(&w).await;

    let ready = crate::support::http_get(n1.admin.unwrap(), "/readyz").await;
    assert!(ready.contains("ok (node n1)"), "{ready}");
    // Redis goes away; node 1 keeps delivering and learns a block alone.
    redis.kill();
    n1.log_with("degraded").await;
    let ready = crate::support::http_get(n1.admin.unwrap(), "/readyz").await;
    assert!(
        ready.contains(r#""queue":"ok""#) && ready.contains("degraded (node n1)"),
        "a Redis outage shows, and the node stays ready: {ready}"
    );
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

/// A DNS forwarder on loopback that counts the queries for names under `zone` (what a
/// blocklist operator sees of us) and passes every query on to the test's server.
struct CountingDns {
    addr: std::net::SocketAddr,
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl CountingDns {
    async fn start(upstream: std::net::SocketAddr, zone: &str) -> CountingDns {
        let socket = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let (zone, seen) = (format!(".{zone}"), counts.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, client)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let query = buf[..n].to_vec();
                if let Some(name) = qname(&query).filter(|q| q.ends_with(&zone)) {
                    *seen.lock().unwrap().entry(name).or_insert(0) += 1;
                }
                let socket = socket.clone();
                tokio::spawn(async move {
                    let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    up.send_to(&query, upstream).await.unwrap();
                    let mut answer = vec![0u8; 4096];
                    if let Ok(Ok((m, _))) = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        up.recv_from(&mut answer),
                    )
                    .await
                    {
                        let _ = socket.send_to(&answer[..m], client).await;
                    }
                });
            }
        });
        CountingDns { addr, counts }
    }

    fn count(&self, name: &str) -> usize {
        self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// The question's name of a DNS query, lower case, without the final dot.
fn qname(packet: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *packet.get(i)? as usize;
        if len == 0 {
            return Some(labels.join(".").to_ascii_lowercase());
        }
        labels.push(String::from_utf8_lossy(packet.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
}

#[tokio::test]
async fn one_node_asks_the_blocklists_each_refresh_and_every_node_takes_its_listing() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    // 127.0.0.2 is every list's positive test point: these nodes send from .3 and .4.
    w.setup.egress = vec![3, 4];
    w.setup.dns.healthy_list("bl.test").await;
    w.setup
        .dns
        .list(
            "bl.test",
            "127.0.0.4".parse().unwrap(),
            "127.0.0.2",
            Some("spam source"),
        )
        .await;
    let dns = CountingDns::start(w.setup.dns.addr, "bl.test").await;
    w.setup.extra = format!(
        "\n[listings]\nrefresh = \"2s\"\njitter = \"0s\"\n\n[[blocklists]]\nzone = \"bl.test\"\nname = \"Test list\"\nseverity = \"hard\"\n[blocklists.codes]\n\"127.0.0.2\" = \"spam source\"\n\n[cluster]\nredis = \"{}\"\nnode = \"n1\"\n",
        redis.url()
    );
    let through_counter =
        |config: String| config.replace(&w.setup.dns.addr.to_string(), &dns.addr.to_string());
    let n1 = Relay::start(&through_counter(w.setup.config()), w.setup.dir.path()).await;
    let mut nodes = vec![(None, n1)];
    for name in ["n2", "n3"] {
        let (dir, config) = node_config(&w, name);
        let relay = Relay::start(&through_counter(config), dir.path()).await;
        nodes.push((Some(dir), relay));
    }
    // Every node takes the listing, whoever asked.
    for (dir, _) in &nodes {
        let config = match dir {
            Some(d) => d.path().join("sidestep.toml"),
            None => w.setup.dir.path().join("sidestep.toml"),
        };
        crate::support::eventually(
            || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
                    .args(["listings", "--json", "--config"])
                    .arg(&config)
                    .output()
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                v["records"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|r| r["ip"] == "127.0.0.4" && r["state"]["Listed"].is_object())
                })
            },
            || format!("{} not listed at {}", "127.0.0.4", config.display()),
        )
        .await;
    }
    // Over three refreshes (the two other nodes skip the lists six times between
    // them), the list is asked about the clean 127.0.0.3 (one query per check; a
    // listed IP adds a TXT query) about three times, not three per node.
    let name = "3.0.0.127.bl.test";
    let skips = || {
        nodes
            .iter()
            .map(|(_, n)| n.log().matches("another node asks the blocklists").count())
            .sum::<usize>()
    };
    let (before, skipped_before) = (dns.count(name), skips());
    crate::support::eventually(
        || skips() >= skipped_before + 6,
        || "three more refreshes of the lists".into(),
    )
    .await;
    let asked = dns.count(name) - before;
    assert!(
        (1..=5).contains(&asked),
        "{asked} queries for {name} over three refreshes of three nodes"
    );
    let skipped = nodes
        .iter()
        .filter(|(_, n)| n.log().contains("another node asks the blocklists"))
        .count();
    assert!(skipped >= 2, "the others take the checker's results");
}

#[tokio::test]
async fn a_sites_connection_limit_holds_across_the_nodes() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.extra = with_cluster(
        &redis,
        "[[shaping]]\nsites = [\"*.dest.test\"]\nmax_connections = 1\n",
    );
    w.dest
        .behave(|b| b.data_delay = Some(std::time::Duration::from_millis(150)));
    let (n1, others) = three_nodes(&w).await;
    // All three nodes deliver to the site at once.
    tokio::join!(
        send(&n1, 3, "a"),
        send(&others[0].1, 3, "b"),
        send(&others[1].1, 3, "c")
    );
    w.dest.wait_for(9).await;
    assert_eq!(
        w.dest.max_open.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the site allows one connection, from all nodes together"
    );
}

#[tokio::test]
async fn a_sender_suspended_on_one_node_is_refused_by_all_and_released_by_any() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.extra = with_cluster(
        &redis,
        "[suspension]\nreputation_refusals = 1\nreputation_ratio = 0.1\n",
    );
    refuse(&w);
    let (n1, others) = three_nodes(&w).await;
    // sender.test's mail draws a reputation refusal on node 1: suspended there...
    send(&n1, 2, "burst").await;
    n1.log_with("sender suspended").await;
    // ...and on the others.
    for (_, n) in &others {
        n.log_with("sender suspension changed by another node")
            .await;
        let mut c = crate::support::client::ready(n.addr).await;
        c.cmd("MAIL FROM:<news@sender.test>", "451").await;
    }
    // Released on node 3: node 1 takes its mail again.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["senders", "release", "domain:sender.test", "--config"])
        .arg(others[1].0.path().join("sidestep.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n1.log_with("sender suspension changed by another node")
        .await;
    let mut c = crate::support::client::ready(n1.addr).await;
    c.cmd("MAIL FROM:<news@sender.test>", "250").await;
}

#[tokio::test]
async fn a_redis_that_never_answers_delays_no_mail() {
    // Accepts connections (the kernel does) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut w = World::new().await;
    w.setup.extra = format!(
        "\n[[shaping]]\nsites = [\"*.dest.test\"]\nmax_connections = 1\n\n[cluster]\nredis = \"redis://{}/0\"\nnode = \"n1\"\n",
        silent.local_addr().unwrap()
    );
    let relay = w.setup.start().await;
    send(&relay, 3, "silent").await;
    assert_eq!(w.dest.wait_for(3).await.len(), 3);
    relay.log_with("degraded").await;
    drop(silent);
}

#[tokio::test]
async fn a_sites_hourly_rate_holds_across_the_nodes() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.setup.extra = with_cluster(
        &redis,
        "[[shaping]]\nsites = [\"*.dest.test\"]\nmessages_per_hour = 3\n",
    );
    let (n1, others) = three_nodes(&w).await;
    // Two messages through each node: six for a site that takes three an hour.
    send(&n1, 2, "a").await;
    send(&others[0].1, 2, "b").await;
    send(&others[1].1, 2, "c").await;
    let limited = |n: &Relay| {
        n.log()
            .matches("the hourly message limit for mx.dest.test is reached")
            .count()
    };
    crate::support::eventually(
        || limited(&n1) + others.iter().map(|(_, n)| limited(n)).sum::<usize>() >= 3,
        || "three deferred by the shared hourly limit".into(),
    )
    .await;
    // Three deferred and three received account for all six (no retry comes soon).
    crate::support::eventually(
        || w.dest.received.lock().unwrap().len() >= 3,
        || "three delivered".into(),
    )
    .await;
    assert_eq!(
        w.dest.received.lock().unwrap().len(),
        3,
        "three an hour from all nodes together"
    );
}

#[tokio::test]
async fn nodes_share_blocks_through_redis_over_tls() {
    let redis = Redis::start_tls().await;
    let mut w = World::new().await;
    w.setup.extra = format!(
        "\n[cluster]\nredis = \"{}\"\nca_file = \"{}\"\nnode = \"n1\"\n",
        redis.url(),
        redis.ca_file().display()
    );
    assert!(w.setup.extra.contains("rediss://"));
    refuse(&w);
    let (n1, others) = three_nodes(&w).await;
    send(&n1, 2, "tls").await;
    n1.log_with("egress IP blocked by destination").await;
    for (_, n) in &others {
        n.log_with("block learned by another node: applied").await;
    }
}

#[tokio::test]
async fn a_site_one_node_finds_down_is_down_and_then_up_for_all() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.delivery = "site_down_after = 2\nsite_probe_interval = \"2s\"".into();
    // Probes every 2 s (the retry schedule is slower), so node 2 keeps away meanwhile.
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.setup.extra = with_cluster(&redis, "");
    w.dest.behave(|b| b.dead = true);
    let (n1, others) = three_nodes(&w).await;
    send(&n1, 2, "dead").await;
    n1.log_with("site marked down: no server answered").await;
    let n2 = &others[0].1;
    n2.log_with("site marked down by another node").await;
    // Node 2 parks its mail for the site without knocking on the dead server.
    send(n2, 2, "parked").await;
    n2.log_count("parked with its down site until its probe", 2)
        .await;
    assert!(
        !n2.log().contains("delivery attempt"),
        "node 2 tried a site node 1 found down: {}",
        n2.log()
    );
    // The server comes back: node 1's probe gets an answer, node 2's mail goes too.
    w.dest.behave(|b| b.dead = false);
    n2.log_with("site up again (seen by another node)").await;
    let got = w.dest.wait_for(4).await;
    assert_eq!(got.len(), 4);
}

#[tokio::test]
async fn a_warming_ips_daily_cap_holds_across_the_nodes() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    // 127.0.0.2 warms up (two messages per site today), 127.0.0.3 is warm.
    w.setup.egress = vec![];
    w.setup.extra = with_cluster(
        &redis,
        "[[pools.egress]]\nip = \"127.0.0.2\"\nhelo = \"out2.relay.test\"\nwarmup = [2, 10]\n\n[[pools.egress]]\nip = \"127.0.0.3\"\nhelo = \"out3.relay.test\"\n",
    );
    let (n1, others) = three_nodes(&w).await;
    for i in 0..4 {
        send(&n1, 1, &format!("n1-{i}")).await;
    }
    w.dest.wait_for(4).await;
    // The cluster's totals reach the others within a second or two.
    others[0]
        .1
        .log_with("the other nodes sent 2 warming messages today")
        .await;
    for i in 0..4 {
        send(&others[0].1, 1, &format!("n2-{i}")).await;
    }
    let got = w.dest.wait_for(8).await;
    let from_two = got.iter().filter(|m| m.peer.to_string() == REFUSED).count();
    assert_eq!(
        from_two,
        2,
        "the warming IP's cap is for all nodes together: {:?}",
        w.dest.peers()
    );
}

#[tokio::test]
async fn a_senders_hourly_quota_holds_across_the_nodes() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.extra = with_cluster(
        &redis,
        "[quotas.sender_domain]\nmessages_per_hour = 2\nrecipients_per_hour = 100\n",
    );
    let (n1, others) = three_nodes(&w).await;
    send(&n1, 2, "quota").await;
    // The takes reach the others within a second or two.
    others[0]
        .1
        .log_with("quota taken by another node: applied")
        .await;
    let mut c = crate::support::client::ready(others[0].1.addr).await;
    c.cmd("MAIL FROM:<news@sender.test>", "450").await;
}

/// `sidestep SUBCOMMAND --config <node dir>/sidestep.toml ARGS…`, off the runtime (its
/// DNS server answers the relays meanwhile); stdout.
async fn cli_at(dir: &std::path::Path, command: &str, args: &[&str]) -> String {
    let mut all: Vec<std::ffi::OsString> = vec![
        command.into(),
        "--config".into(),
        dir.join("sidestep.toml").into_os_string(),
    ];
    all.extend(args.iter().map(Into::into));
    crate::support::relay::sidestep_async(all).await
}

#[tokio::test]
async fn an_address_suppressed_on_one_node_is_refused_by_the_others_and_removed_by_any() {
    let redis = Redis::start().await;
    let mut w = World::new().await;
    w.setup.extra = with_cluster(&redis, "[suppression]\nenabled = true\n");
    let n1 = w.setup.start().await;
    let (dir2, config2) = node_config(&w, "n2");
    let n2 = Relay::start(&config2, dir2.path()).await;
    n1.log_with("cluster: suppression list merged").await;
    n2.log_with("cluster: suppression list merged").await;

    // Suppressed on node 1: refused at RCPT on node 2.
    cli_at(
        w.setup.dir.path(),
        "suppressions",
        &["add", "gone@dest.test"],
    )
    .await;
    n2.log_with("suppression list changed by another node")
        .await;
    let mut c = crate::support::client::ready(n2.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    let refused = c.reply_to("RCPT TO:<gone@dest.test>").await;
    assert!(
        refused.starts_with("550 5.1.1 <gone@dest.test> suppressed: added by the operator"),
        "{refused}"
    );
    c.cmd("QUIT", "221").await;
    let listed = cli_at(dir2.path(), "suppressions", &["--json"]).await;
    assert!(listed.contains("gone@dest.test"), "{listed}");

    // Removed on node 2: node 1 lets it through again.
    cli_at(dir2.path(), "suppressions", &["remove", "gone@dest.test"]).await;
    n1.log_count("suppression list changed by another node", 1)
        .await;
    let mut c = crate::support::client::ready(n1.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<gone@dest.test>", "250").await;
    c.cmd("QUIT", "221").await;

    // A node that starts later takes the list from Redis.
    cli_at(
        w.setup.dir.path(),
        "suppressions",
        &["add", "late@dest.test"],
    )
    .await;
    n2.log_count("suppression list changed by another node", 2)
        .await;
    let (dir3, config3) = node_config(&w, "n3");
    let n3 = Relay::start(&config3, dir3.path()).await;
    n3.log_with("cluster: suppression list merged").await;
    let mut c = crate::support::client::ready(n3.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<late@dest.test>", "550 5.1.1").await;
    c.cmd("QUIT", "221").await;
}
