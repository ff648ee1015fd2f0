//! Interop with real peers no one here wrote: swaks as a client, and a private Postfix
//! instance using sidestep as its relayhost. `.ci/run` installs both (Debian packages).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::World;
use crate::support::PATIENCE;

#[tokio::test]
async fn swaks_submits_with_pipelining() {
    crate::support::require("swaks");
    let w = World::new().await;
    let relay = w.setup.start().await;
    let out = tokio::process::Command::new("swaks")
        .args(["--server", &relay.addr.to_string()])
        .args(["--from", "a@sender.test", "--to", "b@dest.test,c@dest.test"])
        .args(["--helo", "swaks.test", "--pipeline"])
        .args(["--header", "Subject: from swaks"])
        .args(["--body", "sent by swaks"])
        .output()
        .await
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["b@dest.test", "c@dest.test"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Subject: from swaks") && text.contains("sent by swaks"),
        "{text}"
    );
}

/// A Postfix instance with its own config and queue directories, stopped on drop.
struct Postfix {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    addr: SocketAddr,
}

impl Postfix {
    async fn start(relayhost: SocketAddr) -> Postfix {
        crate::support::require("postfix");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Postfix daemons run as the `postfix` user and must reach the queue.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let conf = root.join("conf");
        let data = root.join("data");
        for d in [&conf, &data, &root.join("queue")] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert!(
            Command::new("chown")
                .arg("postfix")
                .arg(&data)
                .status()
                .unwrap()
                .success()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root_s = root.display();
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {root_s}/queue
data_directory = {root_s}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.test
myorigin = pf.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relayhost = [{ip}]:{rport}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file = {root_s}/maillog
maillog_file_prefixes = {root_s}
smtp_tls_security_level = none
smtpd_tls_security_level = none
",
                ip = relayhost.ip(),
                rport = relayhost.port(),
            ),
        )
        .unwrap();
        // The packaged master.cf, with smtpd on our port and no chroot (the queue is not
        // set up as a chroot jail).
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        let master: Vec<String> = master
            .lines()
            .map(|line| {
                if line.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                    let mut f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() >= 8 && f[0] == "smtp" && f[1] == "inet" {
                        f[0] = "SMTPD_LISTEN";
                    }
                    if f.len() >= 5 && f[4] == "y" {
                        f[4] = "n";
                    }
                    f.join("  ")
                        .replace("SMTPD_LISTEN", &format!("127.0.0.1:{port}"))
                } else {
                    line.to_string()
                }
            })
            .collect();
        std::fs::write(conf.join("master.cf"), master.join("\n") + "\n").unwrap();
        let status = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .status()
            .unwrap();
        let log = || std::fs::read_to_string(root.join("maillog")).unwrap_or_default();
        assert!(status.success(), "postfix start failed: {}", log());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "postfix never listened: {}",
                log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Postfix {
            _dir: dir,
            conf,
            addr,
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

#[tokio::test]
async fn postfix_relays_through_sidestep() {
    let w = World::new().await;
    let relay = w.setup.start().await;
    let postfix = Postfix::start(relay.addr).await;
    let mut c = crate::support::client::ready(postfix.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        "From: a@sender.test\r\nTo: b@dest.test\r\nSubject: via postfix\r\n\r\nhello from postfix\r\n",
    )
    .await;
    c.cmd("QUIT", "221").await;
    let got = w.dest.wait_for(1).await;
    assert_eq!(got[0].rcpts, vec!["b@dest.test"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("Subject: via postfix"), "{text}");
    // Both hops are on record: Postfix's Received line under ours.
    assert!(text.starts_with("Received: from pf.test"), "{text}");
    assert!(text.contains("by pf.test (Postfix)"), "{text}");
}
