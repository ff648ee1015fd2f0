//! The status page: a relay with a listed IP and a learned block shows both, with the
//! evidence, over plain HTTP and in a real (headless) browser.

use std::net::IpAddr;

use crate::{World, message};

/// A relay whose 127.0.0.3 is listed on `page.test` and whose 127.0.0.2 the destination
/// refuses, Cloudmark style; returns it once both are known.
async fn relay_with_trouble() -> (World, crate::support::relay::Relay) {
    let mut w = World::new().await;
    w.setup.dns.healthy_list("page.test").await;
    let listed: IpAddr = "127.0.0.3".parse().unwrap();
    w.setup
        .dns
        .list("page.test", listed, "127.0.0.2", Some("listed for a test"))
        .await;
    w.setup.extra = "\n[listings]\nrefresh = \"1s\"\njitter = \"0s\"\n\n[[blocklists]]\nzone = \"page.test\"\nname = \"Page list\"\nseverity = \"soft\"\nremoval_url = \"https://page.test/remove\"\n[blocklists.codes]\n\"127.0.0.2\" = \"spam source\"\n".into();
    let refusal = "550 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using CSI; https://csi.cloudmark.com/reset-request/?ip=127.0.0.2";
    w.dest.behave(|b| {
        b.refuse_from
            .insert("127.0.0.2".parse().unwrap(), refusal.into());
    });
    let relay = w.setup.start().await;
    relay.log_with("egress IP listed").await;
    w.send_in_a_row(&relay, 2).await;
    relay.log_with("egress IP blocked by destination").await;
    (w, relay)
}

async fn get_page(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_page_shows_listings_blocks_queue_and_refusals() {
    let (_w, relay) = relay_with_trouble().await;
    let page = get_page(relay.admin.unwrap()).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html"), "{page}");
    assert!(page.contains("LISTED on page.test"), "{page}");
    assert!(page.contains("listed for a test"), "{page}");
    assert!(page.contains("blocked for mx.dest.test"), "{page}");
    assert!(
        page.contains("csi.cloudmark.com/reset-request/?ip=127.0.0.2"),
        "{page}"
    );
    assert!(page.contains("id=\"refusals\""), "{page}");
    assert!(
        page.contains("Client host [127.0.0.2] blocked using CSI"),
        "{page}"
    );
    assert!(page.contains("<svg"), "{page}");
    assert!(!page.contains("src=\"http"), "no external assets");
    // Neither IP has a PTR here: that gets mail refused, so it is a problem, not green.
    let rdns: Vec<&str> = page.split("rdns\">").skip(1).collect();
    assert_eq!(rdns.len(), 2, "{page}");
    assert!(!page.contains("class=\"ok rdns\""), "{page}");
    assert!(
        page.contains("<div class=\"bad rdns\">rDNS: no PTR record"),
        "{page}"
    );
}

/// Debian's chromium, headless, renders the page; the DOM has the block and the listing.
#[tokio::test]
async fn a_headless_browser_renders_the_page() {
    crate::support::require("chromium");
    let (w, relay) = relay_with_trouble().await;
    let profile = w.setup.dir.path().join("chromium-profile");
    let url = format!("http://{}/", relay.admin.unwrap());
    // A fresh browser profile and one load of the page; retried while the browser starts.
    let mut dom = String::new();
    for _ in 0..5 {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .output()
            .unwrap();
        dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.contains("</html>") {
            break;
        }
    }
    assert!(dom.contains("LISTED on page.test"), "{dom}");
    assert!(dom.contains("blocked for mx.dest.test"), "{dom}");
    assert!(dom.contains("sidestep on relay.test"), "{dom}");
    // The chart says what its lines are and how many they stand for.
    for part in [
        "per minute</text>",
        "delivered (",
        "deferred (",
        "bounced (",
    ] {
        assert!(dom.contains(part), "{part}: {dom}");
    }
}

/// Mail leaving from the host's default source address (an egress without `ip`, as on
/// the embedded defaults): the egress table shows that address, and the last hour
/// counts the bounce and the deferral with a chart that has axes, a scale and a legend.
#[tokio::test]
async fn the_default_source_address_and_bounces_and_deferrals_are_shown() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.setup.egress = vec![];
    w.setup.extra = "[[pools.egress]]\nhelo = \"relay.test\"\n".into();
    w.setup.dns.add_null_mx("nomail.test").await;
    w.dest
        .behave(|b| b.data_always = Some("451 4.3.0 try again later".into()));
    let relay = w.setup.start().await;
    let mut c = crate::support::client::ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("later", "x\r\n"),
    )
    .await;
    c.send_mail(
        "a@sender.test",
        &["y@nomail.test"],
        &message("never", "x\r\n"),
    )
    .await;
    // The bounce's DSN is delivered to the sender's server.
    w.sender.wait_for(1).await;
    relay.log_with("status=deferred").await;
    crate::support::eventually(
        || relay.log().matches("status=sent").count() == 1,
        || relay.log(),
    )
    .await;
    let page = get_page(relay.admin.unwrap()).await;
    assert!(
        page.contains("<tr class=\"default-source\"><td>default source address (the host picks it"),
        "{page}"
    );
    assert!(
        page.contains(
            "recipients: 1 delivered, 1 deferred, 1 bounced (1 of them refused by a server)"
        ),
        "{page}"
    );
    for part in [
        "class=\"axes\"",
        "per minute</text>",
        ">60 min ago<",
        "delivered (1)",
        "deferred (1)",
        "bounced (1)",
    ] {
        assert!(page.contains(part), "{part}: {page}");
    }
}
