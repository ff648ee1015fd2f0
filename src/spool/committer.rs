//! Group commit: one thread owns the write side of the index for new messages and commits
//! everything that is waiting in one transaction, after one fsync of `msg/`. With N
//! sessions finishing DATA at once, that is one directory fsync and one redb commit
//! instead of N of each.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{MESSAGES, QueueId, SpoolError};

type Reply = oneshot::Sender<Result<(), String>>;

struct Job {
    id: QueueId,
    record: Vec<u8>,
    reply: Reply,
}

#[derive(Clone)]
pub(super) struct Handle {
    tx: mpsc::Sender<Job>,
}

impl Handle {
    pub(super) async fn commit(&self, id: QueueId, record: Vec<u8>) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { id, record, reply })
            .map_err(|_| SpoolError::CommitterGone)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(SpoolError::Io {
                path: PathBuf::from("queue.redb"),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(SpoolError::CommitterGone),
        }
    }
}

pub(super) fn spawn(db: Arc<redb::Database>, msg_dir: PathBuf) -> Handle {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("spool-commit".into())
        .spawn(move || {
            // Opened once: reopening the directory for every batch costs an openat that
            // queues behind the journal on a busy disk.
            let mut dir = std::fs::File::open(&msg_dir).ok();
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                if dir.is_none() {
                    dir = std::fs::File::open(&msg_dir).ok();
                }
                let result =
                    commit_batch(&db, &msg_dir, dir.as_ref(), &batch).map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(error = %e, messages = batch.len(), "spool commit failed");
                }
                for job in batch {
                    let _ = job.reply.send(result.clone());
                }
            }
        })
        .expect("spawning the spool committer thread");
    Handle { tx }
}

fn commit_batch(
    db: &redb::Database,
    msg_dir: &PathBuf,
    dir: Option<&std::fs::File>,
    batch: &[Job],
) -> Result<(), SpoolError> {
    // The renames into msg/ are durable once the directory is.
    match dir {
        Some(d) => d.sync_all(),
        None => std::fs::File::open(msg_dir).and_then(|d| d.sync_all()),
    }
    .map_err(|e| SpoolError::io(msg_dir, e))?;
    let txn = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut table = txn.open_table(MESSAGES).map_err(redb::Error::from)?;
        for job in batch {
            table
                .insert(job.id.as_str(), job.record.as_slice())
                .map_err(redb::Error::from)?;
        }
    }
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}
