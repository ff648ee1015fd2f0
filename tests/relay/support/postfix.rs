//! A private Postfix instance (its own config and queue directories, stopped on drop):
//! the MTA in front of sidestep, or a destination that accepts and bounces later.

use std::net::SocketAddr;
use std::process::Command;

use super::PATIENCE;

pub struct Postfix {
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Postfix {
    /// Postfix with smtpd on `listen` (port 0: a free one), the base settings below with
    /// `extra`'s in place of those it sets again (see [`main_cf`]).
    pub async fn start(listen: SocketAddr, extra: &str) -> Postfix {
        super::require("postfix");
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
        let port = match listen.port() {
            0 => std::net::TcpListener::bind((listen.ip(), 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            p => p,
        };
        let root_s = root.display();
        let base = format!(
            "compatibility_level = 3.6
queue_directory = {root_s}/queue
data_directory = {root_s}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.test
myorigin = pf.test
inet_interfaces = {interfaces}
inet_protocols = ipv4
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file = {root_s}/maillog
maillog_file_prefixes = {root_s}
smtp_tls_security_level = none
smtpd_tls_security_level = none
",
            // Postfix wants inet_interfaces to be an interface's address; any
            // other loopback address is reachable (Linux routes 127/8 to lo) but
            // not listed, so smtpd then binds it from master.cf alone.
            interfaces = if listen.ip() == std::net::Ipv4Addr::LOCALHOST {
                "127.0.0.1"
            } else {
                "all"
            },
        );
        std::fs::write(conf.join("main.cf"), main_cf(&base, extra)).unwrap();
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
                        .replace("SMTPD_LISTEN", &format!("{}:{port}", listen.ip()))
                } else {
                    line.to_string()
                }
            })
            .collect();
        std::fs::write(conf.join("master.cf"), master.join("\n") + "\n").unwrap();
        // Not `output()`: the master daemon inherits the pipes and keeps them open.
        let errors = root.join("start.err");
        // Through a shell that closes every inherited descriptor first: the master
        // daemon outlives this process if the test is killed, and must not keep open
        // what the test runner held (`flock /work/.build.lock` holds its lock so).
        let status = Command::new("bash")
            .arg("-c")
            .arg(
                "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done; exec postfix -c \"$0\" start",
            )
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&errors).unwrap())
            .status()
            .unwrap();
        let log = || std::fs::read_to_string(root.join("maillog")).unwrap_or_default();
        assert!(
            status.success(),
            "postfix start failed: {}{}",
            std::fs::read_to_string(&errors).unwrap_or_default(),
            log()
        );
        let addr: SocketAddr = (listen.ip(), port).into();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "postfix never listened: {}",
                log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Postfix { dir, addr }
    }

    /// Its mail log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    /// SIGTERM to the master (it stops its children), not `postfix stop`: postfix-script
    /// runs `master -t`, which logs through this instance's postlogd socket and was seen
    /// blocking there for good once postlogd was gone, hanging the test at its end.
    fn drop(&mut self) {
        let pid_file = self.dir.path().join("queue/pid/master.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let Some(pid) = pid else {
            return;
        };
        let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        for _ in 0..100 {
            if !alive() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

/// main.cf: the `base` settings `extra` does not set, then `extra`, so each parameter
/// is set once. Set twice, every Postfix program that reads main.cf warns "overriding
/// earlier entry" as it starts (postlogd too, which `maillog_file` sends them all to);
/// a `postfix start` hang was seen once with callers re-setting base parameters.
fn main_cf(base: &str, extra: &str) -> String {
    let name = |line: &str| -> Option<String> {
        let (key, _) = line.split_once('=')?;
        (!line.starts_with(char::is_whitespace) && !line.starts_with('#'))
            .then(|| key.trim().to_string())
    };
    let overridden: std::collections::HashSet<String> = extra.lines().filter_map(name).collect();
    let mut out = String::new();
    let mut skipping = false;
    for line in base.lines() {
        // A line that starts with white space continues the parameter above it.
        if !line.starts_with(char::is_whitespace) {
            skipping = name(line).is_some_and(|k| overridden.contains(&k));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    if !extra.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[test]
fn main_cf_sets_each_parameter_once() {
    let base = "myhostname = pf.test\nmydestination =\nsmtpd_relay_restrictions = permit_mynetworks,\n    reject\nalias_maps =\n";
    let extra = "myhostname = mx.late.test\nsmtpd_relay_restrictions = reject\ntransport_maps = texthash:/t\n";
    assert_eq!(
        main_cf(base, extra),
        "mydestination =\nalias_maps =\nmyhostname = mx.late.test\nsmtpd_relay_restrictions = reject\ntransport_maps = texthash:/t\n"
    );
    assert_eq!(
        main_cf(base, "relayhost = [127.0.0.9]:25"),
        format!("{base}relayhost = [127.0.0.9]:25\n")
    );
}
