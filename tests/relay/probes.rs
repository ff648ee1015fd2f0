//! Seed probes through the binary, with a real IMAP server (Dovecot) as the seed
//! mailbox: the destination accepts mail from one IP and drops it, while the other IP's
//! mail reaches the mailbox.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::imap::Dovecot;
use crate::support::sink::Sink;
use crate::{World, message};

/// Plays the seed's mail system: every probe the destination accepted from an IP in
/// `delivers` is filed into the mailbox (`folder`); the others are dropped.
fn forward_probes(
    dest: Sink,
    mailbox: Arc<Dovecot>,
    delivers: Arc<Mutex<HashSet<IpAddr>>>,
    folder: &'static str,
) {
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let got = dest.received.lock().unwrap().clone();
            for m in got.iter().skip(seen) {
                let probe = String::from_utf8_lossy(&m.data).contains("X-Sidestep-Probe:");
                if probe && delivers.lock().unwrap().contains(&m.peer) {
                    mailbox.deliver(folder, &m.data);
                }
            }
            seen = got.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

fn probes_config(w: &mut World, mailbox: &Dovecot) {
    w.setup.extra = format!(
        r#"
[probes]
imap = "{}"
password_file = "{}"
interval = "2s"
deadline = "2s"
hold = "1h"
[[probes.seeds]]
address = "seed@dest.test"
"#,
        mailbox.url(),
        mailbox.password_file.display()
    );
}

/// A probe from 127.0.0.2 is accepted and dropped: the IP is kept away from the site,
/// and the log says what happened (probe missing, block set, then extended) rather than
/// speaking of refusals. The first run probes once an hour, so the `missing` state it
/// asserts stays put; a restart with a 2 s interval sends the next probes.
#[tokio::test]
async fn a_discarding_site_gets_the_ip_marked_and_mail_moves_until_a_probe_arrives() {
    let mailbox = Arc::new(Dovecot::start("seeds", "seed-password").await);
    let mut w = World::new().await;
    probes_config(&mut w, &mailbox);
    let every_2s = w.setup.extra.clone();
    w.setup.extra = every_2s.replace("interval = \"2s\"", "interval = \"1h\"");
    let good: IpAddr = "127.0.0.3".parse().unwrap();
    let dropped: IpAddr = "127.0.0.2".parse().unwrap();
    let delivers = Arc::new(Mutex::new(HashSet::from([good])));
    forward_probes(w.dest.clone(), mailbox.clone(), delivers.clone(), "INBOX");
    let relay = w.setup.start().await;

    crate::support::eventually(
        || find_status(&w, "127.0.0.2") == "missing" && find_status(&w, "127.0.0.3") == "arrived",
        || format!("{}", w.setup.cli_json(&["probes"])),
    )
    .await;
    let probes = w.setup.cli_json(&["probes"]);
    let find = |ip: &str| {
        probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["ip"] == ip)
            .cloned()
            .unwrap_or_else(|| panic!("no probe from {ip}: {probes}"))
    };
    assert_eq!(find("127.0.0.2")["seed"], "seed@dest.test");
    assert_eq!(find("127.0.0.3")["folder"], "INBOX", "{probes}");
    let log = relay
        .log_with("egress IP silently discarded by the site")
        .await;
    let missing = log
        .lines()
        .find(|l| l.contains("probe missing"))
        .unwrap_or_else(|| panic!("no probe-missing line: {log}"));
    assert!(missing.contains("ip=127.0.0.2"), "{missing}");
    assert!(log.contains("silent-discard block set until 20"), "{log}");
    for misleading in [
        "refusal from an attempt",
        "egress IP blocked by destination",
    ] {
        assert!(!log.contains(misleading), "{log}");
    }
    let blocks = w.setup.cli(&["blocks"]);
    assert!(
        blocks.contains("127.0.0.2 silently discarded by site mx.dest.test")
            && blocks.contains("seed probe")
            && blocks.contains("250"),
        "{blocks}"
    );

    // Real mail to the site now leaves from the IP whose mail arrives.
    let before = w.dest.received.lock().unwrap().len();
    let mut c = crate::support::client::ready(relay.addr).await;
    for i in 0..4 {
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("m{i}"), "x\r\n"),
        )
        .await;
    }
    crate::support::eventually(
        || {
            w.dest
                .received
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.rcpts == ["b@dest.test"])
                .count()
                == 4
        },
        || "four messages".into(),
    )
    .await;
    let mail_peers: Vec<IpAddr> = w.dest.received.lock().unwrap()[before..]
        .iter()
        .filter(|m| m.rcpts == ["b@dest.test"])
        .map(|m| m.peer)
        .collect();
    assert!(
        mail_peers.iter().all(|p| *p == good),
        "mail went out from the discarded IP: {mail_peers:?}"
    );

    // Probes every 2 s from now on: another one goes missing and extends the block.
    relay.kill().await;
    w.setup.extra = every_2s;
    let relay = w.setup.start().await;
    let log = relay
        .log_with("another seed probe missing: silent-discard block extended until 20")
        .await;
    assert!(!log.contains("refusal from an attempt"), "{log}");

    // The site delivers 127.0.0.2's mail again: its next probe arrives and lifts it.
    delivers.lock().unwrap().insert(dropped);
    relay
        .log_with("silent discard over: a seed probe from this IP arrived")
        .await;
    let blocks = w.setup.cli(&["blocks"]);
    assert!(!blocks.contains("silently discarded"), "{blocks}");
    let log = relay.log();
    assert!(
        log.lines()
            .any(|l| l.contains("seed probe arrived") && l.contains("ip=127.0.0.2")),
        "{log}"
    );
}

fn find_status(w: &World, ip: &str) -> String {
    let p = w.setup.cli_json(&["probes"]);
    p.as_array()
        .unwrap()
        .iter()
        .find(|p| p["ip"] == ip)
        .map(|p| p["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn probes_filed_as_junk_are_shown_as_junk_and_rate_limited() {
    let mailbox = Arc::new(Dovecot::start("seeds", "pw-junk").await);
    let mut w = World::new().await;
    probes_config(&mut w, &mailbox);
    w.setup.extra = w
        .setup
        .extra
        .replace("interval = \"2s\"", "interval = \"1h\"");
    let delivers = Arc::new(Mutex::new(HashSet::from([
        "127.0.0.2".parse().unwrap(),
        "127.0.0.3".parse().unwrap(),
    ])));
    forward_probes(w.dest.clone(), mailbox.clone(), delivers, "Junk");
    let relay = w.setup.start().await;
    crate::support::eventually(
        || {
            let p = w.setup.cli_json(&["probes"]);
            p.as_array().unwrap().len() == 2
                && p.as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["status"] == "arrived" && p["folder"] == "Junk" && p["junk"] == true)
        },
        || format!("{}", w.setup.cli_json(&["probes"])),
    )
    .await;
    let text = w.setup.cli(&["probes"]);
    assert!(text.contains("arrived in Junk (junk)"), "{text}");
    // An hour's interval: one probe per IP, however many passes the task makes.
    let passes = relay.log().matches("seed probes: pass done").count();
    relay.log_count("seed probes: pass done", passes + 3).await;
    let probes = w
        .dest
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|m| String::from_utf8_lossy(&m.data).contains("X-Sidestep-Probe:"))
        .count();
    assert_eq!(probes, 2, "one probe per IP and site per interval");
    assert!(!relay.log().contains("silently discarded by the site"));
}
