//! The durable store. A message that got `250` lives here until every recipient is final.
//!
//! One committer thread makes everything durable in batches (group commit): the bodies
//! of the messages accepted at the same moment are written to one file in `msg/` whose
//! directory entry was made durable beforehand, and fdatasynced (Postfix's discipline,
//! per batch instead of per message); then `queue.redb` (one ACID file) takes their
//! envelopes and per-recipient state, together with status updates and removals, in one
//! commit. A `250` is only sent after the batch holding the message is durable. Body
//! files are plain concatenated RFC 5322 messages; each index entry says where its body
//! is, and a file is deleted once no entry points into it.
//!
//! On start, [`Spool::open`] removes half-written files, spare empty files and files no
//! entry points to (never acknowledged), and [`Spool::recover`] hands back every indexed
//! message.

mod committer;
mod departed;
mod index;
mod message;

pub use departed::{DEPARTED_MAX, Departed, Departure};

pub use message::{
    AttemptRecord, HISTORY_MAX, LastRoute, QueueId, QueuedMessage, RecipientState, RecipientStatus,
    RemoteReply,
};

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// A message's bytes, shared by its deliveries: the buffer it was received or read into,
/// behind an `Arc` (an `Arc<[u8]>` would copy it into an allocation of its own).
pub type Body = Arc<Vec<u8>>;

const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");

/// Messages that left the spool, kept (without their bodies or history) while their late
/// bounces may come: a return-path token names a queue id, and the bounce needs the
/// sender, the recipient and where it went. Keyed by queue id, so by time: pruning is a
/// range delete.
const SENT: TableDefinition<&str, &[u8]> = TableDefinition::new("sent");

/// Everything that can go wrong below the queue.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    /// A spool file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("queue database: {0}")]
    /// The queue database refused a read or a write.
    Db(#[from] redb::Error),
    #[error("corrupt queue record {id}: {message}")]
    /// A queue record does not decode.
    Corrupt {
        /// The message.
        id: String,
        /// Why.
        message: String,
    },
    #[error("the spool committer has stopped")]
    /// The committer thread is gone (the process is going down).
    CommitterGone,
    #[error("the queue database is being reopened after an I/O error")]
    /// The database is being reopened after an I/O error.
    IndexClosed,
    /// The batch commit this change was part of failed.
    #[error("spool commit failed: {0}")]
    Commit(#[source] Arc<SpoolError>),
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
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            {
                return true;
            }
            cause = e.source();
        }
        false
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
    index: Arc<index::Index>,
    committer: committer::Handle,
    fresh: Arc<Fresh>,
    /// The messages that left lately, and how.
    departed: departed::DepartedLog,
    /// Keep a record of each message that leaves (return paths are on).
    keep_sent: std::sync::atomic::AtomicBool,
}

/// Bytes of fresh bodies kept in memory at most.
const FRESH_BUDGET: usize = 32 << 20;

/// Messages just committed, with their bodies, kept in memory for their first attempt,
/// which normally starts milliseconds later: it need not read back from disk (an index
/// read, a file open, seek and read) what was just written. Bounded in bytes; a message
/// that does not fit is read from disk as usual. Each entry is exactly the committed
/// record, and only the first attempt takes it, before anything else may change it.
struct Fresh {
    inner: Mutex<FreshInner>,
}

#[derive(Default)]
struct FreshInner {
    messages: HashMap<QueueId, (QueuedMessage, Body)>,
    bytes: usize,
}

impl Fresh {
    fn lock(&self) -> std::sync::MutexGuard<'_, FreshInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, stored: Vec<(QueuedMessage, Vec<u8>)>) {
        let mut inner = self.lock();
        for (msg, body) in stored {
            if inner.bytes + body.len() > FRESH_BUDGET {
                break;
            }
            inner.bytes += body.len();
            inner.messages.insert(msg.id.clone(), (msg, Arc::new(body)));
        }
    }

    fn take(&self, id: &QueueId) -> Option<(QueuedMessage, Body)> {
        let mut inner = self.lock();
        let entry = inner.messages.remove(id)?;
        inner.bytes -= entry.1.len();
        Some(entry)
    }
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
            // Mail is private: only the relay's user reads the spool.
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(|e| SpoolError::io(d, e))?;
        }
        let index = Arc::new(index::Index::open(&dir.join("queue.redb"))?);
        let _ = fs::set_permissions(dir.join("queue.redb"), fs::Permissions::from_mode(0o600));
        let db = index.get()?;
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
        // Which body file each entry uses; the reference counts are rebuilt from them, so
        // they can never drift from the index.
        let mut uses: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut missing = Vec::new();
        {
            let txn = db!(db.begin_read())?;
            let table = db!(txn.open_table(MESSAGES))?;
            for row in db!(table.iter())? {
                let (k, v) = db!(row)?;
                let id = k.value().to_string();
                let file = body_file(&message::decode(&id, v.value())?).to_string();
                if msg_dir.join(&file).exists() {
                    *uses.entry(file).or_default() += 1;
                } else {
                    missing.push((id, file));
                }
            }
        }
        // Bodies are deleted only after the commit that removed their last entry, so an
        // entry without its body file means damage or a hand-deleted file. The entry
        // stays: its attempts fail to read the body and it expires into a DSN, rather
        // than vanish without a word.
        for (id, file) in &missing {
            tracing::error!(queue_id = %id, file = %file, "the body file of a queued message is missing");
        }
        {
            let txn = db!(db.begin_write())?;
            {
                let mut files = db!(txn.open_table(committer::FILES))?;
                db!(files.retain(|_, _| false))?;
                for (file, n) in &uses {
                    db!(files.insert(file.as_str(), *n))?;
                }
            }
            db!(txn.commit())?;
        }
        // Spares made ahead of need, used files kept for reuse, and bodies of a batch
        // whose commit never finished (never acknowledged).
        let mut unused = 0;
        for entry in fs::read_dir(&msg_dir).map_err(|e| SpoolError::io(&msg_dir, e))? {
            let entry = entry.map_err(|e| SpoolError::io(&msg_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !uses.contains_key(&name) {
                unused += 1;
                let _ = fs::remove_file(entry.path());
            }
        }
        if unused > 0 {
            tracing::info!(files = unused, "removed spool files no entry uses");
        }
        let fresh = Arc::new(Fresh {
            inner: Mutex::new(FreshInner::default()),
        });
        drop(db);
        let committer = committer::spawn(
            index.clone(),
            msg_dir.clone(),
            tmp_dir.clone(),
            fresh.clone(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                msg_dir,
                index,
                committer,
                fresh,
                departed: Default::default(),
                keep_sent: Default::default(),
            }),
        })
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
        self.shared.committer.insert(msg.clone(), body).await
    }

    /// Rewrites a message's index entry (per-recipient status, next attempt). Shares the
    /// committer's batch commit with every other change waiting at that moment. `msg`
    /// must come from the spool ([`Spool::load`], [`Spool::take_fresh`]): its record
    /// says where the body is, and the new entry replaces the old one whole.
    ///
    /// # Errors
    /// The database write failed.
    pub async fn update(&self, msg: &QueuedMessage) -> Result<(), SpoolError> {
        self.shared
            .committer
            .update(msg.id.clone(), message::encode(msg))
            .await
    }

    /// Removes a finished message: the index entry in a (shared) commit, then the body,
    /// so a crash in between leaves only an orphan body that [`Spool::open`] deletes.
    /// `msg` comes from the spool, like [`Spool::update`]'s: it says which body file the
    /// entry uses.
    ///
    /// # Errors
    /// The database write failed.
    pub async fn remove(
        &self,
        msg: &QueuedMessage,
        departure: Departure,
        at: u64,
    ) -> Result<(), SpoolError> {
        let sent = self
            .shared
            .keep_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| {
                let mut record = msg.clone();
                record.history.clear();
                record.body = None;
                message::encode(&record)
            });
        self.shared
            .committer
            .remove(msg.id.clone(), body_file(msg).to_string(), sent)
            .await?;
        self.shared.departed.note(Departed {
            id: msg.id.clone(),
            at,
            departure,
        });
        Ok(())
    }

    /// From now on, each message that leaves is kept in the sent table (see [`SENT`])
    /// until [`Spool::prune_sent`] drops it.
    pub fn keep_sent(&self, keep: bool) {
        self.shared
            .keep_sent
            .store(keep, std::sync::atomic::Ordering::Relaxed);
    }

    /// A message's record, in the queue or, once it left, in the sent table: what a
    /// late bounce is resolved against.
    ///
    /// # Errors
    /// The database read failed or the record is corrupt.
    pub fn sent(&self, id: &QueueId) -> Result<Option<QueuedMessage>, SpoolError> {
        if let Some(live) = self.load(id)? {
            return Ok(Some(live));
        }
        let db = self.shared.index.get()?;
        let txn = db!(db.begin_read())?;
        let table = match txn.open_table(SENT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(SpoolError::Db(e.into())),
        };
        match db!(table.get(id.as_str()))? {
            Some(v) => message::decode(id.as_str(), v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Forgets the sent records of messages accepted before `before` (Unix seconds);
    /// how many went.
    ///
    /// # Errors
    /// The database write failed.
    pub fn prune_sent(&self, before: u64) -> Result<u64, SpoolError> {
        // Generated ids begin with their acceptance time in microseconds, 14 hex digits.
        let bound = format!("{:014X}", before.saturating_mul(1_000_000));
        let db = self.shared.index.get()?;
        let txn = db!(db.begin_write())?;
        let mut gone = 0;
        {
            let mut table = db!(txn.open_table(SENT))?;
            let old: Vec<String> = db!(table.range::<&str>(..bound.as_str()))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                .collect();
            for k in &old {
                db!(table.remove(k.as_str()))?;
                gone += 1;
            }
        }
        db!(txn.commit())?;
        Ok(gone)
    }

    /// How `id` left the spool, if it did lately (see [`Departed`]).
    pub fn departed(&self, id: &QueueId) -> Option<Departed> {
        self.shared.departed.find(id)
    }

    /// Whether the spool takes a write now: a small file written, synced and removed in
    /// its `tmp/` (for `/readyz`).
    ///
    /// # Errors
    /// The write failed (a full disk, a read-only file system).
    pub fn check_writable(&self) -> Result<(), SpoolError> {
        use std::io::Write;
        let dir = self.shared.msg_dir.with_file_name("tmp");
        let path = dir.join(format!(
            "ready-{}",
            QueueId::generate(crate::clock::Clock::system().now_us())
        ));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&path)?;
            f.write_all(b"ready")?;
            f.sync_data()
        };
        let result = write().map_err(|e| SpoolError::io(&path, e));
        let _ = fs::remove_file(&path);
        result
    }

    /// A message committed moments ago and its body, from memory, if it is still there
    /// (see [`Fresh`]); taking it means the caller holds the only copy of its record
    /// outside the index.
    pub fn take_fresh(&self, id: &QueueId) -> Option<(QueuedMessage, Body)> {
        self.shared.fresh.take(id)
    }

    /// The stored body of a message, exactly as it will be sent.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn load_body(&self, msg: &QueuedMessage) -> Result<Vec<u8>, SpoolError> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(body) = &msg.body else {
            let path = self.shared.msg_dir.join(body_file(msg));
            return fs::read(&path).map_err(|e| SpoolError::io(&path, e));
        };
        let path = self.shared.msg_dir.join(&body.file);
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = fs::File::open(&path)?;
            f.seek(SeekFrom::Start(body.offset))?;
            let mut out = vec![0u8; body.len as usize];
            f.read_exact(&mut out)?;
            Ok(out)
        };
        read().map_err(|e| SpoolError::io(&path, e))
    }

    /// One message's current record.
    ///
    /// # Errors
    /// The database read failed or the record is corrupt.
    pub fn load(&self, id: &QueueId) -> Result<Option<QueuedMessage>, SpoolError> {
        let db = self.shared.index.get()?;
        let txn = db!(db.begin_read())?;
        let table = db!(txn.open_table(MESSAGES))?;
        match db!(table.get(id.as_str()))? {
            Some(v) => message::decode(id.as_str(), v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// When the oldest message in the spool was accepted (Unix seconds), from the
    /// smallest key alone: queue ids begin with their acceptance time in microseconds,
    /// so this costs one lookup however deep the queue (a metrics scrape must not read
    /// every record).
    ///
    /// # Errors
    /// The database read failed.
    pub fn oldest_accepted(&self) -> Result<Option<u64>, SpoolError> {
        let db = self.shared.index.get()?;
        let txn = db!(db.begin_read())?;
        let table = db!(txn.open_table(MESSAGES))?;
        let first = db!(table.first())?;
        Ok(first.and_then(|(k, _)| QueueId::from(k.value()).accepted_at()))
    }

    /// When each message not held is due, read without keeping the records: what the
    /// scheduler needs at start, in a few dozen bytes per message however deep the
    /// queue (a full [`Spool::recover`] of a million records would need gigabytes).
    ///
    /// # Errors
    /// The database read failed or a record is corrupt.
    pub fn due_times(&self) -> Result<Vec<(u64, QueueId, Option<String>)>, SpoolError> {
        /// The fields of a record the scheduler reads; serde skips the rest.
        #[derive(serde::Deserialize)]
        struct Due {
            next_attempt_ms: u64,
            #[serde(default)]
            held: bool,
            recipients: Vec<Rcpt>,
        }
        #[derive(serde::Deserialize)]
        struct Rcpt {
            address: crate::envelope::Address,
        }
        let db = self.shared.index.get()?;
        let txn = db!(db.begin_read())?;
        let table = db!(txn.open_table(MESSAGES))?;
        let mut out = Vec::new();
        for row in db!(table.iter())? {
            let (k, v) = db!(row)?;
            let due: Due = serde_json::from_slice(v.value()).map_err(|e| SpoolError::Corrupt {
                id: k.value().to_string(),
                message: e.to_string(),
            })?;
            if !due.held {
                let domain = due
                    .recipients
                    .first()
                    .map(|r| r.address.domain().to_ascii_lowercase());
                out.push((due.next_attempt_ms, QueueId::from(k.value()), domain));
            }
        }
        Ok(out)
    }

    /// Hands every record to `f`, oldest first (generated ids sort by time), one at a
    /// time: what the operator's views need without a million records in memory at
    /// once. `f` returns `false` to stop early.
    ///
    /// # Errors
    /// The database read failed or a record is corrupt.
    pub fn visit(&self, mut f: impl FnMut(QueuedMessage) -> bool) -> Result<(), SpoolError> {
        let db = self.shared.index.get()?;
        let txn = db!(db.begin_read())?;
        let table = db!(txn.open_table(MESSAGES))?;
        for row in db!(table.iter())? {
            let (k, v) = db!(row)?;
            if !f(message::decode(k.value(), v.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Every message in the spool, for scheduling after a start.
    ///
    /// # Errors
    /// The database read failed or a record is corrupt.
    pub fn recover(&self) -> Result<Vec<QueuedMessage>, SpoolError> {
        let mut out = Vec::new();
        self.visit(|m| {
            out.push(m);
            true
        })?;
        Ok(out)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never
/// a torn one: a temporary file beside it, fsynced, renamed over it, the directory
/// fsynced. For the small state files kept next to the spool (senders, probes, the admin
/// address); readable by this user only (0600), as everything in the spool.
///
/// # Errors
/// Any step of the write failed (the old file is still in place).
pub fn replace_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The file holding a message's body: where its record says, or (records written
/// before bodies shared files) the file named after the message.
fn body_file(msg: &QueuedMessage) -> &str {
    msg.body
        .as_ref()
        .map_or(msg.id.as_str(), |b| b.file.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Address, BodyFlags, Sender};

    fn message() -> QueuedMessage {
        QueuedMessage {
            id: QueueId::generate(crate::clock::Clock::system().now_us()),
            sender: Sender::Null,
            recipients: vec![RecipientState::pending(
                Address::parse("a@b.test", false).unwrap(),
            )],
            flags: BodyFlags::default(),
            received_at: 1,
            attempts: 0,
            next_attempt_ms: 0,
            size: 3,
            client: "test".into(),
            body: None,
            held: false,
            held_reason: None,
            history: Vec::new(),
            user: None,
        }
    }

    /// The reopen after an I/O error: it waits for a reader of the old handle, and the
    /// spool reads and commits through the new one.
    #[tokio::test]
    async fn the_oldest_acceptance_comes_from_the_first_queue_id() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.oldest_accepted().unwrap(), None);
        let first = message();
        spool
            .store_message(&first, b"x\r\n".to_vec())
            .await
            .unwrap();
        let second = message();
        spool
            .store_message(&second, b"y\r\n".to_vec())
            .await
            .unwrap();
        let now = crate::clock::Clock::system().now();
        let oldest = spool.oldest_accepted().unwrap().unwrap();
        assert!(now.abs_diff(oldest) <= 2, "{oldest} vs {now}");
        assert_eq!(first.id.accepted_at(), Some(oldest));
        spool
            .remove(&first, Departure::Deleted { bounced: false }, 0)
            .await
            .unwrap();
        assert_eq!(spool.oldest_accepted().unwrap(), second.id.accepted_at());
    }

    #[tokio::test]
    async fn the_index_reopens_under_a_reader_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let msg = message();
        spool.store_message(&msg, b"hi\r\n".to_vec()).await.unwrap();
        let reader = spool.shared.index.get().unwrap();
        let held = std::thread::spawn(move || {
            let txn = reader.begin_read().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(txn);
        });
        let index = spool.shared.index.clone();
        tokio::task::spawn_blocking(move || index.reopen())
            .await
            .unwrap()
            .unwrap();
        held.join().unwrap();
        assert!(spool.load(&msg.id).unwrap().is_some());
        let other = message();
        spool
            .store_message(&other, b"x\r\n".to_vec())
            .await
            .unwrap();
        assert_eq!(spool.recover().unwrap().len(), 2);
    }

    /// Mail is private: directories 0700, bodies and the index 0600, whatever the umask.
    #[tokio::test]
    async fn spool_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("spool");
        let spool = Spool::open(&root).unwrap();
        spool
            .store_message(&message(), b"x\r\n".to_vec())
            .await
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in [root.clone(), root.join("msg"), root.join("tmp")] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&root.join("queue.redb")), 0o600);
        for f in fs::read_dir(root.join("msg")).unwrap() {
            let p = f.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        // The state files beside it (probes, senders, the admin address) too, also
        // when an older one was more open.
        let state = root.join("probes.json");
        fs::write(&state, b"{}").unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o644)).unwrap();
        replace_durably(&state, b"{}").unwrap();
        assert_eq!(mode(&state), 0o600);
    }

    #[tokio::test]
    async fn store_update_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let msg = message();
        spool.store_message(&msg, b"hi\r\n".to_vec()).await.unwrap();
        // Updates start from the stored record, which says where the body is.
        let mut msg = spool.load(&msg.id).unwrap().unwrap();
        msg.attempts = 3;
        spool.update(&msg).await.unwrap();
        assert_eq!(spool.load(&msg.id).unwrap().unwrap().attempts, 3);
        let stored = spool.load(&msg.id).unwrap().unwrap();
        assert_eq!(spool.load_body(&stored).unwrap(), b"hi\r\n");
        let other = message();
        spool
            .store_message(&other, b"x\r\n".to_vec())
            .await
            .unwrap();
        assert_eq!(spool.load(&msg.id).unwrap().unwrap().attempts, 3);
        spool
            .remove(&msg, Departure::Deleted { bounced: false }, 7)
            .await
            .unwrap();
        assert!(spool.load(&msg.id).unwrap().is_none());
        assert_eq!(spool.departed(&msg.id).map(|d| d.at), Some(7));
        assert_eq!(spool.recover().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_body_file_is_reused_once_no_entry_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let big = message();
        spool
            .store_message(&big, b"B".repeat(50_000))
            .await
            .unwrap();
        let big_file = spool.load(&big.id).unwrap().unwrap().body.unwrap().file;
        spool
            .remove(
                &spool.load(&big.id).unwrap().unwrap(),
                Departure::Deleted { bounced: false },
                0,
            )
            .await
            .unwrap();
        // The next batch overwrites the start of that file; its old bytes past the new
        // body belong to no entry.
        let small = message();
        spool
            .store_message(&small, b"small\r\n".to_vec())
            .await
            .unwrap();
        let stored = spool.load(&small.id).unwrap().unwrap();
        assert_eq!(stored.body.as_ref().unwrap().file, big_file);
        assert_eq!(spool.load_body(&stored).unwrap(), b"small\r\n");
        assert!(
            std::fs::metadata(dir.path().join("msg").join(&big_file))
                .unwrap()
                .len()
                >= 50_000
        );
    }
}
