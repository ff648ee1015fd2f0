//! A real IMAP server for the seed mailbox: Debian's Dovecot with a private
//! configuration in a temporary directory, on a loopback port, stopped on drop. Mail is
//! "delivered" the way a local delivery agent does it: a file in the Maildir.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The owner of the mail files (Dovecot refuses to serve mail as root).
const MAIL_UID: u32 = 65534;

pub struct Dovecot {
    pub addr: SocketAddr,
    pub user: String,
    pub password_file: PathBuf,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Dovecot {
    pub async fn start(user: &str, password: &str) -> Dovecot {
        super::require("dovecot");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::os::unix::fs::chown(root.join("mail"), Some(MAIL_UID), Some(MAIL_UID)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            root.join("passwd"),
            format!("{user}:{{PLAIN}}{password}::::::\n"),
        )
        .unwrap();
        let password_file = root.join("imap.password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let r = root.display();
        let conf = format!(
            r#"base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{r}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/passwd
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_UID} home={r}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#
        );
        std::fs::write(root.join("dovecot.conf"), conf).unwrap();
        let child = std::process::Command::new(dovecot_binary())
            .args(["-F", "-c"])
            .arg(root.join("dovecot.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = Dovecot {
            addr,
            user: user.to_string(),
            password_file,
            dir,
            child,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("dovecot did not listen: {}", d.log());
    }

    /// `imap://user@127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("imap://{}@{}", self.user, self.addr)
    }

    /// Puts `message` into `folder` ("INBOX" or another, e.g. "Junk") as a delivery
    /// agent would: a new file in the Maildir.
    pub fn deliver(&self, folder: &str, message: &[u8]) {
        let home = self.dir.path().join("mail").join(&self.user);
        let maildir = if folder.eq_ignore_ascii_case("INBOX") {
            home.clone()
        } else {
            home.join(format!(".{folder}"))
        };
        for sub in [&home, &maildir] {
            for part in ["", "new", "cur", "tmp"] {
                let d = sub.join(part);
                if !d.exists() {
                    std::fs::create_dir_all(&d).unwrap();
                    std::os::unix::fs::chown(&d, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
                }
            }
        }
        let name = format!(
            "{}.{}.test",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            std::process::id()
        );
        let tmp = maildir.join("tmp").join(&name);
        std::fs::write(&tmp, message).unwrap();
        std::os::unix::fs::chown(&tmp, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
        std::fs::rename(&tmp, maildir.join("new").join(&name)).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

fn dovecot_binary() -> &'static Path {
    for p in ["/usr/sbin/dovecot", "/usr/bin/dovecot"] {
        if Path::new(p).exists() {
            return Path::new(p);
        }
    }
    Path::new("dovecot")
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
