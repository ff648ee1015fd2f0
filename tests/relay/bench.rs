//! The end-to-end benchmark script runs (on a tiny load) and reports its three lines.
//! It asserts nothing about speed: timing goals live in the benchmark, not in tests.

use std::process::Command;

#[test]
fn benchmark_script_reports_ceiling_sidestep_and_postfix() {
    for tool in ["postfix", "dnsmasq", "smtp-source"] {
        crate::support::require(tool);
    }
    let sinks_before = live_processes("smtp-sink");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e.sh");
    let out = Command::new("bash")
        .arg(script)
        .args([
            "--messages",
            "50",
            "--sessions",
            "5",
            "--latency-messages",
            "20",
        ])
        .args(["--sidestep", env!("CARGO_BIN_EXE_sidestep")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rate = regex::Regex::new(
        r"(?m)^(ceiling|sidestep|postfix) +accept +[0-9.]+ msg/s +end-to-end +[0-9.]+ msg/s",
    )
    .unwrap();
    let lines: Vec<&str> = rate
        .captures_iter(&text)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert_eq!(lines, ["ceiling", "sidestep", "postfix"], "{text}");
    assert!(text.contains("peak RSS"), "{text}");
    assert!(text.contains("ratios    sidestep/postfix"), "{text}");
    assert!(text.contains("p99"), "{text}");
    // It leaves nothing running (no other test starts smtp-sink).
    assert_eq!(live_processes("smtp-sink"), sinks_before, "{text}");
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
