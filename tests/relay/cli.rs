//! The operator's commands, run as the real binary.

use std::process::Command;

fn sidestep(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sidestep.toml");
    let (ok, out, err) = sidestep(&["check-config", path]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_config_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nmax_recipients = 0\n[queue]\nretry_factor = 0.1\n[delivery]\npool = \"missing\"\n",
    )
    .unwrap();
    let (ok, _, err) = sidestep(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    for key in [
        "server.max_recipients",
        "queue.retry_factor",
        "delivery.pool",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn check_config_reports_syntax_errors_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[delivery]\nprot = 25\n").unwrap();
    let (ok, _, err) = sidestep(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("prot"), "{err}");
    let (ok, _, err) = sidestep(&["check-config", "/nonexistent/sidestep.toml"]);
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn serve_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\nmax_connections = 0\n").unwrap();
    let (ok, _, err) = sidestep(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("delivery.max_connections"), "{err}");
}

#[test]
fn classify_prints_verdict_and_rule() {
    let (ok, out, err) = sidestep(&[
        "classify",
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; Error: open resolver; https://check.spamhaus.org/returnc/pub/203.0.113.9/",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "transient\treceiver-dnsbl-lookup-error\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidestep"))
        .args(["classify", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"550-5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent (S3150).\n\n452 4.2.2 mailbox full\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["verdict"], "ip-reputation");
    assert_eq!(lines[0]["rule"], "microsoft-ip-block");
    assert_eq!(lines[1]["verdict"], "transient");
}

/// The rules measured on replies they were not written from (tests/data/eval.jsonl):
/// a rule change that breaks real replies fails here.
#[test]
fn classify_eval_holds_the_accuracy_floor_on_the_evaluation_corpus() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/eval.jsonl");
    let (ok, out, err) = sidestep(&["classify", "--eval", path, "--floor", "97"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("accuracy: "), "{out}");
    assert!(out.contains("confusion matrix"), "{out}");
    let (ok, out, _) = sidestep(&["classify", "--eval", path, "--json"]);
    assert!(ok);
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (total, correct) = (e["total"].as_u64().unwrap(), e["correct"].as_u64().unwrap());
    assert!(
        total >= 200 && correct * 100 >= total * 97,
        "{correct}/{total}"
    );
    assert_eq!(
        e["misses"].as_array().unwrap().len() as u64,
        total - correct
    );
}

#[test]
fn classify_eval_fails_below_the_floor_and_names_each_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    std::fs::write(
        &path,
        concat!(
            "# a wrong label and a right one\n",
            r#"{"reply": "550 5.1.1 user unknown", "verdict": "ip-reputation"}"#,
            "\n",
            r#"{"reply": "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "verdict": "ip-reputation"}"#,
            "\n"
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let (ok, out, err) = sidestep(&["classify", "--eval", path, "--floor", "90"]);
    assert!(!ok);
    assert!(err.contains("below the floor"), "{err}");
    assert!(out.contains("accuracy: 50.0% (1 of 2 replies)"), "{out}");
    assert!(
        out.contains(
            "expected ip-reputation, got recipient by unknown-recipient: 550 5.1.1 user unknown"
        ),
        "{out}"
    );
    let (ok, _, err) = sidestep(&["classify", "--eval", "/nonexistent.jsonl"]);
    assert!(!ok && err.contains("cannot read"), "{err}");
}

/// Unknown keys and bad values are all reported in one run, with their lines, together
/// with what validation finds in the rest; `--config` and the positional form agree.
#[test]
fn check_config_reports_every_unknown_key_and_bad_value_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nmax_sesions = 3\nmax_recipients = 0\n[bogus]\nx = 1\n[queue]\nretry_factor = 0.1\nretry_initial = \"banana\"\n[delivery]\nport = \"smtp\"\npool = \"nowhere\"\nmax_connections = \"many\"\nsite_probe_interval = 300\n[admin]\ntrusted_networks = [\"127.0.0.1/32\", \"10.0.0.0/33\"]\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    for args in [
        vec!["check-config", path],
        vec!["check-config", "--config", path],
    ] {
        let (ok, _, err) = sidestep(&args);
        assert!(!ok);
        for want in [
            "server.max_sesions (line 2): unknown field `max_sesions`",
            "did you mean `max_sessions`?",
            "bogus (line 4): unknown field `bogus`",
            "queue.retry_initial (line 8): invalid duration",
            "delivery.port (line 10): invalid type",
            // Value checks name the line too, and type errors speak plainly.
            "server.max_recipients (line 3): must be at least 1",
            "queue.retry_factor (line 7): must be",
            "delivery.pool (line 11): no [[pools]] entry is named \"nowhere\"",
            "delivery.max_connections (line 12): invalid type: string \"many\", expected a whole number",
            "delivery.site_probe_interval (line 13): 300 is a bare number; expected a duration like \"5m\"",
            "admin.trusted_networks (line 15): entry [1] \"10.0.0.0/33\": invalid IP address syntax",
            "10 error(s)",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }
    // The relay refuses to start on it, naming every problem too.
    let (ok, _, err) = sidestep(&["serve", "--config", path]);
    assert!(!ok);
    assert!(
        err.contains("max_sesions") && err.contains("banana") && err.contains("port"),
        "{err}"
    );
}

/// `queue list --state` takes the states the queue has, and `--help` names them all.
#[test]
fn queue_list_refuses_a_state_it_does_not_know() {
    let (ok, _, err) = sidestep(&["queue", "list", "--state", "bogus"]);
    assert!(!ok);
    assert!(
        err.contains("invalid value 'bogus'") && err.contains("active, deferred, held"),
        "{err}"
    );
    let (ok, help, _) = sidestep(&["queue", "list", "--help"]);
    assert!(ok && help.contains("held"), "{help}");
}

/// Every flag and argument of every subcommand says what it is for in `--help`.
#[test]
fn every_flag_of_every_subcommand_has_help() {
    let (ok, top, _) = sidestep(&["--help"]);
    assert!(ok);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 7, "{top}");
    for c in &commands {
        let (ok, help, err) = sidestep(&[c, "--help"]);
        assert!(ok, "{c}: {err}");
        for line in help.lines().filter(|l| {
            let t = l.trim_start();
            l.starts_with("  ") && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['))
        }) {
            let described = line
                .trim()
                .split("  ")
                .filter(|p| !p.trim().is_empty())
                .count()
                >= 2;
            assert!(described, "`sidestep {c}`: no help for {line:?}");
        }
    }
}

/// The README's first steps work for someone who has only just cloned: the toolchain
/// comes before the first command that needs it, no bare `sidestep …` before it is on
/// the PATH, what the first run prints, where the spool is and how to stop it, and a
/// first message that stays in the queue.
#[test]
fn the_readme_first_steps_come_in_order() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let at = |needle: &str| {
        readme
            .find(needle)
            .unwrap_or_else(|| panic!("README lacks {needle:?}"))
    };
    let run = at("\n    cargo run --release -- serve\n");
    assert!(
        at("Rust 1.95") < run,
        "the toolchain comes after the command needing it"
    );
    let first_bare = readme
        .lines()
        // A command line, not what the first run prints ("sidestep listening on …").
        .position(|l| l.starts_with("    sidestep ") && !l.contains(" on 127.0.0.1:"))
        .unwrap();
    let path_note = readme
        .lines()
        .position(|l| l.contains("cargo install --path ."))
        .unwrap();
    assert!(
        path_note < first_bare,
        "`sidestep …` used before it is on the PATH"
    );
    let first_steps = &readme[run..at("## See the queue")];
    for part in [
        "sidestep listening on 127.0.0.1:2525",
        "./sidestep-spool",
        "Ctrl-C",
        "--to someone@localhost",
        "target/release/sidestep queue list",
    ] {
        assert!(first_steps.contains(part), "first steps lack {part:?}");
    }
    assert!(
        !first_steps.contains("--to someone@example.net"),
        "example.net has a null MX: that message bounces at once"
    );
}
