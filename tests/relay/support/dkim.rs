//! DKIM from the outside: keys made with `sidestep dkim keygen`, their records served by
//! the test's DNS, and signatures checked by dkimpy (Debian's python3-dkim), which
//! fetches the keys from that same DNS server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::dns::TestDns;

/// `sidestep dkim keygen` into `dir`: the key file and the record's text (the zone
/// line's strings joined).
pub fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let out = dir.join(format!("{selector}.{domain}.pem"));
    let run = Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "keygen: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line = stdout.lines().next().unwrap();
    assert!(
        line.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT \"")),
        "{line}"
    );
    let record: String = line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    (out, record)
}

/// Serves `record` at `selector._domainkey.domain`.
pub async fn publish(dns: &TestDns, domain: &str, selector: &str, record: &str) {
    dns.add_txt(&format!("{selector}._domainkey.{domain}"), record)
        .await;
}

/// A `[[dkim.keys]]` entry.
pub fn key_entry(domain: &str, selector: &str, path: &Path, algorithm: &str) -> String {
    format!(
        "\n[[dkim.keys]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\nalgorithm = \"{algorithm}\"\n",
        path.display()
    )
}

/// One signature as dkimpy saw it.
#[derive(Debug, serde::Deserialize)]
pub struct Verified {
    pub d: String,
    pub s: String,
    pub a: String,
    /// The `h=` tag, whitespace removed.
    pub h: String,
    /// Whether an `l=` tag is present.
    pub l: bool,
    pub ok: bool,
    /// Why it failed (shown by the assertions' Debug output).
    #[allow(dead_code)]
    pub error: Option<String>,
}

/// Every DKIM signature of `message`, verified by dkimpy against the keys `dns` serves
/// (run as a child the runtime waits for: the in-process DNS server must keep answering).
pub async fn verify(dns: &TestDns, message: &[u8]) -> Vec<Verified> {
    use tokio::io::AsyncWriteExt;
    let ready = Command::new("/usr/bin/python3")
        .args(["-c", "import dkim, nacl, dns.resolver"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "dkimpy is not installed: `apt-get install python3-dkim python3-nacl`; `bash .ci/run` installs every tool the tests need"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/relay/support/dkim_verify.py");
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(dns.addr.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(message).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "dkim_verify.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
