//! Destinations' TLS policies over real sockets: an MTA-STS policy served over HTTPS by
//! the test (certificate from a test CA the relay trusts through `[delivery]
//! tls_ca_file`), SMTP sinks with certificates from the same CA, and the TLS report
//! mailed to the domain's `rua` and read back.

use std::io::Read;

use mail_parser::MimeHeaders;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use crate::support::client::ready;
use crate::support::relay::Relay;
use crate::{World, message};

/// A CA for the test: certificates it signs are trusted by the relay.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A server config with a certificate for `name`.
    fn server(&self, name: &str) -> rustls::ServerConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), self.issuer.der().clone()], private)
        .unwrap()
    }

    fn acceptor(&self, name: &str) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.server(name)))
    }
}

/// An HTTPS server for `mta-sts.dest.test` answering every request with the policy
/// (a `500` while it is empty).
async fn policy_server(ca: &TestCa, policy: Arc<Mutex<String>>) -> std::net::SocketAddr {
    https_server(ca, "mta-sts.dest.test", move |head, _| {
        let body = policy.lock().unwrap().clone();
        if body.is_empty() {
            // Broken: what a failing web server answers.
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_string()
        } else if head.starts_with("GET /.well-known/mta-sts.txt ") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
        }
    })
    .await
}

/// An HTTPS server on a loopback address of its own with a certificate for `name` from
/// the test CA: each request (its head, and its body of `Content-Length` bytes) gets
/// what `answer` says, then the connection is closed.
async fn https_server(
    ca: &TestCa,
    name: &str,
    answer: impl Fn(&str, &[u8]) -> String + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind((crate::support::fresh_loopback(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = ca.acceptor(name);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                let end = loop {
                    if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while got.len() < end + length {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = answer(&head, &got[end..end + length]);
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut p = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        p.push_str(&format!("mx: {m}\r\n"));
    }
    p + "max_age: 86400\r\n"
}

/// The usual world, dest.test publishing an MTA-STS policy (`mode`, `mx`) and a TLS-RPT
/// address at sender.test; the relay trusts the test CA.
async fn sts_world(mode: &str, mx: &[&str]) -> (World, TestCa) {
    let (w, ca, _) = sts_world_served(mode, mx).await;
    (w, ca)
}

/// [`sts_world`], and the policy text the HTTPS server serves (empty: it fails), to
/// change while the relay runs.
async fn sts_world_served(mode: &str, mx: &[&str]) -> (World, TestCa, Arc<Mutex<String>>) {
    let mut w = World::new().await;
    let ca = TestCa::new();
    let served = Arc::new(Mutex::new(policy(mode, mx)));
    let https = policy_server(&ca, served.clone()).await;
    w.setup.dns.add_a("mta-sts.dest.test", https.ip()).await;
    announce(&w, "20261201T000000").await;
    w.setup
        .dns
        .add_txt(
            "_smtp._tls.dest.test",
            "v=TLSRPTv1; rua=mailto:tlsrpt@sender.test",
        )
        .await;
    let ca_file = w.setup.dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca.issuer.pem()).unwrap();
    w.setup.queue = crate::NO_RETRY_SOON.into();
    // One message per session: each one is a session of its own in the report.
    w.setup.delivery = format!(
        "tls_ca_file = \"{}\"\nreuse_messages = 1",
        ca_file.display()
    );
    w.setup.extra = format!(
        "\n[tls_policy]\nhttps_port = {}\n\n[tlsrpt]\nfrom = \"tlsrpt@relay.test\"\norganization = \"Sidestep Test\"\n",
        https.port()
    );
    (w, ca, served)
}

async fn send(relay: &Relay, subject: &str) {
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message(subject, "x\r\n"),
    )
    .await;
}

async fn cli_async(w: &World, args: &[&str]) -> String {
    w.setup.cli_async(args).await
}

#[tokio::test]
async fn an_enforced_policy_keeps_mail_from_an_mx_it_does_not_list() {
    let (w, ca) = sts_world("enforce", &["*.elsewhere.test"]).await;
    w.dest.behave(|b| b.tls = Some(ca.acceptor("mx.dest.test")));
    let relay = w.setup.start().await;
    send(&relay, "unlisted").await;
    relay
        .log_with("mx.dest.test is not an MX host the policy of dest.test allows")
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert!(
        w.dest.connections.lock().unwrap().is_empty(),
        "nothing connected to the sink"
    );
    let listed: serde_json::Value = serde_json::from_str(
        &cli_async(&w, &["queue", "list", "--domain", "dest.test", "--json"]).await,
    )
    .unwrap();
    let id = listed["messages"][0]["id"].as_str().unwrap().to_string();
    let shown = cli_async(&w, &["queue", "show", &id]).await;
    assert!(
        shown.contains("is not an MX host the policy of dest.test allows"),
        "the reason is in queue show: {shown}"
    );
    let tls: serde_json::Value =
        serde_json::from_str(&cli_async(&w, &["tls", "dest.test", "--json"]).await).unwrap();
    let sts = &tls["mta_sts"]["policy"];
    assert_eq!(sts["mode"], "enforce", "{tls}");
    assert_eq!(sts["mx"][0], "*.elsewhere.test", "{tls}");
    assert_eq!(tls["mx"][0]["allowed_by_sts"], false, "{tls}");
    assert_eq!(tls["tlsrpt_rua"][0], "mailto:tlsrpt@sender.test", "{tls}");
}

#[tokio::test]
async fn an_enforced_policy_defers_on_a_certificate_for_another_name() {
    let (w, ca) = sts_world("enforce", &["mx.dest.test"]).await;
    w.dest.behave(|b| b.tls = Some(ca.acceptor("wrong.test")));
    let relay = w.setup.start().await;
    send(&relay, "wrong name").await;
    relay.log_with("certificate-host-mismatch").await;
    relay.log_with("deferred: next attempt at").await;
    assert!(w.dest.messages().is_empty(), "nothing went in the clear");
}

#[tokio::test]
async fn an_enforced_policy_defers_when_starttls_is_stripped() {
    let (w, _ca) = sts_world("enforce", &["mx.dest.test"]).await;
    let relay = w.setup.start().await;
    send(&relay, "stripped").await;
    relay
        .log_with(
            "does not offer STARTTLS, which the MTA-STS policy of dest.test (enforce) requires",
        )
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert!(w.dest.messages().is_empty(), "nothing went in the clear");
}

#[tokio::test]
async fn an_enforced_policy_delivers_over_verified_tls() {
    let (w, ca) = sts_world("enforce", &["mx.dest.test"]).await;
    w.dest.behave(|b| b.tls = Some(ca.acceptor("mx.dest.test")));
    let relay = w.setup.start().await;
    send(&relay, "good").await;
    let got = w.dest.wait_for(1).await;
    assert!(got[0].tls);
    // A restart keeps the policy (from the spool) rather than forgetting it.
    drop(relay);
    let policies = std::fs::read_to_string(w.setup.dir.path().join("spool/mta-sts.json")).unwrap();
    assert!(policies.contains("\"enforce\""), "{policies}");
}

/// Testing mode: a certificate for the wrong name does not stop the mail, and the TLS
/// report for the day counts it as a failure beside a success.
#[tokio::test]
async fn testing_mode_delivers_and_the_day_is_reported_to_the_rua() {
    let (w, ca) = sts_world("testing", &["mx.dest.test"]).await;
    w.dest.behave(|b| b.tls = Some(ca.acceptor("wrong.test")));
    let relay = w.setup.start().await;
    send(&relay, "first").await;
    w.dest.wait_for(1).await;
    w.dest.behave(|b| b.tls = Some(ca.acceptor("mx.dest.test")));
    send(&relay, "second").await;
    w.dest.wait_for(2).await;
    relay
        .log_count("removed: every recipient is final", 2)
        .await;
    let sent = cli_async(&w, &["tls", "--report", "today", "--json"]).await;
    assert!(sent.contains("mailto:tlsrpt@sender.test"), "{sent}");
    let got = w.sender.wait_for(1).await;
    let report = report_json(&got[0].data);
    assert_eq!(report["organization-name"], "Sidestep Test", "{report}");
    assert!(
        report["date-range"]["start-datetime"].is_string(),
        "{report}"
    );
    assert!(report["report-id"].is_string(), "{report}");
    let p = &report["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{report}");
    assert_eq!(p["policy"]["policy-domain"], "dest.test", "{report}");
    assert_eq!(p["policy"]["mx-host"][0], "mx.dest.test", "{report}");
    assert!(
        p["policy"]["policy-string"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "mode: testing"),
        "{report}"
    );
    assert_eq!(
        p["summary"]["total-successful-session-count"], 1,
        "{report}"
    );
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{report}");
    let f = &p["failure-details"][0];
    assert_eq!(f["result-type"], "certificate-host-mismatch", "{report}");
    assert_eq!(f["receiving-mx-hostname"], "mx.dest.test", "{report}");
    assert_eq!(f["receiving-ip"], w.dest.addr.ip().to_string(), "{report}");
    assert_eq!(f["failed-session-count"], 1, "{report}");
    let metrics = crate::support::http_get(relay.admin.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("tls_sessions_total{policy=\"sts\",result=\"success\"} 1"),
        "{metrics}"
    );
}

/// The gzipped JSON of a TLS report mail (RFC 8460 §5.3).
fn report_json(mail: &[u8]) -> serde_json::Value {
    let parsed = mail_parser::MessageParser::default().parse(mail).unwrap();
    let part = parsed
        .attachments()
        .find(|a| {
            a.content_type()
                .is_some_and(|c| c.subtype() == Some("tlsrpt+gzip"))
        })
        .expect("an application/tlsrpt+gzip part");
    gunzip_json(part.contents())
}

/// A gzipped JSON document, parsed.
fn gunzip_json(gz: &[u8]) -> serde_json::Value {
    let mut json = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut json)
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A refusal no rule blames on the IP asks for a second opinion: with one egress IP that
/// would be the fallback smarthost, which does not enforce destination policies, so
/// the mail waits instead; nothing reaches the smarthost.
#[tokio::test]
async fn neither_the_second_opinion_nor_the_fallback_smarthost_steps_around_the_policy() {
    let (mut w, ca) = sts_world("enforce", &["mx.dest.test"]).await;
    w.setup.egress = vec![2];
    w.dest.behave(|b| {
        b.tls = Some(ca.acceptor("mx.dest.test"));
        b.data_from.insert(
            ip("127.0.0.2"),
            "550 5.7.1 Message refused (policy 17)".into(),
        );
    });
    let (smarthost, smarthost_ca) =
        crate::blocks::smarthost(&w, "smarthost.test", false, "pw").await;
    w.setup.delivery += "\nfallback = \"clean\"";
    w.setup.extra += &crate::blocks::clean_smarthost_config(&smarthost, &smarthost_ca);
    let relay = w.setup.start().await;
    send(&relay, "policy").await;
    relay
        .log_with("smarthost clean does not enforce destination policies")
        .await;
    assert!(smarthost.messages().is_empty(), "the smarthost got nothing");
    assert!(w.dest.messages().is_empty());
}

/// A block reroutes to the other egress IP, over a session the policy verified.
#[tokio::test]
async fn a_reroute_after_a_block_obeys_the_policy() {
    let (w, ca) = sts_world("enforce", &["mx.dest.test"]).await;
    let refusal = "550 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using CSI";
    w.dest.behave(|b| {
        b.tls = Some(ca.acceptor("mx.dest.test"));
        b.refuse_from.insert(ip("127.0.0.2"), refusal.into());
    });
    let relay = w.setup.start().await;
    for i in 0..2 {
        send(&relay, &format!("m{i}")).await;
        w.dest.wait_for(i + 1).await;
    }
    let got = w.dest.messages();
    assert!(
        got.iter().all(|m| m.tls && m.peer == ip("127.0.0.3")),
        "{got:?}"
    );
}

/// Looks at the `_mta-sts` TXT record before every delivery: its id decides whether the
/// policy is fetched again.
fn recheck_always(w: &mut World) {
    w.setup.extra = w
        .setup
        .extra
        .replace("[tls_policy]\n", "[tls_policy]\nrecheck = \"0s\"\n");
}

/// dest.test announces its policy id (a new one: the policy changed).
async fn announce(w: &World, id: &str) {
    replace_txt(w, "_mta-sts.dest.test", &format!("v=STSv1; id={id};")).await;
}

/// The TXT record at `name` is now `text` alone.
async fn replace_txt(w: &World, name: &str, text: &str) {
    w.setup
        .dns
        .remove(name, hickory_server::proto::rr::RecordType::TXT)
        .await;
    // TTL 0: no cache keeps the old record past the change.
    w.setup.dns.add_txt_ttl(name, text, 0).await;
}

/// An enforce policy for mx.dest.test, the TXT id looked at before every delivery, a
/// first message delivered under it (the policy fetched and cached).
async fn delivered_under_enforce() -> (World, TestCa, Arc<Mutex<String>>, Relay) {
    let (mut w, ca, served) = sts_world_served("enforce", &["mx.dest.test"]).await;
    recheck_always(&mut w);
    w.dest.behave(|b| b.tls = Some(ca.acceptor("mx.dest.test")));
    let relay = w.setup.start().await;
    send(&relay, "first").await;
    w.dest.wait_for(1).await;
    relay.log_with("every recipient is final").await;
    (w, ca, served, relay)
}

/// The policy server fails, a new id makes the relay fetch, the sink shows a
/// certificate for another name: the cached enforce policy still applies, the mail
/// waits.
async fn kept_although_the_fetch_fails(
    w: &World,
    ca: &TestCa,
    served: &Mutex<String>,
    relay: &Relay,
) {
    served.lock().unwrap().clear();
    announce(w, "20261202T000000").await;
    w.dest.behave(|b| b.tls = Some(ca.acceptor("wrong.test")));
    send(relay, "fetch fails").await;
    relay
        .log_with("MTA-STS policy fetch failed; the cached policy applies until it expires")
        .await;
    relay.log_with("certificate-host-mismatch").await;
    relay.log_with("deferred: next attempt at").await;
    assert_eq!(w.dest.messages().len(), 1, "nothing went unverified");
}

/// A policy changed under the same id is not fetched again; a new id fetches it (RFC
/// 8461 §3.3, §5.1).
#[tokio::test]
async fn a_new_policy_id_fetches_the_policy_again() {
    let (w, _ca, served, relay) = delivered_under_enforce().await;
    *served.lock().unwrap() = policy("enforce", &["*.elsewhere.test"]);
    send(&relay, "same id").await;
    w.dest.wait_for(2).await;
    announce(&w, "20261202T000000").await;
    send(&relay, "new id").await;
    relay
        .log_with("mx.dest.test is not an MX host the policy of dest.test allows")
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert_eq!(
        relay.log().matches("MTA-STS policy fetched").count(),
        2,
        "fetched at first and for the new id only"
    );
    assert_eq!(w.dest.messages().len(), 2);
}

/// A fetch that fails while the cached enforce policy is valid keeps it (RFC 8461
/// §5.1): no fallback to opportunistic TLS.
#[tokio::test]
async fn a_failed_fetch_keeps_the_cached_enforce_policy() {
    let (w, ca, served, relay) = delivered_under_enforce().await;
    kept_although_the_fetch_fails(&w, &ca, &served, &relay).await;
}

/// Start, deliver, stop; the policy server breaks; after the restart the policy from
/// the spool is still enforced. The session counts of the first run reached the disk
/// at the clean stop (they are otherwise written every 5 s).
#[tokio::test]
async fn an_enforced_policy_survives_a_restart_while_its_server_is_down() {
    let (w, ca, served, relay) = delivered_under_enforce().await;
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let counts = std::fs::read_to_string(w.setup.dir.path().join("spool/tlsrpt.json"))
        .expect("the session counts were written at the stop");
    assert!(counts.contains("mx.dest.test"), "{counts}");
    let relay = w.setup.start().await;
    kept_although_the_fetch_fails(&w, &ca, &served, &relay).await;
}

/// A POST the rua server received: its head, its body, and the status it answered.
type Posted = Arc<Mutex<Vec<(String, Vec<u8>, u16)>>>;

/// An HTTPS rua (RFC 8460 §3) at `tlsrpt.sender.test`, answering `status` to every
/// POST; dest.test's `_smtp._tls` record names it (port and all) instead of a mailbox.
async fn https_rua(w: &World, ca: &TestCa, status: Arc<Mutex<u16>>) -> Posted {
    let posted: Posted = Default::default();
    let seen = posted.clone();
    let addr = https_server(ca, "tlsrpt.sender.test", move |head, body| {
        let code = *status.lock().unwrap();
        seen.lock()
            .unwrap()
            .push((head.to_string(), body.to_vec(), code));
        format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n")
    })
    .await;
    w.setup.dns.add_a("tlsrpt.sender.test", addr.ip()).await;
    replace_txt(
        w,
        "_smtp._tls.dest.test",
        &format!(
            "v=TLSRPTv1; rua=https://tlsrpt.sender.test:{}/v1/tlsrpt",
            addr.port()
        ),
    )
    .await;
    posted
}

/// The report goes to an `https:` rua through the relay's resolver, with the test CA's
/// certificate. The server answers 503 at first: the report waits in the spool and is
/// POSTed again (a short `retry_initial` here, 5 minutes by default), keeps waiting
/// over a restart, and is taken once the server accepts. The POSTed body is the
/// report, gzipped JSON as RFC 8460 §4 lays it out.
#[tokio::test]
async fn the_report_is_posted_to_an_https_rua_and_retried() {
    let (mut w, ca) = sts_world("testing", &["mx.dest.test"]).await;
    let status = Arc::new(Mutex::new(503));
    let posted = https_rua(&w, &ca, status.clone()).await;
    w.setup.extra = w
        .setup
        .extra
        .replace("[tlsrpt]\n", "[tlsrpt]\nretry_initial = \"200ms\"\n");
    w.dest.behave(|b| b.tls = Some(ca.acceptor("mx.dest.test")));
    let relay = w.setup.start().await;
    send(&relay, "reported").await;
    w.dest.wait_for(1).await;
    relay.log_with("every recipient is final").await;
    let sent = cli_async(&w, &["tls", "--report", "today", "--json"]).await;
    assert!(sent.contains("answered 503 (tried again at"), "{sent}");
    // Retried by itself: a second POST, refused too.
    crate::support::eventually(|| posted.lock().unwrap().len() >= 2, || relay.log()).await;
    relay
        .log_with("TLS report POST failed; tried again later")
        .await;
    let (stopped, _) = relay.terminate().await;
    assert!(stopped.success());
    let pending = std::fs::read_to_string(w.setup.dir.path().join("spool/tlsrpt-pending.json"))
        .expect("the waiting report is in the spool");
    assert!(pending.contains("/v1/tlsrpt"), "{pending}");
    assert!(pending.contains("answered 503"), "{pending}");
    // The server mends; the restarted relay POSTs the report it left waiting.
    *status.lock().unwrap() = 200;
    let relay = w.setup.start().await;
    relay.log_with("TLS report posted").await;
    let posts = posted.lock().unwrap().clone();
    let (head, body, code) = posts.last().unwrap();
    assert_eq!(*code, 200);
    assert!(
        posts.iter().all(|(_, b, _)| b == body),
        "the same report each time"
    );
    assert!(head.starts_with("POST /v1/tlsrpt HTTP/1."), "{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("content-type: application/tlsrpt+gzip")),
        "{head}"
    );
    let report = gunzip_json(body);
    assert_eq!(report["organization-name"], "Sidestep Test", "{report}");
    assert_eq!(report["contact-info"], "tlsrpt@relay.test", "{report}");
    assert!(report["report-id"].is_string(), "{report}");
    for end in ["start-datetime", "end-datetime"] {
        let at = report["date-range"][end].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(at).is_ok(),
            "{end} is an RFC 3339 date: {report}"
        );
    }
    let p = &report["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{report}");
    assert_eq!(p["policy"]["policy-domain"], "dest.test", "{report}");
    assert_eq!(p["policy"]["mx-host"][0], "mx.dest.test", "{report}");
    assert_eq!(
        p["summary"]["total-successful-session-count"], 1,
        "{report}"
    );
    assert_eq!(p["summary"]["total-failure-session-count"], 0, "{report}");
    let file = w.setup.dir.path().join("spool/tlsrpt-pending.json");
    crate::support::eventually(
        || std::fs::read_to_string(&file).unwrap_or_default().trim() == "[]",
        || std::fs::read_to_string(&file).unwrap_or_default(),
    )
    .await;
}
