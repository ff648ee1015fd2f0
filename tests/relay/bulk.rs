//! Bulk mail and one-click unsubscribe (RFC 8058, the 2024 Gmail/Yahoo rules):
//! `[compliance] one_click` warns (log and a metric per sender) or refuses at the end of
//! DATA, through the real binary.

use crate::World;
use crate::support::client::ready;

/// A message with `fields` between From and Subject.
fn with_fields(subject: &str, fields: &str) -> String {
    format!(
        "From: news@sender.test\r\nTo: b@dest.test\r\n{fields}Subject: {subject}\r\n\r\nHello\r\n"
    )
}

const POST: &str = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
const HTTPS: &str = "List-Unsubscribe: <mailto:u@sender.test>, <https://sender.test/u?1>\r\n";
const MAILTO: &str = "List-Unsubscribe: <mailto:u@sender.test>\r\n";

#[tokio::test]
async fn bulk_mail_without_one_click_is_delivered_and_counted_per_sender() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &with_fields("no-post", HTTPS),
    )
    .await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &with_fields("compliant", &format!("{HTTPS}{POST}")),
    )
    .await;
    let got = w.dest.wait_for(2).await;
    assert_eq!(got.len(), 2);
    relay
        .log_with("bulk mail without one-click unsubscribe")
        .await;
    let metrics = crate::support::http_get(relay.admin.unwrap(), "/metrics").await;
    assert!(
        metrics
            .contains("sidestep_bulk_without_one_click_total{sender=\"domain:sender.test\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_refuse_bulk_mail_without_one_click_gets_550_and_is_not_spooled() {
    let mut w = World::new().await;
    w.setup.extra = "\n[compliance]\none_click = \"refuse\"\n".into();
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    for (subject, fields, missing) in [
        (
            "no-post",
            HTTPS,
            "missing List-Unsubscribe-Post: List-Unsubscribe=One-Click header",
        ),
        (
            "mailto-only",
            &format!("{MAILTO}{POST}") as &str,
            "missing https URI in List-Unsubscribe",
        ),
        (
            "precedence",
            "Precedence: bulk\r\n",
            "missing List-Unsubscribe-Post",
        ),
        (
            "list-id",
            "List-Id: <news.sender.test>\r\n",
            "missing List-Unsubscribe-Post",
        ),
    ] {
        c.begin_data("a@sender.test", &["b@dest.test"]).await;
        c.send(with_fields(subject, fields)).await;
        c.send(".\r\n").await;
        let reply = c.expect("550 5.7.1").await;
        assert!(reply.contains(missing), "{subject}: {reply}");
    }
    // The session goes on; compliant bulk mail and ordinary mail pass.
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &with_fields("compliant", &format!("{HTTPS}{POST}")),
    )
    .await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &with_fields("ordinary", ""),
    )
    .await;
    let got = w.dest.wait_for(2).await;
    relay.log_count("every recipient is final", 2).await;
    let mut subjects: Vec<String> = w
        .dest
        .messages()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            text.split("Subject: ")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got.len(), 2);
    subjects.sort();
    assert_eq!(
        subjects,
        ["compliant", "ordinary"],
        "nothing refused reached the sink"
    );
}
