//! `serve`'s wiring of `[bounces]` and `[suppression]`: the return path the queue signs
//! tokens with, the bounce reader it hands bounce-domain mail to, the suppression list
//! inbound and the queue share, the sent records' pruning, and `[bounces] listen`.

use std::sync::Arc;

use anyhow::Context;

use crate::bounces::BounceReader;
use crate::config::Config;
use crate::inbound::Inbound;
use crate::queue::{LocalDelivery, QueueContext, QueueHandle};
use crate::returnpath::ReturnPath;
use crate::spool::Spool;
use crate::suppression::Suppressions;

/// What `serve` hands the queue and inbound.
pub(super) struct Wired {
    pub return_path: Option<Arc<ReturnPath>>,
    reader: Option<Arc<BounceReader>>,
    pub suppressions: Suppressions,
}

/// Loads the key and the list; keeps sent records when return paths are on.
pub(super) fn wire(
    config: &Config,
    spool: &Spool,
    complaints: crate::complaints::Complaints,
) -> anyhow::Result<Wired> {
    let return_path = ReturnPath::from_config(&config.bounces)
        .context("[bounces]")?
        .map(Arc::new);
    spool.keep_sent(return_path.is_some());
    let suppressions = Suppressions::open(&config.spool.directory, crate::clock::Clock::system())
        .context("loading the suppression list")?;
    let reader = return_path.as_ref().map(|rp| {
        Arc::new(BounceReader::new(
            rp.clone(),
            config.bounces.all_domains(),
            complaints,
        ))
    });
    if let Some(rp) = &return_path {
        let _ = rp;
        tracing::info!(domains = ?config.bounces.all_domains(), forward = config.bounces.forward, "return paths on: each attempt's MAIL FROM is a VERP address on the bounce domain");
    }
    Ok(Wired {
        return_path,
        reader,
        suppressions,
    })
}

impl Wired {
    /// The reader, as the queue's local delivery.
    pub(super) fn local(&self) -> Option<Arc<dyn LocalDelivery>> {
        self.reader.clone().map(|r| r as Arc<dyn LocalDelivery>)
    }

    /// The queue runs: forwarded DSNs may be queued, old sent records pruned.
    pub(super) fn started(&self, ctx: Arc<QueueContext>, queue: QueueHandle) {
        if let Some(reader) = &self.reader {
            reader.set_queue(queue);
            crate::bounces::spawn_pruning(ctx);
        }
    }

    /// `[bounces] listen`: a listener where every client is an outsider (no relaying,
    /// no AUTH), so it takes bounces and nothing else.
    pub(super) async fn listen(&self, config: &Config, main: &Arc<Inbound>) -> anyhow::Result<()> {
        let Some(addr) = config.bounces.listen.filter(|_| self.reader.is_some()) else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} ([bounces] listen)"))?;
        let bound = listener.local_addr()?;
        let mut outsiders = config.clone();
        outsiders.server.relay_networks.clear();
        let security = crate::inbound::Security {
            tls: main.security().tls.clone(),
            users: None,
            signer: Default::default(),
        };
        let inbound = Arc::new(Inbound {
            config: std::sync::RwLock::new(Arc::new(outsiders)),
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
        tracing::info!(addr = %bound, "listening for bounces");
        println!("sidestep listening for bounces on {bound}");
        tokio::spawn(crate::inbound::serve(
            listener,
            inbound,
            crate::inbound::Port::Plain,
        ));
        Ok(())
    }
}
