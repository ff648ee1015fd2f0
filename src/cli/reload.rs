//! Reloading the configuration (SIGHUP, `sidestep reload`): validate the whole file
//! first, keep running on the old one if anything is wrong, else put the new one in force
//! for new sessions and new attempts (those under way finish on the one they started
//! with). What only a restart can change is reported, not silently ignored. `[bounces]`
//! is re-read too: domains, secret, listener (see `cli/bounces.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::admin::api::ReloadOutcome;
use crate::classify::Classifier;
use crate::config::Config;
use crate::dns::Resolver;
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::queue::{QueueContext, QueueHandle};
use crate::reputation::Reputation;

/// The running relay's pieces a reload replaces or builds from.
pub struct Running {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The queue's context under it.
    pub ctx: Arc<QueueContext>,
    /// The inbound side, whose configuration new sessions take.
    pub inbound: Arc<Inbound>,
    /// The scheduler, told about the new context.
    pub queue: QueueHandle,
    /// The resolver new outbound sides and monitors use.
    pub resolver: Resolver,
    /// Listings and blocks; its lists are replaced.
    pub reputation: Reputation,
    /// The listing monitor now.
    pub monitor: tokio::task::JoinHandle<()>,
    /// Return paths, the bounce reader and listener: `[bounces]` is re-read.
    pub bounces: Arc<super::bounces::Wired>,
}

/// What a reload swaps, and what it needs to build the new pieces.
pub struct Reloader {
    path: Option<PathBuf>,
    current: Mutex<(Arc<Config>, Arc<QueueContext>)>,
    inbound: Arc<Inbound>,
    queue: QueueHandle,
    resolver: Resolver,
    reputation: Reputation,
    /// The listing monitor, restarted with the new lists and egress IPs.
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    bounces: Arc<super::bounces::Wired>,
    /// One reload at a time (SIGHUP and the API may ask at once): each builds on what
    /// the one before put in force (the bounce secret's successor, the listener).
    reloading: Mutex<()>,
}

impl Reloader {
    /// A reloader for the relay started from `path`, running these.
    pub fn new(path: Option<&Path>, running: Running) -> Self {
        Self {
            path: path.map(Path::to_path_buf),
            current: Mutex::new((running.config, running.ctx)),
            inbound: running.inbound,
            queue: running.queue,
            resolver: running.resolver,
            reputation: running.reputation,
            monitor: Mutex::new(Some(running.monitor)),
            bounces: running.bounces,
            reloading: Mutex::new(()),
        }
    }

    /// Re-reads the file and swaps it in if it is valid; logs what happened.
    pub fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.try_reload();
        if outcome.applied {
            tracing::info!(
                restart_needed = %outcome.restart_needed.join(", "),
                "configuration reloaded"
            );
        } else {
            for p in &outcome.problems {
                tracing::error!(problem = %p, "configuration reload refused; the running configuration stays");
            }
        }
        outcome
    }

    fn try_reload(&self) -> ReloadOutcome {
        let refuse = |problems: Vec<String>| ReloadOutcome {
            applied: false,
            problems,
            restart_needed: Vec::new(),
        };
        let Some(path) = &self.path else {
            return refuse(vec![
                "the relay runs on the embedded defaults: there is no file to reload".into(),
            ]);
        };
        let (config, mut errors) = match Config::load_collecting(path) {
            Ok(c) => c,
            Err(e) => return refuse(vec![e.to_string()]),
        };
        errors.extend(super::check_config::problems(&config, Some(path)));
        if !errors.is_empty() {
            return refuse(errors.iter().map(ToString::to_string).collect());
        }
        let classifier = match Classifier::new(&config.classify.rules) {
            Ok(c) => Arc::new(c),
            Err(e) => return refuse(vec![e.to_string()]),
        };
        // The same authorisation: its SPF cache and learned denials carry on.
        let authorisation = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .outbound
            .authorisation()
            .clone();
        let outbound = match Outbound::new(
            &config,
            self.resolver.clone(),
            self.reputation.clone(),
            authorisation,
        ) {
            Ok(o) => o,
            Err(e) => return refuse(vec![e.to_string()]),
        };
        let security = match crate::inbound::Security::load(&config) {
            Ok(s) => s,
            Err(problems) => return refuse(problems),
        };
        // The last step that may fail: the bounce secret, the bounce listener's address.
        let bounces = match self.bounces.prepare(&config) {
            Ok(b) => b,
            Err(e) => return refuse(vec![format!("{e:#}")]),
        };
        let config = Arc::new(config);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let restart_needed = needs_restart(&current.0, &config);
        // The operator may have fixed a sender's DNS: SPF is asked afresh.
        outbound.authorisation().forget();
        self.inbound.reconfigure(config.clone(), security);
        self.bounces.apply(bounces, &config, &self.inbound);
        let ctx = Arc::new(
            current
                .1
                .reconfigured(config.clone(), outbound, classifier)
                .with_bounces(self.bounces.for_queue()),
        );
        self.queue.reconfigure(ctx.clone());
        // The lists and the egress IPs they are asked about: a new monitor.
        self.reputation.set_lists(config.blocklists.clone());
        self.reputation
            .set_warmup(crate::reputation::warmup_schedules(&config));
        let mut monitor = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = monitor.take() {
            old.abort();
        }
        *monitor = Some(crate::reputation::spawn_monitor(
            self.reputation.clone(),
            self.resolver.clone(),
            config.egress_helos(),
            config.listings.clone(),
            config.delivery.require_fcrdns,
        ));
        *current = (config, ctx);
        ReloadOutcome {
            applied: true,
            problems: Vec::new(),
            restart_needed,
        }
    }
}

/// The settings that changed but are fixed for the life of the process: listeners, the
/// spool, the session table's sizes, the global connection limit, the resolver.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let s = |c: &Config| {
        [
            ("server.listen", format!("{:?}", c.server.listen)),
            ("server.listen_tls", format!("{:?}", c.server.listen_tls)),
            (
                "server.max_sessions",
                format!("{:?}", c.server.max_sessions),
            ),
            (
                "server.reserved_sessions",
                format!("{:?}", c.server.reserved_sessions),
            ),
            (
                "server.max_sessions_per_ip",
                format!("{:?}", c.server.max_sessions_per_ip),
            ),
            (
                "server.max_connection_rate_per_ip",
                format!("{:?}", c.server.max_connection_rate_per_ip),
            ),
            ("spool.directory", format!("{:?}", c.spool.directory)),
            (
                "delivery.max_connections",
                format!("{:?}", c.delivery.max_connections),
            ),
            ("dns", format!("{:?}", c.dns)),
            ("admin", format!("{:?}", c.admin)),
            ("log", format!("{:?}", c.log)),
            ("alerts", format!("{:?}", c.alerts)),
        ]
    };
    s(old)
        .into_iter()
        .zip(s(new))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((key, _), _)| key.to_string())
        .collect()
}

/// `sidestep reload`: asks the running relay to re-read its configuration.
pub async fn reload(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    // The file may well be broken (that is what the relay will say): read leniently, for
    // the spool directory and the admin address only.
    let config = match config_path {
        Some(p) => Config::load_collecting(p).map(|(c, _)| c)?,
        None => Config::default(),
    };
    let (status, body) = super::admin_client::exchange(&config, "POST", "/api/v1/reload").await?;
    if status != 200 && status != 422 {
        anyhow::bail!(
            "reload: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let outcome: ReloadOutcome = serde_json::from_slice(&body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else if outcome.applied {
        println!("reloaded");
        for key in &outcome.restart_needed {
            println!("  changed, but needs a restart: {key}");
        }
    } else {
        println!("not reloaded; the running configuration stays:");
        for p in &outcome.problems {
            println!("  {p}");
        }
    }
    if outcome.applied {
        Ok(())
    } else {
        anyhow::bail!(
            "the new configuration has {} problem(s)",
            outcome.problems.len()
        )
    }
}
