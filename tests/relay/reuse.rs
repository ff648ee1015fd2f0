//! Connection reuse: messages to one destination ride on sessions left open by earlier
//! ones, without changing which egress IP carries each, and a session the server closed
//! meanwhile costs a new connection, never a deferral.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::World;
use crate::support::eventually;
use crate::support::sink::AfterMessage;

/// Waits until the sink has seen `n` QUITs.
async fn quits(w: &World, n: usize) {
    eventually(
        || w.dest.quits.load(Ordering::SeqCst) == n,
        || format!("{} QUITs", w.dest.quits.load(Ordering::SeqCst)),
    )
    .await;
}

fn delivery_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("delivery attempt"))
        .collect()
}

#[tokio::test]
async fn messages_in_a_row_reuse_one_session_per_egress_ip() {
    let mut w = World::new().await;
    w.setup.delivery = r#"reuse_idle = "30s""#.into();
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 6).await;

    // Reuse does not change the rotation of egress IPs.
    let peers: Vec<IpAddr> = w.dest.messages().iter().map(|m| m.peer).collect();
    for pair in peers.windows(2) {
        assert_ne!(pair[0], pair[1], "{peers:?}");
    }
    let connections = w.dest.connections.lock().unwrap().clone();
    assert_eq!(
        connections.len(),
        2,
        "one session per egress IP: {connections:?}"
    );
    assert_eq!(w.dest.quits.load(Ordering::SeqCst), 0);
    let log = relay.log_count("delivery attempt", 6).await;
    let lines = delivery_lines(&log);
    assert_eq!(lines.len(), 6, "{log}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("reused=true")).count(),
        4,
        "{log}"
    );
}

#[tokio::test]
async fn with_reuse_off_every_message_has_its_own_connection_and_quit() {
    let mut w = World::new().await;
    w.setup.delivery = r#"reuse_idle = "0s""#.into();
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 4).await;
    assert_eq!(w.dest.connections.lock().unwrap().len(), 4);
    quits(&w, 4).await;
}

#[tokio::test]
async fn an_idle_session_is_closed_with_quit_after_reuse_idle() {
    let mut w = World::new().await;
    w.setup.delivery = r#"reuse_idle = "300ms""#.into();
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 1).await;
    quits(&w, 1).await;
    eventually(
        || w.dest.open_now() == 0,
        || "the session is still open".into(),
    )
    .await;
}

#[tokio::test]
async fn a_session_reaches_reuse_messages_then_closes() {
    let mut w = World::new().await;
    w.setup.egress = vec![2];
    w.setup.delivery = "reuse_idle = \"30s\"\nreuse_messages = 2".into();
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 5).await;
    // Messages 1+2, 3+4, then 5 on a third session.
    assert_eq!(w.dest.connections.lock().unwrap().len(), 3);
    quits(&w, 2).await;
}

#[tokio::test]
async fn a_session_the_server_closed_is_replaced_without_a_deferral() {
    for after in [AfterMessage::HangUp, AfterMessage::Refuse421] {
        let mut w = World::new().await;
        w.setup.egress = vec![2];
        w.setup.delivery = r#"reuse_idle = "30s""#.into();
        w.dest.behave(|b| b.after_message = after);
        let relay = w.setup.start().await;
        w.send_in_a_row(&relay, 3).await;

        // Each message after the first found its cached session dead and opened another.
        assert_eq!(w.dest.connections.lock().unwrap().len(), 3);
        let log = relay.log_count("delivery attempt", 3).await;
        let lines = delivery_lines(&log);
        assert_eq!(lines.len(), 3, "one attempt per message: {log}");
        assert!(
            lines.iter().all(|l| l.contains("verdict=delivered")),
            "{log}"
        );
        assert!(lines.iter().all(|l| l.contains("reused=false")), "{log}");
    }
}

#[tokio::test]
async fn an_idle_session_is_kept_beside_max_connections() {
    // One delivery at a time: the session to dest.test waits idle while sender.test's
    // mail takes the only slot, and the next message to dest.test rides on it.
    let mut w = World::new().await;
    w.setup.egress = vec![2];
    w.setup.delivery = "reuse_idle = \"30s\"\nmax_connections = 1".into();
    let relay = w.setup.start().await;
    w.send_each(&relay, &["b@dest.test", "b@sender.test", "b@dest.test"])
        .await;

    assert_eq!(w.dest.connections.lock().unwrap().len(), 1);
    assert_eq!(w.dest.quits.load(Ordering::SeqCst), 0);
    let log = relay.log_count("delivery attempt", 3).await;
    let lines = delivery_lines(&log);
    assert!(
        lines[2].contains("rcpt=b@dest.test") && lines[2].contains("reused=true"),
        "{log}"
    );
}

#[tokio::test]
async fn past_reuse_max_idle_the_session_idle_longest_is_closed() {
    let mut w = World::new().await;
    w.setup.egress = vec![2];
    w.setup.delivery = "reuse_idle = \"30s\"\nreuse_max_idle = 1".into();
    let relay = w.setup.start().await;
    w.send_each(&relay, &["b@dest.test", "b@sender.test"]).await;
    // sender.test's session went idle: dest.test's, idle longer, was closed for it.
    quits(&w, 1).await;
    assert_eq!(w.sender.quits.load(Ordering::SeqCst), 0);

    w.send_each(&relay, &["b@dest.test"]).await;
    assert_eq!(w.dest.connections.lock().unwrap().len(), 2);
}
