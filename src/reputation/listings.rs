//! Listing state: per (egress IP, list) the last known answer, since when, and whether
//! the last check failed; per list whether it is healthy; each IP's standing from them.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::dnsbl::{Finding, ListedCode};
use super::state::{Reputation, State};
use super::store::StoreError;
use crate::config::{BlocklistConfig, Severity};
use crate::egress::Standing;

/// The last known state of one IP on one list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListingState {
    /// Never successfully checked.
    Unknown,
    /// Checked, and on no list.
    Clean,
    /// On the list.
    Listed {
        /// The list's answers, with what each means.
        codes: Vec<ListedCode>,
        /// The list's TXT record, which usually says why and where to ask for removal.
        reason: Option<String>,
        /// Unix seconds when this listing was first seen, and last confirmed.
        first_seen: u64,
        /// Unix seconds when the listing was last confirmed.
        last_seen: u64,
    },
}

/// A refresh that could not get an answer; the state is then the last known one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckError {
    /// What went wrong.
    pub cause: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// One egress IP on one list.
pub struct ListingRecord {
    /// The egress IP.
    pub ip: IpAddr,
    /// The list's zone.
    pub zone: String,
    /// The last answer that meant something.
    pub state: ListingState,
    /// Unix seconds of the last check that got an answer.
    pub last_checked: Option<u64>,
    /// The last check failed: the state above is older.
    pub error: Option<CheckError>,
}

/// Whether a list can be believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHealth {
    /// The list's zone.
    pub zone: String,
    /// Why the list is ignored (it failed its test points), since when.
    pub broken: Option<CheckError>,
    /// The test points could not be asked at the last refresh.
    pub error: Option<CheckError>,
    /// Unix seconds of the last refresh that reached the list.
    pub last_checked: Option<u64>,
}

/// The raw results of one refresh, applied by [`Reputation::apply`] (and shared with the
/// other nodes of a cluster as they are).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckOutcome {
    /// Per list zone: `Ok(None)` healthy, `Ok(Some(cause))` broken, `Err` not reachable.
    pub health: Vec<(String, Result<Option<String>, String>)>,
    /// Per (IP, zone): the finding with the TXT reason, or why there was no answer.
    pub findings: Vec<(IpAddr, String, FindingResult)>,
}

pub type FindingResult = Result<(Finding, Option<String>), String>;

impl Reputation {
    /// The standing of `ip`: the worst severity of the healthy lists it is on.
    pub fn standing(&self, ip: IpAddr) -> Standing {
        self.lock()
            .listed
            .get(&ip)
            .copied()
            .unwrap_or(Standing::Clean)
    }

    /// The listings that make `ip` unusable, for log lines and deferral reasons.
    pub fn describe(&self, ip: IpAddr) -> Vec<String> {
        let state = self.lock();
        let mut out = Vec::new();
        for list in self.lists().iter() {
            if state
                .health
                .get(&list.zone)
                .is_some_and(|h| h.broken.is_some())
            {
                continue;
            }
            if let Some(ListingRecord {
                state: ListingState::Listed { codes, .. },
                ..
            }) = state.records.get(&(ip, list.zone.clone()))
            {
                let codes: Vec<String> = codes
                    .iter()
                    .map(|c| format!("{} {}", c.code, c.meaning))
                    .collect();
                out.push(format!("{} ({})", list.zone, codes.join(", ")));
            }
        }
        out
    }

    /// Applies one refresh: updates every record, logs each change once, persists.
    ///
    /// # Errors
    /// The state could not be persisted (it is still updated in memory).
    pub fn apply(&self, outcome: CheckOutcome) -> Result<(), StoreError> {
        let now = self.shared.clock.now();
        let lists = self.lists();
        let mut improved = false;
        // Sent once the state's lock is released.
        let mut alerts: Vec<(&'static str, Option<IpAddr>, String, String)> = Vec::new();
        let report = {
            let mut state = self.lock();
            for (zone, result) in outcome.health {
                let list = lists.iter().find(|l| l.zone == zone);
                let h = state
                    .health
                    .entry(zone.clone())
                    .or_insert_with(|| ListHealth {
                        zone: zone.clone(),
                        broken: None,
                        error: None,
                        last_checked: None,
                    });
                match result {
                    Ok(None) => {
                        if h.broken.take().is_some() {
                            tracing::info!(list = %zone, "blocklist answers its test points again; using it");
                        }
                        h.error = None;
                        h.last_checked = Some(now);
                    }
                    Ok(Some(cause)) => {
                        if h.broken.is_none() {
                            improved = true;
                            tracing::error!(
                                list = %zone,
                                name = list.map(|l| l.display_name()).unwrap_or(""),
                                cause = %cause,
                                "blocklist is broken; ignoring its answers until it recovers"
                            );
                            alerts.push((
                                "list-broken",
                                None,
                                zone.clone(),
                                format!("blocklist {zone} is broken and ignored: {cause}"),
                            ));
                            h.broken = Some(CheckError { cause, at: now });
                        }
                        h.error = None;
                        h.last_checked = Some(now);
                    }
                    Err(cause) => {
                        if h.error.is_none() {
                            tracing::warn!(list = %zone, cause = %cause, "cannot check blocklist test points; keeping last known state");
                        }
                        h.error = Some(CheckError { cause, at: now });
                    }
                }
            }
            for (ip, zone, result) in outcome.findings {
                let list = lists.iter().find(|l| l.zone == zone);
                let removal = list.and_then(|l| l.removal_url.clone()).unwrap_or_default();
                let r = state
                    .records
                    .entry((ip, zone.clone()))
                    .or_insert_with(|| ListingRecord {
                        ip,
                        zone: zone.clone(),
                        state: ListingState::Unknown,
                        last_checked: None,
                        error: None,
                    });
                match result {
                    Ok((Finding::Clean, _)) => {
                        if let ListingState::Listed { first_seen, .. } = &r.state {
                            improved = true;
                            tracing::info!(ip = %ip, list = %zone, listed_since = first_seen, "egress IP delisted");
                            alerts.push((
                                "delisted",
                                Some(ip),
                                zone.clone(),
                                format!("{ip} is no longer listed on {zone}"),
                            ));
                        }
                        r.state = ListingState::Clean;
                        r.last_checked = Some(now);
                        r.error = None;
                    }
                    Ok((Finding::Listed { codes }, reason)) => {
                        let first_seen = match &r.state {
                            ListingState::Listed { first_seen, .. } => *first_seen,
                            _ => {
                                let shown: Vec<String> = codes
                                    .iter()
                                    .map(|c| format!("{} {}", c.code, c.meaning))
                                    .collect();
                                tracing::warn!(
                                    ip = %ip,
                                    list = %zone,
                                    code = %shown.join(", "),
                                    reason = reason.as_deref().unwrap_or("-"),
                                    removal = %removal,
                                    "egress IP listed"
                                );
                                alerts.push((
                                    "listed",
                                    Some(ip),
                                    zone.clone(),
                                    format!(
                                        "{ip} is listed on {zone}: {}; reason: {}; removal: {}",
                                        shown.join(", "),
                                        reason.as_deref().unwrap_or("-"),
                                        if removal.is_empty() { "-" } else { &removal }
                                    ),
                                ));
                                now
                            }
                        };
                        r.state = ListingState::Listed {
                            codes,
                            reason,
                            first_seen,
                            last_seen: now,
                        };
                        r.last_checked = Some(now);
                        r.error = None;
                    }
                    Ok((Finding::Error { cause }, _)) | Err(cause) => {
                        if r.error.is_none() {
                            tracing::warn!(ip = %ip, list = %zone, cause = %cause, "blocklist query failed; keeping last known state");
                        }
                        r.error = Some(CheckError { cause, at: now });
                    }
                }
            }
            state.listed = compute_listed(&lists, &state);
            state.report()
        };
        if improved {
            self.shared.improved.send_modify(|n| *n += 1);
        }
        for (event, ip, subject, text) in alerts {
            self.alert(event, ip, Some(subject), text);
        }
        self.persist(&report)
    }
}

/// Each IP's standing from the listings of the healthy lists.
pub(super) fn compute_listed(
    lists: &[BlocklistConfig],
    state: &State,
) -> HashMap<IpAddr, Standing> {
    let mut listed: HashMap<IpAddr, Standing> = HashMap::new();
    for list in lists {
        if state
            .health
            .get(&list.zone)
            .is_some_and(|h| h.broken.is_some())
        {
            continue;
        }
        let severity = match list.severity {
            Severity::Hard => Standing::Hard,
            Severity::Soft => Standing::Soft,
        };
        for r in state.records.values() {
            if r.zone == list.zone && matches!(r.state, ListingState::Listed { .. }) {
                let e = listed.entry(r.ip).or_insert(Standing::Clean);
                *e = (*e).max(severity);
            }
        }
    }
    // An IP without forward-confirmed reverse DNS, when the operator requires it, is as
    // good as hard-listed: receivers that check refuse it everywhere.
    for ip in &state.no_rdns {
        listed.insert(*ip, Standing::Hard);
    }
    listed
}
