//! The suppression list: an in-session hard failure suppresses the address for its
//! sender domain, RCPT of it is refused with the reason, and the operator lists, adds,
//! removes, exports and imports entries through the CLI and the admin API.

use crate::bounces::cli;
use crate::support::client::ready;
use crate::support::http_request;
use crate::{World, message};

#[tokio::test]
async fn an_in_session_hard_failure_is_suppressed_and_the_operator_manages_the_list() {
    let mut w = World::new().await;
    w.setup.extra.push_str("\n[suppression]\nenabled = true\n");
    w.dest.behave(|b| {
        b.rcpt.insert(
            "gone@dest.test".into(),
            "550 5.1.1 <gone@dest.test>: Recipient address rejected: User unknown in virtual mailbox table".into(),
        );
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["gone@dest.test"],
        &message("one", "x\r\n"),
    )
    .await;
    c.cmd("QUIT", "221").await;
    relay.log_with("address suppressed").await;
    w.sender.wait_for(1).await;

    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    let refused = c.reply_to("RCPT TO:<gone@dest.test>").await;
    assert!(
        refused.starts_with("550 5.1.1 <gone@dest.test> suppressed: hard bounce at ")
            && refused.contains(
                "from mx.dest.test: \"550 5.1.1 <gone@dest.test>: Recipient address rejected"
            ),
        "{refused}"
    );
    c.cmd("QUIT", "221").await;

    // The API lists it; POST adds one for everyone; DELETE lifts it.
    let admin = relay.admin.unwrap();
    let listed = http_request(admin, "GET", "/api/v1/suppressions").await;
    assert!(
        listed.contains("\"address\":\"gone@dest.test\""),
        "{listed}"
    );
    assert!(listed.contains("\"scope\":\"sender.test\""), "{listed}");
    let added = http_request(
        admin,
        "POST",
        "/api/v1/suppressions?address=Manual@Dest.test",
    )
    .await;
    assert!(added.contains("\"scope\":\"*\""), "{added}");
    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<x@other.test>", "250").await;
    c.cmd("RCPT TO:<manual@dest.test>", "550 5.1.1").await;
    c.cmd("QUIT", "221").await;

    // Export, remove everything, import again.
    let csv = cli(&w, &["suppressions", "export"]).await;
    assert!(
        csv.starts_with("address,scope,reason,at,expires,site,reply\n"),
        "{csv}"
    );
    assert!(csv.contains("gone@dest.test,sender.test,hard,"), "{csv}");
    assert!(csv.contains("manual@dest.test,*,manual,"), "{csv}");
    let removed = http_request(
        admin,
        "DELETE",
        "/api/v1/suppressions?address=manual@dest.test",
    )
    .await;
    assert!(removed.contains("\"removed\":1"), "{removed}");
    cli(&w, &["suppressions", "remove", "gone@dest.test"]).await;
    assert_eq!(
        cli(&w, &["suppressions"]).await.trim(),
        "no address suppressed"
    );
    let file = w.setup.dir.path().join("list.csv");
    std::fs::write(&file, csv).unwrap();
    let imported = cli(&w, &["suppressions", "import", file.to_str().unwrap()]).await;
    assert!(imported.contains("2 address(es) suppressed"), "{imported}");
    let list = cli(&w, &["suppressions", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<gone@dest.test>", "550 5.1.1").await;
    c.cmd("QUIT", "221").await;
    // Durable: after a restart the list holds.
    relay.kill().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<y@other.test>", "250").await;
    c.cmd("RCPT TO:<manual@dest.test>", "550 5.1.1").await;
    c.cmd("QUIT", "221").await;
}
