//! Late bounces, by a real MTA: a Postfix destination accepts with `250` and fails
//! local delivery afterwards; its DSN goes to the VERP return path sidestep gave the
//! attempt and arrives at sidestep's bounce domain from an address that may not relay.
//! What the bounce names is blocked or suppressed, and the sender gets one DSN.

use std::net::{IpAddr, SocketAddr};

use crate::support::client::{Client, ready};
use crate::support::postfix::Postfix;
use crate::support::{eventually, fresh_loopback};
use crate::{World, message};

/// The key the relay signs its return paths with.
const SECRET: &str = "a test secret that is long enough";

/// The world, with `[bounces]` on (`bounces.test`) and only 127.0.0.1 allowed to relay.
fn with_bounces(w: &mut World, extra: &str) {
    with_bounces_keyed(w, SECRET, extra);
}

/// [`with_bounces`] with the key `secret`.
fn with_bounces_keyed(w: &mut World, secret: &str, extra: &str) {
    let key = w.setup.dir.path().join("verp.key");
    std::fs::write(&key, secret).unwrap();
    w.setup.relay_networks = r#"["127.0.0.1/32"]"#.into();
    w.setup.extra.push_str(&format!(
        "\n[bounces]\ndomain = \"bounces.test\"\nsecret_file = \"{}\"\n{extra}\n",
        key.display()
    ));
}

/// A Postfix destination for `late.test` on the relay's delivery port: `250` at RCPT,
/// then local delivery, which fails for unknown users; `blocked@late.test` fails at
/// once with an IP-reputation text. Its bounces go to sidestep (`relay`) from `from`,
/// an address outside `relay_networks`.
async fn late_bouncer(w: &World, relay: SocketAddr, from: IpAddr) -> (Postfix, tempfile::TempDir) {
    let tables = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tables.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let transport = tables.path().join("transport");
    std::fs::write(
        &transport,
        format!("bounces.test smtp:[{}]:{}\n", relay.ip(), relay.port()),
    )
    .unwrap();
    // Local delivery to `blocked` runs a command that fails the way a receiver's
    // content scanner does after the 250 (exit 69: bounced, its output the reason).
    let aliases = tables.path().join("aliases");
    std::fs::write(
        &aliases,
        "blocked \"|/bin/sh -c 'echo 5.7.1 Service unavailable, client blocked using zen.spamhaus.org, see https://check.spamhaus.org/; exit 69'\"\n",
    )
    .unwrap();
    for file in [&transport, &aliases] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    let ip = fresh_loopback();
    let postfix = Postfix::start(
        (ip, w.setup.smtp_port).into(),
        &format!(
            "myhostname = mx.late.test
mydestination = late.test
local_recipient_maps =
transport_maps = texthash:{}
alias_maps = texthash:{}
smtp_bind_address = {from}
smtp_dns_support_level = disabled
delay_warning_time = 0
",
            transport.display(),
            aliases.display()
        ),
    )
    .await;
    w.setup.dns.add_mx("late.test", 10, "mx.late.test").await;
    w.setup.dns.add_a("mx.late.test", ip).await;
    (postfix, tables)
}

async fn send(relay: SocketAddr, to: &str, subject: &str) -> String {
    let mut c = ready(relay).await;
    let reply = c
        .send_mail("a@sender.test", &[to], &message(subject, "x\r\n"))
        .await;
    c.cmd("QUIT", "221").await;
    reply
}

/// `sidestep ARGS --config …` off the async runtime (the test's DNS server runs on it).
pub(crate) async fn cli(w: &World, args: &[&str]) -> String {
    let config = w.setup.dir.path().join("sidestep.toml");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        // `--config` right after the command, before a subcommand's own arguments.
        std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .arg(&args[0])
            .arg("--config")
            .arg(config)
            .args(&args[1..])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sidestep failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The egress IP the relay's log names for the attempt to `rcpt`.
fn egress_of(log: &str, rcpt: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("delivery attempt") && l.contains(&format!("rcpt={rcpt}")))
        .and_then(|l| l.split("egress=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

#[tokio::test]
async fn a_late_unknown_user_is_suppressed_and_its_sender_gets_one_dsn() {
    let mut w = World::new().await;
    with_bounces(&mut w, "");
    let relay = w.setup.start().await;
    let (postfix, _tables) = late_bouncer(&w, relay.addr, fresh_loopback()).await;
    let accepted = send(relay.addr, "gone@late.test", "to a gone user").await;
    assert!(accepted.starts_with("250"), "{accepted}");

    // Postfix took it with 250 (the relay delivered it), then bounced it by mail to the
    // return path: the relay reads it, ties it to the message and suppresses the address.
    let log = relay.log_with("late bounce").await;
    assert!(
        postfix.log().contains("status=bounced"),
        "{}",
        postfix.log()
    );
    let mail_from = postfix
        .log()
        .lines()
        .find(|l| l.contains("from=<b-"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no VERP sender at the destination: {}", postfix.log()));
    assert!(mail_from.contains("@bounces.test>"), "{mail_from}");
    let line = log.lines().find(|l| l.contains("late bounce")).unwrap();
    assert!(line.contains("rcpt=gone@late.test"), "{line}");
    assert!(line.contains("site=mx.late.test"), "{line}");
    assert!(line.contains("egress=127.0.0."), "{line}");
    assert!(line.contains("verdict=recipient"), "{line}");
    relay.log_with("address suppressed").await;

    // The sender gets one DSN, quoting what Postfix said.
    let dsns = w.sender.wait_for(1).await;
    let text = crate::support::dsn_text(&dsns[0]);
    assert!(text.contains("gone@late.test"), "{text}");
    assert!(text.to_ascii_lowercase().contains("unknown user"), "{text}");
    assert!(text.contains("bounced it later by mail"), "{text}");

    // The next RCPT to it is refused with the reason.
    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    let refused = c.reply_to("RCPT TO:<gone@late.test>").await;
    assert!(
        refused.starts_with("550 5.1.1 <gone@late.test> suppressed: hard bounce at ")
            && refused.contains("from mx.late.test: \""),
        "{refused}"
    );
    // Another sender domain is not refused (scope = sender).
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<a@other.test>", "250").await;
    c.cmd("RCPT TO:<gone@late.test>", "250").await;
    c.cmd("QUIT", "221").await;

    let list = cli(&w, &["suppressions", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["address"], "gone@late.test", "{list:#}");
    assert_eq!(list[0]["scope"], "sender.test", "{list:#}");
    assert_eq!(list[0]["late"], true, "{list:#}");

    // `suppressions remove` lets it through again.
    cli(&w, &["suppressions", "remove", "gone@late.test"]).await;
    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<gone@late.test>", "250").await;
    c.cmd("QUIT", "221").await;

    // Exactly one DSN: the bounce was read once and left the queue.
    relay
        .log_count("removed: every recipient is final", 3)
        .await;
    assert_eq!(w.sender.messages().len(), 1, "{}", relay.log());
}

#[tokio::test]
async fn a_late_ip_block_moves_the_next_mail_to_another_ip() {
    let mut w = World::new().await;
    with_bounces(&mut w, "forward = false");
    let relay = w.setup.start().await;
    let (postfix, _tables) = late_bouncer(&w, relay.addr, fresh_loopback()).await;
    send(relay.addr, "blocked@late.test", "blocked later").await;
    let log = relay.log_with("egress IP blocked by destination").await;
    let first = egress_of(&log, "blocked@late.test").expect("an attempt");
    let blocks = cli(&w, &["blocks", "--json"]).await;
    assert!(
        blocks.contains(&format!("\"ip\":\"{first}\""))
            || blocks.contains(&format!("\"ip\": \"{first}\"")),
        "{blocks}"
    );
    assert!(blocks.contains("mx.late.test"), "{blocks}");
    assert!(
        blocks.contains("\"late\":true") || blocks.contains("\"late\": true"),
        "{blocks}"
    );
    assert!(
        blocks.contains("blocked using zen.spamhaus.org"),
        "{blocks}"
    );
    let report = cli(&w, &["delist-report", &first]).await;
    assert!(report.contains("zen.spamhaus.org"), "{report}");

    // The next mail to the site leaves from the other IP.
    send(relay.addr, "root@late.test", "after the block").await;
    let log = relay.log_with("rcpt=root@late.test").await;
    let second = egress_of(&log, "root@late.test").expect("an attempt");
    assert_ne!(first, second, "{log}\n{}", postfix.log());
    // forward = false: nothing to the sender.
    assert!(w.sender.messages().is_empty());
}

/// A bounce for the return path `rcpt`, as a receiver would send it: `failed` is unknown.
fn dsn_to(rcpt: &str, failed: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.late.test\r\nTo: <{rcpt}>\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nGone.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.late.test\r\n\r\nFinal-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--B--\r\n"
    )
}

/// An outsider hands `relay` a bounce for the return path `rcpt`, reporting `failed`.
async fn bounce_to(relay: SocketAddr, rcpt: &str, failed: &str) {
    let mut c = outsider(relay).await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", dsn_to(rcpt, failed))).await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;
}

async fn outsider(relay: SocketAddr) -> Client {
    let mut c = Client::connect_from(fresh_loopback(), relay).await;
    c.expect("220").await;
    c.cmd("EHLO mx.late.test", "250").await;
    c
}

#[tokio::test]
async fn forged_bounces_are_dropped_and_outsiders_cannot_relay() {
    let mut w = World::new().await;
    with_bounces(&mut w, "");
    let relay = w.setup.start().await;

    // An outsider may send to the bounce domain, and to nothing else.
    let mut c = outsider(relay.addr).await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<b@dest.test>", "554 5.7.1").await;
    c.cmd("RCPT TO:<someone@sender.test>", "554 5.7.1").await;
    // A token made with another key, for a recipient of a message the relay never sent.
    let other = sidestep::returnpath::ReturnPath::new(
        b"not the relay's key at all",
        "bounces.test",
        Vec::new(),
    );
    let forged = other
        .address(
            &sidestep::returnpath::Token {
                queue_id: "0006400A1B2C3D001ABC".into(),
                recipient: 0,
                attempt: 0,
                egress: Some("127.0.0.2".parse().unwrap()),
            },
            "victim@late.test",
            "bounces.test",
        )
        .unwrap();
    c.cmd(&format!("RCPT TO:<{forged}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", dsn_to(&forged, "victim@late.test")))
        .await;
    c.expect("250").await;
    // No token at all.
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<postmaster@bounces.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!(
        "{}.\r\n",
        dsn_to("postmaster@bounces.test", "victim@late.test")
    ))
    .await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;

    relay.log_with("does not verify: dropped").await;
    relay.log_with("without a return-path token: dropped").await;
    let admin = relay.admin.unwrap();
    let metrics = crate::support::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("sidestep_bounce_mail_total{result=\"forged\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sidestep_bounce_mail_total{result=\"no-token\"} 1"),
        "{metrics}"
    );
    assert!(!relay.log().contains("address suppressed"));
    assert!(!relay.log().contains("egress IP blocked"));
    // Nothing left the relay for anyone.
    eventually(
        || relay.log().matches("every recipient is final").count() >= 2,
        || relay.log(),
    )
    .await;
    assert!(w.dest.messages().is_empty() && w.sender.messages().is_empty());
}

/// `[suspension] bounce_ratio`: a hard bounce in the session and a late one by mail add
/// up for the sender; at the ratio it is suspended, and `sidestep senders` shows its
/// bounce rate.
#[tokio::test]
async fn hard_bounces_in_session_and_late_suspend_the_sender_at_the_bounce_ratio() {
    let mut w = World::new().await;
    with_bounces(&mut w, "forward = false");
    w.setup.extra.push_str(
        "\n[suspension]\nhard_bounces = 2\nbounce_ratio = 0.5\nunknown_recipients = 100\n",
    );
    w.dest.behave(|b| {
        b.rcpt.insert(
            "nobody@dest.test".into(),
            "550 5.1.1 <nobody@dest.test>: Recipient address rejected: User unknown".into(),
        );
    });
    let relay = w.setup.start().await;
    let (_postfix, _tables) = late_bouncer(&w, relay.addr, fresh_loopback()).await;
    send(relay.addr, "nobody@dest.test", "refused in the session").await;
    relay.log_with("rcpt=nobody@dest.test").await;
    send(relay.addr, "gone@late.test", "bounced later").await;
    relay.log_with("late bounce").await;
    relay.log_with("sender suspended").await;

    let mut c = ready(relay.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>", "451 4.7.1").await;
    c.cmd("QUIT", "221").await;
    let all: serde_json::Value =
        serde_json::from_str(&cli(&w, &["senders", "--json"]).await).unwrap();
    let list = &all["suspended"];
    assert_eq!(list[0]["sender"], "domain:sender.test", "{list:#}");
    assert_eq!(
        list[0]["reason"], "2 hard bounces (1 late) for 2 delivery attempts",
        "{list:#}"
    );
    assert_eq!(list[0]["recent"]["hard_bounces"], 2, "{list:#}");
    assert_eq!(list[0]["recent"]["late_bounces"], 1, "{list:#}");
    let text = cli(&w, &["senders"]).await;
    assert!(text.contains("2 hard bounces (1 late)"), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("domain:sender.test") && l.contains("attempts"))
        .unwrap_or_else(|| panic!("no bounce rate line: {text}"));
    assert!(line.contains("100.0%"), "{line}");
    let rates: serde_json::Value = serde_json::from_str(
        &crate::support::http_get(relay.admin.unwrap(), "/api/v1/senders/bounce-rates").await,
    )
    .unwrap();
    assert_eq!(rates[0]["sender"], "domain:sender.test", "{rates:#}");
    assert_eq!(rates[0]["rate"], 1.0, "{rates:#}");
    // `senders --json` carries the rates too: one document for scripts.
    assert_eq!(all["bounce_rates"], rates, "{all:#}");
    assert!(all["complaint_rates"].is_array(), "{all:#}");
}

/// The address of a sink's `MAIL FROM:<…>` line.
fn path_of(mail_from: &str) -> String {
    mail_from
        .split(['<', '>'])
        .nth(1)
        .unwrap_or_else(|| panic!("no path in {mail_from:?}"))
        .to_string()
}

/// A reload re-reads `[bounces]`: a new per-sender bounce domain and a new secret are in
/// force for the mail after it, the bounces-only listener moves to its new address, and a
/// late bounce to a return path made before the reload (with the previous secret) still
/// resolves.
#[tokio::test]
async fn a_reload_brings_in_a_new_bounce_domain_and_secret() {
    let mut w = World::new().await;
    let first_listen = fresh_loopback();
    with_bounces(
        &mut w,
        &format!("forward = false\nlisten = \"{first_listen}:0\""),
    );
    let relay = w.setup.start().await;
    let first_listener = relay.bounce_addr.expect("the bounce listener");
    assert_eq!(first_listener.ip(), first_listen);
    send(relay.addr, "gone@dest.test", "before the reload").await;
    let before = path_of(&w.dest.wait_for(1).await[0].mail_from);
    assert!(
        before.starts_with("b-") && before.ends_with("@bounces.test"),
        "{before}"
    );

    // The operator rotates the secret, gives sender.test its own return-path domain and
    // moves the listener.
    let second_listen = fresh_loopback();
    w.setup.extra.clear();
    with_bounces_keyed(
        &mut w,
        "another secret, rotated by the operator",
        &format!(
            "forward = false\nlisten = \"{second_listen}:0\"\n\n[[bounces.domains]]\nsender = \"sender.test\"\ndomain = \"rp.sender.test\"\n"
        ),
    );
    std::fs::write(w.setup.dir.path().join("sidestep.toml"), w.setup.config()).unwrap();
    let out = cli(&w, &["reload"]).await;
    assert!(out.starts_with("reloaded"), "{out}");
    let log = relay.log_with("[bounces] secret changed").await;
    let second_listener: SocketAddr = log
        .lines()
        .filter(|l| l.contains("listening for bounces"))
        .filter_map(|l| {
            l.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .find(|a: &SocketAddr| a.ip() == second_listen)
        .unwrap_or_else(|| panic!("no listener on {second_listen}: {log}"));
    assert!(
        tokio::net::TcpStream::connect(first_listener)
            .await
            .is_err(),
        "the old listener is closed"
    );

    // Mail after the reload leaves with the new domain.
    send(relay.addr, "b@dest.test", "after the reload").await;
    let after = path_of(&w.dest.wait_for(2).await[1].mail_from);
    assert!(
        after.starts_with("b-") && after.ends_with("@rp.sender.test"),
        "{after}"
    );
    relay
        .log_count("removed: every recipient is final", 2)
        .await;

    // The first message bounces late, to its return path made with the previous secret,
    // at the moved listener: it resolves and suppresses the address.
    bounce_to(second_listener, &before, "gone@dest.test").await;
    let log = relay.log_with("late bounce").await;
    let line = log.lines().find(|l| l.contains("late bounce")).unwrap();
    assert!(line.contains("rcpt=gone@dest.test"), "{line}");
    assert!(line.contains("verdict=recipient"), "{line}");
    assert!(!log.contains("does not verify"), "{log}");
    relay.log_with("address suppressed").await;

    // One to the new domain's return path (the new secret) resolves too.
    bounce_to(relay.addr, &after, "b@dest.test").await;
    let log = relay.log_count("late bounce", 2).await;
    assert!(
        log.lines()
            .any(|l| l.contains("late bounce") && l.contains("rcpt=b@dest.test")),
        "{log}"
    );
    assert!(!log.contains("does not verify"), "{log}");

    // A listener address taken by another program refuses the whole reload, naming it;
    // the running configuration stays.
    let taken = tokio::net::TcpListener::bind((fresh_loopback(), 0))
        .await
        .unwrap();
    let taken = taken.local_addr().unwrap();
    w.setup.extra.clear();
    with_bounces_keyed(
        &mut w,
        "a third secret the relay must not take",
        &format!("forward = false\nlisten = \"{taken}\""),
    );
    std::fs::write(w.setup.dir.path().join("sidestep.toml"), w.setup.config()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["reload", "--config"])
        .arg(w.setup.dir.path().join("sidestep.toml"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("not reloaded")
            && text.contains(&format!("listening on {taken} ([bounces] listen)")),
        "{text}"
    );
    assert!(
        tokio::net::TcpStream::connect(second_listener)
            .await
            .is_ok(),
        "the listener in force stays"
    );
}
