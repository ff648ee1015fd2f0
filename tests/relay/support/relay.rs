//! sidestep as a child process: the real binary, a real config file, a real spool.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::PATIENCE;
use super::dns::TestDns;

/// Everything a relay under test is wired to.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub dns: TestDns,
    /// Port every destination sink listens on.
    pub smtp_port: u16,
    /// Extra TOML appended to the generated config (tests override sections with it).
    pub extra: String,
    /// Replaces the generated `[server]` relay_networks.
    pub relay_networks: String,
    /// Extra lines for the `[server]` section (limits).
    pub server: String,
    pub queue: String,
    /// Extra lines for the `[delivery]` section.
    pub delivery: String,
    /// Last octets of the egress IPs (127.0.0.N) in the default pool.
    pub egress: Vec<u8>,
    /// The `[admin]` section's lines (a port of its own per relay).
    pub admin: String,
    /// Replaces the `[dns]` section's lines (a signed zone served by nsd, see
    /// `support::nsd`); none: the in-process [`TestDns`].
    pub resolver: Option<String>,
}

impl Setup {
    pub async fn new(smtp_port: u16) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            dns: TestDns::start().await,
            smtp_port,
            extra: String::new(),
            relay_networks: r#"["127.0.0.0/8"]"#.into(),
            server: String::new(),
            delivery: String::new(),
            egress: vec![2, 3],
            admin: "listen = \"127.0.0.1:0\"".into(),
            resolver: None,
            queue: r#"retry_initial = "200ms"
retry_max = "1s"
max_lifetime = "1h""#
                .into(),
        }
    }

    pub fn config(&self) -> String {
        format!(
            r#"[server]
listen = "127.0.0.1:0"
hostname = "relay.test"
relay_networks = {networks}
idle_timeout = "10s"
{server}

[spool]
directory = "{spool}"

[queue]
{queue}

[delivery]
port = {port}
connect_timeout = "2s"
command_timeout = "10s"
{delivery}

[dns]
{dns}

[admin]
{admin}

[[pools]]
name = "default"
{egress}
{extra}
"#,
            admin = self.admin,
            networks = self.relay_networks,
            server = self.server,
            spool = self.dir.path().join("spool").display(),
            queue = self.queue,
            delivery = self.delivery,
            port = self.smtp_port,
            dns = self.resolver.clone().unwrap_or_else(|| format!(
                "nameservers = [\"{}\"]\ntimeout = \"1s\"",
                self.dns.addr
            )),
            extra = self.extra,
            egress = self
                .egress
                .iter()
                .map(|n| format!(
                    "[[pools.egress]]\nip = \"127.0.0.{n}\"\nhelo = \"out{n}.relay.test\"\n"
                ))
                .collect::<String>(),
        )
    }

    pub async fn start(&self) -> Relay {
        Relay::start(&self.config(), self.dir.path()).await
    }

    /// The users-file line `sidestep passwd` prints for `name` with `password` (given
    /// on stdin), limited to `domains` when any.
    pub fn passwd(&self, name: &str, password: &str, domains: &[&str]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .arg("passwd")
            .arg(name)
            .args(domains.iter().flat_map(|d| ["--domain", d]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Runs `sidestep ARGS --config <this setup's file>` and returns its standard
    /// output; fails the test if the command fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("sidestep.toml"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sidestep {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// `sidestep ARGS --config …` run without blocking the test's runtime (its DNS
    /// server answers the relay meanwhile); stdout. Fails the test if the command fails.
    pub async fn cli_async(&self, args: &[&str]) -> String {
        let config = self.dir.path().join("sidestep.toml");
        let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        all.extend(["--config".into(), config.into_os_string()]);
        sidestep_async(all).await
    }

    /// [`Setup::cli`] with `--json`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.cli(&args)).unwrap()
    }
}

pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    /// The admin API, when the config turned it on.
    pub admin: Option<SocketAddr>,
    /// The implicit-TLS listener, when `listen_tls` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The bounces-only listener, when `[bounces] listen` is set.
    pub bounce_addr: Option<SocketAddr>,
    log: PathBuf,
}

impl Relay {
    pub async fn start(config: &str, dir: &Path) -> Relay {
        let path = dir.join("sidestep.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("relay-{}.log", rand::random::<u32>()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidestep"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "sidestep=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut admin = None;
        let mut tls_addr = None;
        let mut bounce_addr = None;
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.strip_prefix("sidestep admin on ") {
                    admin = Some(addr.parse::<SocketAddr>().unwrap());
                }
                if let Some(addr) = line.strip_prefix("sidestep listening for TLS on ") {
                    tls_addr = Some(addr.parse::<SocketAddr>().unwrap());
                }
                if let Some(addr) = line.strip_prefix("sidestep listening for bounces on ") {
                    bounce_addr = Some(addr.parse::<SocketAddr>().unwrap());
                }
                if let Some(addr) = line.strip_prefix("sidestep listening on ") {
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
            panic!(
                "sidestep exited before listening: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        })
        .await
        .expect("sidestep did not start listening");
        Relay {
            child,
            addr,
            admin,
            tls_addr,
            bounce_addr,
            log,
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash or power loss of the process.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, as a service manager stops it; returns how the process exited.
    pub async fn terminate(self) -> (std::process::ExitStatus, String) {
        self.signal("TERM").await;
        self.exited().await
    }

    /// Sends a signal (`TERM`, `INT`) and returns at once.
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the relay is running");
        let sent = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {pid}"))
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit; how it exited, and its log.
    pub async fn exited(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the relay did not stop")
            .unwrap();
        (status, self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `needle`. Lines reach the file some milliseconds after
    /// the event (the relay batches its log writes), and lines about a delivery are
    /// logged after the destination has the message: a test that saw an effect waits for
    /// the line about it.
    pub async fn log_with(&self, needle: &str) -> String {
        self.log_count(needle, 1).await
    }

    /// The log once `needle` occurs at least `n` times in it.
    pub async fn log_count(&self, needle: &str, n: usize) -> String {
        super::eventually(|| self.log().matches(needle).count() >= n, || self.log()).await;
        self.log()
    }
}

/// `sidestep ARGS` run without blocking the test's runtime; stdout. Fails the test if
/// the command fails.
pub async fn sidestep_async(args: Vec<std::ffi::OsString>) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
