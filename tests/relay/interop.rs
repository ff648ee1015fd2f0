//! Interop with real peers no one here wrote: swaks as a client, and a private Postfix
//! instance using sidestep as its relayhost. `.ci/run` installs both (Debian packages).

use crate::World;
use crate::support::postfix::Postfix;

#[tokio::test]
async fn swaks_submits_with_pipelining() {
    crate::support::require("swaks");
    let w = World::new().await;
    let relay = w.setup.start().await;
    let out = tokio::process::Command::new("swaks")
        .args(["--server", &relay.addr.to_string()])
        .args(["--from", "a@sender.test", "--to", "b@dest.test,c@dest.test"])
        .args(["--helo", "swaks.test", "--pipeline"])
        .args(["--header", "Subject: from swaks"])
        .args(["--body", "sent by swaks"])
        .output()
        .await
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["b@dest.test", "c@dest.test"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Subject: from swaks") && text.contains("sent by swaks"),
        "{text}"
    );
}

#[tokio::test]
async fn postfix_relays_through_sidestep() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let postfix = Postfix::start(
        "127.0.0.1:0".parse().unwrap(),
        &format!("relayhost = [{}]:{}", relay.addr.ip(), relay.addr.port()),
    )
    .await;
    let mut c = crate::support::client::ready(postfix.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        "From: a@sender.test\r\nTo: b@dest.test\r\nSubject: via postfix\r\n\r\nhello from postfix\r\n",
    )
    .await;
    c.cmd("QUIT", "221").await;
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["b@dest.test"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("Subject: via postfix"), "{text}");
    // Both hops are on record: Postfix's Received line under ours.
    assert!(text.starts_with("Received: from pf.test"), "{text}");
    assert!(text.contains("by pf.test (Postfix)"), "{text}");
}
