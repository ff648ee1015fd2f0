//! TLS policy: what a destination requires of the outbound hop, and whether a session
//! met it.
//!
//! - MTA-STS (RFC 8461): the `_mta-sts` TXT id, the policy over HTTPS, cached for its
//!   `max_age` in the spool (`mta-sts.json`, so a restart neither forgets an enforced
//!   policy nor refetches every domain), refetched when the id changes; a failed fetch
//!   keeps a cached policy that has not expired (§5.1).
//! - DANE (RFC 7672): MX and `_25._tcp.MX` TLSA answers validated under DNSSEC, the
//!   TLSA records looked at only for a host named by a secure MX answer whose address
//!   records are secure too (§2.2); a secure TLSA RRset makes TLS mandatory and is
//!   checked by [`dane::DaneVerifier`]; a bogus answer defers, never reads as "no
//!   TLSA". DANE takes precedence over MTA-STS (RFC 8461 §2).
//! - TLS-RPT (RFC 8460): every session under a policy is counted ([`outcomes`]), and a
//!   daily report goes to the domains that ask ([`report`]).
//!
//! Outbound asks [`TlsPolicies::domain`] once per delivery and [`TlsPolicies::host`] per
//! MX host; both are a map lookup while the cached answers are fresh, so a policy costs
//! a delivery nothing measurable (see the README's benchmark note). Every route to the
//! destination — first attempt, reroute, second opinion, smarthost — goes through
//! outbound's one delivery function, so none steps around the policy.

pub mod dane;
pub mod fetch;
pub mod outcomes;
pub mod pending;
pub mod report;
pub mod sts;
pub mod verify;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::{RData, RecordType};
use mail_auth::report::tlsrpt::{PolicyType, ResultType};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

use crate::clock::Clock;
use crate::config::{TlsPolicyConfig, TlsRptConfig};
use crate::dns::{Resolver, Validated};
pub use outcomes::{Outcome, SessionResult};
pub use sts::{StsMode, StsPolicy};

/// The policy store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsPolicyError {
    /// `[delivery] tls_ca_file` is unreadable or holds no certificate.
    #[error("delivery.tls_ca_file: {0}")]
    CaFile(String),
    /// A state file in the spool could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A domain's MTA-STS state as cached (and persisted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StsEntry {
    /// The TXT id the policy was fetched for; none: the domain has no policy.
    pub id: Option<String>,
    /// The policy, while fetched and not expired.
    pub policy: Option<StsPolicy>,
    /// When the policy was fetched (Unix seconds).
    pub fetched_at: u64,
    /// When it expires: `fetched_at + max_age`.
    pub expires_at: u64,
    /// When the TXT record was last looked at (Unix seconds).
    pub checked_at: u64,
    /// The last fetch's failure, if it failed.
    pub error: Option<String>,
}

/// What a delivery to one domain must obey, decided once per delivery.
#[derive(Debug, Clone)]
pub struct DomainPolicy {
    /// The recipient domain.
    pub domain: String,
    /// An `enforce` or `testing` MTA-STS policy.
    pub sts: Option<StsPolicy>,
    /// Whether the MX answer validated (DANE applies only then, RFC 7672 §2.2.1).
    pub mx_dnssec: Validated<()>,
}

impl DomainPolicy {
    /// No policy at all (MTA-STS and DANE off, or nothing published).
    pub fn none(domain: &str) -> Self {
        Self {
            domain: domain.to_string(),
            sts: None,
            mx_dnssec: Validated::Insecure,
        }
    }

    /// Whether an MTA-STS `enforce` policy applies.
    pub fn enforced(&self) -> bool {
        self.sts
            .as_ref()
            .is_some_and(|p| p.mode == StsMode::Enforce)
    }
}

/// How one MX session must use TLS, made per connection (it carries the session's own
/// record of certificate problems).
#[derive(Clone)]
pub struct HostTls {
    /// STARTTLS must succeed (and the certificate check pass): never plain text.
    pub required: bool,
    /// The policy's own TLS client; none: the caller's (opportunistic) one.
    pub connector: Option<TlsConnector>,
    /// What requires it, for replies and logs ("the MTA-STS policy of dest.test").
    pub why: String,
    /// The policy sessions are counted under.
    pub policy: PolicyType,
    /// Certificate problems met in the handshake.
    pub seen: verify::Seen,
    /// Idle sessions opened under the same key may carry this mail.
    pub key: Option<String>,
}

impl HostTls {
    /// No policy: STARTTLS when offered, certificate unchecked.
    pub fn opportunistic() -> Self {
        Self {
            required: false,
            connector: None,
            why: String::new(),
            policy: PolicyType::NoPolicyFound,
            seen: Default::default(),
            key: None,
        }
    }

    /// What the handshake saw wrong, if anything.
    pub fn problem(&self) -> Option<ResultType> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A host the policy rules out: the reason, and how TLS-RPT names it.
#[derive(Debug, Clone)]
pub struct HostRefused {
    /// Why, for the deferral reply.
    pub why: String,
    /// The policy type and failure, for the report.
    pub policy: PolicyType,
    /// TLS-RPT's failure type.
    pub result: ResultType,
}

/// A DANE answer for one MX host.
#[derive(Debug, Clone)]
enum Tlsa {
    Secure(Arc<Vec<TLSA>>),
    None,
    /// The host's address records are not secure: its TLSA records, whatever they
    /// say, are not used (RFC 7672 §2.2.2), nor looked up.
    InsecureHost,
    /// Why the mail waits: the TLSA records or the host's addresses do not validate.
    Bogus(String),
}

/// Cheap clonable handle on the policies and session outcomes.
#[derive(Clone)]
pub struct TlsPolicies {
    shared: Arc<Shared>,
}

struct Shared {
    resolver: Resolver,
    config: TlsPolicyConfig,
    clock: Clock,
    /// Platform roots plus `tls_ca_file`: policy fetches and MTA-STS sessions.
    webpki: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    fetch_tls: Arc<rustls::ClientConfig>,
    sts: Mutex<HashMap<String, StsEntry>>,
    /// One fetch per domain at a time; deliveries to it wait for that one.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tlsa: Mutex<HashMap<String, (Tlsa, Instant)>>,
    mx_dnssec: Mutex<HashMap<String, (Validated<()>, Instant)>>,
    /// Whether the resolver hands out DNSSEC that validates to the trust anchor
    /// (checked on the root's DNSKEY), and until when that is known.
    dnssec_works: Mutex<Option<(bool, Instant)>>,
    outcomes: outcomes::Outcomes,
    dir: Option<PathBuf>,
    tlsrpt: TlsRptConfig,
    hostname: String,
    /// Where report mail goes (set by `serve`).
    mailer: Mutex<Option<tokio::sync::mpsc::UnboundedSender<report::ReportMail>>>,
    /// Reports an `https:` rua has not taken yet.
    pending: pending::Pending,
}

/// Domains whose MTA-STS state is kept in memory at most (see `sts_policy`).
const MAX_DOMAINS: usize = 50_000;

/// Negative and DNSSEC answers are kept at least this long, at most [`MAX_TTL`].
const MIN_TTL: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(3600);

impl TlsPolicies {
    /// The policy store, its MTA-STS cache and session counts read from `dir` (the
    /// spool; none: memory only).
    ///
    /// # Errors
    /// `tls_ca_file` unreadable or not PEM certificates.
    pub fn new(
        config: &crate::config::Config,
        resolver: Resolver,
        dir: Option<PathBuf>,
        clock: Clock,
    ) -> Result<Self, TlsPolicyError> {
        let ca = config
            .delivery
            .tls_ca_file
            .as_deref()
            .map(std::fs::read_to_string)
            .transpose()
            .map_err(|e| TlsPolicyError::CaFile(e.to_string()))?;
        let webpki =
            verify::webpki(ca.as_deref()).map_err(|e| TlsPolicyError::CaFile(e.to_string()))?;
        let fetch_tls = Arc::new(verify::client_config(webpki.clone()));
        let sts = dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(STS_FILE)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let outcomes = outcomes::Outcomes::load(dir.as_deref());
        let pending = pending::Pending::load(
            dir.as_deref(),
            clock.clone(),
            config.tlsrpt.retry_initial.get(),
            config.tlsrpt.retry_for.get(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                resolver,
                config: config.tls_policy.clone(),
                clock,
                webpki,
                fetch_tls,
                sts: Mutex::new(sts),
                fetching: Default::default(),
                tlsa: Default::default(),
                mx_dnssec: Default::default(),
                dnssec_works: Default::default(),
                outcomes,
                dir,
                tlsrpt: config.tlsrpt.clone(),
                hostname: config.server.hostname.clone(),
                mailer: Default::default(),
                pending,
            }),
        })
    }

    /// What a delivery to `domain` must obey: the MTA-STS policy (cached, fetched when
    /// missing or its TXT id changed) and whether its MX answer is DNSSEC-secure.
    pub async fn domain(&self, domain: &str) -> DomainPolicy {
        let s = &self.shared;
        let sts = if s.config.mta_sts {
            self.sts_policy(domain).await
        } else {
            None
        };
        let mx_dnssec = if s.config.dane && self.dnssec_works().await {
            self.mx_dnssec(domain).await
        } else {
            Validated::Insecure
        };
        DomainPolicy {
            domain: domain.to_string(),
            sts: sts.filter(|p| p.mode != StsMode::None),
            mx_dnssec,
        }
    }

    /// How a session with MX host `mx` must use TLS, or why the host may not be used.
    pub async fn host(&self, d: &DomainPolicy, mx: &str) -> Result<Option<HostTls>, HostRefused> {
        match &d.mx_dnssec {
            Validated::Bogus(why) => {
                return Err(HostRefused {
                    why: format!(
                        "DNSSEC: the MX records of {} do not validate ({why}); the mail waits",
                        d.domain
                    ),
                    policy: PolicyType::Tlsa,
                    result: ResultType::DnssecInvalid,
                });
            }
            Validated::Secure(()) => match self.tlsa(mx).await {
                Tlsa::Bogus(why) => {
                    return Err(HostRefused {
                        why: format!("DANE: {why}; the mail waits"),
                        policy: PolicyType::Tlsa,
                        result: ResultType::DnssecInvalid,
                    });
                }
                Tlsa::Secure(records) => return Ok(Some(self.dane_tls(mx, records))),
                Tlsa::None | Tlsa::InsecureHost => {}
            },
            Validated::Insecure => {}
        }
        let Some(policy) = &d.sts else {
            return Ok(None);
        };
        let enforce = policy.mode == StsMode::Enforce;
        if enforce && !policy.allows(mx) {
            return Err(HostRefused {
                why: format!(
                    "MTA-STS: {mx} is not an MX host the policy of {} allows ({}); the mail waits",
                    d.domain,
                    policy.mx.join(", ")
                ),
                policy: PolicyType::Sts,
                result: ResultType::ValidationFailure,
            });
        }
        let seen: verify::Seen = Default::default();
        let verifier = Arc::new(verify::Watched {
            inner: self.shared.webpki.clone(),
            lenient: !enforce,
            seen: seen.clone(),
        });
        Ok(Some(HostTls {
            required: enforce,
            connector: Some(TlsConnector::from(Arc::new(verify::client_config(
                verifier,
            )))),
            why: format!("the MTA-STS policy of {} ({})", d.domain, policy.mode),
            policy: PolicyType::Sts,
            seen,
            key: enforce.then(|| format!("sts:{mx}")),
        }))
    }

    fn dane_tls(&self, mx: &str, records: Arc<Vec<TLSA>>) -> HostTls {
        let seen: verify::Seen = Default::default();
        let dane = dane::DaneVerifier {
            records,
            mx: mx.to_string(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let verifier = Arc::new(verify::Watched {
            inner: Arc::new(dane),
            lenient: false,
            seen: seen.clone(),
        });
        HostTls {
            required: true,
            connector: Some(TlsConnector::from(Arc::new(verify::client_config(
                verifier,
            )))),
            why: format!("DANE (the TLSA records of _25._tcp.{mx})"),
            policy: PolicyType::Tlsa,
            seen,
            key: Some(format!("dane:{mx}")),
        }
    }

    /// Whether mail for `d` may be handed to a smarthost that does not enforce policies:
    /// not when MTA-STS enforces, nor when any MX host has DANE records (or bogus ones).
    pub async fn requires_verified_tls(&self, d: &DomainPolicy, mx_hosts: &[String]) -> bool {
        if d.enforced() {
            return true;
        }
        match d.mx_dnssec {
            Validated::Bogus(_) => true,
            Validated::Insecure => false,
            Validated::Secure(()) => {
                for mx in mx_hosts {
                    if !matches!(self.tlsa(mx).await, Tlsa::None | Tlsa::InsecureHost) {
                        return true;
                    }
                }
                false
            }
        }
    }

    /// Counts a session (or a host refused by the policy) for TLS-RPT, `sidestep tls`
    /// and the metrics.
    pub fn record(&self, d: &DomainPolicy, outcome: Outcome) {
        let policy_strings = match (&outcome.policy, &d.sts) {
            (PolicyType::Sts, Some(p)) => p.lines(),
            _ => Vec::new(),
        };
        let mx_patterns = match (&outcome.policy, &d.sts) {
            (PolicyType::Sts, Some(p)) => p.mx.clone(),
            _ => Vec::new(),
        };
        crate::metrics::metrics().tls_session(
            match outcome.policy {
                PolicyType::Sts => "sts",
                PolicyType::Tlsa => "tlsa",
                _ => "none",
            },
            &outcomes::result_name(&outcome.result),
        );
        self.shared.outcomes.record(
            &d.domain,
            policy_strings,
            mx_patterns,
            outcome,
            self.shared.clock.now(),
        );
    }

    async fn sts_policy(&self, domain: &str) -> Option<StsPolicy> {
        let s = &self.shared;
        let now = s.clock.now();
        let recheck = s.config.recheck.get().as_secs();
        let fresh = |e: &StsEntry| now < e.checked_at + recheck;
        let usable = |e: &StsEntry| e.policy.clone().filter(|_| now < e.expires_at);
        if let Some(e) = s.lock_sts().get(domain)
            && fresh(e)
        {
            return usable(e);
        }
        // One look at the TXT record (and maybe one fetch) per domain at a time.
        let gate = s
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(domain.to_string())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(e) = s.lock_sts().get(domain)
            && fresh(e)
        {
            return usable(e);
        }
        let cached = s.lock_sts().get(domain).cloned();
        let txt = s
            .resolver
            .lookup_txt(&format!("_mta-sts.{domain}"))
            .await
            .map(|r| sts::txt_id(&r));
        let entry = match (txt, cached) {
            // Same id as the cached policy: it stands (and its expiry does not move).
            (Ok(Ok(Some(id))), Some(c)) if c.id.as_deref() == Some(&id) && c.policy.is_some() => {
                StsEntry {
                    checked_at: now,
                    ..c
                }
            }
            (Ok(Ok(Some(id))), cached) => self.fetch(domain, id, cached, now).await,
            // No record (or a broken one): a cached policy that has not expired still
            // applies (RFC 8461 §5.1); otherwise there is none.
            (_, Some(c)) if c.policy.is_some() && now < c.expires_at => StsEntry {
                checked_at: now,
                ..c
            },
            _ => StsEntry {
                id: None,
                policy: None,
                fetched_at: 0,
                expires_at: 0,
                checked_at: now,
                error: None,
            },
        };
        let policy = usable(&entry);
        let changed = {
            let mut map = s.lock_sts();
            // Bounded: past the limit, domains without a policy are forgotten (looked up
            // again when next mailed); policies are kept until they expire.
            if map.len() >= MAX_DOMAINS {
                map.retain(|_, e| e.policy.is_some() && now < e.expires_at);
            }
            let before = map.insert(domain.to_string(), entry.clone());
            // Only policies reach the disk: a domain without one is looked up again
            // after a restart (one TXT query), and writing the whole cache durably for
            // each new such domain cost a serialisation and two fsyncs per domain.
            let had_policy = before.as_ref().is_some_and(|b| b.policy.is_some());
            (had_policy || entry.policy.is_some())
                && before.is_none_or(|b| b.id != entry.id || b.fetched_at != entry.fetched_at)
        };
        s.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain);
        if changed {
            self.save_sts();
        }
        policy
    }

    async fn fetch(
        &self,
        domain: &str,
        id: String,
        cached: Option<StsEntry>,
        now: u64,
    ) -> StsEntry {
        let s = &self.shared;
        let fetched = fetch::fetch_policy(
            &s.resolver,
            &s.fetch_tls,
            domain,
            s.config.https_port,
            s.config.fetch_timeout.get(),
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|text| StsPolicy::parse(&text).map_err(|e| format!("invalid policy: {e}")));
        match fetched {
            Ok(policy) => {
                tracing::info!(domain, id, mode = %policy.mode, mx = ?policy.mx, max_age = policy.max_age, "MTA-STS policy fetched");
                StsEntry {
                    id: Some(id),
                    expires_at: now + policy.max_age,
                    policy: Some(policy),
                    fetched_at: now,
                    checked_at: now,
                    error: None,
                }
            }
            Err(error) => {
                let kind = if error.starts_with("invalid policy") {
                    ResultType::StsPolicyInvalid
                } else {
                    ResultType::StsPolicyFetchError
                };
                s.outcomes.fetch_failed(domain, kind, &error, now);
                match cached {
                    Some(c) if c.policy.is_some() && now < c.expires_at => {
                        tracing::warn!(domain, %error, "MTA-STS policy fetch failed; the cached policy applies until it expires");
                        StsEntry {
                            checked_at: now,
                            error: Some(error),
                            ..c
                        }
                    }
                    _ => {
                        tracing::warn!(domain, %error, "MTA-STS policy fetch failed; no policy applies");
                        StsEntry {
                            id: None,
                            policy: None,
                            fetched_at: 0,
                            expires_at: 0,
                            checked_at: now,
                            error: Some(error),
                        }
                    }
                }
            }
        }
    }

    /// Writes the MTA-STS policies to the spool, durably (rare: on a new or changed policy;
    /// domains without one are not written).
    fn save_sts(&self) {
        let s = &self.shared;
        let Some(dir) = &s.dir else { return };
        let bytes = {
            let map = s.lock_sts();
            let with_policy: std::collections::BTreeMap<&String, &StsEntry> =
                map.iter().filter(|(_, e)| e.policy.is_some()).collect();
            serde_json::to_vec_pretty(&with_policy).unwrap_or_default()
        };
        let path = dir.join(STS_FILE);
        if let Err(e) = crate::spool::replace_durably(&path, &bytes) {
            tracing::error!(path = %path.display(), error = %e, "MTA-STS policies could not be saved");
        }
    }

    async fn dnssec_works(&self) -> bool {
        let s = &self.shared;
        if !s.resolver.validates() {
            return false;
        }
        if let Some((works, until)) = *s.dnssec_works.lock().unwrap_or_else(|p| p.into_inner())
            && Instant::now() < until
        {
            return works;
        }
        let works = matches!(
            s.resolver.lookup_validated(".", RecordType::DNSKEY).await,
            Ok((Validated::Secure(_), _))
        );
        if !works {
            tracing::warn!(
                "DNSSEC: the root's keys do not validate against the trust anchor through the configured resolver; DANE is not applied (rechecked in 10 minutes)"
            );
        }
        *s.dnssec_works.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((works, Instant::now() + Duration::from_secs(600)));
        works
    }

    async fn mx_dnssec(&self, domain: &str) -> Validated<()> {
        let s = &self.shared;
        if let Some((v, until)) = s
            .mx_dnssec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            && Instant::now() < *until
        {
            return v.clone();
        }
        let (v, ttl) = match s.resolver.lookup_validated(domain, RecordType::MX).await {
            Ok((Validated::Secure(_), ttl)) => (Validated::Secure(()), ttl),
            Ok((Validated::Insecure, ttl)) => (Validated::Insecure, ttl),
            Ok((Validated::Bogus(why), ttl)) => (Validated::Bogus(why), ttl),
            // No answer now: DANE cannot be applied; the MX lookup of delivery itself
            // decides whether the mail waits.
            Err(_) => (Validated::Insecure, 0),
        };
        {
            let mut map = s.mx_dnssec.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_DOMAINS {
                map.clear();
            }
            map.insert(
                domain.to_string(),
                (v.clone(), Instant::now() + ttl_of(ttl)),
            );
        }
        v
    }

    /// The DANE answer for MX host `mx` (named by a secure MX answer): its addresses
    /// validated first, then its TLSA records if they are secure. Kept for the smaller
    /// TTL of the two, so a host costs these lookups once per TTL, not per delivery.
    async fn tlsa(&self, mx: &str) -> Tlsa {
        let s = &self.shared;
        if let Some((t, until)) = s.tlsa.lock().unwrap_or_else(|p| p.into_inner()).get(mx)
            && Instant::now() < *until
        {
            return t.clone();
        }
        let (t, ttl) = match s.resolver.lookup_addresses_validated(mx).await {
            Ok((Validated::Secure(()), ttl)) => {
                let (t, tlsa_ttl) = self.tlsa_records(mx).await;
                (t, ttl.min(tlsa_ttl))
            }
            Ok((Validated::Insecure, ttl)) => {
                tracing::debug!(
                    mx,
                    "DANE: the address records of the MX host are not DNSSEC-secure; its TLSA records are not used"
                );
                (Tlsa::InsecureHost, ttl)
            }
            Ok((Validated::Bogus(why), ttl)) => (
                Tlsa::Bogus(format!(
                    "the address records of {mx} do not validate ({why})"
                )),
                ttl,
            ),
            // As for a failed TLSA lookup below: DANE cannot be ruled out.
            Err(e) => (
                Tlsa::Bogus(format!(
                    "the address records of {mx} could not be validated ({e})"
                )),
                0,
            ),
        };
        {
            let mut map = s.tlsa.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_DOMAINS {
                map.clear();
            }
            map.insert(mx.to_string(), (t.clone(), Instant::now() + ttl_of(ttl)));
        }
        t
    }

    /// The validated TLSA records of `_25._tcp.MX` and their TTL.
    async fn tlsa_records(&self, mx: &str) -> (Tlsa, u32) {
        let s = &self.shared;
        let bogus = |why| format!("the TLSA records of _25._tcp.{mx} do not validate ({why})");
        match s
            .resolver
            .lookup_validated(&format!("_25._tcp.{mx}"), RecordType::TLSA)
            .await
        {
            Ok((Validated::Secure(records), ttl)) => {
                let records: Vec<TLSA> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                (Tlsa::Secure(Arc::new(records)), ttl)
            }
            Ok((Validated::Insecure, ttl)) => (Tlsa::None, ttl),
            Ok((Validated::Bogus(why), ttl)) => (Tlsa::Bogus(bogus(why)), ttl),
            // A lookup that fails outright: DANE cannot be ruled out, so the mail waits
            // (RFC 7672 §2.2: a failed TLSA lookup is not "no TLSA").
            Err(e) => (Tlsa::Bogus(bogus(e.to_string())), 0),
        }
    }

    /// The session counts and last outcomes (TLS-RPT, `sidestep tls`).
    pub fn outcomes(&self) -> &outcomes::Outcomes {
        &self.shared.outcomes
    }

    /// Writes the session counts to the spool (called every few seconds, at report time
    /// and at a clean stop).
    ///
    /// # Errors
    /// The file could not be written.
    pub fn flush(&self) -> Result<(), TlsPolicyError> {
        self.shared.outcomes.flush(self.shared.dir.as_deref())
    }

    /// What `sidestep tls DOMAIN` shows: the policies that apply, looked up now.
    pub async fn describe(&self, domain: &str) -> Described {
        let d = self.domain(domain).await;
        let mx = self
            .shared
            .resolver
            .lookup_mx(domain)
            .await
            .map(|h| h.into_iter().map(|h| h.name).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut hosts = Vec::new();
        for name in &mx {
            let (tlsa, dnssec) = match (&d.mx_dnssec, self.tlsa_if_secure(&d, name).await) {
                (Validated::Secure(()), Tlsa::Secure(r)) => (
                    r.iter()
                        .map(|t| {
                            format!(
                                "{} {} {} {}",
                                u8::from(t.cert_usage),
                                u8::from(t.selector),
                                u8::from(t.matching),
                                hex(&t.cert_data)
                            )
                        })
                        .collect(),
                    "secure".to_string(),
                ),
                (_, Tlsa::Bogus(why)) => (Vec::new(), format!("bogus: {why}")),
                (Validated::Bogus(why), _) => (Vec::new(), format!("bogus: {why}")),
                (Validated::Secure(()), Tlsa::None) => (Vec::new(), "secure MX, no TLSA".into()),
                (Validated::Secure(()), Tlsa::InsecureHost) => {
                    (Vec::new(), "secure MX, insecure address records".into())
                }
                _ => (Vec::new(), "insecure".into()),
            };
            hosts.push(DescribedMx {
                allowed_by_sts: d.sts.as_ref().map(|p| p.allows(name)),
                last: self.shared.outcomes.last(domain, name),
                name: name.clone(),
                tlsa,
                dnssec,
            });
        }
        let entry = self.shared.lock_sts().get(domain).cloned();
        let rua = self
            .shared
            .resolver
            .lookup_txt(&format!("_smtp._tls.{domain}"))
            .await
            .map(|r| sts::tlsrpt_rua(&r))
            .unwrap_or_default();
        Described {
            domain: domain.to_string(),
            mta_sts: entry,
            dane_available: self.dnssec_works().await,
            tlsrpt_rua: rua,
            mx: hosts,
        }
    }

    async fn tlsa_if_secure(&self, d: &DomainPolicy, mx: &str) -> Tlsa {
        match d.mx_dnssec {
            Validated::Secure(()) => self.tlsa(mx).await,
            _ => Tlsa::None,
        }
    }

    /// `[tlsrpt]`, the relay's host name and the resolver, for the reports.
    fn report_setup(&self) -> (&TlsRptConfig, &str, &Resolver) {
        (
            &self.shared.tlsrpt,
            &self.shared.hostname,
            &self.shared.resolver,
        )
    }

    /// The clock reports are dated by.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }
}

impl Shared {
    fn lock_sts(&self) -> std::sync::MutexGuard<'_, HashMap<String, StsEntry>> {
        self.sts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long a DNS answer is kept here: its TTL, within [`MIN_TTL`]..[`MAX_TTL`].
fn ttl_of(ttl: u32) -> Duration {
    Duration::from_secs(ttl.into()).clamp(MIN_TTL, MAX_TTL)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MTA-STS cache in the spool.
const STS_FILE: &str = "mta-sts.json";

/// `sidestep tls DOMAIN`: the policies that apply to a domain and how its sessions went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Described {
    /// The domain.
    pub domain: String,
    /// The cached MTA-STS state (mode, mx patterns, max_age, fetched at, last error).
    pub mta_sts: Option<StsEntry>,
    /// Whether DNSSEC validates through the resolver (DANE is applied only then).
    pub dane_available: bool,
    /// The TLS-RPT addresses the domain publishes.
    pub tlsrpt_rua: Vec<String>,
    /// Each MX host: TLSA records, DNSSEC state, MTA-STS match, last session.
    pub mx: Vec<DescribedMx>,
}

/// One MX host in [`Described`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedMx {
    /// The host.
    pub name: String,
    /// Its TLSA records (`usage selector matching data`), when secure.
    pub tlsa: Vec<String>,
    /// `secure`, `insecure`, `bogus: …`.
    pub dnssec: String,
    /// Whether the MTA-STS policy lists it (none without a policy).
    pub allowed_by_sts: Option<bool>,
    /// The last session's outcome.
    pub last: Option<outcomes::LastSession>,
}

/// Where a session went, for the failure details of a report.
#[derive(Debug, Clone)]
pub struct SessionPeer {
    /// Our egress IP.
    pub egress: Option<IpAddr>,
    /// The MX host.
    pub mx: String,
    /// The MX address.
    pub ip: Option<IpAddr>,
}
