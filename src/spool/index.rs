//! The queue index, `queue.redb`, behind a handle that can reopen it.
//!
//! After a commit fails on an I/O error (a full disk), redb refuses every later
//! transaction ("Previous I/O error occurred. Please close and re-open the database"):
//! without a reopen, a disk that filled once would turn every new message into `451`
//! until a restart. So the committer reopens the file after a failed commit, once the
//! readers of the old handle are done, and retries the reopen with each later batch until
//! the disk has room again. Readers meanwhile get an error (the attempt is retried), never
//! a stale handle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::SpoolError;

/// How long a reopen waits for readers of the old handle to finish.
const READERS_GRACE: Duration = Duration::from_secs(5);

pub(super) struct Index {
    path: PathBuf,
    db: RwLock<Option<Arc<redb::Database>>>,
}

impl Index {
    /// Opens (creating) the index at `path`.
    ///
    /// # Errors
    /// The file cannot be created or opened.
    pub(super) fn open(path: &Path) -> Result<Self, SpoolError> {
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(open_file(path)?))),
        })
    }

    /// The open database.
    ///
    /// # Errors
    /// It is being reopened after an I/O error, or could not be yet.
    pub(super) fn get(&self) -> Result<Arc<redb::Database>, SpoolError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SpoolError::IndexClosed)
    }

    /// Closes the database and opens it again, clearing redb's memory of an I/O error.
    ///
    /// # Errors
    /// It cannot be opened yet (the disk may still be full); the next call tries again.
    pub(super) fn reopen(&self) -> Result<(), SpoolError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            // redb allows one open handle per file and process: the old one must be gone.
            let deadline = Instant::now() + READERS_GRACE;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let db = open_file(&self.path)?;
        tracing::info!(path = %self.path.display(), "queue database reopened");
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

/// Page cache of the queue database. redb's default (1 GiB) would let a deep queue's
/// index grow the process by its whole size; the working set (recent records and the
/// tree's inner pages) fits in far less.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// ExclusiveWriter: only this process opens the queue, so a commit is one fdatasync;
/// state other processes read lives in a file of its own.
fn open_file(path: &Path) -> Result<redb::Database, SpoolError> {
    redb::Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_concurrency_mode(redb::ConcurrencyMode::ExclusiveWriter)
        .create(path)
        .map_err(|e| SpoolError::Db(e.into()))
}
