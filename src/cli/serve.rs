use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::classify::Classifier;
use crate::clock::Clock;
use crate::dns::Resolver;
use crate::inbound::{self, Inbound, Security};
use crate::outbound::Outbound;
use crate::queue::{self, QueueContext};
use crate::reputation::{self, Reputation};
use crate::spool::Spool;

/// `sidestep serve`: wires the pipeline together and runs until killed, in the order the
/// pieces need each other: the state that outlives a process (spool, reputation,
/// senders), the cluster that shares it, the monitors that keep it fresh, the delivery
/// side, the listeners; then it waits for a stop and drains.
///
/// Prints `sidestep listening on ADDR` on stdout once the port is open, so scripts and
/// tests that asked for port 0 learn the port.
pub async fn serve(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Arc::new(super::load_config(config_path)?);
    raise_file_limit(&config);
    let (state, alert_mail) = State::open(&config)?;
    let monitor = start_monitors(&config, &state);
    let delivery = start_delivery(&config, &state, alert_mail)?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let sessions = inbound::Sessions::new(&config.server);
    let inbound = Arc::new(Inbound {
        config: std::sync::RwLock::new(config.clone()),
        spool: state.spool.clone(),
        queue: delivery.queue.clone(),
        stopping: stopping.clone(),
        sessions: sessions.clone(),
        alerts: state.alerts.clone(),
        security: std::sync::RwLock::new(Arc::new(
            Security::load(&config).map_err(|e| anyhow::anyhow!(e.join("; ")))?,
        )),
        guard: Default::default(),
        senders: state.senders.clone(),
        clock: Clock::system(),
        suppressions: delivery.bounces.suppressions.clone(),
        bounce_gate: Default::default(),
    });
    let site_health = delivery.ctx.outbound.health();
    let reloader = Arc::new(super::Reloader::new(
        config_path,
        super::Running {
            config: config.clone(),
            ctx: delivery.ctx.clone(),
            inbound: inbound.clone(),
            queue: delivery.queue.clone(),
            resolver: state.resolver.clone(),
            reputation: state.reputation.clone(),
            monitor,
            bounces: delivery.bounces.clone(),
        },
    ));

    // Signal handlers first: a SIGTERM or SIGHUP that arrives once the port is announced
    // must find them (their default action would end the process on the spot).
    let mut signals = StopSignals::new().context("waiting for signals")?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("waiting for SIGHUP")?;
    let (listener, tls_listener) = bind(&config).await?;
    let admin = admin_desk(&config, &state, &delivery, site_health, &inbound, &reloader)?;
    start_admin(&config, admin, stopping.clone()).await?;
    delivery.bounces.listen(&config, &inbound).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("sidestep listening on {addr}");
    // On a worker, not in `block_on`: the main thread would otherwise be woken for every
    // connection only to hand the session over to a worker.
    if let Some(tls_listener) = tls_listener {
        tokio::spawn(inbound::serve(
            tls_listener,
            inbound.clone(),
            inbound::Port::Tls,
        ));
    }
    let accept = tokio::spawn(inbound::serve(listener, inbound, inbound::Port::Plain));
    reload_on_hangup(hangup, reloader);

    let drain_timeout = config.server.drain_timeout.get();
    tokio::select! {
        stopped = accept => {
            stopped.context("the accept loop stopped")?;
            return Ok(());
        }
        signal = signals.next() => {
            tracing::info!(
                signal,
                sessions = sessions.running(),
                drain_timeout = %humantime::format_duration(drain_timeout),
                "stopping: no new connections; sessions finish their transaction, deliveries in flight finish"
            );
        }
    }
    let _ = stop.send(true);
    drain(&sessions, &delivery.queue, drain_timeout, &mut signals).await;
    state.reputation.flush_warmup();
    // The TLS session counts of the last seconds (written every 5 s while running).
    if let Err(e) = delivery.ctx.outbound.tls_policies().flush() {
        tracing::error!(error = %e, "TLS session counts could not be saved");
    }
    Ok(())
}

/// The state that outlives a process, and the cluster that shares it between nodes.
struct State {
    spool: Spool,
    resolver: Resolver,
    alerts: crate::alerts::Alerts,
    reputation: Reputation,
    senders: crate::senders::Senders,
    cluster: Option<crate::cluster::Started>,
    authorisation: crate::authorisation::Authorisation,
}

impl State {
    /// The state, and the alerts to mail (the queue takes them once it runs).
    fn open(
        config: &Arc<crate::config::Config>,
    ) -> anyhow::Result<(Self, Option<crate::alerts::MailEvents>)> {
        let clock = Clock::system();
        let spool = Spool::open(&config.spool.directory)
            .with_context(|| format!("opening spool {}", config.spool.directory.display()))?;
        let resolver = Resolver::new(&config.dns).context("setting up DNS")?;
        let (alerts, alert_mail) =
            crate::alerts::Alerts::start(&config.alerts, &config.server.hostname, clock.clone());
        let reputation = Reputation::open(
            config.blocklists.clone(),
            &config.spool.directory,
            Some(alerts.clone()),
        )
        .context("loading listing state")?;
        reputation.set_warmup(crate::reputation::warmup_schedules(config));
        let senders = crate::senders::Senders::open(
            &config.spool.directory,
            Some(alerts.clone()),
            clock.clone(),
        )
        .context("loading sender suspensions")?;
        let cluster = crate::cluster::start(
            &config.cluster,
            clock.clone(),
            reputation.clone(),
            senders.clone(),
        )
        .context("[cluster]")?;
        let authorisation = crate::authorisation::Authorisation::new(
            &resolver,
            &config.server.hostname,
            Some(&config.spool.directory),
            clock,
        );
        let state = Self {
            spool,
            resolver,
            alerts,
            reputation,
            senders,
            cluster,
            authorisation,
        };
        Ok((state, alert_mail))
    }
}

/// The tasks that keep the state fresh: the listing monitor (returned: a reload
/// replaces it), SPF rechecks, the warmup counts' flush and the spool's free space.
fn start_monitors(config: &crate::config::Config, state: &State) -> tokio::task::JoinHandle<()> {
    {
        // Today's warmup counts reach the disk every few seconds (and at the stop).
        let reputation = state.reputation.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let r = reputation.clone();
                let _ = tokio::task::spawn_blocking(move || r.flush_warmup()).await;
            }
        });
    }
    let monitor = reputation::spawn_monitor(
        state.reputation.clone(),
        state.resolver.clone(),
        config.egress_helos(),
        config.listings.clone(),
        config.delivery.require_fcrdns,
    );
    let reputation = state.reputation.clone();
    state.authorisation.spawn_rechecks(
        config.egress_helos(),
        config.listings.refresh.get(),
        move |c| {
            let verb = if c.now == crate::authorisation::SpfOutcome::Pass {
                "is now authorised"
            } else {
                "is no longer authorised"
            };
            tracing::warn!(sender_domain = %c.domain, ip = %c.ip, was = %c.was, now = %c.now, "egress IP {verb} by the SPF of {}", c.domain);
            reputation.alert(
                "auth-changed",
                Some(c.ip),
                Some(c.domain.clone()),
                format!("{} {verb} by the SPF of {} (spf was {}, now {})", c.ip, c.domain, c.was, c.now),
            );
        },
    );
    watch_spool_space(
        config.spool.directory.clone(),
        config.alerts.spool_free_below,
        state.alerts.clone(),
    );
    monitor
}

/// The delivery side: the outbound half, the queue over the spool, and what feeds the
/// queue besides clients (seed probes, complaint reports, alert mail).
struct Delivery {
    ctx: Arc<QueueContext>,
    queue: queue::QueueHandle,
    probes: crate::probes::Probes,
    complaints: crate::complaints::Complaints,
    /// Return paths, the bounce reader and the suppression list (a reload re-reads them).
    bounces: Arc<super::bounces::Wired>,
}

fn start_delivery(
    config: &Arc<crate::config::Config>,
    state: &State,
    alert_mail: Option<crate::alerts::MailEvents>,
) -> anyhow::Result<Delivery> {
    let outbound = Outbound::new(
        config,
        state.resolver.clone(),
        state.reputation.clone(),
        state.authorisation.clone(),
    )
    .context("setting up delivery")?;
    if let Some(c) = &state.cluster {
        outbound.share_slots(c.slots.clone());
        c.share_health(outbound.health());
    }
    let classifier =
        Classifier::new(&config.classify.rules).context("loading classification rules")?;
    let complaints = crate::complaints::Complaints::open(&config.spool.directory)
        .context("loading the complaint counts")?;
    let bounces = Arc::new(super::bounces::wire(
        config,
        &state.spool,
        complaints.clone(),
    )?);
    if let Some(c) = &state.cluster {
        c.share_suppressions(bounces.suppressions.clone());
    }
    let ctx = Arc::new(
        QueueContext::new(
            config.clone(),
            state.spool.clone(),
            outbound,
            state.reputation.clone(),
            Arc::new(classifier),
        )
        .with_senders(state.senders.clone())
        .with_bounces(bounces.for_queue()),
    );
    let queue = queue::start(ctx.clone()).context("recovering the queue")?;
    bounces.started(queue.clone());
    if let Some(c) = &state.cluster {
        c.set_queue(queue.clone());
    }
    let probes =
        crate::probes::Probes::open(&config.spool.directory).context("loading the seed probes")?;
    crate::probes::spawn(ctx.clone(), probes.clone());
    crate::complaints::spawn(ctx.clone(), complaints.clone());
    if let Some((to, events)) = alert_mail {
        queue::notice::spawn_alert_mail(
            to,
            events,
            state.spool.clone(),
            queue.clone(),
            Clock::system(),
        );
    }
    spawn_tls_reports(&ctx, &state.spool, &queue);
    Ok(Delivery {
        ctx,
        queue,
        probes,
        complaints,
        bounces,
    })
}

/// TLS reports (RFC 8460) through the queue; the day's session counts reach the disk
/// every few seconds; each finished day's reports go out after midnight UTC, and those
/// an `https:` rua did not take are POSTed again when due.
fn spawn_tls_reports(ctx: &QueueContext, spool: &crate::spool::Spool, queue: &queue::QueueHandle) {
    let policies = ctx.outbound.tls_policies().clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    policies.set_mailer(tx);
    queue::notice::spawn_tls_reports(rx, spool.clone(), queue.clone(), Clock::system());
    policies.spawn_daily();
    policies.spawn_retries();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let p = policies.clone();
            let _ = tokio::task::spawn_blocking(move || p.flush()).await;
        }
    });
}

/// The client listeners: plain (STARTTLS) and, with `listen_tls`, implicit TLS.
async fn bind(
    config: &crate::config::Config,
) -> anyhow::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let Some(addr) = config.server.listen_tls else {
        return Ok((listener, None));
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (listen_tls)"))?;
    let bound = l.local_addr()?;
    tracing::info!(addr = %bound, "listening (implicit TLS)");
    println!("sidestep listening for TLS on {bound}");
    Ok((listener, Some(l)))
}

/// Everything the admin API shows and acts on.
fn admin_desk(
    config: &crate::config::Config,
    state: &State,
    delivery: &Delivery,
    site_health: Arc<crate::routing::SiteHealth>,
    inbound: &Arc<Inbound>,
    reloader: &Arc<super::Reloader>,
) -> anyhow::Result<crate::admin::Admin> {
    let current = {
        let inbound = inbound.clone();
        Arc::new(move || inbound.config())
    };
    let desk = crate::admin::auth::AuthDesk {
        authorisation: state.authorisation.clone(),
        resolver: state.resolver.clone(),
        config: current,
    };
    let reloader = reloader.clone();
    Ok(crate::admin::Admin::new(
        state.spool.clone(),
        delivery.queue.clone(),
        read_token(config)?,
        config.admin.trusted_networks.clone(),
        &config.server.hostname,
        state.reputation.clone(),
    )
    .with_sessions(inbound.sessions.clone())
    .with_guard(inbound.guard.clone())
    .with_senders(state.senders.clone())
    .with_probes(delivery.probes.clone())
    .with_complaints(delivery.complaints.clone())
    .with_suppressions(
        delivery.bounces.suppressions.clone(),
        config.suppression.clone(),
    )
    .with_cluster(state.cluster.as_ref().map(|c| c.status.clone()))
    .with_site_health(site_health)
    .with_tls_policies(delivery.ctx.outbound.tls_policies().clone())
    .with_egress(config.egress_ips())
    .with_auth(desk)
    .with_default_source(config.uses_default_source())
    .with_reload(Arc::new(move || reloader.reload())))
}

/// SIGHUP reloads the configuration.
fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, reloader: Arc<super::Reloader>) {
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    });
}

/// Sessions end (each after its transaction), and deliveries in flight report back;
/// then nothing is left that a restart would repeat. A second signal or the drain
/// timeout cuts it short: what was cut is spooled and goes out after the restart.
async fn drain(
    sessions: &inbound::Sessions,
    queue: &queue::QueueHandle,
    drain_timeout: std::time::Duration,
    signals: &mut StopSignals,
) {
    let drained = async {
        tokio::join!(sessions.ended(), queue.drain());
    };
    tokio::select! {
        () = drained => tracing::info!("stopped: every session ended, every delivery in flight finished"),
        () = tokio::time::sleep(drain_timeout) => tracing::warn!(
            sessions = sessions.running(),
            "stopped at the drain timeout; what was cut short is spooled and goes out after the restart"
        ),
        signal = signals.next() => tracing::warn!(signal, "stopped at once by a second signal"),
    }
}

/// The admin API, when `[admin] listen` is set. Its address is also written to
/// `admin.addr` in the spool directory, where the CLI looks first (a port of 0 is only
/// known once bound).
async fn start_admin(
    config: &crate::config::Config,
    admin: crate::admin::Admin,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(addr) = config
        .admin
        .address()
        .context("[admin] listen (check-config names the problem)")?
    else {
        let _ = std::fs::remove_file(config.spool.directory.join(ADMIN_ADDR_FILE));
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin API: listening on {addr}"))?;
    let bound = listener.local_addr()?;
    // 0600 as every file in the spool.
    crate::spool::replace_durably(
        &config.spool.directory.join(ADMIN_ADDR_FILE),
        format!("{bound}\n").as_bytes(),
    )
    .context("writing admin.addr in the spool directory")?;
    tracing::info!(addr = %bound, "admin API listening");
    println!("sidestep admin on {bound}");
    tokio::spawn(async move {
        if let Err(e) = crate::admin::serve(listener, admin, stopping).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(())
}

/// The admin API's bearer token, from `[admin] token_file`.
fn read_token(config: &crate::config::Config) -> anyhow::Result<Option<String>> {
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text.lines().next().unwrap_or("").trim().to_string()))
}

/// Warns (an alert, and the log) when the spool's file system has less than
/// `below_percent` free, checked every 30 s: before it is full and mail gets 452.
fn watch_spool_space(dir: std::path::PathBuf, below_percent: u8, alerts: crate::alerts::Alerts) {
    tokio::spawn(async move {
        loop {
            let d = dir.clone();
            let free = tokio::task::spawn_blocking(move || {
                rustix::fs::statvfs(&d).ok().map(|s| {
                    let total = s.f_blocks.max(1) as f64;
                    (s.f_bavail as f64 * 100.0 / total, s.f_bavail * s.f_frsize)
                })
            })
            .await
            .ok()
            .flatten();
            if let Some((percent, bytes)) = free
                && percent < f64::from(below_percent)
            {
                tracing::warn!(
                    free_percent = format!("{percent:.1}"),
                    free_bytes = bytes,
                    "spool nearly full"
                );
                alerts.send(
                    "spool-nearly-full",
                    None,
                    Some(dir.display().to_string()),
                    format!(
                        "the spool's file system has {percent:.1}% free ({bytes} bytes); at 0 new mail gets 452"
                    ),
                );
            }
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    });
}

/// The file in the spool directory that holds the admin API's address.
pub(crate) const ADMIN_ADDR_FILE: &str = "admin.addr";

/// SIGTERM (service managers) and SIGINT (Ctrl-C). The first starts a drain, a second
/// cuts it short; the caller then returns, so that `main` writes out pending log lines
/// before the process exits.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Files the relay may hold open at once with `config`: inbound sessions, deliveries under
/// way, idle sessions kept for reuse, and a margin for the spool, DNS, the admin listener
/// and logs.
fn files_needed(config: &crate::config::Config) -> u64 {
    (config.server.max_sessions + config.delivery.max_connections + config.delivery.reuse_max_idle)
        as u64
        + 256
}

/// The soft limit to set (`None`: leave it), and whether even that falls short of `need`.
/// `None` limits are unlimited.
fn file_limit_plan(soft: Option<u64>, hard: Option<u64>, need: u64) -> (Option<u64>, bool) {
    let Some(soft) = soft else {
        return (None, false);
    };
    if soft >= need {
        return (None, false);
    }
    match hard {
        None => (Some(need), false),
        Some(hard) if hard > soft => (Some(hard.min(need.max(soft))), hard < need),
        Some(_) => (None, true),
    }
}

/// Raises the soft limit on open files toward what the config may hold open (up to the
/// hard limit), as Go's runtime and KumoMTA do at start: a shell's default soft limit of
/// 1,024 is below the defaults' sum (200 sessions, 100 deliveries, 1,000 idle sessions),
/// and past it connections fail with EMFILE under load instead of waiting. Warns when
/// the hard limit itself is too low (the packaged unit sets `LimitNOFILE=65536`).
fn raise_file_limit(config: &crate::config::Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = files_needed(config);
    let now = getrlimit(Resource::Nofile);
    let (raise, short) = file_limit_plan(now.current, now.maximum, need);
    let mut soft = now.current;
    if let Some(to) = raise {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(to),
                maximum: now.maximum,
            },
        ) {
            Ok(()) => soft = Some(to),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    if short || soft.is_some_and(|s| s < need) {
        tracing::warn!(
            limit = soft.unwrap_or_default(),
            need,
            "the open-file limit is below what [server] max_sessions + [delivery] max_connections + reuse_max_idle may hold open; raise it (ulimit -n, LimitNOFILE) or lower those"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::file_limit_plan;

    #[test]
    fn the_open_file_limit_is_raised_toward_need_within_the_hard_limit() {
        // A shell's 1,024 under a generous hard limit: raised to what is needed.
        assert_eq!(
            file_limit_plan(Some(1024), Some(65536), 1556),
            (Some(1556), false)
        );
        // Hard limit in between: raised to it, and a warning.
        assert_eq!(
            file_limit_plan(Some(1024), Some(1200), 1556),
            (Some(1200), true)
        );
        // Hard limit reached already: nothing to raise, a warning.
        assert_eq!(file_limit_plan(Some(1024), Some(1024), 1556), (None, true));
        // Enough already, or unlimited: left alone.
        assert_eq!(
            file_limit_plan(Some(65536), Some(65536), 1556),
            (None, false)
        );
        assert_eq!(file_limit_plan(None, None, 1556), (None, false));
        assert_eq!(file_limit_plan(Some(1024), None, 1556), (Some(1556), false));
    }
}
