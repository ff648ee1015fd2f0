//! The admin API of a running relay, over real HTTP, and the CLI that reads it.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::support::client::ready;
use crate::support::eventually;
use crate::support::sink::Gate;
use crate::{World, message};

/// One HTTP/1.1 request from `from`; the status and the body.
async fn http(admin: SocketAddr, from: IpAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(admin).await.unwrap();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

#[tokio::test]
async fn the_queue_is_seen_through_the_api_and_the_cli() {
    let w = World::new().await;
    // The destination defers: the message stays in the queue.
    w.dest
        .behave(|b| b.data_always = Some("451 4.3.0 try again later".into()));
    let relay = w.setup.start().await;
    let admin = relay.admin.expect("the admin API is on");
    // Where the CLI finds the API: private, as everything in the spool.
    let addr_file = w.setup.dir.path().join("spool").join("admin.addr");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&addr_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", addr_file.display());
    let mut c = ready(relay.addr).await;
    let reply = c
        .send_mail(
            "a@sender.test",
            &["b@dest.test", "c@dest.test"],
            &message("held", "x\r\n"),
        )
        .await;
    let id = reply.split_whitespace().last().unwrap().to_string();
    relay.log_with("deferred: next attempt at").await;
    relay.log_with("attempt over").await;

    assert_eq!(http(admin, local(), "/healthz", None).await.0, 200);
    let (status, body) = http(admin, local(), "/readyz", None).await;
    assert_eq!(status, 200, "{body}");

    let summary = w.setup.cli_json(&["queue"]);
    assert_eq!(summary["messages"], 1, "{summary}");
    assert_eq!(summary["pending_recipients"], 2, "{summary}");
    assert_eq!(summary["by_domain"][0]["domain"], "dest.test", "{summary}");
    assert_eq!(summary["by_domain"][0]["recipients"], 2, "{summary}");

    let list = w.setup.cli(&["queue", "list", "--domain", "dest.test"]);
    assert!(list.contains(&id), "{list}");
    assert!(list.contains("1 of 1 shown"), "{list}");
    let none = w
        .setup
        .cli_json(&["queue", "list", "--domain", "elsewhere.test"]);
    assert_eq!(none["total"], 0, "{none}");

    let shown = w.setup.cli_json(&["queue", "show", &id]);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["sender"], "a@sender.test");
    assert!(shown["attempts"].as_u64().unwrap() >= 1, "{shown}");
    assert_eq!(shown["recipients"][0]["status"], "pending");
    assert_eq!(
        shown["recipients"][0]["reply"], "451 4.3.0 try again later",
        "{shown}"
    );
    let text = w.setup.cli(&["queue", "show", &id]);
    assert!(
        text.contains("pending   b@dest.test  451 4.3.0 try again later"),
        "{text}"
    );

    let (status, _) = http(admin, local(), "/api/v1/queue/messages/NOSUCHID", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn clients_outside_trusted_networks_need_the_token() {
    let mut w = World::new().await;
    let token = "an-admin-token-of-some-length";
    let token_file = w.setup.dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    w.setup.admin = format!(
        "listen = \"127.0.0.1:0\"\ntrusted_networks = [\"127.0.0.1/32\"]\ntoken_file = \"{}\"",
        token_file.display()
    );
    let relay = w.setup.start().await;
    let admin = relay.admin.unwrap();
    let outsider: IpAddr = "127.0.0.77".parse().unwrap();
    assert_eq!(http(admin, local(), "/api/v1/queue", None).await.0, 200);
    assert_eq!(http(admin, outsider, "/api/v1/queue", None).await.0, 401);
    assert_eq!(
        http(admin, outsider, "/api/v1/queue", Some(token)).await.0,
        200
    );
    // Guessing is rate limited: after a few wrong tokens, even the right one waits.
    for _ in 0..5 {
        assert_eq!(
            http(admin, outsider, "/api/v1/queue", Some("wrong"))
                .await
                .0,
            401
        );
    }
    assert_eq!(
        http(admin, outsider, "/api/v1/queue", Some("wrong"))
            .await
            .0,
        429
    );
    assert_eq!(
        http(admin, outsider, "/api/v1/queue", Some(token)).await.0,
        429
    );
    relay.log_with("wrong or missing bearer token").await;
}

#[tokio::test]
async fn without_a_token_file_only_trusted_networks_are_served() {
    let mut w = World::new().await;
    w.setup.admin = "listen = \"127.0.0.1:0\"\ntrusted_networks = [\"127.0.0.1/32\"]".into();
    let relay = w.setup.start().await;
    let admin = relay.admin.unwrap();
    let outsider: IpAddr = "127.0.0.78".parse().unwrap();
    let (status, body) = http(admin, outsider, "/api/v1/queue", Some("anything")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(http(admin, local(), "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn an_admin_listen_of_nothing_turns_it_off_and_the_cli_says_so() {
    let mut w = World::new().await;
    w.setup.admin = "listen = \"\"".into();
    let relay = w.setup.start().await;
    assert!(relay.admin.is_none());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["queue", "--config"])
        .arg(w.setup.dir.path().join("sidestep.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin API is off"), "{err}");
}

/// Sends one message to b@dest.test and waits until its first attempt was deferred;
/// returns its queue id.
async fn queue_one(relay: &crate::support::relay::Relay, subject: &str, n: usize) -> String {
    let mut c = ready(relay.addr).await;
    let reply = c
        .send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(subject, "x\r\n"),
        )
        .await;
    relay.log_count("deferred: next attempt at", n).await;
    // The deferral is logged before the attempt has written it down and ended: until
    // then, hold and delete would wait for the attempt.
    relay.log_count("attempt over", n).await;
    reply.split_whitespace().last().unwrap().to_string()
}

#[tokio::test]
async fn flush_sends_now_what_would_wait_an_hour() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.dest
        .behave(|b| b.data.push_back("451 4.3.0 try again later".into()));
    let relay = w.setup.start().await;
    let id = queue_one(&relay, "flush me", 1).await;
    let out = w.setup.cli(&["flush", "--domain", "dest.test"]);
    assert!(out.contains("flushed: 1") && out.contains(&id), "{out}");
    let got = w.dest.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: flush me"));
    relay.log_with("queue flushed by the operator").await;
}

#[tokio::test]
async fn the_queue_by_site_and_egress_with_each_attempt() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    // Two sites, both deferring: mx.dest.test and mx.sender.test.
    for sink in [&w.dest, &w.sender] {
        sink.behave(|b| b.data_always = Some("451 4.3.0 try again later".into()));
    }
    let relay = w.setup.start().await;
    let to_dest = queue_one(&relay, "to dest", 1).await;
    let mut c = ready(relay.addr).await;
    let reply = c
        .send_mail(
            "a@sender.test",
            &["c@sender.test", "d@sender.test"],
            &message("to sender", "x\r\n"),
        )
        .await;
    let to_sender = reply.split_whitespace().last().unwrap().to_string();
    relay.log_count("deferred: next attempt at", 3).await;
    // Written down (site, egress) once each attempt is over, not at its deferral line.
    relay.log_count("attempt over", 2).await;

    let summary = w.setup.cli_json(&["queue"]);
    let sites = summary["by_site"].as_array().unwrap();
    assert_eq!(sites.len(), 2, "{summary}");
    assert_eq!(sites[0]["name"], "mx.sender.test", "{summary}");
    assert_eq!(sites[0]["recipients"], 2, "{summary}");
    assert_eq!(sites[0]["messages"], 1, "{summary}");
    assert_eq!(sites[1]["name"], "mx.dest.test", "{summary}");
    assert_eq!(sites[1]["recipients"], 1, "{summary}");
    let egresses = summary["by_egress"].as_array().unwrap();
    let by_egress: u64 = egresses
        .iter()
        .map(|g| g["recipients"].as_u64().unwrap())
        .sum();
    assert_eq!(by_egress, 3, "{summary}");
    assert!(
        egresses
            .iter()
            .all(|g| ["127.0.0.2", "127.0.0.3"].contains(&g["name"].as_str().unwrap())),
        "{summary}"
    );
    let table = w.setup.cli(&["queue"]);
    assert!(table.contains("mx.sender.test"), "{table}");
    assert!(table.contains("egress"), "{table}");

    let listed = w
        .setup
        .cli_json(&["queue", "list", "--site", "mx.dest.test"]);
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["messages"][0]["id"], to_dest.as_str(), "{listed}");

    // The message's story: which IP, which site, what was said.
    let shown = w.setup.cli_json(&["queue", "show", &to_dest]);
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{shown}");
    assert_eq!(history[0]["status"], "deferred", "{shown}");
    assert_eq!(history[0]["site"], "mx.dest.test", "{shown}");
    assert_eq!(history[0]["reply"], "451 4.3.0 try again later", "{shown}");
    let egress = history[0]["egress"].as_str().unwrap().to_string();
    assert_eq!(shown["recipients"][0]["egress"], egress.as_str(), "{shown}");
    let by_ip = w.setup.cli_json(&["queue", "list", "--egress", &egress]);
    let ids: Vec<&str> = by_ip["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&to_dest.as_str()), "{by_ip}");
    let text = w.setup.cli(&["queue", "show", &to_dest]);
    assert!(
        text.contains(&format!(
            "deferred  b@dest.test via {egress} to mx.dest.test: 451 4.3.0 try again later"
        )),
        "{text}"
    );

    // Flushing one site leaves the other alone.
    let flushed = w.setup.cli_json(&["flush", "--site", "mx.sender.test"]);
    assert_eq!(
        flushed["done"],
        serde_json::json!([to_sender.as_str()]),
        "{flushed}"
    );
    relay.log_count("deferred: next attempt at", 5).await;
    relay.log_count("attempt over", 3).await;
    let shown = w.setup.cli_json(&["queue", "show", &to_sender]);
    assert_eq!(shown["history"].as_array().unwrap().len(), 4, "{shown}");
    let shown = w.setup.cli_json(&["queue", "show", &to_dest]);
    assert_eq!(shown["history"].as_array().unwrap().len(), 1, "{shown}");
}

#[tokio::test]
async fn a_held_message_waits_across_a_restart_until_released() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.dest
        .behave(|b| b.data.push_back("451 4.3.0 try again later".into()));
    let relay = w.setup.start().await;
    let id = queue_one(&relay, "hold me", 1).await;
    let out = w.setup.cli(&["hold", &id]);
    assert!(out.contains("held: 1"), "{out}");
    let shown = w.setup.cli_json(&["queue", "show", &id]);
    assert_eq!(shown["state"], "held");
    // Held: no attempt is due, and neither view pretends one is.
    assert_eq!(shown["next_attempt"], serde_json::Value::Null, "{shown}");
    let text = w.setup.cli(&["queue", "show", &id]);
    assert!(text.contains("next:     none: held until"), "{text}");
    let listed = w.setup.cli(&["queue", "list", "--state", "held"]);
    assert!(
        listed.contains(&id) && listed.contains("1 of 1 shown"),
        "{listed}"
    );
    // Flushing skips held mail.
    let flushed = w.setup.cli_json(&["flush"]);
    assert_eq!(flushed["done"], serde_json::json!([]), "{flushed}");
    relay.kill().await;

    let relay = w.setup.start().await;
    let summary = w.setup.cli_json(&["queue"]);
    assert_eq!(summary["by_state"]["held"], 1, "{summary}");
    assert!(
        !relay.log().contains("delivery attempt"),
        "a held message is not attempted"
    );
    w.setup.cli(&["release", &id]);
    let got = w.dest.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: hold me"));
}

#[tokio::test]
async fn delete_is_quiet_or_bounces_with_the_operators_reason() {
    let mut w = World::new().await;
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.dest
        .behave(|b| b.data_always = Some("451 4.3.0 try again later".into()));
    let relay = w.setup.start().await;
    let quiet = queue_one(&relay, "quiet", 1).await;
    let loud = queue_one(&relay, "loud", 2).await;
    w.setup.cli(&["delete", &quiet]);
    let out = w.setup.cli(&[
        "delete",
        &loud,
        "--bounce",
        "part of a spam run (ticket 42)",
    ]);
    assert!(out.contains("deleted, DSN sent: 1"), "{out}");
    let dsns = w.sender.wait_for(1).await;
    let text = crate::support::dsn_text(&dsns[0]);
    assert!(text.contains("part of a spam run (ticket 42)"), "{text}");
    assert!(text.contains("Subject: loud"), "{text}");
    relay.log_count("every recipient is final", 1).await;
    let summary = w.setup.cli_json(&["queue"]);
    assert_eq!(summary["messages"], 0, "{summary}");
    assert_eq!(
        w.sender.messages().len(),
        1,
        "the quiet delete sent nothing"
    );
    // Gone: a second delete says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["delete", &quiet, "--config"])
        .arg(w.setup.dir.path().join("sidestep.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["queue", "show", &loud, "--config"])
        .arg(w.setup.dir.path().join("sidestep.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is not in the queue: deleted by the operator, DSN sent at 20"),
        "{said}"
    );
}

#[tokio::test]
async fn an_operators_suspension_reroutes_until_lifted() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let out = w.setup.cli(&[
        "suspend",
        "127.0.0.2",
        "--site",
        "mx.dest.test",
        "--for",
        "4h",
        "--reason",
        "complaint from dest.test postmaster",
    ]);
    assert!(out.contains("suspended by the operator"), "{out}");
    w.send_in_a_row(&relay, 4).await;
    let peers = w.dest.peers();
    assert!(
        peers.iter().all(|p| p.to_string() == "127.0.0.3"),
        "{peers:?}"
    );
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks[0]["manual"], true, "{blocks}");
    assert_eq!(blocks[0]["site"], "mx.dest.test");
    assert!(
        blocks[0]["evidence"]["reply"]
            .as_str()
            .unwrap()
            .contains("complaint from dest.test postmaster")
    );
    w.setup
        .cli(&["lift", "127.0.0.2", "--site", "mx.dest.test"]);
    assert_eq!(w.setup.cli_json(&["blocks"]), serde_json::json!([]));

    // Every site: the other IP carries everything.
    w.setup.cli(&[
        "suspend",
        "127.0.0.3",
        "--for",
        "1h",
        "--reason",
        "rotating its PTR",
    ]);
    for i in 4..8 {
        let mut c = ready(relay.addr).await;
        c.send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message(&format!("m{i}"), "x\r\n"),
        )
        .await;
        w.dest.wait_for(i + 1).await;
        relay.log_count("every recipient is final", i + 1).await;
    }
    let later = w.dest.peers().split_off(4);
    assert!(
        later.iter().all(|p| p.to_string() == "127.0.0.2"),
        "{later:?}"
    );
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    w.send_in_a_row(&relay, 2).await;
    let (status, text) = http(relay.admin.unwrap(), local(), "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("sidestep_messages_accepted_total 2"),
        "{text}"
    );
    let delivered: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("sidestep_deliveries_total{")
                && l.contains("site=\"mx.dest.test\"")
                && l.contains("verdict=\"delivered\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(delivered, 2, "{text}");
    assert!(
        text.contains("sidestep_spool_commit_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("sidestep_accept_latency_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("sidestep_queue_messages{state=\"deferred\"} 0"),
        "{text}"
    );
    assert!(text.contains("sidestep_inbound_sessions"), "{text}");
    assert!(
        text.contains("sidestep_oldest_message_age_seconds 0"),
        "{text}"
    );
}

/// `POST /api/v1/listings/refresh` asks every list now, not at the next hourly refresh.
#[tokio::test]
async fn a_listings_refresh_on_request() {
    let mut w = World::new().await;
    w.setup.dns.healthy_list("ops.test").await;
    w.setup.extra = "\n[listings]\nrefresh = \"1h\"\njitter = \"0s\"\n\n[[blocklists]]\nzone = \"ops.test\"\n[blocklists.codes]\n\"127.0.0.2\" = \"spam source\"\n".into();
    let relay = w.setup.start().await;
    let admin = relay.admin.unwrap();
    relay.log_with("blocklist refresh done").await;
    w.setup
        .dns
        .list("ops.test", "127.0.0.2".parse().unwrap(), "127.0.0.2", None)
        .await;
    let (status, _) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(
            b"POST /api/v1/listings/refresh HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        (out.split_whitespace().nth(1).unwrap_or("").to_string(), out)
    };
    assert_eq!(status, "200");
    relay.log_with("egress IP listed").await;
    let (_, body) = http(admin, local(), "/api/v1/listings", None).await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = report["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["ip"] == "127.0.0.2" && r["state"]["Listed"].is_object());
    assert!(listed, "{report:#}");
}

/// While the relay runs, `blocks` (and `listings`, `delist-report`) ask it (the state in
/// memory), not the file.
#[tokio::test]
async fn blocks_and_listings_come_from_the_running_relay() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    w.setup.cli(&[
        "suspend",
        "127.0.0.2",
        "--for",
        "1h",
        "--reason",
        "from the api",
    ]);
    // Without its file, only the running relay can answer.
    std::fs::remove_file(w.setup.dir.path().join("spool/reputation.redb")).unwrap();
    let blocks = w.setup.cli_json(&["blocks"]);
    assert_eq!(blocks[0]["ip"], "127.0.0.2", "{blocks}");
    let blocks = w.setup.cli(&["blocks"]);
    assert!(blocks.contains("suspended by the operator"), "{blocks}");
    drop(relay);
}

/// `delete` and `hold` of a message whose attempt is under way (its server has not
/// answered the end of DATA yet): the reply says they take effect when the attempt ends,
/// and then they do, without another attempt (retries are 200 ms apart here).
#[tokio::test]
async fn delete_and_hold_during_an_attempt_act_when_it_ends() {
    let w = World::new().await;
    let gate = Gate::new();
    w.dest.behave(|b| {
        b.data_always = Some("451 4.3.0 try again later".into());
        b.data_gate = Some(gate.clone());
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    let reply = c
        .send_mail(
            "a@sender.test",
            &["b@dest.test"],
            &message("doomed", "x\r\n"),
        )
        .await;
    let doomed = reply.split_whitespace().last().unwrap().to_string();
    eventually(|| gate.waiting() == 1, || "no attempt reached DATA".into()).await;
    let out = w
        .setup
        .cli(&["delete", &doomed, "--bounce", "spam run (ticket 7)"]);
    assert!(
        out.contains(&format!(
            "{doomed}: an attempt is under way; deleted, DSN sent when it ends (it is not attempted again)"
        )),
        "{out}"
    );
    gate.let_through(1);
    let dsns = w.sender.wait_for(1).await;
    let text = crate::support::dsn_text(&dsns[0]);
    assert!(text.contains("spam run (ticket 7)"), "{text}");
    relay.log_with("deleted by the operator").await;
    // Empty once the DSN's own delivery is recorded too.
    eventually(
        || w.setup.cli_json(&["queue"])["messages"] == 0,
        || format!("{}", w.setup.cli_json(&["queue"])),
    )
    .await;

    let reply = c
        .send_mail("a@sender.test", &["b@dest.test"], &message("kept", "x\r\n"))
        .await;
    let kept = reply.split_whitespace().last().unwrap().to_string();
    eventually(|| gate.waiting() == 1, || "no attempt reached DATA".into()).await;
    let out = w.setup.cli(&["hold", &kept]);
    assert!(
        out.contains(&format!(
            "{kept}: an attempt is under way; held when it ends"
        )),
        "{out}"
    );
    gate.let_through(1);
    eventually(
        || w.setup.cli_json(&["queue", "show", &kept])["state"] == "held",
        || relay.log(),
    )
    .await;
    let log = relay.log();
    for id in [&doomed, &kept] {
        let attempts = log
            .lines()
            .filter(|l| l.contains(id.as_str()) && l.contains("delivery attempt"))
            .count();
        assert_eq!(attempts, 1, "{id} was attempted again: {log}");
    }
    assert_eq!(gate.waiting(), 0);
}

/// `sidestep queue show` of a message that left the queue says what became of it.
#[tokio::test]
async fn queue_show_of_a_message_that_is_gone_says_what_became_of_it() {
    let w = World::new().await;
    w.dest.behave(|b| {
        b.rcpt.insert(
            "nobody@dest.test".into(),
            "550 5.1.1 <nobody@dest.test>: User unknown".into(),
        );
    });
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    let id_of = |reply: String| reply.split_whitespace().last().unwrap().to_string();
    let sent = id_of(
        c.send_mail("a@sender.test", &["b@dest.test"], &message("ok", "x\r\n"))
            .await,
    );
    let refused = id_of(
        c.send_mail(
            "a@sender.test",
            &["nobody@dest.test"],
            &message("no", "x\r\n"),
        )
        .await,
    );
    relay
        // The two, and the bounce's DSN.
        .log_count("removed: every recipient is final", 3)
        .await;
    let gone = |id: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .args(["queue", "show", id, "--config"])
            .arg(w.setup.dir.path().join("sidestep.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = gone(&sent);
    assert!(
        said.contains(&format!(
            "{sent} is not in the queue: delivered (1 recipient(s)) at 20"
        )),
        "{said}"
    );
    assert!(!said.contains("HTTP 404"), "{said}");
    let said = gone(&refused);
    assert!(
        said.contains("is not in the queue: bounced (1 recipient(s) failed, 0 delivered) at 20"),
        "{said}"
    );
    let said = gone("00000000000000000000");
    assert!(
        said.contains("is not in the queue (delivered, bounced or deleted before"),
        "{said}"
    );
}
