//! Sessions counted per day and policy, as TLS-RPT aggregates them (RFC 8460 §4), and
//! the last session per MX host (for `sidestep tls`). Kept in memory, written to the
//! spool (`tlsrpt.json`) every few seconds and when a report goes, so a restart keeps
//! the day's counts (a crash loses at most the last few seconds).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use mail_auth::report::tlsrpt::{FailureDetails, PolicyDetails, PolicyType, ResultType, Summary};
use serde::{Deserialize, Serialize};

use super::{SessionPeer, TlsPolicyError};

/// How a session went: success, or the TLS-RPT failure type.
pub type SessionResult = Option<ResultType>;

/// One session (or one host the policy ruled out) to count.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The policy it ran under (`no-policy-found` without one).
    pub policy: PolicyType,
    /// `None`: TLS was negotiated as the policy asks.
    pub result: SessionResult,
    /// Who talked to whom.
    pub peer: SessionPeer,
    /// The error in words, for failures.
    pub detail: Option<String>,
}

/// The last session with one MX host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastSession {
    /// When (Unix seconds).
    pub at: u64,
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy: String,
    /// `success` or the failure type.
    pub result: String,
    /// The error in words.
    pub detail: Option<String>,
}

/// One policy's counts for one day: the report's `policies` entry as it will be sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// The domain the policy is of.
    pub domain: String,
    /// Type, policy string, MX patterns.
    pub policy: PolicyDetails,
    /// Sessions that succeeded and failed.
    pub success: u32,
    /// See `success`.
    pub failure: u32,
    /// Failures by type and peers (at most [`MAX_DETAILS`] kinds).
    pub details: Vec<FailureDetails>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// UTC day (days since the epoch) → `domain \0 type \0 policy` → counts.
    days: BTreeMap<u64, BTreeMap<String, PolicyCounts>>,
    /// `domain \0 mx` → last session.
    last: HashMap<String, LastSession>,
    #[serde(skip)]
    dirty: bool,
}

/// Failure kinds kept per policy and day; past them, only the totals grow.
const MAX_DETAILS: usize = 100;
/// Policies counted per day; past them, new ones are not counted (memory stays bounded).
const MAX_POLICIES: usize = 20_000;
/// MX hosts whose last session is remembered.
const MAX_LAST: usize = 20_000;

/// The counts, behind one lock (held for a map update, never across an await).
#[derive(Debug, Default)]
pub struct Outcomes {
    state: Mutex<State>,
}

/// The file in the spool.
pub const FILE: &str = "tlsrpt.json";

/// TLS-RPT's name for a result, or `success`.
pub fn result_name(r: &SessionResult) -> String {
    match r {
        None => "success".into(),
        Some(t) => serde_json::to_value(t)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "other".into()),
    }
}

fn policy_name(p: &PolicyType) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "other".into())
}

impl Outcomes {
    /// The counts saved in `dir`, or none.
    pub fn load(dir: Option<&Path>) -> Self {
        let state = dir
            .and_then(|d| std::fs::read(d.join(FILE)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn record(
        &self,
        domain: &str,
        policy_string: Vec<String>,
        mx_host: Vec<String>,
        o: Outcome,
        now: u64,
    ) {
        let mut state = self.lock();
        state.dirty = true;
        let mx_key = format!("{domain}\0{}", o.peer.mx);
        if state.last.len() >= MAX_LAST && !state.last.contains_key(&mx_key) {
            state.last.clear();
        }
        state.last.insert(
            mx_key,
            LastSession {
                at: now,
                policy: policy_name(&o.policy),
                result: result_name(&o.result),
                detail: o.detail.clone(),
            },
        );
        let day = now / 86_400;
        let key = format!(
            "{domain}\0{}\0{}",
            policy_name(&o.policy),
            policy_string.join("\n")
        );
        let today = state.days.entry(day).or_default();
        if today.len() >= MAX_POLICIES && !today.contains_key(&key) {
            return;
        }
        let counts = today.entry(key).or_insert_with(|| PolicyCounts {
            domain: domain.to_string(),
            policy: PolicyDetails {
                policy_type: o.policy,
                policy_string,
                policy_domain: domain.to_string(),
                mx_host,
            },
            success: 0,
            failure: 0,
            details: Vec::new(),
        });
        let Some(result) = o.result else {
            counts.success += 1;
            return;
        };
        counts.failure += 1;
        let same = |d: &FailureDetails| {
            d.result_type == result
                && d.sending_mta_ip == o.peer.egress
                && d.receiving_mx_hostname.as_deref() == Some(o.peer.mx.as_str())
                && d.receiving_ip == o.peer.ip
        };
        if let Some(d) = counts.details.iter_mut().find(|d| same(d)) {
            d.failed_session_count += 1;
        } else if counts.details.len() < MAX_DETAILS {
            counts.details.push(FailureDetails {
                result_type: result,
                sending_mta_ip: o.peer.egress,
                receiving_mx_hostname: (!o.peer.mx.is_empty()).then(|| o.peer.mx.clone()),
                receiving_mx_helo: None,
                receiving_ip: o.peer.ip,
                failed_session_count: 1,
                additional_information: None,
                failure_reason_code: o.detail.map(|d| d.chars().take(200).collect()),
            });
        }
    }

    /// A policy that could not be fetched counts as one failed attempt of the domain's
    /// `sts` policy, with no MX host (RFC 8460 §4.3.2.2).
    pub(super) fn fetch_failed(&self, domain: &str, kind: ResultType, error: &str, now: u64) {
        self.record(
            domain,
            Vec::new(),
            Vec::new(),
            Outcome {
                policy: PolicyType::Sts,
                result: Some(kind),
                peer: SessionPeer {
                    egress: None,
                    mx: String::new(),
                    ip: None,
                },
                detail: Some(error.to_string()),
            },
            now,
        );
    }

    /// The last session with `mx` for `domain`.
    pub fn last(&self, domain: &str, mx: &str) -> Option<LastSession> {
        self.lock().last.get(&format!("{domain}\0{mx}")).cloned()
    }

    /// The counts of `day` per domain, removed (they are being reported).
    pub fn take_day(&self, day: u64) -> BTreeMap<String, Vec<PolicyCounts>> {
        let mut state = self.lock();
        state.dirty = true;
        let mut by_domain: BTreeMap<String, Vec<PolicyCounts>> = BTreeMap::new();
        for (_, c) in state.days.remove(&day).unwrap_or_default() {
            by_domain.entry(c.domain.clone()).or_default().push(c);
        }
        by_domain
    }

    /// Days with counts, oldest first.
    pub fn days(&self) -> Vec<u64> {
        self.lock().days.keys().copied().collect()
    }

    /// Writes the counts to `dir` if they changed.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn flush(&self, dir: Option<&Path>) -> Result<(), TlsPolicyError> {
        let Some(dir) = dir else { return Ok(()) };
        let bytes = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            serde_json::to_vec(&*state).unwrap_or_default()
        };
        let path = dir.join(FILE);
        crate::spool::replace_durably(&path, &bytes)
            .map_err(|source| TlsPolicyError::Write { path, source })
    }
}

/// The summary of counts, as the report writes it.
pub fn summary(c: &PolicyCounts) -> Summary {
    Summary {
        total_success: c.success,
        total_failure: c.failure,
    }
}
