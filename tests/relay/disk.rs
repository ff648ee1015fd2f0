//! A full disk: the client gets a temporary error, never a `250` for mail that is not
//! on disk, and the relay recovers when space is back. The spool lives on a tiny tmpfs
//! (mounting needs root, as the Postfix interop test does).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::client::ready;
use crate::{World, message};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "cannot mount a tmpfs at {} (the test needs root)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until a write fails; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[tokio::test]
async fn full_disk_gets_452_and_recovers() {
    let w = World::new().await;
    let spool = w.setup.dir.path().join("spool");
    let _fs = Tmpfs::mount(&spool, "4m");
    let relay = w.setup.start().await;
    let filler = fill(&spool);

    let mut c = ready(relay.addr).await;
    c.begin_data("a@sender.test", &["b@dest.test"]).await;
    c.send(message("no room", &"x".repeat(8000))).await;
    c.send("\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");

    std::fs::remove_file(filler).unwrap();
    c.send_mail(
        "a@sender.test",
        &["b@dest.test"],
        &message("room again", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: room again"));
    assert_eq!(
        w.dest.messages().len(),
        1,
        "the refused message must not be delivered"
    );
}

/// One transaction; the reply to the end of DATA.
async fn try_send(relay: std::net::SocketAddr, subject: &str) -> String {
    let mut c = ready(relay).await;
    c.begin_data("a@sender.test", &["b@dest.test"]).await;
    c.send(message(subject, "x\r\n")).await;
    c.send("\r\n.\r\n").await;
    c.reply().await
}

/// The disk fills while messages are queued: each is delivered once (a completion that
/// cannot be written is kept in memory and written later), new mail gets 452; when space
/// returns new mail is accepted again without a restart, and a restart sends nothing
/// again.
#[tokio::test]
async fn a_full_disk_heals_without_restart_and_nothing_goes_out_twice() {
    let w = World::new().await;
    let spool = w.setup.dir.path().join("spool");
    let _fs = Tmpfs::mount(&spool, "8m");
    // The destination defers at first: the messages wait in the queue.
    w.dest
        .behave(|b| b.data_always = Some("451 4.3.0 try again later".into()));
    let relay = w.setup.start().await;
    for i in 0..3 {
        assert!(
            try_send(relay.addr, &format!("queued-{i}"))
                .await
                .starts_with("250")
        );
    }
    relay.log_count("verdict=transient", 3).await;
    let filler = fill(&spool);
    w.dest.behave(|b| b.data_always = None);
    // Each is delivered; its completion is recorded, or (when the commit fails for want
    // of room) kept in memory and tried again every 2 s: either way, it goes out once.
    w.dest.wait_for(3).await;
    // Settled: each delivered message is removed, or failed to record its removal at
    // least twice (a retry from memory, which must not deliver it again).
    let settled = |log: &str| {
        let delivered: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("verdict=delivered"))
            .filter_map(|l| l.split("queue_id=").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        let lines_for = |needle: &str, id: &str| {
            log.lines()
                .filter(|l| l.contains(needle) && l.contains(&format!("queue_id={id}")))
                .count()
        };
        delivered.len() >= 3
            && delivered.iter().all(|id| {
                lines_for("removed: every recipient is final", id) == 1
                    || lines_for("cannot record the attempt's outcome", id) >= 2
            })
    };
    crate::support::eventually(|| settled(&relay.log()), || relay.log()).await;
    assert_eq!(
        w.dest.messages().len(),
        3,
        "delivered again while the disk was full"
    );
    assert_eq!(relay.log().matches("verdict=delivered").count(), 3);
    let mut c = ready(relay.addr).await;
    c.begin_data("a@sender.test", &["b@dest.test"]).await;
    c.send(message("no room", &"x".repeat(64 * 1024))).await;
    c.send("\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");

    std::fs::remove_file(filler).unwrap();
    // Accepted again within seconds, without a restart.
    let mut accepted = false;
    for _ in 0..50 {
        if try_send(relay.addr, "room again").await.starts_with("250") {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(accepted, "{}", relay.log());
    w.dest.wait_for(4).await;
    relay
        .log_count("removed: every recipient is final", 4)
        .await;
    assert_eq!(w.dest.messages().len(), 4, "{:#?}", w.dest.messages());

    // The completions were written: a restart has nothing to send.
    relay.kill().await;
    let relay = w.setup.start().await;
    let log = relay.log_with("listening").await;
    assert!(!log.contains("recovered spooled messages"), "{log}");
    assert_eq!(w.dest.messages().len(), 4);
}
