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
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<b@dest.test>", "250").await;
    c.cmd("DATA", "354").await;
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
