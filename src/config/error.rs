use std::fmt;
use std::path::PathBuf;

/// One validation problem, named by the key an operator has to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `pools[0].egress[1].ip`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// The file could not be turned into a [`super::Config`] at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    /// The file is not TOML.
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Keys or values the schema refuses, every one of them.
    #[error("{}", schema_lines(path, errors))]
    Schema {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        errors: Vec<ConfigError>,
    },
}

fn schema_lines(path: &std::path::Path, errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {e}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}
