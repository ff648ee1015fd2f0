//! Direct delivery: the route's pool and fallback for a domain, its MX hosts in order,
//! an egress IP for each connection from the rotation, sessions kept for reuse.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::EXT_START_TLS;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use super::authorised::SpfChoice;
use super::protocol::{
    After, BrokenChunking, HostFailure, boxed, error_reply, greeting, hello, transaction,
};
use super::sessions::{ReuseLimits, Session, SessionCache};
use super::smarthost::Smarthost;
use super::{AttemptReport, DomainDelivery, Via};
use crate::authorisation::Authorisation;
use crate::config::{Config, RouteConfig, TlsPolicy};
use crate::dns::{DnsError, Resolver};
use crate::egress::{EgressIp, Standing};
use crate::reputation::Reputation;
use crate::routing::Pool;
use crate::routing::{Admission, ProbePace, Shape, Shaper, SiteHealth};
use crate::site::Site;
use crate::spool::RemoteReply;
use crate::tls_policy::{DomainPolicy, HostTls, Outcome, SessionPeer, TlsPolicies};

/// The outbound side: resolver, egress pools, smarthosts, routes and the timeouts from
/// `[delivery]`.
#[derive(Clone)]
pub struct Outbound {
    resolver: Resolver,
    pools: HashMap<String, Pool>,
    smarthosts: HashMap<String, Smarthost>,
    routes: Vec<RouteConfig>,
    default_pool: String,
    default_fallback: Option<String>,
    site_rollup: Vec<String>,
    pub(super) reputation: Reputation,
    /// Which egress IPs and smarthosts the senders' SPF authorises (the same object
    /// across reloads: its caches and learned denials carry on).
    authorisation: Authorisation,
    port: u16,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// `None` when `delivery.starttls = false`.
    tls: Option<TlsConnector>,
    /// `[delivery] chunking`: BDAT when the MX offers it.
    chunking: bool,
    /// MX addresses that get DATA though they offer CHUNKING; kept across reloads.
    broken_chunking: std::sync::Arc<BrokenChunking>,
    /// For `tls = "verify"` routes: checks certificates against `delivery.tls_ca_file`
    /// or the system's roots.
    verify_tls: TlsConnector,
    sessions: std::sync::Arc<SessionCache>,
    /// Which sites are down; kept across reloads ([`Outbound::keep_health`]).
    health: std::sync::Arc<SiteHealth>,
    site_down_after: u32,
    /// How often a down site is probed (the retry schedule, at most `site_probe_interval`).
    probe_pace: ProbePace,
    /// `[[shaping]]` and its buckets and slots; kept across reloads that keep the rules.
    shaper: std::sync::Arc<Shaper>,
    /// Destinations' MTA-STS and DANE policies and the sessions counted for TLS-RPT;
    /// kept across reloads.
    tls_policies: TlsPolicies,
}

impl Outbound {
    /// Builds the outbound side from the whole configuration.
    ///
    /// # Errors
    /// A smarthost's password or CA file cannot be read.
    pub fn new(
        config: &Config,
        resolver: Resolver,
        reputation: Reputation,
        authorisation: Authorisation,
    ) -> Result<Self, super::OutboundError> {
        let d = &config.delivery;
        let tls = d.starttls.then(|| {
            mail_send::smtp::tls::build_tls_connector(true)
                .expect("a TLS connector without verification always builds")
        });
        let ca = d
            .tls_ca_file
            .as_deref()
            .map(std::fs::read_to_string)
            .transpose()
            .map_err(|e| super::OutboundError::Tls {
                name: "delivery.tls_ca_file".into(),
                message: e.to_string(),
            })?;
        let verify_tls =
            crate::tls::client(ca.as_deref()).map_err(|e| super::OutboundError::Tls {
                name: "delivery.tls_ca_file".into(),
                message: e.to_string(),
            })?;
        let pools = config
            .effective_pools()
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Pool::from_config(p, &config.server.hostname),
                )
            })
            .collect();
        let tls_policies = TlsPolicies::new(
            config,
            resolver.clone(),
            Some(config.spool.directory.clone()),
            crate::clock::Clock::system(),
        )
        .map_err(|e| super::OutboundError::Tls {
            name: "tls_policy".into(),
            message: e.to_string(),
        })?;
        let smarthosts = config
            .smarthosts
            .iter()
            .map(|s| {
                Ok((
                    s.name.clone(),
                    Smarthost::new(s, &config.server.hostname, d.chunking)?,
                ))
            })
            .collect::<Result<_, super::OutboundError>>()?;
        let clock = reputation.clock().clone();
        Ok(Self {
            resolver,
            pools,
            smarthosts,
            routes: config.routes.clone(),
            default_pool: d.pool.clone(),
            default_fallback: d.fallback.clone(),
            site_rollup: d.site_rollup.clone(),
            reputation,
            authorisation,
            port: d.port,
            connect_timeout: d.connect_timeout.get(),
            command_timeout: d.command_timeout.get(),
            tls,
            chunking: d.chunking,
            broken_chunking: Default::default(),
            verify_tls,
            tls_policies,
            health: Default::default(),
            shaper: std::sync::Arc::new(Shaper::new(config.shaping.clone(), clock)),
            site_down_after: d.site_down_after,
            probe_pace: ProbePace {
                retry: config.queue.clone(),
                longest: d.site_probe_interval.get(),
            },
            sessions: SessionCache::new(ReuseLimits {
                idle: d.reuse_idle.get(),
                lifetime: d.reuse_lifetime.get(),
                messages: d.reuse_messages,
                max_idle: d.reuse_max_idle,
            }),
        })
    }

    /// Keeps `old`'s knowledge of down sites (a reload must not forget them), and its
    /// place in the cluster's connection count.
    pub fn keep_health(mut self, old: &Outbound) -> Self {
        self.health = old.health.clone();
        self.tls_policies = old.tls_policies.clone();
        self.broken_chunking = old.broken_chunking.clone();
        if old.shaper.rules() == self.shaper.rules() {
            // Same rules: the hour's counts and the slots in use carry on.
            self.shaper = old.shaper.clone();
        } else if let Some(shared) = old.shaper.shared_slots() {
            self.shaper.share_slots(shared);
        }
        self
    }

    /// `[[shaping]]` connection limits hold across the cluster's nodes from now on.
    pub fn share_slots(&self, slots: std::sync::Arc<dyn crate::routing::SharedSlots>) {
        self.shaper.share_slots(slots);
    }

    /// `site` asked us to slow down: its shaping is tightened for `period`.
    pub fn tighten(&self, site: &Site, period: Duration) {
        self.shaper.tighten(site, period);
    }

    /// Destinations' TLS policies and the sessions counted under them.
    pub fn tls_policies(&self) -> &TlsPolicies {
        &self.tls_policies
    }

    /// What the senders' SPF authorises, and what receivers taught about it.
    pub fn authorisation(&self) -> &Authorisation {
        &self.authorisation
    }

    pub(super) fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Which sites are down (the same object across reloads), for the operator.
    pub fn health(&self) -> std::sync::Arc<SiteHealth> {
        self.health.clone()
    }

    /// The pool, fallback smarthost and TLS policy for a recipient domain: the first
    /// matching route, else `[delivery]`.
    fn route_for(&self, domain: &str) -> (&Pool, Option<&Smarthost>, TlsPolicy) {
        let route = self.routes.iter().find(|r| r.matches(domain));
        let pool_name = route
            .and_then(|r| r.pool.as_deref())
            .unwrap_or(&self.default_pool);
        let fallback = route
            .and_then(|r| r.fallback.as_deref())
            .or(self.default_fallback.as_deref());
        let pool = self
            .pools
            .get(pool_name)
            .or_else(|| self.pools.get(&self.default_pool))
            .expect("validated: every route names a configured pool");
        (
            pool,
            fallback.and_then(|f| self.smarthosts.get(f)),
            route.map(|r| r.tls).unwrap_or_default(),
        )
    }

    /// Delivers to one domain: MX hosts in order, each address in turn, until one server
    /// takes the transaction. Never fails: every problem becomes a reply for the
    /// recipients (code 0 when no server answered).
    pub async fn deliver(&self, d: &DomainDelivery<'_>) -> AttemptReport {
        let (pool, fallback, policy) = self.route_for(d.domain);
        let report = |replies| AttemptReport::new(Via::Direct, replies);
        let hosts = match self.resolver.lookup_mx(d.domain).await {
            Ok(h) => h,
            Err(e) => return report(vec![dns_reply(&e); d.recipients.len()]),
        };
        let site = Site::from_mx(&hosts, &self.site_rollup);
        let tls_policy = self.tls_policies.domain(d.domain).await;
        self.authorisation.note_sender(d.sender);
        // The sender's SPF narrows the pool (and may allow the smarthost only).
        let mut avoid = d.avoid.to_vec();
        match self.spf_choice(d, pool, fallback, &site).await {
            SpfChoice::AsBefore => {}
            SpfChoice::Avoid(ips) => avoid.extend(ips),
            SpfChoice::Smarthost => avoid.extend(pool.egress().iter().filter_map(|e| e.ip)),
            SpfChoice::Wait(why) => {
                let mut r = report(vec![
                    RemoteReply {
                        code: 0,
                        enhanced: "4.7.0".into(),
                        text: why,
                        mx: None,
                    };
                    d.recipients.len()
                ]);
                r.site = Some(site);
                r.unauthorised = true;
                return r;
            }
        }
        let d = &DomainDelivery {
            avoid: &avoid,
            ..*d
        };
        // Every egress IP listed or blocked for this site: the fallback smarthost, or wait.
        let avoided = |e: &EgressIp| e.ip.is_some_and(|ip| d.avoid.contains(&ip));
        let usable = pool
            .egress()
            .iter()
            .any(|e| !avoided(e) && self.standing(e, &site) != Standing::Hard);
        if !usable {
            if let Some(smarthost) = fallback
                && !smarthost.enforces_tls_policy()
                && self
                    .tls_policies
                    .requires_verified_tls(
                        &tls_policy,
                        &hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
                    )
                    .await
            {
                let mut r = report(vec![
                    RemoteReply {
                        code: 0,
                        enhanced: "4.7.5".into(),
                        text: format!(
                            "{} requires verified TLS (MTA-STS enforce or DANE) and smarthost {} does not enforce destination policies (enforces_tls_policy = false); the mail waits for a usable egress IP",
                            d.domain,
                            smarthost.name()
                        ),
                        mx: None,
                    };
                    d.recipients.len()
                ]);
                let ips: Vec<IpAddr> = pool.egress().iter().filter_map(|e| e.ip).collect();
                r.retry_at = self.reputation.next_expiry(&site, &ips);
                r.site = Some(site);
                return r;
            }
            if let Some(smarthost) = fallback {
                // Boxed: its TLS and AUTH states would otherwise make every delivery's
                // future (moved into each task) several kilobytes larger.
                let mut r = Box::pin(smarthost.deliver(
                    &self.resolver,
                    d,
                    self.connect_timeout,
                    self.command_timeout,
                ))
                .await;
                r.site = Some(site);
                return r;
            }
            let ips: Vec<IpAddr> = pool.egress().iter().filter_map(|e| e.ip).collect();
            let mut r = report(vec![self.no_egress(pool, &site, None); d.recipients.len()]);
            r.retry_at = self.reputation.next_expiry(&site, &ips);
            r.no_egress = true;
            r.site = Some(site);
            return r;
        }
        let now_ms = self.reputation.clock().now_ms();
        let probe = match self.health.admit(&site, now_ms) {
            Admission::Go => false,
            Admission::Probe => true,
            Admission::Down { next_probe_ms } => {
                let down = self.health.down();
                let why = down
                    .iter()
                    .find(|s| s.site == site.as_str())
                    .map(|s| s.last_error.clone())
                    .unwrap_or_default();
                let mut r = report(vec![
                    RemoteReply {
                        code: 0,
                        enhanced: "4.4.1".into(),
                        text: format!(
                            "site {site} is down (no server answered lately: {why}); not connecting until its next probe"
                        ),
                        mx: None,
                    };
                    d.recipients.len()
                ]);
                r.site = Some(site);
                r.site_down = Some(next_probe_ms);
                r.skipped = true;
                return r;
            }
        };
        if let Err(wait) = self
            .shaper
            .message_shared(&site, self.shaper.shape(d.domain, &site, None))
            .await
        {
            let mut r = report(vec![
                RemoteReply {
                    code: 0,
                    enhanced: "4.7.0".into(),
                    text: format!(
                        "shaping: the hourly message limit for {site} is reached; next in {} s",
                        wait.as_secs() + 1
                    ),
                    mx: None,
                };
                d.recipients.len()
            ]);
            if probe {
                self.health.release_probe(&site);
            }
            r.site = Some(site);
            r.retry_at = Some(self.reputation.clock().now() + wait.as_secs() + 1);
            return r;
        }
        let mut r = self
            .deliver_direct(d, pool, policy, &tls_policy, &hosts, &site)
            .await;
        // Only a delivery where no server said anything (refused, timed out, dropped)
        // counts against the site; a TLS failure or any reply proves it is there.
        let unanswered = !r.replies.is_empty()
            && r.replies
                .iter()
                .all(|x| x.code == 0 && matches!(x.enhanced.as_str(), "4.4.1" | "4.4.2"));
        if unanswered && !r.no_egress && r.mx_ip.is_some() {
            r.unreachable = true;
            let error = r
                .replies
                .first()
                .map(|x| x.text.clone())
                .unwrap_or_default();
            r.site_down = self.health.unreachable(
                &site,
                &error,
                self.reputation.clock().now_ms(),
                self.site_down_after,
                &self.probe_pace,
            );
        } else if r.replies.iter().any(|x| x.code > 0) {
            r.site_recovered = self
                .health
                .answered(&site, self.reputation.clock().now_ms());
        } else if probe {
            self.health.release_probe(&site);
        }
        r
    }

    /// Tries the MX hosts in order from the pool's egress IPs until one server takes the
    /// transaction.
    async fn deliver_direct(
        &self,
        d: &DomainDelivery<'_>,
        pool: &Pool,
        policy: TlsPolicy,
        tls_policy: &DomainPolicy,
        hosts: &[crate::dns::MxHost],
        site: &Site,
    ) -> AttemptReport {
        let site = site.clone();
        let report = |replies| AttemptReport::new(Via::Direct, replies);
        let avoided = |e: &EgressIp| e.ip.is_some_and(|ip| d.avoid.contains(&ip));
        let mut last = RemoteReply {
            code: 0,
            enhanced: "4.4.4".into(),
            text: format!("no usable mail exchanger for {}", d.domain),
            mx: None,
        };
        let mut last_egress = None;
        let mut last_ip = None;
        let mut no_egress = false;
        for host in hosts {
            let host_tls = match self.host_tls(tls_policy, &host.name, policy).await {
                Ok(h) => h,
                Err(refused) => {
                    last = refused;
                    continue;
                }
            };
            let addrs = match self.resolver.lookup_addresses(&host.name).await {
                Ok(a) => a,
                Err(e) => {
                    last = dns_reply(&e);
                    last.mx = Some(host.name.clone());
                    continue;
                }
            };
            for addr in addrs {
                let claim = |e: &EgressIp| match e.ip {
                    _ if avoided(e) => Standing::Hard,
                    // An IP past its own hourly limit for the site sits this one out.
                    Some(ip)
                        if {
                            let (_, of_ip) = self.shaper.shape(d.domain, &site, Some(ip));
                            self.shaper
                                .message(&site, Some(ip), (Shape::default(), of_ip))
                                .is_err()
                        } =>
                    {
                        Standing::Hard
                    }
                    Some(ip) => self.reputation.claim(ip, &site),
                    None => Standing::Clean,
                };
                let Some(egress) = pool.next_for(addr, claim) else {
                    last = self.no_egress(pool, &site, Some((&host.name, addr)));
                    no_egress = true;
                    continue;
                };
                last_egress = Some(egress.clone());
                last_ip = Some(addr);
                let shapes = self.shaper.shape(d.domain, &site, egress.ip);
                let _slot = self.shaper.slot(&site, egress.ip, shapes).await;
                let shaped = Shaped {
                    site: &site,
                    shapes,
                };
                let result = self
                    .try_host_or_clear(
                        &egress,
                        addr,
                        &host.name,
                        d,
                        (tls_policy, &host_tls),
                        &shaped,
                    )
                    .await;
                match result {
                    Ok((replies, reused)) => {
                        return AttemptReport {
                            egress: Some(egress),
                            mx: Some(host.name.clone()),
                            mx_ip: Some(addr),
                            site: Some(site),
                            reused,
                            ..report(replies)
                        };
                    }
                    Err(f) => {
                        // This address said nothing about the IP: a claimed canary is free
                        // again for the next delivery.
                        if let Some(ip) = egress.ip {
                            self.reputation.release_canary(ip, &site);
                        }
                        last = f.reply;
                        no_egress = false;
                    }
                }
            }
        }
        AttemptReport {
            egress: last_egress,
            mx: last.mx.clone(),
            mx_ip: last_ip,
            site: Some(site),
            no_egress,
            ..report(vec![last; d.recipients.len()])
        }
    }

    /// How a session with `mx` uses TLS: the destination's policy (DANE, MTA-STS), else
    /// the route's; or the deferral reply when the policy rules the host out.
    async fn host_tls(
        &self,
        tls_policy: &DomainPolicy,
        mx: &str,
        route: TlsPolicy,
    ) -> Result<HostTls, RemoteReply> {
        match self.tls_policies.host(tls_policy, mx).await {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Ok(match route {
                TlsPolicy::Opportunistic => HostTls::opportunistic(),
                TlsPolicy::Verify => HostTls {
                    required: true,
                    connector: Some(self.verify_tls.clone()),
                    why: "the route".into(),
                    key: Some("verify".into()),
                    ..HostTls::opportunistic()
                },
            }),
            Err(refused) => {
                tracing::warn!(domain = tls_policy.domain, mx, reason = %refused.why, "TLS policy: MX host not used");
                self.tls_policies.record(
                    tls_policy,
                    Outcome {
                        policy: refused.policy,
                        result: Some(refused.result),
                        peer: SessionPeer {
                            egress: None,
                            mx: mx.to_string(),
                            ip: None,
                        },
                        detail: Some(refused.why.clone()),
                    },
                );
                Err(RemoteReply {
                    code: 0,
                    enhanced: "4.7.5".into(),
                    text: refused.why,
                    mx: Some(mx.to_string()),
                })
            }
        }
    }

    /// [`Outbound::try_host`]; when opportunistic TLS failed, again in plain text. A
    /// verified route or a destination's policy never falls back to the clear. The
    /// session is counted under the destination's policy (TLS-RPT, metrics).
    async fn try_host_or_clear(
        &self,
        egress: &EgressIp,
        addr: IpAddr,
        mx: &str,
        d: &DomainDelivery<'_>,
        (tls_policy, tls): (&DomainPolicy, &HostTls),
        shaped: &Shaped<'_>,
    ) -> Result<(Vec<RemoteReply>, bool), HostFailure> {
        *tls.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let result = self
            .try_host(egress, addr, mx, d, TlsUse::Policy(tls), shaped)
            .await;
        let counted = match &result {
            Ok((_, false)) => Some(tls.problem()),
            Err(f) if f.tls => Some(Some(
                tls.problem()
                    .unwrap_or(mail_auth::report::tlsrpt::ResultType::ValidationFailure),
            )),
            _ => None,
        };
        if let Some(problem) = counted {
            self.tls_policies.record(
                tls_policy,
                Outcome {
                    policy: tls.policy,
                    result: problem,
                    peer: SessionPeer {
                        egress: egress.ip,
                        mx: mx.to_string(),
                        ip: Some(addr),
                    },
                    detail: result.as_ref().err().map(|f| f.reply.text.clone()),
                },
            );
        }
        match &result {
            Err(HostFailure { tls: true, .. }) if !tls.required => {
                self.try_host(egress, addr, mx, d, TlsUse::Never, shaped)
                    .await
            }
            _ => result,
        }
    }

    /// A seed probe: `d` from `egress` and no other IP, whatever its standing for the
    /// site (a probe is how a silent discard ends), never through a smarthost, outside
    /// shaping and site health. The MX hosts in order, each address in turn.
    pub async fn probe(&self, egress: &EgressIp, d: &DomainDelivery<'_>) -> AttemptReport {
        let report = |replies| AttemptReport::new(Via::Direct, replies);
        let hosts = match self.resolver.lookup_mx(d.domain).await {
            Ok(h) => h,
            Err(e) => return report(vec![dns_reply(&e); d.recipients.len()]),
        };
        let site = Site::from_mx(&hosts, &self.site_rollup);
        let (_, _, policy) = self.route_for(d.domain);
        let tls_policy = self.tls_policies.domain(d.domain).await;
        let shaped = Shaped {
            site: &site,
            shapes: Default::default(),
        };
        let mut last = RemoteReply {
            code: 0,
            enhanced: "4.4.4".into(),
            text: format!("no usable mail exchanger for {}", d.domain),
            mx: None,
        };
        let mut last_ip = None;
        for host in &hosts {
            let host_tls = match self.host_tls(&tls_policy, &host.name, policy).await {
                Ok(h) => h,
                Err(refused) => {
                    last = refused;
                    continue;
                }
            };
            let addrs = match self.resolver.lookup_addresses(&host.name).await {
                Ok(a) => a,
                Err(e) => {
                    last = dns_reply(&e);
                    continue;
                }
            };
            for addr in addrs.into_iter().filter(|a| egress.can_reach(*a)) {
                last_ip = Some(addr);
                match self
                    .try_host_or_clear(
                        egress,
                        addr,
                        &host.name,
                        d,
                        (&tls_policy, &host_tls),
                        &shaped,
                    )
                    .await
                {
                    Ok((replies, reused)) => {
                        return AttemptReport {
                            egress: Some(egress.clone()),
                            mx: Some(host.name.clone()),
                            mx_ip: Some(addr),
                            site: Some(site),
                            reused,
                            ..report(replies)
                        };
                    }
                    Err(f) => last = f.reply,
                }
            }
        }
        AttemptReport {
            egress: Some(egress.clone()),
            mx: last.mx.clone(),
            mx_ip: last_ip,
            site: Some(site),
            ..report(vec![last; d.recipients.len()])
        }
    }

    pub(super) fn standing(&self, egress: &EgressIp, site: &Site) -> Standing {
        egress
            .ip
            .map_or(Standing::Clean, |ip| self.reputation.standing_for(ip, site))
    }

    /// Why no egress IP may be used: the message is deferred (never bounced) with this
    /// as its reason, which the attempt's log line and an expiry DSN show.
    fn no_egress(&self, pool: &Pool, site: &Site, target: Option<(&str, IpAddr)>) -> RemoteReply {
        let why: Vec<String> = pool
            .egress()
            .iter()
            .map(|e| match (e.ip, target) {
                (Some(ip), Some((_, addr))) if !e.can_reach(addr) => {
                    format!("{ip}: cannot reach {addr}")
                }
                (Some(ip), _) => format!(
                    "{ip}: {}",
                    self.reputation.describe_for(ip, site).join("; ")
                ),
                (None, _) => "default address: cannot reach the destination".to_string(),
            })
            .collect();
        RemoteReply {
            code: 0,
            enhanced: "4.7.0".into(),
            text: format!(
                "no usable egress IP in pool {} for {site}: {}",
                pool.name,
                why.join(" | ")
            ),
            mx: target.map(|(mx, _)| mx.to_string()),
        }
    }

    /// One transaction with one MX address from `egress`: on an idle session left by an
    /// earlier message if there is one, else on a new connection. Returns the replies
    /// and whether the session was reused.
    async fn try_host(
        &self,
        egress: &EgressIp,
        addr: IpAddr,
        mx: &str,
        d: &DomainDelivery<'_>,
        tls: TlsUse<'_>,
        shaped: &Shaped<'_>,
    ) -> Result<(Vec<RemoteReply>, bool), HostFailure> {
        let dest = SocketAddr::new(addr, self.port);
        // A connection limit shared by a cluster counts deliveries under way, so a
        // session is not kept idle for such a site: every open connection holds a lease.
        let keep =
            shaped.shapes.0.max_connections.is_none() || self.shaper.shared_slots().is_none();
        let _busy = self.sessions.busy(dest);
        while let Some(mut session) = self.sessions.take(egress.ip, dest) {
            if let TlsUse::Policy(h) = tls
                && h.required
                && session.tls_key != h.key
            {
                // Not opened under this policy: left for others, a new one opened.
                self.sessions.put(egress.ip, dest, session);
                break;
            }
            let t = transaction(&mut session.client, session.caps, d, mx, true, egress.ip).await;
            if t.chunk_lost {
                self.broken_chunking.remember(dest, mx, "server");
            }
            match t.after {
                // The server closed the idle session meanwhile: nothing of this message
                // was taken; another idle session or a new connection will do.
                After::Stale => continue,
                After::Ready if keep => self.sessions.put(egress.ip, dest, session),
                After::Ready | After::Done => session.quit().await,
            }
            return Ok((t.replies, true));
        }
        let cap = shaped
            .shapes
            .0
            .max_connections
            .map_or(d.max_connections, |n| n.min(d.max_connections));
        if shaped.shapes.0.max_connections.is_some() {
            self.sessions.make_room_strictly(dest, cap).await;
        } else {
            self.sessions.make_room(dest, cap);
        }
        self.pace_connection(shaped, egress.ip, mx).await?;
        // Boxed, as the smarthost's delivery is: the TLS handshake's state is large.
        let mut session = Box::pin(self.open(egress, dest, mx, tls)).await?;
        session.max_messages = [
            shaped.shapes.0.messages_per_connection,
            shaped.shapes.1.messages_per_connection,
        ]
        .into_iter()
        .flatten()
        .min();
        let t = transaction(&mut session.client, session.caps, d, mx, false, egress.ip).await;
        if t.chunk_lost {
            self.broken_chunking.remember(dest, mx, "server");
        }
        match t.after {
            After::Ready if keep => self.sessions.put(egress.ip, dest, session),
            After::Ready | After::Done | After::Stale => session.quit().await,
        }
        Ok((t.replies, false))
    }

    /// Waits for the site's (and IP's) new-connection rate; a wait longer than
    /// [`MAX_PACING`] defers the delivery instead.
    async fn pace_connection(
        &self,
        shaped: &Shaped<'_>,
        ip: Option<IpAddr>,
        mx: &str,
    ) -> Result<(), HostFailure> {
        loop {
            match self
                .shaper
                .connection_shared(shaped.site, ip, shaped.shapes)
                .await
            {
                Ok(()) => return Ok(()),
                Err(wait) if wait <= MAX_PACING => tokio::time::sleep(wait).await,
                Err(wait) => {
                    return Err(HostFailure {
                        reply: RemoteReply {
                            code: 0,
                            enhanced: "4.7.0".into(),
                            text: format!(
                                "shaping: the connection rate to {} is used up; next in {} s",
                                shaped.site,
                                wait.as_secs() + 1
                            ),
                            mx: Some(mx.to_string()),
                        },
                        tls: false,
                    });
                }
            }
        }
    }

    /// A new session: connect from `egress`, greeting, EHLO, STARTTLS when offered (and
    /// wanted) or required, EHLO again.
    async fn open(
        &self,
        egress: &EgressIp,
        dest: SocketAddr,
        mx: &str,
        tls: TlsUse<'_>,
    ) -> Result<Session, HostFailure> {
        let addr = dest.ip();
        let fail = |code: u16, enhanced: &str, text: String| HostFailure {
            reply: RemoteReply {
                code,
                enhanced: enhanced.into(),
                text,
                mx: Some(mx.to_string()),
            },
            tls: false,
        };
        let stream = self.connect(egress, dest).await.map_err(|e| {
            fail(
                0,
                "4.4.1",
                format!("connect to {mx}[{addr}] from {egress}: {e}"),
            )
        })?;
        let mut client = SmtpClient {
            stream,
            timeout: self.command_timeout,
        };
        greeting(&mut client, mx).await?;
        let caps = hello(&mut client, &egress.helo, mx).await?.capabilities;
        let offered = caps & EXT_START_TLS != 0;
        let connector = match tls {
            TlsUse::Policy(h) if !offered => {
                h.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(mail_auth::report::tlsrpt::ResultType::StartTlsNotSupported);
                if h.required {
                    return Err(HostFailure {
                        tls: true,
                        ..fail(
                            0,
                            "4.7.5",
                            format!(
                                "{mx}[{addr}] does not offer STARTTLS, which {} requires; the mail waits",
                                h.why
                            ),
                        )
                    });
                }
                None
            }
            TlsUse::Policy(h) => h.connector.as_ref().or(self.tls.as_ref()),
            TlsUse::Never => None,
        };
        match connector {
            Some(connector) => {
                let mut client = client
                    .start_tls(connector, mx)
                    .await
                    .map_err(|e| HostFailure {
                        reply: match tls {
                            TlsUse::Policy(h) if h.required => RemoteReply {
                                code: 0,
                                enhanced: "4.7.5".into(),
                                text: format!(
                                    "TLS with {mx}[{addr}] failed and {} requires a verified certificate{}: {e}; the mail waits",
                                    h.why,
                                    h.problem().map_or(String::new(), |p| format!(
                                        " ({})",
                                        crate::tls_policy::outcomes::result_name(&Some(p))
                                    ))
                                ),
                                mx: Some(mx.to_string()),
                            },
                            _ => error_reply(e, mx),
                        },
                        tls: true,
                    })?;
                let caps = hello(&mut client, &egress.helo, mx).await?.capabilities;
                let caps = self.broken_chunking.usable(dest, caps, self.chunking);
                let mut session = Session::new(boxed(client), caps);
                if let TlsUse::Policy(h) = tls {
                    session.tls_key = h.key.clone();
                }
                Ok(session)
            }
            None => {
                let caps = self.broken_chunking.usable(dest, caps, self.chunking);
                Ok(Session::new(boxed(client), caps))
            }
        }
    }

    async fn connect(&self, egress: &EgressIp, dest: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if dest.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = egress.ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = tokio::time::timeout(self.connect_timeout, socket.connect(dest))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// The longest a delivery waits for the connection rate before it is deferred.
const MAX_PACING: Duration = Duration::from_secs(10);

/// A delivery's site and the shaping limits that apply to it.
struct Shaped<'a> {
    site: &'a Site,
    shapes: (Shape, Shape),
}

/// How one connection uses TLS.
#[derive(Clone, Copy)]
enum TlsUse<'a> {
    /// As the destination's policy or the route says: STARTTLS when offered with the
    /// unchecked client, or required with the policy's own.
    Policy(&'a HostTls),
    /// Plain text (opportunistic TLS just failed with this host).
    Never,
}

fn dns_reply(e: &DnsError) -> RemoteReply {
    let enhanced = match e {
        DnsError::NoSuchDomain(_) => "5.1.2",
        DnsError::NullMx(_) => "5.1.10",
        DnsError::NoAddress(_) | DnsError::Temporary { .. } | DnsError::Setup(_) => "4.4.3",
    };
    RemoteReply {
        code: 0,
        enhanced: enhanced.into(),
        text: e.to_string(),
        mx: None,
    }
}
