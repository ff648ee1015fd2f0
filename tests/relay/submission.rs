//! Senders from anywhere: STARTTLS, implicit TLS, AUTH PLAIN and LOGIN with argon2id
//! users, the sender-domain restriction, and the brute-force guard. Real clients: swaks
//! for TLS and AUTH, a raw client for what swaks cannot show.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::client::Client;
use crate::{World, message};

const OUTSIDER: &str = "127.0.0.77";

/// A world whose relay has a certificate (from a private CA, returned in PEM), a users
/// file with alice (password `s3cret`, sender domain `sender.test`) and carol (any
/// domain), and relays without login only for 127.0.0.1.
pub(crate) fn submission_world(w: &mut World) -> String {
    let (cert, key, ca) = crate::support::sink::certificate_files("relay.test");
    let dir = w.setup.dir.path();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let users = format!(
        "# users\n{}\n{}\n",
        w.setup.passwd("alice", "s3cret", &["sender.test"]),
        w.setup.passwd("carol", "hunter2", &[]),
    );
    std::fs::write(dir.join("users"), users).unwrap();
    w.setup.relay_networks = r#"["127.0.0.1/32"]"#.into();
    w.setup.server = format!(
        "tls_certificate = \"{}\"\ntls_key = \"{}\"\nlisten_tls = \"127.0.0.1:0\"",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    w.setup.extra = format!(
        "\n[auth]\nusers_file = \"{}\"\nfailure_delay = \"20ms\"\nmax_failures = 3\n",
        dir.join("users").display()
    );
    ca
}

/// swaks from an outsider address to `server` (`--tls`, or `--tlsc` for implicit TLS),
/// logging in with `auth` = (mechanism, user, password), sending from `from`.
fn submit(server: &str, tls: &str, auth: (&str, &str, &str), from: &str) -> (bool, String) {
    let (mechanism, user, password) = auth;
    swaks(&[
        "--server",
        server,
        tls,
        "--auth",
        mechanism,
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--from",
        from,
        "--to",
        "b@dest.test",
        "--header",
        "Subject: via swaks",
    ])
}

fn swaks(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("swaks")
        .args(["--helo", "client.test", "--local-interface", OUTSIDER])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn swaks_logs_in_over_starttls_and_relays_from_outside() {
    crate::support::require("swaks");
    let mut w = World::new().await;
    submission_world(&mut w);
    let relay = w.setup.start().await;
    let server = relay.addr.to_string();

    // Without logging in, an outsider relays nothing.
    let (ok, t) = swaks(&["--server", &server, "--to", "b@dest.test"]);
    assert!(!ok, "{t}");
    assert!(t.contains("554 5.7.1"), "{t}");

    let alice = ("PLAIN", "alice", "s3cret");
    let (ok, t) = submit(&server, "--tls", alice, "alice@sender.test");
    assert!(ok, "{t}");
    assert!(t.contains("235 2.7.0"), "{t}");
    let got = w.dest.wait_for(1).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("with ESMTPSA"), "{text}");
    assert!(text.contains("(authenticated as alice)"), "{text}");
    assert!(text.contains("Subject: via swaks"), "{text}");
    relay.log_with("user=alice").await;

    // LOGIN works too; alice may not send as another domain.
    let alice = ("LOGIN", "alice", "s3cret");
    let (ok, t) = submit(&server, "--tls", alice, "alice@elsewhere.test");
    assert!(!ok, "{t}");
    assert!(t.contains("235 2.7.0") && t.contains("553 5.7.1"), "{t}");

    // A wrong password is refused.
    let wrong = ("PLAIN", "carol", "wrong");
    let (ok, t) = submit(&server, "--tls", wrong, "carol@sender.test");
    assert!(!ok, "{t}");
    assert!(t.contains("535 5.7.8"), "{t}");
}

#[tokio::test]
async fn swaks_over_implicit_tls() {
    crate::support::require("swaks");
    let mut w = World::new().await;
    submission_world(&mut w);
    let relay = w.setup.start().await;
    let tls = relay.tls_addr.expect("listen_tls is set").to_string();
    let carol = ("LOGIN", "carol", "hunter2");
    let (ok, t) = submit(&tls, "--tlsc", carol, "carol@anywhere.test");
    assert!(ok, "{t}");
    let got = w.dest.wait_for(1).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("with ESMTPSA (TLSv1_3"), "{text}");

    // openssl's client too: TLS from the first byte, then the greeting and EHLO.
    crate::support::require("openssl");
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &tls, "-quiet", "-ign_eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"EHLO openssl.test\r\nQUIT\r\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("220 relay.test ESMTP"), "{text}");
    assert!(
        text.contains("250-AUTH PLAIN LOGIN") || text.contains("250 AUTH PLAIN LOGIN"),
        "{text}"
    );
    assert!(text.contains("221 2.0.0"), "{text}");
}

/// A TLS client speaking SMTP line by line, after STARTTLS on a raw [`Client`].
struct TlsClient {
    r: BufReader<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    w: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl TlsClient {
    async fn start(plain: Client, ca: &str) -> TlsClient {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("relay.test".try_into().unwrap(), plain.into_stream())
            .await
            .unwrap();
        let (r, w) = tokio::io::split(tls);
        TlsClient {
            r: BufReader::new(r),
            w,
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        let mut all = Vec::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).await.unwrap() == 0 {
                break;
            }
            let done = l.as_bytes().get(3) != Some(&b'-');
            all.push(l.trim_end().to_string());
            if done {
                break;
            }
        }
        all.join("\n")
    }
}

pub(crate) fn plain_response(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

#[tokio::test]
async fn auth_is_offered_only_under_tls_and_pipelined_plaintext_is_dropped() {
    let mut w = World::new().await;
    let ca = submission_world(&mut w);
    let relay = w.setup.start().await;
    let outsider: IpAddr = OUTSIDER.parse().unwrap();
    let mut c = Client::connect_from(outsider, relay.addr).await;
    c.expect("220").await;
    let ehlo = c.cmd("EHLO client.test", "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH in the clear: {ehlo}");
    c.cmd(
        &format!("AUTH PLAIN {}", plain_response("alice", "s3cret")),
        "538 5.7.11",
    )
    .await;
    // A command pipelined behind STARTTLS, in the clear, is never run.
    c.send("STARTTLS\r\nMAIL FROM:<injected@sender.test>\r\n")
        .await;
    c.expect("220 2.0.0").await;
    let mut t = TlsClient::start(c, &ca).await;
    let ehlo = t.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    // No MAIL was carried over from before the handshake: a new one is not nested.
    assert!(t.cmd("MAIL FROM:<x@sender.test>").await.starts_with("250"));
    assert!(
        t.cmd("RCPT TO:<b@dest.test>")
            .await
            .starts_with("554 5.7.1")
    );
    assert!(t.cmd("RSET").await.starts_with("250"));
    let reply = t
        .cmd(&format!("AUTH PLAIN {}", plain_response("alice", "s3cret")))
        .await;
    assert!(reply.starts_with("235 2.7.0"), "{reply}");
    assert!(
        t.cmd("MAIL FROM:<alice@sender.test>")
            .await
            .starts_with("250")
    );
    assert!(t.cmd("RCPT TO:<b@dest.test>").await.starts_with("250"));
    assert!(t.cmd("DATA").await.starts_with("354"));
    let reply = t
        .cmd(&format!("{}\r\n.", message("pipelined", "x").trim_end()))
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let got = w.dest.wait_for(1).await;
    assert!(got[0].mail_from.starts_with("<alice@sender.test>"));
    assert!(!relay.log().contains("injected@sender.test"));
}

#[tokio::test]
async fn password_guessing_is_slowed_then_locked_out() {
    let mut w = World::new().await;
    submission_world(&mut w);
    w.setup
        .extra
        .push_str("allow_plaintext_loopback = true\nlockout = \"1h\"\n");
    let relay = w.setup.start().await;
    let guesser: IpAddr = "127.0.0.78".parse().unwrap();
    let mut c = Client::connect_from(guesser, relay.addr).await;
    c.expect("220").await;
    let ehlo = c.cmd("EHLO guesser.test", "250").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "plaintext on loopback: {ehlo}"
    );
    for guess in ["a", "b", "c"] {
        c.cmd(
            &format!("AUTH PLAIN {}", plain_response("alice", guess)),
            "535 5.7.8",
        )
        .await;
    }
    // Locked out, even with the right password, and an unknown user is treated alike.
    c.cmd(
        &format!("AUTH PLAIN {}", plain_response("alice", "s3cret")),
        "454 4.7.0",
    )
    .await;
    relay.log_with("AUTH lockout").await;
    let admin = relay.admin.unwrap();
    let lockouts = crate::support::http_get(admin, "/api/v1/auth/lockouts").await;
    let v: serde_json::Value = serde_json::from_str(&lockouts).unwrap();
    assert_eq!(v[0]["client"], "127.0.0.78", "{v}");
    assert_eq!(v[0]["failures"], 3, "{v}");
    let metrics = crate::support::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("sidestep_auth_failures_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sidestep_auth_lockouts_total 1"),
        "{metrics}"
    );
    // Another address is not locked out: LOGIN, step by step.
    let mut other = Client::connect_from("127.0.0.79".parse().unwrap(), relay.addr).await;
    other.expect("220").await;
    other.cmd("EHLO other.test", "250").await;
    other.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    other.cmd(&B64.encode("carol"), "334 UGFzc3dvcmQ6").await;
    other.cmd(&B64.encode("hunter2"), "235 2.7.0").await;
}

#[tokio::test]
async fn a_user_added_to_the_file_can_log_in_without_a_reload() {
    let mut w = World::new().await;
    submission_world(&mut w);
    w.setup.extra.push_str("allow_plaintext_loopback = true\n");
    let relay = w.setup.start().await;
    let users = w.setup.dir.path().join("users");
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str(&w.setup.passwd("dave", "n3w-pass", &[]));
    text.push('\n');
    std::fs::write(&users, text).unwrap();
    let mut c = Client::connect_from(OUTSIDER.parse().unwrap(), relay.addr).await;
    c.expect("220").await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain_response("dave", "n3w-pass")),
        "235 2.7.0",
    )
    .await;
    relay.log_with("users file re-read").await;
}

#[tokio::test]
async fn check_config_names_bad_tls_and_users_files() {
    let mut w = World::new().await;
    let dir = w.setup.dir.path().to_path_buf();
    std::fs::write(dir.join("users"), "alice:not-a-hash\n").unwrap();
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    w.setup.server = format!("tls_certificate = \"{}\"", dir.join("cert.pem").display());
    w.setup.extra = format!(
        "\n[auth]\nusers_file = \"{}\"\n",
        dir.join("users").display()
    );
    std::fs::write(dir.join("sidestep.toml"), w.setup.config()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["check-config", "--config"])
        .arg(dir.join("sidestep.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("server.tls_key"), "{text}");
    assert!(text.contains("auth.users_file"), "{text}");
    assert!(text.contains("not an argon2 hash"), "{text}");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload() {
    let mut w = World::new().await;
    let old_ca = submission_world(&mut w);
    let relay = w.setup.start().await;
    let starttls = |relay_addr| async move {
        let mut c = Client::connect_from(OUTSIDER.parse().unwrap(), relay_addr).await;
        c.expect("220").await;
        c.cmd("EHLO client.test", "250").await;
        c.cmd("STARTTLS", "220").await;
        c
    };
    let mut t = TlsClient::start(starttls(relay.addr).await, &old_ca).await;
    assert!(t.cmd("EHLO client.test").await.contains("AUTH PLAIN LOGIN"));

    // The operator renews the certificate (from another CA) and reloads.
    let (cert, key, new_ca) = crate::support::sink::certificate_files("relay.test");
    let dir = w.setup.dir.path();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let out = w.setup.cli(&["reload"]);
    assert!(out.starts_with("reloaded"), "{out}");
    let mut t = TlsClient::start(starttls(relay.addr).await, &new_ca).await;
    assert!(t.cmd("EHLO client.test").await.contains("AUTH PLAIN LOGIN"));
}
