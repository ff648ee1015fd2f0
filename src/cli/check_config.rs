use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// `sidestep check-config [PATH]`: prints every problem, not just the first.
pub fn check_config(path: Option<&Path>) -> ExitCode {
    let config = match path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let errors = config.validate();
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
