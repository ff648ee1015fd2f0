//! DNSBL listings of our own egress IPs, served by a real DNS server on loopback
//! (hickory-server in process, and Debian's rbldnsd).

use std::net::IpAddr;
use std::process::Command;

use serde_json::Value;

use crate::support::client::ready;
use crate::support::eventually;
use crate::{World, message};

// Egress IPs for these tests are 127.0.0.3 and .4: 127.0.0.2 is every list's positive
// test point (RFC 5782 §5), listed on any healthy list.
const TWO: &str = "127.0.0.3";
const THREE: &str = "127.0.0.4";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn blocklist(zone: &str, severity: &str) -> String {
    format!(
        r#"
[[blocklists]]
zone = "{zone}"
name = "Test list {zone}"
severity = "{severity}"
removal_url = "https://{zone}/remove"
[blocklists.codes]
"127.0.0.2" = "spam source"
"127.0.0.3" = "exploited host"
"#
    )
}

const FAST_REFRESH: &str = "\n[listings]\nrefresh = \"1s\"\njitter = \"0s\"\n";

async fn world_with_list(zone: &str) -> World {
    let mut w = World::new().await;
    w.setup.egress = vec![3, 4];
    w.setup.dns.healthy_list(zone).await;
    w.setup.extra = format!("{FAST_REFRESH}{}", blocklist(zone, "hard"));
    w
}

fn record<'a>(report: &'a Value, ip: &str, zone: &str) -> &'a Value {
    report["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ip"] == ip && r["zone"] == zone)
        .unwrap_or_else(|| panic!("no record for {ip} on {zone}: {report:#}"))
}

async fn send_sequentially(w: &World, relay_addr: std::net::SocketAddr, n: usize) -> Vec<IpAddr> {
    let before = w.dest.messages().len();
    for i in 0..n {
        let mut c = ready(relay_addr).await;
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("l{i}"), "x\r\n"),
        )
        .await;
        w.dest.wait_for(before + i + 1).await;
    }
    w.dest.messages()[before..].iter().map(|m| m.peer).collect()
}

#[tokio::test]
async fn listed_ip_leaves_the_rotation_until_delisted() {
    let w = world_with_list("bl.test").await;
    w.setup
        .dns
        .list(
            "bl.test",
            ip(TWO),
            "127.0.0.3",
            Some("Listed for exploits, see https://bl.test/lookup?127.0.0.3"),
        )
        .await;
    let relay = w.setup.start().await;
    relay.log_with("https://bl.test/remove").await;
    let log = relay.log_with("127.0.0.3 exploited host").await;
    assert!(
        log.contains("ip=127.0.0.3")
            && log.contains("127.0.0.3 exploited host")
            && log.contains("https://bl.test/remove"),
        "{log}"
    );

    let peers = send_sequentially(&w, relay.addr, 4).await;
    assert_eq!(peers, vec![ip(THREE); 4], "a hard-listed IP was used");

    let text = w.setup.cli(&["listings"]);
    assert!(
        text.contains("LISTED 127.0.0.3 exploited host since"),
        "{text}"
    );
    assert!(
        text.contains("reason: Listed for exploits, see https://bl.test/lookup?127.0.0.3"),
        "{text}"
    );
    assert!(text.contains("removal: https://bl.test/remove"), "{text}");
    let json: Value = serde_json::from_str(&w.setup.cli(&["listings", "--json"])).unwrap();
    assert!(
        record(&json, TWO, "bl.test")["state"]["Listed"].is_object(),
        "{json:#}"
    );
    assert_eq!(record(&json, THREE, "bl.test")["state"], "Clean");

    w.setup.dns.delist("bl.test", ip(TWO)).await;
    eventually(
        || relay.log().contains("egress IP delisted"),
        || relay.log(),
    )
    .await;
    let peers = send_sequentially(&w, relay.addr, 2).await;
    assert!(
        peers.contains(&ip(TWO)),
        "delisted IP not back in rotation: {peers:?}"
    );
}

#[tokio::test]
async fn all_ips_listed_defers_and_delivers_after_a_delisting() {
    let mut w = world_with_list("bl.test").await;
    // A backoff far longer than the test: only the delisting can wake the message.
    w.setup.queue = "retry_initial = \"1h\"\nretry_max = \"1h\"\nmax_lifetime = \"5days\"".into();
    w.setup
        .dns
        .list("bl.test", ip(TWO), "127.0.0.2", None)
        .await;
    w.setup
        .dns
        .list("bl.test", ip(THREE), "127.0.0.2", None)
        .await;
    let relay = w.setup.start().await;
    eventually(
        || relay.log().matches("egress IP listed").count() >= 2,
        || relay.log(),
    )
    .await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("waits", "x\r\n"),
    )
    .await;
    eventually(
        || relay.log().contains("no usable egress IP in pool default"),
        || relay.log(),
    )
    .await;
    assert!(w.dest.messages().is_empty());
    // Deferred, not bounced.
    relay.log_with("verdict=transient").await;

    w.setup.dns.delist("bl.test", ip(THREE)).await;
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].peer, ip(THREE));
    assert!(
        w.sender.messages().is_empty(),
        "no DSN for a deferred message"
    );
}

#[tokio::test]
async fn soft_listing_is_used_only_as_last_resort() {
    let mut w = World::new().await;
    w.setup.egress = vec![3, 4];
    w.setup.dns.healthy_list("soft.test").await;
    w.setup.extra = format!("{FAST_REFRESH}{}", blocklist("soft.test", "soft"));
    w.setup
        .dns
        .list("soft.test", ip(TWO), "127.0.0.2", None)
        .await;
    let relay = w.setup.start().await;
    eventually(|| relay.log().contains("egress IP listed"), || relay.log()).await;
    assert_eq!(
        send_sequentially(&w, relay.addr, 3).await,
        vec![ip(THREE); 3]
    );
    w.setup
        .dns
        .list("soft.test", ip(THREE), "127.0.0.2", None)
        .await;
    eventually(
        || relay.log().matches("egress IP listed").count() >= 2,
        || relay.log(),
    )
    .await;
    // Both soft-listed: mail still flows.
    assert_eq!(send_sequentially(&w, relay.addr, 2).await.len(), 2);
}

// Multi-threaded: the test blocks on the CLI while the in-process DNS server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsbl_check_tells_listings_from_errors() {
    let w = world_with_list("bl.test").await;
    let dns = &w.setup.dns;
    dns.list(
        "bl.test",
        ip("192.0.2.1"),
        "127.0.0.2",
        Some("spam trap hits"),
    )
    .await;
    dns.list("bl.test", ip("2001:db8::1"), "127.0.0.3", None)
        .await;
    dns.list("bl.test", ip("192.0.2.3"), "127.255.255.254", None)
        .await;
    dns.list("bl.test", ip("192.0.2.4"), "127.0.0.9", None)
        .await;
    std::fs::write(w.setup.dir.path().join("sidestep.toml"), w.setup.config()).unwrap();
    let args = [
        "dnsbl-check",
        "--json",
        "192.0.2.1",
        "2001:db8::1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
    ];
    let json: Value = serde_json::from_str(&w.setup.cli(&args)).unwrap();
    let listed = &record(&json, "192.0.2.1", "bl.test")["state"]["Listed"];
    assert_eq!(listed["codes"][0]["code"], "127.0.0.2");
    assert_eq!(listed["codes"][0]["meaning"], "spam source");
    assert_eq!(listed["reason"], "spam trap hits");
    // IPv6: 32 reversed nibbles.
    assert_eq!(
        record(&json, "2001:db8::1", "bl.test")["state"]["Listed"]["codes"][0]["code"],
        "127.0.0.3"
    );
    assert_eq!(record(&json, "192.0.2.2", "bl.test")["state"], "Clean");
    for (addr, cause) in [("192.0.2.3", "open resolver"), ("192.0.2.4", "127.0.0.9")] {
        let r = record(&json, addr, "bl.test");
        assert_eq!(
            r["state"], "Unknown",
            "{addr} must not count as listed: {r:#}"
        );
        assert!(
            r["error"]["cause"].as_str().unwrap().contains(cause),
            "{r:#}"
        );
    }
    let text = w.setup.cli(&["dnsbl-check", "192.0.2.3"]);
    assert!(
        text.contains("error at") && text.contains("127.255.255.254"),
        "{text}"
    );
}

#[tokio::test]
async fn lapsed_zone_answering_everything_is_ignored() {
    let mut w = World::new().await;
    w.setup.egress = vec![3, 4];
    w.setup.dns.healthy_list("lapsed.test").await;
    for listed in ["127.0.0.1", TWO, THREE] {
        w.setup
            .dns
            .list("lapsed.test", ip(listed), "127.0.0.2", None)
            .await;
    }
    w.setup.extra = format!("{FAST_REFRESH}{}", blocklist("lapsed.test", "hard"));
    let relay = w.setup.start().await;
    eventually(
        || relay.log().contains("blocklist is broken"),
        || relay.log(),
    )
    .await;
    relay.log_with("lapsed").await;
    let peers = send_sequentially(&w, relay.addr, 2).await;
    assert!(
        peers.contains(&ip(TWO)) && peers.contains(&ip(THREE)),
        "{peers:?}"
    );
    let text = w.setup.cli(&["listings"]);
    assert!(
        text.contains("BROKEN since") && text.contains("(ignored)"),
        "{text}"
    );
    assert!(!relay.log().contains("egress IP listed"), "{}", relay.log());
}

#[tokio::test]
async fn unreachable_list_keeps_the_last_known_state() {
    let mut w = world_with_list("bl.test").await;
    w.setup
        .dns
        .list("bl.test", ip(TWO), "127.0.0.2", None)
        .await;
    let relay = w.setup.start().await;
    eventually(|| relay.log().contains("egress IP listed"), || relay.log()).await;
    w.setup.dns.go_silent().await;
    eventually(
        || relay.log().contains("keeping last known state"),
        || relay.log(),
    )
    .await;
    eventually(
        || {
            let json: Value = serde_json::from_str(&w.setup.cli(&["listings", "--json"])).unwrap();
            let r = record(&json, TWO, "bl.test");
            r["error"].is_object() && r["state"]["Listed"].is_object()
        },
        || w.setup.cli(&["listings"]),
    )
    .await;
    let text = w.setup.cli(&["listings"]);
    assert!(
        text.contains("(last known: LISTED 127.0.0.2 spam source"),
        "{text}"
    );
}

#[tokio::test]
async fn listing_state_survives_a_restart() {
    let w = world_with_list("bl.test").await;
    w.setup
        .dns
        .list("bl.test", ip(TWO), "127.0.0.2", None)
        .await;
    let relay = w.setup.start().await;
    eventually(|| relay.log().contains("egress IP listed"), || relay.log()).await;
    let before: Value = serde_json::from_str(&w.setup.cli(&["listings", "--json"])).unwrap();
    let first_seen = record(&before, TWO, "bl.test")["state"]["Listed"]["first_seen"].clone();
    relay.kill().await;

    // After the restart the list refuses our queries: only the stored state says .2 is
    // listed, and it must still keep .2 out of the rotation.
    w.setup.dns.delist("bl.test", ip(TWO)).await;
    w.setup
        .dns
        .list("bl.test", ip(TWO), "127.255.255.254", None)
        .await;
    let relay = w.setup.start().await;
    eventually(
        || relay.log().contains("keeping last known state"),
        || relay.log(),
    )
    .await;
    let after: Value = serde_json::from_str(&w.setup.cli(&["listings", "--json"])).unwrap();
    assert_eq!(
        record(&after, TWO, "bl.test")["state"]["Listed"]["first_seen"],
        first_seen
    );
    assert_eq!(
        send_sequentially(&w, relay.addr, 2).await,
        vec![ip(THREE); 2]
    );
}

#[test]
fn rbldnsd_a_real_dnsbl_server() {
    crate::support::require("rbldnsd");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bl.zone"),
        ":127.0.0.2:Listed by the rbldnsd test list, see https://rbl.test/q?$\n127.0.0.2\n192.0.2.66\n",
    )
    .unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("rbldnsd")
        .args(["-n", "-q", "-b", &format!("127.0.0.1/{port}"), "-w"])
        .arg(dir.path())
        .args(["-t", "1", "bl.test:ip4set:bl.zone"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let config = dir.path().join("sidestep.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nnameservers = [\"127.0.0.1:{port}\"]\ntimeout = \"1s\"\n{}",
            blocklist("bl.test", "hard")
        ),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .args(["dnsbl-check", "--config"])
            .arg(&config)
            .args(["192.0.2.66", "192.0.2.67"])
            .output()
            .unwrap()
    };
    // rbldnsd loads its zone after starting (-q): wait until it answers.
    let mut text = String::new();
    for _ in 0..100 {
        let out = run();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("ok (checked") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        text.contains("bl.test  Test list bl.test [hard]  ok"),
        "{text}"
    );
    assert!(text.contains("LISTED 127.0.0.2 spam source"), "{text}");
    assert!(
        text.contains("reason: Listed by the rbldnsd test list, see https://rbl.test/q?192.0.2.66"),
        "{text}"
    );
    let after_67 = text.split("\n192.0.2.67\n").nth(1).unwrap();
    assert!(after_67.contains("clean (checked"), "{text}");
}

/// Reverse DNS as receivers check it: 127.0.0.2 is fine (PTR, back to the IP, HELO its
/// name); 127.0.0.3 has a dynamic-looking PTR and a HELO that resolves nowhere.
#[tokio::test]
async fn reverse_dns_of_the_egress_ips_is_checked_and_shown() {
    let w = World::new().await;
    let (two, three): (IpAddr, IpAddr) =
        ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
    w.setup.dns.add_ptr(two, "out2.relay.test").await;
    w.setup.dns.add_a("out2.relay.test", two).await;
    w.setup.dns.add_ptr(three, "127-0-0-3.dyn.isp.test").await;
    w.setup.dns.add_a("127-0-0-3.dyn.isp.test", three).await;
    let relay = w.setup.start().await;
    relay
        .log_with("egress IP reverse DNS: receivers may refuse it")
        .await;
    let report = w.setup.cli_json(&["listings"]);
    let hygiene = report["hygiene"].as_array().unwrap();
    assert_eq!(hygiene.len(), 2, "{report:#}");
    assert_eq!(hygiene[0]["ip"], "127.0.0.2");
    assert_eq!(hygiene[0]["problems"], serde_json::json!([]), "{report:#}");
    assert_eq!(hygiene[0]["fcrdns"], true);
    let problems = hygiene[1]["problems"].to_string();
    assert!(problems.contains("looks generic or dynamic"), "{problems}");
    assert!(problems.contains("HELO out3.relay.test"), "{problems}");
    assert_eq!(hygiene[1]["fcrdns"], true, "it does resolve back");
    let text = w.setup.cli(&["listings"]);
    assert!(text.contains("ok: PTR out2.relay.test"), "{text}");
    assert!(text.contains("PROBLEM:"), "{text}");
    // Without require_fcrdns both IPs still carry mail.
    let peers = send_sequentially(&w, relay.addr, 4).await;
    assert!(peers.contains(&three), "{peers:?}");
}

#[tokio::test]
async fn require_fcrdns_keeps_an_ip_without_reverse_dns_out_until_it_has_one() {
    let mut w = World::new().await;
    let (two, three): (IpAddr, IpAddr) =
        ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
    w.setup.dns.add_ptr(two, "out2.relay.test").await;
    w.setup.dns.add_a("out2.relay.test", two).await;
    w.setup.delivery = "require_fcrdns = true".into();
    let relay = w.setup.start().await;
    relay
        .log_with("out of rotation: no forward-confirmed reverse DNS")
        .await;
    let peers = send_sequentially(&w, relay.addr, 4).await;
    assert!(peers.iter().all(|p| *p == two), "{peers:?}");
    let text = w.setup.cli(&["listings"]);
    assert!(text.contains("no PTR record"), "{text}");

    // The PTR appears; the next check brings the IP back. (A name the first check did
    // not ask about: resolvers cache "no such name" for a while.)
    w.setup.dns.add_ptr(three, "mail3.relay.test").await;
    w.setup.dns.add_a("mail3.relay.test", three).await;
    crate::support::http_request(relay.admin.unwrap(), "POST", "/api/v1/listings/refresh").await;
    relay.log_with("egress IP back in rotation").await;
    let peers = send_sequentially(&w, relay.addr, 4).await;
    assert!(peers.contains(&three), "{peers:?}");
}
