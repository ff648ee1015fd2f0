//! The durable store. A message that got `250` lives here until every recipient is final.
//!
//! Postfix-style files: the body is written to `tmp/`, fsynced, renamed into `msg/`, and
//! the directory fsynced; the envelope and per-recipient state go into `queue.redb` (one
//! ACID file). Concurrent sessions share the directory fsync and the redb commit: a
//! committer thread takes every message waiting at that moment into one batch (group
//! commit). A `250` is only sent after the batch holding the message is durable.
//!
//! On start, [`Spool::open`] removes half-written files and bodies the index does not
//! know (never acknowledged), and [`Spool::recover`] hands back every indexed message.

mod committer;
mod message;

pub use message::{
    QueueId, QueuedMessage, RecipientState, RecipientStatus, RemoteReply, unix_now, unix_now_ms,
};

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");

/// Everything that can go wrong below the queue.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("queue database: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt queue record {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("the spool committer has stopped")]
    CommitterGone,
}

impl SpoolError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the disk is full: the client should get a temporary error and retry.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| SpoolError::Db(redb::Error::from(e)))
    };
}

/// Cheap clonable handle to the spool.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

struct Shared {
    msg_dir: PathBuf,
    tmp_dir: PathBuf,
    db: Arc<redb::Database>,
    committer: committer::Handle,
}

impl Spool {
    /// Opens (creating if needed) the spool under `dir` and cleans up what a crash left.
    ///
    /// # Errors
    /// The directory or database cannot be created or opened.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let msg_dir = dir.join("msg");
        let tmp_dir = dir.join("tmp");
        for d in [dir, &msg_dir, &tmp_dir] {
            fs::create_dir_all(d).map_err(|e| SpoolError::io(d, e))?;
        }
        // SingleWriter: this process writes; `sidestep listings` and friends may open the
        // file read-only while the relay runs.
        let db = Arc::new(db!(redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .create(dir.join("queue.redb")))?);
        {
            let txn = db!(db.begin_write())?;
            db!(txn.open_table(MESSAGES))?;
            db!(txn.commit())?;
        }
        // A file in tmp/ was never acknowledged; a body in msg/ without an index entry was
        // renamed but its batch never committed, so it was never acknowledged either.
        for entry in fs::read_dir(&tmp_dir).map_err(|e| SpoolError::io(&tmp_dir, e))? {
            let path = entry.map_err(|e| SpoolError::io(&tmp_dir, e))?.path();
            let _ = fs::remove_file(path);
        }
        let known: std::collections::HashSet<String> = {
            let txn = db!(db.begin_read())?;
            let table = db!(txn.open_table(MESSAGES))?;
            let mut ids = std::collections::HashSet::new();
            for row in db!(table.iter())? {
                let (k, _) = db!(row)?;
                ids.insert(k.value().to_string());
            }
            ids
        };
        // An entry whose body is gone was finished: its removal was not yet durable when
        // the process stopped (see `remove`).
        let finished: Vec<&String> = known
            .iter()
            .filter(|id| !msg_dir.join(id.as_str()).exists())
            .collect();
        if !finished.is_empty() {
            let txn = db!(db.begin_write())?;
            {
                let mut table = db!(txn.open_table(MESSAGES))?;
                for id in &finished {
                    tracing::info!(queue_id = %id, "dropping the index entry of a finished message");
                    db!(table.remove(id.as_str()))?;
                }
            }
            db!(txn.commit())?;
        }
        for entry in fs::read_dir(&msg_dir).map_err(|e| SpoolError::io(&msg_dir, e))? {
            let entry = entry.map_err(|e| SpoolError::io(&msg_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::warn!(file = %entry.path().display(), "removing unacknowledged spool file");
                let _ = fs::remove_file(entry.path());
            }
        }
        let committer = committer::spawn(db.clone(), msg_dir.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                msg_dir,
                tmp_dir,
                db,
                committer,
            }),
        })
    }

    /// The state database, shared with the reputation store.
    pub fn database(&self) -> Arc<redb::Database> {
        self.shared.db.clone()
    }

    /// Makes a new message durable: body file and index entry. Returns only once both are
    /// on disk, so the caller may then acknowledge with `250`.
    ///
    /// # Errors
    /// The body or the index could not be written; the message is not stored and the
    /// client must get a temporary failure.
    pub async fn store_message(
        &self,
        msg: &QueuedMessage,
        body: Vec<u8>,
    ) -> Result<(), SpoolError> {
        let shared = self.shared.clone();
        let id = msg.id.clone();
        tokio::task::spawn_blocking(move || shared.write_body(&id, &body))
            .await
            .map_err(|_| SpoolError::CommitterGone)??;
        let record = message::encode(msg);
        let result = self.shared.committer.commit(msg.id.clone(), record).await;
        if result.is_err() {
            let _ = fs::remove_file(self.shared.msg_dir.join(msg.id.as_str()));
        }
        result
    }

    /// Rewrites a message's index entry (per-recipient status, next attempt).
    ///
    /// Not fsynced on its own: the next durable commit (the next accepted message) carries
    /// it. Lost in a crash, it can only make a recipient be tried again — a duplicate,
    /// never a loss — and it spares every delivery a serialized fsync.
    ///
    /// # Errors
    /// The database write failed.
    pub fn update(&self, msg: &QueuedMessage) -> Result<(), SpoolError> {
        let record = message::encode(msg);
        let mut txn = db!(self.shared.db.begin_write())?;
        db!(txn.set_durability(redb::Durability::None))?;
        {
            let mut table = db!(txn.open_table(MESSAGES))?;
            db!(table.insert(msg.id.as_str(), record.as_slice()))?;
        }
        db!(txn.commit())
    }

    /// Removes a finished message: index entry first, then the body, so a crash in between
    /// leaves only an orphan body that [`Spool::open`] deletes. Not fsynced on its own
    /// either (see [`Spool::update`]): if a crash loses the removal but the body is already
    /// gone, [`Spool::open`] drops the entry — only this function deletes bodies, so a
    /// missing body always means a finished message.
    ///
    /// # Errors
    /// The database write failed.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let mut txn = db!(self.shared.db.begin_write())?;
        db!(txn.set_durability(redb::Durability::None))?;
        {
            let mut table = db!(txn.open_table(MESSAGES))?;
            db!(table.remove(id.as_str()))?;
        }
        db!(txn.commit())?;
        let path = self.shared.msg_dir.join(id.as_str());
        fs::remove_file(&path).map_err(|e| SpoolError::io(&path, e))
    }

    /// The stored body of a message, exactly as it will be sent.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn load_body(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let path = self.shared.msg_dir.join(id.as_str());
        fs::read(&path).map_err(|e| SpoolError::io(&path, e))
    }

    /// One message's current record.
    ///
    /// # Errors
    /// The database read failed or the record is corrupt.
    pub fn load(&self, id: &QueueId) -> Result<Option<QueuedMessage>, SpoolError> {
        let txn = db!(self.shared.db.begin_read())?;
        let table = db!(txn.open_table(MESSAGES))?;
        match db!(table.get(id.as_str()))? {
            Some(v) => message::decode(id.as_str(), v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every message in the spool, for scheduling after a start.
    ///
    /// # Errors
    /// The database read failed or a record is corrupt.
    pub fn recover(&self) -> Result<Vec<QueuedMessage>, SpoolError> {
        let txn = db!(self.shared.db.begin_read())?;
        let table = db!(txn.open_table(MESSAGES))?;
        let mut out = Vec::new();
        for row in db!(table.iter())? {
            let (k, v) = db!(row)?;
            out.push(message::decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

impl Shared {
    /// tmp → fsync → rename into msg/. The directory fsync that makes the rename durable
    /// is done once per batch by the committer.
    fn write_body(&self, id: &QueueId, body: &[u8]) -> Result<(), SpoolError> {
        let tmp = self.tmp_dir.join(id.as_str());
        let dest = self.msg_dir.join(id.as_str());
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, &dest)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            SpoolError::io(&tmp, e)
        })
    }
}
