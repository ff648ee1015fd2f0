//! A DNSSEC-signed zone served by a real name server: the test writes the records,
//! Debian's `ldns-keygen` makes a key, `ldns-signzone` signs the zone with it and `nsd`
//! serves it on a loopback address of its own. The relay trusts the key through
//! `[dns] trust_anchor`.
//!
//! The zone is a private root (`.`): the relay resolves through one stub-resolver list,
//! so everything it looks up (MX, addresses, TLSA, `_mta-sts`) comes from this server,
//! and a trust anchor for `.` is what `[dns] trust_anchor` means in production too (it
//! replaces the root KSKs built in). Delegations to unsigned zones, served by the same
//! nsd, give insecure answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// An nsd process serving a signed root zone (and any unsigned child zones).
pub struct SignedZone {
    pub addr: SocketAddr,
    /// The zone's key as a DNSKEY record: the file `[dns] trust_anchor` names.
    pub trust_anchor: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// What to serve.
#[derive(Default)]
pub struct Zones {
    /// Records of the signed root zone, in zone-file syntax (`name TYPE data`).
    pub signed: Vec<String>,
    /// Owner names whose RRSIG of the given type is corrupted after signing (a bogus
    /// answer: the records are there, their signature does not verify).
    pub tampered: Vec<(String, String)>,
    /// Unsigned child zones (`name`, records): delegated from the root without a DS,
    /// so their answers are provably insecure.
    pub unsigned: Vec<(String, Vec<String>)>,
}

impl SignedZone {
    pub async fn start(zones: Zones) -> SignedZone {
        for tool in ["ldns-keygen", "ldns-signzone", "nsd"] {
            super::require(tool);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        // An address of its own and a high port: a system nsd or resolver on port 53
        // of every address would take the port away.
        let ip = super::fresh_loopback();
        let port = 20_000 + rand::random::<u16>() % 40_000;
        let addr = SocketAddr::new(ip, port);
        let key = run(path, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", "."]);
        let key = key.trim().to_string();
        let mut root = vec![
            "$TTL 1".to_string(),
            ". SOA ns.test. hostmaster.test. 1 60 60 60 1".into(),
            ". NS ns.test.".into(),
            format!("ns.test. A {ip}"),
        ];
        for (name, _) in &zones.unsigned {
            root.push(format!("{name}. NS ns.test."));
        }
        root.extend(zones.signed.iter().cloned());
        std::fs::write(path.join("root.zone"), root.join("\n") + "\n").unwrap();
        run(path, "ldns-signzone", &["-o", ".", "root.zone", &key]);
        if !zones.tampered.is_empty() {
            let signed = std::fs::read_to_string(path.join("root.zone.signed")).unwrap();
            let out: Vec<String> = signed.lines().map(|l| tamper(l, &zones.tampered)).collect();
            std::fs::write(path.join("root.zone.signed"), out.join("\n") + "\n").unwrap();
        }
        let mut conf = format!(
            "server:\n  ip-address: {ip}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\nzone:\n  name: \".\"\n  zonefile: \"{d}/root.zone.signed\"\n",
            d = path.display()
        );
        for (name, records) in &zones.unsigned {
            let mut text = vec![
                "$TTL 1".to_string(),
                format!("{name}. SOA ns.test. hostmaster.test. 1 60 60 60 1"),
                format!("{name}. NS ns.test."),
            ];
            text.extend(records.iter().cloned());
            let file = path.join(format!("{name}.zone"));
            std::fs::write(&file, text.join("\n") + "\n").unwrap();
            conf += &format!(
                "zone:\n  name: \"{name}.\"\n  zonefile: \"{}\"\n",
                file.display()
            );
        }
        std::fs::write(path.join("nsd.conf"), conf).unwrap();
        let child = Command::new("nsd")
            .args(["-d", "-c"])
            .arg(path.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(path.join("nsd.err")).unwrap())
            .spawn()
            .unwrap();
        let log = path.join("nsd.log");
        super::eventually(
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("nsd started")
            },
            || {
                format!(
                    "nsd did not start: {}{}",
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(path.join("nsd.err")).unwrap_or_default()
                )
            },
        )
        .await;
        SignedZone {
            addr,
            trust_anchor: path.join(format!("{key}.key")),
            child,
            _dir: dir,
        }
    }

    /// The `[dns]` section lines that point the relay at this server and trust its key.
    pub fn dns_section(&self) -> String {
        format!(
            "nameservers = [\"{}\"]\ntimeout = \"1s\"\ntrust_anchor = \"{}\"",
            self.addr,
            self.trust_anchor.display()
        )
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        // SIGTERM: nsd's main process stops the server processes it forked (a SIGKILL
        // would leave them serving).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `tool ARGS` in `dir`; its standard output. Fails the test if it fails.
fn run(dir: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A signed zone line with its RRSIG signature corrupted if it covers one of `which`
/// (owner name, type): the last base64 character of the signature is changed.
fn tamper(line: &str, which: &[(String, String)]) -> String {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let hit = fields.len() > 5
        && fields[3] == "RRSIG"
        && which.iter().any(|(name, rtype)| {
            fields[0].trim_end_matches('.') == name.trim_end_matches('.') && fields[4] == rtype
        });
    if !hit {
        return line.to_string();
    }
    let mut sig: Vec<char> = fields[fields.len() - 1].chars().collect();
    let at = sig.len().saturating_sub(4);
    sig[at] = if sig[at] == 'A' { 'B' } else { 'A' };
    let mut out: Vec<String> = fields[..fields.len() - 1]
        .iter()
        .map(|s| s.to_string())
        .collect();
    out.push(sig.into_iter().collect());
    out.join("\t")
}
