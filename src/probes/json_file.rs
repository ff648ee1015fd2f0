//! The JSON state files of probes and complaints (`probes.json`, `complaints.json`):
//! read at start (missing: empty), written whole through `spool::replace_durably`
//! (temporary file, fsync, rename, directory fsync) after each change.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A state file exists and cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not the JSON it should be.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
}

/// The state saved at `path`, or the default when there is no file yet.
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StateFileError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateFileError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StateFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// How a state file is laid out.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Indented, for a file operators read.
    Pretty,
    /// One line, for a large one.
    Compact,
}

/// Writes `value` to `path` durably; a failure is logged (the state holds in memory and
/// the next change tries again). `what` names the state in the log (`probes`).
pub fn save<T: Serialize + ?Sized>(path: &Path, value: &T, layout: Layout, what: &str) {
    let encoded = match layout {
        Layout::Pretty => serde_json::to_vec_pretty(value),
        Layout::Compact => serde_json::to_vec(value),
    };
    let bytes = match encoded {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the {what}");
            return;
        }
    };
    if let Err(e) = crate::spool::replace_durably(path, &bytes) {
        tracing::error!(path = %path.display(), error = %e, "cannot save the {what} (they hold in memory)");
    }
}
