//! Rotation that never breaks authentication: the egress IP is chosen among those the
//! sender's SPF authorises, an SPF/DKIM/DMARC refusal is never turned into a block of
//! the IP, and when no authorised address gets the mail accepted the sender gets one DSN
//! naming SPF and the operator an `auth-failing` alert. The destination checks SPF for
//! the connecting IP through the test's DNS, as Gmail does.

use std::net::IpAddr;

use crate::World;
use crate::support::client::ready;
use crate::support::relay::Relay;
use crate::support::sink::spf_checker;
use crate::support::{dsn_text, eventually, http_get};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A world whose destination refuses (5.7.26) mail that fails SPF, with sender domains
/// `one.test` (SPF lists 127.0.0.2 only), `both.test` (both egress IPs) and `none.test`
/// (neither); their MX is the sender sink, where DSNs arrive.
async fn spf_world() -> World {
    let w = World::new().await;
    w.dest
        .behave(|b| b.spf = Some(spf_checker(w.setup.dns.addr)));
    let dns = &w.setup.dns;
    // An hour's TTL: the relay may keep the results that long (one evaluation per
    // (domain, IP) for the whole test).
    dns.add_txt_ttl("one.test", "v=spf1 ip4:127.0.0.2 -all", 3600)
        .await;
    dns.add_txt("_dmarc.one.test", "v=DMARC1; p=reject; adkim=s")
        .await;
    dns.add_txt_ttl(
        "both.test",
        "v=spf1 ip4:127.0.0.2 a:out.both.test -all",
        3600,
    )
    .await;
    dns.add_a_ttl("out.both.test", ip("127.0.0.3"), 3600).await;
    dns.add_txt("none.test", "v=spf1 ip4:192.0.2.1 -all").await;
    for d in ["one.test", "both.test", "none.test"] {
        dns.add_mx(d, 10, "mx.sender.test").await;
    }
    w
}

/// Sends `n` messages from `from`, each once the relay is done with the previous one.
async fn send_from(relay: &Relay, from: &str, n: usize, done_before: usize) {
    for i in 0..n {
        let mut c = ready(relay.addr).await;
        c.send_mail(
            from,
            &["b@dest.test"],
            &format!("From: {from}\r\nTo: b@dest.test\r\nSubject: m{i}\r\n\r\nx\r\n"),
        )
        .await;
        relay
            .log_count("removed: every recipient is final", done_before + i + 1)
            .await;
    }
}

fn peers_of(w: &World, from: &str) -> Vec<IpAddr> {
    w.dest
        .messages()
        .iter()
        .filter(|m| m.mail_from.contains(from))
        .map(|m| m.peer)
        .collect()
}

/// Two fields of each object of a JSON array, as strings.
fn pairs(list: &serde_json::Value, first: &str, second: &str) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a[first].as_str().unwrap().into(),
                a[second].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// The auth report's checklist item `name`.
fn check_item(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["item"] == name)
        .unwrap_or_else(|| panic!("no {name} item: {report:#}"))
        .clone()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test]
async fn each_sender_leaves_only_from_ips_its_spf_authorises() {
    let w = spf_world().await;
    let relay = w.setup.start().await;
    send_from(&relay, "a@one.test", 10, 0).await;
    send_from(&relay, "a@both.test", 10, 10).await;

    let one = peers_of(&w, "one.test");
    let both = peers_of(&w, "both.test");
    assert_eq!(one.len(), 10, "every message of one.test arrives");
    assert!(one.iter().all(|p| *p == ip("127.0.0.2")), "{one:?}");
    assert_eq!(both.len(), 10);
    assert!(
        both.contains(&ip("127.0.0.2")) && both.contains(&ip("127.0.0.3")),
        "{both:?}"
    );
    assert!(w.sender.messages().is_empty(), "nothing bounces");
    let log = relay.log();
    assert!(!log.contains("5.7.26"), "no refusal was drawn: {log}");
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks.as_array().unwrap().len(), 0, "{blocks}");

    // One evaluation per (domain, IP) for the records' lifetime, not one per message.
    let metrics = http_get(relay.admin.unwrap(), "/metrics").await;
    assert_eq!(
        metric(&metrics, "sidestep_spf_evaluations_total"),
        4,
        "{metrics}"
    );

    // What an operator asks: the record, each IP's result, DMARC, the checklist.
    // Through the API and an async child: the test's DNS server runs on this test's
    // runtime, which a blocking wait for a child process would stall.
    let report: serde_json::Value =
        serde_json::from_str(&http_get(relay.admin.unwrap(), "/api/v1/auth?domain=one.test").await)
            .unwrap();
    assert_eq!(
        report["spf_record"], "v=spf1 ip4:127.0.0.2 -all",
        "{report}"
    );
    assert_eq!(
        pairs(&report["addresses"], "ip", "spf"),
        [
            ("127.0.0.2".into(), "pass".into()),
            ("127.0.0.3".into(), "fail".into())
        ]
    );
    assert_eq!(report["dmarc"]["policy"], "reject", "{report}");
    let item = |name: &str| check_item(&report, name);
    assert_eq!(item("spf")["pass"], false, "{report}");
    assert!(
        item("spf")["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.3")
    );
    assert_eq!(item("dmarc")["pass"], true);
    assert_eq!(item("ptr")["pass"], false, "the test IPs have no PTR");
    let text = cli_async(&w, &["auth", "both.test"]).await;
    assert!(
        text.contains("SPF record: v=spf1 ip4:127.0.0.2 a:out.both.test -all"),
        "{text}"
    );
    assert!(text.contains("[pass] spf"), "{text}");
    assert!(text.contains("[FAIL] dmarc"), "{text}");

    // Complaint rates against 0.3%, and the status page's sender domains.
    let senders = w.setup.cli(&["senders"]);
    assert!(senders.contains("under 0.3%"), "{senders}");
    assert!(
        senders
            .lines()
            .any(|l| l.contains("one.test") && l.contains("10 messages") && l.contains("0.000%")),
        "{senders}"
    );
    let page = http_get(relay.admin.unwrap(), "/").await;
    let at = page.find("Sender domains (last day)").expect("the section");
    let table = &page[at..];
    assert!(table.contains("one.test"), "{table}");
    assert!(table.contains("spf FAIL"), "{table}");
    assert!(table.contains("spf pass"), "both.test passes: {table}");
    let seen = http_get(relay.admin.unwrap(), "/api/v1/auth").await;
    assert!(
        seen.contains("one.test") && seen.contains("both.test"),
        "{seen}"
    );
}

#[tokio::test]
async fn with_spf_off_an_authentication_refusal_teaches_the_pair_and_blocks_nothing() {
    let mut w = spf_world().await;
    w.setup.delivery = "spf = \"off\"".into();
    let relay = w.setup.start().await;
    send_from(&relay, "a@one.test", 6, 0).await;

    let one = peers_of(&w, "one.test");
    assert_eq!(one.len(), 6, "every message arrives, none bounces");
    assert!(one.iter().all(|p| *p == ip("127.0.0.2")), "{one:?}");
    assert!(w.sender.messages().is_empty());
    let log = relay.log();
    // Refused once from .3, asked again from .2, accepted; then one.test avoids .3.
    assert_eq!(log.matches("verdict=authentication").count(), 1, "{log}");
    assert!(log.contains("IP not authorised for one.test"), "{log}");
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks.as_array().unwrap().len(), 0, "no block: {blocks}");
    let auth: serde_json::Value =
        serde_json::from_str(&cli_async(&w, &["auth", "one.test", "--json"]).await).unwrap();
    let denials = auth["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{auth}");
    assert_eq!(denials[0]["ip"], "127.0.0.3");
    assert!(denials[0]["reply"].as_str().unwrap().contains("5.7.26"));

    // Another sender, whose SPF lists both IPs, still uses both.
    send_from(&relay, "a@both.test", 10, 6).await;
    let both = peers_of(&w, "both.test");
    assert!(both.contains(&ip("127.0.0.3")), "{both:?}");
}

#[tokio::test]
async fn every_ip_failing_spf_bounces_once_naming_spf_and_alerts() {
    let mut w = spf_world().await;
    let (url, alerts) = crate::alerts::webhook().await;
    w.setup.extra = format!("\n[alerts]\nwebhook = \"{url}\"\nspool_free_below = 0\n");
    let relay = w.setup.start().await;
    send_from(&relay, "a@none.test", 1, 0).await;

    let dsns = w.sender.wait_for(1).await;
    assert_eq!(dsns.len(), 1);
    let text = dsn_text(&dsns[0]);
    assert!(text.contains("5.7.26"), "{text}");
    assert!(text.contains("SPF of none.test for 127.0.0."), "{text}");
    assert!(text.contains("DNS must be fixed"), "{text}");
    assert!(w.dest.messages().is_empty());
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks.as_array().unwrap().len(), 0, "no block: {blocks}");
    eventually(
        || {
            alerts
                .lock()
                .unwrap()
                .iter()
                .any(|a| a["event"] == "auth-failing" && a["subject"] == "none.test")
        },
        || format!("{:?}", alerts.lock().unwrap()),
    )
    .await;
    let log = relay.log();
    assert!(
        log.contains("sending from an address the sender's SPF does not authorise"),
        "{log}"
    );
    let metrics = http_get(relay.admin.unwrap(), "/metrics").await;
    assert!(
        metric(&metrics, "sidestep_spf_unauthorised_total") >= 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn spf_require_waits_instead_of_sending_from_an_unauthorised_ip() {
    let mut w = spf_world().await;
    w.setup.delivery = "spf = \"require\"".into();
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@none.test",
        &["b@dest.test"],
        "From: a@none.test\r\nTo: b@dest.test\r\nSubject: wait\r\n\r\nx\r\n",
    )
    .await;
    relay
        .log_with("no usable egress IP or smarthost is authorised by the SPF of none.test")
        .await;
    relay.log_with("deferred: next attempt").await;
    assert!(
        w.dest.connections.lock().unwrap().is_empty(),
        "never connected"
    );
    assert!(w.sender.messages().is_empty(), "never bounced");

    // The sender publishes 127.0.0.3; after a reload (SPF asked afresh) and a flush
    // the mail leaves from it.
    let dns = &w.setup.dns;
    dns.remove("none.test", hickory_server::proto::rr::RecordType::TXT)
        .await;
    dns.add_txt("none.test", "v=spf1 ip4:127.0.0.3 -all").await;
    w.setup.cli(&["reload"]);
    w.setup.cli(&["flush"]);
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].peer, ip("127.0.0.3"));
}

#[tokio::test]
async fn an_spf_edit_that_adds_an_egress_ip_is_announced() {
    let mut w = spf_world().await;
    let (url, alerts) = crate::alerts::webhook().await;
    w.setup.extra = format!(
        "\n[alerts]\nwebhook = \"{url}\"\nspool_free_below = 0\n[listings]\nrefresh = \"1s\"\njitter = \"0s\"\n"
    );
    // A TTL of a second: the edit is seen at the next recheck.
    let dns = &w.setup.dns;
    dns.add_txt("edit.test", "v=spf1 ip4:127.0.0.2 -all").await;
    dns.add_mx("edit.test", 10, "mx.sender.test").await;
    let relay = w.setup.start().await;
    send_from(&relay, "a@edit.test", 1, 0).await;
    // A recheck has seen edit.test as it is (127.0.0.3 not authorised)...
    relay.log_with("sender domains' SPF rechecked").await;
    dns.remove("edit.test", hickory_server::proto::rr::RecordType::TXT)
        .await;
    dns.add_txt("edit.test", "v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 -all")
        .await;
    // ...and the next one finds it authorised.
    eventually(
        || {
            alerts.lock().unwrap().iter().any(|a| {
                a["event"] == "auth-changed"
                    && a["subject"] == "edit.test"
                    && a["ip"] == "127.0.0.3"
                    && a["text"]
                        .as_str()
                        .unwrap_or("")
                        .contains("is now authorised")
            })
        },
        || format!("{:?} {}", alerts.lock().unwrap(), relay.log()),
    )
    .await;
}

/// `[bounces]` puts each attempt's MAIL FROM on a bounce domain, so receivers check that
/// domain's SPF: `sidestep auth` says, per bounce domain, whether it authorises every
/// egress IP and smarthost, naming the ones it does not, from the configuration in force
/// (a reload that adds a bounce domain shows in the next report).
#[tokio::test]
async fn the_auth_checklist_checks_each_bounce_domains_spf() {
    let mut w = World::new().await;
    let dns = &w.setup.dns;
    dns.add_a("smart.test", ip("127.0.0.9")).await;
    // Covers both egress IPs and the smarthost.
    dns.add_txt(
        "bounces.test",
        "v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 a:smart.test -all",
    )
    .await;
    // Forgets the egress IP 127.0.0.3.
    dns.add_txt("rp.sender.test", "v=spf1 ip4:127.0.0.2 ip4:127.0.0.9 -all")
        .await;
    let key = w.setup.dir.path().join("verp.key");
    std::fs::write(&key, "a test secret that is long enough").unwrap();
    let bounces = format!(
        "\n[[smarthosts]]\nname = \"smart\"\nhost = \"smart.test\"\n\n[bounces]\ndomain = \"bounces.test\"\nsecret_file = \"{}\"\n",
        key.display()
    );
    w.setup.extra = bounces.clone();
    let relay = w.setup.start().await;
    let admin = relay.admin.unwrap();
    let report = |body: String| -> serde_json::Value { serde_json::from_str(&body).unwrap() };

    let r = report(http_get(admin, "/api/v1/auth?domain=sender.test").await);
    let paths = r["return_paths"].as_array().unwrap();
    assert_eq!(paths.len(), 1, "{r:#}");
    assert_eq!(paths[0]["domain"], "bounces.test");
    assert_eq!(paths[0]["pass"], true, "{r:#}");
    assert_eq!(
        pairs(&paths[0]["addresses"], "ip", "kind"),
        [
            ("127.0.0.2".into(), "egress".into()),
            ("127.0.0.3".into(), "egress".into()),
            ("127.0.0.9".into(), "smarthost smart".into())
        ]
    );

    // The operator adds a per-sender return-path domain and reloads: the next report
    // checks it too, and its SPF misses an egress IP.
    w.setup.extra = format!(
        "{bounces}\n[[bounces.domains]]\nsender = \"sender.test\"\ndomain = \"rp.sender.test\"\n"
    );
    std::fs::write(w.setup.dir.path().join("sidestep.toml"), w.setup.config()).unwrap();
    let out = cli_async(&w, &["reload"]).await;
    assert!(out.starts_with("reloaded"), "{out}");
    let r = report(cli_async(&w, &["auth", "sender.test", "--json"]).await);
    let item = |name: &str| check_item(&r, name);
    assert_eq!(item("return-path bounces.test")["pass"], true, "{r:#}");
    let missing = item("return-path rp.sender.test");
    assert_eq!(missing["pass"], false, "{r:#}");
    let reason = missing["reason"].as_str().unwrap();
    assert_eq!(reason, "not authorised: 127.0.0.3 (egress): fail", "{r:#}");
    let paths = r["return_paths"].as_array().unwrap();
    assert_eq!(paths.len(), 2, "{r:#}");
    assert_eq!(paths[1]["domain"], "rp.sender.test");
    assert_eq!(
        paths[1]["spf_record"], "v=spf1 ip4:127.0.0.2 ip4:127.0.0.9 -all",
        "{r:#}"
    );
    assert_eq!(paths[1]["pass"], false);

    let text = cli_async(&w, &["auth", "sender.test"]).await;
    assert!(
        text.lines()
            .any(|l| l.contains("[pass] return-path bounces.test")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("[FAIL] return-path rp.sender.test") && l.contains("127.0.0.3")),
        "{text}"
    );
    assert!(
        text.contains(
            "return path rp.sender.test: SPF record: v=spf1 ip4:127.0.0.2 ip4:127.0.0.9 -all"
        ),
        "{text}"
    );
}

/// See [`crate::support::relay::Setup::cli_async`].
async fn cli_async(w: &World, args: &[&str]) -> String {
    w.setup.cli_async(args).await
}
