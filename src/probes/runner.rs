//! The probe task: sends the probes that are due, reads the seed mailbox for the ones in
//! flight, and turns a missing probe into a silent-discard block (an arrived one lifts
//! it). One pass every few seconds; the interval and deadline are the operator's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::mailbox::{Found, Mailbox, MailboxError};
use super::poll::{self, Labels, Reader};
use super::{ImapUrl, ProbeRecord, ProbeStatus, Probes};
use crate::egress::{EgressIp, Standing};
use crate::envelope::{Address, BodyFlags, Sender};
use crate::outbound::DomainDelivery;
use crate::queue::QueueContext;
use crate::reputation::Evidence;
use crate::site::Site;

/// Starts the probes when `[probes]` names a mailbox and seeds; `None` otherwise.
pub fn spawn(ctx: Arc<QueueContext>, probes: Probes) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = &ctx.config.probes;
    let url = ImapUrl::parse(cfg.imap.as_deref()?).ok()?;
    if cfg.seeds.is_empty() {
        return None;
    }
    let tick = (cfg.interval.get().min(cfg.deadline.get()) / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    tracing::info!(
        seeds = cfg.seeds.len(),
        interval = %cfg.interval,
        deadline = %cfg.deadline,
        mailbox = %format!("{}@{}:{}", url.user, url.host, url.port),
        "seed probes on"
    );
    let reader = ProbeReader {
        ctx,
        probes,
        url,
        tick,
    };
    Some(tokio::spawn(poll::run(reader, LABELS)))
}

const LABELS: Labels = Labels {
    name: "seed probes",
    cannot_open: "cannot read the IMAP password",
    while_failing: "; probes in flight wait",
};

/// The probes' side of the polling loop: read the probes in flight, then send the due ones.
struct ProbeReader {
    ctx: Arc<QueueContext>,
    probes: Probes,
    url: ImapUrl,
    tick: Duration,
}

impl Reader for ProbeReader {
    type Read = (Vec<ProbeRecord>, HashMap<String, Found>);

    fn open(&self) -> Result<Mailbox, MailboxError> {
        let cfg = &self.ctx.config.probes;
        Mailbox::open(
            self.url.clone(),
            cfg.password_file.as_deref(),
            cfg.ca_file.as_deref(),
            cfg.folders.clone(),
            Duration::from_secs(30),
        )
    }

    /// Looks for every probe in flight (none: nothing to ask).
    async fn read(&self, mailbox: &Mailbox) -> Option<Result<Self::Read, MailboxError>> {
        let pending: Vec<ProbeRecord> = self
            .probes
            .list()
            .into_iter()
            .filter(|r| r.status == ProbeStatus::Sent)
            .collect();
        if pending.is_empty() {
            return None;
        }
        let tokens: Vec<String> = pending.iter().map(|r| r.token.clone()).collect();
        Some(mailbox.find(&tokens).await.map(|found| (pending, found)))
    }

    async fn handle(&self, (pending, found): Self::Read) {
        check(&self.ctx, &self.probes, pending, &found);
    }

    async fn after_pass(&self) {
        send_due(&self.ctx, &self.probes).await;
    }

    fn interval(&self) -> Duration {
        self.tick
    }
}

/// Settles the probes in flight by what the mailbox showed: arrived ones lift a silent
/// discard, ones past their deadline start one. (A mailbox that cannot be read decides
/// nothing: this is not called.)
fn check(
    ctx: &QueueContext,
    probes: &Probes,
    pending: Vec<ProbeRecord>,
    found: &HashMap<String, Found>,
) {
    let now = ctx.clock.now();
    let deadline = ctx.config.probes.deadline.get().as_secs();
    for mut r in pending {
        let site = r.site.as_deref().map(Site::from);
        if let Some(f) = found.get(&r.token) {
            tracing::info!(ip = %r.ip, seed = %r.seed, token = %r.token, folder = %f.folder, junk = f.junk, "seed probe arrived");
            r.status = ProbeStatus::Arrived {
                at: now,
                folder: f.folder.clone(),
                junk: f.junk,
            };
            if let Some(site) = &site
                && let Err(e) = ctx.reputation.lift_silent(r.ip, site)
            {
                tracing::error!(error = %e, "cannot save the lifted block");
            }
            probes.put(r);
        } else if now >= r.sent_at + deadline {
            tracing::warn!(ip = %r.ip, seed = %r.seed, token = %r.token, reply = %r.reply, "probe missing: accepted with 250, not in the seed mailbox by its deadline");
            r.status = ProbeStatus::Missing { checked_at: now };
            if let Some(site) = &site {
                let evidence = evidence(&r, now, &ctx.config.server.hostname);
                if let Err(e) =
                    ctx.reputation
                        .mark_silent(r.ip, site, evidence, ctx.config.probes.hold.get())
                {
                    tracing::error!(error = %e, "cannot save the silent-discard block (it holds in memory)");
                }
            }
            probes.put(r);
        }
    }
}

/// What a delisting form (or the receiver's postmaster) needs about a discarded probe.
fn evidence(r: &ProbeRecord, checked: u64, hostname: &str) -> Evidence {
    let rfc = crate::clock::rfc3339;
    Evidence {
        reply: r.reply.clone(),
        rule: "silent-discard: seed probe accepted, not delivered by its deadline".into(),
        at: r.sent_at,
        mx_host: r.mx.clone(),
        mx_ip: r.mx_ip,
        queue_id: format!("probe {}", r.token),
        recipient: r.seed.clone(),
        removal_url: None,
        log_line: format!(
            "{} {hostname} sidestep: seed probe {} from {} to {} via {} [{}] accepted at {}: {:?} (receiver id {}); not in the seed mailbox at {}",
            rfc(checked),
            r.token,
            r.ip,
            r.seed,
            r.mx.as_deref().unwrap_or("-"),
            r.mx_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            rfc(r.sent_at),
            r.reply,
            r.receiver_id.as_deref().unwrap_or("-"),
            rfc(checked)
        ),
        late: false,
    }
}

/// Sends each (egress IP, seed) its probe when the interval since the last one is over,
/// the last one is no longer in flight, and the IP is on no blocklist.
async fn send_due(ctx: &QueueContext, probes: &Probes) {
    let cfg = &ctx.config.probes;
    let now = ctx.clock.now();
    let interval = cfg.interval.get().as_secs();
    let from = cfg
        .from
        .clone()
        .unwrap_or_else(|| format!("probe@{}", ctx.config.server.hostname));
    for (ip, helo) in ctx.config.egress_helos() {
        if ctx.reputation.standing(ip) == Standing::Hard {
            continue;
        }
        for seed in &cfg.seeds {
            let latest = probes.latest(ip, &seed.address);
            let due = match &latest {
                None => true,
                Some(r) => r.status != ProbeStatus::Sent && r.sent_at + interval <= now,
            };
            // Two seeds at one site: still one probe per IP and site per interval.
            let site_due = latest
                .as_ref()
                .and_then(|r| r.site.as_deref())
                .and_then(|site| probes.last_sent_to_site(ip, site))
                .is_none_or(|at| at + interval <= now);
            if !due || !site_due {
                continue;
            }
            let egress = EgressIp {
                ip: Some(ip),
                helo: helo.as_str().into(),
            };
            if let Some(r) = send_one(ctx, &egress, &from, &seed.address).await {
                probes.put(r);
            }
        }
    }
}

async fn send_one(
    ctx: &QueueContext,
    egress: &EgressIp,
    from: &str,
    seed: &str,
) -> Option<ProbeRecord> {
    let ip = egress.ip?;
    let (Ok(sender), Ok(rcpt)) = (Address::parse(from, false), Address::parse(seed, false)) else {
        tracing::error!(from, seed, "seed probes: not a mail address");
        return None;
    };
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let host = &ctx.config.server.hostname;
    // No Auto-Submitted: to the receiver a probe must be ordinary mail.
    let headers = crate::queue::letter::Letter {
        from: &format!("sidestep probe <{from}>"),
        to: &format!("<{seed}>"),
        subject: &format!("sidestep probe {token}"),
        message_id: &format!("probe-{token}@{host}"),
        auto_submitted: None,
        extra: &[("X-Sidestep-Probe", &token)],
        content_type: "text/plain; charset=us-ascii",
    }
    .headers(ctx.clock.now());
    let body = format!(
        "{headers}A delivery probe from {host}, sent from {ip} to see whether mail from it\r\nreaches this mailbox. It can be deleted.\r\n"
    );
    let sender = Sender::Address(sender);
    let recipients = [rcpt];
    let d = DomainDelivery {
        domain: recipients[0].domain(),
        sender: &sender,
        recipients: &recipients,
        flags: BodyFlags::default(),
        body: body.as_bytes(),
        max_connections: 1,
        avoid: &[],
        // A probe leaves from the IP under test, whatever SPF says of it.
        spf: crate::config::SpfMode::Off,
        return_path: None,
    };
    let report = ctx.outbound.probe(egress, &d).await;
    let reply = report.replies.first()?;
    let status = match reply.code {
        200..=299 => ProbeStatus::Sent,
        0 => ProbeStatus::Failed,
        _ => ProbeStatus::Refused,
    };
    tracing::info!(ip = %ip, seed, token = %token, site = ?report.site.as_ref().map(Site::as_str), reply = %reply, "seed probe sent");
    let text = reply.to_string();
    Some(ProbeRecord {
        receiver_id: super::receiver_id(&text),
        token,
        ip,
        seed: seed.to_string(),
        site: report.site.as_ref().map(|s| s.as_str().to_string()),
        sent_at: ctx.clock.now(),
        reply: text,
        mx: report.mx.clone(),
        mx_ip: report.mx_ip,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classifier;
    use crate::clock::Clock;
    use crate::config::{Config, HumanDuration};
    use crate::dns::Resolver;
    use crate::outbound::Outbound;
    use crate::reputation::Reputation;
    use std::net::IpAddr;

    fn context(clock: &Clock) -> QueueContext {
        let mut config = Config::default();
        config.probes.deadline = HumanDuration::from_secs(15 * 60);
        config.probes.hold = HumanDuration::from_secs(3600);
        // Nothing here resolves a name: loopback, never a public resolver.
        config.dns.nameservers = vec!["127.0.0.1:9".parse().unwrap()];
        let config = Arc::new(config);
        let reputation = Reputation::in_memory_with_clock(vec![], clock.clone());
        let resolver = Resolver::new(&config.dns).unwrap();
        let authorisation =
            crate::authorisation::Authorisation::new(&resolver, "relay.test", None, clock.clone());
        let outbound = Outbound::new(&config, resolver, reputation.clone(), authorisation).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::spool::Spool::open(dir.path()).unwrap();
        QueueContext::new(
            config,
            spool,
            outbound,
            reputation,
            Arc::new(Classifier::builtin().unwrap()),
        )
        .with_clock(clock.clone())
    }

    fn sent(ip: IpAddr, token: &str, at: u64) -> ProbeRecord {
        ProbeRecord {
            token: token.into(),
            ip,
            seed: "seed@mail.test".into(),
            site: Some("mx.mail.test".into()),
            sent_at: at,
            reply: "250 2.0.0 Ok: queued as ABC".into(),
            receiver_id: Some("ABC".into()),
            mx: Some("mx.mail.test".into()),
            mx_ip: None,
            status: ProbeStatus::Sent,
        }
    }

    /// Simulated minutes: a probe is missing only once its deadline has passed, then
    /// its (IP, site) is held as silently discarding; one that arrives lifts the hold.
    #[tokio::test]
    async fn a_probe_is_missing_at_its_deadline_not_before_and_an_arrival_lifts_it() {
        let clock = Clock::manual(1_800_000_000_000);
        let ctx = context(&clock);
        let probes = Probes::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let site = Site::from("mx.mail.test");
        let t0 = clock.now();
        probes.put(sent(ip, "tok1", t0));

        clock.advance(Duration::from_secs(15 * 60 - 1));
        check(&ctx, &probes, probes.list(), &HashMap::new());
        assert_eq!(probes.list()[0].status, ProbeStatus::Sent, "a second early");
        assert_eq!(ctx.reputation.standing_for(ip, &site), Standing::Clean);

        clock.advance(Duration::from_secs(1));
        check(&ctx, &probes, probes.list(), &HashMap::new());
        assert_eq!(
            probes.list()[0].status,
            ProbeStatus::Missing {
                checked_at: t0 + 15 * 60
            }
        );
        assert_eq!(ctx.reputation.standing_for(ip, &site), Standing::Hard);

        // The next probe arrives (in the junk folder): the silent discard is lifted.
        clock.advance(Duration::from_secs(600));
        probes.put(sent(ip, "tok2", clock.now()));
        let found = HashMap::from([(
            "tok2".to_string(),
            Found {
                folder: "Junk".into(),
                junk: true,
            },
        )]);
        check(&ctx, &probes, probes.list(), &found);
        assert!(matches!(
            probes.list()[0].status,
            ProbeStatus::Arrived { junk: true, .. }
        ));
        assert_eq!(ctx.reputation.standing_for(ip, &site), Standing::Clean);
    }
}
