//! DKIM signing at acceptance, verified by dkimpy (not the library that signed) against
//! the keys the test's DNS serves; the key checks of check-config; `sidestep dkim keygen`
//! and `sidestep dkim check` against that DNS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hickory_server::proto::rr::RecordType;

use crate::submission::plain_response;
use crate::support::client::{Client, ready};
use crate::support::dkim::{key_entry, keygen, publish, verify};
use crate::{NO_RETRY_SOON, World};

/// A message with every field sidestep signs but Cc, List-Id and Feedback-ID.
fn newsletter(from: &str, subject: &str) -> String {
    format!(
        "From: News <{from}>\r\nTo: b@dest.test\r\nSubject: {subject}\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         List-Unsubscribe: <https://sender.test/u?{subject}>\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Campaign: 7\r\n\r\n\
         Hello,  world \r\n\r\n\r\n"
    )
}

/// Every file under `dir`, concatenated.
fn spooled(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(spooled(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

/// sender.test's keys s1 (RSA, published when `publish_rsa`) and e1 (Ed25519,
/// published), every client's mail signed.
async fn dual_keys(w: &mut World, publish_rsa: bool) {
    let dir = w.setup.dir.path().to_path_buf();
    let (rsa, rsa_record) = keygen(&dir, "sender.test", "s1", "rsa");
    let (ed, ed_record) = keygen(&dir, "sender.test", "e1", "ed25519");
    if publish_rsa {
        publish(&w.setup.dns, "sender.test", "s1", &rsa_record).await;
    }
    publish(&w.setup.dns, "sender.test", "e1", &ed_record).await;
    w.setup.extra = format!(
        "\n[dkim]\nsign = \"all\"\n{}{}",
        key_entry("sender.test", "s1", &rsa, "rsa-sha256"),
        key_entry("sender.test", "e1", &ed, "ed25519-sha256")
    );
}

#[tokio::test]
async fn signed_at_acceptance_with_rsa_and_ed25519_and_both_verify() {
    let mut w = World::new().await;
    let dir = w.setup.dir.path().to_path_buf();
    dual_keys(&mut w, true).await;
    // later.test's MX host has no address yet: the message waits in the spool.
    w.setup.dns.add_mx("later.test", 10, "mx.later.test").await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "bounces@sender.test",
        &["b@later.test"],
        &newsletter("news@sender.test", "n1"),
    )
    .await;
    // The signatures are in the spooled content, before any attempt.
    let spool = spooled(&dir.join("spool"));
    assert_eq!(count(&spool, "DKIM-Signature:"), 2);

    w.setup.dns.add_a("mx.later.test", w.dest.addr.ip()).await;
    let got = w.dest.wait_for(1).await;
    let data = &got[0].data;
    assert_eq!(count(data, "DKIM-Signature:"), 2, "signed once");
    let sigs = verify(&w.setup.dns, data).await;
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    for (sig, (s, a)) in sigs
        .iter()
        .zip([("s1", "rsa-sha256"), ("e1", "ed25519-sha256")])
    {
        assert!(sig.ok, "{sig:?}");
        assert_eq!(
            (sig.d.as_str(), sig.s.as_str(), sig.a.as_str()),
            ("sender.test", s, a)
        );
        assert!(!sig.l, "no body length");
        let mut h: Vec<String> = sig.h.split(':').map(str::to_ascii_lowercase).collect();
        h.sort();
        assert_eq!(
            h,
            [
                "content-type",
                "date",
                "from",
                "from",
                "list-unsubscribe",
                "list-unsubscribe-post",
                "message-id",
                "mime-version",
                "subject",
                "to"
            ],
            "present fields, From over-signed, nothing else"
        );
    }
    let text = String::from_utf8_lossy(data);
    assert!(text.contains("c=relaxed/relaxed"), "{text}");

    // A second From: added on the way breaks the signatures.
    let forged = text.replacen("From: News", "From: evil@forged.test\r\nFrom: News", 1);
    assert!(
        verify(&w.setup.dns, forged.as_bytes())
            .await
            .iter()
            .all(|s| !s.ok)
    );
}

#[tokio::test]
async fn a_signature_with_the_same_domain_and_selector_is_left_alone() {
    let mut w = World::new().await;
    dual_keys(&mut w, false).await;
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    let theirs = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=Sender.test; s=s1;\r\n\th=from; bh=AAAA; b=BBBB\r\n";
    c.send_mail(
        "bounces@sender.test",
        &["b@dest.test"],
        &format!("{theirs}{}", newsletter("news@sender.test", "n2")),
    )
    .await;
    let got = w.dest.wait_for(1).await;
    let data = &got[0].data;
    assert_eq!(count(data, "DKIM-Signature:"), 2);
    assert!(
        String::from_utf8_lossy(data).contains(theirs),
        "theirs untouched"
    );
    let sigs = verify(&w.setup.dns, data).await;
    let ours: Vec<_> = sigs.iter().filter(|s| s.s == "e1").collect();
    assert_eq!(ours.len(), 1, "{sigs:?}");
    assert!(ours[0].ok, "{sigs:?}");
}

#[tokio::test]
async fn relay_network_clients_are_signed_only_under_sign_all() {
    let mut w = World::new().await;
    let dir = w.setup.dir.path().to_path_buf();
    let (ed, ed_record) = keygen(&dir, "sender.test", "e1", "ed25519");
    publish(&w.setup.dns, "sender.test", "e1", &ed_record).await;
    let (other, _) = keygen(&dir, "other.test", "o1", "ed25519");
    std::fs::write(
        dir.join("users"),
        format!("{}\n", w.setup.passwd("alice", "s3cret", &["sender.test"])),
    )
    .unwrap();
    // The default: sign = "authenticated".
    w.setup.extra = format!(
        "\n[auth]\nusers_file = \"{}\"\nallow_plaintext_loopback = true\n{}{}",
        dir.join("users").display(),
        key_entry("sender.test", "e1", &ed, "ed25519-sha256"),
        key_entry("other.test", "o1", &other, "ed25519-sha256")
    );
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &newsletter("a@sender.test", "plain"),
    )
    .await;
    let mut alice = Client::connect(relay.addr).await;
    alice.expect("220").await;
    alice.cmd("EHLO client.test", "250").await;
    let login = format!("AUTH PLAIN {}", plain_response("alice", "s3cret"));
    alice.cmd(&login, "235").await;
    alice
        .send_mail(
            "alice@sender.test",
            &["b@dest.test"],
            &newsletter("alice@sender.test", "auth"),
        )
        .await;
    // alice may send as sender.test only: other.test's key does not vouch for her.
    alice
        .send_mail(
            "alice@sender.test",
            &["b@dest.test"],
            &newsletter("alice@other.test", "not-hers"),
        )
        .await;
    let got = w.dest.wait_for(3).await;
    let by_subject = |s: &str| {
        got.iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("Subject: {s}\r\n")))
            .unwrap()
            .data
            .clone()
    };
    assert_eq!(
        count(&by_subject("plain"), "DKIM-Signature:"),
        0,
        "not logged in: unsigned"
    );
    let sigs = verify(&w.setup.dns, &by_subject("auth")).await;
    assert!(sigs.len() == 1 && sigs[0].ok, "{sigs:?}");
    assert_eq!(count(&by_subject("not-hers"), "DKIM-Signature:"), 0);
    relay.terminate().await;

    // sign = "all": the relay_networks client is signed too.
    w.setup.extra = w
        .setup
        .extra
        .replace("[auth]", "[dkim]\nsign = \"all\"\n\n[auth]");
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &newsletter("a@sender.test", "all"),
    )
    .await;
    let got = w.dest.wait_for(4).await;
    let sigs = verify(&w.setup.dns, &got[3].data).await;
    assert!(sigs.len() == 1 && sigs[0].ok, "{sigs:?}");
}

#[tokio::test]
async fn check_config_refuses_a_key_others_can_read_or_that_is_no_key() {
    let mut w = World::new().await;
    let dir = w.setup.dir.path().to_path_buf();
    let (rsa, _) = keygen(&dir, "sender.test", "s1", "rsa");
    assert_eq!(
        std::fs::metadata(&rsa).unwrap().permissions().mode() & 0o777,
        0o600,
        "keygen writes 0600"
    );
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    w.setup.extra = format!(
        "{}{}",
        key_entry("sender.test", "s1", &rsa, "rsa-sha256"),
        key_entry("sender.test", "s2", &junk, "rsa-sha256")
    );
    std::fs::write(dir.join("sidestep.toml"), w.setup.config()).unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .arg("check-config")
            .arg(dir.join("sidestep.toml"))
            .output()
            .unwrap()
    };
    let out = check();
    // Each problem names its key and line: `dkim.keys[1].private_key (line 48): …`.
    let text = without_lines(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(
        text.contains(&format!(
            "dkim.keys[1].private_key: {}: not a usable rsa-sha256 private key",
            junk.display()
        )),
        "{text}"
    );
    assert!(!text.contains("dkim.keys[0]"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dkim.keys[1].private_key (line "),
        "the problem names its line"
    );

    std::fs::set_permissions(&rsa, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_file(&junk).unwrap();
    let out = check();
    // Each problem names its key and line: `dkim.keys[1].private_key (line 48): …`.
    let text = without_lines(&String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(&format!(
            "dkim.keys[0].private_key: {} is readable by group or others (mode 0644)",
            rsa.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("dkim.keys[1].private_key: cannot read"),
        "{text}"
    );
    assert!(text.contains("2 error(s)"), "{text}");
}

#[tokio::test]
async fn keygen_and_check_against_the_dns() {
    let mut w = World::new().await;
    w.setup.queue = NO_RETRY_SOON.into();
    let dir = w.setup.dir.path().to_path_buf();
    let (rsa, rsa_record) = keygen(&dir, "sender.test", "s1", "rsa");
    let (ed, ed_record) = keygen(&dir, "sender.test", "e1", "ed25519");
    let (other, other_record) = keygen(&dir, "other.test", "o1", "ed25519");
    // keygen never writes over a key.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args([
            "dkim",
            "keygen",
            "--domain",
            "sender.test",
            "--selector",
            "e1",
            "--out",
        ])
        .arg(&ed)
        .output()
        .unwrap();
    assert!(!again.status.success());
    w.setup.extra = format!(
        "{}{}{}",
        key_entry("sender.test", "s1", &rsa, "rsa-sha256"),
        key_entry("sender.test", "e1", &ed, "ed25519-sha256"),
        key_entry("other.test", "o1", &other, "ed25519-sha256")
    );
    std::fs::write(dir.join("sidestep.toml"), w.setup.config()).unwrap();
    // s1 published, e1 missing, o1 publishes another key (e1's).
    publish(&w.setup.dns, "sender.test", "s1", &rsa_record).await;
    publish(&w.setup.dns, "other.test", "o1", &ed_record).await;
    // A child the runtime waits for: the in-process DNS server keeps answering.
    let check = |json: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidestep"));
        cmd.args(["dkim", "check", "--config"])
            .arg(dir.join("sidestep.toml"));
        if json {
            cmd.arg("--json");
        }
        async move { cmd.output().await.unwrap() }
    };
    let out = check(true).await;
    assert!(!out.status.success(), "not all published");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<(&str, &str)> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("s1._domainkey.sender.test", "published"),
            ("e1._domainkey.sender.test", "missing"),
            ("o1._domainkey.other.test", "mismatch"),
        ]
    );

    publish(&w.setup.dns, "sender.test", "e1", &ed_record).await;
    w.setup
        .dns
        .remove("o1._domainkey.other.test", RecordType::TXT)
        .await;
    publish(&w.setup.dns, "other.test", "o1", &other_record).await;
    let out = check(false).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "s1._domainkey.sender.test (rsa-sha256): published\n\
         e1._domainkey.sender.test (ed25519-sha256): published\n\
         o1._domainkey.other.test (ed25519-sha256): published\n"
    );
}

/// check-config's text with the ` (line N)` after each key taken out.
fn without_lines(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(" (line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 7..];
        match after.find(')') {
            Some(end) if after[..end].bytes().all(|b| b.is_ascii_digit()) => {
                rest = &after[end + 1..]
            }
            _ => {
                out.push_str(" (line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
