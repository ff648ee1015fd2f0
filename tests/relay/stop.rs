//! Stopping drains instead of cutting: on SIGTERM the port closes, sessions finish their
//! transaction (and get their `250`), deliveries in flight finish, then the process exits
//! 0; a restart sends nothing twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::client::ready;
use crate::{World, message};

fn subjects(w: &World) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for m in w.dest.messages() {
        let data = String::from_utf8_lossy(&m.data).into_owned();
        let subject = data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        *count.entry(subject).or_insert(0) += 1;
    }
    count
}

#[tokio::test]
async fn sigterm_under_load_finishes_deliveries_and_a_restart_sends_nothing_twice() {
    let w = World::new().await;
    // Every delivery takes a while: a stop always finds some in flight.
    w.dest
        .behave(|b| b.data_delay = Some(Duration::from_millis(300)));
    let relay = w.setup.start().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = relay.addr;
        set.spawn(async move {
            let mut c = ready(addr).await;
            c.send_mail(
                "a@sender.test",
                &["b@dest.test"],
                &message(&format!("m{i}"), "x\r\n"),
            )
            .await;
        });
    }
    while let Some(sent) = set.join_next().await {
        sent.unwrap();
    }
    // Deliveries are under way (the sink holds each for 300 ms).
    crate::support::eventually(|| w.dest.open_now() > 0, || relay.log()).await;
    let (status, log) = relay.terminate().await;
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("stopped: every session ended, every delivery in flight finished"),
        "{log}"
    );
    let before = w.dest.messages().len();
    assert!(before > 0, "some deliveries finished during the drain");

    w.dest.behave(|b| b.data_delay = None);
    let relay = w.setup.start().await;
    w.dest.wait_for(20).await;
    relay
        .log_count("removed: every recipient is final", 20 - before)
        .await;
    let count = subjects(&w);
    assert_eq!(count.len(), 20, "{count:?}");
    assert!(
        count.values().all(|n| *n == 1),
        "a copy sent twice: {count:?}"
    );
}

#[tokio::test]
async fn a_session_mid_transaction_gets_its_250_then_421_and_the_port_closes() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<b@dest.test>", "250").await;
    let mut idle = ready(relay.addr).await;
    relay.signal("TERM").await;
    // A client between transactions is told at once.
    idle.expect("421 4.3.2").await;
    // The one mid-transaction finishes it.
    c.cmd("DATA", "354").await;
    c.send(format!("{}\r\n.\r\n", message("last", "x\r\n")))
        .await;
    c.expect("250").await;
    c.expect("421 4.3.2").await;
    // No new client gets in: the port is closed.
    let addr = relay.addr;
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the port still accepts connections while stopping");
    let (status, log) = relay.exited().await;
    assert!(status.success(), "{status}: {log}");
    // The message answered 250 during the stop was spooled, and goes out after restart.
    let _relay = w.setup.start().await;
    let got = w.dest.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: last"));
}

#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let w = World::new().await;
    // A delivery that would hold the drain for a minute.
    w.dest
        .behave(|b| b.data_delay = Some(Duration::from_secs(60)));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@dest.test"], &message("slow", "x\r\n"))
        .await;
    crate::support::eventually(|| w.dest.open_now() > 0, || relay.log()).await;
    relay.signal("TERM").await;
    relay.log_with("stopping: no new attempts").await;
    relay.signal("INT").await;
    let (status, log) = relay.exited().await;
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("stopped at once by a second signal"), "{log}");
}

/// SIGHUP (a service manager's reload) does not end the relay.
#[tokio::test]
async fn sighup_does_not_stop_the_relay() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    relay.signal("HUP").await;
    relay.log_with("SIGHUP").await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("after hup", "x\r\n"),
    )
    .await;
    w.dest.wait_for(1).await;
}

/// SIGHUP and `sidestep reload` put a valid new configuration in force for new mail, and
/// keep the running one, naming every problem, when the new one is broken.
#[tokio::test]
async fn reload_swaps_a_valid_config_and_refuses_a_broken_one() {
    let mut w = World::new().await;
    w.setup.egress = vec![2];
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 1).await;
    assert_eq!(w.dest.messages()[0].peer.to_string(), "127.0.0.2");

    // The pool moves to .3: a HUP puts it in force.
    let path = w.setup.dir.path().join("sidestep.toml");
    w.setup.egress = vec![3];
    std::fs::write(&path, w.setup.config()).unwrap();
    relay.signal("HUP").await;
    relay.log_with("configuration reloaded").await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("after reload", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(2).await;
    assert_eq!(got[1].peer.to_string(), "127.0.0.3");

    // A broken file: refused with every problem, the running configuration stays.
    std::fs::write(
        &path,
        w.setup.config().replace(
            "[queue]",
            "[queue]\nretry_sometimes = true\nretry_factor = 0.5",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("retry_sometimes") && text.contains("queue.retry_factor"),
        "{text}"
    );
    relay.log_with("configuration reload refused").await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("still fine", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(3).await;
    assert_eq!(got[2].peer.to_string(), "127.0.0.3");

    // What only a restart changes is named.
    w.setup.server = "max_sessions = 50".into();
    std::fs::write(&path, w.setup.config()).unwrap();
    let out = w.setup.cli(&["reload"]);
    assert!(
        out.contains("reloaded") && out.contains("needs a restart: server.max_sessions"),
        "{out}"
    );
}

/// A reload that adds a blocklist puts it in force: the monitor asks it, and a listed IP
/// leaves the rotation without a restart.
#[tokio::test]
async fn a_reload_brings_in_a_new_blocklist() {
    let mut w = World::new().await;
    let relay = w.setup.start().await;
    w.setup.dns.healthy_list("rl.test").await;
    w.setup
        .dns
        .list("rl.test", "127.0.0.2".parse().unwrap(), "127.0.0.2", None)
        .await;
    w.setup.extra = "\n[listings]\nrefresh = \"1h\"\njitter = \"0s\"\n\n[[blocklists]]\nzone = \"rl.test\"\nseverity = \"hard\"\n[blocklists.codes]\n\"127.0.0.2\" = \"spam source\"\n".into();
    std::fs::write(w.setup.dir.path().join("sidestep.toml"), w.setup.config()).unwrap();
    let out = w.setup.cli(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    relay.log_with("egress IP listed").await;
    w.send_in_a_row(&relay, 4).await;
    let peers = w.dest.peers();
    assert!(
        peers.iter().all(|p| p.to_string() == "127.0.0.3"),
        "{peers:?}"
    );
}
