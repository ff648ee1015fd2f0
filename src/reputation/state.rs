//! The reputation handle: one cheap clonable [`Reputation`] over the state routing reads
//! for every connection (listings, blocks, learned replies), kept in memory and persisted
//! in `reputation.redb`. What each part means and how it changes lives with it:
//! [`super::listings`], [`super::blocks`], [`super::learned`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::blocks::Block;
use super::learned::{LearnedReply, wording_key};
use super::listings::{ListHealth, ListingRecord, compute_listed};
use super::store::{self, ReputationReport, StoreError};
use crate::clock::Clock;
use crate::config::BlocklistConfig;
use crate::egress::Standing;
use crate::site::Site;

/// Cheap clonable handle to the listing state.
#[derive(Clone)]
pub struct Reputation {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) lists: std::sync::RwLock<Arc<[BlocklistConfig]>>,
    pub(super) state: Mutex<State>,
    pub(super) db: Option<Arc<redb::Database>>,
    /// Held while a block is written, so writes of one block land in the order of the
    /// states they write.
    pub(super) persist: Mutex<()>,
    /// Stamps listings and blocks and decides when a block has expired.
    pub(super) clock: Clock,
    /// Where listings and blocks are announced, once set.
    pub(super) alerts: Option<crate::alerts::Alerts>,
    /// Wakes the listing monitor for a refresh now.
    pub(super) refresh: tokio::sync::Notify,
    /// Bumped whenever an IP may have become usable (a delisting, a list found broken).
    pub(super) improved: tokio::sync::watch::Sender<u64>,
    /// Daily caps of IPs still warming up.
    pub(super) warmup: super::warmup::Warmup,
    /// Where local block changes go to be shared with the other nodes (`[cluster]`).
    pub(super) cluster: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<BlockChange>>,
    /// Who checks the blocklists this refresh, when several nodes share them.
    pub(super) shared_listings: std::sync::OnceLock<Arc<dyn SharedListings>>,
}

/// A cluster's say in the blocklist refresh: one node asks the lists each refresh (they
/// rate-limit the queries of many), the others take its results.
pub trait SharedListings: Send + Sync {
    /// Whether this node asks the lists this refresh of `period`: it holds the turn for
    /// most of the period. Without the shared state (an outage), every node checks.
    fn elect(
        &self,
        period: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
    /// The checker's results, for the other nodes.
    fn publish(&self, outcome: &super::CheckOutcome);
}

/// A block as it is now on this node (`None`: gone), for the other nodes.
#[derive(Debug, Clone)]
pub struct BlockChange {
    /// The egress IP.
    pub ip: IpAddr,
    /// The site.
    pub site: Site,
    /// The block, or `None` when it was lifted.
    pub block: Option<Block>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) records: BTreeMap<(IpAddr, String), ListingRecord>,
    pub(super) health: BTreeMap<String, ListHealth>,
    /// Keyed by site first, so routing looks up `(site, ip)` without building a key.
    pub(super) blocks: HashMap<Site, HashMap<IpAddr, Block>>,
    /// Keyed by [`wording_key`].
    pub(super) learned: BTreeMap<String, LearnedReply>,
    /// Each IP's standing from the listings, recomputed whenever they change: the
    /// routing decision reads it per candidate IP.
    pub(super) listed: HashMap<IpAddr, Standing>,
    /// Each egress IP's reverse DNS as last checked.
    pub(super) hygiene: BTreeMap<IpAddr, super::Hygiene>,
    /// Egress IPs out of rotation for failing forward-confirmed reverse DNS
    /// (`[delivery] require_fcrdns`); folded into `listed` as hard.
    pub(super) no_rdns: std::collections::HashSet<IpAddr>,
}

impl State {
    pub(super) fn report(&self) -> ReputationReport {
        ReputationReport {
            health: self.health.values().cloned().collect(),
            records: self.records.values().cloned().collect(),
            blocks: self
                .blocks
                .values()
                .flat_map(|m| m.values().cloned())
                .collect(),
            learned: self.learned.values().cloned().collect(),
            hygiene: self.hygiene.values().cloned().collect(),
        }
    }
}

impl Reputation {
    /// Loads the persisted state from its file in `spool_dir`, and keeps it there;
    /// listing and block changes are announced through `alerts`.
    ///
    /// # Errors
    /// The file cannot be opened or read.
    pub fn open(
        lists: Vec<BlocklistConfig>,
        spool_dir: &Path,
        alerts: Option<crate::alerts::Alerts>,
    ) -> Result<Self, StoreError> {
        Self::open_with_clock(lists, spool_dir, alerts, Clock::system())
    }

    /// [`Reputation::open`] timed by `clock` (tests: days pass in an instant).
    ///
    /// # Errors
    /// The file cannot be opened or read.
    pub fn open_with_clock(
        lists: Vec<BlocklistConfig>,
        spool_dir: &Path,
        alerts: Option<crate::alerts::Alerts>,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let db = Arc::new(store::open(spool_dir)?);
        let report = store::load(db.as_ref())?;
        let warmup = super::warmup::Warmup::open(spool_dir.join("warmup.json"));
        Ok(Self::from_report(
            lists,
            report,
            Some(db),
            clock,
            alerts,
            warmup,
        ))
    }

    /// State kept in memory only (for one-off checks).
    pub fn in_memory(lists: Vec<BlocklistConfig>) -> Self {
        Self::in_memory_with_clock(lists, Clock::system())
    }

    /// State in memory, timed by `clock`: block expiry and canaries in tests move with a
    /// manual clock instead of sleeping.
    pub fn in_memory_with_clock(lists: Vec<BlocklistConfig>, clock: Clock) -> Self {
        Self::from_report(
            lists,
            ReputationReport::default(),
            None,
            clock,
            None,
            Default::default(),
        )
    }

    fn from_report(
        lists: Vec<BlocklistConfig>,
        report: ReputationReport,
        db: Option<Arc<redb::Database>>,
        clock: Clock,
        alerts: Option<crate::alerts::Alerts>,
        warmup: super::warmup::Warmup,
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
                lists: std::sync::RwLock::new(lists.into()),
                state: Mutex::new(state),
                db,
                persist: Mutex::new(()),
                improved: tokio::sync::watch::Sender::new(0),
                clock,
                alerts,
                refresh: tokio::sync::Notify::new(),
                warmup,
                cluster: std::sync::OnceLock::new(),
                shared_listings: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The clock this state keeps time by (the delivery side reads it too, so a test's
    /// simulated time moves blocks, site health and shaping together).
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Puts the egress IPs' warmup schedules in force (at start and on reload).
    pub fn set_warmup(&self, schedules: HashMap<IpAddr, super::Schedule>) {
        self.shared.warmup.set_schedules(schedules);
    }

    /// Where each warming IP stands today.
    pub fn warmup_status(&self) -> Vec<super::WarmupStatus> {
        self.shared.warmup.status(self.shared.clock.now())
    }

    /// Saves today's warmup counts if they changed.
    pub fn flush_warmup(&self) {
        self.shared.warmup.flush();
    }

    /// Whether some egress IP warms up (else there is nothing to share about it).
    pub fn warmup_active(&self) -> bool {
        self.shared.warmup.active()
    }

    /// Today's warmup messages taken since the last call, for a cluster's totals.
    pub fn warmup_unsynced(&self) -> (u64, Vec<(IpAddr, Site, u32)>) {
        self.shared.warmup.drain_unsynced(self.shared.clock.now())
    }

    /// Warmup messages that could not be pushed to the cluster: next time.
    pub fn warmup_unsent(&self, day: u64, back: Vec<(IpAddr, Site, u32)>) {
        self.shared.warmup.unsent(day, back);
    }

    /// The cluster's warmup totals for `day`: the other nodes' messages count against
    /// the caps here too.
    pub fn warmup_totals(&self, day: u64, totals: Vec<(IpAddr, Site, u32)>) {
        self.shared.warmup.set_totals(day, totals);
    }

    /// Asks the listing monitor to check every list now.
    pub fn request_refresh(&self) {
        self.shared.refresh.notify_one();
    }

    /// Resolves when a refresh was asked for.
    pub(super) async fn refresh_requested(&self) {
        self.shared.refresh.notified().await;
    }

    /// Sends an alert, if alerts are set.
    pub fn alert(
        &self,
        event: &'static str,
        ip: Option<IpAddr>,
        subject: Option<String>,
        text: String,
    ) {
        self.alert_with_report(event, ip, subject, text, None);
    }

    /// [`Reputation::alert`] with a delisting report attached (blocks).
    pub fn alert_with_report(
        &self,
        event: &'static str,
        ip: Option<IpAddr>,
        subject: Option<String>,
        text: String,
        report: Option<String>,
    ) {
        if let Some(a) = &self.shared.alerts {
            a.send_with_report(event, ip.map(|i| i.to_string()), subject, text, report);
        }
    }

    /// Changes whenever an egress IP may have become usable again.
    pub fn improvements(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.improved.subscribe()
    }

    /// The configured blocklists.
    pub fn lists(&self) -> Arc<[BlocklistConfig]> {
        self.shared
            .lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a reloaded `[[blocklists]]` in force: standings are recomputed at once (a
    /// list removed no longer counts), the next refresh asks the new lists.
    pub fn set_lists(&self, lists: Vec<BlocklistConfig>) {
        let lists: Arc<[BlocklistConfig]> = lists.into();
        *self.shared.lists.write().unwrap_or_else(|e| e.into_inner()) = lists.clone();
        let mut state = self.lock();
        state.listed = compute_listed(&lists, &state);
        drop(state);
        self.shared.improved.send_modify(|n| *n += 1);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything known, for `sidestep listings` and `dnsbl-check`.
    pub fn report(&self) -> ReputationReport {
        self.lock().report()
    }

    pub(super) fn persist(&self, report: &ReputationReport) -> Result<(), StoreError> {
        match &self.shared.db {
            Some(db) => store::save(db, report),
            None => Ok(()),
        }
    }
}
