//! Alerts reach the operator's webhook: a block learned from a destination, with its
//! evidence, and an operator's suspension; repeats of one event are not sent again.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::World;
use crate::support::eventually;

/// A webhook receiver on loopback: every JSON body it got.
pub async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    receiver(crate::support::fresh_loopback(), None).await
}

/// The receiver, over TLS when given an acceptor (its URL is then `https://`).
async fn receiver(
    ip: std::net::IpAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (store, tls) = (store.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            answer(stream, store).await;
                        }
                    }
                    None => answer(stream, store).await,
                }
            });
        }
    });
    (url, got)
}

/// Reads one POST, keeps its JSON body, answers 204.
async fn answer(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    store: Arc<Mutex<Vec<serde_json::Value>>>,
) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).await.unwrap();
    store
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    let _ = w
        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .await;
    let _ = w.shutdown().await;
}

/// A relay whose webhook is an https receiver with a certificate from a private CA;
/// the relay trusts that CA, or (`trusted` false) another one. An operator's suspension
/// is the alert sent.
async fn suspension_over_https(
    trusted: bool,
) -> (
    World,
    crate::support::relay::Relay,
    Arc<Mutex<Vec<serde_json::Value>>>,
) {
    let mut w = World::new().await;
    let ip = crate::support::fresh_loopback();
    let (acceptor, own_ca) = crate::support::sink::tls_with_ca(&ip.to_string());
    let (url, got) = receiver(ip, Some(acceptor)).await;
    let ca = if trusted {
        own_ca
    } else {
        crate::support::sink::tls_with_ca(&ip.to_string()).1
    };
    let ca_file = w.setup.dir.path().join("hook-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    w.setup.extra = format!(
        "\n[alerts]\nwebhook = \"{url}\"\nca_file = \"{}\"\nspool_free_below = 0\n",
        ca_file.display()
    );
    let relay = w.setup.start().await;
    w.setup.cli(&[
        "suspend",
        "127.0.0.3",
        "--for",
        "1h",
        "--reason",
        "over https",
    ]);
    (w, relay, got)
}

#[tokio::test]
async fn an_https_webhook_with_a_private_ca_gets_the_alert() {
    let (_w, relay, got) = suspension_over_https(true).await;
    eventually(|| !got.lock().unwrap().is_empty(), || relay.log()).await;
    let alert = got.lock().unwrap()[0].clone();
    assert_eq!(alert["event"], "suspended", "{alert}");
    assert!(alert["text"].as_str().unwrap().contains("over https"));
}

#[tokio::test]
async fn an_https_webhook_whose_certificate_is_not_trusted_gets_nothing() {
    let (_w, relay, got) = suspension_over_https(false).await;
    relay.log_with("alert webhook failed").await;
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_learned_block_and_a_suspension_reach_the_webhook_once() {
    let mut w = World::new().await;
    let (url, got) = webhook().await;
    // No spool-space warning among the events, however full this machine's disk.
    w.setup.extra = format!("\n[alerts]\nwebhook = \"{url}\"\nspool_free_below = 0\n");
    let refusal = "550 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using CSI; https://csi.cloudmark.com/reset-request/?ip=127.0.0.2";
    w.dest.behave(|b| {
        b.refuse_from
            .insert("127.0.0.2".parse().unwrap(), refusal.into());
    });
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 3).await;
    eventually(|| !got.lock().unwrap().is_empty(), || relay.log()).await;
    let blocked = got.lock().unwrap()[0].clone();
    assert_eq!(blocked["event"], "blocked", "{blocked}");
    assert_eq!(blocked["ip"], "127.0.0.2");
    assert_eq!(blocked["subject"], "mx.dest.test");
    let text = blocked["text"].as_str().unwrap();
    assert!(
        text.contains(refusal) && text.contains("csi.cloudmark.com/reset-request"),
        "{text}"
    );
    assert_eq!(blocked["host"], "relay.test");
    // The delisting report, ready for the form: the exact reply, the timestamped log
    // line, the removal link.
    let report = blocked["report"].as_str().unwrap();
    assert!(
        report.contains("127.0.0.2 refused by site mx.dest.test"),
        "{report}"
    );
    assert!(report.contains(&format!("reply:   {refusal}")), "{report}");
    assert!(
        report.contains("removal: https://csi.cloudmark.com/reset-request/?ip=127.0.0.2"),
        "{report}"
    );
    assert!(report.contains("log:     20"), "{report}");
    assert!(report.contains("verdict=ip-reputation"), "{report}");

    w.setup.cli(&[
        "suspend",
        "127.0.0.3",
        "--for",
        "1h",
        "--reason",
        "testing alerts",
    ]);
    eventually(|| got.lock().unwrap().len() >= 2, || relay.log()).await;
    let suspended = got.lock().unwrap()[1].clone();
    assert_eq!(suspended["event"], "suspended", "{suspended}");
    assert!(
        suspended["text"]
            .as_str()
            .unwrap()
            .contains("testing alerts")
    );
    // The same suspension again within the hour: no second alert.
    w.setup.cli(&[
        "suspend",
        "127.0.0.3",
        "--for",
        "1h",
        "--reason",
        "testing alerts",
    ]);
    relay.log_count("suspended by the operator", 2).await;
    let events: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == "suspended").count(),
        1,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_site_with_no_egress_ip_left_is_announced() {
    let mut w = World::new().await;
    let (url, got) = webhook().await;
    // No spool-space warning among the events, however full this machine's disk.
    w.setup.extra = format!("\n[alerts]\nwebhook = \"{url}\"\nspool_free_below = 0\n");
    w.dest.behave(|b| {
        for ip in ["127.0.0.2", "127.0.0.3"] {
            b.refuse_from.insert(
                ip.parse().unwrap(),
                format!("554 5.7.1 Service unavailable; Client host [{ip}] blocked using CSI"),
            );
        }
    });
    let relay = w.setup.start().await;
    let mut c = crate::support::client::ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &crate::message("stuck", "x\r\n"),
    )
    .await;
    eventually(
        || {
            got.lock()
                .unwrap()
                .iter()
                .any(|v| v["event"] == "no-egress")
        },
        || format!("{:?}\n{}", got.lock().unwrap(), relay.log()),
    )
    .await;
    let events = got.lock().unwrap().clone();
    let no_egress = events.iter().find(|v| v["event"] == "no-egress").unwrap();
    assert_eq!(no_egress["subject"], "mx.dest.test");
    assert!(
        no_egress["text"]
            .as_str()
            .unwrap()
            .contains("its mail waits")
    );
    assert_eq!(
        events.iter().filter(|v| v["event"] == "blocked").count(),
        2,
        "{events:?}"
    );
}

/// `[alerts] mail`: the alert goes out as a mail through the relay's own queue, from
/// postmaster with a null envelope sender; a spool below its free-space mark is announced.
#[tokio::test]
async fn alerts_go_out_by_mail_and_a_low_spool_is_announced() {
    let mut w = World::new().await;
    // Every file system is below 100% free: the warning fires at start.
    w.setup.extra = "\n[alerts]\nmail = \"ops@sender.test\"\nspool_free_below = 100\n".into();
    let relay = w.setup.start().await;
    relay.log_with("spool nearly full").await;
    let got = w.sender.wait_for(1).await;
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert_eq!(got[0].rcpts, vec!["ops@sender.test"]);
    assert!(got[0].mail_from.starts_with("<>"), "a null envelope sender");
    assert!(
        text.contains("From: sidestep <postmaster@relay.test>"),
        "{text}"
    );
    assert!(
        text.contains("Subject: [sidestep relay.test] spool-nearly-full"),
        "{text}"
    );
    assert!(text.contains("free"), "{text}");
}
