//! MX and address lookups through hickory, pointed at the system resolver or at the
//! name servers of `[dns] nameservers`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

use crate::config::DnsConfig;

/// One mail exchanger of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name without the trailing dot, as shown in logs and DSNs (`Remote-MTA`).
    pub name: String,
    /// Lower is tried first (RFC 5321 §5.1).
    pub preference: u16,
}

/// A lookup failed. Whether it is worth retrying decides bounce versus defer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// The domain does not exist (NXDOMAIN): the address is wrong, retrying cannot help.
    #[error("domain {0} does not exist")]
    NoSuchDomain(String),
    /// RFC 7505 null MX: the domain says it accepts no mail.
    #[error("domain {0} does not accept mail (null MX)")]
    NullMx(String),
    /// The name exists but has no usable address records.
    #[error("no address records for {0}")]
    NoAddress(String),
    /// Timeout, SERVFAIL, refused: try again later.
    #[error("DNS lookup for {name} failed: {message}")]
    /// No answer for now (timeout, SERVFAIL): try again later.
    Temporary {
        /// The name looked up.
        name: String,
        /// What the resolver said.
        message: String,
    },
    #[error("cannot set up the resolver: {0}")]
    /// The resolver could not be set up from the configuration.
    Setup(String),
}

impl DnsError {
    /// Whether the answer is final (the domain does not exist or takes no mail): bounce rather than retry.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::NoSuchDomain(_) | Self::NullMx(_))
    }
}

/// Cheap clonable resolver handle.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    mx: Arc<Answers<Vec<MxHost>>>,
    addresses: Arc<Answers<Vec<IpAddr>>>,
    /// The name servers, asked directly for PTR records (see [`Resolver::lookup_ptr`]).
    servers: Arc<[SocketAddr]>,
    /// How long one name server may take to answer.
    timeout: std::time::Duration,
    /// The same servers with DNSSEC validation (`[dns] dnssec`), for DANE's MX and TLSA
    /// lookups only: a resolver that strips DNSSEC records must not make every other
    /// lookup fail.
    validating: Option<TokioResolver>,
}

/// A DNSSEC-validated answer (RFC 4035 §4.3), as DANE needs to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validated<T> {
    /// Records whose signatures chain to the trust anchor.
    Secure(T),
    /// No such records, or an answer from an unsigned zone: nothing to go by.
    Insecure,
    /// Signatures that should be there and do not verify: an attack or a broken zone.
    /// Never treated as "no records".
    Bogus(String),
}

/// Positive answers for delivery, each until its DNS TTL runs out. hickory caches too,
/// but every lookup through it parses the name, takes its locks and clones records: at
/// thousands of messages per second to one destination that was a tenth of the CPU time
/// of routing a message. Failures are not kept here (hickory applies negative TTLs).
struct Answers<T> {
    map: Mutex<HashMap<String, (T, Instant)>>,
}

/// Names kept at most; past it, expired answers are dropped, then all if need be.
const ANSWERS_MAX: usize = 10_000;

impl<T: Clone> Answers<T> {
    fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (T, Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Option<T> {
        let map = self.lock();
        let (value, until) = map.get(name)?;
        (Instant::now() < *until).then(|| value.clone())
    }

    fn put(&self, name: &str, value: T, until: Instant) {
        let mut map = self.lock();
        if map.len() >= ANSWERS_MAX {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= ANSWERS_MAX {
                map.clear();
            }
        }
        map.insert(name.to_string(), (value, until));
    }
}

/// The DNSSEC trust anchors: the root KSKs built in, or the DNSKEY records of `[dns]
/// trust_anchor`, which replace them.
///
/// The file must hold a key for the root zone `.` (a private root, or a test's own
/// signed root): hickory would also take keys for other zones as islands of trust, but
/// then nothing outside them could be proven insecure (every other answer would read as
/// bogus), and DANE is gated on the root's keys validating. A file that holds no root
/// key is a configuration error rather than DANE silently off.
///
/// # Errors
/// The file cannot be read or parsed, or has no DNSKEY for `.`.
fn trust_anchors(
    config: &DnsConfig,
) -> Result<hickory_resolver::proto::dnssec::TrustAnchors, TrustAnchorError> {
    let Some(path) = &config.trust_anchor else {
        return Ok(Default::default());
    };
    let anchors = hickory_resolver::proto::dnssec::TrustAnchors::from_file(path).map_err(|e| {
        TrustAnchorError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    if anchors.is_empty() {
        return Err(TrustAnchorError::NoRootKey(path.clone()));
    }
    Ok(anchors)
}

/// Why `[dns] trust_anchor` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustAnchorError {
    /// The file cannot be read or is not DNSKEY records.
    #[error("dns.trust_anchor {}: {message}", path.display())]
    Unreadable {
        /// The configured file.
        path: std::path::PathBuf,
        /// What reading it said.
        message: String,
    },
    /// Keys for other zones only: nothing outside them could be proven insecure.
    #[error("dns.trust_anchor {}: no DNSKEY record for the root zone \".\" (the file replaces the built-in root keys; keys for other zones alone are not supported)", .0.display())]
    NoRootKey(std::path::PathBuf),
}

/// `[dns]` problems found by building what it describes (`sidestep check-config`).
pub fn check_config(config: &DnsConfig) -> Vec<crate::config::ConfigError> {
    if !config.dnssec {
        return Vec::new();
    }
    match trust_anchors(config) {
        Ok(_) => Vec::new(),
        Err(problem) => vec![crate::config::ConfigError {
            key: "dns.trust_anchor".into(),
            problem: problem.to_string(),
        }],
    }
}

impl Resolver {
    /// Builds the resolver: configured name servers (UDP and TCP on the given port), or
    /// the system configuration when none are set.
    ///
    /// # Errors
    /// The system configuration cannot be read.
    pub fn new(config: &DnsConfig) -> Result<Self, DnsError> {
        let inner = Self::build(config, None)?;
        let validating = if config.dnssec {
            let anchors = trust_anchors(config).map_err(|e| DnsError::Setup(e.to_string()))?;
            Some(Self::build(config, Some(Arc::new(anchors)))?)
        } else {
            None
        };
        let servers: Vec<SocketAddr> = if config.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map(|(c, _)| {
                    c.name_servers()
                        .iter()
                        .map(|ns| {
                            let port = ns.connections.first().map_or(53, |c| c.port);
                            SocketAddr::new(ns.ip, port)
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            config.nameservers.clone()
        };
        Ok(Self {
            inner,
            mx: Arc::new(Answers::new()),
            addresses: Arc::new(Answers::new()),
            servers: servers.into(),
            timeout: config.timeout.get(),
            validating,
        })
    }

    fn build(
        config: &DnsConfig,
        anchors: Option<Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
    ) -> Result<TokioResolver, DnsError> {
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::Setup(e.to_string()))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for conn in &mut ns.connections {
                        conn.port = addr.port();
                    }
                    ns
                })
                .collect();
            hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        builder.options_mut().timeout = config.timeout.get();
        builder.options_mut().attempts = 2;
        if let Some(anchors) = anchors {
            builder = builder.with_trust_anchor(anchors);
        }
        builder.build().map_err(|e| DnsError::Setup(e.to_string()))
    }

    /// The same name servers for `mail-auth`'s SPF and DMARC lookups (its own caches
    /// keep answers for their TTL).
    pub fn authenticator(&self) -> mail_auth::MessageAuthenticator {
        mail_auth::MessageAuthenticator(self.inner.clone())
    }

    /// The mail exchangers of `domain` in the order to try them: by preference, hosts of
    /// equal preference shuffled (RFC 5321 §5.1) so load spreads across them. A domain
    /// without MX records is its own exchanger (the implicit MX).
    ///
    /// # Errors
    /// NXDOMAIN, null MX, or a temporary DNS failure.
    pub async fn lookup_mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        let mut hosts = match self.mx.get(domain) {
            Some(hosts) => hosts,
            None => {
                let (hosts, until) = self.query_mx(domain).await?;
                self.mx.put(domain, hosts.clone(), until);
                hosts
            }
        };
        hosts.shuffle(&mut rand::rng());
        hosts.sort_by_key(|h| h.preference);
        Ok(hosts)
    }

    async fn query_mx(&self, domain: &str) -> Result<(Vec<MxHost>, Instant), DnsError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let lookup = match self.inner.mx_lookup(fqdn.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_nx_domain() => return Err(DnsError::NoSuchDomain(domain.into())),
            // The implicit MX; hickory keeps the negative answer for its TTL.
            Err(e) if e.is_no_records_found() => {
                return Ok((
                    vec![MxHost {
                        name: domain.to_string(),
                        preference: 0,
                    }],
                    Instant::now(),
                ));
            }
            Err(e) => return Err(temporary(domain, &e)),
        };
        let until = lookup.valid_until();
        let hosts: Vec<(MxHost, bool)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((
                    MxHost {
                        name: mx.exchange.to_utf8().trim_end_matches('.').to_string(),
                        preference: mx.preference,
                    },
                    mx.exchange.is_root(),
                )),
                _ => None,
            })
            .collect();
        if hosts.iter().any(|(_, null)| *null) {
            return Err(DnsError::NullMx(domain.into()));
        }
        if hosts.is_empty() {
            return Ok((
                vec![MxHost {
                    name: domain.to_string(),
                    preference: 0,
                }],
                until,
            ));
        }
        Ok((hosts.into_iter().map(|(h, _)| h).collect(), until))
    }

    /// The addresses of an MX host (A and AAAA).
    ///
    /// # Errors
    /// No address, or a DNS failure.
    pub async fn lookup_addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(ips) = self.addresses.get(host) {
            return Ok(ips);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(l) => {
                let ips: Vec<IpAddr> = l.iter().collect();
                if ips.is_empty() {
                    Err(DnsError::NoAddress(host.into()))
                } else {
                    self.addresses.put(host, ips.clone(), l.valid_until());
                    Ok(ips)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                Err(DnsError::NoAddress(host.into()))
            }
            Err(e) => Err(temporary(host, &e)),
        }
    }
}

impl Resolver {
    /// The A records of a DNSBL query name and their smallest TTL; `None` when the name
    /// does not exist (not listed).
    ///
    /// # Errors
    /// Timeout, SERVFAIL, refused: the list could not be asked.
    pub async fn lookup_dnsbl(
        &self,
        name: &str,
    ) -> Result<Option<(Vec<std::net::Ipv4Addr>, u32)>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.inner.ipv4_lookup(fqdn.as_str()).await {
            Ok(l) => {
                let ttl = l.answers().iter().map(|r| r.ttl).min().unwrap_or(0);
                let ips: Vec<_> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                Ok((!ips.is_empty()).then_some((ips, ttl)))
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(None),
            Err(e) => Err(temporary(name, &e)),
        }
    }

    /// The PTR names of `ip` (lower case, without the final dot); none when it has no
    /// reverse DNS.
    ///
    /// Asked of the name servers directly: the resolver library answers reverse
    /// lookups of 127.0.0.0/8 itself (`localhost`, RFC 6761), which would hide the
    /// records of loopback egress addresses in tests behind a made-up answer.
    ///
    /// # Errors
    /// No name server answered (timeout, SERVFAIL).
    pub async fn lookup_ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        use hickory_resolver::proto::op::{Message, Query, ResponseCode};
        use hickory_resolver::proto::rr::{Name, RecordType};
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from(ip), RecordType::PTR));
        let packet = query.to_vec().map_err(|e| DnsError::Setup(e.to_string()))?;
        let mut last = format!("no name server for reverse lookups of {ip}");
        for server in self.servers.iter() {
            let answer = async {
                let socket = tokio::net::UdpSocket::bind(if server.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                })
                .await?;
                socket.connect(server).await?;
                socket.send(&packet).await?;
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = socket.recv(&mut buf).await?;
                    if let Ok(m) = Message::from_vec(&buf[..n])
                        && m.metadata.id == query.metadata.id
                    {
                        return Ok::<_, std::io::Error>(m);
                    }
                }
            };
            match tokio::time::timeout(self.timeout, answer).await {
                Ok(Ok(m)) => match m.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {
                        return Ok(m
                            .answers
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::PTR(p) => {
                                    Some(p.0.to_string().trim_end_matches('.').to_ascii_lowercase())
                                }
                                _ => None,
                            })
                            .collect());
                    }
                    code => last = format!("{server} answered {code}"),
                },
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server}: timeout"),
            }
        }
        crate::metrics::metrics().dns_failures.inc();
        Err(DnsError::Temporary {
            name: ip.to_string(),
            message: last,
        })
    }

    /// The TXT strings at `name` (a DNSBL's reason for a listing).
    ///
    /// # Errors
    /// The lookup failed; a missing TXT record is an empty list, not an error.
    pub async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.inner.txt_lookup(fqdn.as_str()).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(t.to_string()),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(temporary(name, &e)),
        }
    }
}

fn temporary(name: &str, e: &NetError) -> DnsError {
    crate::metrics::metrics().dns_failures.inc();
    DnsError::Temporary {
        name: name.into(),
        message: e.to_string(),
    }
}

impl Resolver {
    /// Whether DNSSEC validation is configured (`[dns] dnssec`).
    pub fn validates(&self) -> bool {
        self.validating.is_some()
    }

    /// `rtype` records at `name`, validated under DNSSEC, with their smallest TTL.
    /// `Insecure` when validation is off.
    ///
    /// # Errors
    /// No answer (timeout, SERVFAIL): try again later.
    pub async fn lookup_validated(
        &self,
        name: &str,
        rtype: hickory_resolver::proto::rr::RecordType,
    ) -> Result<(Validated<Vec<RData>>, u32), DnsError> {
        let (answer, ttl) = self.validated_answer(name, rtype).await?;
        Ok((
            match answer {
                Answer::Secure(data) => Validated::Secure(data),
                Answer::SecurelyNone | Answer::Insecure => Validated::Insecure,
                Answer::Bogus(why) => Validated::Bogus(why),
            },
            ttl,
        ))
    }

    /// Whether the address records of `host` (A; AAAA when it provably has no A, the
    /// order delivery's own lookup uses) are DNSSEC-secure, CNAMEs on the way included,
    /// and the smallest TTL. DANE uses a host's TLSA records only then (RFC 7672
    /// §2.2.2): an attacker who can forge the address need not touch the TLSA record.
    /// `Insecure` when validation is off or the host has no address at all.
    ///
    /// # Errors
    /// No answer (timeout, SERVFAIL): try again later.
    pub async fn lookup_addresses_validated(
        &self,
        host: &str,
    ) -> Result<(Validated<()>, u32), DnsError> {
        use hickory_resolver::proto::rr::RecordType;
        let (a, ttl) = self.validated_answer(host, RecordType::A).await?;
        let (answer, ttl) = match a {
            Answer::SecurelyNone => {
                let (aaaa, ttl6) = self.validated_answer(host, RecordType::AAAA).await?;
                (aaaa, ttl.min(ttl6))
            }
            a => (a, ttl),
        };
        Ok((
            match answer {
                Answer::Secure(_) => Validated::Secure(()),
                Answer::SecurelyNone | Answer::Insecure => Validated::Insecure,
                Answer::Bogus(why) => Validated::Bogus(why),
            },
            ttl,
        ))
    }

    /// One validated lookup: the `rtype` records and whether they (and any CNAME that
    /// led to them) are secure, or whether their absence is.
    async fn validated_answer(
        &self,
        name: &str,
        rtype: hickory_resolver::proto::rr::RecordType,
    ) -> Result<(Answer, u32), DnsError> {
        use hickory_resolver::net::DnsError as Dns;
        use hickory_resolver::proto::dnssec::Proof;
        use hickory_resolver::proto::rr::RecordType;
        let Some(validating) = &self.validating else {
            return Ok((Answer::Insecure, 300));
        };
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match validating.lookup(fqdn.as_str(), rtype).await {
            Ok(l) => {
                // The records asked for and the CNAMEs that led to them: a secure
                // record behind an insecure alias is no better than the alias.
                let chain: Vec<_> = l
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype || r.record_type() == RecordType::CNAME)
                    .collect();
                let records: Vec<_> = chain.iter().filter(|r| r.record_type() == rtype).collect();
                let ttl = chain.iter().map(|r| r.ttl).min().unwrap_or(300);
                if let Some(bad) = chain.iter().find(|r| r.proof == Proof::Bogus) {
                    return Ok((
                        Answer::Bogus(format!(
                            "{} of {name}: {} signature",
                            bad.record_type(),
                            bad.proof
                        )),
                        ttl,
                    ));
                }
                if records.is_empty() {
                    return Ok((Answer::Insecure, ttl));
                }
                let answer = if chain.iter().all(|r| r.proof == Proof::Secure) {
                    Answer::Secure(records.iter().map(|r| r.data.clone()).collect())
                } else {
                    Answer::Insecure
                };
                Ok((answer, ttl))
            }
            Err(NetError::Dns(Dns::Nsec { proof, .. })) if proof.is_secure() => {
                Ok((Answer::SecurelyNone, 60))
            }
            Err(NetError::Dns(Dns::Nsec { proof, .. })) if proof.is_insecure() => {
                Ok((Answer::Insecure, 60))
            }
            Err(NetError::Dns(Dns::Nsec { proof, .. })) => Ok((
                Answer::Bogus(format!("{rtype} of {name}: denial of existence is {proof}")),
                60,
            )),
            Err(NetError::Dns(Dns::DnssecBogus)) => Ok((
                Answer::Bogus(format!("{rtype} of {name}: DNSSEC validation failed")),
                60,
            )),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok((Answer::Insecure, 60)),
            Err(e) => Err(temporary(name, &e)),
        }
    }
}

/// A validated answer as [`Resolver::validated_answer`] tells it: [`Validated`] with a
/// proven absence told apart from an unproven one (a host without A records is asked
/// for AAAA only when the absence is proven).
enum Answer {
    Secure(Vec<RData>),
    SecurelyNone,
    Insecure,
    Bogus(String),
}
