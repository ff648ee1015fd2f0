//! Mail in, mail out: the happy paths and what must arrive exactly.

use std::net::IpAddr;

use hickory_server::proto::rr::RecordType;

use crate::support::client::ready;
use crate::{World, message};

#[tokio::test]
async fn delivers_end_to_end_with_received_header() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    let reply = c
        .send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message("hello", "Hi there\r\n"),
        )
        .await;
    let queue_id = reply.rsplit(' ').next().unwrap().to_string();
    assert!(reply.contains("queued as"), "{reply}");

    let got = w.dest.wait_for(1).await;
    assert_eq!(
        got[0].mail_from,
        "<a@sender.test> SIZE=".to_string() + &got[0].data.len().to_string()
    );
    assert_eq!(got[0].rcpts, vec!["b@dest.test"]);
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby relay.test (sidestep) with ESMTP id "
        ),
        "{text}"
    );
    assert!(
        text.contains(&queue_id),
        "queue id {queue_id} not in Received: {text}"
    );
    assert!(
        text.ends_with("Subject: hello\r\n\r\nHi there\r\n"),
        "{text}"
    );
    let log = relay.log_with("delivery attempt").await;
    assert!(
        log.contains("delivery attempt") && log.contains(&queue_id) && log.contains("mx.dest.test"),
        "{log}"
    );
    // The accepted line says how long the spool took to make the message durable.
    assert!(
        log.lines()
            .any(|l| l.contains("accepted") && l.contains(&queue_id) && l.contains("spool_us=")),
        "{log}"
    );
}

#[tokio::test]
async fn consecutive_messages_rotate_egress_ips() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 4).await;
    let peers = w.dest.peers();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    let three: IpAddr = "127.0.0.3".parse().unwrap();
    assert!(
        peers == vec![two, three, two, three] || peers == vec![three, two, three, two],
        "{peers:?}"
    );
    let helos: Vec<String> = w.dest.messages().iter().map(|m| m.helo.clone()).collect();
    for (peer, helo) in peers.iter().zip(&helos) {
        let want = if *peer == two {
            "out2.relay.test"
        } else {
            "out3.relay.test"
        };
        assert_eq!(helo, want);
    }
}

#[tokio::test]
async fn pipelined_client_gets_every_reply() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send(
        "MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\nDATA\r\n",
    )
    .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send(format!("{}.\r\nQUIT\r\n", message("piped", "body\r\n")))
        .await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    let got = w.dest.wait_for(1).await;
    // One transaction carries both recipients of the domain.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["b@dest.test", "c@dest.test"]);
}

#[tokio::test]
async fn bdat_chunks_and_eight_bit_body_arrive_byte_identical() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    // Latin-1 and UTF-8 bytes, a line starting with a dot, a lone "." line inside.
    let part1: &[u8] =
        b"From: a@sender.test\r\nSubject: 8bit\r\n\r\ncaf\xc3\xa9 \xe9\xff\r\n.leading dot\r\n";
    let part2: &[u8] = b".\r\nlast line\r\n";
    c.cmd("MAIL FROM:<a@sender.test> BODY=8BITMIME", "250")
        .await;
    c.cmd("RCPT TO:<b@dest.test>", "250").await;
    c.send(format!("BDAT {}\r\n", part1.len())).await;
    c.send(part1).await;
    c.expect("250 2.0.0").await;
    c.send(format!("BDAT {} LAST\r\n", part2.len())).await;
    c.send(part2).await;
    c.expect("250 2.0.0 Ok: queued as").await;

    let got = w.dest.wait_for(1).await;
    let mut want = part1.to_vec();
    want.extend_from_slice(part2);
    let data = &got[0].data;
    assert!(
        data.ends_with(&want),
        "body changed in transit: {:?}",
        String::from_utf8_lossy(data)
    );
    assert!(
        got[0].mail_from.contains("BODY=8BITMIME"),
        "{}",
        got[0].mail_from
    );
}

#[tokio::test]
async fn data_with_dots_and_empty_lines_arrives_byte_identical() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.begin_data("a@sender.test", &["b@dest.test"]).await;
    // Dot-stuffed as the client must: "..x" is "x" with a leading dot.
    c.send("Subject: dots\r\n\r\n..x\r\n\r\n\r\n...\r\n.\r\n")
        .await;
    c.expect("250 2.0.0").await;
    let got = w.dest.wait_for(1).await;
    assert!(
        got[0]
            .data
            .ends_with(b"Subject: dots\r\n\r\n.x\r\n\r\n\r\n..\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got[0].data)
    );
}

#[tokio::test]
async fn recipients_of_several_domains_each_get_their_transaction() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test", "x@sender.test"],
        &message("two", "x\r\n"),
    )
    .await;
    assert_eq!(w.dest.wait_for(1).await[0].rcpts, vec!["b@dest.test"]);
    assert_eq!(w.sender.wait_for(1).await[0].rcpts, vec!["x@sender.test"]);
}

#[tokio::test]
async fn quoted_local_part_is_requoted_on_the_way_out() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["\"john doe\"@dest.test"],
        &message("q", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["\"john doe\"@dest.test"]);
}

#[tokio::test]
async fn domain_without_mx_falls_back_to_its_address() {
    let w = World::new().await;
    w.setup.dns.add_a("nomx.test", w.dest.addr.ip()).await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@nomx.test"], &message("a", "x\r\n"))
        .await;
    assert_eq!(w.dest.wait_for(1).await[0].rcpts, vec!["b@nomx.test"]);
}

#[tokio::test]
async fn mx_preference_order_and_fallback_to_backup() {
    let w = World::new().await;
    // Primary MX points to an address where nothing listens; the backup is the sink.
    w.setup.dns.add_mx("pref.test", 5, "down.pref.test").await;
    w.setup
        .dns
        .add_a("down.pref.test", "127.0.0.254".parse().unwrap())
        .await;
    w.setup
        .dns
        .add_mx("pref.test", 20, "backup.pref.test")
        .await;
    w.setup
        .dns
        .add_a("backup.pref.test", w.dest.addr.ip())
        .await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@pref.test"], &message("a", "x\r\n"))
        .await;
    assert_eq!(w.dest.wait_for(1).await[0].rcpts, vec!["b@pref.test"]);
}

/// A world whose route to dest.test requires a verified certificate (`tls =
/// "verify"`), with one message sent. The sink offers STARTTLS with a certificate for
/// mx.dest.test (or, without `offer_tls`, no STARTTLS); the relay trusts the CA that
/// signed it, or (without `trust_own`) another one.
async fn verify_route(trust_own: bool, offer_tls: bool) -> (World, crate::support::relay::Relay) {
    let mut w = World::new().await;
    let (acceptor, own_ca) = crate::support::sink::tls_with_ca("mx.dest.test");
    let ca = if trust_own {
        own_ca
    } else {
        crate::support::sink::tls_with_ca("mx.dest.test").1
    };
    if offer_tls {
        w.dest.behave(|b| b.tls = Some(acceptor));
    }
    let ca_file = w.setup.dir.path().join("mx-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.setup.delivery = format!("tls_ca_file = \"{}\"", ca_file.display());
    w.setup.extra = "\n[[routes]]\ndomains = [\"dest.test\"]\ntls = \"verify\"\n".into();
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("verified", "x\r\n"),
    )
    .await;
    (w, relay)
}

#[tokio::test]
async fn a_verify_route_delivers_over_tls_with_a_trusted_certificate() {
    let (w, _relay) = verify_route(true, true).await;
    let got = w.dest.wait_for(1).await;
    assert!(got[0].tls, "not over TLS");
}

#[tokio::test]
async fn a_verify_route_never_falls_back_to_plain_text() {
    let (w, relay) = verify_route(false, true).await;
    relay
        .log_with("the route requires a verified certificate")
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert!(w.dest.messages().is_empty(), "nothing went in the clear");

    let (w, relay) = verify_route(true, false).await;
    relay
        .log_with("does not offer STARTTLS, which the route requires")
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert!(w.dest.messages().is_empty());
}

#[tokio::test]
async fn starttls_is_used_when_the_mx_offers_it() {
    let w = World::new().await;
    w.dest
        .behave(|b| b.tls = Some(crate::support::sink::tls_acceptor("mx.dest.test")));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("secret", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(1).await;
    assert!(got[0].tls, "message was not sent over TLS");
    let octet = got[0]
        .peer
        .to_string()
        .rsplit('.')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(got[0].helo, format!("out{octet}.relay.test"));
}

#[tokio::test]
async fn per_domain_connection_limit_holds() {
    let mut w = World::new().await;
    w.setup.delivery = "max_connections_per_domain = 2".into();
    w.dest
        .behave(|b| b.data_delay = Some(std::time::Duration::from_millis(150)));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    for i in 0..8 {
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("m{i}"), "x\r\n"),
        )
        .await;
    }
    w.dest.wait_for(8).await;
    let max = w.dest.max_open.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&max),
        "{max} connections at once to one domain"
    );
}

#[tokio::test]
async fn a_moved_mx_is_followed_once_its_ttl_runs_out() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 1).await;
    // dest.test moves to the other sink; the test zone's TTL is one second.
    w.setup.dns.remove("mx.dest.test", RecordType::A).await;
    w.setup.dns.add_a("mx.dest.test", w.sender.addr.ip()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("after the move", "x\r\n"),
    )
    .await;
    let got = w.sender.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: after the move"));
    assert_eq!(w.dest.messages().len(), 1);
}

/// `[log] format = "json"`: one JSON object per line, the attempt's fields as fields.
#[tokio::test]
async fn json_logs_carry_the_attempt_fields() {
    let mut w = crate::World::new().await;
    w.setup.extra = "\n[log]\nformat = \"json\"\n".into();
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 1).await;
    let log = relay.log_with("delivery attempt").await;
    let line = log
        .lines()
        .find(|l| l.contains("delivery attempt"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["fields"]["verdict"], "delivered", "{v}");
    assert_eq!(v["fields"]["rcpt"], "b@dest.test", "{v}");
    assert_eq!(v["level"], "INFO");
}

/// A slow destination's backlog waits for its own connection slots, not in front of
/// other destinations' mail: a message to a healthy domain sent after ten slow ones is
/// delivered while the slow domain has taken only its first few.
#[tokio::test]
async fn a_slow_domains_backlog_does_not_hold_up_other_domains() {
    let mut w = World::new().await;
    w.setup.delivery = "max_connections = 4\nmax_connections_per_domain = 1".into();
    w.dest
        .behave(|b| b.data_delay = Some(std::time::Duration::from_millis(300)));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    for i in 0..10 {
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("slow{i}"), "x\r\n"),
        )
        .await;
    }
    c.send_mail(
        "a@sender.test",
        &["c@sender.test"],
        &message("quick", "x\r\n"),
    )
    .await;
    w.sender.wait_for(1).await;
    let slow_done = w.dest.messages().len();
    assert!(
        slow_done <= 4,
        "the quick message waited for {slow_done} of the slow domain's messages"
    );
    w.dest.wait_for(10).await;
}
