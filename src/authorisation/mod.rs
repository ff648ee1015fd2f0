//! Authorisation: whether an egress IP (or a smarthost's address) may send for a sender
//! domain. Since 2024 the big receivers refuse mail that passes neither SPF nor DKIM
//! (Gmail 5.7.26, Microsoft 5.7.515, Yahoo 5.7.9), so rotating to an IP outside the
//! sender's SPF turns a reputation save into a DMARC failure. Routing asks this module
//! before it picks an IP; the queue teaches it what receivers refused.
//!
//! Two sources, both per (sender domain, IP): the SPF result ([`spf`], cached by the
//! records' TTL), and denials learned from receivers ([`Denial`]: refused for
//! authentication from one IP, accepted from another).

mod cache;
mod denials;
pub mod report;
pub mod spf;

pub use denials::Denial;
pub use spf::{Identity, SpfOutcome};

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::dns::Resolver;
use crate::egress::EgressIp;
use crate::envelope::Sender;

use spf::SpfChecker;

/// Sender domains are remembered for the status page and the rechecks this long.
const SEEN_FOR_SECS: u64 = 86_400;
/// A sender domain's last-seen time is written at most this often (a delivery per
/// message must not take a lock and allocate for it each time).
const SEEN_RESOLUTION_SECS: u64 = 60;

/// The "sending unauthorised" warning is repeated per sender domain at most this often.
pub const WARN_EVERY_SECS: u64 = 600;

/// Whether an address may send for a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorised {
    /// SPF passes and no receiver said otherwise.
    Yes,
    /// SPF does not pass (the result says how).
    No(SpfOutcome),
    /// SPF passes, but a receiver refused the pair for authentication and accepted the
    /// mail from another IP: DKIM/DMARC alignment fails from this one.
    Denied,
    /// The kernel chooses the source address: nothing to evaluate.
    Unknown,
}

impl Authorised {
    /// Whether mail may leave from the address without failing authentication.
    pub fn passes(self) -> bool {
        self == Self::Yes
    }
}

/// An IP whose authorisation for a domain changed between two checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The sender domain.
    pub domain: String,
    /// The address.
    pub ip: IpAddr,
    /// The result before and now.
    pub was: SpfOutcome,
    /// Now.
    pub now: SpfOutcome,
}

/// One sender domain's recent deliveries.
#[derive(Debug, Clone, Copy)]
struct Seen {
    last: u64,
    count: u64,
    since: u64,
}

/// Cheap clonable handle, shared by routing, the queue and the admin API.
#[derive(Clone)]
pub struct Authorisation {
    shared: Arc<Shared>,
}

struct Shared {
    spf: SpfChecker,
    denials: denials::Denials,
    clock: Clock,
    /// Sender domains seen lately: (Unix seconds of the last sighting, deliveries
    /// since the day's count began, when it began).
    seen: Mutex<HashMap<String, Seen>>,
    /// When each sender domain was last warned about mail leaving unauthorised.
    warned: Mutex<HashMap<String, u64>>,
    /// The last rechecked result per (domain, IP), to tell when it changes.
    known: Mutex<HashMap<(String, IpAddr), SpfOutcome>>,
}

impl Authorisation {
    /// The evaluator on `resolver`'s name servers, denials kept in `state_dir` (none: in
    /// memory only). `host` is our name for SPF's `%{r}` macro.
    pub fn new(resolver: &Resolver, host: &str, state_dir: Option<&Path>, clock: Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                spf: SpfChecker::new(resolver.authenticator(), host),
                denials: denials::Denials::open(state_dir.map(|d| d.join("authorisation.json"))),
                clock,
                seen: Mutex::new(HashMap::new()),
                warned: Mutex::new(HashMap::new()),
                known: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The SPF result of `identity` for `ip` announcing `helo` (cached by TTL).
    pub async fn spf(&self, identity: Identity<'_>, ip: IpAddr, helo: &str) -> SpfOutcome {
        self.shared.spf.check(identity, ip, helo).await
    }

    /// Evaluations made so far (not answered from the cache): what SPF costs.
    pub fn evaluations(&self) -> u64 {
        self.shared.spf.evaluations()
    }

    /// Whether `egress` may send for `sender`: SPF of the MAIL FROM domain (the HELO
    /// name for a null sender), and what receivers taught.
    pub async fn authorises(&self, sender: &Sender, egress: &EgressIp) -> Authorised {
        let Some(ip) = egress.ip else {
            return Authorised::Unknown;
        };
        let identity = identity_of(sender);
        let outcome = self.spf(identity, ip, &egress.helo).await;
        if outcome != SpfOutcome::Pass {
            return Authorised::No(outcome);
        }
        let domain = domain_of(sender, &egress.helo);
        if self
            .shared
            .denials
            .denies(domain, ip, self.shared.clock.now())
        {
            return Authorised::Denied;
        }
        Authorised::Yes
    }

    /// Whether a receiver refused `ip` (announcing `egress.helo`) for `sender`'s domain
    /// and took the mail from another address.
    pub fn denied(&self, sender: &Sender, egress: &EgressIp, ip: IpAddr) -> bool {
        self.shared
            .denials
            .denies(domain_of(sender, &egress.helo), ip, self.shared.clock.now())
    }

    /// Whether to log (again) that `domain`'s mail leaves from addresses its SPF does
    /// not authorise: once per domain per [`WARN_EVERY_SECS`], not per message (a domain
    /// without SPF would fill the log); the metric counts every one.
    pub fn warn_due(&self, domain: &str) -> bool {
        let now = self.shared.clock.now();
        let mut warned = self.shared.warned.lock().unwrap_or_else(|e| e.into_inner());
        match warned.get_mut(domain) {
            Some(t) if now.saturating_sub(*t) < WARN_EVERY_SECS => false,
            Some(t) => {
                *t = now;
                true
            }
            None => {
                warned.retain(|_, t| now.saturating_sub(*t) < WARN_EVERY_SECS);
                warned.insert(domain.to_string(), now);
                true
            }
        }
    }

    /// Counts a delivery of `sender`'s mail (for the status page, the rechecks and the
    /// complaint rate).
    pub fn note_sender(&self, sender: &Sender) {
        let Sender::Address(a) = sender else {
            return;
        };
        let now = self.shared.clock.now();
        let mut seen = self.shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(a.domain()) {
            Some(s) if now.saturating_sub(s.since) >= SEEN_FOR_SECS => {
                *s = Seen {
                    last: now,
                    count: 1,
                    since: now,
                }
            }
            Some(s) => {
                s.count += 1;
                if now.saturating_sub(s.last) >= SEEN_RESOLUTION_SECS {
                    s.last = now;
                }
            }
            None => {
                seen.retain(|_, s| now.saturating_sub(s.last) < SEEN_FOR_SECS);
                seen.insert(
                    a.domain().to_ascii_lowercase(),
                    Seen {
                        last: now,
                        count: 1,
                        since: now,
                    },
                );
            }
        }
    }

    /// Deliveries of `domain`'s mail in the current day's count.
    pub fn sent(&self, domain: &str) -> u64 {
        let seen = self.shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(domain).map_or(0, |s| s.count)
    }

    /// The sender domains seen in the last day, by name.
    pub fn recent_senders(&self) -> Vec<String> {
        let now = self.shared.clock.now();
        let seen = self.shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = seen
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last) < SEEN_FOR_SECS)
            .map(|(d, _)| d.clone())
            .collect();
        out.sort();
        out
    }

    /// Records that a receiver refused `denial.ip` for `denial.domain` and took the mail
    /// from another address; returns the stored denial (with its count).
    pub fn deny(&self, mut denial: Denial) -> Denial {
        let now = self.shared.clock.now();
        denial.first_seen = now;
        denial.last_seen = now;
        denial.count = 1;
        denial.until = now + denials::DENIAL_TTL_SECS;
        self.shared.denials.record(denial)
    }

    /// The live denials of `domain` (or every domain).
    pub fn denials(&self, domain: Option<&str>) -> Vec<Denial> {
        self.shared.denials.list(domain, self.shared.clock.now())
    }

    /// Forgets every SPF result and record (a reload: the operator may have fixed DNS).
    pub fn forget(&self) {
        self.shared.spf.forget(true);
    }

    /// Rechecks the domains seen in the last day now and every `every` (with the
    /// listings refresh), calling `changed` for each (domain, IP) whose authorisation
    /// changed: the operator hears of an SPF edit that drops (or adds) an egress IP.
    pub fn spawn_rechecks(
        &self,
        egress: Vec<(IpAddr, String)>,
        every: std::time::Duration,
        changed: impl Fn(Change) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let auth = self.clone();
        tokio::spawn(async move {
            loop {
                let domains = auth.recent_senders();
                if !domains.is_empty() {
                    for change in auth.recheck(&domains, &egress).await {
                        changed(change);
                    }
                    tracing::debug!(domains = domains.len(), "sender domains' SPF rechecked");
                }
                tokio::time::sleep(every.max(std::time::Duration::from_secs(1))).await;
            }
        })
    }

    /// Evaluates every (domain, IP) pair afresh (DNS asked again) and returns the pairs
    /// whose result changed since the last recheck: at start, on reload and with each
    /// listings refresh, for the domains seen in the last day.
    pub async fn recheck(&self, domains: &[String], egress: &[(IpAddr, String)]) -> Vec<Change> {
        self.shared.spf.forget(false);
        let mut changes = Vec::new();
        for domain in domains {
            for (ip, helo) in egress {
                let now = self.spf(Identity::MailFrom(domain), *ip, helo).await;
                if now == SpfOutcome::TempError {
                    continue;
                }
                let was = self
                    .shared
                    .known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((domain.clone(), *ip), now);
                if let Some(was) = was
                    && (was == SpfOutcome::Pass) != (now == SpfOutcome::Pass)
                {
                    changes.push(Change {
                        domain: domain.clone(),
                        ip: *ip,
                        was,
                        now,
                    });
                }
            }
        }
        changes
    }
}

/// The identity SPF checks for `sender`: the MAIL FROM domain, or the HELO name for a
/// null sender (RFC 7208 §2.3).
pub fn identity_of(sender: &Sender) -> Identity<'_> {
    match sender {
        Sender::Address(a) => Identity::MailFrom(a.domain()),
        Sender::Null => Identity::Helo,
    }
}

/// The domain whose authorisation a delivery from an IP announcing `helo` needs.
pub fn domain_of<'a>(sender: &'a Sender, helo: &'a str) -> &'a str {
    match sender {
        Sender::Address(a) => a.domain(),
        Sender::Null => helo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn auth(clock: &Clock, dir: &Path) -> Authorisation {
        let resolver = Resolver::new(&crate::config::DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: crate::config::HumanDuration::from_secs(1),
            ..Default::default()
        })
        .unwrap();
        Authorisation::new(&resolver, "relay.test", Some(dir), clock.clone())
    }

    fn denial(domain: &str, ip: &str) -> Denial {
        Denial {
            domain: domain.into(),
            ip: ip.parse().unwrap(),
            site: "mx.gmail.test".into(),
            reply: "550 5.7.26 unauthenticated".into(),
            accepted_via: "127.0.0.2".into(),
            first_seen: 0,
            last_seen: 0,
            count: 0,
            until: 0,
        }
    }

    #[tokio::test]
    async fn a_denial_holds_for_its_domain_only_survives_a_restart_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_000_000_000);
        let a = auth(&clock, dir.path());
        let sender =
            Sender::Address(crate::envelope::Address::parse("x@News.Example", false).unwrap());
        let other =
            Sender::Address(crate::envelope::Address::parse("y@other.example", false).unwrap());
        let egress = EgressIp {
            ip: Some("127.0.0.3".parse().unwrap()),
            helo: "out3.relay.test".into(),
        };
        let ip = egress.ip.unwrap();
        assert!(!a.denied(&sender, &egress, ip));
        let stored = a.deny(denial("News.Example", "127.0.0.3"));
        assert_eq!((stored.domain.as_str(), stored.count), ("news.example", 1));
        assert_eq!(a.deny(denial("news.example", "127.0.0.3")).count, 2);
        assert!(a.denied(&sender, &egress, ip));
        assert!(
            !a.denied(&other, &egress, ip),
            "another sender keeps the IP"
        );

        // A restart reads them back.
        let again = auth(&clock, dir.path());
        assert!(again.denied(&sender, &egress, ip));
        assert_eq!(again.denials(Some("news.example")).len(), 1);

        clock.advance(Duration::from_secs(denials::DENIAL_TTL_SECS + 1));
        assert!(!again.denied(&sender, &egress, ip));
        assert!(again.denials(None).is_empty());
    }

    #[tokio::test]
    async fn sender_domains_are_counted_for_a_day_and_warned_about_once_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_000_000_000);
        let a = auth(&clock, dir.path());
        let sender =
            Sender::Address(crate::envelope::Address::parse("x@news.example", false).unwrap());
        for _ in 0..3 {
            a.note_sender(&sender);
        }
        a.note_sender(&Sender::Null);
        assert_eq!(a.recent_senders(), ["news.example"]);
        assert_eq!(a.sent("news.example"), 3);
        assert!(a.warn_due("news.example"));
        assert!(!a.warn_due("news.example"));
        clock.advance(Duration::from_secs(WARN_EVERY_SECS));
        assert!(a.warn_due("news.example"));
        clock.advance(Duration::from_secs(SEEN_FOR_SECS));
        assert!(a.recent_senders().is_empty());
        a.note_sender(&sender);
        assert_eq!(a.sent("news.example"), 1, "a new day's count");
    }
}
