//! Listing state: per (egress IP, list) the last known answer, since when, and whether
//! the last check failed; per list whether it is healthy.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::blocks::{Block, Evidence, block_duration};
use super::dnsbl::{Finding, ListedCode};
use super::learned::{LearnedReply, wording_key};
use super::monitor::CheckOutcome;
use super::store;
use crate::config::{BlocklistConfig, BlocksConfig, Severity};
use crate::routing::Site;
use crate::spool::{SpoolError, unix_now};

/// What [`Reputation::block_now`] did, for [`Reputation::save_block`].
#[derive(Debug, Clone)]
pub struct BlockUpdate {
    pub block: Block,
    /// A new block, or a longer one (a refused canary); `false`: evidence added only.
    pub renewed: bool,
}

/// Refusals kept beyond the first while a block holds (attempts already in flight).
const MAX_LATER_EVIDENCE: usize = 8;

/// The last known state of one IP on one list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListingState {
    /// Never successfully checked.
    Unknown,
    Clean,
    Listed {
        codes: Vec<ListedCode>,
        /// The list's TXT record, which usually says why and where to ask for removal.
        reason: Option<String>,
        /// Unix seconds when this listing was first seen, and last confirmed.
        first_seen: u64,
        last_seen: u64,
    },
}

/// A refresh that could not get an answer; the state is then the last known one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckError {
    pub cause: String,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingRecord {
    pub ip: IpAddr,
    pub zone: String,
    pub state: ListingState,
    /// Unix seconds of the last check that got an answer.
    pub last_checked: Option<u64>,
    pub error: Option<CheckError>,
}

/// Whether a list can be believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHealth {
    pub zone: String,
    /// Why the list is ignored (it failed its test points), since when.
    pub broken: Option<CheckError>,
    /// The test points could not be asked at the last refresh.
    pub error: Option<CheckError>,
    pub last_checked: Option<u64>,
}

/// How usable an egress IP is, worst listing first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Clean,
    /// On a `soft` list: used only when no clean IP is left.
    Soft,
    /// On a `hard` list: not used for any destination.
    Hard,
}

/// Everything the operator is shown: the lists and every record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationReport {
    pub health: Vec<ListHealth>,
    pub records: Vec<ListingRecord>,
    #[serde(default)]
    pub blocks: Vec<Block>,
    /// Refusals a second egress IP got past (see [`super::learned`]).
    #[serde(default)]
    pub learned: Vec<LearnedReply>,
}

/// Cheap clonable handle to the listing state.
#[derive(Clone)]
pub struct Reputation {
    shared: Arc<Shared>,
}

struct Shared {
    lists: Vec<BlocklistConfig>,
    state: Mutex<State>,
    db: Option<Arc<redb::Database>>,
    /// Held while a block is written, so writes of one block land in the order of the
    /// states they write.
    persist: Mutex<()>,
    /// Bumped whenever an IP may have become usable (a delisting, a list found broken).
    improved: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    records: BTreeMap<(IpAddr, String), ListingRecord>,
    health: BTreeMap<String, ListHealth>,
    /// Keyed by site first, so routing looks up `(site, ip)` without building a key.
    blocks: HashMap<Site, HashMap<IpAddr, Block>>,
    /// Keyed by [`wording_key`].
    learned: BTreeMap<String, LearnedReply>,
    /// Each IP's standing from the listings, recomputed whenever they change: the
    /// routing decision reads it per candidate IP.
    listed: HashMap<IpAddr, Standing>,
}

impl State {
    fn report(&self) -> ReputationReport {
        ReputationReport {
            health: self.health.values().cloned().collect(),
            records: self.records.values().cloned().collect(),
            blocks: self
                .blocks
                .values()
                .flat_map(|m| m.values().cloned())
                .collect(),
            learned: self.learned.values().cloned().collect(),
        }
    }
}

impl Reputation {
    /// Loads the persisted state from its file in `spool_dir`, and keeps it there.
    ///
    /// # Errors
    /// The file cannot be opened or read.
    pub fn open(lists: Vec<BlocklistConfig>, spool_dir: &Path) -> Result<Self, SpoolError> {
        let db = Arc::new(store::open(spool_dir)?);
        let report = store::load(db.as_ref())?;
        Ok(Self::from_report(lists, report, Some(db)))
    }

    /// State kept in memory only (for one-off checks).
    pub fn in_memory(lists: Vec<BlocklistConfig>) -> Self {
        Self::from_report(lists, ReputationReport::default(), None)
    }

    fn from_report(
        lists: Vec<BlocklistConfig>,
        report: ReputationReport,
        db: Option<Arc<redb::Database>>,
    ) -> Self {
        let mut state = State::default();
        for r in report.records {
            state.records.insert((r.ip, r.zone.clone()), r);
        }
        for h in report.health {
            state.health.insert(h.zone.clone(), h);
        }
        for b in report.blocks {
            state
                .blocks
                .entry(b.site.clone())
                .or_default()
                .insert(b.ip, b);
        }
        for l in report.learned {
            state.learned.insert(wording_key(&l.reply), l);
        }
        state.listed = compute_listed(&lists, &state);
        Self {
            shared: Arc::new(Shared {
                lists,
                state: Mutex::new(state),
                db,
                persist: Mutex::new(()),
                improved: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Changes whenever an egress IP may have become usable again.
    pub fn improvements(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.improved.subscribe()
    }

    pub fn lists(&self) -> &[BlocklistConfig] {
        &self.shared.lists
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

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
        for list in &self.shared.lists {
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
    pub fn apply(&self, outcome: CheckOutcome) -> Result<(), SpoolError> {
        let now = unix_now();
        let mut improved = false;
        let report = {
            let mut state = self.lock();
            for (zone, result) in outcome.health {
                let list = self.shared.lists.iter().find(|l| l.zone == zone);
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
                let list = self.shared.lists.iter().find(|l| l.zone == zone);
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
            state.listed = compute_listed(&self.shared.lists, &state);
            state.report()
        };
        if improved {
            self.shared.improved.send_modify(|n| *n += 1);
        }
        self.persist(&report)
    }

    /// Everything known, for `sidestep listings` and `dnsbl-check`.
    pub fn report(&self) -> ReputationReport {
        self.lock().report()
    }

    fn persist(&self, report: &ReputationReport) -> Result<(), SpoolError> {
        match &self.shared.db {
            Some(db) => store::save(db, report),
            None => Ok(()),
        }
    }

    /// The standing of `ip` towards `site`: its listings, and a block the site taught us.
    /// An expired block whose canary is free counts as clean (the IP may be tried once).
    pub fn standing_for(&self, ip: IpAddr, site: &Site) -> Standing {
        let state = self.lock();
        let listed = state.listed.get(&ip).copied().unwrap_or(Standing::Clean);
        let blocked = match state.blocks.get(site).and_then(|m| m.get(&ip)) {
            Some(b) if b.expires_at > unix_now() || b.canary_in_flight => Standing::Hard,
            _ => Standing::Clean,
        };
        listed.max(blocked)
    }

    /// Like [`Reputation::standing_for`], and if the IP is clean only because its block
    /// expired, claims it as that site's one canary delivery.
    pub fn claim(&self, ip: IpAddr, site: &Site) -> Standing {
        let mut state = self.lock();
        let listed = state.listed.get(&ip).copied().unwrap_or(Standing::Clean);
        let Some(blocks) = state.blocks.get_mut(site) else {
            return listed;
        };
        let now = unix_now();
        let blocked = match blocks.get_mut(&ip) {
            Some(b) if b.expires_at > now || b.canary_in_flight => Standing::Hard,
            // A listed IP is no canary: its probe would say nothing about this site.
            Some(_) if listed != Standing::Clean => Standing::Hard,
            Some(b) => {
                b.canary_in_flight = true;
                tracing::info!(ip = %ip, site = %site, "block expired; canary delivery");
                Standing::Clean
            }
            _ => Standing::Clean,
        };
        listed.max(blocked)
    }

    /// The site refused `ip` for its reputation: keep the IP away from it, at once and in
    /// memory, so routing sees the block before anything is written (see
    /// [`Reputation::save_block`]). Only a new block or a refused canary (the block had
    /// expired) starts a run or doubles it; a refusal while the block holds comes from an
    /// attempt that started before it, and is added to the evidence without renewing it
    /// (a burst of refusals in flight is one strike).
    pub fn block_now(
        &self,
        ip: IpAddr,
        site: &Site,
        evidence: Evidence,
        config: &BlocksConfig,
    ) -> BlockUpdate {
        let now = unix_now();
        let mut state = self.lock();
        let slot = state.blocks.entry(site.clone()).or_default();
        if let Some(b) = slot.get_mut(&ip).filter(|b| b.expires_at > now) {
            if b.later.len() < MAX_LATER_EVIDENCE {
                b.later.push(evidence);
            }
            return BlockUpdate {
                block: b.clone(),
                renewed: false,
            };
        }
        let (first_seen, strikes) = match slot.get(&ip) {
            Some(b) => (b.first_seen, b.strikes + 1),
            None => (now, 0),
        };
        let block = Block {
            ip,
            site: site.clone(),
            first_seen,
            expires_at: now + block_duration(config, strikes).as_secs(),
            strikes,
            evidence,
            later: Vec::new(),
            canary_in_flight: false,
        };
        slot.insert(ip, block.clone());
        BlockUpdate {
            block,
            renewed: true,
        }
    }

    /// Writes a block [`Reputation::block_now`] made, and logs it once it is saved (the
    /// log line promises what `sidestep blocks` shows).
    ///
    /// # Errors
    /// The block could not be persisted (it holds in memory).
    pub fn save_block(&self, update: &BlockUpdate) -> Result<(), SpoolError> {
        let block = &update.block;
        self.write_block(block.ip, &block.site)?;
        if update.renewed {
            tracing::warn!(
                ip = %block.ip,
                site = %block.site,
                strikes = block.strikes,
                until = block.expires_at,
                reply = %block.evidence.reply,
                mx = block.evidence.mx_host.as_deref().unwrap_or("-"),
                removal = block.evidence.removal_url.as_deref().unwrap_or("-"),
                "egress IP blocked by destination"
            );
        } else {
            tracing::info!(
                ip = %block.ip,
                site = %block.site,
                until = block.expires_at,
                refusals = block.later.len() + 1,
                "refusal from an attempt that started before the block; added to its evidence, block not renewed"
            );
        }
        Ok(())
    }

    /// [`Reputation::block_now`] and [`Reputation::save_block`] in one call.
    ///
    /// # Errors
    /// The block could not be persisted (it holds in memory).
    pub fn record_block(
        &self,
        ip: IpAddr,
        site: &Site,
        evidence: Evidence,
        config: &BlocksConfig,
    ) -> Result<Block, SpoolError> {
        let update = self.block_now(ip, site, evidence, config);
        self.save_block(&update)?;
        Ok(update.block)
    }

    /// A reply the rules did not blame on the IP was contradicted by a second opinion:
    /// remember the wording (and how often), for `sidestep classify --learned`.
    ///
    /// # Errors
    /// The entry could not be persisted (it holds in memory).
    pub fn record_learned(&self, mut learned: LearnedReply) -> Result<(), SpoolError> {
        let key = wording_key(&learned.reply);
        let entry = {
            let mut state = self.lock();
            if let Some(old) = state.learned.get(&key) {
                learned.first_seen = old.first_seen;
                learned.count = old.count + 1;
            }
            state.learned.insert(key.clone(), learned.clone());
            learned
        };
        match &self.shared.db {
            Some(db) => store::save_learned(db, &key, &entry),
            None => Ok(()),
        }
    }

    /// Mail from `ip` was accepted by `site`: a block there (expired or not) is over.
    ///
    /// # Errors
    /// The change could not be persisted.
    pub fn note_success(&self, ip: IpAddr, site: &Site) -> Result<(), SpoolError> {
        let lifted = {
            let mut state = self.lock();
            let lifted = state.blocks.get_mut(site).and_then(|m| m.remove(&ip));
            if state.blocks.get(site).is_some_and(|m| m.is_empty()) {
                state.blocks.remove(site);
            }
            lifted
        };
        let Some(b) = lifted else {
            return Ok(());
        };
        tracing::info!(ip = %ip, site = %site, since = b.first_seen, "block lifted: the destination accepts this IP again");
        self.shared.improved.send_modify(|n| *n += 1);
        self.write_block(ip, site)
    }

    /// Writes the block of (`ip`, `site`) as memory holds it now (deleting it when
    /// gone). Writers of one block race on their blocking threads; each writes the state
    /// of its turn, so the last write is the latest state whatever order they ran in.
    fn write_block(&self, ip: IpAddr, site: &Site) -> Result<(), SpoolError> {
        let Some(db) = &self.shared.db else {
            return Ok(());
        };
        let _turn = self
            .shared
            .persist
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self
            .lock()
            .blocks
            .get(site)
            .and_then(|m| m.get(&ip))
            .cloned();
        store::save_block(db, (&ip, site), current.as_ref())
    }

    /// Whether `site` has a block (current or expired) on `ip`: whether a success there
    /// has anything to lift.
    pub fn has_block(&self, ip: IpAddr, site: &Site) -> bool {
        self.lock()
            .blocks
            .get(site)
            .is_some_and(|m| m.contains_key(&ip))
    }

    /// A canary attempt ended without a verdict about the IP (connection trouble): the
    /// next delivery may try again.
    pub fn release_canary(&self, ip: IpAddr, site: &Site) {
        if let Some(b) = self
            .lock()
            .blocks
            .get_mut(site)
            .and_then(|m| m.get_mut(&ip))
        {
            b.canary_in_flight = false;
        }
    }

    /// When the first block among `ips` towards `site` expires (Unix seconds).
    pub fn next_expiry(&self, site: &Site, ips: &[IpAddr]) -> Option<u64> {
        let state = self.lock();
        ips.iter()
            .filter_map(|ip| state.blocks.get(site).and_then(|m| m.get(ip)))
            .map(|b| b.expires_at)
            .min()
    }

    /// Why `ip` cannot carry mail to `site`, for deferral reasons and DSNs.
    pub fn describe_for(&self, ip: IpAddr, site: &Site) -> Vec<String> {
        let mut out = self
            .describe(ip)
            .into_iter()
            .map(|l| format!("listed on {l}"))
            .collect::<Vec<_>>();
        if let Some(b) = self.lock().blocks.get(site).and_then(|m| m.get(&ip)) {
            out.push(format!(
                "blocked by {} since {} until {}: {}",
                b.site,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(b.first_seen)
                ),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(b.expires_at)
                ),
                b.evidence.reply
            ));
        }
        out
    }
}

/// Each IP's standing from the listings of the healthy lists.
fn compute_listed(lists: &[BlocklistConfig], state: &State) -> HashMap<IpAddr, Standing> {
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
    listed
}
