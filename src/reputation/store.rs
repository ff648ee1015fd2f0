//! Listing state in a redb file of its own in the spool directory, so it survives
//! restarts and `sidestep listings` can read it while the relay runs.
//!
//! Not in the queue's file: a database other processes may open must commit in two
//! phases (two fdatasyncs and a locked header rewrite), which the queue, committing on
//! every `250`, cannot afford; listing state changes a few times a minute.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use serde::{Deserialize, Serialize};

use super::blocks::Block;
use super::learned::LearnedReply;
use super::listings::{ListHealth, ListingRecord};

/// The file, in the spool directory.
const FILE: &str = "reputation.redb";

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("listings");
const HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("list_health");
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
const LEARNED: TableDefinition<&str, &[u8]> = TableDefinition::new("learned_replies");

/// Everything the operator is shown: the lists and every record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationReport {
    /// Each list's health.
    pub health: Vec<ListHealth>,
    /// Each (egress IP, list).
    pub records: Vec<ListingRecord>,
    #[serde(default)]
    /// Each block learned from destinations.
    pub blocks: Vec<Block>,
    /// Refusals a second egress IP got past (see [`super::learned`]).
    #[serde(default)]
    pub learned: Vec<LearnedReply>,
    /// Each egress IP's reverse DNS as last checked (not persisted: checked at start).
    #[serde(default)]
    pub hygiene: Vec<super::Hygiene>,
}

/// Reputation state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reputation state {path}: {source}")]
    /// The state file cannot be opened.
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("reputation state: {0}")]
    /// The database refused a read or a write.
    Db(#[source] redb::Error),
    #[error("reputation state: corrupt row {key}: {source}")]
    /// A row does not decode.
    Corrupt {
        /// Its key.
        key: String,
        #[source]
        /// Why.
        source: serde_json::Error,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

fn corrupt(key: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        source,
    }
}

pub(super) fn load(db: &impl ReadableDatabase) -> Result<ReputationReport, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    Ok(ReputationReport {
        records: read_table(&txn, RECORDS)?,
        health: read_table(&txn, HEALTH)?,
        blocks: read_table(&txn, BLOCKS)?,
        learned: read_table(&txn, LEARNED)?,
        hygiene: Vec::new(),
    })
}

/// Every row of a JSON-valued table; a table not created yet is empty.
fn read_table<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?);
    }
    Ok(out)
}

/// Opens (creating) the state file in `spool_dir` for this process to write, while
/// other processes may read it.
///
/// # Errors
/// The file cannot be created or opened (another relay holds it, or it is corrupt).
pub(super) fn open(spool_dir: &Path) -> Result<redb::Database, StoreError> {
    let db = redb::Database::builder()
        .set_cache_size(16 * 1024 * 1024)
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .create(spool_dir.join(FILE))
        .map_err(db_err)?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(spool_dir.join(FILE), std::fs::Permissions::from_mode(0o600));
    Ok(db)
}

pub(super) fn save(db: &redb::Database, report: &ReputationReport) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut records = txn.open_table(RECORDS).map_err(db_err)?;
        for r in &report.records {
            let key = format!("{} {}", r.ip, r.zone);
            let value = serde_json::to_vec(r).expect("listing records serialize");
            records
                .insert(key.as_str(), value.as_slice())
                .map_err(db_err)?;
        }
        let mut health = txn.open_table(HEALTH).map_err(db_err)?;
        for h in &report.health {
            let value = serde_json::to_vec(h).expect("list health serializes");
            health
                .insert(h.zone.as_str(), value.as_slice())
                .map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}

/// Writes (or, with `None`, deletes) one block.
pub(super) fn save_block(
    db: &redb::Database,
    key: (&std::net::IpAddr, &crate::site::Site),
    block: Option<&Block>,
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut blocks = txn.open_table(BLOCKS).map_err(db_err)?;
        let k = format!("{} {}", key.0, key.1);
        match block {
            Some(b) => {
                let value = serde_json::to_vec(b).expect("blocks serialize");
                blocks
                    .insert(k.as_str(), value.as_slice())
                    .map_err(db_err)?;
            }
            None => {
                blocks.remove(k.as_str()).map_err(db_err)?;
            }
        }
    }
    txn.commit().map_err(db_err)
}

/// Writes one learned reply under its wording key.
pub(super) fn save_learned(
    db: &redb::Database,
    key: &str,
    learned: &super::LearnedReply,
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut table = txn.open_table(LEARNED).map_err(db_err)?;
        let value = serde_json::to_vec(learned).expect("learned replies serialize");
        table.insert(key, value.as_slice()).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// Reads the state from the spool directory of a running (or stopped) relay, read-only.
///
/// # Errors
/// The spool has no database yet, or it cannot be read.
pub fn read_report(spool_dir: &Path) -> Result<ReputationReport, StoreError> {
    let path = spool_dir.join(FILE);
    let db = redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open_read_only(&path)
        .map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Io {
                path: path.clone(),
                source: io,
            },
            other => db_err(other),
        })?;
    load(&db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::ListHealth;

    #[test]
    fn a_reader_in_another_handle_sees_the_latest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        let mut report = ReputationReport::default();
        report.health.push(ListHealth {
            zone: "one.test".into(),
            broken: None,
            error: None,
            last_checked: Some(1),
        });
        save(&db, &report).unwrap();
        assert_eq!(read_report(dir.path()).unwrap().health.len(), 1);
        report.health.push(ListHealth {
            zone: "two.test".into(),
            broken: None,
            error: None,
            last_checked: Some(2),
        });
        save(&db, &report).unwrap();
        assert_eq!(read_report(dir.path()).unwrap().health.len(), 2);
    }
}

#[cfg(test)]
mod block_tests {
    use super::*;
    use crate::reputation::{Evidence, Reputation};

    #[test]
    fn recorded_blocks_are_readable() {
        let dir = tempfile::tempdir().unwrap();
        let rep = Reputation::open(vec![], dir.path(), None).unwrap();
        let evidence = Evidence {
            reply: "550 x".into(),
            rule: "r".into(),
            at: 1,
            mx_host: None,
            mx_ip: None,
            queue_id: "q".into(),
            recipient: "a@b".into(),
            removal_url: None,
            log_line: "l".into(),
            late: false,
        };
        rep.record_block(
            "127.0.0.2".parse().unwrap(),
            &"site".into(),
            evidence,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(rep.report().blocks.len(), 1);
        assert_eq!(read_report(dir.path()).unwrap().blocks.len(), 1);
    }
}
