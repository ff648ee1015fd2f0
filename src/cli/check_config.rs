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
    errors.extend(match path {
        Some(p) => config.validate_file(p),
        None => config.validate(),
    });
    // The key files are read by the module that signs with them.
    if let Err(problems) = crate::signing::Signer::load(&config.dkim) {
        errors.extend(problems.into_iter().map(|p| crate::config::ConfigError {
            key: p.key,
            problem: p.error.to_string(),
        }));
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
