//! `serve`'s wiring of `[bounces]` and `[suppression]`: the return path the queue signs
//! tokens with, the bounce reader it hands bounce-domain mail to, the suppression list
//! inbound and the queue share, the sent records' pruning, and `[bounces] listen`.
//!
//! A reload re-reads `[bounces]`: the domains, the secret (the previous one keeps
//! verifying for `keep_sent`, see [`ReturnPath::succeeded_by`]) and the listener, which
//! moves when its address changes. What can fail (the secret file, the new address) is
//! built by [`Wired::prepare`] before anything is swapped, so a failure refuses the whole
//! reload and the running configuration stays.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;

use crate::bounces::BounceReader;
use crate::clock::Clock;
use crate::config::Config;
use crate::inbound::Inbound;
use crate::queue::{LocalDelivery, QueueHandle};
use crate::returnpath::ReturnPath;
use crate::spool::Spool;
use crate::suppression::Suppressions;

/// What `serve` hands the queue and inbound, and what a reload replaces.
pub struct Wired {
    pub suppressions: Suppressions,
    spool: Spool,
    complaints: crate::complaints::Complaints,
    clock: Clock,
    /// What the `[bounces]` in force built.
    now: Mutex<InForce>,
    /// Forwarded DSNs go there; known once the queue runs.
    queue: OnceLock<QueueHandle>,
    /// `[bounces] keep_sent` in force, in seconds, for the pruning task.
    keep_sent: Arc<AtomicU64>,
    /// The pruning task runs (from the first time return paths are on).
    pruning: AtomicBool,
}

/// The return path, reader and listener of the `[bounces]` in force.
#[derive(Default)]
struct InForce {
    reading: Reading,
    /// `[bounces] listen`.
    listener: Option<Listener>,
}

/// What signs the return paths and reads the bounces.
#[derive(Default)]
struct Reading {
    /// The key chain: the current secret and the previous ones still verifying. Kept
    /// when a reload turns return paths off, to read the bounces already queued.
    keys: Option<Arc<ReturnPath>>,
    /// Return paths are on: new attempts' MAIL FROM is signed with `keys`.
    on: bool,
    /// Reads the mail to the bounce domains.
    reader: Option<Arc<BounceReader>>,
}

/// The bounces-only listener.
struct Listener {
    /// As configured (port 0 included): a reload with the same address keeps it.
    configured: SocketAddr,
    /// Its sessions' view: the configuration with no relay network, no AUTH.
    inbound: Arc<Inbound>,
    task: tokio::task::JoinHandle<()>,
}

/// A reloaded `[bounces]`, built before anything is swapped.
pub struct Next {
    reading: Reading,
    /// The listener's address and, when it moves, the socket bound at the new one.
    listen: Option<(SocketAddr, Option<tokio::net::TcpListener>)>,
}

/// Loads the key and the list; keeps sent records when return paths are on.
pub(super) fn wire(
    config: &Config,
    spool: &Spool,
    complaints: crate::complaints::Complaints,
) -> anyhow::Result<Wired> {
    let clock = Clock::system();
    let suppressions = Suppressions::open(&config.spool.directory, clock.clone())
        .context("loading the suppression list")?;
    let wired = Wired {
        suppressions,
        spool: spool.clone(),
        complaints,
        clock,
        now: Mutex::new(InForce::default()),
        queue: OnceLock::new(),
        keep_sent: Arc::new(AtomicU64::new(config.bounces.keep_sent.get().as_secs())),
        pruning: AtomicBool::new(false),
    };
    let reading = wired.reading(config, &Reading::default())?;
    spool.keep_sent(reading.on);
    wired.lock().reading = reading;
    Ok(wired)
}

impl Wired {
    fn lock(&self) -> std::sync::MutexGuard<'_, InForce> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key chain and reader `config` asks for, after `was`: the secret's successor
    /// (see [`ReturnPath::succeeded_by`]), a reader for the new domains and those `was`
    /// read (mail already accepted for a domain a reload removed is read, never relayed).
    fn reading(&self, config: &Config, was: &Reading) -> anyhow::Result<Reading> {
        let Some(fresh) =
            ReturnPath::from_config(&config.bounces, self.clock.clone()).context("[bounces]")?
        else {
            // Off: no more signing; the reader stays for what is queued.
            return Ok(Reading {
                keys: was.keys.clone(),
                on: false,
                reader: was.reader.clone(),
            });
        };
        let keep = config.bounces.keep_sent.get();
        let keys = Arc::new(match &was.keys {
            Some(old) => {
                if old.rotated_in(&fresh) {
                    tracing::warn!(
                        keep_sent = %humantime::format_duration(keep),
                        "[bounces] secret changed: bounces of mail sent before verify with the previous secret for keep_sent (until a restart)"
                    );
                }
                old.succeeded_by(fresh, keep)
            }
            None => fresh,
        });
        let mut domains = config.bounces.all_domains();
        if let Some(r) = &was.reader {
            domains.extend(r.domains().iter().cloned());
            domains.sort();
            domains.dedup();
        }
        tracing::info!(domains = ?config.bounces.all_domains(), forward = config.bounces.forward, "return paths on: each attempt's MAIL FROM is a VERP address on the bounce domain");
        let reader = Arc::new(BounceReader::new(
            keys.clone(),
            domains,
            self.complaints.clone(),
        ));
        if let Some(queue) = self.queue.get() {
            reader.set_queue(queue.clone());
        }
        Ok(Reading {
            keys: Some(keys),
            on: true,
            reader: Some(reader),
        })
    }

    /// What the queue signs and verifies with, and where bounce-domain mail goes.
    pub(super) fn for_queue(
        &self,
    ) -> (
        Option<Arc<ReturnPath>>,
        Option<Arc<dyn LocalDelivery>>,
        Suppressions,
    ) {
        let now = &self.lock().reading;
        (
            now.keys.clone().filter(|_| now.on),
            now.reader.clone().map(|r| r as Arc<dyn LocalDelivery>),
            self.suppressions.clone(),
        )
    }

    /// The queue runs: forwarded DSNs may be queued, old sent records pruned.
    pub(super) fn started(&self, queue: QueueHandle) {
        let _ = self.queue.set(queue.clone());
        let on = {
            let now = &self.lock().reading;
            if let Some(reader) = &now.reader {
                reader.set_queue(queue);
            }
            now.on
        };
        if on {
            self.start_pruning();
        }
    }

    fn start_pruning(&self) {
        if self.pruning.swap(true, Ordering::AcqRel) {
            return;
        }
        let keep = self.keep_sent.clone();
        crate::bounces::spawn_pruning(self.spool.clone(), self.clock.clone(), move || {
            std::time::Duration::from_secs(keep.load(Ordering::Relaxed))
        });
    }

    /// `[bounces] listen`: a listener where every client is an outsider (no relaying,
    /// no AUTH), so it takes bounces and nothing else. Says where on stdout (before the
    /// relay's `listening on`, which scripts wait for).
    pub(super) async fn listen(&self, config: &Config, main: &Arc<Inbound>) -> anyhow::Result<()> {
        let Some(addr) = config.bounces.listen.filter(|_| self.lock().reading.on) else {
            return Ok(());
        };
        let listener = bind(addr)?;
        let bound = listener.local_addr()?;
        let listener = spawn_listener(addr, listener, outsiders(config, main), main);
        self.lock().listener = Some(listener);
        println!("sidestep listening for bounces on {bound}");
        Ok(())
    }

    /// Builds what a reloaded `config` needs of `[bounces]`; nothing changes yet.
    ///
    /// # Errors
    /// The secret file cannot be read, or the new listener address cannot be bound.
    pub(super) fn prepare(&self, config: &Config) -> anyhow::Result<Next> {
        let now = self.lock();
        let reading = self.reading(config, &now.reading)?;
        let listen = match config.bounces.listen.filter(|_| reading.on) {
            None => None,
            Some(addr) if now.listener.as_ref().is_some_and(|l| l.configured == addr) => {
                Some((addr, None))
            }
            Some(addr) => Some((addr, Some(bind(addr)?))),
        };
        Ok(Next { reading, listen })
    }

    /// Puts `next` in force: new attempts sign with its keys, the queue reads bounces
    /// with its reader, the listener takes `config` (moved when its address changed).
    /// `main` is the relay's inbound, already reconfigured.
    pub(super) fn apply(&self, next: Next, config: &Config, main: &Arc<Inbound>) {
        let on = next.reading.on;
        self.spool.keep_sent(on);
        self.keep_sent
            .store(config.bounces.keep_sent.get().as_secs(), Ordering::Relaxed);
        let mut now = self.lock();
        let old = now.listener.take();
        now.listener = match (next.listen, old) {
            (None, None) => None,
            (None, Some(old)) => {
                tracing::info!(addr = %old.configured, "no longer listening for bounces");
                old.task.abort();
                None
            }
            (Some((_, None)), Some(old)) => {
                let (c, security) = outsiders(config, main);
                old.inbound.reconfigure(c, security);
                Some(old)
            }
            (Some((addr, Some(socket))), old) => {
                if let Some(old) = old {
                    old.task.abort();
                }
                Some(spawn_listener(addr, socket, outsiders(config, main), main))
            }
            (Some((addr, None)), None) => {
                // `prepare` binds whenever no listener runs: not reached.
                tracing::error!(%addr, "bounce listener lost between prepare and apply");
                None
            }
        };
        now.reading = next.reading;
        drop(now);
        if on && self.queue.get().is_some() {
            self.start_pruning();
        }
    }
}

/// Binds `addr` (address reuse on, as tokio's own `bind`: a listener moved back to an
/// address it left must not wait for TIME_WAIT).
fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(1024)
    })
    .with_context(|| format!("listening on {addr} ([bounces] listen)"))?;
    Ok(socket)
}

/// The bounce listener's view of `config`: no relay network, no AUTH, so every client
/// is an outsider who may send to the bounce domains only; the main listener's TLS.
fn outsiders(config: &Config, main: &Inbound) -> (Arc<Config>, crate::inbound::Security) {
    let mut outsiders = config.clone();
    outsiders.server.relay_networks.clear();
    let security = crate::inbound::Security {
        tls: main.security().tls.clone(),
        users: None,
        signer: Default::default(),
    };
    (Arc::new(outsiders), security)
}

/// Serves the bounce listener on `socket`.
fn spawn_listener(
    configured: SocketAddr,
    socket: tokio::net::TcpListener,
    (config, security): (Arc<Config>, crate::inbound::Security),
    main: &Inbound,
) -> Listener {
    let inbound = Arc::new(Inbound {
        config: std::sync::RwLock::new(config),
        spool: main.spool.clone(),
        queue: main.queue.clone(),
        stopping: main.stopping.clone(),
        sessions: main.sessions.clone(),
        alerts: main.alerts.clone(),
        security: std::sync::RwLock::new(Arc::new(security)),
        guard: main.guard.clone(),
        senders: main.senders.clone(),
        suppressions: main.suppressions.clone(),
        bounce_gate: Default::default(),
        clock: main.clock.clone(),
    });
    if let Ok(bound) = socket.local_addr() {
        tracing::info!(addr = %bound, "listening for bounces");
    }
    let task = tokio::spawn(crate::inbound::serve(
        socket,
        inbound.clone(),
        crate::inbound::Port::Plain,
    ));
    Listener {
        configured,
        inbound,
        task,
    }
}
