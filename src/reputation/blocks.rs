//! Blocks: a destination site refused one of our egress IPs for its reputation (Cloudmark
//! CSI behind Bell/Aliant, Microsoft S3150, Yahoo TSS04…). No public list shows these;
//! they are learned from the replies themselves, per (egress IP, site), with the evidence
//! a delisting form asks for.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::removal::find_removal_url;

use super::state::Reputation;
use super::store::{self, StoreError};
use crate::config::BlocksConfig;
use crate::egress::Standing;
use crate::site::Site;

/// What the destination said, exactly, and where and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The reply as received: code, enhanced code, text.
    pub reply: String,
    /// The classification rule that matched.
    pub rule: String,
    /// Unix seconds.
    pub at: u64,
    /// The MX host that refused.
    pub mx_host: Option<String>,
    /// Its address.
    pub mx_ip: Option<IpAddr>,
    /// The refused message.
    pub queue_id: String,
    /// The refused recipient.
    pub recipient: String,
    /// Where to ask for removal, when the reply says (Cloudmark reset form, Microsoft's
    /// sender portal, …).
    pub removal_url: Option<String>,
    /// The attempt's log line, as an operator would paste it into a delisting form.
    pub log_line: String,
    /// Learned from a bounce by mail, after the site had accepted the message with
    /// `250` (the reply is the DSN's Diagnostic-Code).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// A destination site refuses one of our egress IPs, and until when we believe it.
pub struct Block {
    /// The refused egress IP.
    pub ip: IpAddr,
    /// The site that refuses it.
    pub site: Site,
    /// Unix seconds of the first refusal in this run of refusals.
    pub first_seen: u64,
    /// Until then the IP is not used for this site; afterwards one canary tries it.
    pub expires_at: u64,
    /// Refusals after the first, each doubling the duration.
    pub strikes: u32,
    /// The refusal that started this block (or renewed it: a refused canary).
    pub evidence: Evidence,
    /// Refusals while the block held, from attempts that started before it (a burst of
    /// connections in flight): more evidence, not more strikes. At most a few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<Evidence>,
    /// A canary delivery is under way (not persisted: a restart frees it).
    #[serde(skip)]
    pub canary_in_flight: bool,
    /// Set by the operator (`sidestep suspend`), not learned: it ends at its expiry,
    /// without a canary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    /// Learned from a seed probe that was accepted and never arrived, not from a reply:
    /// a `250` proves nothing about it (so no canary), an arriving probe lifts it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silent: bool,
}

/// The site of a suspension that holds for every destination.
pub const ALL_SITES: &str = "*";

/// What [`Reputation::block_now`] did, for [`Reputation::save_block`].
#[derive(Debug, Clone)]
pub struct BlockUpdate {
    /// The block as it is now.
    pub block: Block,
    /// A new block, or a longer one (a refused canary); `false`: evidence added only.
    pub renewed: bool,
}

/// Refusals kept beyond the first while a block holds (attempts already in flight).
const MAX_LATER_EVIDENCE: usize = 8;

/// Removes the block of (`ip`, `site`), and the site's entry when it was its last.
fn take_block(state: &mut super::state::State, ip: IpAddr, site: &Site) -> Option<Block> {
    let taken = state.blocks.get_mut(site).and_then(|m| m.remove(&ip));
    if state.blocks.get(site).is_some_and(|m| m.is_empty()) {
        state.blocks.remove(site);
    }
    taken
}

/// Whether the operator suspended `ip` for every site, and it still holds.
fn suspended_everywhere(state: &super::state::State, ip: IpAddr, now: u64) -> bool {
    state
        .blocks
        .get(&Site::from(ALL_SITES))
        .and_then(|m| m.get(&ip))
        .is_some_and(|b| b.expires_at > now)
}

/// How long a block lasts after `strikes` repeats: `duration × 2^strikes`, capped.
pub fn block_duration(config: &BlocksConfig, strikes: u32) -> Duration {
    let base = config.duration.get();
    let factor = 2u32.saturating_pow(strikes.min(30));
    base.saturating_mul(factor).min(config.max_duration.get())
}

impl Reputation {
    /// The standing of `ip` towards `site`: its listings, and a block the site taught us.
    /// An expired block whose canary is free counts as clean (the IP may be tried once).
    pub fn standing_for(&self, ip: IpAddr, site: &Site) -> Standing {
        if !self.shared.warmup.allows(ip, site, self.shared.clock.now()) {
            return Standing::Hard;
        }
        let state = self.lock();
        let listed = state.listed.get(&ip).copied().unwrap_or(Standing::Clean);
        let now = self.shared.clock.now();
        let blocked = match state.blocks.get(site).and_then(|m| m.get(&ip)) {
            _ if suspended_everywhere(&state, ip, now) => Standing::Hard,
            Some(b) if b.expires_at > now || b.canary_in_flight => Standing::Hard,
            _ => Standing::Clean,
        };
        listed.max(blocked)
    }

    /// Like [`Reputation::standing_for`], and if the IP is clean only because its block
    /// expired, claims it as that site's one canary delivery.
    pub fn claim(&self, ip: IpAddr, site: &Site) -> Standing {
        let now = self.shared.clock.now();
        if !self.shared.warmup.allows(ip, site, now) {
            return Standing::Hard;
        }
        let standing = self.claim_unwarmed(ip, site);
        // A message of today's warmup cap is taken only for an IP that may be used; if
        // another delivery took the last one meanwhile, this IP is out after all.
        if standing != Standing::Hard && !self.shared.warmup.take(ip, site, now) {
            self.release_canary(ip, site);
            return Standing::Hard;
        }
        standing
    }

    /// [`Reputation::claim`] before warmup caps.
    fn claim_unwarmed(&self, ip: IpAddr, site: &Site) -> Standing {
        let mut state = self.lock();
        let listed = state.listed.get(&ip).copied().unwrap_or(Standing::Clean);
        let now = self.shared.clock.now();
        if suspended_everywhere(&state, ip, now) {
            return Standing::Hard;
        }
        let Some(blocks) = state.blocks.get_mut(site) else {
            return listed;
        };
        let blocked = match blocks.get_mut(&ip) {
            Some(b) if b.expires_at > now || b.canary_in_flight => Standing::Hard,
            // The operator's suspension is simply over: no canary needed. A silent
            // discard's canary would prove nothing (it was accepted before too): the
            // probes say when it is over.
            Some(b) if b.manual || b.silent => Standing::Clean,
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

    /// The operator keeps `ip` away from `site` (every site when `None`) for `period`:
    /// routing treats it as a block, `sidestep blocks` shows it as manual, it survives a
    /// restart and ends at its expiry.
    ///
    /// # Errors
    /// It could not be persisted (it holds in memory).
    pub fn suspend(
        &self,
        ip: IpAddr,
        site: Option<&Site>,
        period: std::time::Duration,
        reason: &str,
    ) -> Result<Block, StoreError> {
        let now = self.shared.clock.now();
        let site = site.cloned().unwrap_or_else(|| Site::from(ALL_SITES));
        let block = Block {
            ip,
            site: site.clone(),
            first_seen: now,
            expires_at: now + period.as_secs().max(1),
            strikes: 0,
            evidence: Evidence {
                reply: format!("suspended by the operator: {reason}"),
                rule: format!("manual: {reason}"),
                at: now,
                mx_host: None,
                mx_ip: None,
                queue_id: String::new(),
                recipient: String::new(),
                removal_url: None,
                log_line: String::new(),
                late: false,
            },
            later: Vec::new(),
            canary_in_flight: false,
            manual: true,
            silent: false,
        };
        self.lock()
            .blocks
            .entry(site.clone())
            .or_default()
            .insert(ip, block.clone());
        self.write_block(ip, &site)?;
        tracing::warn!(ip = %ip, site = %site, until = block.expires_at, reason, "egress IP suspended by the operator");
        self.alert(
            "suspended",
            Some(ip),
            Some(site.to_string()),
            format!("{ip} suspended for {site} by the operator: {reason}"),
        );
        Ok(block)
    }

    /// Ends a block or suspension of `ip` for `site` (the every-site one when `None`)
    /// now. Returns whether there was one.
    ///
    /// # Errors
    /// The change could not be persisted.
    pub fn lift(&self, ip: IpAddr, site: Option<&Site>) -> Result<bool, StoreError> {
        let site = site.cloned().unwrap_or_else(|| Site::from(ALL_SITES));
        let lifted = {
            let mut state = self.lock();
            take_block(&mut state, ip, &site).is_some()
        };
        if lifted {
            tracing::warn!(ip = %ip, site = %site, "block lifted by the operator");
            self.alert(
                "block-lifted",
                Some(ip),
                Some(site.to_string()),
                format!("{ip} for {site}: lifted by the operator"),
            );
            self.shared.improved.send_modify(|n| *n += 1);
            self.write_block(ip, &site)?;
        }
        Ok(lifted)
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
        let now = self.shared.clock.now();
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
            manual: false,
            silent: false,
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
    pub fn save_block(&self, update: &BlockUpdate) -> Result<(), StoreError> {
        let block = &update.block;
        self.write_block(block.ip, &block.site)?;
        if update.renewed {
            let event = if block.strikes == 0 {
                "blocked"
            } else {
                "block-renewed"
            };
            self.alert_with_report(
                event,
                Some(block.ip),
                Some(block.site.to_string()),
                format!(
                    "{} refused by {} until {} (repeat {}): {}; MX {}; removal: {}",
                    block.ip,
                    block.site,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(block.expires_at)
                    ),
                    block.strikes,
                    block.evidence.reply,
                    block.evidence.mx_host.as_deref().unwrap_or("-"),
                    block.evidence.removal_url.as_deref().unwrap_or("-"),
                ),
                Some(block.report("", self.shared.clock.now())),
            );
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
    ) -> Result<Block, StoreError> {
        let update = self.block_now(ip, site, evidence, config);
        self.save_block(&update)?;
        Ok(update.block)
    }

    /// Mail from `ip` was accepted by `site`: a block there (expired or not) is over.
    ///
    /// # Errors
    /// The change could not be persisted.
    pub fn note_success(&self, ip: IpAddr, site: &Site) -> Result<(), StoreError> {
        let lifted = {
            let mut state = self.lock();
            // A `250` is what a silently discarding site says too: only a probe that
            // arrives lifts that block.
            if state
                .blocks
                .get(site)
                .and_then(|m| m.get(&ip))
                .is_some_and(|b| b.silent)
            {
                return Ok(());
            }
            take_block(&mut state, ip, site)
        };
        let Some(b) = lifted else {
            return Ok(());
        };
        tracing::info!(ip = %ip, site = %site, since = b.first_seen, "block lifted: the destination accepts this IP again");
        self.alert(
            "block-lifted",
            Some(ip),
            Some(site.to_string()),
            format!("{site} accepts {ip} again"),
        );
        self.shared.improved.send_modify(|n| *n += 1);
        self.write_block(ip, site)
    }

    /// A seed probe from `ip` was accepted by `site` and never arrived: keep the IP away
    /// from the site for `hold` (a repeat renews it), with the probe as evidence. Saved,
    /// logged and alerted like a learned block.
    ///
    /// # Errors
    /// It could not be persisted (it holds in memory).
    pub fn mark_silent(
        &self,
        ip: IpAddr,
        site: &Site,
        evidence: Evidence,
        hold: Duration,
    ) -> Result<Block, StoreError> {
        let now = self.shared.clock.now();
        let update = {
            let mut state = self.lock();
            let slot = state.blocks.entry(site.clone()).or_default();
            let (first_seen, strikes, renewed) = match slot.get(&ip) {
                Some(b) if b.silent && b.expires_at > now => (b.first_seen, b.strikes + 1, false),
                Some(b) if b.silent => (b.first_seen, b.strikes + 1, true),
                _ => (now, 0, true),
            };
            let block = Block {
                ip,
                site: site.clone(),
                first_seen,
                expires_at: now + hold.as_secs().max(1),
                strikes,
                evidence,
                later: Vec::new(),
                canary_in_flight: false,
                manual: false,
                silent: true,
            };
            slot.insert(ip, block.clone());
            BlockUpdate { block, renewed }
        };
        self.save_silent(&update)?;
        Ok(update.block)
    }

    /// Writes a silent-discard block and says what happened: set (logged, alerted) or
    /// extended by another missing probe (logged). Not [`Reputation::save_block`]: its
    /// lines speak of refusals, and a silent discard was answered `250`.
    fn save_silent(&self, update: &BlockUpdate) -> Result<(), StoreError> {
        let block = &update.block;
        self.write_block(block.ip, &block.site)?;
        let until = crate::clock::rfc3339(block.expires_at);
        if update.renewed {
            tracing::warn!(
                ip = %block.ip,
                site = %block.site,
                strikes = block.strikes,
                "egress IP silently discarded by the site (seed probe accepted, never arrived): silent-discard block set until {until}; kept away from it"
            );
            self.alert_with_report(
                "blocked",
                Some(block.ip),
                Some(block.site.to_string()),
                format!(
                    "{} silently discarded by {} until {until} (repeat {}): a seed probe accepted with 250 never arrived; MX {}",
                    block.ip,
                    block.site,
                    block.strikes,
                    block.evidence.mx_host.as_deref().unwrap_or("-"),
                ),
                Some(block.report("", self.shared.clock.now())),
            );
        } else {
            tracing::info!(
                ip = %block.ip,
                site = %block.site,
                strikes = block.strikes,
                "another seed probe missing: silent-discard block extended until {until}"
            );
        }
        Ok(())
    }

    /// A seed probe from `ip` arrived through `site`: a silent-discard block there is
    /// over. Returns whether there was one.
    ///
    /// # Errors
    /// The change could not be persisted.
    pub fn lift_silent(&self, ip: IpAddr, site: &Site) -> Result<bool, StoreError> {
        let lifted = {
            let mut state = self.lock();
            let silent = state
                .blocks
                .get(site)
                .and_then(|m| m.get(&ip))
                .is_some_and(|b| b.silent);
            if silent {
                take_block(&mut state, ip, site);
            }
            silent
        };
        if lifted {
            tracing::info!(ip = %ip, site = %site, "silent discard over: a seed probe from this IP arrived");
            self.alert(
                "block-lifted",
                Some(ip),
                Some(site.to_string()),
                format!("{site} delivers mail from {ip} again (a seed probe arrived)"),
            );
            self.shared.improved.send_modify(|n| *n += 1);
            self.write_block(ip, site)?;
        }
        Ok(lifted)
    }

    /// Writes the block of (`ip`, `site`) as memory holds it now (deleting it when
    /// gone). Writers of one block race on their blocking threads; each writes the state
    /// of its turn, so the last write is the latest state whatever order they ran in.
    fn write_block(&self, ip: IpAddr, site: &Site) -> Result<(), StoreError> {
        let current = self.write_block_here(ip, site)?;
        if let Some(cluster) = self.shared.cluster.get() {
            let _ = cluster.send(super::state::BlockChange {
                ip,
                site: site.clone(),
                block: current,
            });
        }
        Ok(())
    }

    /// Persists the block of (`ip`, `site`) on this node only; what it wrote.
    fn write_block_here(&self, ip: IpAddr, site: &Site) -> Result<Option<Block>, StoreError> {
        let current = || {
            self.lock()
                .blocks
                .get(site)
                .and_then(|m| m.get(&ip))
                .cloned()
        };
        let Some(db) = &self.shared.db else {
            return Ok(current());
        };
        let _turn = self
            .shared
            .persist
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = current();
        store::save_block(db, (&ip, site), current.as_ref())?;
        Ok(current)
    }

    /// A cluster decides who asks the blocklists each refresh, and shares the results.
    pub fn share_listings(&self, shared: std::sync::Arc<dyn super::SharedListings>) {
        let _ = self.shared.shared_listings.set(shared);
    }

    /// Local block changes go to `tx` from now on, to be shared with the other nodes.
    pub fn share_blocks(&self, tx: tokio::sync::mpsc::UnboundedSender<super::state::BlockChange>) {
        let _ = self.shared.cluster.set(tx);
    }

    /// Every block this node knows (current or expired), for a merge with the cluster.
    pub fn all_blocks(&self) -> Vec<Block> {
        self.lock()
            .blocks
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Another node's block of (`ip`, `site`) (`None`: it lifted it). A block is taken
    /// when this node has none or one that ends sooner (the longest expiry wins); a lift
    /// is taken unless this node's own block is newer than the lift. Persisted here, not
    /// sent back. Returns whether anything changed.
    ///
    /// # Errors
    /// The change could not be persisted (it holds in memory).
    pub fn apply_remote(
        &self,
        ip: IpAddr,
        site: &Site,
        block: Option<Block>,
        lifted_at: u64,
    ) -> Result<bool, StoreError> {
        let changed = {
            let mut state = self.lock();
            let local = state.blocks.get(site).and_then(|m| m.get(&ip));
            match (&block, local) {
                (Some(remote), Some(l)) if l.expires_at >= remote.expires_at => false,
                (Some(remote), _) => {
                    state
                        .blocks
                        .entry(site.clone())
                        .or_default()
                        .insert(ip, remote.clone());
                    true
                }
                (None, Some(l)) if l.evidence.at <= lifted_at => {
                    take_block(&mut state, ip, site);
                    true
                }
                (None, _) => false,
            }
        };
        if changed {
            match &block {
                Some(b) => {
                    tracing::warn!(ip = %ip, site = %site, until = b.expires_at, "block learned by another node: applied")
                }
                None => {
                    tracing::info!(ip = %ip, site = %site, "block lifted by another node");
                    self.shared.improved.send_modify(|n| *n += 1);
                }
            }
            self.write_block_here(ip, site)?;
        }
        Ok(changed)
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
        let now = self.shared.clock.now();
        // An IP out only for its warmup cap is back at the next UTC midnight.
        let warmup = ips
            .iter()
            .any(|ip| !self.shared.warmup.allows(*ip, site, now))
            .then(|| super::warmup::Warmup::next_day(now));
        let state = self.lock();
        let everywhere = Site::from(ALL_SITES);
        ips.iter()
            .filter_map(|ip| {
                let here = state.blocks.get(site).and_then(|m| m.get(ip));
                let all = state.blocks.get(&everywhere).and_then(|m| m.get(ip));
                match (here, all) {
                    (Some(a), Some(b)) => Some(a.expires_at.max(b.expires_at)),
                    (a, b) => a.or(b).map(|b| b.expires_at),
                }
            })
            .chain(warmup)
            .min()
    }

    /// Why `ip` cannot carry mail to `site`, for deferral reasons and DSNs.
    pub fn describe_for(&self, ip: IpAddr, site: &Site) -> Vec<String> {
        let mut out = self
            .describe(ip)
            .into_iter()
            .map(|l| format!("listed on {l}"))
            .collect::<Vec<_>>();
        if let Some(why) = self.hygiene_out(ip) {
            out.push(format!("out of rotation (require_fcrdns): {why}"));
        }
        if !self.shared.warmup.allows(ip, site, self.shared.clock.now()) {
            out.push(format!(
                "warming up: today's cap for {site} reached (more tomorrow)"
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(reply: &str) -> Evidence {
        Evidence {
            reply: reply.into(),
            rule: "r".into(),
            at: 0,
            mx_host: None,
            mx_ip: None,
            queue_id: "q".into(),
            recipient: "a@b.test".into(),
            removal_url: None,
            log_line: String::new(),
            late: false,
        }
    }

    /// Block, burst, expiry, canary, renewal, lift: in simulated time, no sleeping.
    #[test]
    fn a_block_lives_and_ends_on_the_clock() {
        use crate::clock::Clock;
        let clock = Clock::manual(1_000_000_000_000);
        let rep = Reputation::in_memory_with_clock(vec![], clock.clone());
        let config = BlocksConfig::default(); // 4 h, doubling, 2 days at most
        let (ip, site): (IpAddr, Site) = ("192.0.2.1".parse().unwrap(), "mx.site.test".into());
        assert_eq!(rep.claim(ip, &site), Standing::Clean);
        let first = rep.block_now(ip, &site, evidence("550 first"), &config);
        assert!(first.renewed && first.block.strikes == 0);
        // A refusal from an attempt already in flight: evidence, not a strike.
        clock.advance(Duration::from_secs(1));
        let burst = rep.block_now(ip, &site, evidence("550 burst"), &config);
        assert!(!burst.renewed);
        assert_eq!(burst.block.expires_at, first.block.expires_at);
        assert_eq!(burst.block.later.len(), 1);
        assert_eq!(rep.standing_for(ip, &site), Standing::Hard);
        // Just before expiry: still held; after: one canary, the next waits for it.
        clock.advance(Duration::from_secs(4 * 3600 - 2));
        assert_eq!(rep.claim(ip, &site), Standing::Hard);
        clock.advance(Duration::from_secs(2));
        assert_eq!(rep.claim(ip, &site), Standing::Clean);
        assert_eq!(rep.claim(ip, &site), Standing::Hard, "one canary at a time");
        // The canary is refused: twice as long.
        let renewed = rep.block_now(ip, &site, evidence("550 again"), &config);
        assert!(renewed.renewed);
        assert_eq!(renewed.block.strikes, 1);
        assert_eq!(renewed.block.expires_at - clock.now(), 8 * 3600);
        assert_eq!(
            rep.next_expiry(&site, &[ip]),
            Some(renewed.block.expires_at)
        );
        // The next canary gets through: the block is lifted.
        clock.advance(Duration::from_secs(8 * 3600));
        assert_eq!(rep.claim(ip, &site), Standing::Clean);
        rep.note_success(ip, &site).unwrap();
        assert!(!rep.has_block(ip, &site));
        assert_eq!(rep.claim(ip, &site), Standing::Clean);
    }

    #[test]
    fn durations_double_up_to_the_cap() {
        let c = BlocksConfig::default();
        let hours: Vec<u64> = (0..6)
            .map(|s| block_duration(&c, s).as_secs() / 3600)
            .collect();
        assert_eq!(hours, vec![4, 8, 16, 32, 48, 48]);
        assert_eq!(block_duration(&c, u32::MAX).as_secs(), 48 * 3600);
    }
}
