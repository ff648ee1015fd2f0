//! `suppressions.jsonl`: one change a line, appended and fsynced (a bounce's effect is
//! durable before the bounce is acknowledged), rewritten whole at start without expired
//! or superseded lines. Appending rather than rewriting the file per change, as the
//! JSON state files do: a list of a hundred thousand addresses is megabytes, and a
//! bounce storm adds thousands an hour.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Change;

/// The suppression file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    /// It cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a change.
    #[error("{}: line {line}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which line.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

pub(super) struct Log {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Log {
    /// The file at `path` and the changes it holds (none yet: none).
    pub(super) fn open(path: &Path) -> Result<(Self, Vec<Change>), SuppressionError> {
        let io = |source| SuppressionError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut changes = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(c) => changes.push(c),
                // A crash mid-append leaves a torn last line: it was never acknowledged.
                Err(_) if i + 1 == lines.len() => {}
                Err(source) => {
                    return Err(SuppressionError::Parse {
                        path: path.to_path_buf(),
                        line: i + 1,
                        source,
                    });
                }
            }
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file: Mutex::new(None),
            },
            changes,
        ))
    }

    /// Rewrites the file as `live` (temporary file, fsync, rename).
    pub(super) fn compact(&self, live: &[Change]) -> Result<(), SuppressionError> {
        let mut text = String::new();
        for c in live {
            text.push_str(&serde_json::to_string(c).unwrap_or_default());
            text.push('\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        *file = None;
        crate::spool::replace_durably(&self.path, text.as_bytes()).map_err(|source| {
            SuppressionError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Appends one change, durably.
    pub(super) fn append(&self, change: &Change) -> Result<(), SuppressionError> {
        let io = |source| SuppressionError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(change).unwrap_or_default();
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            *file = Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(io)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)
    }
}
