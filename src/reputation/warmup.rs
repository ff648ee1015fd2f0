//! IP warmup: a new egress IP carries a schedule of daily caps per destination site
//! (e.g. 50, 100, 500, 1000, 5000 messages), growing day by day, as receivers expect
//! of an address they have not seen before. Mail beyond an IP's cap for a site goes
//! from the other IPs of the pool, or waits for the next day: never beyond the cap.
//! Days are UTC days; today's counts survive restarts (`warmup.json` in the spool).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::site::Site;

const DAY: u64 = 86_400;

/// One egress IP's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Messages per site on day 1, 2, …; after the last day the IP is warm (no cap).
    pub caps: Vec<u32>,
    /// The first day (days since the Unix epoch, UTC); `None`: the day the relay first
    /// ran with the schedule.
    pub start_day: Option<u64>,
}

/// The warmup schedule of each egress IP of `config` that has one.
pub fn schedules(config: &crate::config::Config) -> std::collections::HashMap<IpAddr, Schedule> {
    config
        .pools
        .iter()
        .flat_map(|p| p.egress.iter())
        .filter(|e| !e.warmup.is_empty())
        .filter_map(|e| {
            Some((
                e.ip?,
                Schedule {
                    caps: e.warmup.clone(),
                    start_day: e.warmup_start.as_deref().and_then(crate::config::epoch_day),
                },
            ))
        })
        .collect()
}

/// Where one IP stands in its warmup, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupStatus {
    /// The egress IP.
    pub ip: IpAddr,
    /// Day of the schedule, from 1.
    pub day: u64,
    /// Days in the schedule.
    pub days: usize,
    /// Today's cap per site; `None` once warm.
    pub cap: Option<u32>,
    /// Messages sent today per site.
    pub today: BTreeMap<String, u32>,
}

/// What the file keeps.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// Days the schedules started, when not configured.
    started: BTreeMap<IpAddr, u64>,
    /// The day `counts` are for.
    day: u64,
    /// Messages per (IP, site) that day.
    counts: Vec<(IpAddr, String, u32)>,
}

#[derive(Debug, Default)]
struct State {
    schedules: HashMap<IpAddr, Schedule>,
    started: BTreeMap<IpAddr, u64>,
    day: u64,
    counts: HashMap<(IpAddr, Site), u32>,
    dirty: bool,
    /// Today's counts of the other nodes of a cluster (their totals less ours).
    others: HashMap<(IpAddr, Site), u32>,
    /// Messages taken here since the last exchange with the cluster.
    unsynced: HashMap<(IpAddr, Site), u32>,
}

/// The warmup state, part of [`super::Reputation`].
#[derive(Debug, Default)]
pub struct Warmup {
    state: Mutex<State>,
    /// `warmup.json` in the spool; `None` in memory only.
    path: Option<PathBuf>,
    /// Some IP has a schedule: without one, routing pays no lock for warmup.
    active: std::sync::atomic::AtomicBool,
}

impl State {
    /// Today's cap of `ip`, `None` when it has no schedule or is warm.
    fn cap(&mut self, ip: IpAddr, today: u64) -> Option<u32> {
        let s = self.schedules.get(&ip)?;
        let start = match s.start_day {
            Some(d) => d,
            None => *self.started.entry(ip).or_insert_with(|| {
                self.dirty = true;
                today
            }),
        };
        let index = today.saturating_sub(start) as usize;
        s.caps.get(index).copied()
    }

    /// Forgets yesterday's counts.
    fn roll(&mut self, today: u64) {
        if self.day != today {
            self.day = today;
            self.counts.clear();
            self.others.clear();
            self.unsynced.clear();
            self.dirty = true;
        }
    }
}

impl Warmup {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts kept in `path`, starting from what it holds.
    pub(super) fn open(path: PathBuf) -> Self {
        let warmup = Self::default();
        if let Ok(bytes) = std::fs::read(&path) {
            match serde_json::from_slice::<Stored>(&bytes) {
                Ok(stored) => {
                    let mut s = warmup.lock();
                    s.started = stored.started;
                    s.day = stored.day;
                    s.counts = stored
                        .counts
                        .into_iter()
                        .map(|(ip, site, n)| ((ip, Site::from(site.as_str())), n))
                        .collect();
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "warmup counts unreadable; starting today from zero")
                }
            }
        }
        Self {
            path: Some(path),
            ..warmup
        }
    }

    /// Puts the configured schedules in force.
    pub(super) fn set_schedules(&self, schedules: HashMap<IpAddr, Schedule>) {
        self.active
            .store(!schedules.is_empty(), std::sync::atomic::Ordering::Relaxed);
        self.lock().schedules = schedules;
    }

    pub(super) fn active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `ip` may send one more message to `site` today.
    pub(super) fn allows(&self, ip: IpAddr, site: &Site, now: u64) -> bool {
        if !self.active() {
            return true;
        }
        let today = now / DAY;
        let mut s = self.lock();
        s.roll(today);
        match s.cap(ip, today) {
            None => true,
            Some(cap) => s.counts.get(&(ip, site.clone())).copied().unwrap_or(0) < cap,
        }
    }

    /// Takes one of today's messages of `ip` to `site`; false (nothing taken) when the
    /// cap is reached.
    pub(super) fn take(&self, ip: IpAddr, site: &Site, now: u64) -> bool {
        if !self.active() {
            return true;
        }
        let today = now / DAY;
        let mut s = self.lock();
        s.roll(today);
        let Some(cap) = s.cap(ip, today) else {
            return true;
        };
        let key = (ip, site.clone());
        let others = s.others.get(&key).copied().unwrap_or(0);
        let n = s.counts.entry(key.clone()).or_insert(0);
        if *n + others >= cap {
            return false;
        }
        *n += 1;
        let reached = *n + others == cap;
        *s.unsynced.entry(key).or_insert(0) += 1;
        if reached {
            tracing::info!(ip = %ip, site = %site, cap, "warmup: today's cap for this site reached; its mail goes from other IPs or waits for tomorrow");
        }
        s.dirty = true;
        true
    }

    /// Today's messages taken since the last call, for the cluster's totals: the day and
    /// (IP, site, messages).
    pub(super) fn drain_unsynced(&self, now: u64) -> (u64, Vec<(IpAddr, Site, u32)>) {
        let today = now / DAY;
        let mut s = self.lock();
        s.roll(today);
        let out = s
            .unsynced
            .drain()
            .map(|((ip, site), n)| (ip, site, n))
            .collect();
        (today, out)
    }

    /// Messages [`Warmup::drain_unsynced`] gave that could not be pushed: pushed next time.
    pub(super) fn unsent(&self, day: u64, back: Vec<(IpAddr, Site, u32)>) {
        let mut s = self.lock();
        if s.day != day {
            return;
        }
        for (ip, site, n) in back {
            *s.unsynced.entry((ip, site)).or_insert(0) += n;
        }
    }

    /// The cluster's totals for `day` (every node's messages, ours included): what the
    /// others sent counts against the caps here too.
    pub(super) fn set_totals(&self, day: u64, totals: Vec<(IpAddr, Site, u32)>) {
        let mut s = self.lock();
        if s.day != day {
            return;
        }
        let others = totals
            .into_iter()
            .map(|(ip, site, total)| {
                // What we have pushed: our count less what is not pushed yet.
                let mine = s
                    .counts
                    .get(&(ip, site.clone()))
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(s.unsynced.get(&(ip, site.clone())).copied().unwrap_or(0));
                ((ip, site), total.saturating_sub(mine))
            })
            .collect::<HashMap<_, _>>();
        if others != s.others {
            let total: u32 = others.values().sum();
            tracing::debug!(
                day,
                "warmup: the other nodes sent {total} warming messages today"
            );
        }
        s.others = others;
    }

    /// When caps reset: the next UTC midnight (Unix seconds).
    pub(super) fn next_day(now: u64) -> u64 {
        (now / DAY + 1) * DAY
    }

    /// Every IP with a schedule, where it stands today.
    pub(super) fn status(&self, now: u64) -> Vec<WarmupStatus> {
        let today = now / DAY;
        let mut s = self.lock();
        s.roll(today);
        let mut ips: Vec<IpAddr> = s.schedules.keys().copied().collect();
        ips.sort();
        ips.into_iter()
            .map(|ip| {
                let cap = s.cap(ip, today);
                let start = s.schedules[&ip]
                    .start_day
                    .or_else(|| s.started.get(&ip).copied())
                    .unwrap_or(today);
                WarmupStatus {
                    ip,
                    day: today.saturating_sub(start) + 1,
                    days: s.schedules[&ip].caps.len(),
                    cap,
                    today: s
                        .counts
                        .iter()
                        .filter(|((i, _), _)| *i == ip)
                        .map(|((_, site), n)| (site.to_string(), *n))
                        .collect(),
                }
            })
            .collect()
    }

    /// Writes the counts if they changed (a temporary file, fsynced, renamed).
    pub(super) fn flush(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let stored = {
            let mut s = self.lock();
            if !s.dirty {
                return;
            }
            s.dirty = false;
            Stored {
                started: s.started.clone(),
                day: s.day,
                counts: s
                    .counts
                    .iter()
                    .map(|((ip, site), n)| (*ip, site.to_string(), *n))
                    .collect(),
            }
        };
        // The spool's one helper for small state files: temp file, fsync, rename,
        // directory fsync (this one used to skip the last step).
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
            crate::spool::replace_durably(path, &bytes)
        };
        if let Err(e) = write() {
            self.lock().dirty = true;
            tracing::error!(path = %path.display(), error = %e, "cannot save warmup counts (kept in memory)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_grow_day_by_day_per_site_and_end_when_warm() {
        let w = Warmup::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let (a, b) = (Site::from("mx.a.test"), Site::from("mx.b.test"));
        let day0 = 20_000 * DAY;
        w.set_schedules(HashMap::from([(
            ip,
            Schedule {
                caps: vec![2, 3],
                start_day: None,
            },
        )]));
        assert!(w.take(ip, &a, day0));
        assert!(w.take(ip, &a, day0 + 10));
        assert!(!w.allows(ip, &a, day0 + 20));
        assert!(!w.take(ip, &a, day0 + 20), "never beyond the cap");
        assert!(w.take(ip, &b, day0 + 20), "each site has its own");
        let st = w.status(day0 + 30);
        assert_eq!(st[0].day, 1);
        assert_eq!(st[0].cap, Some(2));
        assert_eq!(st[0].today["mx.a.test"], 2);
        // Day 2: a new day, a bigger cap.
        for _ in 0..3 {
            assert!(w.take(ip, &a, day0 + DAY));
        }
        assert!(!w.take(ip, &a, day0 + DAY));
        // Day 3: warm.
        assert!((0..100).all(|_| w.take(ip, &a, day0 + 2 * DAY)));
        assert_eq!(w.status(day0 + 2 * DAY)[0].cap, None);
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(w.allows(other, &a, day0), "no schedule, no cap");
        assert_eq!(Warmup::next_day(day0 + 5), day0 + DAY);
    }

    /// Simulated days through the whole reputation: today's count survives a restart,
    /// the next day starts at midnight UTC with its bigger cap, and then the IP is warm.
    #[test]
    fn a_warming_ip_rolls_over_at_midnight_and_keeps_today_across_a_restart() {
        use crate::clock::Clock;
        use crate::egress::Standing;
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let site = Site::from("mx.a.test");
        let day0 = 20_000 * DAY;
        let clock = Clock::manual((day0 + 23 * 3600) * 1000);
        let schedules = || {
            HashMap::from([(
                ip,
                Schedule {
                    caps: vec![2, 4],
                    start_day: None,
                },
            )])
        };
        let open = || {
            let r =
                super::super::Reputation::open_with_clock(vec![], dir.path(), None, clock.clone())
                    .unwrap();
            r.set_warmup(schedules());
            r
        };
        let rep = open();
        assert_eq!(rep.claim(ip, &site), Standing::Clean);
        assert_eq!(rep.claim(ip, &site), Standing::Clean);
        assert_eq!(rep.claim(ip, &site), Standing::Hard, "day 1's cap is 2");
        rep.flush_warmup();
        drop(rep);
        let rep = open();
        assert_eq!(
            rep.claim(ip, &site),
            Standing::Hard,
            "a restart does not reset today"
        );
        clock.advance(std::time::Duration::from_secs(3599));
        assert_eq!(
            rep.claim(ip, &site),
            Standing::Hard,
            "23:59:59 is still today"
        );
        clock.advance(std::time::Duration::from_secs(1));
        for n in 0..4 {
            assert_eq!(rep.claim(ip, &site), Standing::Clean, "day 2, message {n}");
        }
        assert_eq!(rep.claim(ip, &site), Standing::Hard, "day 2's cap is 4");
        clock.advance(std::time::Duration::from_secs(DAY));
        assert!(
            (0..50).all(|_| rep.claim(ip, &site) == Standing::Clean),
            "warm on day 3"
        );
        assert_eq!(rep.warmup_status()[0].cap, None);
    }
}
