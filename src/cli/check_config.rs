use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// `sidestep check-config [PATH]`: prints every problem, not just the first: the keys
/// and values the schema refuses, then what validation finds in the rest.
pub fn check_config(path: Option<&Path>) -> ExitCode {
    let (config, mut errors) = match path {
        Some(p) => match Config::load_collecting(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => (Config::default(), Vec::new()),
    };
    errors.extend(problems(&config, path));
    // The key files are read by the module that signs with them.
    if let Err(keys) = crate::signing::Signer::load(&config.dkim) {
        let mut keys: Vec<_> = keys
            .into_iter()
            .map(|p| crate::config::ConfigError {
                key: p.key,
                problem: p.error.to_string(),
            })
            .collect();
        if let Some(path) = path {
            crate::config::locate(path, &mut keys);
        }
        errors.extend(keys);
    }
    let name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "defaults".into());
    if errors.is_empty() {
        println!("{name}: ok");
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("{name}: {e}");
        }
        eprintln!("{name}: {} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

/// Every problem of `config`: what config itself checks, then the checks of the modules
/// that build things from it (webhook URL, TLS acceptor and users file, IMAP mailboxes,
/// Redis client), each with the line of `path` that sets its key. What makes serve and
/// reload refuse a file; check-config adds the DKIM key files (read by `serve` itself,
/// and by no other subcommand: they may be readable by the relay's user only).
pub(crate) fn problems(config: &Config, path: Option<&Path>) -> Vec<crate::config::ConfigError> {
    let mut errors = config.validate();
    errors.extend(crate::alerts::check_config(&config.alerts));
    errors.extend(crate::inbound::check_config(config));
    errors.extend(crate::probes::check_config(config));
    errors.extend(crate::cluster::check_config(&config.cluster));
    errors.extend(crate::dns::check_config(&config.dns));
    if let Some(path) = path {
        crate::config::locate(path, &mut errors);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of every problem of `toml`, sorted (config's own checks come first,
    /// then the modules').
    fn keys(toml: &str) -> Vec<String> {
        let mut keys: Vec<String> = problems(&Config::parse(toml).unwrap(), None)
            .into_iter()
            .map(|e| e.key)
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn probes_need_a_mailbox_reached_safely_and_real_seeds() {
        assert_eq!(
            keys("[[probes.seeds]]\naddress = \"seed@bell.net\"\n"),
            vec!["probes.imap"],
            "seeds without a mailbox"
        );
        assert_eq!(
            keys(
                "[probes]\nimap = \"imap://seeds@imap.example.net\"\npassword_file = \"/nonexistent/pw\"\ninterval = \"0s\"\n[[probes.seeds]]\naddress = \"not an address\"\n"
            ),
            vec![
                "probes.imap",
                "probes.interval",
                "probes.password_file",
                "probes.seeds[0].address"
            ],
            "plain IMAP off loopback, no password, zero interval, bad seed"
        );
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        assert!(
        keys(&format!(
            "[probes]\nimap = \"imap://seeds@127.0.0.1:1143\"\npassword_file = \"{}\"\n[[probes.seeds]]\naddress = \"seed@bell.net\"\n",
            pw.display()
        ))
        .is_empty()
    );
    }

    #[test]
    fn complaints_need_a_mailbox_of_their_own_or_the_probes() {
        assert_eq!(
            keys("[complaints]\nenabled = true\n"),
            vec!["complaints.imap"]
        );
        assert_eq!(
            keys(
                "[complaints]\nenabled = true\nimap = \"imap://fbl@mail.example.net\"\ninterval = \"0s\"\nfolders = []\n"
            ),
            vec![
                "complaints.folders",
                "complaints.imap",
                "complaints.interval",
                "complaints.password_file"
            ]
        );
        assert!(
            keys("[complaints]\nimap = \"nonsense\"\n").is_empty(),
            "off: not checked"
        );
    }

    #[test]
    fn cluster_needs_a_redis_url_it_can_use() {
        assert!(
            keys("[cluster]\n").is_empty(),
            "no cluster: nothing to check"
        );
        assert_eq!(
            keys("[cluster]\nredis = \"http://x\"\n"),
            vec!["cluster.redis"]
        );
        assert!(
            keys("[cluster]\nredis = \"rediss://x:6380\"\n").is_empty(),
            "TLS with the system's roots"
        );
        assert_eq!(
            keys("[cluster]\nredis = \"rediss://x:6380\"\nca_file = \"/nonexistent\"\n"),
            vec!["cluster.ca_file"]
        );
        assert_eq!(
            keys(
                "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\npassword_file = \"/nonexistent\"\n"
            ),
            vec!["cluster.password_file"]
        );
        assert!(keys("[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nnode = \"a\"\n").is_empty());
    }

    #[test]
    fn a_trust_anchor_must_hold_a_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let key = "257 3 13 RZANH7drKDY+dm/1QtUPSAXbCssfwpjq1LUl2KbvxPPGwVyLGW79kdFmw48SKQLv/RyHlnKv2EqfXgIhUJAr6Q==";
        let root = file("root.key", &format!(". IN DNSKEY {key}\n"));
        let island = file("island.key", &format!("example.com. IN DNSKEY {key}\n"));
        let with = |path: &str| keys(&format!("[dns]\ntrust_anchor = \"{path}\"\n"));
        assert!(with(&root).is_empty(), "a private root");
        assert_eq!(with(&island), vec!["dns.trust_anchor"], "no root key");
        assert_eq!(with("/nonexistent"), vec!["dns.trust_anchor"]);
        assert!(
            keys("[dns]\ndnssec = false\ntrust_anchor = \"/nonexistent\"\n").is_empty(),
            "no DNSSEC: not read"
        );
    }
}
