//! The benchmark scripts run (on a tiny load) and report what they promise. They assert
//! nothing about speed: timing goals live in the benchmarks, not in tests.

use std::path::PathBuf;
use std::process::Command;

/// The benchmarks' mail source and sink, which `cargo test` builds with the examples.
fn benchmail() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sidestep"));
    let path = bin.parent().unwrap().join("examples/benchmail");
    assert!(path.exists(), "{} (built by cargo test)", path.display());
    path
}

/// Runs `benches/<script>` with `args` on this build's binaries; its report.
fn run(script: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(format!("{}/benches/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .args(["--sidestep", env!("CARGO_BIN_EXE_sidestep")])
        .arg("--benchmail")
        .arg(benchmail())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn benchmark_script_reports_ceiling_sidestep_and_postfix() {
    // Without --kumomta the KumoMTA rows are left out (kumod is built apart, see README).
    for tool in ["postfix", "dnsmasq", "smtp-source"] {
        crate::support::require(tool);
    }
    let sinks_before = live_processes("smtp-sink");
    let text = run(
        "e2e.sh",
        &[
            "--messages",
            "50",
            "--sessions",
            "5",
            "--latency-messages",
            "20",
            "--real-messages",
            "60",
            "--deep",
            "0",
        ],
    );
    let rate = regex::Regex::new(
        r"(?m)^(ceiling|sidestep|postfix|postfix-mx) +accept +[0-9.]+ msg/s +end-to-end +[0-9.]+ msg/s",
    )
    .unwrap();
    let lines: Vec<&str> = rate
        .captures_iter(&text)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    // Postfix doing its own MX lookups needs the bench's DNS on port 53 (127.0.0.153);
    // the script says so when that port is taken.
    let mx_skipped = text.contains("postfix-mx skipped: dnsmasq on 127.0.0.153 port 53");
    let mut expected = vec!["ceiling", "sidestep", "postfix", "sidestep", "postfix"];
    if !mx_skipped {
        expected.push("postfix-mx");
    }
    assert_eq!(
        lines, expected,
        "the simple scenario's three phases, then the realistic one's: {text}"
    );
    // CPU per message for sidestep and for the whole Postfix instance, and their ratio.
    let cpu = regex::Regex::new(r"(?m)^postfix +accept .* CPU [0-9]+ us/msg").unwrap();
    assert_eq!(cpu.find_iter(&text).count(), 2, "{text}");
    assert!(
        text.contains("CPU       realistic, per message: sidestep "),
        "{text}"
    );
    assert!(text.contains("peak RSS"), "{text}");
    assert!(text.contains("ratios    sidestep/postfix"), "{text}");
    assert!(text.contains("p99"), "{text}");
    // The realistic scenario: both relays deliver every recipient's copy exactly once
    // (sidestep rerouting what the refusing sites refuse), and the ratio is reported.
    let real = regex::Regex::new(
        r"(?m)^(sidestep|postfix|postfix-mx) +accept +[0-9.]+ msg/s +end-to-end +[0-9.]+ msg/s.* ([0-9]+)/([0-9]+) deliveries, 0 duplicates: exactly once",
    )
    .unwrap();
    let real: Vec<(String, u64)> = real
        .captures_iter(&text)
        .map(|c| (c[1].to_string(), c[2].parse().unwrap()))
        .collect();
    assert_eq!(real.len(), if mx_skipped { 2 } else { 3 }, "{text}");
    assert!(real.iter().all(|(_, n)| *n >= 60), "{text}");
    assert!(
        text.contains("ratios    realistic sidestep/postfix"),
        "{text}"
    );
    // It leaves nothing running (no other test starts smtp-sink).
    assert_eq!(live_processes("smtp-sink"), sinks_before, "{text}");
}

#[test]
fn deep_queue_script_reports_fill_fairness_restart_and_an_exact_drain() {
    crate::support::require("dnsmasq");
    let text = run(
        "deepqueue.sh",
        &[
            "--messages",
            "300",
            "--sessions",
            "4",
            "--probe",
            "2s",
            "--watch",
            "5",
        ],
    );
    for line in ["fill ", "waves ", "summary ", "dead site ", "restart "] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(
        text.contains("GET /api/v1/queue: ") && text.contains("for 300 messages"),
        "{text}"
    );
    assert!(text.contains("p99 ratio"), "{text}");
    assert!(
        text.contains("site back: 300 of 300 delivered") && text.contains(", 0 duplicates"),
        "{text}"
    );
}

/// Processes named `name` that are not zombies.
fn live_processes(name: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            comm.ends_with(&format!("({name}")) && !rest.starts_with('Z')
        })
        .count()
}
