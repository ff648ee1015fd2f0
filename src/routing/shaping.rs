//! Traffic shaping per destination site (and per egress IP × site): how many
//! connections at once, messages per connection, messages per hour and new connections
//! per minute a receiver accepts from us — what the big receivers publish or enforce,
//! as KumoMTA's shaping file does. Rules are data (`[[shaping]]`); this applies them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;

use tokio::sync::Semaphore;

use crate::config::ShapingConfig;
use crate::site::Site;

/// The limits that apply to one delivery: the site's, tightened by its IP's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Connections to the site at once.
    pub max_connections: Option<usize>,
    /// Messages per connection before it is closed.
    pub messages_per_connection: Option<u32>,
    /// Messages per hour to the site.
    pub messages_per_hour: Option<u32>,
    /// New connections per minute to the site.
    pub connections_per_minute: Option<u32>,
}

impl Shape {
    /// The shape of a site that asked us to slow down: one connection at a time and
    /// half the configured rates (never below one).
    fn tightened(self) -> Self {
        let half = |n: Option<u32>| n.map(|n| (n / 2).max(1));
        Self {
            max_connections: Some(1),
            messages_per_connection: self.messages_per_connection,
            messages_per_hour: half(self.messages_per_hour),
            connections_per_minute: half(self.connections_per_minute),
        }
    }

    fn from_rule(r: &ShapingConfig) -> Self {
        Self {
            max_connections: r.max_connections,
            messages_per_connection: r.messages_per_connection,
            messages_per_hour: r.messages_per_hour,
            connections_per_minute: r.connections_per_minute,
        }
    }
}

/// Whether `rule` covers a delivery to `domain` at `site`: a pattern matches the
/// recipient domain, the site's name, or one of its MX host names (`*.example.com`
/// covers the domain and its subdomains).
pub fn covers(rule: &ShapingConfig, domain: &str, site: &Site) -> bool {
    let matches = crate::config::name_matches;
    rule.sites.iter().any(|p| {
        matches(p, domain)
            || matches(p, site.as_str())
            || site.as_str().split(',').any(|host| matches(p, host))
    })
}

/// The shaping state: rate buckets and per-site connection slots.
#[derive(Default)]
pub struct Shaper {
    rules: Vec<ShapingConfig>,
    /// Tokens and when they were counted (Unix ms), per `kind|site|ip` key.
    buckets: Mutex<HashMap<String, (f64, u64)>>,
    /// Connection slots per site (and per IP × site) with a `max_connections`.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Sites that said "too fast", until when: their shape is tightened whatever the
    /// rule (one connection, half the rates), for every domain they serve (Unix ms).
    tightened: Mutex<HashMap<Site, u64>>,
    /// Rates and tightened periods run on this clock (the reputation's).
    clock: Clock,
    /// The cluster's count of connections, when several nodes share the limits.
    shared: std::sync::OnceLock<Arc<dyn SharedSlots>>,
}

/// A permit for one connection under the site's (and IP's) connection limits.
pub struct Slot {
    _site: Option<tokio::sync::OwnedSemaphorePermit>,
    _ip: Option<tokio::sync::OwnedSemaphorePermit>,
    _leases: Vec<Lease>,
}

/// An answer of the shared count, in time.
pub type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Several nodes' count of connections to a site (a cluster): the site's
/// `max_connections` holds for all of them together.
pub trait SharedSlots: Send + Sync {
    /// Takes one of `limit` leases of `key`: `Ok(Some(lease))`, or `Ok(None)` while all
    /// are taken (by any node). `Err(())`: the shared count is unreachable, this node
    /// counts alone.
    fn take(&self, key: &str, limit: usize) -> Pending<'_, Result<Option<String>, ()>>;
    /// Gives `lease` of `key` back (in the background).
    fn give_back(&self, key: &str, lease: String);
    /// One of `n` per `period` for `key`, counted over all nodes (GCRA): `Ok(Ok(()))`,
    /// or `Ok(Err(wait))` until one is free. `Err(())`: unreachable, count alone.
    fn rate(
        &self,
        key: &str,
        n: u32,
        period: Duration,
    ) -> Pending<'_, Result<Result<(), Duration>, ()>>;
}

/// A lease of the shared count, given back when the connection is done.
struct Lease {
    shared: Arc<dyn SharedSlots>,
    key: String,
    lease: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared
            .give_back(&self.key, std::mem::take(&mut self.lease));
    }
}

/// Waits for a lease of `key` under `limit`; `None` when the shared count cannot be
/// reached (the local limit still holds).
async fn lease(shared: &Arc<dyn SharedSlots>, key: String, limit: usize) -> Option<Lease> {
    loop {
        match shared.take(&key, limit).await {
            Ok(Some(lease)) => {
                return Some(Lease {
                    shared: shared.clone(),
                    key,
                    lease,
                });
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(()) => return None,
        }
    }
}

impl Shaper {
    /// A shaper for these rules, timed by `clock`.
    pub fn new(rules: Vec<ShapingConfig>, clock: Clock) -> Self {
        Self {
            rules,
            clock,
            ..Self::default()
        }
    }

    /// Connection limits hold across the nodes that share `slots` from now on.
    pub fn share_slots(&self, slots: Arc<dyn SharedSlots>) {
        let _ = self.shared.set(slots);
    }

    /// The shared count this shaper uses, to hand on to its successor after a reload.
    pub fn shared_slots(&self) -> Option<Arc<dyn SharedSlots>> {
        self.shared.get().cloned()
    }

    /// The rules (kept across reloads with their state when unchanged).
    pub fn rules(&self) -> &[ShapingConfig] {
        &self.rules
    }

    /// The site-wide shape for `domain` at `site`, and the one for `ip` there.
    pub fn shape(&self, domain: &str, site: &Site, ip: Option<IpAddr>) -> (Shape, Shape) {
        let site_rule = self
            .rules
            .iter()
            .find(|r| r.egress.is_none() && covers(r, domain, site));
        let ip_rule = ip.and_then(|ip| {
            self.rules
                .iter()
                .find(|r| r.egress == Some(ip) && covers(r, domain, site))
        });
        let mut of_site = site_rule.map(Shape::from_rule).unwrap_or_default();
        if self.is_tightened(site) {
            of_site = of_site.tightened();
        }
        (of_site, ip_rule.map(Shape::from_rule).unwrap_or_default())
    }

    /// `site` said "too fast" (a throttle verdict): for `period`, one connection at a
    /// time to it and half its configured rates, whichever domain the mail is for. A
    /// repeat extends the period.
    pub fn tighten(&self, site: &Site, period: Duration) {
        let now = self.clock.now_ms();
        let until = now + period.max(Duration::from_secs(1)).as_millis() as u64;
        let mut tightened = self.tightened.lock().unwrap_or_else(|e| e.into_inner());
        tightened.retain(|_, t| *t > now);
        let fresh = tightened.insert(site.clone(), until).is_none();
        if fresh {
            tracing::info!(
                site = %site,
                seconds = period.as_secs(),
                "site throttles us; its shaping is tightened (one connection at a time)"
            );
        }
    }

    /// Whether `site` is in a tightened period.
    pub fn is_tightened(&self, site: &Site) -> bool {
        let tightened = self.tightened.lock().unwrap_or_else(|e| e.into_inner());
        if tightened.is_empty() {
            return false;
        }
        tightened
            .get(site)
            .is_some_and(|t| *t > self.clock.now_ms())
    }

    /// Takes one token from the bucket `key` holding `n` per `period`; when empty,
    /// how long until one is there.
    fn take(&self, key: &str, n: u32, period: Duration) -> Result<(), Duration> {
        if n == 0 {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let cap = f64::from(n);
        let rate = cap / period.as_secs_f64();
        let period_ms = period.as_millis() as u64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, at)| now.saturating_sub(*at) < period_ms);
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.saturating_sub(*at) as f64 / 1000.0 * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    /// One more message to `site` (from `ip`) this hour, or how long until one may go.
    ///
    /// # Errors
    /// The wait until the hourly rate allows one more.
    pub fn message(
        &self,
        site: &Site,
        ip: Option<IpAddr>,
        shapes: (Shape, Shape),
    ) -> Result<(), Duration> {
        let hour = Duration::from_secs(3600);
        if let Some(n) = shapes.0.messages_per_hour {
            self.take(&format!("m|{site}"), n, hour)?;
        }
        if let (Some(n), Some(ip)) = (shapes.1.messages_per_hour, ip) {
            self.take(&format!("m|{site}|{ip}"), n, hour)?;
        }
        Ok(())
    }

    /// One of `n` per `period` for `key`: over the cluster when the shaper shares its
    /// counts (and Redis answers), else on this node.
    async fn take_shared(&self, key: &str, n: u32, period: Duration) -> Result<(), Duration> {
        if let Some(shared) = self.shared.get()
            && let Ok(taken) = shared.rate(key, n, period).await
        {
            return taken;
        }
        self.take(key, n, period)
    }

    /// [`Shaper::message`] with the site's hourly rate counted over the cluster.
    ///
    /// # Errors
    /// The wait until the hourly rate allows one more.
    pub async fn message_shared(
        &self,
        site: &Site,
        shapes: (Shape, Shape),
    ) -> Result<(), Duration> {
        if let Some(n) = shapes.0.messages_per_hour {
            self.take_shared(&format!("m|{site}"), n, Duration::from_secs(3600))
                .await?;
        }
        Ok(())
    }

    /// [`Shaper::connection`] with the site's and the IP's connection rates counted over
    /// the cluster.
    ///
    /// # Errors
    /// The wait until the connection rate allows one more.
    pub async fn connection_shared(
        &self,
        site: &Site,
        ip: Option<IpAddr>,
        shapes: (Shape, Shape),
    ) -> Result<(), Duration> {
        let minute = Duration::from_secs(60);
        if let Some(n) = shapes.0.connections_per_minute {
            self.take_shared(&format!("c|{site}"), n, minute).await?;
        }
        if let (Some(n), Some(ip)) = (shapes.1.connections_per_minute, ip) {
            self.take_shared(&format!("c|{site}|{ip}"), n, minute)
                .await?;
        }
        Ok(())
    }

    fn semaphore(&self, key: String, n: usize) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() > 10_000 {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(n.max(1))))
            .clone()
    }

    /// Waits for a connection slot under the site's and the IP's `max_connections`.
    pub async fn slot(&self, site: &Site, ip: Option<IpAddr>, shapes: (Shape, Shape)) -> Slot {
        let site_slot = match shapes.0.max_connections {
            // A tightened site has its own one-connection slot: the configured one
            // keeps its permits for when the period is over.
            Some(1) if self.is_tightened(site) => self
                .semaphore(format!("{site}|tight"), 1)
                .acquire_owned()
                .await
                .ok(),
            Some(n) => self
                .semaphore(format!("{site}"), n)
                .acquire_owned()
                .await
                .ok(),
            None => None,
        };
        let ip_slot = match (shapes.1.max_connections, ip) {
            (Some(n), Some(ip)) => self
                .semaphore(format!("{site}|{ip}"), n)
                .acquire_owned()
                .await
                .ok(),
            _ => None,
        };
        // Across the cluster: a lease of the site's (and the IP's) shared count.
        let mut leases = Vec::new();
        if let Some(shared) = self.shared.get() {
            if let Some(n) = shapes.0.max_connections
                && let Some(l) = lease(shared, format!("{site}"), n).await
            {
                leases.push(l);
            }
            if let (Some(n), Some(ip)) = (shapes.1.max_connections, ip)
                && let Some(l) = lease(shared, format!("{site}|{ip}"), n).await
            {
                leases.push(l);
            }
        }
        Slot {
            _site: site_slot,
            _ip: ip_slot,
            _leases: leases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(sites: &[&str], egress: Option<&str>) -> ShapingConfig {
        ShapingConfig {
            sites: sites.iter().map(|s| s.to_string()).collect(),
            egress: egress.map(|e| e.parse().unwrap()),
            max_connections: Some(2),
            messages_per_connection: None,
            messages_per_hour: Some(3),
            connections_per_minute: None,
        }
    }

    #[test]
    fn rules_cover_domains_sites_and_mx_hosts() {
        let outlook = Site::from("mail.protection.outlook.com");
        let bell = Site::from("mx1.bell.ca,mx2.bell.ca");
        let r = rule(&["*.outlook.com", "bell.ca"], None);
        assert!(covers(&r, "contoso.com", &outlook));
        assert!(covers(
            &r,
            "hotmail.com",
            &Site::from("hotmail-com.olc.protection.outlook.com")
        ));
        assert!(
            !covers(&r, "bell.net", &bell),
            "bell.ca is neither the domain nor an MX"
        );
        let r = rule(&["*.bell.ca"], None);
        assert!(covers(&r, "sympatico.ca", &bell), "an MX host matches");
        assert!(!covers(&r, "example.com", &Site::from("mx.example.com")));
    }

    #[test]
    fn hourly_tokens_and_the_ip_rule_apply_together() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let clock = Clock::manual(1_800_000_000_000);
        let s = Shaper::new(
            vec![rule(&["*"], None), rule(&["*"], Some("192.0.2.1"))],
            clock.clone(),
        );
        let site = Site::from("mx.a.test");
        let shapes = s.shape("a.test", &site, Some(ip));
        assert_eq!(shapes.0.messages_per_hour, Some(3));
        assert_eq!(shapes.1.messages_per_hour, Some(3));
        for _ in 0..3 {
            assert!(s.message(&site, Some(ip), shapes).is_ok());
        }
        let wait = s.message(&site, Some(ip), shapes).unwrap_err();
        assert!(
            wait > Duration::from_secs(1000) && wait <= Duration::from_secs(1200),
            "{wait:?}"
        );
        // Simulated time: a token is earned back every 20 minutes, not sooner.
        clock.advance(wait - Duration::from_secs(1));
        assert!(s.message(&site, Some(ip), shapes).is_err(), "not yet");
        clock.advance(Duration::from_secs(1));
        assert!(s.message(&site, Some(ip), shapes).is_ok(), "earned back");
        assert!(s.message(&site, Some(ip), shapes).is_err(), "one, not two");
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert!(
                s.message(&site, Some(ip), shapes).is_ok(),
                "a quiet hour refills it"
            );
        }
        assert!(
            s.message(&site, Some(ip), shapes).is_err(),
            "to its cap only"
        );
        // Another site has its own budget.
        let other = Site::from("mx.b.test");
        assert!(
            s.message(&other, Some(ip), s.shape("b.test", &other, Some(ip)))
                .is_ok()
        );
    }

    #[test]
    fn a_throttled_site_is_tightened_for_every_domain_for_its_period() {
        let clock = Clock::manual(1_800_000_000_000);
        let s = Shaper::new(
            vec![ShapingConfig {
                max_connections: Some(10),
                connections_per_minute: Some(30),
                ..rule(&["*.bell.ca"], None)
            }],
            clock.clone(),
        );
        let bell = Site::from("mx1.bell.ca,mx2.bell.ca");
        let before = s.shape("bell.net", &bell, None).0;
        assert_eq!(before.max_connections, Some(10));
        s.tighten(&bell, Duration::from_millis(1)); // at least a second
        for domain in ["bell.net", "sympatico.ca"] {
            let (tight, _) = s.shape(domain, &bell, None);
            assert_eq!(tight.max_connections, Some(1), "{domain}");
            assert_eq!(tight.connections_per_minute, Some(15));
            assert_eq!(tight.messages_per_hour, Some(1), "half of 3, at least one");
        }
        let other = Site::from("mx.other.test");
        assert_eq!(s.shape("other.test", &other, None).0, Shape::default());
        clock.advance(Duration::from_millis(999));
        assert_eq!(s.shape("bell.net", &bell, None).0.max_connections, Some(1));
        clock.advance(Duration::from_millis(2));
        assert_eq!(
            s.shape("bell.net", &bell, None).0,
            before,
            "over after its period"
        );
    }
}
