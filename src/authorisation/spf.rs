//! SPF (RFC 7208) for our own addresses: does the sender domain's record authorise this
//! egress IP? Evaluated with `mail-auth` (ip4, ip6, a, mx, include, redirect, exists,
//! macros, the 10-lookup and void-lookup limits) through the relay's resolver, and kept
//! for the TTL of the records the evaluation read.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MX, MessageAuthenticator, Parameters, RecordSet, SpfResult, Txt};
use serde::{Deserialize, Serialize};

use super::cache::{Tracked, TtlCache};

/// A result whose records said nothing about their lifetime (or a domain that needs no
/// lookup) is kept this long.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Kept at least this long, so a zone with TTL 0 does not cost an evaluation per message.
const MIN_TTL: Duration = Duration::from_secs(5);
/// And at most a day, so a changed record is seen the next day whatever its TTL.
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// A lookup that failed (temperror) is asked again after this long.
const TEMPERROR_TTL: Duration = Duration::from_secs(60);
/// Domains whose results are kept at most.
const MAX_RESULTS: usize = 100_000;

/// The SPF result for one (domain, IP), as RFC 7208 §2.6 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfOutcome {
    /// The IP is authorised.
    Pass,
    /// The domain says the IP is not authorised.
    Fail,
    /// Probably not authorised (`~all`): receivers treat it as a failure for DMARC.
    SoftFail,
    /// The domain makes no assertion about the IP.
    Neutral,
    /// The domain publishes no SPF record.
    None,
    /// A lookup failed; try again later.
    TempError,
    /// The record is broken (syntax, too many lookups).
    PermError,
}

impl SpfOutcome {
    /// The result's name as RFC 7208 writes it (`softfail`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }
}

impl std::fmt::Display for SpfOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<SpfResult> for SpfOutcome {
    fn from(r: SpfResult) -> Self {
        match r {
            SpfResult::Pass => Self::Pass,
            SpfResult::Fail => Self::Fail,
            SpfResult::SoftFail => Self::SoftFail,
            SpfResult::Neutral => Self::Neutral,
            SpfResult::None => Self::None,
            SpfResult::TempError => Self::TempError,
            SpfResult::PermError => Self::PermError,
        }
    }
}

/// Which identity is checked: the MAIL FROM domain, or the HELO name for a null sender
/// (RFC 7208 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// The MAIL FROM domain.
    MailFrom(&'a str),
    /// The HELO name (bounces).
    Helo,
}

/// A result and until when it holds.
type Fresh = (SpfOutcome, Instant);
/// One domain's results, per IP (a pool has a handful: a list beats a map).
type PerIp = Vec<(IpAddr, Fresh)>;

/// The evaluator with its caches; one per relay.
pub(super) struct SpfChecker {
    authenticator: MessageAuthenticator,
    /// Our host name, for the `%{r}` macro.
    host: String,
    txt: TtlCache<Box<str>, Txt>,
    mx: TtlCache<Box<str>, RecordSet<MX>>,
    v4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    v6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
    /// Per domain (lower case), per IP: looked up by `&str`, so a delivery's check
    /// allocates nothing.
    results: Mutex<HashMap<Box<str>, PerIp>>,
    /// Evaluations made (not answered from the result cache): the cost measure.
    evaluations: AtomicU64,
    /// Moved on by [`SpfChecker::forget`]: an evaluation that began before it does not
    /// store its (possibly stale) result.
    generation: AtomicU64,
}

impl SpfChecker {
    pub(super) fn new(authenticator: MessageAuthenticator, host: &str) -> Self {
        Self {
            authenticator,
            host: host.to_string(),
            txt: TtlCache::new(),
            mx: TtlCache::new(),
            v4: TtlCache::new(),
            v6: TtlCache::new(),
            ptr: TtlCache::new(),
            results: Mutex::new(HashMap::new()),
            evaluations: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    pub(super) fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::Relaxed)
    }

    /// The cached result for (domain, ip), if still fresh.
    pub(super) fn cached(&self, domain: &str, ip: IpAddr) -> Option<SpfOutcome> {
        let results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        let (_, (outcome, until)) = results.get(domain)?.iter().find(|(i, _)| *i == ip)?;
        (Instant::now() < *until).then_some(*outcome)
    }

    /// The SPF result of `identity` for `ip` announcing `helo`: from the cache while the
    /// records it was made of are fresh, else evaluated.
    pub(super) async fn check(&self, identity: Identity<'_>, ip: IpAddr, helo: &str) -> SpfOutcome {
        let name = match identity {
            Identity::MailFrom(d) => d,
            Identity::Helo => helo,
        };
        let domain: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
        if let Some(hit) = self.cached(&domain, ip) {
            return hit;
        }
        let domain = domain.into_owned();
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        crate::metrics::metrics().spf_evaluations.inc();
        // The record is asked about postmaster: the result is kept per domain, so it
        // must not depend on a local part (`%{l}` macros are rare in practice).
        let sender = format!("postmaster@{domain}");
        let params = match identity {
            Identity::MailFrom(_) => SpfParameters::verify_mail_from(ip, helo, &self.host, &sender),
            Identity::Helo => SpfParameters::verify_ehlo(ip, &domain, &self.host),
        };
        let earliest = Mutex::new(None);
        let txt = Tracked {
            cache: &self.txt,
            earliest: &earliest,
        };
        let mx = Tracked {
            cache: &self.mx,
            earliest: &earliest,
        };
        let v4 = Tracked {
            cache: &self.v4,
            earliest: &earliest,
        };
        let v6 = Tracked {
            cache: &self.v6,
            earliest: &earliest,
        };
        let ptr = Tracked {
            cache: &self.ptr,
            earliest: &earliest,
        };
        let output = self
            .authenticator
            .verify_spf(
                Parameters::new(params)
                    .with_txt_cache(&txt)
                    .with_mx_cache(&mx)
                    .with_ipv4_cache(&v4)
                    .with_ipv6_cache(&v6)
                    .with_ptr_cache(&ptr),
            )
            .await;
        let outcome = SpfOutcome::from(output.result());
        let now = Instant::now();
        let until = match outcome {
            SpfOutcome::TempError => now + TEMPERROR_TTL,
            _ => {
                let seen = earliest
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .map_or(DEFAULT_TTL, |t| t.saturating_duration_since(now));
                now + seen.clamp(MIN_TTL, MAX_TTL)
            }
        };
        let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return outcome;
        }
        if results.len() >= MAX_RESULTS {
            results.retain(|_, v| {
                v.retain(|(_, (_, u))| *u > now);
                !v.is_empty()
            });
            if results.len() >= MAX_RESULTS {
                results.clear();
            }
        }
        let per_ip = results.entry(domain.into_boxed_str()).or_default();
        per_ip.retain(|(i, _)| *i != ip);
        per_ip.push((ip, (outcome, until)));
        outcome
    }

    /// Forgets every result and record, so the next check evaluates again (a reload, a
    /// recheck); with `resolver_too`, the resolver's cached answers as well.
    pub(super) fn forget(&self, resolver_too: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // The resolver's own cache too on a reload: an operator who fixed a record and
        // reloads expects it to be read now, not when the old answer's TTL runs out.
        // (Not for the periodic recheck: it would empty the MX answers too.)
        if resolver_too {
            self.authenticator.resolver().clear_cache();
        }
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.txt.clear();
        self.mx.clear();
        self.v4.clear();
        self.v6.clear();
        self.ptr.clear();
    }
}
