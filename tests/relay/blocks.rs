//! Blocks learned from destinations' replies: a site refuses one egress IP (Cloudmark
//! CSI style), mail goes out through the other one at once, and the operator gets the
//! evidence. Real SMTP over loopback throughout.

use std::net::IpAddr;

use crate::support::client::ready;
use crate::support::eventually;
use crate::support::sink::{Sink, tls_with_ca};
use crate::{World, message};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn csi_refusal(addr: &str) -> String {
    format!(
        "550 5.7.1 Service unavailable; Client host [{addr}] blocked using CSI; https://csi.cloudmark.com/reset-request/?ip={addr}"
    )
}

/// The usual world plus Bell: aliant.test and bell.test share the MX mx.bell.test.
async fn world_with_bell() -> (World, Sink) {
    let w = World::new().await;
    let bell = Sink::start(crate::support::fresh_loopback(), w.dest.addr.port()).await;
    for domain in ["aliant.test", "bell.test"] {
        w.setup.dns.add_mx(domain, 10, "mx.bell.test").await;
    }
    w.setup.dns.add_a("mx.bell.test", bell.addr.ip()).await;
    (w, bell)
}

/// Bell refuses both egress IPs, Cloudmark style.
fn refuse_both_ips(bell: &Sink) {
    bell.behave(|b| {
        for addr in ["127.0.0.2", "127.0.0.3"] {
            b.refuse_from.insert(ip(addr), csi_refusal(addr));
        }
    });
}

/// A smarthost on a fresh address: TLS with a certificate for `name` from a test CA
/// (implicit, or STARTTLS), AUTH required. Returns it and the CA file to trust.
pub(crate) async fn smarthost(
    w: &World,
    name: &str,
    implicit: bool,
    password: &str,
) -> (Sink, std::path::PathBuf) {
    let sink = Sink::start(crate::support::fresh_loopback(), 0).await;
    let (acceptor, ca_pem) = tls_with_ca(name);
    sink.behave(|b| {
        if implicit {
            b.implicit_tls = Some(acceptor);
        } else {
            b.tls = Some(acceptor);
        }
        b.auth = Some(("relay-user".into(), password.into()));
    });
    w.setup.dns.add_a(name, sink.addr.ip()).await;
    let ca = w.setup.dir.path().join(format!("{name}.pem"));
    std::fs::write(&ca, ca_pem).unwrap();
    (sink, ca)
}

/// The `[[smarthosts]]` entry for a smarthost from [`smarthost`] named
/// `smarthost.test` with password `pw`, STARTTLS: name `clean`.
pub(crate) fn clean_smarthost_config(smarthost: &Sink, ca: &std::path::Path) -> String {
    format!(
        "\n[[smarthosts]]\nname = \"clean\"\nhost = \"smarthost.test\"\nport = {}\ntls = \"starttls\"\nusername = \"relay-user\"\npassword = \"pw\"\nca_file = \"{}\"\n",
        smarthost.addr.port(),
        ca.display()
    )
}

async fn send(relay: std::net::SocketAddr, to: &str, subject: &str) {
    let mut c = ready(relay).await;
    c.send_mail("a@sender.test", &[to], &message(subject, "x\r\n"))
        .await;
}

#[tokio::test]
async fn csi_block_routes_around_the_ip_for_the_whole_site() {
    let (w, bell) = world_with_bell().await;
    bell.behave(|b| {
        b.refuse_from
            .insert(ip("127.0.0.2"), csi_refusal("127.0.0.2"));
    });
    let relay = w.setup.start().await;
    // Until the relay has tried .2 once it cannot know; the round-robin gets there by the
    // second message at the latest.
    for i in 0..4 {
        send(relay.addr, "x@aliant.test", &format!("aliant-{i}")).await;
        bell.wait_for(i + 1).await;
        // The block, if any, was logged before this message's delivery line.
        let log = relay.log_count("verdict=delivered", i + 1).await;
        if log.contains("egress IP blocked by destination") {
            break;
        }
    }
    relay.log_with("egress IP blocked by destination").await;
    relay.log_with("retrying at once from another IP").await;
    let before = bell.messages().len();
    assert!(bell.messages().iter().all(|m| m.peer == ip("127.0.0.3")));
    assert!(
        w.sender.messages().is_empty(),
        "a CSI refusal must not bounce"
    );

    // bell.test has the same MX: the block holds for it, .2 does not even connect.
    let connections_before = bell.connections.lock().unwrap().len();
    for i in 0..4 {
        send(relay.addr, "y@bell.test", &format!("bell-{i}")).await;
    }
    let got = bell.wait_for(before + 4).await;
    assert!(got.iter().all(|m| m.peer == ip("127.0.0.3")));
    let later: Vec<IpAddr> = bell.connections.lock().unwrap()[connections_before..].to_vec();
    assert!(!later.contains(&ip("127.0.0.2")), "{later:?}");

    // Another site keeps using both IPs.
    for i in 0..4 {
        send(relay.addr, "z@dest.test", &format!("dest-{i}")).await;
        w.dest.wait_for(i + 1).await;
    }
    let peers = w.dest.peers();
    assert!(
        peers.contains(&ip("127.0.0.2")) && peers.contains(&ip("127.0.0.3")),
        "{peers:?}"
    );

    // The operator's evidence.
    let blocks = w.setup.cli(&["blocks"]);
    assert!(
        blocks.contains("127.0.0.2 refused by site mx.bell.test"),
        "{blocks}"
    );
    assert!(blocks.contains(&csi_refusal("127.0.0.2")), "{blocks}");
    assert!(
        blocks.contains("removal: https://csi.cloudmark.com/reset-request/?ip=127.0.0.2"),
        "{blocks}"
    );
    let report = w.setup.cli(&["delist-report", "127.0.0.2"]);
    for want in [
        "Delisting report for 127.0.0.2",
        "refused by site mx.bell.test",
        "since:",
        "reply:   550 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using CSI",
        "log:     20",
        "queue_id=",
        "egress=127.0.0.2",
        "removal: https://csi.cloudmark.com/reset-request/?ip=127.0.0.2",
    ] {
        assert!(report.contains(want), "{want:?} missing from:\n{report}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&w.setup.cli(&["delist-report", "--json", "127.0.0.2"])).unwrap();
    assert_eq!(json["blocks"][0]["site"], "mx.bell.test");

    // Blocks survive a restart: after it, .2 still never talks to Bell.
    relay.kill().await;
    let relay = w.setup.start().await;
    let connections_before = bell.connections.lock().unwrap().len();
    for i in 0..2 {
        send(relay.addr, "y@bell.test", &format!("after-restart-{i}")).await;
    }
    bell.wait_for(before + 6).await;
    let later: Vec<IpAddr> = bell.connections.lock().unwrap()[connections_before..].to_vec();
    assert!(!later.contains(&ip("127.0.0.2")), "{later:?}");
}

#[tokio::test]
async fn every_ip_blocked_goes_to_the_fallback_smarthost_over_tls_with_auth() {
    let (mut w, bell) = world_with_bell().await;
    refuse_both_ips(&bell);
    let (smarthost, ca) = smarthost(&w, "smarthost.test", false, "s3cret pass").await;
    let password = w.setup.dir.path().join("fallback.pass");
    std::fs::write(&password, "s3cret pass\n").unwrap();
    w.setup.extra = format!(
        r#"
[[smarthosts]]
name = "clean-fallback"
host = "smarthost.test"
port = {port}
tls = "starttls"
username = "relay-user"
password_file = "{password}"
ca_file = "{ca}"

[[routes]]
domains = ["*.test"]
fallback = "clean-fallback"
"#,
        port = smarthost.addr.port(),
        password = password.display(),
        ca = ca.display(),
    );
    let relay = w.setup.start().await;
    send(relay.addr, "x@aliant.test", "urgent").await;
    let got = smarthost.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["x@aliant.test"]);
    assert!(got[0].tls, "smarthost session was not encrypted");
    assert_eq!(got[0].auth.as_deref(), Some("relay-user"));
    assert!(bell.messages().is_empty());
    let log = relay.log_with("egress=smarthost:clean-fallback").await;
    assert_eq!(
        log.matches("egress IP blocked by destination").count(),
        2,
        "{log}"
    );
    assert!(log.contains("egress=smarthost:clean-fallback"), "{log}");
    assert!(w.sender.messages().is_empty());
}

#[tokio::test]
async fn without_fallback_mail_waits_for_the_block_then_a_canary_lifts_it() {
    let (mut w, bell) = world_with_bell().await;
    refuse_both_ips(&bell);
    // Backoff far beyond the test: only the block's expiry can bring the message back.
    w.setup.queue = "retry_initial = \"1h\"\nretry_max = \"1h\"\nmax_lifetime = \"5days\"".into();
    w.setup.extra = "\n[blocks]\nduration = \"2s\"\nmax_duration = \"10s\"\n".into();
    let relay = w.setup.start().await;
    send(relay.addr, "x@aliant.test", "patient").await;
    eventually(
        || relay.log().contains("no usable egress IP in pool default"),
        || relay.log(),
    )
    .await;
    // The deferral says why.
    relay.log_with("blocked by mx.bell.test since").await;
    // Cloudmark resets the IPs' statistics.
    bell.behave(|b| b.refuse_from.clear());
    let got = bell.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["x@aliant.test"]);
    let log = relay.log_with("block lifted").await;
    assert!(log.contains("block expired; canary delivery"), "{log}");
    assert!(log.contains("block lifted"), "{log}");
    assert!(w.sender.messages().is_empty());
}

#[tokio::test]
async fn failed_canary_renews_the_block_for_longer() {
    let (mut w, bell) = world_with_bell().await;
    refuse_both_ips(&bell);
    w.setup.queue = "retry_initial = \"1h\"\nretry_max = \"1h\"\nmax_lifetime = \"5days\"".into();
    w.setup.extra = "\n[blocks]\nduration = \"1s\"\nmax_duration = \"1h\"\n".into();
    let relay = w.setup.start().await;
    send(relay.addr, "x@aliant.test", "stubborn").await;
    eventually(|| relay.log().contains("strikes=1"), || relay.log()).await;
    let json: serde_json::Value =
        serde_json::from_str(&w.setup.cli(&["blocks", "--json"])).unwrap();
    let renewed = json
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["strikes"] == 1)
        .unwrap_or_else(|| panic!("a renewed block: {json:#}\n{}", relay.log()));
    let length =
        renewed["expires_at"].as_u64().unwrap() - renewed["evidence"]["at"].as_u64().unwrap();
    assert!(length >= 2, "a repeat doubles the block: {renewed:#}");
    assert!(bell.messages().is_empty());
}

/// Connections opened before a site starts refusing an IP each bring their refusal a
/// moment later: one strike, not one per connection; and once the first refusal is seen,
/// the IP opens no new connection to the site.
#[tokio::test]
async fn a_burst_of_refusals_in_flight_is_one_strike_and_stops_new_connections() {
    let (w, bell) = world_with_bell().await;
    bell.behave(|b| {
        b.data_from
            .insert(ip("127.0.0.2"), csi_refusal("127.0.0.2"));
        // Every message of the first wave is in flight before the first refusal.
        b.data_delay = Some(std::time::Duration::from_millis(600));
    });
    let relay = w.setup.start().await;
    let first = tokio::spawn(send_wave(relay.addr, "first", 8));
    eventually(
        || bell.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        || relay.log(),
    )
    .await;
    let from_2 = |bell: &Sink| {
        bell.connections
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == ip("127.0.0.2"))
            .count()
    };
    let before = from_2(&bell);
    first.await.unwrap();
    bell.behave(|b| b.data_delay = None);
    send_wave(relay.addr, "second", 8).await;
    bell.wait_for(16).await;
    assert_eq!(
        from_2(&bell),
        before,
        "no new connection from the refused IP once its refusal was seen"
    );
    assert!(bell.messages().iter().all(|m| m.peer == ip("127.0.0.3")));
    relay
        .log_count("removed: every recipient is final", 16)
        .await;

    let refusals = bell.refused.load(std::sync::atomic::Ordering::SeqCst);
    let blocks = w.setup.cli_json(&["blocks"]);
    let block = &blocks.as_array().unwrap()[0];
    assert_eq!(
        block["strikes"], 0,
        "one strike for the whole burst: {block:#}"
    );
    let length = block["expires_at"].as_u64().unwrap() - block["first_seen"].as_u64().unwrap();
    assert!(length <= 4 * 3600 + 1, "not renewed: {block:#}");
    assert!(refusals >= 2, "the test needs a burst: {refusals} refusals");
    let later = block["later"].as_array().map_or(0, Vec::len);
    assert_eq!(later + 1, refusals, "every refusal is evidence: {block:#}");
    assert_eq!(
        relay
            .log()
            .matches("egress IP blocked by destination")
            .count(),
        1
    );
}

/// Sends `n` messages to x@aliant.test at once, each on its own session.
async fn send_wave(relay: std::net::SocketAddr, prefix: &str, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let subject = format!("{prefix}-{i}");
        set.spawn(async move { send(relay, "x@aliant.test", &subject).await });
    }
    while let Some(sent) = set.join_next().await {
        sent.unwrap();
    }
}

#[tokio::test]
async fn domain_reputation_bounces_and_throttle_slows_down() {
    let w = World::new().await;
    w.dest.behave(|b| {
        b.rcpt.insert(
            "listed@dest.test".into(),
            "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using dbl.spamhaus.org; https://www.spamhaus.org/query/domain/sender.test".into(),
        );
        b.data.push_back("421 4.7.0 dest.test Error: too many connections from 127.0.0.2".into());
    });
    let relay = w.setup.start().await;
    send(relay.addr, "listed@dest.test", "dbl").await;
    let dsn = &w.sender.wait_for(1).await[0];
    assert!(
        String::from_utf8_lossy(&dsn.data)
            .replace("\r\n ", " ")
            .contains("blocked using dbl.spamhaus.org")
    );
    relay.log_with("another IP cannot help").await;
    assert!(
        !relay.log().contains("egress IP blocked"),
        "a domain listing must not block the IP"
    );

    send(relay.addr, "ok@dest.test", "slow").await;
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["ok@dest.test"]);
    let log = relay.log_with("verdict=delivered").await;
    assert!(
        log.contains("verdict=throttle") && log.contains("one connection at a time"),
        "{log}"
    );
    assert!(
        !log.contains("egress IP blocked"),
        "throttling must not block the IP: {log}"
    );
}

#[tokio::test]
async fn mail_blocked_everywhere_expires_into_a_dsn_quoting_the_evidence() {
    let (mut w, bell) = world_with_bell().await;
    refuse_both_ips(&bell);
    w.setup.queue =
        "retry_initial = \"200ms\"\nretry_max = \"300ms\"\nmax_lifetime = \"2s\"".into();
    let relay = w.setup.start().await;
    send(relay.addr, "x@aliant.test", "never arrives").await;
    let dsn = &w.sender.wait_for(1).await[0];
    let text = crate::support::dsn_text(dsn);
    for want in [
        "Final-Recipient: rfc822; x@aliant.test",
        "Action: failed",
        "no usable egress IP in pool default for mx.bell.test",
        "blocked by mx.bell.test since",
        "blocked using CSI",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the DSN:\n{text}"
        );
    }
    assert!(bell.messages().is_empty());
    let _ = relay;
}

#[tokio::test]
async fn implicit_tls_smarthost_with_a_password_in_the_config() {
    let (mut w, bell) = world_with_bell().await;
    refuse_both_ips(&bell);
    let (smarthost, ca) = smarthost(&w, "submissions.test", true, "pw").await;
    // The fallback of [delivery] (no route), implicit TLS, password inline.
    w.setup.delivery = "fallback = \"implicit\"".into();
    let config = w.setup.config()
        + &format!(
            "\n[[smarthosts]]\nname = \"implicit\"\nhost = \"submissions.test\"\nport = {}\ntls = \"implicit\"\nusername = \"relay-user\"\npassword = \"pw\"\nca_file = \"{}\"\n",
            smarthost.addr.port(),
            ca.display()
        );
    let relay = crate::support::relay::Relay::start(&config, w.setup.dir.path()).await;
    send(relay.addr, "x@bell.test", "over 465").await;
    let got = smarthost.wait_for(1).await;
    assert!(got[0].tls);
    assert_eq!(got[0].auth.as_deref(), Some("relay-user"));
    relay.log_with("egress=smarthost:implicit").await;
}
