//! CHUNKING (RFC 3030) on the outbound side: a destination that offers it and
//! PIPELINING gets MAIL, RCPT…, `BDAT <size> LAST` and the body in one write; what it
//! answers is read and acted on as the replies to a DATA transaction are.

use crate::support::client::ready;
use crate::{World, message};

#[tokio::test]
async fn a_destination_offering_chunking_gets_the_body_as_spooled_in_bdat() {
    let w = World::new().await;
    w.dest.behave(|b| b.chunking = true);
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    // Dot-stuffed by the client as DATA requires; dot-led lines then travel as they are
    // in a chunk, with no stuffing for the far end to undo.
    c.send_mail(
        "a@sender.test",
        &["b@dest.test", "c@dest.test"],
        &message("chunked", "..leading dot\r\n..\r\n\r\n....\r\nend\r\n"),
    )
    .await;
    let got = &w.dest.wait_for(1).await[0];
    assert!(got.chunked, "the message came after DATA");
    assert_eq!(got.rcpts, vec!["b@dest.test", "c@dest.test"]);
    assert!(
        got.data
            .ends_with(b"Subject: chunked\r\n\r\n.leading dot\r\n.\r\n\r\n...\r\nend\r\n"),
        "{}",
        String::from_utf8_lossy(&got.data)
    );
    let log = relay.log_with("verdict=delivered").await;
    assert_eq!(log.matches("status=sent").count(), 2, "{log}");
}

#[tokio::test]
async fn with_chunking_off_the_message_goes_after_data() {
    let mut w = World::new().await;
    w.setup.delivery = "chunking = false".into();
    w.dest.behave(|b| b.chunking = true);
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@dest.test"], &message("data", "x\r\n"))
        .await;
    let got = &w.dest.wait_for(1).await[0];
    assert!(!got.chunked, "chunking = false still sent BDAT");
}

#[tokio::test]
async fn a_body_over_a_mebibyte_goes_after_data_even_where_chunking_is_offered() {
    let w = World::new().await;
    w.dest.behave(|b| b.chunking = true);
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n";
    let body = line.repeat(1024 * 1024 / line.len() + 1);
    c.send_mail("a@sender.test", &["b@dest.test"], &message("big", &body))
        .await;
    let got = &w.dest.wait_for(1).await[0];
    assert!(!got.chunked, "a body over 1 MiB went as one chunk");
    assert!(got.data.ends_with(body.as_bytes()));
}

#[tokio::test]
async fn refused_recipients_bounce_with_their_reply_and_the_others_are_delivered() {
    let w = crate::retry::permanent_failure_bounces(|b| b.chunking = true).await;
    assert!(w.dest.messages()[0].chunked);
}

#[tokio::test]
async fn a_refused_chunk_is_the_accepted_recipients_reply_and_a_temporary_one_is_retried() {
    let w = World::new().await;
    w.dest.behave(|b| {
        b.chunking = true;
        b.data.push_back("451 4.7.1 try again later".into());
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("later", "x\r\n"),
    )
    .await;
    let got = &w.dest.wait_for(1).await[0];
    assert!(got.chunked);
    let log = relay.log_with("verdict=delivered").await;
    assert!(log.contains("451 4.7.1 try again later"), "{log}");
    assert_eq!(log.matches("status=deferred").count(), 1, "{log}");
    assert!(
        w.sender.messages().is_empty(),
        "a DSN for a delivered message"
    );
}

#[tokio::test]
async fn a_server_hanging_up_instead_of_reading_a_refused_chunk_still_gives_its_reason() {
    let w = World::new().await;
    // RFC 3030 §2 says the chunk must be read whatever the envelope's fate; this server
    // closes instead. The DSN still quotes its refusal of the recipient.
    w.dest.behave(|b| {
        b.chunking = true;
        b.hang_up_on_refused_chunk = true;
        b.rcpt.insert(
            "nobody@dest.test".into(),
            "550 5.1.1 <nobody@dest.test>: User unknown".into(),
        );
    });
    let relay = w.setup.start().await;
    bounced_after_a_hang_up(&w, &relay).await;
    // The hang-up took the refusal with it (and its reset, the replies before it); the
    // server then gets DATA, which it answers properly.
    let log = relay.log_with("verdict=recipient").await;
    assert!(log.contains("this server gets DATA from now on"), "{log}");
    assert_eq!(log.matches("verdict=recipient").count(), 1, "{log}");
    assert!(!w.dest.messages().iter().any(|m| m.chunked));
}

#[tokio::test]
async fn a_session_that_took_a_chunk_carries_the_next_message() {
    let mut w = World::new().await;
    w.setup.delivery = r#"reuse_idle = "30s""#.into();
    w.dest.behave(|b| b.chunking = true);
    let relay = w.setup.start().await;
    // Two egress IPs in rotation: one session each, each used twice.
    w.send_in_a_row(&relay, 4).await;
    let got = w.dest.messages();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|m| m.chunked), "{got:?}");
    let connections = w.dest.connections.lock().unwrap().clone();
    assert_eq!(connections.len(), 2, "{connections:?}");
    let log = relay.log_count("delivery attempt", 4).await;
    assert_eq!(log.matches("reused=true").count(), 2, "{log}");
}

#[tokio::test]
async fn a_chunk_refused_from_one_ip_is_asked_again_from_the_other_and_the_ip_blocked() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    // A receiver that refuses an IP once it has seen the message (Cloudmark-style), here
    // in its reply to the last chunk.
    let refusal = "554 5.7.1 Transaction refused by local policy, ref 8a2f";
    let refused_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    w.dest.behave(|b| {
        b.chunking = true;
        b.data_from.insert(refused_ip, refusal.to_string());
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("elsewhere", "x\r\n"),
    )
    .await;
    let got = &w.dest.wait_for(1).await[0];
    assert!(got.chunked);
    assert_eq!(got.peer.to_string(), "127.0.0.3");
    relay
        .log_with("second opinion: accepted from another address")
        .await;
    assert!(w.sender.messages().is_empty(), "nothing bounces");
    let blocks = w.setup.cli_json(&["blocks"]);
    let blocks = blocks.as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0]["ip"], "127.0.0.2");
    assert_eq!(blocks[0]["evidence"]["reply"], refusal);
}

#[tokio::test]
async fn a_smarthost_hanging_up_on_a_refused_chunk_gets_data_next_time() {
    let mut w = World::new().await;
    // The only egress IP refused at the greeting: mail goes to the fallback smarthost.
    w.setup.egress = vec![2];
    w.dest.behave(|b| {
        b.refuse_from.insert(
            "127.0.0.2".parse().unwrap(),
            "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org"
                .into(),
        );
    });
    let (smarthost, ca) = crate::blocks::smarthost(&w, "smarthost.test", false, "pw").await;
    smarthost.behave(|b| {
        b.chunking = true;
        b.hang_up_on_refused_chunk = true;
        b.rcpt.insert(
            "nobody@dest.test".into(),
            "550 5.1.1 <nobody@dest.test>: User unknown".into(),
        );
    });
    w.setup.delivery = "fallback = \"clean\"".into();
    w.setup.extra = crate::blocks::clean_smarthost_config(&smarthost, &ca);
    let relay = w.setup.start().await;
    bounced_after_a_hang_up(&w, &relay).await;
    let log = relay.log_with("verdict=recipient").await;
    assert!(
        log.contains("this smarthost gets DATA from now on"),
        "{log}"
    );
}

/// Sends `nobody@dest.test` a body larger than the socket buffers (so the write fails
/// on a connection closed under it) and waits for the DSN quoting the refusal.
async fn bounced_after_a_hang_up(w: &World, relay: &crate::support::relay::Relay) {
    let mut c = ready(relay.addr).await;
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n";
    c.send_mail(
        "a@sender.test",
        &["nobody@dest.test"],
        &message("nobody", &line.repeat(12 * 1024)),
    )
    .await;
    let text = crate::support::dsn_text(&w.sender.wait_for(1).await[0]);
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 <nobody@dest.test>: User unknown"),
        "{text}"
    );
}
