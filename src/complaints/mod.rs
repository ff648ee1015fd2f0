//! Complaints: the receivers' feedback loops (Yahoo CFL, Microsoft JMRP, Comcast…) send
//! an ARF report for each message a recipient marked as spam, days after it left. Read
//! from a mailbox, each report is matched to its sender (the login or envelope sender
//! domain sidestep's `Received:` line and the report name) and egress IP, counted, and
//! fed to the sender suspension: the hacked account of seed 003 is stopped by its
//! complaints even when no receiver refused it.
//!
//! - [`arf`]: reading one report (mail-parser does the MIME).
//! - `runner`: the task that reads the mailbox every interval.
//! - this file: the counts and the latest reports, persisted in `complaints.json`
//!   (a report is counted once, across restarts too).

pub mod arf;
mod runner;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use runner::{count_reports, spawn};

use crate::probes::json_file;

/// The complaint counts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ComplaintsError {
    /// `complaints.json` exists and cannot be used.
    #[error(transparent)]
    State(#[from] json_file::StateFileError),
}

/// One complaint, as `sidestep complaints` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Complaint {
    /// The report's Message-ID.
    pub report_id: String,
    /// When sidestep read it (Unix seconds).
    pub at: u64,
    /// `abuse`, `fraud`, …
    pub feedback_type: String,
    /// The reporting system.
    pub reporter: Option<String>,
    /// `user:NAME` or `domain:NAME`; none when the report names neither.
    pub sender: Option<String>,
    /// Our egress IP that sent the message.
    pub ip: Option<IpAddr>,
    /// sidestep's queue id of the message.
    pub queue_id: Option<String>,
    /// The message's Message-ID.
    pub message_id: Option<String>,
    /// When the receiver got it.
    pub arrival: Option<String>,
}

/// Complaints per sender or per egress IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// How many.
    pub complaints: u64,
    /// The latest (Unix seconds).
    pub last: u64,
}

/// What `GET /api/v1/complaints` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComplaintsView {
    /// Per sender (`user:NAME`, `domain:NAME`, or `-`).
    pub by_sender: BTreeMap<String, Tally>,
    /// Per egress IP (`-`: the report names none of ours).
    pub by_ip: BTreeMap<String, Tally>,
    /// The latest reports, newest first.
    pub reports: Vec<Complaint>,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    view: ComplaintsView,
    /// Report ids already counted (the latest few thousand).
    seen: VecDeque<String>,
}

/// Reports kept in full (the counts cover all of them).
const KEEP_REPORTS: usize = 500;
/// Report ids remembered, so that a report read again is not counted again.
const KEEP_SEEN: usize = 20_000;

/// The complaint counts, shared by the reader and the admin API.
#[derive(Clone, Default)]
pub struct Complaints {
    inner: Arc<Mutex<Stored>>,
    path: Option<PathBuf>,
}

impl Complaints {
    /// The complaints saved in `dir` (none yet: empty).
    ///
    /// # Errors
    /// `complaints.json` exists but cannot be read or parsed.
    pub fn open(dir: &Path) -> Result<Self, ComplaintsError> {
        let path = dir.join("complaints.json");
        let stored: Stored = json_file::load(&path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(stored)),
            path: Some(path),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counts and the latest reports.
    pub fn view(&self) -> ComplaintsView {
        self.lock().view.clone()
    }

    /// Whether the report `id` was counted already.
    pub fn seen(&self, id: &str) -> bool {
        self.lock().seen.iter().any(|s| s == id)
    }

    /// Counts a new complaint (a report seen before is ignored: `false`). Saves.
    pub fn add(&self, c: Complaint) -> bool {
        {
            let mut s = self.lock();
            if s.seen.iter().any(|x| *x == c.report_id) {
                return false;
            }
            s.seen.push_back(c.report_id.clone());
            if s.seen.len() > KEEP_SEEN {
                s.seen.pop_front();
            }
            let bump = |t: &mut Tally| {
                t.complaints += 1;
                t.last = t.last.max(c.at);
            };
            bump(
                s.view
                    .by_sender
                    .entry(c.sender.clone().unwrap_or_else(|| "-".into()))
                    .or_default(),
            );
            bump(
                s.view
                    .by_ip
                    .entry(c.ip.map_or_else(|| "-".into(), |ip| ip.to_string()))
                    .or_default(),
            );
            s.view.reports.insert(0, c);
            s.view.reports.truncate(KEEP_REPORTS);
        }
        self.persist();
        true
    }

    fn persist(&self) {
        let Some(path) = &self.path else {
            return;
        };
        json_file::save(
            path,
            &*self.lock(),
            json_file::Layout::Compact,
            "complaints",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complaint(id: &str, sender: &str) -> Complaint {
        Complaint {
            report_id: id.into(),
            at: 100,
            feedback_type: "abuse".into(),
            reporter: None,
            sender: Some(sender.into()),
            ip: Some("192.0.2.11".parse().unwrap()),
            queue_id: None,
            message_id: None,
            arrival: None,
        }
    }

    #[test]
    fn a_report_counts_once_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = Complaints::open(dir.path()).unwrap();
        assert!(c.add(complaint("r1", "user:shop")));
        assert!(
            !c.add(complaint("r1", "user:shop")),
            "read twice, counted once"
        );
        assert!(c.add(complaint("r2", "user:shop")));
        let again = Complaints::open(dir.path()).unwrap();
        assert!(again.seen("r1"));
        assert!(!again.add(complaint("r2", "user:shop")));
        let v = again.view();
        assert_eq!(v.by_sender["user:shop"].complaints, 2);
        assert_eq!(v.by_ip["192.0.2.11"].complaints, 2);
        assert_eq!(v.reports[0].report_id, "r2", "newest first");
    }
}
