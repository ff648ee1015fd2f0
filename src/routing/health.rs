//! Destination health: a site whose every MX keeps refusing connections or timing out
//! (from any egress IP) is marked down. While it is down nothing connects to it except
//! one probe delivery per probe interval; the queue parks its mail instead of retrying
//! each message on its own (Postfix's dead-destination logic). Probes keep the pace the
//! retry schedule would have given the mail ([`ProbePace`]): parking a site never makes
//! its mail wait longer than the operator's retry schedule promises. The first probe a server
//! answers brings the site back, and the queue releases the site's mail at once.
//!
//! Only failures where no server said anything count: a reply of any kind (even 421 or a
//! refusal) proves the site is up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::QueueConfig;
use crate::site::Site;

/// How often a down site is probed: its `n`-th probe after it went down waits what the
/// `n`-th retry of a message would (`[queue]` retry schedule), capped by
/// `delivery.site_probe_interval`. With the defaults (5 min, doubling; 5 min) that is
/// every 5 min; with `retry_initial = "1s"`, `retry_max = "2s"` every 1-2 s.
#[derive(Debug, Clone, Default)]
pub struct ProbePace {
    /// The retry schedule the site's mail would have kept.
    pub retry: QueueConfig,
    /// `delivery.site_probe_interval`: probes never wait longer than this.
    pub longest: Duration,
}

impl ProbePace {
    /// The wait before the `n`-th probe (1-based) since the site went down.
    pub fn interval(&self, n: u32) -> Duration {
        self.retry.retry_delay(n).min(self.longest)
    }
}

/// Whether a delivery to a site may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The site is up (or not known to be down): connect.
    Go,
    /// The site is down and this delivery is its probe: connect, and report back.
    Probe,
    /// The site is down: do not connect; the next probe is due then (Unix ms).
    Down {
        /// When the next probe may go.
        next_probe_ms: u64,
    },
}

/// A site marked down, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownSite {
    /// The site.
    pub site: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// Deliveries in a row that reached no server.
    pub failures: u32,
    /// When the next probe may go (Unix ms).
    pub next_probe_ms: u64,
    /// Why the last one failed.
    pub last_error: String,
}

#[derive(Debug, Default)]
struct Health {
    /// Deliveries in a row where no MX answered.
    failures: u32,
    /// Set while the site is down (Unix ms).
    down_since: Option<u64>,
    /// Probes that failed since it went down (the pace of the next one).
    failed_probes: u32,
    next_probe_ms: u64,
    /// A probe delivery is under way.
    probing: bool,
    /// How often the site is probed.
    interval_ms: u64,
    last_error: String,
}

/// Every site's health; shared by all deliveries and kept across reloads.
#[derive(Debug, Default)]
pub struct SiteHealth {
    sites: Mutex<HashMap<Site, Health>>,
    /// Where this node's marks go to be shared with the other nodes (a cluster).
    share: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<HealthChange>>,
}

/// A site marked down (with when its next probe goes, Unix ms, and why) or up again,
/// for the other nodes of a cluster.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HealthChange {
    /// The site.
    pub site: Site,
    /// `Some((next_probe_ms, interval_ms, last_error))`: down; `None`: up.
    pub down: Option<(u64, u64, String)>,
}

/// Sites tracked at most; healthy entries are forgotten first.
const MAX_SITES: usize = 100_000;

impl SiteHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Site, Health>> {
        self.sites.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a delivery to `site` connect now?
    pub fn admit(&self, site: &Site, now_ms: u64) -> Admission {
        let mut sites = self.lock();
        let Some(h) = sites.get_mut(site) else {
            return Admission::Go;
        };
        if h.down_since.is_none() {
            return Admission::Go;
        }
        if !h.probing && h.next_probe_ms <= now_ms {
            h.probing = true;
            tracing::info!(site = %site, failures = h.failures, "site down: probe delivery");
            return Admission::Probe;
        }
        // While a probe is out, the next chance is a whole interval away (the probe
        // releases everything sooner if it gets through).
        let next = if h.probing {
            now_ms + h.interval_ms
        } else {
            h.next_probe_ms
        };
        Admission::Down {
            next_probe_ms: next.max(now_ms),
        }
    }

    /// When `site` is down and a delivery now would not be its probe: until when (the
    /// next probe, Unix ms). Claims nothing.
    pub fn down_until(&self, site: &Site, now_ms: u64) -> Option<u64> {
        let sites = self.lock();
        let h = sites.get(site)?;
        h.down_since?;
        if h.probing {
            return Some(now_ms + h.interval_ms);
        }
        (h.next_probe_ms > now_ms).then_some(h.next_probe_ms)
    }

    /// A server of `site` answered: it is up. Returns true when it was down (its
    /// parked mail may go now).
    pub fn answered(&self, site: &Site, now_ms: u64) -> bool {
        let mut sites = self.lock();
        let Some(h) = sites.remove(site) else {
            return false;
        };
        if let Some(since) = h.down_since {
            tracing::warn!(
                site = %site,
                down_for_s = now_ms.saturating_sub(since) / 1000,
                "site up again: a server answered the probe; its queued mail goes now"
            );
            drop(sites);
            self.tell(site, None);
            return true;
        }
        false
    }

    /// This node's down and up marks go to `tx` from now on (a cluster).
    pub fn share_with(&self, tx: tokio::sync::mpsc::UnboundedSender<HealthChange>) {
        let _ = self.share.set(tx);
    }

    fn tell(&self, site: &Site, down: Option<(u64, u64, String)>) {
        if let Some(tx) = self.share.get() {
            let _ = tx.send(HealthChange {
                site: site.clone(),
                down,
            });
        }
    }

    /// Another node marked a site down or saw it up. Down: this node parks its mail too
    /// and leaves the probing to that node for one interval. Up: returns true when it was
    /// down here (its parked mail may go).
    pub fn apply_remote(&self, change: HealthChange, now_ms: u64) -> bool {
        let mut sites = self.lock();
        match change.down {
            Some((next_probe_ms, interval_ms, last_error)) => {
                let h = sites.entry(change.site.clone()).or_default();
                if h.down_since.is_none() {
                    tracing::warn!(site = %change.site, last_error, "site marked down by another node; its mail waits here too");
                    h.down_since = Some(now_ms);
                }
                h.interval_ms = interval_ms;
                h.last_error = last_error;
                h.next_probe_ms = h.next_probe_ms.max(next_probe_ms + interval_ms);
                false
            }
            None => {
                let was_down = sites
                    .remove(&change.site)
                    .is_some_and(|h| h.down_since.is_some());
                if was_down {
                    tracing::warn!(site = %change.site, "site up again (seen by another node): its queued mail goes now");
                }
                was_down
            }
        }
    }

    /// No server of `site` answered a delivery (connections refused or timed out): one
    /// failure more; `down_after` in a row mark it down until a probe gets an answer,
    /// probes going at `pace`. A failed probe schedules the next one. Returns the next
    /// probe time when the site is down now.
    pub fn unreachable(
        &self,
        site: &Site,
        error: &str,
        now_ms: u64,
        down_after: u32,
        pace: &ProbePace,
    ) -> Option<u64> {
        if down_after == 0 {
            return None;
        }
        let mut sites = self.lock();
        if sites.len() >= MAX_SITES && !sites.contains_key(site) {
            sites.retain(|_, h| h.down_since.is_some());
        }
        let h = sites.entry(site.clone()).or_default();
        h.failures = h.failures.saturating_add(1);
        h.last_error = error.to_string();
        if h.down_since.is_some() {
            h.failed_probes = h.failed_probes.saturating_add(1);
        }
        let interval = pace.interval(h.failed_probes + 1);
        h.interval_ms = interval.as_millis() as u64;
        let next = now_ms + h.interval_ms;
        if h.down_since.is_some() {
            h.probing = false;
            h.next_probe_ms = next;
        } else if h.failures >= down_after {
            h.down_since = Some(now_ms);
            h.next_probe_ms = next;
            tracing::warn!(
                site = %site,
                failures = h.failures,
                last_error = error,
                probe_every = %humantime::format_duration(interval),
                "site marked down: no server answered; its mail waits, one probe per interval"
            );
            let mark = (h.next_probe_ms, h.interval_ms, error.to_string());
            drop(sites);
            self.tell(site, Some(mark));
            return Some(next);
        }
        h.down_since.map(|_| h.next_probe_ms)
    }

    /// A probe that ended without saying anything about the site (no egress IP, DNS
    /// trouble): the next delivery may probe.
    pub fn release_probe(&self, site: &Site) {
        if let Some(h) = self.lock().get_mut(site) {
            h.probing = false;
        }
    }

    /// Every site down now.
    pub fn down(&self) -> Vec<DownSite> {
        let mut out: Vec<DownSite> = self
            .lock()
            .iter()
            .filter_map(|(site, h)| {
                Some(DownSite {
                    site: site.to_string(),
                    since_ms: h.down_since?,
                    failures: h.failures,
                    next_probe_ms: h.next_probe_ms,
                    last_error: h.last_error.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.site.cmp(&b.site));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_failures_in_a_row_then_one_probe_per_interval() {
        let h = SiteHealth::default();
        let site = Site::from("mx.dead.test");
        // The default retry schedule (5 min, doubling) is slower: a minute it is.
        let minute = &ProbePace {
            retry: QueueConfig::default(),
            longest: Duration::from_secs(60),
        };
        h.unreachable(&site, "refused", 1_000, 3, minute);
        h.unreachable(&site, "refused", 1_000, 3, minute);
        assert_eq!(
            h.admit(&site, 1_000),
            Admission::Go,
            "two failures: still up"
        );
        h.unreachable(&site, "refused", 1_000, 3, minute);
        assert_eq!(
            h.admit(&site, 2_000),
            Admission::Down {
                next_probe_ms: 61_000
            }
        );
        assert_eq!(h.down()[0].failures, 3);
        assert_eq!(h.admit(&site, 61_000), Admission::Probe);
        // One probe at a time; the others wait an interval.
        assert_eq!(
            h.admit(&site, 61_500),
            Admission::Down {
                next_probe_ms: 121_500
            }
        );
        // The probe failed: the next one a interval later.
        h.unreachable(&site, "timeout", 62_000, 3, minute);
        assert_eq!(
            h.admit(&site, 62_000),
            Admission::Down {
                next_probe_ms: 122_000
            }
        );
        assert_eq!(h.admit(&site, 122_000), Admission::Probe);
        assert!(h.answered(&site, 122_000), "it was down");
        assert_eq!(h.admit(&site, 122_001), Admission::Go);
        assert!(h.down().is_empty());
        assert!(!h.answered(&site, 122_002), "an up site stays up quietly");
    }

    #[test]
    fn an_answer_resets_the_count_and_zero_turns_it_off() {
        let h = SiteHealth::default();
        let site = Site::from("mx.flaky.test");
        let minute = &ProbePace {
            retry: QueueConfig::default(),
            longest: Duration::from_secs(60),
        };
        h.unreachable(&site, "refused", 0, 2, minute);
        h.answered(&site, 0);
        h.unreachable(&site, "refused", 0, 2, minute);
        assert_eq!(h.admit(&site, 0), Admission::Go);
        for _ in 0..10 {
            h.unreachable(&site, "refused", 0, 0, minute);
        }
        assert_eq!(h.admit(&site, 0), Admission::Go);
    }

    #[test]
    fn a_down_site_is_probed_at_the_retry_schedules_pace_when_that_is_quicker() {
        let h = SiteHealth::default();
        let site = Site::from("mx.back-soon.test");
        let pace = &ProbePace {
            retry: QueueConfig {
                retry_initial: crate::config::HumanDuration::from_secs(1),
                retry_max: crate::config::HumanDuration::from_secs(2),
                ..QueueConfig::default()
            },
            longest: Duration::from_secs(300),
        };
        assert_eq!(pace.interval(1), Duration::from_secs(1));
        assert_eq!(pace.interval(9), Duration::from_secs(2));
        h.unreachable(&site, "refused", 0, 2, pace);
        assert_eq!(h.unreachable(&site, "refused", 0, 2, pace), Some(1_000));
        assert_eq!(h.admit(&site, 1_000), Admission::Probe);
        // The probe failed: the next one two seconds later (the schedule's second
        // step), not five minutes.
        assert_eq!(h.unreachable(&site, "refused", 1_000, 2, pace), Some(3_000));
        assert_eq!(h.admit(&site, 3_000), Admission::Probe);
        assert_eq!(h.unreachable(&site, "refused", 3_000, 2, pace), Some(5_000));
    }
}
